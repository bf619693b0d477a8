"""The ``hessian`` analysis: exact against a naive double-backward Hessian, and through the CLI."""

import numpy as np
import pytest
import torch
from torch import nn

from probekit import ProbekitError, open_results
from probekit_plugins.hessian.exact import MemoryPlan, generic_hessian, naive_hessian, summed_hessian
from probekit.models.branched import SummedBranches
from probekit.models.branches import DiscoveryConfig, discover
from probekit.run.datasets import TOY_POINTS
from probekit.models.losses import summed_loss
from probekit_plugins.hessian.params import select_params
from probekit.zoo.resnet import branched_resnet18
from probekit.zoo.registry import load_zoo_model

PLAN = MemoryPlan(2 ** 30)


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


def check_summed(model, x, y, loss, pattern=None):
    branchset = discover(model, DiscoveryConfig())
    blocks = select_params(model, branchset, pattern)
    reference = naive_hessian(lambda m: summed_loss(loss, m(x), y, "t"), model, blocks)
    assert reference.norm() > 0
    parts = {within: summed_hessian(model, branchset.layers[0], blocks, x, lambda o: summed_loss(loss, o, y, "t"),
                                    PLAN, within=within) for within in ("auto", "full")}
    for result in parts.values():
        assert relative_error(result.hessian, reference) <= 1e-4
    assert parts["full"].zero_within == ()
    return parts["auto"]


def test_toy_model_matches_the_naive_hessian():
    model = load_zoo_model("toy2").double()
    xs, ys = TOY_POINTS["toy2"]
    x, y = torch.tensor(xs, dtype=torch.float64)[:, None], torch.tensor(ys, dtype=torch.float64)
    parts = check_summed(model, x, y, "mse")
    assert parts.hessian.shape == (40, 40)  # weight and bias of 20 perceptrons


def small_cnn_branch():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                         nn.BatchNorm2d(4), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))


@pytest.mark.parametrize("pattern", [None, "branches.*.3.weight", "branches.*.*.weight"])
def test_cnn_with_batchnorm_matches_the_naive_hessian(pattern):
    torch.manual_seed(0)
    model = SummedBranches([small_cnn_branch() for _ in range(4)]).double()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):  # non-trivial running statistics, used in eval mode
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    model.eval()
    x, y = torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.randint(0, 5, (6,))
    parts = check_summed(model, x, y, "ce", pattern)
    assert parts.distributive_sq.shape == parts.collaborative_sq.shape == (4,)
    assert parts.zero_within == ()  # a Tanh after the selected layers makes every R_k nonzero


def test_relu_branches_first_layer_has_zero_within_branch_term_and_two_layers_do_not():
    torch.manual_seed(0)
    model = SummedBranches([nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))
                            for _ in range(3)]).double().eval()
    x, y = torch.randn(7, 3, dtype=torch.float64), torch.randint(0, 2, (7,))
    assert check_summed(model, x, y, "ce").zero_within == ("branches.0", "branches.1", "branches.2")
    assert check_summed(model, x, y, "ce", "branches.*.*.weight").zero_within == ()  # bilinear cross terms


def test_clamped_branched_resnet_matches_the_naive_hessian():
    torch.manual_seed(0)
    model = branched_resnet18(3, widths=(2, 2, 2, 2)).double().eval()  # clamp after the sum, inside the model
    x, y = torch.rand(5, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (5,))
    assert len(check_summed(model, x, y, "clamped").zero_within) == 3  # ReLU branches: piecewise linear


def test_generic_method_on_a_grouped_conv_matches_and_blocks_are_groups():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=4), nn.BatchNorm2d(8),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).double().eval()
    x, y = torch.randn(4, 3, 9, 9, dtype=torch.float64), torch.randint(0, 3, (4,))
    blocks = select_params(model, discover(model, DiscoveryConfig()))
    assert [b.branch for b in blocks][:2] == ["2[g=0]", "2[g=0]"]  # weight rows then bias of group 0
    assert len({b.branch for b in blocks}) == 4

    def loss(m):
        return summed_loss("ce", m(x), y, "t")

    reference = naive_hessian(loss, model, blocks)
    assert relative_error(generic_hessian(loss, model, blocks, PLAN, 10_000, 4), reference) <= 1e-4


def test_cli_run_with_init_comparison_and_report(cli, tmp_path):
    out = tmp_path / "h.zarr"
    code, stdout, err = cli("run", "--model", "toy2", "--data", "toy2", "--plugins", "hessian", "--out", out,
                            "--option", "hessian.compare_init=true", "--quiet", "--report")
    assert code == 0, err
    node = open_results(out)["hessian"]
    assert list(node.state.values) == ["trained", "init"]
    assert node.attrs["method"].startswith("summed")
    h = node.hessian.sel(state="trained").values
    np.testing.assert_allclose(h, h.T, atol=1e-6)
    share = node.off_block_share.values
    assert ((0 <= share) & (share <= 1)).all() and share[0] != share[1]
    assert node.param_branch.values[0] == "branches.0" and node.sizes["param"] == 40
    assert (tmp_path / "h-report" / "hessian-magnitude.png").is_file()
    code, _, err = cli("run", "--model", "toy2", "--data", "toy2", "--plugins", "hessian", "--out",
                       tmp_path / "g.zarr", "--option", "hessian.method=generic", "--quiet")
    assert code == 0, err
    generic = open_results(tmp_path / "g.zarr")["hessian"]
    assert generic.attrs["method"].startswith("generic")
    np.testing.assert_allclose(generic.hessian.sel(state="trained").values, h, rtol=1e-4, atol=1e-6)


def test_bad_selection_and_tiny_budget_are_clear_errors(cli, tmp_path):
    code, _, err = cli("run", "--model", "toy2", "--data", "toy2", "--plugins", "hessian", "--out",
                       tmp_path / "a.zarr", "--option", "hessian.params=nothing.*", "--quiet")
    assert code == 2 and "matches no parameter" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("run", "--model", "digits-branched8", "--data", "digits:test", "--plugins",
                       "hessian,activity", "--out", tmp_path / "b.zarr", "--limit", "32",
                       "--option", "hessian.max_memory=1KiB", "--option", "hessian.mode=exact", "--quiet")
    assert code == 1 and "raise hessian.max_memory" in err and "hessian.mode=estimate" in err
    assert "activity" in open_results(tmp_path / "b.zarr").children  # the other analysis is kept


class GatedExperts(nn.Module):
    """``sum_k softmax(g(x))_k e_k(x)``: a gated mixture marked as a summed container (as the docs invite)."""

    probekit_branches = "experts"

    def __init__(self):
        super().__init__()
        self.gate = nn.Linear(4, 3)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)) for _ in range(3))

    def forward(self, x):
        g = torch.softmax(self.gate(x), dim=1)
        return sum(g[:, k:k + 1] * expert(x) for k, expert in enumerate(self.experts))


def test_gated_mixture_gets_the_exact_hessian_and_summed_is_refused(tmp_path):
    """The summed method trusted the mark and was off by 0.23 relative error on such a model; auto now checks the
    container is a plain sum on the first batch and falls back to the generic (exact) method."""
    from probekit.models.loading import LoadOptions
    from probekit.run.datasets import RandomImages
    from probekit.run.runner import RunSpec, execute
    from probekit_plugins.hessian.exact import is_plain_sum

    torch.manual_seed(0)
    model = GatedExperts().double().eval()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    branchset = discover(model, DiscoveryConfig())
    assert not is_plain_sum(model, branchset.layers[0], x)
    assert is_plain_sum(SummedBranches([nn.Linear(4, 3) for _ in range(3)]), discover(
        SummedBranches([nn.Linear(4, 3) for _ in range(3)]), DiscoveryConfig()).layers[0], x.float())
    blocks = select_params(model, branchset, None)
    reference = naive_hessian(lambda m: summed_loss("ce", m(x), y, "t"), model, blocks)
    wrong = summed_hessian(model, branchset.layers[0], blocks, x, lambda o: summed_loss("ce", o, y, "t"), PLAN)
    assert relative_error(wrong.hessian, reference) > 0.05  # why the check is needed
    path = tmp_path / "gated.pt"
    torch.save(model.float(), path)  # the run probes float32 data
    spec = dict(model=str(path), data="random:4", plugins=["hessian"], limit=8, batch_size=8, progress=False,
                load=LoadOptions(trust_pickle=True))
    execute(RunSpec(out=str(tmp_path / "auto.zarr"), **spec))
    node = open_results(tmp_path / "auto.zarr")["hessian"]
    assert "generic" in node.attrs["method"]
    inputs = torch.stack([RandomImages((4,), 8, 0)[i][0] for i in range(8)])
    targets = model.float()(inputs).argmax(1)  # random data has no labels: the run uses the predicted classes
    model.double()
    exact = naive_hessian(lambda m: summed_loss("ce", m(inputs.double()), targets, "t"), model, blocks) / 8
    assert relative_error(torch.from_numpy(node.hessian.sel(state="trained").values), exact) <= 1e-4
    run = execute(RunSpec(out=str(tmp_path / "summed.zarr"), options={"hessian": {"method": "summed"}}, **spec))
    assert "is not the plain sum of its branch outputs" in run.errors["hessian"]


def _grouped_cnn():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=4), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, groups=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5))


@pytest.mark.parametrize("make, params, eigenvalues", [
    (lambda: SummedBranches([small_cnn_branch() for _ in range(3)]), "branches.*.3.weight", 3),  # 144 per branch
    (_grouped_cnn, "2.weight,4.weight", 0),  # 8 blocks: row ranges of shared grouped-conv weights, two layers
])
def test_matrix_free_estimates_agree_with_the_exact_hessian_within_their_error_bars(make, params, eigenvalues):
    """Hutchinson block energies and the off-block share against the dense Hessian of a small summed CNN and of
    two grouped layers; Lanczos eigenvalues of the diagonal blocks against numpy's."""
    from probekit_plugins.hessian import block_norms, off_block_share, top_eigenvalues
    from probekit_plugins.hessian.estimate import estimate
    from probekit_plugins.hessian.params import block_slices

    torch.manual_seed(0)
    model = make().double().eval()
    x, y = torch.randn(6, 3, 10, 10, dtype=torch.float64), torch.randint(0, 5, (6,))
    blocks = select_params(model, discover(model, DiscoveryConfig()), params)

    def loss_of(m):
        return summed_loss("ce", m(x), y, "t")

    exact = (naive_hessian(loss_of, model, blocks) / 6).numpy()
    slices = block_slices(blocks)
    est = estimate(loss_of, model, blocks, 6, probes=64, eigenvalues=eigenvalues, lanczos_steps=500, seed=0)
    energy = block_norms(exact, slices) ** 2
    assert est.hvps >= len(slices) * 64
    error = np.abs(est.energy - energy)
    assert np.all(error <= 5 * est.energy_se + 1e-12), error / est.energy_se  # every block within 5 SE
    assert np.mean(error <= 2 * est.energy_se + 1e-12) > 0.75  # and most within 2 (exact zeros count as within)
    share, replicates = off_block_share(exact, slices), est.share_replicates
    assert abs(replicates.mean() - share) < 5 * replicates.std(ddof=1) / np.sqrt(len(replicates))
    if eigenvalues:
        np.testing.assert_allclose(est.eigenvalues, top_eigenvalues(exact, slices, 3), rtol=1e-6, atol=1e-9)


def test_hessian_vector_products_match_the_naive_hessian():
    from probekit_plugins.hessian.estimate import HessianProducts

    torch.manual_seed(0)
    net = GatedExperts().double().eval()
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,))
    blocks = select_params(net, discover(net, DiscoveryConfig()), "experts.*.0.weight")

    def loss_of(m):
        return summed_loss("ce", m(x), y, "t")

    exact = naive_hessian(loss_of, net, blocks) / 5
    products = HessianProducts(loss_of, net, blocks, 5)
    v = torch.randn(3, exact.shape[0], dtype=torch.float64)
    assert relative_error(products(v), v @ exact.T) <= 1e-10


def test_auto_mode_switches_to_the_estimate_past_the_time_budget_and_exact_mode_fails_fast(cli, tmp_path):
    base = ["run", "--model", "torchvision:resnet18", "--data", "cifar10-sample", "--limit", "4", "--plugins",
            "hessian", "--branches", "layer1.*", "--option", "hessian.params=layer1.*.bn1.weight", "--quiet"]
    code, stdout, err = cli(*base, "--option", "hessian.max_time=0.001", "--option", "hessian.probes=6",
                            "--option", "hessian.eigenvalues=2", "--option", "hessian.lanczos_steps=20",
                            "--out", tmp_path / "a.zarr")
    assert code == 0, err
    node = open_results(tmp_path / "a.zarr")["hessian"]
    assert node.attrs["mode"] == "estimate" and "over hessian.max_time" in node.attrs["switched"]
    assert node.attrs["probes"] == 2  # the rounds stop at the time budget, but a standard error needs two
    assert list(node.state.values) == ["random-init"]  # torchvision:NAME without --weights is not "trained"
    assert node.block_energy.shape == (1, 2, 2) and np.isfinite(node.off_block_share_se.values).all()
    assert "matrix-free estimate" in stdout
    code, _, err = cli(*base, "--option", "hessian.max_time=0.001", "--option", "hessian.mode=exact",
                       "--out", tmp_path / "b.zarr")
    assert code == 1 and "over hessian.max_time" in err and "hessian.mode=estimate" in err


def test_within_branch_term_by_pairs_matches_the_naive_hessian_on_two_relu_layers():
    """Two conv layers of a ReLU branch: each layer's own block of R_k is zero and is skipped; the cross block is
    computed once, with one backward pass per element of the smaller layer, and mirrored."""
    torch.manual_seed(0)
    model = SummedBranches([_relu_branch() for _ in range(3)]).double().eval()
    x, y = torch.randn(5, 3, 8, 8, dtype=torch.float64), torch.randint(0, 5, (5,))
    parts = check_summed(model, x, y, "ce", "branches.*.?.weight")  # conv, BatchNorm, conv and head weights
    assert parts.zero_within == ()  # two layers: R_k is not zero as a whole


def _relu_branch():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))


def test_structure_shortcuts_are_exact():
    """One linear layer: its Jacobian from the layer's linearity equals per-sample autodiff, and a piecewise-linear
    branch is proved to have R_k = 0 (no probes); smooth or multi-layer selections are not."""
    from torch.func import jacrev, vmap

    from probekit_plugins.hessian.structure import linear_layer_jacobian, proves_within_zero

    torch.manual_seed(0)
    branch = _relu_branch().double().eval()
    for module in branch.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    u = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    for path in ("0", "3", "7"):  # first conv, second conv, the head
        names = [f"{path}.weight", f"{path}.bias"]
        params = dict(branch.named_parameters())
        selected = {n: params[n].detach() for n in names}
        fixed = {n: t.detach() for n, t in (*branch.named_parameters(), *branch.named_buffers()) if n not in names}

        def out(w, x, fixed=fixed):
            return torch.func.functional_call(branch, {**fixed, **w}, (x.unsqueeze(0),)).flatten(1).squeeze(0)

        jac = vmap(jacrev(out), in_dims=(None, 0))(selected, u)
        expected = torch.cat([jac[n].reshape(4, 5, -1) for n in names], dim=2)
        torch.testing.assert_close(linear_layer_jacobian(branch, path, names, u, 5), expected)
        assert proves_within_zero(branch, names)
    assert not proves_within_zero(branch, ["0.weight", "3.weight"])  # two layers: bilinear cross terms
    assert not proves_within_zero(small_cnn_branch().eval(), ["0.weight", "0.bias"])  # Tanh is smooth
    assert not proves_within_zero(_relu_branch().train(), ["0.weight", "0.bias"])  # BatchNorm in training mode


class DoubledConv(nn.Conv2d):
    """A conv subclass with its own forward (twice the weight): the cheaper backward route must not apply."""

    def forward(self, x):
        return self._conv_forward(x, 2 * self.weight, self.bias)


def test_one_layer_jacobian_keeps_autograd_for_layers_with_their_own_forward():
    from torch.func import jacrev, vmap

    from probekit_plugins.hessian.structure import linear_layer_jacobian

    torch.manual_seed(0)
    branch = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), DoubledConv(4, 4, 3, padding=1), nn.ReLU(),
                           nn.Conv2d(4, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                           nn.Linear(4, 3)).double().eval()
    u = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    names = ["0.weight"]
    fixed = {n: t.detach() for n, t in branch.named_parameters() if n not in names}

    def out(w, x):
        return torch.func.functional_call(branch, {**fixed, **w}, (x.unsqueeze(0),)).flatten(1).squeeze(0)

    expected = vmap(jacrev(out), in_dims=(None, 0))({"0.weight": branch[0].weight.detach()}, u)["0.weight"]
    torch.testing.assert_close(linear_layer_jacobian(branch, "0", names, u, 3), expected.reshape(2, 3, -1))


def test_top2_mixture_of_experts_hessian_matches_the_naive_reference_in_float64(tmp_path):
    """The gated-experts kind: the run's exact Hessian (generic method) over the experts' first layers equals a
    naive double-backward loop, and the summed method is refused with one line."""
    from probekit import MixtureOfExperts, TopKGate
    from probekit.run.datasets import RandomImages
    from probekit.run.runner import RunSpec, execute

    torch.manual_seed(0)
    model = MixtureOfExperts([nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 3)) for _ in range(4)],
                             TopKGate(4, 4, 2)).eval()
    path = tmp_path / "moe.pt"
    torch.save(model, path)  # probekit's own classes: no trust flag needed
    spec = dict(model=str(path), data="random:4", plugins=["hessian"], limit=8, batch_size=8, progress=False,
                options={"hessian": {"params": "experts.*.0.weight", "mode": "exact"}})
    execute(RunSpec(out=str(tmp_path / "moe.zarr"), **spec))
    node = open_results(tmp_path / "moe.zarr")["hessian"]
    assert "generic" in node.attrs["method"]
    assert list(dict.fromkeys(node.param_branch.values)) == [f"experts.{k}" for k in range(4)]
    inputs = torch.stack([RandomImages((4,), 8, 0)[i][0] for i in range(8)]).double()
    model.double()
    targets = model(inputs).argmax(1)
    blocks = select_params(model, discover(model, DiscoveryConfig()), "experts.*.0.weight")
    exact = naive_hessian(lambda m: summed_loss("ce", m(inputs), targets, "t"), model, blocks) / 8
    assert exact.norm() > 0
    float64 = generic_hessian(lambda m: summed_loss("ce", m(inputs), targets, "t") / 8, model, blocks, PLAN,
                              1 << 20, 8)
    assert relative_error(float64, exact) <= 1e-10
    assert relative_error(torch.from_numpy(node.hessian.sel(state="trained").values).double(), exact) <= 1e-4
    spec["options"] = {"hessian": {"params": "experts.*.0.weight", "method": "summed"}}
    with pytest.raises(ProbekitError, match="summed container"):
        execute(RunSpec(out=str(tmp_path / "summed.zarr"), **spec))
