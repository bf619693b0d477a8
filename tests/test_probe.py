"""``probekit.probe``: a model in memory, data in any form a notebook holds, results in memory or in a store,
and the same numbers as the command line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import probekit
from probekit.errors import ProbekitError


class NotebookNet(nn.Module):
    """A model whose class lives in this file only (no allowlist knows it): four summed branches."""

    def __init__(self):
        super().__init__()
        self.body = probekit.SummedBranches(
            [nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)) for _ in range(4)])

    def forward(self, x):
        return self.body(x)


class KeywordNet(NotebookNet):
    """The same model called with keyword inputs, as token models are (``model(**batch)``)."""

    def forward(self, features, scale=None):
        return self.body(features if scale is None else features * scale)


@pytest.fixture
def model_and_data():
    torch.manual_seed(0)
    return NotebookNet(), torch.randn(50, 8), torch.randint(0, 3, (50,))


def hooked_norms(model: NotebookNet, x: torch.Tensor) -> np.ndarray:
    """Each branch's response norm over all samples, from plain forward hooks."""
    outputs = {}
    handles = [b.register_forward_hook(lambda m, i, o, k=k: outputs.__setitem__(k, o))
               for k, b in enumerate(model.body.branches)]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return np.array([outputs[k].double().norm().item() for k in range(len(outputs))])


def test_a_model_defined_here_is_probed_in_memory(model_and_data):
    model, x, y = model_and_data
    model.train()
    tree = probekit.probe(model, TensorDataset(x, y), ["activity", "covariance"], progress=False)
    assert isinstance(tree, xr.DataTree) and set(tree.children) == {"activity", "covariance"}
    np.testing.assert_allclose(tree["activity"]["norm"].values, hooked_norms(model.eval(), x), rtol=1e-5)
    assert tree["covariance"]["cov"].shape == (4, 4)
    assert model.body.branches[0][0].training is False  # (eval() above) ...
    model.train()
    probekit.probe(model, TensorDataset(x, y), ["activity"], progress=False)
    assert model.training and all(m.training for m in model.modules())  # ... the user's mode is restored
    attrs = tree.attrs
    assert attrs["probekit_status"] == "complete" and attrs["n_samples"] == 50 and "NotebookNet" in attrs["model"]
    assert attrs["targets"] == "data labels" and attrs["command"].startswith("probekit.probe(NotebookNet")
    assert list(tree["activity"]["class_name"].values) == ["0", "1", "2"]


@pytest.mark.parametrize("form", ["tensor", "loader", "batches", "dataset-of-tuples", "dicts"])
def test_every_data_form_gives_the_same_numbers(model_and_data, form):
    model, x, y = model_and_data
    expected = hooked_norms(model, x)
    if form == "dicts":
        model = KeywordNet()
        model.load_state_dict(model_and_data[0].state_dict())
    data, targets = {
        "tensor": (x, y),
        "loader": (DataLoader(TensorDataset(x, y), batch_size=7), None),
        "batches": (((x[i:i + 16], y[i:i + 16]) for i in range(0, 50, 16)), None),
        "dataset-of-tuples": (PairDataset(x, y), None),
        "dicts": ([{"features": x[i:i + 20], "label": y[i:i + 20]} for i in range(0, 50, 20)], None),
    }[form]
    tree = probekit.probe(model, data, ["activity"], targets=targets, progress=False)
    np.testing.assert_allclose(tree["activity"]["norm"].values, expected, rtol=1e-5)
    assert tree.attrs["n_samples"] == 50 and tree.attrs["targets"] == "data labels"
    assert list(tree["activity"]["target"].values) == y.tolist()


class PairDataset(Dataset):
    """A plain Dataset of ``(x, y)`` tuples."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def test_limit_on_ready_made_batches_cuts_the_last_one(model_and_data):
    model, x, y = model_and_data
    tree = probekit.probe(model, DataLoader(TensorDataset(x, y), batch_size=16), ["activity"], limit=20,
                          progress=False)
    assert tree.attrs["n_samples"] == 20
    np.testing.assert_allclose(tree["activity"]["norm"].values, hooked_norms(model, x[:20]), rtol=1e-5)


def test_same_numbers_as_the_command_line(cli, tmp_path):
    code, _, err = cli("run", "--model", "digits-branched8", "--data", "digits", "--plugins", "activity",
                       "--limit", "32", "--out", tmp_path / "cli.zarr", "--quiet")
    assert code == 0, err
    from_cli = probekit.open_results(tmp_path / "cli.zarr")
    tree = probekit.probe("digits-branched8", "digits", ["activity"], limit=32, progress=False)
    for name, variable in from_cli["activity"].to_dataset().data_vars.items():
        np.testing.assert_allclose(tree["activity"][name].values, variable.values, rtol=1e-6, err_msg=name)
    for key in ("model", "dataset", "n_samples", "branch_strategy", "targets"):
        assert tree.attrs[key] == from_cli.attrs[key]


def test_out_writes_the_store_the_command_line_writes(model_and_data, tmp_path):
    model, x, y = model_and_data
    tree = probekit.probe(model, x, ["activity"], targets=y, out=tmp_path / "r.zarr", progress=False)
    assert (tmp_path / "r.zarr").is_dir()
    reopened = probekit.open_results(tmp_path / "r.zarr")
    np.testing.assert_array_equal(reopened["activity"]["norm"].values, tree["activity"]["norm"].values)
    with pytest.raises(ProbekitError, match="already exists; pass --overwrite"):
        probekit.probe(model, x, ["activity"], targets=y, out=tmp_path / "r.zarr", progress=False)


def test_bad_input_is_one_probekit_error(model_and_data):
    model, x, y = model_and_data
    with pytest.raises(ProbekitError, match="unknown plugin 'nope'"):
        probekit.probe(model, x, ["nope"], progress=False)
    with pytest.raises(ProbekitError, match="50 samples but 3 targets"):
        probekit.probe(model, x, ["activity"], targets=y[:3], progress=False)
    with pytest.raises(ProbekitError, match="not int"):
        probekit.probe(model, 5, ["activity"], progress=False)
    with pytest.raises(ProbekitError, match="does not fit model"):
        probekit.probe(model, torch.randn(4, 5), ["activity"], progress=False)


def test_threads_are_set_for_the_run_and_restored(model_and_data):
    model, x, _ = model_and_data
    before = torch.get_num_threads()
    tree = probekit.probe(model, x, ["activity"], threads=1, progress=False)
    assert "threads: 1 (asked)" in tree.attrs["note"] and torch.get_num_threads() == before


def test_plot_gives_the_report_figures(model_and_data):
    import matplotlib.figure

    model, x, y = model_and_data
    tree = probekit.probe(model, x, ["activity", "covariance"], targets=y, progress=False)
    figures = probekit.plot(tree, "activity")
    assert figures and all(isinstance(f, matplotlib.figure.Figure) for f in figures)
    assert probekit.plot(tree["covariance"])
    with pytest.raises(ProbekitError, match="name the one to plot"):
        probekit.plot(tree)


def test_tab_completion_lists_the_public_names():
    names = dir(probekit)
    assert {"probe", "plot", "open_results", "SummedBranches", "ProbekitError"} <= set(names)
    assert "import_module" not in names


class AttentionNet(nn.Module):
    """One nn.MultiheadAttention (its heads are found by swapping it for a per-head module) and a head."""

    def __init__(self):
        super().__init__()
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.attention(x, x, x)[0].mean(1))


def test_a_model_whose_attention_is_swapped_is_left_as_it_was():
    torch.manual_seed(0)
    model = AttentionNet().train()
    x = torch.randn(6, 5, 8)
    before = model.eval()(x)
    model.train()
    tree = probekit.probe(model, x, ["activity"], progress=False)
    assert type(model.attention) is nn.MultiheadAttention and model.training
    assert tree["activity"].sizes["branch"] == 2
    torch.testing.assert_close(model.eval()(x), before)


def test_an_in_memory_result_holds_its_chunked_arrays_after_the_scratch_store_is_gone():
    """A node's arrays stored in several chunks (the hessian matrix) are read before the scratch store goes."""
    model = probekit.load_model("digits-branched8").module
    tree = probekit.probe(model, "digits:test", ["hessian"], limit=64, progress=False,
                          options={"hessian": {"mode": "exact"}})
    matrix = tree["hessian"]["hessian"].values
    assert matrix.shape[1] > 200 and np.isfinite(matrix).all()
