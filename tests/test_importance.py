"""``importance``: true ablation against plain hooks, attribution patching, and gate-gradient head importance
against exhaustive single-head ablation on a small trained attention model."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

import probekit
from probekit.run.datasets import digits_arrays

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from head_importance import trained  # noqa: E402  (a small trained attention model: examples/head_importance.py)


def test_zero_ablation_accuracy_equals_plain_hooks_exactly():
    tree = probekit.probe("digits-branched8", "digits:test", ["importance"], progress=False,
                          options={"importance.max_samples": 200})
    node = tree["importance"]
    model = probekit.load_model("digits-branched8").module.eval()
    images, labels, _ = digits_arrays("test")
    x, y = images[:200], labels[:200]
    with torch.no_grad():
        intact = F.cross_entropy(model(x), y, reduction="none").double()
        for k, branch in enumerate(model.branches):
            handle = branch.register_forward_hook(lambda m, a, o: torch.zeros_like(o))
            outputs = model(x)
            handle.remove()
            accuracy = float((outputs.argmax(1) == y).double().mean())
            assert float(node["ablation_accuracy"].sel(ablation="zero").values[k]) == accuracy
            change = float((F.cross_entropy(outputs, y, reduction="none").double() - intact).mean())
            np.testing.assert_allclose(float(node["ablation_loss_change"].sel(ablation="zero").values[k]), change,
                                       rtol=1e-6, atol=1e-9)
    assert node.attrs["ablated_samples"] == 200
    for name in ("estimate", "gate_importance", "spearman", "gate_spearman", "cost_seconds", "cost_passes"):
        assert name in node
    # the zero-ablation estimate is minus the gate gradient, summed: its Spearman is stored per layer
    assert np.isfinite(node["spearman"].values).all()
    assert float(node["cost_passes"].sel(way="estimate")) == 2 * 4  # 4 batches of 64 > 200 samples
    assert probekit.plot(tree, "importance")


def test_every_ablation_of_a_summed_model_is_what_it_says():
    """mean: the branch's mean output over the ablated samples; resample: the next sample's output."""
    torch.manual_seed(0)
    model = nn.Sequential(probekit.SummedBranches([nn.Sequential(nn.Linear(5, 3), nn.Tanh()) for _ in range(3)]))
    x, y = torch.randn(40, 5), torch.randn(40, 3)
    tree = probekit.probe(model, x, ["importance"], targets=y, batch_size=40, progress=False)
    node = tree["importance"]
    branches = model[0].branches
    with torch.no_grad():
        outs = [branch(x) for branch in branches]
        intact = 0.5 * ((sum(outs) - y) ** 2).sum(1)
        for k in range(3):
            for mode, replaced in (("zero", torch.zeros_like(outs[k])), ("mean", outs[k].mean(0).expand(40, 3)),
                                   ("resample", outs[k].roll(1, 0))):
                loss = 0.5 * ((sum(outs) - outs[k] + replaced - y) ** 2).sum(1)
                np.testing.assert_allclose(float(node["ablation_loss_change"].sel(ablation=mode).values[k]),
                                           float((loss - intact).mean()), rtol=1e-5, atol=1e-7)


def single_head_ablations(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """The change in mean loss with each head removed, plainly: its 4 columns of the output projection zeroed."""
    with torch.no_grad():
        intact = F.cross_entropy(model(x), y).item()
        changes = []
        for h in range(8):
            ablated = copy.deepcopy(model)
            ablated.attention.out_proj.weight[:, 4 * h:4 * h + 4] = 0
            changes.append(F.cross_entropy(ablated(x), y).item() - intact)
    return changes


def test_gate_gradients_rank_heads_as_exhaustive_single_head_ablation():
    images, labels, _ = digits_arrays("test")
    x, y = images[:256], labels[:256]
    ranks = []
    for seed in (0, 1, 2):
        model = trained(seed)
        ablated = single_head_ablations(model, x, y)
        node = probekit.probe(model, x, ["importance"], targets=y, progress=False,
                              options={"importance.ablations": "zero"})["importance"]
        assert node.attrs["intact_accuracy"] > 0.9
        np.testing.assert_allclose(node["ablation_loss_change"].values[:, 0], ablated, rtol=1e-4, atol=1e-6)
        ranks.append(spearmanr(node["gate_importance"].values, ablated).statistic)
        np.testing.assert_allclose(float(node["gate_spearman"].values[0]), ranks[-1], rtol=1e-9)
    print(f"Spearman of gate importance with single-head ablation, seeds 0-2: {np.round(ranks, 3)}")
    assert np.median(ranks) >= 0.8 and min(ranks) >= 0.6


def test_a_group_of_a_grouped_conv_is_ablated_by_zeroing_its_channels(tiny_grouped):
    x, y = torch.randn(30, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(30) % 5
    node = probekit.probe(tiny_grouped, x, ["importance"], targets=y, progress=False, batch_size=30,
                          options={"importance.ablations": "zero"})["importance"]
    with torch.no_grad():
        intact = F.cross_entropy(tiny_grouped(x), y, reduction="none").double()
        for g in range(4):
            handle = tiny_grouped.grouped.register_forward_hook(
                lambda m, a, o, g=g: torch.cat([o[:, :2 * g], torch.zeros_like(o[:, 2 * g:2 * g + 2]),
                                                o[:, 2 * g + 2:]], 1))
            change = (F.cross_entropy(tiny_grouped(x), y, reduction="none").double() - intact).mean()
            handle.remove()
            np.testing.assert_allclose(float(node["ablation_loss_change"].values[g, 0]), float(change), rtol=1e-6,
                                       atol=1e-9)


def test_the_head_importance_example_runs_as_documented():
    """``python examples/head_importance.py`` (docs/branches.md): trains, probes three analyses, prints them."""
    script = Path(__file__).resolve().parent.parent / "examples" / "head_importance.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Spearman with the ablation" in done.stdout and "Hessian energy off the head blocks" in done.stdout
