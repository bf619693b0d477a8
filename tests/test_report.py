"""``probekit report``: a valid page whose every image is a PNG, for any store."""

import json
import re
import shutil
from html.parser import HTMLParser

import html5lib
import numpy as np
import pytest
import zarr
from PIL import Image

from probekit import hookimpl
from probekit.plugins import manager
from probekit.store.manifest import manifest
from probekit.store.results import open_results, seal_root
from helpers import run_analyses


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))


def images_of(page: str) -> list[dict]:
    parser = _Images()
    parser.feed(page)
    return parser.images


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    """The store ``make demo`` writes: digits-branched8 on digits:test, activity and covariance."""
    tmp = tmp_path_factory.mktemp("demo")
    run_analyses(tmp, "digits-branched8", "digits:test", ["activity", "covariance"])
    return next(tmp.glob("*.zarr"))


def test_demo_report_is_valid_html_and_every_image_is_a_png(cli, demo_store, tmp_path):
    out = tmp_path / "report"
    code, stdout, _ = cli("report", demo_store, "--out", out)
    assert code == 0 and stdout.strip() == f"report: {out / 'index.html'}"
    page = (out / "index.html").read_text()
    html5lib.HTMLParser(strict=True).parse(page)  # raises on any parse error
    images = images_of(page)
    # activity: norms, classes and the evidence of norm_share and relative_norm; covariance: corr, cov, mean_abs_corr
    assert len(images) == 7
    assert {img["src"] for img in images} >= {"activity-evidence-norm_share.png",
                                              "covariance-evidence-mean_abs_corr.png"}
    for img in images:
        png = out / img["src"]
        assert png.parent == out and png.suffix == ".png"
        with Image.open(png) as decoded:
            decoded.load()
            assert decoded.format == "PNG" and decoded.size == (int(img["width"]), int(img["height"]))
        assert img["alt"]
    for text in ("digits-branched8", "digits:test (360 samples)", "active/total in model", "threshold",
                 "torch 2.", "mean |corr| off the diagonal", "targets: the data&#39;s labels"):  # the run's note
        assert text in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing fetched from the network


def test_several_stores_combine_along_seed_and_the_report_draws_their_spread(cli, demo_store, tmp_path):
    from probekit import open_results

    other = run_analyses(tmp_path, "digits-branched8", "digits:test", ["activity", "covariance"], seed=1)
    second = next(tmp_path.glob("*.zarr"))
    assert other.attrs["seed"] == 1
    tree = open_results([demo_store, second], dim="seed")
    share = tree["activity"].norm_share
    assert share.dims == ("seed", "branch") and list(tree["activity"].seed.values) == [0, 1]
    assert np.allclose(share.sel(seed=0), share.sel(seed=1))  # the same model and data: only the nulls' draws differ
    band = tree["activity"].norm_share_null_band
    assert not np.allclose(band.sel(seed=0), band.sel(seed=1))
    labelled = open_results({"first": demo_store, "second": second}, dim="run")
    assert list(labelled["covariance"].run.values) == ["first", "second"]
    out = tmp_path / "spread"
    code, stdout, stderr = cli("report", demo_store, second, "--dim", "seed", "--out", out)
    assert code == 0, stderr
    page = (out / "index.html").read_text()
    html5lib.HTMLParser(strict=True).parse(page)
    assert "norm_share: runs (of 2) with p_adjusted &lt; 0.05" in page and "Combined along seed" in page
    assert {img["src"] for img in images_of(page)} == {"activity-evidence-norm_share.png",
                                                       "activity-evidence-relative_norm.png",
                                                       "covariance-evidence-mean_abs_corr.png"}
    code, _, stderr = cli("report", demo_store, second)
    assert code == 2 and "needs --out" in stderr


def test_figures_are_labeled_from_the_store_attrs(demo_store):
    from probekit import open_results

    node = open_results(demo_store)["activity"].to_dataset()
    figures = manager().hook.probekit_plot(name="activity", node=node)
    assert [f.get_label() for f in figures] == ["norms", "classes"]
    bars = figures[0].axes[0]
    assert bars.get_ylabel() == "branch response norm [output units]"
    assert [t.get_text() for t in bars.get_xticklabels()][0].startswith("branches.")
    heatmap_axes = figures[1].axes
    assert any(ax.get_ylabel() == "norm / class's largest [1]" for ax in heatmap_axes)  # its colorbar
    corr = manager().hook.probekit_plot(name="covariance", node=open_results(demo_store)["covariance"].to_dataset())
    assert corr[0].get_label() == "corr" and any("correlation [1]" in ax.get_ylabel() for ax in corr[0].axes)


class Mystery:
    """A third-party analysis with no plot hook (stands in for a plugin that is not installed)."""

    @hookimpl
    def probekit_register_analyses(self, register):
        import xarray as xr

        from probekit import Analysis

        class Mystery(Analysis):
            name = "mystery"

            def update(self, batch):
                pass

            def finalize(self):
                return xr.Dataset({"answer": ((), 42.0, {"long_name": "the answer"})})

            def summary(self, ds):
                return {"answer": 42}

        register(Mystery)


def test_unknown_plugin_node_still_gets_its_table(cli, tmp_path):
    plugin = Mystery()
    manager().register(plugin)
    try:
        run_analyses(tmp_path, "toy1", "toy1", ["activity", "mystery"])
    finally:
        manager().unregister(plugin)
    store = next(tmp_path.glob("*.zarr"))
    code, _, _ = cli("report", store, "--out", tmp_path / "report")
    page = (tmp_path / "report" / "index.html").read_text()
    assert code == 0 and "No plot is registered for this analysis (plugin &#39;mystery&#39;)" in page
    assert "<th>answer</th><td>42</td>" in page and "the answer" in page


def test_report_reads_no_per_sample_array(cli, demo_store, tmp_path):
    store = tmp_path / "copy.zarr"
    shutil.copytree(demo_store, store)
    for chunk in (store / "activity" / "response_norm" / "c").rglob("*"):  # per-sample chunks made unreadable
        if chunk.is_file():  # (their crc32c codec fails any read)
            chunk.write_bytes(b"\0" * chunk.stat().st_size)
    root = zarr.open_group(str(store), mode="r+")  # the manifest is told, so only a read can notice
    root.attrs["manifests"] = json.dumps({"activity": manifest(store / "activity"),
                                          **{k: v for k, v in json.loads(root.attrs["manifests"]).items()
                                             if k != "activity"}})
    seal_root(store)
    with pytest.raises(Exception, match="checksum"):
        open_results(store)["activity"].response_norm.load()
    code, _, err = cli("report", store)
    assert code == 0, err
    assert (tmp_path / "copy-report" / "activity-norms.png").is_file()


class BrokenPlot:
    @hookimpl(tryfirst=True)
    def probekit_plot(self, name, node):
        raise ValueError("no ink")


def test_a_failing_plot_leaves_a_note_not_a_crash(cli, demo_store, tmp_path):
    plugin = BrokenPlot()
    manager().register(plugin)
    try:
        code, _, _ = cli("report", demo_store, "--out", tmp_path / "r")
    finally:
        manager().unregister(plugin)
    page = (tmp_path / "r" / "index.html").read_text()
    assert code == 0 and "Drawing this analysis failed: ValueError: no ink" in page


def test_existing_report_folder_needs_overwrite(cli, demo_store, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = cli("report", demo_store, "--out", out)
    assert code == 2 and "already exists" in err and (out / "keep.txt").read_text() == "mine"
    code, _, err = cli("report", demo_store, "--out", out, "--overwrite")  # not a report probekit wrote
    assert code == 2 and "not a probekit report folder" in err and (out / "keep.txt").read_text() == "mine"
    ours = tmp_path / "ours"
    assert cli("report", demo_store, "--out", ours)[0] == 0
    (ours / "stale.png").write_bytes(b"old")
    code, _, _ = cli("report", demo_store, "--out", ours, "--overwrite")
    assert code == 0 and not (ours / "stale.png").exists() and (ours / "index.html").is_file()


def test_run_with_report_writes_it_and_prints_its_path_last(cli, tmp_path):
    out = tmp_path / "run.zarr"
    code, stdout, _ = cli("run", "--model", "toy2", "--data", "toy2", "--plugins", "activity,covariance",
                          "--out", out, "--quiet", "--report")
    assert code == 0
    assert stdout.strip().splitlines()[-1] == f"report: {tmp_path / 'run-report' / 'index.html'}"
