"""The schema convention for evidence, and the options every analysis with evidence shares.

For a stored statistic ``S`` an analysis adds, with :func:`add_test` and :func:`add_interval`:

* ``S_p``: the permutation p-value, at the dims of the test; its attrs say in one sentence what was permuted
  (``null``) and how many times (``permutations``);
* ``S_p_adjusted``: where several tests are made, the corrected p-values, attr ``correction``;
* ``S_null``: the null's mean, at the dims of the test, and ``S_null_band`` (dims plus ``bound``) its central 95%;
* ``S_ci``: the dims of ``S`` plus ``bound`` = ``low``, ``high``; attrs ``level``, ``resamples`` and, for a
  clustered bootstrap, ``clustered_by``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from probekit.errors import ProbekitError
from probekit.stats.bootstrap import bootstrap_ci
from probekit.stats.corrections import CORRECTIONS, adjust_p
from probekit.stats.permutation import permutation_null, summarise_null

SIGNIFICANCE = 0.05  # the level summaries call significant at (on adjusted p-values)


@dataclass
class EvidenceOptions:
    """Options of an analysis's nulls and intervals; an analysis's ``Options`` dataclass subclasses it (and its
    own ``check`` calls ``super().check()``)."""

    permutations: int = field(default=999, metadata={
        "help": "permutations of each null (0: no test); the smallest p-value is 1/(1 + permutations)"})
    resamples: int = field(default=200, metadata={"help": "bootstrap resamples of each interval (0: none)"})
    level: float = field(default=0.95, metadata={"help": "confidence level of the intervals"})
    correction: str = field(default="holm", metadata={
        "help": "multiple-comparison correction: holm (family-wise), bh (false discovery rate) or none"})

    def check(self):
        if self.permutations < 0 or self.resamples < 0:
            raise ProbekitError("permutations and resamples must be >= 0")
        if not 0 < self.level < 1:
            raise ProbekitError(f"level must be in (0, 1), not {self.level}")
        if self.correction not in CORRECTIONS:
            raise ProbekitError(f"correction must be one of {', '.join(CORRECTIONS)}, not {self.correction!r}")


def permutation_evidence(statistic: Callable[[np.ndarray], np.ndarray],
                         permuted: Callable[[np.random.Generator], np.ndarray], n: int, permutations: int,
                         resamples: int, level: float, rng: np.random.Generator, alternative: str = "greater",
                         groups: np.ndarray | None = None, desc: str = "null") -> dict[str, np.ndarray]:
    """A statistic with its permutation test and bootstrap interval, the pattern of every bundled analysis.

    ``statistic(rows)``: the statistic ``[...]`` on the samples at positions ``rows`` (all of ``n`` for the
    observed value, a resample for the interval); ``permuted(rng)``: the statistic on one permutation of the data.
    Returns ``{"observed", "p", "null", "band": [..., 2], "ci": [..., 2]}`` (NaN where there are no permutations
    or resamples); ``groups`` clusters the bootstrap."""
    observed = np.asarray(statistic(np.arange(n)), dtype=np.float64)
    null = permutation_null(permuted, permutations, rng, desc) if permutations else None
    return {"observed": observed, **summarise_null(observed, null, alternative),
            "ci": bootstrap_ci(statistic, n, resamples, rng, level, groups)}


def evidence_rng(seed: int, name: str) -> np.random.Generator:
    """The generator of an analysis's nulls and resamples: fixed by the run's ``--seed`` and the statistic's
    ``name``, so a rerun (or a resumed or distributed run) draws the same permutations."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def adjust_within(p: np.ndarray, dims: tuple[str, ...], family: tuple[str, ...], method: str) -> np.ndarray:
    """``p`` (at ``dims``) adjusted separately in each family: the entries that differ only along ``family``."""
    p = np.asarray(p, dtype=np.float64)
    inner = [dims.index(d) for d in family]
    outer = [i for i in range(len(dims)) if i not in inner]
    moved = np.transpose(p, outer + inner)
    flat = moved.reshape(-1, int(np.prod([p.shape[i] for i in inner], dtype=np.int64)))
    adjusted = np.stack([adjust_p(row, method) for row in flat]).reshape(moved.shape)
    return np.transpose(adjusted, np.argsort(outer + inner))


def add_test(ds: xr.Dataset, name: str, dims: tuple[str, ...], p: np.ndarray, null: np.ndarray, *, permuted: str,
             permutations: int, correction: str | None = "holm", alternative: str = "greater",
             family: tuple[str, ...] | None = None, band: np.ndarray | None = None) -> xr.Dataset:
    """``ds`` with ``name_p``, ``name_null`` and (unless ``correction`` is ``None``: one test) ``name_p_adjusted``
    at ``dims``. ``family``: the dims one correction spans (default all ``dims``: every entry is one family; e.g.
    ``("layer",)`` corrects over layers separately for each entry of the other dims). ``permuted``: what the
    null permutes, one sentence. ``band``: ``[..., 2]`` the null's central 95% (``S_null_band``)."""
    family = tuple(dims) if family is None else tuple(family)
    sentence = f"{permuted.rstrip('.')}, {permutations} times."
    variables = {
        f"{name}_p": (dims, np.asarray(p, dtype=np.float64), {
            "long_name": f"permutation p-value of {name}", "units": "1", "null": sentence,
            "permutations": int(permutations), "alternative": alternative,
            "description": "(1 + #{null at least as extreme}) / (1 + permutations)"}),
        f"{name}_null": (dims, np.asarray(null, dtype=np.float64), {
            "long_name": f"mean of {name} under the null", "null": sentence}),
    }
    if band is not None:
        variables[f"{name}_null_band"] = ((*dims, "bound"), np.asarray(band, dtype=np.float64), {
            "long_name": f"central 95% of {name} under the null", "null": sentence})
    if correction is not None:
        variables[f"{name}_p_adjusted"] = (dims, adjust_within(p, tuple(dims), family, correction), {
            "long_name": f"adjusted p-value of {name}", "units": "1", "correction": correction,
            "family": f"the entries of {name}_p along {', '.join(family)}" if family != tuple(dims)
            else f"every entry of {name}_p ({int(np.isfinite(p).sum())} tests)"})
    out = ds.assign(variables)
    return out.assign_coords(bound=("bound", np.array(["low", "high"], dtype=object))) if band is not None else out


def add_interval(ds: xr.Dataset, name: str, dims: tuple[str, ...], ci: np.ndarray, *, level: float, resamples: int,
                 clustered_by: str | None = None, resampled: str = "samples") -> xr.Dataset:
    """``ds`` with ``name_ci`` at ``dims + ('bound',)`` (``low``, ``high``): a percentile bootstrap interval over
    ``resamples`` resamples of ``resampled`` (whole groups of ``clustered_by`` when given)."""
    attrs = {"long_name": f"{level:.0%} bootstrap interval of {name}", "level": float(level),
             "resamples": int(resamples), "resampled": resampled}
    if clustered_by:
        attrs["clustered_by"] = clustered_by
    return ds.assign({f"{name}_ci": ((*dims, "bound"), np.asarray(ci, dtype=np.float64), attrs)}).assign_coords(
        bound=("bound", np.array(["low", "high"], dtype=object)))


def add_evidence(ds: xr.Dataset, name: str, dims: tuple[str, ...], found: dict[str, np.ndarray], options, *,
                 permuted: str, alternative: str = "greater", family: tuple[str, ...] | None = None,
                 correction: str | None = "options", resampled: str = "samples",
                 clustered_by: str | None = None) -> xr.Dataset:
    """``ds`` with the test (:func:`add_test`, when ``options.permutations``) and the interval
    (:func:`add_interval`, when ``options.resamples``) of ``found`` (:func:`permutation_evidence`'s dict) for the
    statistic ``name`` at ``dims``. ``correction``: ``options.correction`` by default, ``None`` for one test."""
    if options.permutations:
        ds = add_test(ds, name, dims, found["p"], found["null"], permuted=permuted,
                      permutations=options.permutations, alternative=alternative, family=family, band=found["band"],
                      correction=options.correction if correction == "options" else correction)
    if options.resamples:
        ds = add_interval(ds, name, dims, found["ci"], level=options.level, resamples=options.resamples,
                          clustered_by=clustered_by, resampled=resampled)
    return ds


def describe_p(p: float, threshold: float = SIGNIFICANCE, label: str = "p_adj") -> str:
    """``'n.s. (p_adj = 0.3)'`` or ``'p_adj = 0.004'``: how a summary states one (by default adjusted) p-value,
    never a bare ranking; ``label="p"`` for a single test's own p-value."""
    if not np.isfinite(p):
        return "untested"
    return f"{label} = {p:.3g}" if p < threshold else f"n.s. ({label} = {p:.2g})"


def smallest_adjusted_p(permutations: int, tests: int, correction: str) -> float:
    """The smallest adjusted p-value ``tests`` permutation tests of ``permutations`` draws can reach (each p is at
    least ``1 / (1 + permutations)``): a summary says so when it is above :data:`SIGNIFICANCE`."""
    floor = 1 / (1 + permutations)
    return min(1.0, floor * tests) if correction == "holm" else floor
