import numpy as np
import pytest
import torch
import xarray as xr

from probekit import ProbekitError
from probekit.zoo.architectures import branched_perceptron
from probekit.run.datasets import TOY_POINTS
from probekit.zoo.toy_sweep import FlatNetworks, SweepConfig, initial_parameters, parse_branch_counts, run_sweep, train

pytestmark = pytest.mark.timeout(300)  # these tests train: a hung kernel fails them with its stack


def plain_training(w0, b0, task, steps, lr):
    """One network trained the ordinary way: nn.Modules, autograd and torch.optim.SGD, in float64."""
    model = branched_perceptron(len(w0)).double()
    with torch.no_grad():
        for k, branch in enumerate(model.branches):
            branch.linear.weight.fill_(float(w0[k]))
            branch.linear.bias.fill_(float(b0[k]))
    xs, ys = TOY_POINTS[task]
    x, y = torch.tensor(xs, dtype=torch.float64)[:, None], torch.tensor(ys, dtype=torch.float64)[:, None]
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        (0.5 * (model(x) - y).pow(2).sum()).backward()
        optimizer.step()
    with torch.no_grad():
        return (torch.cat([b.linear.weight.reshape(1) for b in model.branches]),
                torch.cat([b.linear.bias.reshape(1) for b in model.branches]))


@pytest.mark.parametrize("task", ["toy1", "toy2"])
def test_batched_trainer_matches_a_plain_training_loop(task):
    config = SweepConfig(task=task, branches=(3, 7), trials=5, steps=400, lr=0.02, dtype="float64")
    inits = [initial_parameters(config, m) for m in config.branches]
    w = torch.cat([p[0].reshape(-1) for p in inits])
    b = torch.cat([p[1].reshape(-1) for p in inits])
    nets = FlatNetworks(config.branches, config.trials)
    xs, ys = TOY_POINTS[task]
    train(w, b, torch.tensor(xs, dtype=torch.float64), torch.tensor(ys, dtype=torch.float64), nets, config.steps,
          config.lr)
    for group, m in enumerate(config.branches):
        for trial in (0, 4):
            start = int(nets.offsets[group * config.trials + trial])
            w_ref, b_ref = plain_training(inits[group][0][trial], inits[group][1][trial], task, config.steps, config.lr)
            torch.testing.assert_close(w[start:start + m], w_ref, atol=1e-6, rtol=0)
            torch.testing.assert_close(b[start:start + m], b_ref, atol=1e-6, rtol=0)
            assert not torch.equal(w_ref, inits[group][0][trial])  # it did train


def test_toy1_success_grows_with_m_and_is_near_certain_from_ten_branches():
    ds = run_sweep(SweepConfig(task="toy1", branches=(2, 3, 5, 10, 20, 30), trials=200), progress=False)
    rate = ds.success_rate.values
    assert rate[0] < 0.7 and np.all(np.diff(rate) >= -0.02)
    assert (ds.success_rate.sel(n_branches=[10, 20, 30]) >= 0.95).all()
    assert (ds.success_rate_low <= ds.success_rate).all() and (ds.success_rate <= ds.success_rate_high).all()


def test_toy2_active_counts_level_off_while_silent_ones_grow_linearly():
    counts = (10, 15, 20, 25, 30)
    ds = run_sweep(SweepConfig(task="toy2", branches=counts, trials=200), progress=False)
    active, silent = ds.mean_active.values, ds.mean_silent.values
    assert active.max() - active.min() < 1.5  # about constant: 4-5 active branches from M = 10 to 30
    slope, _ = np.polyfit(counts, silent, 1)
    assert 0.8 < slope < 1.1 and np.corrcoef(counts, silent)[0, 1] > 0.99


def test_node_layout_and_padding():
    ds = run_sweep(SweepConfig(task="toy1", branches=(2, 4), trials=3, steps=50, record_dynamics=2,
                               dynamics_every=10), progress=False)
    assert ds.responses.dims == ("n_branches", "trial", "branch", "sample")
    assert ds.sizes["branch"] == 4 and ds.sizes["sample"] == 4
    two = ds.responses.sel(n_branches=2).values
    assert np.isnan(two[:, 2:]).all() and np.isfinite(two[:, :2]).all()
    cov = ds.cov.sel(n_branches=4, trial=1).values
    f = ds.responses.sel(n_branches=4, trial=1).values
    np.testing.assert_allclose(cov, f @ f.T, rtol=1e-5)
    assert list(ds.step.values) == [0, 10, 20, 30, 40, 50] and ds.trajectory.sizes["traced_trial"] == 2
    np.testing.assert_allclose(ds.trajectory.isel(step=-1).sel(n_branches=4).values,
                               ds.responses.sel(n_branches=4).isel(trial=[0, 1]).values, rtol=1e-6)


def test_cli_writes_a_store_and_reports_it(cli, tmp_path):
    out = tmp_path / "sweep.zarr"
    code, stdout, err = cli("experiment", "toy-sweep", "--task", "toy2", "--branches", "2:4", "--trials", "20",
                            "--steps", "300", "--record-dynamics", "2", "--out", out, "--quiet", "--report")
    assert code == 0, err
    tree = xr.open_datatree(str(out), engine="zarr")
    assert tree["toy-sweep"].sizes["n_branches"] == 3 and tree.attrs["dataset"] == "toy2"
    report = tmp_path / "sweep-report"
    assert sorted(p.name for p in report.glob("*.png")) == [
        "toy-sweep-active.png", "toy-sweep-covariances.png", "toy-sweep-dynamics.png", "toy-sweep-success.png"]
    assert stdout.strip().endswith(f"report: {report / 'index.html'}")


@pytest.mark.parametrize("args, message", [
    (["--task", "toy3"], "--task must be one of"),
    (["--branches", "two"], "--branches must look like"),
    (["--init", "gaussian"], "--init must be"),
    (["--lr", "0"], "--lr > 0"),
])
def test_bad_sweep_options(cli, tmp_path, args, message):
    code, _, err = cli("experiment", "toy-sweep", "--out", tmp_path / "s.zarr", "--quiet", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s.zarr").exists()


def test_branch_count_parsing():
    assert parse_branch_counts("2:5") == (2, 3, 4, 5) and parse_branch_counts("3,9") == (3, 9)
    with pytest.raises(ProbekitError):
        parse_branch_counts("5:2")
