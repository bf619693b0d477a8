import pytest
import torch
from torch import nn

from probekit import SummedBranches
from probekit.models.branches import DiscoveryConfig, discover
from probekit.run.capture import capture


class InPlaceSum(nn.Module):
    """Sums its branches in place into the first branch's output (a real pattern)."""

    probekit_branches = "branches"

    def __init__(self):
        super().__init__()
        self.branches = nn.ModuleList(nn.Linear(3, 2) for _ in range(3))

    def forward(self, x):
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out += branch(x)
        return out


def test_captured_responses_survive_in_place_ops():
    torch.manual_seed(0)
    model = InPlaceSum()
    x = torch.randn(4, 3)
    bs = discover(model, DiscoveryConfig())
    with torch.no_grad(), capture(model, bs) as recorder:
        model(x)
        responses = recorder.take()["model"]
        expected = torch.stack([b(x) for b in model.branches], dim=1)
    assert responses.shape == (4, 3, 2)
    torch.testing.assert_close(responses, expected)


def test_grouped_responses_are_channel_slices(tiny_grouped):
    bs = discover(tiny_grouped, DiscoveryConfig())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad(), capture(tiny_grouped, bs) as recorder:
        tiny_grouped(x)
        responses = recorder.take()["grouped"]
        conv_out = tiny_grouped.grouped(torch.relu(tiny_grouped.stem(x)))
    assert responses.shape == (2, 4, 2 * 8 * 8)
    torch.testing.assert_close(responses[:, 3], conv_out[:, 6:8].flatten(1))


def test_hooks_are_removed_even_when_the_forward_fails():
    model = SummedBranches([nn.Linear(3, 2), nn.Linear(3, 2)])
    bs = discover(model, DiscoveryConfig())
    with pytest.raises(RuntimeError), capture(model, bs):
        model(torch.randn(4, 5))  # wrong width
    assert all(not m._forward_hooks for m in model.modules())


def test_torchscript_grouped_convs_are_tapped_exactly(tmp_path, tiny_grouped):
    from probekit.models.graph_models import torchscript_to_tapped

    x = torch.randn(3, 3, 8, 8)
    scripted = torch.jit.script(tiny_grouped)
    tapped = torchscript_to_tapped(scripted, x)
    bs = discover(tapped, DiscoveryConfig())
    assert bs.names == [f"grouped[g={g}]" for g in range(4)]
    with torch.no_grad(), capture(tapped, bs) as recorder:
        torch.testing.assert_close(tapped(x), tiny_grouped(x))
        responses = recorder.take()["grouped"]
        expected = tiny_grouped.grouped(torch.relu(tiny_grouped.stem(x)))
    torch.testing.assert_close(responses, expected.reshape(3, 4, -1))
