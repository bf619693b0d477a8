"""The memory format training uses: channels_last only where a child process shows its gradients right."""

import json

import pytest
import torch

from probekit.zoo import memory_format
from probekit.zoo.memory_format import disagreement, training_memory_format, weight_gradients
from probekit.zoo.resnet import WIDTHS

pytestmark = pytest.mark.timeout(600, method="thread")  # the check has its own timeout; this one is a backstop

ZOO_ARCHITECTURES = [  # what the zoo trains: cifar10-branched16 (2 of its branches), afhq-cat-diffusion9's networks
    [("cifar", {"branches": 2, "widths": list(WIDTHS), "clamp": True})],
    [("generator", {"branches": 9, "classes": 1, "widths": [12, 24, 48], "preprocessing": "diffusion",
                    "resolution": 64}), ("discriminator", {"classes": 1, "resolution": 64})],
]


@pytest.mark.parametrize("models", ZOO_ARCHITECTURES, ids=["cifar", "gan"])
def test_training_gets_channels_last_only_with_gradients_as_accurate_as_contiguous(models):
    chosen, why = training_memory_format(models)
    assert why.startswith("channels_last" if chosen == torch.channels_last else "contiguous")
    answer = memory_format._checked(json.dumps({"models": models, "steps": memory_format.CHECK_STEPS},
                                               sort_keys=True), memory_format.TIMEOUT_S)
    assert (chosen == torch.channels_last) == answer[0]
    if chosen == torch.channels_last:  # shown safe in the child, so it may run here: one step's gradients agree
        for kind, config in models:
            model, inputs = memory_format._build(kind, config)
            exact = weight_gradients(model, inputs, torch.contiguous_format, torch.float64)
            assert disagreement(exact, weight_gradients(model, inputs, torch.contiguous_format),
                                weight_gradients(model, inputs, torch.channels_last)) is None


def test_a_wrong_gradient_is_found_and_rounding_is_not():
    torch.manual_seed(0)
    exact = {"conv.weight": torch.randn(8, 3, 3, 3, dtype=torch.float64),
             "conv.bias": torch.zeros(8, dtype=torch.float64)}
    rounded = {k: (v.float() + 1e-7 * torch.randn(v.shape)).double() for k, v in exact.items()}
    assert disagreement(exact, rounded, {k: v.clone() for k, v in rounded.items()}) is None
    wrong = {k: v.clone() for k, v in rounded.items()}
    wrong["conv.weight"][0, 0, 0, 0] += 0.01 * float(exact["conv.weight"].norm())
    assert "conv.weight" in disagreement(exact, rounded, wrong)
    wrong["conv.weight"][0, 0, 0, 0] = float("nan")
    assert disagreement(exact, rounded, wrong) is not None
    assert disagreement(exact, rounded, {"conv.weight": rounded["conv.weight"]}) is not None


def test_a_check_that_crashes_or_hangs_means_contiguous(monkeypatch):
    crashed = memory_format._checked(json.dumps({"models": [["no-such-kind", {}]], "steps": 1}), 60.0)
    assert crashed == (False, "the channels_last check crashed (exit status 1)")
    hung = memory_format._checked(json.dumps({"models": ZOO_ARCHITECTURES[0], "steps": 1}), 0.01)
    assert hung[0] is False and "hung" in hung[1]
    monkeypatch.setattr(memory_format, "_checked", lambda spec, timeout: (False, "it hung"))
    assert training_memory_format(ZOO_ARCHITECTURES[0]) == (torch.contiguous_format, "contiguous (it hung on this CPU)")
    monkeypatch.setenv("PROBEKIT_MEMORY_FORMAT", "contiguous")
    monkeypatch.setattr(memory_format, "_checked", lambda spec, timeout: pytest.fail("checked although turned off"))
    assert training_memory_format(ZOO_ARCHITECTURES[0])[0] == torch.contiguous_format
