"""Every hook is documented in docs/hooks.md, and each one works for a plugin registered at run time."""

import inspect

import pytest
import torch
from torch import nn

from probekit import hookimpl, hookspecs
from probekit.models.branches import BranchLayer, BranchSet, DiscoveryConfig, discover
from probekit.errors import ProbekitError
from probekit.models.loading import LoadedModel, load_model
from probekit.plugins import manager
from conftest import REPO
from helpers import run_analyses

HOOKS = sorted(name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("probekit_"))


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook):
    assert f"`{hook}(" in (REPO / "docs" / "hooks.md").read_text()


@pytest.fixture
def plugin():
    """Register a plugin object for one test, and always unregister it."""
    registered = []

    def add(obj):
        manager().register(obj)
        registered.append(obj)
        return obj

    yield add
    for obj in registered:
        manager().unregister(obj)


class Recorder:
    def __init__(self):
        self.calls = []

    @hookimpl
    def probekit_run_start(self, run):
        self.calls.append(("start", run.n_samples, len(run.branchset)))

    @hookimpl
    def probekit_run_finish(self, run, tree):
        self.calls.append(("finish", sorted(tree.children)))


def test_run_start_and_finish(tmp_path, plugin):
    recorder = plugin(Recorder())
    run_analyses(tmp_path, "toy1", "toy1", ["activity"])
    assert recorder.calls == [("start", 4, 10), ("finish", ["activity"])]


class TwinLoader:
    @hookimpl
    def probekit_register_model_loaders(self, register):
        register("twin", lambda argument, options: nn.Sequential(nn.Linear(int(argument), 2)))


def test_register_model_loaders(plugin):
    plugin(TwinLoader())
    assert isinstance(load_model("twin:3").module[0], nn.Linear)


class ExpertsByName:
    """A third-party strategy: every child named ``expert*`` is a branch."""

    @hookimpl
    def probekit_discover_branches(self, model, config):
        names = tuple(n for n, _ in model.named_children() if n.startswith("expert"))
        return BranchSet((BranchLayer("model", "glob", names, names),), "experts") if names else None


def test_discover_branches_plugin_is_asked_first(plugin):
    plugin(ExpertsByName())
    model = nn.Module()
    model.expert_a, model.expert_b = nn.Linear(2, 2), nn.Linear(2, 2)
    assert discover(model, DiscoveryConfig()).strategy == "experts"
    grouped = nn.Sequential(nn.Conv2d(4, 4, 1, groups=2))
    assert discover(grouped, DiscoveryConfig()).strategy == "grouped-conv"  # falls through when it says None


class Constant:
    @hookimpl
    def probekit_register_datasets(self, register):
        from torch.utils.data import TensorDataset

        from probekit.run.data import ProbeData

        register("ones", lambda argument, seed: ProbeData("ones", TensorDataset(torch.ones(6, 1), torch.zeros(6)),
                                                          [str(i) for i in range(6)]))


def test_register_datasets_and_analyses(tmp_path, plugin):
    plugin(Constant())
    ds = run_analyses(tmp_path, "toy1", "ones", ["activity", "covariance"], batch_size=4)
    assert ds["activity"].sizes["sample"] == 6  # activity and covariance come from probekit_register_analyses


class Exploding:
    """An analysis plugin whose update raises: the others must still be stored."""

    @hookimpl
    def probekit_register_analyses(self, register):
        from probekit import Analysis

        class Boom(Analysis):
            name = "boom"

            def update(self, batch):
                raise RuntimeError("kaboom")

        register(Boom)


def test_a_failing_analysis_keeps_the_others_and_exits_non_zero(cli, tmp_path, plugin):
    plugin(Exploding())
    out = tmp_path / "r.zarr"
    code, _, err = cli("run", "--model", "toy1", "--data", "toy1", "--plugins", "activity,boom", "--out", out,
                       "--quiet")
    assert code == 1 and "analysis boom failed: RuntimeError: kaboom" in err
    from probekit import open_results

    tree = open_results(out)
    assert list(tree.children) == ["activity"] and tree.attrs["probekit_status"] == "failed"
    assert "kaboom" in tree.attrs["errors"]


class NamedAndCheckpointed:
    """A third-party model zoo: a bare name, a checkpoint format and a module allowed in pickles."""

    @hookimpl
    def probekit_register_model_names(self, register):
        register("tiny-twin", lambda name, options: LoadedModel(nn.Linear(3, 2), name, "sha-of-tiny"), "a twin", "x")

    @hookimpl
    def probekit_model_from_checkpoint(self, checkpoint):
        return nn.Linear(*checkpoint["shape"]) if checkpoint.get("format") == "twin" else None

    @hookimpl
    def probekit_safe_model_modules(self):
        return ["helpers"]


def test_register_model_names_and_model_from_checkpoint(plugin, tmp_path):
    plugin(NamedAndCheckpointed())
    loaded = load_model("tiny-twin")
    assert isinstance(loaded.module, nn.Linear) and loaded.sha256 == "sha-of-tiny"
    path = tmp_path / "twin.pt"
    torch.save({"format": "twin", "shape": [4, 5]}, path)
    assert load_model(str(path)).module.out_features == 5
    torch.save({"format": "other"}, path)
    with pytest.raises(ProbekitError, match="holds weights"):
        load_model(str(path))


def test_safe_model_modules_extend_the_pickle_allowlist(plugin, tmp_path):
    from helpers import PicklableBlock

    path = tmp_path / "block.pt"
    torch.save(PicklableBlock(), path)
    with pytest.raises(ProbekitError, match="helpers.PicklableBlock"):
        load_model(str(path))
    plugin(NamedAndCheckpointed())
    assert isinstance(load_model(str(path)).module, PicklableBlock)


class Hello:
    @hookimpl
    def probekit_register_commands(self, subparsers):
        hello = subparsers.add_parser("hello", help="say hello")
        hello.set_defaults(func=lambda args: print("hello from a plugin") or 0)


def test_register_commands(capsys, monkeypatch):
    from probekit import commands
    from probekit.cli import main

    real = commands.command_plugins()
    assert any(p.__name__ == "probekit.zoo.commands" for p in real)  # found in the installed entry_points.txt
    monkeypatch.setattr(commands, "command_plugins", lambda: (*real, Hello()))
    assert main(["hello"]) == 0
    assert capsys.readouterr().out.strip() == "hello from a plugin"
