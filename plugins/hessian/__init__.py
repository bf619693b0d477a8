"""``hessian``: exact loss Hessian over chosen parameters, blocked by branch (paper section 5, Fig. 5).

The Hessian of the mean loss over the first ``batches`` batches of the run,
with respect to a parameter selection (default: the first layer of every
branch; ``params=GLOB`` picks others). For summed branches it is computed as
``J^T H_s J + blockdiag(R_k)``; otherwise with batched double-backward rows
through the whole model (:mod:`probekit_plugins.hessian.exact`). The model is probed
in eval mode, so BatchNorm uses its running statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from probekit.api import (Analysis, analysis_hooks, Batch, init_note, model_states, ProbekitError, resolve_loss,
                          summed_loss)
from .exact import (MAX_HEAD_OUTPUTS, WITHIN, ZERO_PROBES, MemoryPlan, generic_hessian, is_plain_sum, parse_bytes,
                    saved_bytes, summed_hessian, summed_layer_of)
from .params import block_slices, param_coords, select_params

METHODS = ("auto", "summed", "generic")
SUMMED = "summed: J^T H_s J + blockdiag(R_k), per-branch Jacobians and HVPs"
GENERIC = "generic: batched double-backward rows through the whole model"


@dataclass
class HessianOptions:
    """``params``: glob over parameter names (empty: first layer of every branch); ``batches``: how many
    batches of the run to average over; ``loss``: auto, mse, ce or clamped; ``max_memory``: chunking budget
    (e.g. 4GiB); ``method``: auto, summed or generic; ``eigenvalues``: top eigenvalues kept per block;
    ``compare_init``: also compute everything at initialisation (PyTorch's default init, seeded by --seed);
    ``within_branch`` (summed method): auto skips a branch's second-order term R_k when random HVP probes show
    it is identically zero, full computes every R_k row by row."""

    params: str = ""
    batches: int = 1
    loss: str = "auto"
    max_memory: str = "4GiB"
    method: str = "auto"
    eigenvalues: int = 10
    compare_init: bool = False
    within_branch: str = "auto"

    def check(self):
        if self.batches < 1 or self.eigenvalues < 1:
            raise ProbekitError("hessian.batches and hessian.eigenvalues must be at least 1")
        if self.method not in METHODS:
            raise ProbekitError(f"hessian.method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.within_branch not in WITHIN:
            raise ProbekitError(f"hessian.within_branch must be one of {', '.join(WITHIN)}, "
                                f"not {self.within_branch!r}")
        parse_bytes(self.max_memory)


class Hessian(Analysis):
    name = "hessian"
    plot = "probekit_plugins.hessian.plot:plot_hessian"
    needs_targets = True
    merge_rules = {"sums": "sum", "samples": "sum", "batches": "sum", "zero_within": "custom"}
    description = "exact loss Hessian over chosen parameters, blocked by branch (paper section 5, Fig. 5)"
    Options = HessianOptions

    def __init__(self, context, options):
        super().__init__(context, options)
        self.models = model_states(context.model, self.name, options.compare_init, context.seed)
        self.blocks = select_params(context.model, context.branchset, options.params or None)
        self.loss = resolve_loss(options.loss, context.model, bool(context.data.classes), self.name)
        self.plan = MemoryPlan(parse_bytes(options.max_memory))
        self.layer = summed_layer_of(self.blocks, context.branchset.layers)
        if options.method == "summed" and self.layer is None:
            raise ProbekitError("hessian.method=summed needs every selected parameter inside the branches of one "
                                "summed container; use method=generic")
        self.method = "generic" if self.layer is None else options.method
        self.sums: dict[str, dict[str, torch.Tensor]] = {state: {} for state in self.models}
        self.samples = self.batches = 0
        self.zero_within: set[tuple[str, str]] = set()
        self.not_plain = False  # auto fell back to generic: the container is not a plain sum

    def _choose_method(self, batch: Batch) -> str:
        """auto: summed, unless the container is not a plain sum (a gated mixture: then only generic is exact) or
        its output is so wide that H_s (one backward per output) costs more. A forced summed method on a
        container that is not a plain sum is refused."""
        if self.method == "generic":
            return self.method
        plain = is_plain_sum(self.context.model, self.layer, batch.inputs)
        if self.method == "summed":
            if not plain:
                raise ProbekitError(f"hessian.method=summed: the output of {self.layer.container or 'the model'} "
                                    "is not the plain sum of its branch outputs (a gated mixture?), so the summed "
                                    "Hessian would be wrong; use method=auto or generic")
            return "summed"
        if not plain:
            self.not_plain = True
            return "generic"
        return "summed" if batch.responses[self.layer.name].shape[2] <= MAX_HEAD_OUTPUTS else "generic"

    def _one_batch(self, state: str, model, batch: Batch) -> dict[str, torch.Tensor]:
        def loss(outputs):
            return summed_loss(self.loss, outputs, batch.targets, self.name)

        if self.method == "summed":
            parts = summed_hessian(model, self.layer, self.blocks, batch.inputs, loss, self.plan, progress=True,
                                   within=self.options.within_branch)
            self.zero_within.update((state, b) for b in parts.zero_within)
            return {"hessian": parts.hessian, "distributive": parts.distributive_sq,
                    "collaborative": parts.collaborative_sq}
        per_sample = saved_bytes(lambda: model(batch.inputs[:1]))
        h = generic_hessian(lambda m: loss(m(batch.inputs)), model, self.blocks, self.plan, per_sample,
                            len(batch.inputs), progress=True)
        return {"hessian": h}

    def update(self, batch: Batch) -> None:
        if self.batches >= self.options.batches:
            return
        if not self.batches:
            self.method = self._choose_method(batch)
        for state, model in self.models.items():
            for key, value in self._one_batch(state, model, batch).items():
                self.sums[state][key] = self.sums[state].get(key, 0) + value.double()
        self.samples += len(batch.inputs)
        self.batches += 1

    def note(self) -> str:
        names = sorted({block.name for block in self.blocks})
        size = sum(block.size for block in self.blocks)
        chosen = "default selection: the first layer of each branch" if not self.options.params else \
            f"params={self.options.params}"
        fallback = " (the container is not a plain sum of its branches)" if self.not_plain else ""
        return (f"hessian: {size:,} parameters ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}) in "
                f"{len(block_slices(self.blocks))} branch blocks ({chosen}), method {self.method}{fallback}, "
                f"{self.samples} samples")

    def finalize(self) -> xr.Dataset:
        if not self.batches:
            raise ProbekitError("hessian saw no batch")
        slices = block_slices(self.blocks)
        branches = list(slices)
        k = self.options.eigenvalues
        states = list(self.models)
        hessians = [(self.sums[s]["hessian"] / self.samples).cpu().numpy() for s in states]
        variables = {
            "hessian": (("state", "param", "param_other"), np.stack(hessians), {
                "long_name": "Hessian of the mean loss", "units": "loss / parameter unit^2"}),
            "off_block_share": ("state", np.array([off_block_share(h, slices) for h in hessians]), {
                "long_name": "share of Frobenius energy off the branch blocks", "units": "1",
                "description": "|H - blockdiag(H)|_F^2 / |H|_F^2"}),
            "block_norm": (("state", "branch", "branch_other"), np.stack([block_norms(h, slices) for h in hessians]),
                           {"long_name": "Frobenius norm of each branch block", "units": "loss / parameter unit^2"}),
            "block_eigenvalues": (("state", "branch", "eig"),
                                  np.stack([top_eigenvalues(h, slices, k) for h in hessians]), {
                                      "long_name": "largest eigenvalues of each diagonal block",
                                      "units": "loss / parameter unit^2",
                                      "description": "descending; NaN past the block's size"}),
        }
        if self.method == "summed":
            for key, long_name in (("distributive", "distributive factor |dv_k/dw_k|_F (Eq. 14)"),
                                   ("collaborative", "collaborative factor |d/dw_k [dL/ds]|_F (Eq. 14)")):
                rms = [np.sqrt((self.sums[s][key] / self.samples).cpu().numpy()) for s in states]
                variables[key] = (("state", "branch"), np.stack(rms), {
                    "long_name": long_name, "description": "root mean square over the samples"})
        names = np.array(branches, dtype=object)
        coords = {**param_coords(self.blocks, "param"), **param_coords(self.blocks, "param_other"),
                  "state": ("state", np.array(states, dtype=object)),
                  "branch": ("branch", names), "branch_other": ("branch_other", names),
                  "eig": ("eig", np.arange(k))}
        return xr.Dataset(variables, coords=coords, attrs={
            "method": SUMMED if self.method == "summed" else GENERIC, "loss": self.loss,
            "batches": self.batches, "samples": self.samples, "params": self.options.params or "first layer",
            "within_branch": self._within_note(len(branches)),
            "init": init_note(states, self.context.seed)})

    def merge_zero_within(self, mine: set, theirs: set) -> set:
        return mine | theirs

    def _within_note(self, branches: int) -> str:
        """How the within-branch terms R_k were obtained (summed method only)."""
        if self.method != "summed":
            return "not separate (generic method)"
        if not self.zero_within:
            return f"R_k computed row by row for all {branches} branches"
        return (f"R_k identically zero (all {ZERO_PROBES} random HVP probes exactly 0) for {len(self.zero_within)} "
                f"of {branches} branches x states; computed row by row for the rest")

    def summary(self, ds: xr.Dataset) -> dict:
        out = {"parameters": ds.sizes["param"], "branches": ds.sizes["branch"], "method": ds.attrs["method"]}
        for state in ds.state.values:
            out[f"off-block energy share ({state})"] = round(float(ds.off_block_share.sel(state=state)), 6)
        return out


def off_block_share(h: np.ndarray, slices: dict[str, slice]) -> float:
    """``|H - blockdiag(H)|_F^2 / |H|_F^2`` (NaN for H = 0)."""
    total = float((h ** 2).sum())
    within = sum(float((h[s, s] ** 2).sum()) for s in slices.values())
    return (total - within) / total if total > 0 else float("nan")


def block_norms(h: np.ndarray, slices: dict[str, slice]) -> np.ndarray:
    """``[B, B]`` Frobenius norms of the branch blocks."""
    parts = list(slices.values())
    return np.array([[np.linalg.norm(h[a, b]) for b in parts] for a in parts])


def top_eigenvalues(h: np.ndarray, slices: dict[str, slice], k: int) -> np.ndarray:
    """``[B, k]`` largest eigenvalues of each diagonal block, descending, NaN-padded."""
    out = np.full((len(slices), k), np.nan)
    for i, s in enumerate(slices.values()):
        block = h[s, s]
        values = np.linalg.eigvalsh((block + block.T) / 2)[::-1][:k]
        out[i, :len(values)] = values
    return out


probekit_register_analyses, probekit_plot = analysis_hooks(Hessian)
