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
    }


def _figures(name: str, ds, out: Path) -> tuple[list[dict], str]:
    """Save the plugin's figures for node ``name`` as PNGs; return their entries and a note."""
    from probekit.plugins import manager

    try:
        figures = manager().hook.probekit_plot(name=name, node=ds)
    except Exception as exc:  # one broken plot must not cost the whole report
        return [], f"Drawing this analysis failed: {type(exc).__name__}: {exc}"
    if figures is None:
        return [], f"No plot is registered for this analysis (plugin {ds.attrs.get('plugin', name)!r})."
    entries = []
    for index, fig in enumerate(figures):
        label = re.sub(r"[^A-Za-z0-9_-]+", "-", fig.get_label() or f"figure{index}")
        file = f"{name}-{label}.png"
        fig.savefig(out / file, dpi=DPI)
        width, height = (int(round(v * DPI)) for v in fig.get_size_inches())
        caption = fig.get_suptitle() or f"{name}: {label}"
        entries.append({"file": file, "caption": caption, "width": width, "height": height})
    return entries, ""


def _node_entry(name: str, node, out: Path) -> dict:
    ds = node.to_dataset()
    figures, note = _figures(name, ds, out)
    options = json.loads(ds.attrs.get("options", "{}") or "{}")
    return {
        "name": name,
        "anchor": f"node-{re.sub(r'[^A-Za-z0-9_-]+', '-', name)}",
        "plugin": ds.attrs.get("plugin", "?"),
        "plugin_version": ds.attrs.get("plugin_version", ""),
        "options": ", ".join(f"{key} = {json.dumps(value)}" for key, value in sorted(options.items())) or "(none)",
        "dims": ", ".join(f"{d} = {n}" for d, n in ds.sizes.items()),
        "summary": json.loads(ds.attrs.get("summary", "{}") or "{}"),
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


def write_report(store: str | Path, out: str | Path | None = None, overwrite: bool = False) -> Path:
    """Write ``index.html`` and its PNGs into ``out`` (default ``<store>-report``); return the page's path.

    The page is built in a sibling folder and swapped in whole; ``overwrite`` replaces only a folder that
    holds a probekit report (:data:`REPORT_MARKER`), and nothing outside ``out`` is touched."""
    shown = Path(out) if out else default_report_dir(store)
    target = check_report_target(store, shown, overwrite)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an incomplete store is reported as such on the page
        tree = open_results(store)
    building = target.with_name(f"{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    building.mkdir(parents=True)
    try:
        nodes = [_node_entry(name, node, building) for name, node in tree.children.items()]
        page = _template().render(
            store_name=name_of(store),
            status=tree.attrs.get(STATUS_ATTR, "unknown"),
            errors={**json.loads(tree.attrs.get("errors", "{}") or "{}"),
                    **{name: f"damaged, left out: {problem}"
                       for name, problem in json.loads(tree.attrs.get(DAMAGED_ATTR, "{}") or "{}").items()}},
            provenance=_provenance(tree.attrs),
            nodes=nodes,
        )
        (building / "index.html").write_text(page, encoding="utf-8")
        (building / REPORT_MARKER).write_text(json.dumps({"store": str(store)}), encoding="utf-8")
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
