"""``similarity``: linear CKA between branches, exact against plain forward hooks, and the minibatch estimator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import probekit
from probekit.run.data import load_data
from probekit_plugins.similarity.cka import cross_products, exact_cka, minibatch_cka, minibatch_hsic


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al.'s linear CKA of two ``[N, D]`` response matrices, the textbook way."""
    x, y = x - x.mean(0), y - y.mean(0)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def test_cka_on_digits_branched8_equals_plain_hooks():
    tree = probekit.probe("digits-branched8", "digits:test", ["similarity"], progress=False)
    node = tree["similarity"]
    model = probekit.load_model("digits-branched8").module
    data = load_data("digits:test")
    x = torch.stack([data.dataset[i][0] for i in range(len(data))])
    outputs = {}
    hooks = [branch.register_forward_hook(lambda m, a, o, k=k: outputs.__setitem__(k, o.flatten(1).double()))
             for k, branch in enumerate(model.branches)]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    expected = np.array([[linear_cka(outputs[k].numpy(), outputs[j].numpy()) for j in range(8)] for k in range(8)])
    np.testing.assert_allclose(node["cka"].values, expected, rtol=1e-5, atol=1e-7)
    assert str(node["cka_method"].values[0]) == "exact"
    off = expected[~np.eye(8, dtype=bool)]
    np.testing.assert_allclose(float(node["mean_cka"].values[0]), off.mean(), rtol=1e-5)


def test_the_minibatch_estimate_is_unbiased_and_scale_free():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(4000, 6, generator=gen, dtype=torch.float64)
    rotation = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))[0]
    same = 3.0 * base @ rotation  # the same representation, rotated and scaled: CKA 1
    other = torch.randn(4000, 6, generator=gen, dtype=torch.float64)  # unrelated: CKA about 0
    responses = torch.stack([base, same, other], 1)  # [N, 3, 6]
    hsic = sum(minibatch_hsic(responses[i:i + 100]) for i in range(0, 4000, 100)).numpy()
    cka = minibatch_cka(hsic)
    np.testing.assert_allclose(cka[0, 1], 1.0, atol=1e-9)
    assert abs(cka[0, 2]) < 0.02  # unbiased: centred on 0 (the biased estimator sits near D / n = 0.06 here)
    exact = exact_cka(cross_products(responses).numpy(), responses.flatten(1).sum(0).numpy(), 4000, 3)
    np.testing.assert_allclose(exact[0, 1], 1.0, atol=1e-9)
    assert minibatch_hsic(responses[:3]) is None


def test_wide_layers_get_the_minibatch_estimate():
    tree = probekit.probe("digits-branched8", "digits:test", ["similarity"], options={"similarity.max_features": 10},
                          limit=64, progress=False)
    node = tree["similarity"]
    assert str(node["cka_method"].values[0]) == "minibatch"
    np.testing.assert_array_equal(node["cka"].values, node["cka_minibatch"].values)
    assert probekit.plot(tree, "similarity")


@pytest.mark.parametrize("max_features", [4096, 10])  # exact, and the minibatch estimate
def test_a_reference_with_its_branches_permuted_is_matched_back(tmp_path, max_features):
    model = probekit.load_model("digits-branched8").module
    order = [3, 7, 0, 5, 1, 6, 2, 4]  # reference branch i is the probed model's branch order[i]
    model.branches = torch.nn.ModuleList([model.branches[k] for k in order])
    torch.save(model, tmp_path / "perm.pt")
    tree = probekit.probe("digits-branched8", "digits:test", ["similarity"], progress=False, options={
        "similarity": {"reference": str(tmp_path / "perm.pt"), "max_features": max_features}})
    node = tree["similarity"]
    expected = [f"branches.{order.index(k)}" for k in range(8)]
    assert list(node["match"].values) == expected
    np.testing.assert_allclose(node["match_cka"].values, 1.0, rtol=1e-6)
    assert node["cka_reference"].shape == (8, 8) and node.attrs["reference"].endswith("perm.pt")
    # the matching is far beyond the reference's samples shuffled (on the sketches), with an interval
    np.testing.assert_allclose(float(node["mean_match_cka"].values[0]), 1.0, rtol=1e-6)
    assert float(node["mean_match_cka_p"].values[0]) <= 0.01
    assert float(node["mean_match_cka_null"].values[0]) < 0.5 and "mean_match_cka_ci" in node


def test_a_reference_without_the_probed_layers_is_one_line(tmp_path):
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, groups=1)), tmp_path / "other.pt")
    with pytest.raises(probekit.ProbekitError, match="no branches found|none of its layers"):
        probekit.probe("digits-branched8", "digits:test", ["similarity"], limit=8, progress=False,
                       options={"similarity.reference": str(tmp_path / "other.pt")})


class Copies(torch.nn.Module):
    """Four summed branches: two copies of one random map, two independent ones."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        one, other, third = (torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh()) for _ in range(3))
        twin = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh())
        twin.load_state_dict(one.state_dict())
        self.body = probekit.SummedBranches([one, twin, other, third])

    def forward(self, x):
        return self.body(x)


def test_mean_cka_has_its_null_and_interval():
    x = torch.randn(300, 6, generator=torch.Generator().manual_seed(1))
    tree = probekit.probe(Copies(), x, ["similarity"], options={"similarity": {"permutations": 99,
                                                                                "resamples": 50}}, progress=False)
    node = tree["similarity"]
    np.testing.assert_allclose(node["cka"].values[0, 1], 1.0, rtol=1e-9)
    for suffix in ("_p", "_null", "_ci", "_null_band"):
        assert f"mean_cka{suffix}" in node
    assert float(node["mean_cka_p"].values[0]) <= 0.01  # twins share structure: far beyond shuffled samples
    assert float(node["mean_cka_null"].values[0]) < float(node["mean_cka"].values[0])
    low, high = node["mean_cka_ci"].values[0]
    assert low <= float(node["mean_cka"].values[0]) + 0.05 and high >= low


def test_gated_experts_compare_contributions_ungated_outputs_and_co_routed_samples():
    tree = probekit.probe("digits-moe8", "digits:test", ["similarity"], progress=False,
                          options={"similarity.permutations": 0})
    node = tree["similarity"]
    model = probekit.load_model("digits-moe8").module
    moe = next(m for m in model.modules() if isinstance(m, probekit.MixtureOfExperts))
    data = load_data("digits:test")
    x = torch.stack([data.dataset[i][0] for i in range(len(data))])
    outputs, gates = {}, {}
    hooks = [expert.register_forward_hook(lambda m, a, o, k=k: outputs.__setitem__(k, o.flatten(1).double()))
             for k, expert in enumerate(moe.experts)]
    hooks.append(moe.gate.register_forward_hook(lambda m, a, o: gates.__setitem__(0, o.double())))
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    g, e = gates[0].numpy(), {k: v.numpy() for k, v in outputs.items()}
    gated = {k: g[:, k:k + 1] * e[k] for k in e}
    both = {(j, k): (g[:, j] != 0) & (g[:, k] != 0) for j in range(8) for k in range(8)}
    expected = {
        "cka": [[linear_cka(gated[j], gated[k]) for k in range(8)] for j in range(8)],
        "cka_ungated": [[linear_cka(e[j], e[k]) for k in range(8)] for j in range(8)],
        "cka_corouted": [[linear_cka(gated[j][both[j, k]], gated[k][both[j, k]]) if both[j, k].sum() > 1
                          else np.nan for k in range(8)] for j in range(8)],
    }
    for name, values in expected.items():
        np.testing.assert_allclose(node[name].values, np.array(values), rtol=1e-5, atol=1e-7, err_msg=name)
    np.testing.assert_array_equal(node["corouted_samples"].values,
                                  [[both[j, k].sum() for k in range(8)] for j in range(8)])
    # the gate, not the experts, makes the contributions nearly orthogonal
    assert float(node["mean_cka"].values[0]) < float(node["mean_cka_ungated"].values[0])


def test_the_ungated_experts_mean_cka_has_its_null_and_interval():
    node = probekit.probe("digits-moe8", "digits:test", ["similarity"], progress=False, limit=256,
                          options={"similarity": {"permutations": 99, "resamples": 50}})["similarity"]
    for name in ("mean_cka", "mean_cka_ungated", "mean_cka_corouted"):
        assert float(node[f"{name}_p"].values[0]) <= 0.05, name
        low, high = node[f"{name}_ci"].values[0]
        assert low <= high


def test_co_routed_cka_of_wide_layers_is_the_minibatch_estimate():
    tree = probekit.probe("digits-moe8", "digits:test", ["similarity"], progress=False, limit=256,
                          options={"similarity": {"permutations": 0, "max_features": 10}})
    node = tree["similarity"]
    assert str(node["cka_method"].values[0]) == "minibatch"
    diagonal = np.diagonal(node["cka_corouted"].values)
    np.testing.assert_allclose(diagonal[np.isfinite(diagonal)], 1.0, rtol=1e-9)
    assert np.isfinite(node["mean_cka_corouted"].values[0]) and np.isfinite(node["mean_cka_ungated"].values[0])
