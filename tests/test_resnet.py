import importlib.util
from pathlib import Path

import torch

from probekit.models.losses import indicator_targets
from probekit.zoo.resnet import SlimResNet18, branched_resnet18, clamped_softmax_loss


def _benchmark_module(name: str):
    """A module of benchmarks/ loaded by path: benchmark-only code lives there, and putting the folder on sys.path
    would let its scripts shadow libraries for every later test (``kernels``, imported by transformers)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" /
                                                  f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FusedBranchedResNet18 = _benchmark_module("fused_resnet").FusedBranchedResNet18


def test_one_branch_has_about_80k_parameters():
    assert sum(p.numel() for p in SlimResNet18().parameters()) == 84_105


def test_fused_grouped_network_equals_the_branch_loop():
    torch.manual_seed(0)
    model = branched_resnet18(branches=3, clamp=False)
    model.train()
    x = torch.rand(6, 3, 32, 32)
    model(x)  # move the BatchNorm running statistics away from their defaults
    model.eval()
    fused = FusedBranchedResNet18.from_branched(model).eval()
    torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-5)
    model.train()
    fused.train()
    torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-5)  # batch statistics too


def test_papers_targets_and_loss():
    p = indicator_targets(torch.tensor([2, 0]), classes=4)
    assert torch.allclose(p.sum(1), torch.ones(2)) and p[0].argmax() == 2
    f = torch.tensor([[-1.0, -1.0, 1.0, -1.0]])
    best = clamped_softmax_loss(f, torch.tensor([2]))
    assert best < clamped_softmax_loss(torch.zeros(1, 4), torch.tensor([2]))
    assert torch.isclose(best, -(p[0] * p[0].log()).sum())  # at f = +-1 the loss is the targets' entropy
