"""``chan-vese``: cat-eye segmentation on a generator's branch components (paper appendix F, Fig. 12).

See :mod:`probekit_plugins.chan_vese.segmentation` for the procedure. Roles and the
prior are chosen on the first batch (``init=auto``, ``segment=auto``) or the
roles are given as branch indices (``--option chan-vese.init=1,5``), and are
the same for every sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import xarray as xr

from probekit.api import Analysis, analysis_hooks, Batch, components, image_layer, ProbekitError, sample_coords
from .segmentation import SCORE, RoleChoice, SegmentSettings, choose_roles, sample_prior, segment_eyes


@dataclass
class ChanVeseOptions:
    """``init``: ``auto`` or comma-separated branch indices; ``segment``: ``auto``, ``init`` (segment the init
    score) or branch indices; ``max_init``: most init components auto picks; ``role_samples``: samples of the
    first batch auto looks at; ``consistency``: how far a pair's eye-to-eye offset may lie from the median
    offset and count as consistent, a fraction of the width; ``prior``: weight the score by the first batch's
    mean score (a position prior: off by default, and named in the node's ``prior`` attr when on); ``sigma``:
    smoothing of the init score [pixels]; ``candidates``: score peaks the eye pair is chosen from; ``window``:
    side of the square Chan-Vese runs in around each eye, a fraction of the width; ``init_quantile``: share of
    that window the level set starts positive on; ``mu``: Chan-Vese's length weight; ``iterations``: its most
    iterations."""

    init: Literal["auto"] | list[int] = "auto"
    segment: Literal["auto", "init"] | list[int] = "auto"
    max_init: int = 3
    role_samples: int = 64
    consistency: float = 0.1
    prior: bool = False
    sigma: float = 3.0
    candidates: int = 12
    window: float = 0.3
    init_quantile: float = 0.25
    mu: float = 0.25
    iterations: int = 200

    def check(self):
        for key in ("init", "segment"):
            value = getattr(self, key)
            if isinstance(value, list) and (not value or min(value) < 0):
                raise ProbekitError(f"chan-vese.{key} needs branch indices like 3,5, not {value!r}")
        if min(self.max_init, self.role_samples, self.iterations) < 1 or self.candidates < 2:
            raise ProbekitError("chan-vese: max_init, role_samples and iterations must be >= 1, candidates >= 2")
        if not 0 < self.init_quantile < 1 or not 0 < self.window <= 1:
            raise ProbekitError("chan-vese: init_quantile must be in (0, 1) and window in (0, 1]")
        if self.sigma < 0 or self.consistency <= 0 or self.mu < 0:
            raise ProbekitError("chan-vese: sigma and mu must be >= 0 and consistency > 0")

    def settings(self) -> SegmentSettings:
        return SegmentSettings(self.sigma, self.candidates, self.window, self.init_quantile, self.mu, self.iterations)

    def role_choice(self) -> RoleChoice:
        return RoleChoice(self.max_init, self.role_samples, self.consistency, self.prior)


def _indices(values: list[int], k: int, key: str) -> list[int]:
    if any(v >= k for v in values):
        raise ProbekitError(f"chan-vese.{key}={','.join(map(str, values))}: the model has branches 0..{k - 1}")
    return values


class ChanVese(Analysis):
    name = "chan-vese"
    plot = "probekit_plugins.chan_vese.plot:plot_chan_vese"
    merge_rules = {"found": "rows", "centroids": "rows", "roles": "custom", "prior": "custom"}
    description = "cat-eye segmentation with Chan-Vese on generator components (appendix F)"
    Options = ChanVeseOptions

    def __init__(self, context, options):
        super().__init__(context, options)
        self.layer = None
        self.roles: tuple[list[int], list[int] | str] | None = None
        self.prior: np.ndarray | None = None
        self.settings = options.settings()
        self.arrays: dict = {}
        self.found = np.zeros(context.n_samples, dtype=bool)
        self.centroids = np.full((context.n_samples, 2, 2), np.nan)

    def _choose_roles(self, parts: np.ndarray) -> tuple[list[int], list[int] | str]:
        """Roles from the first batch's components ``[N, K, 3, H, W]``: the given ones, the rest automatic."""
        k, options = parts.shape[1], self.options
        init = None if options.init == "auto" else _indices(options.init, k, "init")
        segment = None if options.segment == "auto" else SCORE if options.segment == SCORE else _indices(
            options.segment, k, "segment")
        if segment not in (None, SCORE) and init is not None and set(init) & set(segment):
            raise ProbekitError(f"chan-vese: branches {sorted(set(init) & set(segment))} are both init and segment")
        return choose_roles(parts, options.role_choice(), self.settings, init, segment)

    def _make_arrays(self, batch: Batch) -> None:
        image = tuple(batch.outputs.shape[1:])
        self.arrays = {
            "output": self.context.sample_array(self.name, "output", ("sample", "channel", "y", "x"), image,
                                                np.float32, {"long_name": "model output f(x)",
                                                             "units": "image units"}),
            "region": self.context.sample_array(self.name, "region", ("sample", "y", "x"), image[1:], np.bool_,
                                                {"long_name": "Chan-Vese phases holding the eye peaks, in their "
                                                              "windows"}),
            "eyes": self.context.sample_array(self.name, "eyes", ("sample", "y", "x"), image[1:], np.bool_,
                                              {"long_name": "the two eye regions"}),
        }

    def update(self, batch: Batch) -> None:
        if self.layer is None:
            self.layer = image_layer(self.context.branchset, batch.outputs, self.name)
        parts = components(batch, self.layer, self.name).float().cpu().numpy()  # [N, K, 3, H, W]
        if self.roles is None:  # (restored before the first batch of a resumed run)
            self.roles = self._choose_roles(parts)
            if self.options.prior:
                self.prior = sample_prior(parts[:self.options.role_samples], self.roles[0], self.settings.sigma)
        if not self.arrays:
            self._make_arrays(batch)
        init, segment = self.roles
        results = [segment_eyes(p, init, segment, self.prior, self.settings) for p in parts]
        start = int(batch.index[0])
        self.arrays["output"].write(start, batch.outputs.float().cpu().numpy())
        self.arrays["region"].write(start, np.stack([r.region for r in results]))
        self.arrays["eyes"].write(start, np.stack([r.eyes for r in results]))
        for i, r in enumerate(results):
            self.centroids[start + i] = r.centroids
            self.found[start + i] = bool(np.isfinite(r.centroids).all())

    def merge_roles(self, mine, theirs):
        if mine != theirs:
            raise ProbekitError(f"chan-vese chose roles {mine} and {theirs} on different processes; pass "
                                "chan-vese.init and chan-vese.segment explicitly for a distributed run")
        return mine

    def merge_prior(self, mine, theirs):
        if mine is not None and not np.array_equal(mine, theirs):
            raise ProbekitError("chan-vese computed its prior on different first batches in different processes; "
                                "pass chan-vese.prior=false for a distributed run")
        return mine

    def finalize(self) -> xr.Dataset:
        if self.roles is None:
            raise ProbekitError("chan-vese saw no batch")
        init, segment = self.roles
        roles = np.array(["init" if k in init else "segment" if segment != SCORE and k in segment else "unused"
                          for k in range(len(self.layer.branches))], dtype=object)
        ds = xr.Dataset({
            "found": ("sample", self.found, {"long_name": "a horizontal pair of eye candidates was found"}),
            "eye_centroid": (("sample", "eye", "coord"), self.centroids, {
                "long_name": "eye centroids (left first), pixel indices", "units": "pixels"}),
            "role": ("branch", roles, {"long_name": "role of the component in the segmentation"}),
        }, coords={"branch": ("branch", np.array(self.layer.branches, dtype=object)),
                   "eye": ("eye", np.array(["left", "right"], dtype=object)),
                   "coord": ("coord", np.array(["y", "x"], dtype=object)), **sample_coords(self.context)},
            attrs={"init": ",".join(map(str, init)),
                   "segment": segment if segment == SCORE else ",".join(map(str, segment)),
                   "roles_chosen": "auto (first batch)" if "auto" in (self.options.init, self.options.segment)
                   else "given", "prior": "first batch" if self.prior is not None else "none",
                   "mu": self.options.mu, "init_quantile": self.options.init_quantile, "sigma": self.options.sigma,
                   "window": self.options.window, "candidates": self.options.candidates})
        if self.prior is not None:
            ds["prior"] = (("y", "x"), self.prior, {"long_name": "mean init score of the first batch, scaled to "
                                                                 "[0, 1]", "units": "1"})
        for array in self.arrays.values():
            if array.in_memory:
                ds[array.name] = (array.dims, array.values(), array.attrs)
        return ds

    def summary(self, ds: xr.Dataset) -> dict:
        return {"samples with an eye pair": f"{int(ds.found.sum())}/{ds.sizes['sample']}",
                "init components": ds.attrs["init"], "segment components": ds.attrs["segment"]}


probekit_register_analyses, probekit_plot = analysis_hooks(ChanVese)
