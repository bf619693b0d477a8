"""Plugin API v1, from the outside: an analysis written against ``probekit.api`` only
(``tests/fixtures/api_plugin/map_stats.py``: a per-sample array, a summed state and a tap of ``[N, C, H, W]`` maps)
gives the single-process result with ``--nproc 2`` and after SIGKILL plus ``--resume``; and an author's mistakes are
one clear line before the pass."""

from __future__ import annotations

import dataclasses
from typing import Annotated
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from probekit import hookimpl, open_results
from probekit.api import Analysis, Tap
from probekit.plugins import manager

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "api_plugin"
PROBEKIT = str(Path(sys.executable).with_name("probekit"))
RUN = ["run", "--model", "digits-branched8", "--data", "digits:test", "--batch-size", "8", "--plugins",
       "map-stats,activity", "--quiet"]


def probekit(*args, kill_at=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(FIXTURE), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    env.pop("MAP_STATS_KILL_AT", None)
    if kill_at is not None:
        env["MAP_STATS_KILL_AT"] = str(kill_at)
    return subprocess.run([PROBEKIT, *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


def node(store) -> xr.Dataset:
    return open_results(store)["map-stats"].to_dataset().load()


def test_api_only_plugin_gives_one_result_in_one_process_two_processes_and_after_a_resume(tmp_path):
    single = probekit(*RUN, "--out", tmp_path / "one.zarr")
    assert single.returncode == 0, single.stderr[-3000:]
    two = probekit(*RUN, "--nproc", "2", "--out", tmp_path / "two.zarr")
    assert two.returncode == 0, two.stderr[-3000:]
    killed = probekit(*RUN, "--checkpoint-every", "5", "--out", tmp_path / "kill.zarr", kill_at=200)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = probekit(*RUN, "--checkpoint-every", "5", "--out", tmp_path / "kill.zarr", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    one = node(tmp_path / "one.zarr")
    assert one.peak.shape == (360, 8) and one.channel_energy.shape == (8, 16) and int(one.seen) == 360
    assert {"sample", "sample_id", "target"} <= set(one.coords)  # given by the runner, not the plugin
    np.testing.assert_array_equal(one.target.values, np.asarray(one.target.values, dtype=np.int64))
    for other in (node(tmp_path / "two.zarr"), node(tmp_path / "kill.zarr")):
        np.testing.assert_allclose(other.channel_energy.values, one.channel_energy.values, rtol=1e-12)
        np.testing.assert_array_equal(other.peak.values, one.peak.values)
        np.testing.assert_array_equal(other.target.values, one.target.values)
        np.testing.assert_array_equal(other.sample_id.values, one.sample_id.values)
        assert int(other.seen) == 360


class Base(Analysis):
    """A plugin whose ``update`` leaves a mark, so a test can tell the pass never started."""

    marks: list = []
    merge_rules = {"total": "sum"}

    def __init__(self, context, options):
        super().__init__(context, options)
        self.total = 0

    def update(self, batch):
        Base.marks.append(len(batch.index))
        self.total += len(batch.index)

    def finalize(self):
        return xr.Dataset({"total": ((), self.total)})


class Misspelt(Base):
    name = "misspelt"
    merge_rules = {"totl": "sum"}


class BadRule(Base):
    name = "bad-rule"
    merge_rules = {"total": "summ"}


class RowsAsState(Base):
    name = "rows-as-state"
    merge_rules = {"total": "sum", "values": "rows"}

    def __init__(self, context, options):
        super().__init__(context, options)
        self.values = context.sample_array(self.name, "values", ("sample",), (), np.float32, {})


@dataclasses.dataclass
class LimitOptions:
    limit: int | None = None
    mode: str = "fast"


class WithOptional(Base):
    name = "with-optional"
    Options = LimitOptions


class BadTap(Base):
    name = "bad-tap"
    taps = {"x": Tap("no.such.module")}


class UnsupportedOption(Base):
    name = "unsupported-option"

    @dataclasses.dataclass
    class Options:
        table: dict = dataclasses.field(default_factory=dict)


class Broken:
    @hookimpl
    def probekit_register_analyses(register):
        for cls in (Misspelt, BadRule, RowsAsState, WithOptional, BadTap, UnsupportedOption):
            register(cls)


@pytest.fixture
def broken_plugins():
    manager().register(Broken, name="broken-for-test")
    Base.marks.clear()
    yield
    manager().unregister(name="broken-for-test")


@pytest.mark.parametrize("plugin, extra, message", [
    ("misspelt", [], "merge_rules names 'totl', which __init__ does not set (its attributes: total)"),
    ("bad-rule", [], "merge rule 'summ' of 'total' is not one of sum, max, min, rows, compensated-sum, custom"),
    ("rows-as-state", [], "'values' is a per-sample array; the runner writes, merges and restores those itself"),
    ("with-optional", ["--option", "with-optional.limit=abc"], "with-optional.limit must be int or none, not 'abc'"),
    ("bad-tap", [], "tap 'no.such.module' matches no module path"),
    ("unsupported-option", [], "options of type"),
])
def test_author_mistakes_are_one_line_before_the_pass(cli, tmp_path, broken_plugins, plugin, extra, message):
    code, _, err = cli("run", "--model", "digits-branched8", "--data", "digits:test", "--plugins", plugin,
                       "--out", tmp_path / "s.zarr", "--quiet", *extra)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert Base.marks == []  # update() never ran
    assert not (tmp_path / "s.zarr").exists()


def test_optional_list_and_literal_options_read_their_text(cli, tmp_path, broken_plugins):
    from probekit.run.options import convert

    assert convert("none", int | None, "x") is None and convert("7", int | None, "x") == 7
    assert convert("1,5", list[int], "x") == [1, 5]
    from typing import Literal

    assert convert("init", Literal["auto", "init"] | list[int], "x") == "init"
    assert convert("3,4", Literal["auto", "init"] | list[int], "x") == [3, 4]
    code, _, err = cli("run", "--model", "digits-branched8", "--data", "digits:test", "--limit", "16", "--plugins",
                       "with-optional", "--option", "with-optional.limit=12", "--out", tmp_path / "ok.zarr",
                       "--quiet")
    assert code == 0, err


@dataclasses.dataclass
class TapOptions:
    layer: Annotated[str, "module path glob whose outputs are tapped"] = "branches.*"
    keep: int = dataclasses.field(default=3, metadata={"help": "values kept per branch"})


class ChosenTap(Analysis):
    """Chooses its tap from an option and sizes its state from the response sizes known before the pass."""

    name = "chosen-tap"
    Options = TapOptions
    merge_rules = {"seen": "sum"}

    def __init__(self, context, options):
        super().__init__(context, options)
        self.taps = {"chosen": Tap(options.layer)}
        self.sizes = dict(context.response_sizes)
        self.seen = 0

    def update(self, batch):
        self.seen += sum(t.shape[0] for t in batch.taps["chosen"].values())

    def finalize(self):
        return xr.Dataset({"seen": ((), self.seen), "sizes": (("layer",), list(self.sizes.values()))},
                          coords={"layer": ("layer", list(self.sizes))})


class ChosenTapPlugin:
    @hookimpl
    def probekit_register_analyses(register):
        register(ChosenTap)


def test_options_carry_help_taps_follow_an_option_and_sizes_are_known_before_the_pass(cli, tmp_path):
    manager().register(ChosenTapPlugin, name="chosen-tap-for-test")
    try:
        code, out, err = cli("plugins", "chosen-tap")
        assert code == 0 and "chosen-tap.layer: str (default 'branches.*'): module path glob whose outputs" in out
        assert "chosen-tap.keep: int (default 3): values kept per branch" in out
        code, _, err = cli("run", "--model", "digits-branched8", "--data", "digits:test", "--limit", "16",
                           "--plugins", "chosen-tap", "--option", "chosen-tap.layer=branches.0", "--out",
                           tmp_path / "t.zarr", "--quiet")
        assert code == 0, err
        node = open_results(tmp_path / "t.zarr")["chosen-tap"]
        assert int(node.seen) == 16  # one tapped module (branches.0), 16 samples
        assert dict(zip(node["layer"].values, node["sizes"].values, strict=True)) == {"model": 10}
        code, _, err = cli("run", "--model", "digits-branched8", "--data", "digits:test", "--limit", "16",
                           "--plugins", "chosen-tap", "--option", "chosen-tap.layer=no.such", "--out",
                           tmp_path / "u.zarr", "--quiet")
        assert code == 2 and "tap 'no.such' matches no module path" in err
    finally:
        manager().unregister(name="chosen-tap-for-test")
