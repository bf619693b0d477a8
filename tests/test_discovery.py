import pytest
import torch
import torchvision
from torch import nn

from probekit import ProbekitError, SummedBranches, mark_branches
from probekit.models.branches import DiscoveryConfig, discover, glob_regex
from probekit.zoo.registry import load_zoo_model


def test_summed_container_gives_one_branch_per_module():
    bs = discover(load_zoo_model("digits-branched8"), DiscoveryConfig())
    assert bs.strategy == "summed"
    assert bs.names == [f"branches.{k}" for k in range(8)]
    assert bs.layer_of_branch == ["model"] * 8


class Experts(nn.Module):
    def __init__(self):
        super().__init__()
        self.experts = nn.ModuleDict({"a": nn.Linear(2, 3), "b": nn.Linear(2, 3)})

    def forward(self, x):
        return sum(e(x) for e in self.experts.values())


def test_user_marked_container_is_found_by_its_path():
    model = nn.Sequential(nn.Identity(), mark_branches(Experts(), "experts"))
    bs = discover(model, DiscoveryConfig())
    assert bs.names == ["1.experts.a", "1.experts.b"]
    assert bs.layers[0].name == "1"


def test_mark_branches_rejects_a_non_container():
    with pytest.raises(TypeError):
        mark_branches(nn.Linear(2, 2), "weight")


def test_resnext_has_32_branches_in_each_grouped_layer():
    bs = discover(torchvision.models.resnext50_32x4d(), DiscoveryConfig())
    assert bs.strategy == "grouped-conv"
    assert len(bs.layers) == 16
    assert all(len(layer.branches) == 32 and layer.kind == "grouped" for layer in bs.layers)
    assert "layer1.0.conv2[g=17]" in bs.names


def test_glob_names_branches_by_hand_and_stays_within_a_segment(tiny_grouped):
    model = SummedBranches([nn.Sequential(nn.Linear(2, 2), nn.ReLU()) for _ in range(3)])
    bs = discover(model, DiscoveryConfig("branches.*"))
    assert bs.strategy == "glob" and bs.names == ["branches.0", "branches.1", "branches.2"]
    assert glob_regex("a.**").match("a.b.c") and not glob_regex("a.*").match("a.b.c")


def test_glob_matching_nothing_is_an_error(tiny_grouped):
    with pytest.raises(ProbekitError, match="matches no module"):
        discover(tiny_grouped, DiscoveryConfig("nope.*"))


def test_no_branches_error_names_the_strategies():
    with pytest.raises(ProbekitError) as err:
        discover(nn.Sequential(nn.Linear(2, 2)), DiscoveryConfig())
    message = str(err.value)
    assert "summed-branch containers" in message and "grouped convolutions" in message and "--branches" in message


def test_exported_program_grouped_convs_are_found(tmp_path, tiny_grouped):
    from probekit.models.graph_models import load_exported

    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(tiny_grouped, (torch.randn(2, 3, 8, 8),)), path)
    bs = discover(load_exported(str(path), trust_code=True), DiscoveryConfig())
    assert bs.names == [f"grouped[g={g}]" for g in range(4)]
