"""``probekit report``: one self-contained HTML page (plus PNGs) from a results store.

Every node gets its key numbers and variables; nodes whose plugin implements
``probekit_plot`` also get their figures. Figures are drawn from the node's
reductions, read lazily, so the per-sample arrays are never loaded.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import warnings
from pathlib import Path

import jinja2

from probekit.errors import ProbekitError
from probekit.report.evidence_plot import evidence_names, plot_evidence
from probekit.stats.evidence import SIGNIFICANCE
from probekit.store.combine import COMBINED_ATTR
from probekit.store.results import DAMAGED_ATTR, STATUS_ATTR, open_results
from probekit.store.location import is_url, local_path, name_of

DPI = 100


def default_report_dir(store: str | Path) -> Path:
    """``runs/x.zarr`` -> ``runs/x-report``; a store at a URL -> ``x-report`` in the working folder."""
    if is_url(store):
        return Path(f"{Path(name_of(store)).stem}-report")
    store = local_path(store)
    return store.with_name(f"{store.stem}-report")


def _provenance(attrs: dict) -> dict[str, str]:
    model = json.loads(attrs.get("model", "{}") or "{}")
    return {
        "model": str(model.get("spec", "?")),
        "weights sha256": str(model.get("sha256", "?")),
        "data": f"{attrs.get('dataset', '?')} ({attrs.get('n_samples', '?')} samples)",
        "branches": f"{attrs.get('n_branches', '?')}, found by {attrs.get('branch_strategy', '?')}",
        "analyses": ", ".join(json.loads(attrs.get("plugins", "[]"))),
        "seed": str(attrs.get("seed", "?")),
        "created": str(attrs.get("created_at", "?")),
        "versions": f"probekit {attrs.get('probekit_version', '?')}, torch {attrs.get('torch_version', '?')}",
        "command": str(attrs.get("command", "")),
        "note": str(attrs.get("note", "")),  # what the run chose for the user (data, size, targets, methods)
    }


def _figures(name: str, ds, out: Path, along: str | None = None) -> tuple[list[dict], str]:
    """Save the plugin's figures (none on a combined tree) and the evidence figures for node ``name`` as PNGs;
    return their entries and a note."""
    from probekit.plugins import manager

    try:
        evidence = plot_evidence(ds, name, along)
    except Exception as exc:  # a figure that cannot be drawn must not cost the report
        evidence, failed = [], f" Drawing its evidence failed: {type(exc).__name__}: {exc}"
    else:
        failed = ""
    if along is not None:
        return _saved(name, evidence, out), (f"Combined along {along}: each run's estimate is a dot; the plugin's "
                                             "own figures are in each run's report." + failed)
    try:
        figures = manager().hook.probekit_plot(name=name, node=ds)
    except Exception as exc:  # one broken plot must not cost the whole report
        return _saved(name, evidence, out), f"Drawing this analysis failed: {type(exc).__name__}: {exc}{failed}"
    if figures is None:
        return _saved(name, evidence, out), (f"No plot is registered for this analysis (plugin "
                                             f"{ds.attrs.get('plugin', name)!r}).{failed}")
    return _saved(name, [*figures, *evidence], out), failed.strip()


def _saved(name: str, figures: list, out: Path) -> list[dict]:
    """Save ``figures`` as ``name-LABEL.png`` in ``out``; their page entries."""
    entries = []
    for index, fig in enumerate(figures):
        label = re.sub(r"[^A-Za-z0-9_-]+", "-", fig.get_label() or f"figure{index}")
        file = f"{name}-{label}.png"
        fig.savefig(out / file, dpi=DPI)
        width, height = (int(round(v * DPI)) for v in fig.get_size_inches())
        caption = fig.get_suptitle() or f"{name}: {label}"
        entries.append({"file": file, "caption": caption, "width": width, "height": height})
    return entries


def _combined_summary(ds, along: str) -> dict:
    """Per statistic with a test: in how many runs each entry is beyond the null (the first 8 entries)."""
    out = {}
    for name in evidence_names(ds):
        key = f"{name}_p_adjusted" if f"{name}_p_adjusted" in ds else f"{name}_p"
        if key not in ds:
            continue
        p = ds[key].load()
        count = (p < SIGNIFICANCE).sum(along)
        flat = count.stack(entry=[d for d in count.dims]) if count.dims else count.expand_dims(entry=[0])
        shown = ", ".join(str(int(v)) for v in flat.values[:8]) + (" ..." if flat.size > 8 else "")
        out[f"{name}: runs (of {ds.sizes[along]}) with {key.removeprefix(name + '_')} < {SIGNIFICANCE}"] = shown
    return out


def _node_entry(name: str, node, out: Path, along: str | None = None) -> dict:
    ds = node.to_dataset()
    figures, note = _figures(name, ds, out, along)
    options = json.loads(ds.attrs.get("options", "{}") or "{}")
    return {
        "name": name,
        "anchor": f"node-{re.sub(r'[^A-Za-z0-9_-]+', '-', name)}",
        "plugin": ds.attrs.get("plugin", "?"),
        "plugin_version": ds.attrs.get("plugin_version", ""),
        "options": ", ".join(f"{key} = {json.dumps(value)}" for key, value in sorted(options.items())) or "(none)",
        "dims": ", ".join(f"{d} = {n}" for d, n in ds.sizes.items()),
        "summary": _combined_summary(ds, along) if along else json.loads(ds.attrs.get("summary", "{}") or "{}"),
        "figures": figures,
        "plot_note": note,
        "variables": [
            {"name": v, "dims": " x ".join(map(str, var.dims)), "long_name": var.attrs.get("long_name", ""),
             "units": var.attrs.get("units", "")}
            for v, var in ds.data_vars.items()
        ],
    }


REPORT_MARKER = "probekit-report.json"  # written into every report folder: only such a folder is replaced


def check_report_target(store: str | Path, target: Path, overwrite: bool) -> Path:
    """The report folder, resolved; refused when it holds the store or lies inside it, or when it exists and
    is not a probekit report (without ``overwrite``, whenever it exists)."""
    target = target.expanduser().resolve()
    if not is_url(store):
        source = local_path(store).expanduser().resolve()
        if target == source or source.is_relative_to(target) or target.is_relative_to(source):
            raise ProbekitError(f"report folder {target} would hold or sit inside the store {source}; choose "
                                "another --out")
    if target.exists() and not overwrite:
        raise ProbekitError(f"report folder {target} already exists; pass --overwrite to replace it")
    if target.exists() and not (target / REPORT_MARKER).is_file():
        raise ProbekitError(f"{target} exists and is not a probekit report folder (no {REPORT_MARKER}); "
                            "--overwrite replaces only a report probekit wrote, so choose another --out")
    return target


def write_report(store: str | Path | list, out: str | Path | None = None, overwrite: bool = False,
                 dim: str = "seed") -> Path:
    """Write ``index.html`` and its PNGs into ``out`` (default ``<store>-report``); return the page's path.

    Several stores (a list) are combined along ``dim`` (:func:`probekit.store.combine.combine_results`) and the
    page draws their spread; ``out`` is then required. The page is built in a sibling folder and swapped in
    whole; ``overwrite`` replaces only a folder that holds a probekit report (:data:`REPORT_MARKER`), and nothing
    outside ``out`` is touched."""
    stores = list(store) if isinstance(store, (list, tuple)) else [store]
    if len(stores) > 1 and not out:
        raise ProbekitError("a report of several stores needs --out")
    shown = Path(out) if out else default_report_dir(stores[0])
    for one in stores:
        target = check_report_target(one, shown, overwrite)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an incomplete store is reported as such on the page
        tree = open_results(stores if len(stores) > 1 else stores[0], dim=dim)
    along = tree.attrs.get(COMBINED_ATTR)
    building = target.with_name(f"{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    building.mkdir(parents=True)
    try:
        nodes = [_node_entry(name, node, building, along) for name, node in tree.children.items()]
        page = _template().render(
            store_name=", ".join(name_of(one) for one in stores),
            status=tree.attrs.get(STATUS_ATTR, "unknown"),
            errors={**json.loads(tree.attrs.get("errors", "{}") or "{}"),
                    **{name: f"damaged, left out: {problem}"
                       for name, problem in json.loads(tree.attrs.get(DAMAGED_ATTR, "{}") or "{}").items()}},
            provenance=_provenance(tree.attrs),
            nodes=nodes,
        )
        (building / "index.html").write_text(page, encoding="utf-8")
        (building / REPORT_MARKER).write_text(json.dumps({"store": [str(one) for one in stores]}
                                                         if along else str(stores[0])), encoding="utf-8")
    except BaseException:
        shutil.rmtree(building)
        raise
    if target.exists():
        old = target.with_name(f"{building.name}.old")
        os.replace(target, old)
        os.replace(building, target)
        shutil.rmtree(old)
    else:
        os.replace(building, target)
    return shown / "index.html"


def _template() -> jinja2.Template:
    env = jinja2.Environment(loader=jinja2.PackageLoader("probekit.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html")
