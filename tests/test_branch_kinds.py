"""Branch kinds beyond plain sums: gated experts, token-routed experts, concatenated towers and attention heads.

Each kind's responses are checked against an independent computation on a small real model, and the identity
that makes them branches (sum, concatenation, heads plus output bias) to 1e-5 relative.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from probekit import MixtureOfExperts, ProbekitError, TopKGate, mark_experts
from probekit.models.branches import DiscoveryConfig, discover
from probekit.run.capture import capture


def relative(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


def probe(model, x):
    """``(branchset, responses, gates, output)`` of one forward pass."""
    branchset = discover(model, DiscoveryConfig())
    with torch.no_grad(), capture(model, branchset) as recorder:
        out = model(x)
        return branchset, recorder.take(), recorder.take_gates(), out


# gated experts

def small_moe(k=2):
    torch.manual_seed(0)
    experts = [nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)) for _ in range(4)]
    return MixtureOfExperts(experts, TopKGate(6, 4, k)).eval()


def test_gated_experts_respond_with_their_gated_contribution():
    model, x = small_moe(), torch.randn(7, 6)
    branchset, responses, gates, out = probe(model, x)
    assert branchset.strategy == "gated-experts" and branchset.names == [f"experts.{k}" for k in range(4)]
    logits = model.gate.router(x)
    top = logits.softmax(1).topk(2, dim=1)
    expected_gates = torch.zeros(7, 4).scatter(1, top.indices, top.values / top.values.sum(1, keepdim=True))
    assert torch.allclose(gates["model"], expected_gates)
    assert ((gates["model"] > 0).sum(1) == 2).all()  # top-2: two experts per sample
    expected = torch.stack([expected_gates[:, k:k + 1] * e(x) for k, e in enumerate(model.experts)], 1)
    assert relative(responses["model"], expected) <= 1e-6
    assert relative(responses["model"].sum(1), out) <= 1e-5  # the sum identity


class Routed(nn.Module):
    """A user's own gated layer, marked with mark_experts; its gate takes a different input width."""

    def __init__(self):
        super().__init__()
        self.members = nn.ModuleList(nn.Linear(3, 2) for _ in range(3))
        self.router = nn.Sequential(nn.Linear(3, 3), nn.Softmax(dim=1))

    def forward(self, x):
        g = self.router(x)
        return sum(g[:, k:k + 1] * m(x) for k, m in enumerate(self.members))


def test_mark_experts_names_branches_and_gate_and_rejects_bad_marks():
    model = nn.Sequential(nn.Linear(4, 3), mark_experts(Routed(), "members", "router"))
    x = torch.randn(5, 4)
    branchset, responses, gates, out = probe(model, x)
    layer = branchset.layers[0]
    assert (layer.kind, layer.gate, layer.branches) == ("gated", "1.router", ("1.members.0", "1.members.1",
                                                                              "1.members.2"))
    assert relative(responses["1"].sum(1), out) <= 1e-5
    assert torch.allclose(gates["1"].sum(1), torch.ones(5))
    with pytest.raises(TypeError, match="ModuleList"):
        mark_experts(Routed(), "router", "members")
    with pytest.raises(TypeError, match="gate values"):
        mark_experts(Routed(), "members", "nothing")


def test_a_gate_that_does_not_return_gate_values_is_one_clear_error():
    model = mark_experts(Routed(), "members", "members.0")  # a linear layer's [N, 2] output is not [N, 3]
    with pytest.raises(ProbekitError, match="returned"):
        probe(model, torch.randn(4, 3))


def test_transformers_mixtral_block_is_found_with_one_branch_per_expert():
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install -e "
                                                              "'.[test]')")
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    torch.manual_seed(0)
    config = transformers.MixtralConfig(hidden_size=8, intermediate_size=6, num_local_experts=4,
                                        num_experts_per_tok=2)
    block = MixtralSparseMoeBlock(config).eval()
    for p in block.parameters():  # random weights: the block's own init may leave some at zero
        nn.init.normal_(p, std=0.2)
    x = torch.randn(3, 5, 8)
    branchset, responses, gates, out = probe(block, x)
    assert branchset.strategy == "routed-experts"
    assert branchset.names == [f"experts[e={k}]" for k in range(4)]
    assert responses["experts"].shape == (3, 4, 5 * 8)
    assert relative(responses["experts"].sum(1), out.reshape(3, -1)) <= 1e-5
    # independently: the router's top-2 softmax weights, renormalised, and each expert's SwiGLU on every token
    tokens = x.reshape(-1, 8)
    probabilities = F.softmax(tokens @ block.gate.weight.T, dim=1)
    top = probabilities.topk(2, dim=1)
    weights = torch.zeros(15, 4).scatter(1, top.indices, top.values / top.values.sum(1, keepdim=True))
    for k in range(4):
        gate, up = (tokens @ block.experts.gate_up_proj[k].T).chunk(2, dim=-1)
        expert = (F.silu(gate) * up) @ block.experts.down_proj[k].T
        expected = (weights[:, k:k + 1] * expert).reshape(3, -1)
        assert relative(responses["experts"][:, k], expected) <= 1e-5
    assert torch.allclose(gates["experts"], weights.reshape(3, 5, 4).mean(1), atol=1e-6)
    # the Hessian's parameter blocks: each expert's rows of the fused weights, exact by the generic method
    from probekit_plugins.hessian.exact import MemoryPlan, generic_hessian, naive_hessian
    from probekit_plugins.hessian.params import select_params

    block.double()
    blocks = select_params(block, branchset, "experts.down_proj")
    assert [b.branch for b in blocks] == branchset.names and {b.size for b in blocks} == {8 * 6}

    def loss(m):
        return m(x.double()).pow(2).sum()

    exact = naive_hessian(loss, block, blocks)
    assert relative(generic_hessian(loss, block, blocks, MemoryPlan(2 ** 30), 1 << 20, 3), exact) <= 1e-8


# concatenated towers

class Tower(nn.Module):
    """An Inception block: two conv towers, a conv-after-pool tower and a parameter-free pool tower."""

    def __init__(self):
        super().__init__()
        self.one = nn.Conv2d(4, 3, 1)
        self.three = nn.Sequential(nn.Conv2d(4, 2, 1), nn.ReLU(), nn.Conv2d(2, 5, 3, padding=1),
                                   nn.BatchNorm2d(5))
        self.pooled = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(4, 2, 1))

    def forward(self, x):
        return torch.cat([F.relu(self.one(x)), self.three(x), self.pooled(x), F.avg_pool2d(x, 3, 1, 1)], 1)


def test_towers_are_slices_of_the_concatenated_output():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), Tower()).eval()
    x = torch.randn(2, 3, 9, 9)
    branchset, responses, _, out = probe(model, x)
    layer = branchset.layers[0]
    assert branchset.strategy == "towers" and layer.name == "1" and layer.kind == "concat"
    assert layer.branches == ("1.one", "1.three", "1.pooled", "1.avg_pool2d") and layer.channels == (3, 5, 2, -1)
    h = model[0](x)
    block = model[1]
    own = [F.relu(block.one(h)), block.three(h), block.pooled(h), F.avg_pool2d(h, 3, 1, 1)]
    start = 0
    for k, tower in enumerate(own):
        expected = torch.zeros_like(out)
        expected[:, start:start + tower.shape[1]] = tower
        start += tower.shape[1]
        assert relative(responses["1"][:, k], expected.flatten(1)) <= 1e-6
    assert relative(responses["1"].sum(1), out.flatten(1)) <= 1e-6  # the concatenation identity


@pytest.mark.parametrize("name, blocks, towers", [("googlenet", 9, [4] * 9),
                                                  ("inception_v3", 11, [4, 4, 4, 3, 4, 4, 4, 4, 3, 6, 6])])
def test_torchvision_inception_blocks_are_found_and_sum_to_their_output(name, blocks, towers):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, aux_logits=False, init_weights=False).eval()
    x = torch.randn(1, 3, 96, 96) if name == "googlenet" else torch.randn(1, 3, 80, 80)
    branchset = discover(model, DiscoveryConfig())
    assert branchset.strategy == "towers"
    assert [len(layer.branches) for layer in branchset.layers] == towers and len(branchset.layers) == blocks
    outputs = {}
    hooks = [model.get_submodule(layer.modules[0]).register_forward_hook(
        lambda m, a, o, n=layer.name: outputs.__setitem__(n, o)) for layer in branchset.layers]
    with torch.no_grad(), capture(model, branchset) as recorder:
        model(x)
        responses = recorder.take()
    for hook in hooks:
        hook.remove()
    for layer in branchset.layers:
        assert relative(responses[layer.name].sum(1), outputs[layer.name].flatten(1)) <= 1e-6


# attention heads

@pytest.mark.parametrize("batch_first", [True, False])
def test_swapped_attention_equals_nn_multiheadattention(batch_first):
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    original = copy.deepcopy(attention)
    model = nn.Sequential()
    model.add_module("attn", attention)
    branchset = discover(model, DiscoveryConfig())
    assert branchset.strategy == "attention-heads"
    assert branchset.names == [f"attn.heads.{h}" for h in range(4)]
    swapped = model.attn
    assert {n for n, _ in swapped.named_parameters()} == {n for n, _ in original.named_parameters()}
    x = torch.randn(3, 5, 16)
    mask = torch.rand(5, 5) > 0.6
    mask.fill_diagonal_(False)
    padding = torch.zeros(3 if batch_first else 5, 5 if batch_first else 3, dtype=torch.bool)
    kwargs = [{}, {"attn_mask": mask, "key_padding_mask": padding if batch_first else None},
              {"need_weights": True, "average_attn_weights": False}, {"need_weights": False}]
    if batch_first:
        padding[:, -1] = True
    for options in kwargs:
        if not batch_first and "attn_mask" in options:
            options = {"attn_mask": torch.rand(3, 3) > 2}  # sequence first: L = 3
        ref = original(x, x, x, **options)
        got = swapped(x, x, x, **options)
        assert relative(got[0], ref[0]) <= 1e-5
        assert (got[1] is None) == (ref[1] is None)
        if ref[1] is not None:
            assert relative(got[1], ref[1]) <= 1e-5
    unbatched = x[0] if batch_first else x[:, 0]
    for options in ({}, {"need_weights": False}):
        assert relative(swapped(unbatched, unbatched, unbatched, **options)[0],
                        original(unbatched, unbatched, unbatched, **options)[0]) <= 1e-5
    # each head, independently: softmax(Q_h K_h^T / sqrt(d)) V_h W_O^h^T, batch first
    xb = x if batch_first else x.transpose(0, 1)
    q, k, v = F.linear(xb, original.in_proj_weight, original.in_proj_bias).chunk(3, dim=-1)
    with torch.no_grad(), capture(model, branchset) as recorder:
        out = model.attn(x, x, x)[0]
        responses = recorder.take()["attn"].reshape(3, 4, 5, 16) if batch_first else None
    if batch_first:
        for h in range(4):
            cols = slice(4 * h, 4 * h + 4)
            p = (q[..., cols] @ k[..., cols].transpose(1, 2) / 2).softmax(-1)
            assert relative(responses[:, h], p @ v[..., cols] @ original.out_proj.weight[:, cols].T) <= 1e-5
        assert relative(responses.sum(1) + original.out_proj.bias, out) <= 1e-5  # heads + output bias


def test_unsupported_attention_is_one_clear_error():
    model = nn.Sequential()
    model.add_module("attn", nn.MultiheadAttention(8, 2, add_bias_kv=True))
    with pytest.raises(ProbekitError, match="add_bias_kv"):
        discover(model, DiscoveryConfig())


def test_vit_and_swin_heads_are_found_and_swin_heads_sum_to_the_attention():
    vit = torchvision.models.vit_b_16(weights=None)
    assert [len(layer.branches) for layer in discover(vit, DiscoveryConfig()).layers] == [12] * 12
    swin = torchvision.models.swin_t(weights=None)
    assert [len(layer.branches) for layer in discover(swin, DiscoveryConfig()).layers] == \
        [3, 3, 6, 6] + [12] * 6 + [24, 24]
    torch.manual_seed(0)
    small = torchvision.models.SwinTransformer([4, 4], 24, [2, 2], [3, 6], [4, 4], num_classes=5).eval()
    x = torch.randn(2, 3, 40, 40)  # 10x10 patches: padded windows and shifted windows
    with torch.no_grad():
        reference = small(x)
        branchset = discover(small, DiscoveryConfig())
        assert relative(small(x), reference) <= 1e-5
        outputs = {}
        hooks = [small.get_submodule(layer.container).register_forward_hook(
            lambda m, a, o, n=layer.name: outputs.__setitem__(n, o)) for layer in branchset.layers]
        with capture(small, branchset) as recorder:
            small(x)
            responses = recorder.take()
        for hook in hooks:
            hook.remove()
    for layer in branchset.layers:
        bias = small.get_submodule(layer.container).proj.bias
        assert relative(responses[layer.name].sum(1) + bias.repeat(100 if "features.1" in layer.name else 25),
                        outputs[layer.name].flatten(1)) <= 1e-5


# every analysis on every kind: a result, or one clear line

class Towers(nn.Module):
    """A digits classifier with one Inception block."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.block = Tower()
        self.head = nn.Linear(14 * 64, 10)

    def forward(self, x):
        return self.head(self.block(F.relu(self.stem(x))).flatten(1))


class Heads(nn.Module):
    """A digits classifier reading the 8 image rows as tokens through one multi-head attention."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.head = nn.Linear(16 * 8, 10)

    def forward(self, x):
        t = self.embed(x.reshape(-1, 8, 8))
        return self.head(self.attn(t, t, t, need_weights=False)[0].flatten(1))


ANALYSES = ("activity", "covariance", "similarity", "importance", "specialization", "intra-class", "attribution",
            "hessian", "kernels")
REFUSED = {  # (kind, analysis): what the one-line refusal says; docs/branches.md's table says the same
    ("towers", "attribution"): "needs a classifier made of summed branches",
    ("heads", "attribution"): "needs a classifier made of summed branches",
    ("heads", "kernels"): "no convolution",
}


@pytest.mark.parametrize("kind", ["gated", "towers", "heads"])
def test_every_analysis_gives_a_result_or_refuses_in_one_line(kind, tmp_path):
    from probekit import open_results
    from probekit.models.loading import LoadOptions
    from probekit.run.runner import RunSpec, execute

    torch.manual_seed(0)
    if kind == "gated":
        model = "digits-moe8"
    else:
        model = str(tmp_path / f"{kind}.pt")
        torch.save({"towers": Towers, "heads": Heads}[kind]().eval(), model)
    options = {"hessian": {"params": "experts.*.classifier.bias" if kind == "gated" else None, "mode": "exact"},
               "kernels": {"permutations": "20"}}
    for analysis in ANALYSES:
        spec = RunSpec(model=model, data="digits:test", plugins=[analysis], limit=24, batch_size=24, progress=False,
                       out=str(tmp_path / f"{kind}-{analysis}.zarr"), load=LoadOptions(trust_pickle=True),
                       options={analysis: {k: v for k, v in options.get(analysis, {}).items() if v is not None}})
        if (kind, analysis) in REFUSED:
            with pytest.raises(ProbekitError, match=REFUSED[kind, analysis]) as error:
                execute(spec)
            assert "\n" not in str(error.value)
        else:
            execute(spec)
            assert analysis in open_results(spec.out).children


def test_digits_moe8_trains_and_its_activity_node_shows_routing(cli, tmp_path):
    """``probekit train digits-moe8`` reproduces a working mixture; the bundled one's activity node and report
    show per-expert routing share and the active/silent experts."""
    from probekit import open_results
    from probekit_plugins.activity.plot import plot_activity

    code, stdout, _ = cli("train", "digits-moe8", "--out", tmp_path / "moe.pt", "--seed", "1")
    assert code == 0
    trained = torch.load(tmp_path / "moe.pt", weights_only=True)
    assert trained["metrics"]["test_accuracy"] > 0.9 and trained["config"] == {"experts": 8, "k": 2}
    code, stdout, _ = cli("run", "--model", "digits-moe8", "--plugins", "activity", "--out", tmp_path / "a.zarr",
                          "--quiet")
    assert code == 0 and "routing share in model" in stdout and "found by gated-experts" in stdout
    node = open_results(tmp_path / "a.zarr")["activity"].to_dataset()
    assert node.routing_share.sum() == pytest.approx(1.0, abs=1e-6)  # gates renormalised over the top 2
    assert node.routed_fraction.sum() == pytest.approx(2.0, abs=1e-6)  # two experts per sample
    assert (node.active_count + node.silent_count).item() == 8
    per_class = node.class_routing_share.sum("branch").values
    assert per_class == pytest.approx([1.0] * 10, abs=1e-6)
    labels = [figure.get_label() for figure in plot_activity(node)]
    assert "routing" in labels


@pytest.mark.parametrize("name, found", [("googlenet", "branches: 36 found by towers"),
                                         ("vit_b_16", "branches: 144 found by attention-heads")])
def test_torchvision_towers_and_heads_run_from_the_cli(cli, shared_data, tmp_path, name, found):
    """The issue's commands, on 3 images: random weights, no download; ViT's images are resized to its 224."""
    folder = shared_data / "samples" / "afhq"
    code, stdout, stderr = cli("run", "--model", f"torchvision:{name}", "--data", f"imagefolder:{folder}",
                               "--plugins", "activity,covariance,specialization", "--limit", "3",
                               "--out", tmp_path / "t.zarr", "--quiet")
    assert code == 0, stderr
    assert found in stdout
    if name == "vit_b_16":
        assert "resized to 224x224 (the model's image_size)" in stdout
