"""``hessian``: exact loss Hessian over chosen parameters, blocked by branch (paper section 5, Fig. 5).

The Hessian of the mean loss over the first ``batches`` batches of the run,
with respect to a parameter selection (default: the first layer of every
branch; ``params=GLOB`` picks others). For summed branches it is computed as
``J^T H_s J + blockdiag(R_k)``; otherwise with batched double-backward rows
through the whole model (:mod:`probekit_plugins.hessian.exact`). The model is probed
in eval mode, so BatchNorm uses its running statistics.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch
import xarray as xr

from probekit.api import (Analysis, analysis_hooks, Batch, init_note, init_states, model_states, off_block_share,
                          ProbekitError, resolve_loss, summed_loss, call_model, count_inputs, take_inputs)
from .exact import (MAX_HEAD_OUTPUTS, WITHIN, ZERO_PROBES, MemoryPlan, generic_hessian, is_plain_sum, parse_bytes,
                    saved_bytes, summed_hessian, summed_layer_of)
from .estimate import Estimates, affordable_samples, estimate
from .params import block_slices, param_coords, select_params

METHODS = ("auto", "summed", "generic")
SUMMED = "summed: J^T H_s J + blockdiag(R_k), per-branch Jacobians and HVPs"
GENERIC = "generic: batched double-backward rows through the whole model"
ESTIMATE = "estimate: matrix-free Hutchinson block energies from Hessian-vector products"
AUTO_SAMPLES = 16  # the most samples the estimate takes when it chooses their count


@dataclass
class HessianOptions:
    """``params``: glob over parameter names (empty: first layer of every branch); ``batches``: how many
    batches of the run to average over; ``loss``: auto, mse, ce or clamped; ``max_memory``: chunking budget
    (e.g. 4GiB); ``method``: auto, summed or generic; ``eigenvalues``: top eigenvalues kept per block;
    ``compare_init``: also compute everything at initialisation (PyTorch's default init, seeded by --seed);
    ``init_seeds``: compute it at several initialisations instead, one state ``init-seedS`` per seed;
    ``within_branch`` (summed method): auto skips a branch's second-order term R_k when random HVP probes show
    it is identically zero, full computes every R_k row by row; ``mode``: exact (the whole matrix), estimate
    (matrix-free block energies with standard errors and Lanczos eigenvalues, :mod:`.estimate`) or auto (exact,
    unless the first chunk of rows projects past ``max_time`` seconds or the matrix cannot fit ``max_memory``);
    ``probes``: most rounds of Rademacher probes, one per block per round (estimate; fewer when another round would
    pass ``max_time``, never below 2); ``estimate_samples``: the estimate uses this many samples of the first batch
    (each product runs the whole model on them; 0: as many, up to 16, as keep two probe rounds within
    ``max_time``, timed on one sample, so large inputs get fewer); ``lanczos``: also estimate each
    diagonal block's top eigenvalues by Lanczos (about 50-100 products per block); ``lanczos_steps``: most Lanczos
    iterations per block."""

    params: str = ""
    batches: int = 1
    loss: str = "auto"
    max_memory: str = "4GiB"
    method: str = "auto"
    eigenvalues: int = 10
    compare_init: bool = False
    init_seeds: list[int] = field(default_factory=list)
    within_branch: str = "auto"
    mode: Literal["auto", "exact", "estimate"] = "auto"
    max_time: float = 120.0
    probes: int = 8
    estimate_samples: int = 0
    lanczos: bool = False
    lanczos_steps: int = 300

    def check(self):
        if self.max_time <= 0 or self.probes < 2 or self.lanczos_steps < 1 or self.estimate_samples < 0:
            raise ProbekitError("hessian.max_time must be > 0, hessian.probes at least 2, lanczos_steps at least 1 "
                                "and estimate_samples at least 0 (0: chosen to fit max_time)")
        if self.mode == "estimate" and self.batches != 1:
            raise ProbekitError("hessian.mode=estimate probes one batch: leave hessian.batches at 1")
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
    # what the first batch decides (method, fallbacks, a switch to estimates) is state too: a resumed run must
    # finish the way the interrupted one started
    merge_rules = {"sums": "sum", "samples": "sum", "batches": "sum", "zero_within": "custom", "method": "custom",
                   "not_plain": "custom", "mode": "custom", "switch_reason": "custom", "estimates": "custom",
                   "estimated_samples": "custom"}
    description = "exact loss Hessian over chosen parameters, blocked by branch (paper section 5, Fig. 5)"
    Options = HessianOptions

    def __init__(self, context, options):
        super().__init__(context, options)
        self.models = model_states(context.model, self.name, options.compare_init, context.seed,
                                   context.random_init, options.init_seeds)
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
        self.mode = options.mode  # becomes "estimate" when auto finds the exact matrix too slow or too large
        self.estimates: dict[str, dict] = {}  # state -> the fields of its Estimates (plain arrays, checkpointable)
        self.switch_reason = ""
        self.estimated_samples = 0

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
            return summed_loss(self.loss, outputs, batch.targets, self.name, batch.inputs)

        if self.method == "summed":
            parts = summed_hessian(model, self.layer, self.blocks, batch.inputs, loss, self.plan, progress=True,
                                   within=self.options.within_branch)
            self.zero_within.update((state, b) for b in parts.zero_within)
            return {"hessian": parts.hessian, "distributive": parts.distributive_sq,
                    "collaborative": parts.collaborative_sq}
        per_sample = saved_bytes(lambda: call_model(model, take_inputs(batch.inputs, slice(0, 1))))
        h = generic_hessian(lambda m: loss(call_model(m, batch.inputs)), model, self.blocks, self.plan, per_sample,
                            count_inputs(batch.inputs), progress=True, after_first_chunk=self._within_budget)
        return {"hessian": h}

    def _within_budget(self, seconds: float, chunks: int) -> None:
        """After the first chunk of rows: stop when the whole matrix would take longer than ``max_time``."""
        projected = seconds * chunks
        if projected > self.options.max_time:
            raise OverBudget(f"the exact Hessian of {self._size():,} parameters would take about {projected:,.0f} s "
                             f"({chunks} chunks of {seconds:.1f} s), over hessian.max_time={self.options.max_time:g}")

    def _size(self) -> int:
        return sum(block.size for block in self.blocks)

    def _estimate(self, state: str, model, batch: Batch) -> None:
        keep = self.options.estimate_samples or affordable_samples(
            self._loss_of(batch, 1), model, self.blocks, AUTO_SAMPLES, self.options.max_time)
        samples = min(keep, count_inputs(batch.inputs))
        self.estimates[state] = asdict(estimate(self._loss_of(batch, samples), model, self.blocks, samples,
                                                self.options.probes,
                                                self.options.eigenvalues if self.options.lanczos else 0,
                                                self.options.lanczos_steps, self.context.seed,
                                                max_time=self.options.max_time, progress=True))
        self.estimated_samples = samples

    def _loss_of(self, batch: Batch, keep: int):
        """The summed loss of the batch's first ``keep`` samples, as a function of the model."""
        inputs = take_inputs(batch.inputs, slice(0, keep))
        targets = None if batch.targets is None else batch.targets[:keep]
        return lambda m: summed_loss(self.loss, call_model(m, inputs), targets, self.name, inputs)

    def update(self, batch: Batch) -> None:
        wanted = 1 if self.mode == "estimate" else self.options.batches
        first = self.context.batch_size is None or int(batch.index[0]) < wanted * self.context.batch_size
        if self.batches >= wanted or self.estimates or not first:
            return  # the run's first batches only: with --nproc, those in the first shards
        if not self.batches:
            self.method = self._choose_method(batch)
        for state, model in self.models.items():
            if self.mode == "estimate":
                self._estimate(state, model, batch)
                continue
            try:
                parts = self._one_batch(state, model, batch)
            except (OverBudget, ProbekitError) as exc:
                if self.mode == "exact" or self.batches or not _switchable(exc):
                    raise self._too_large(exc) from None
                self.mode, self.switch_reason = "estimate", str(exc)
                print(f"probekit: hessian switches to the matrix-free estimate: {str(exc).removeprefix('hessian: ')}",
                      file=sys.stderr)
                self.sums = {s: {} for s in self.models}
                self._estimate(state, model, batch)
                continue
            for key, value in parts.items():
                self.sums[state][key] = self.sums[state].get(key, 0) + value.double()
        self.samples += count_inputs(batch.inputs)
        self.batches += 1

    def _too_large(self, exc: Exception) -> ProbekitError:
        """One line: why, the selection's size, and two narrower ways to go on."""
        if not _switchable(exc):
            return exc if isinstance(exc, ProbekitError) else ProbekitError(str(exc))
        first = self.blocks[0]
        return ProbekitError(f"{exc}; the selection has {self._size():,} parameters in "
                             f"{len(block_slices(self.blocks))} blocks. Narrower: hessian.params={first.name} with "
                             f"--batch-size 8, or hessian.mode=estimate (matrix-free block energies)")

    def note(self) -> str:
        names = sorted({block.name for block in self.blocks})
        size = sum(block.size for block in self.blocks)
        chosen = "default selection: the first layer of each branch" if not self.options.params else \
            f"params={self.options.params}"
        fallback = " (the container is not a plain sum of its branches)" if self.not_plain else ""
        if self.mode == "estimate":
            fallback += f", matrix-free estimate ({self.switch_reason or 'asked for'})"
        count = self.estimated_samples or self.samples
        return (f"hessian: {size:,} parameters ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}) in "
                f"{len(block_slices(self.blocks))} branch blocks ({chosen}), method {self.method}{fallback}, "
                f"{count} sample{'s' if count != 1 else ''}")

    def _finalize_estimate(self) -> xr.Dataset:
        """The matrix-free node: block energies and their standard errors, the off-block share with its standard
        error, and Lanczos eigenvalues of the diagonal blocks (no ``hessian`` matrix)."""
        states = list(self.estimates)
        names = np.array(list(block_slices(self.blocks)), dtype=object)
        est = [Estimates(**self.estimates[s]) for s in states]
        shares = [e.share_replicates for e in est]
        variables = {
            "block_energy": (("state", "branch", "branch_other"), np.stack([e.energy for e in est]), {
                "long_name": "Frobenius energy |H_ij|_F^2 of each block (Hutchinson estimate)",
                "units": "(loss / parameter unit^2)^2"}),
            "block_energy_se": (("state", "branch", "branch_other"), np.stack([e.energy_se for e in est]), {
                "long_name": "standard error of block_energy", "units": "(loss / parameter unit^2)^2"}),
            "block_norm": (("state", "branch", "branch_other"), np.sqrt(np.stack([e.energy for e in est])), {
                "long_name": "Frobenius norm of each branch block (square root of the estimated energy)",
                "units": "loss / parameter unit^2"}),
            "off_block_share": ("state", np.array([np.nanmean(r) for r in shares]), {
                "long_name": "share of Frobenius energy off the branch blocks (estimate)", "units": "1",
                "description": "mean over probe replicates of |H - blockdiag(H)|_F^2 / |H|_F^2"}),
            "off_block_share_se": ("state", np.array([np.nanstd(r, ddof=1) / np.sqrt(len(r)) for r in shares]), {
                "long_name": "standard error of off_block_share", "units": "1"}),
        }
        if self.options.lanczos:
            variables["block_eigenvalues"] = (("state", "branch", "eig"), np.stack([e.eigenvalues for e in est]), {
                "long_name": "largest eigenvalues of each diagonal block (Lanczos)",
                "units": "loss / parameter unit^2", "description": "descending; NaN past the block's size"})
        coords = {"state": ("state", np.array(states, dtype=object)), "branch": ("branch", names),
                  "branch_other": ("branch_other", names)}
        if self.options.lanczos:
            coords["eig"] = ("eig", np.arange(self.options.eigenvalues))
        return xr.Dataset(variables, coords=coords, attrs={
            "method": ESTIMATE + (" and Lanczos eigenvalues" if self.options.lanczos else ""), "mode": "estimate",
            "switched": self.switch_reason or "no (asked for)",
            "loss": self.loss, "batches": 1, "samples": int(self.estimated_samples),
            "probes": min(len(r) for r in shares),
            "hvps": int(sum(e.hvps for e in est)), "params": self.options.params or "first layer",
            "init": init_note(states, self.context.seed)})

    def finalize(self) -> xr.Dataset:
        if self.mode == "estimate":
            return self._finalize_estimate()
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

    def merge_method(self, mine: str, theirs: str) -> str:
        return theirs if mine == "auto" else mine  # a fresh analysis has not chosen yet

    def merge_mode(self, mine: str, theirs: str) -> str:
        return "estimate" if "estimate" in (mine, theirs) else mine

    def _first_set(self, mine, theirs):
        return mine or theirs

    merge_not_plain = merge_switch_reason = merge_estimates = merge_estimated_samples = _first_set

    def _within_note(self, branches: int) -> str:
        """How the within-branch terms R_k were obtained (summed method only)."""
        if self.method != "summed":
            return "not separate (generic method)"
        if not self.zero_within:
            return f"R_k computed row by row for all {branches} branches"
        return (f"R_k identically zero (all {ZERO_PROBES} random HVP probes exactly 0) for {len(self.zero_within)} "
                f"of {branches} branches x states; computed row by row for the rest")

    def summary(self, ds: xr.Dataset) -> dict:
        size = ds.sizes["param"] if "param" in ds.sizes else self._size()
        k = ds.sizes["branch"]
        out = {"parameters": size, "branches": k, "method": ds.attrs["method"]}
        if "probes" in ds.attrs:
            out["probe rounds"] = int(ds.attrs["probes"])
        out["off-block share if spread evenly, (K-1)/K"] = round((k - 1) / k, 4)
        for state in ds.state.values:
            share = float(ds.off_block_share.sel(state=state))
            if "off_block_share_se" in ds:
                se = float(ds.off_block_share_se.sel(state=state))
                decimals = max(4, 1 - int(np.floor(np.log10(se)))) if se > 0 else 4  # down to the error's digit
                out[f"off-block energy share ({state})"] = f"{share:.{decimals}f} +- {se:.1g}"
            else:
                out[f"off-block energy share ({state})"] = round(share, 6)
        inits = init_states(ds.state.values.tolist())
        if len(inits) > 1:
            shares = ds.off_block_share.sel(state=inits).values
            out[f"off-block share over {len(inits)} init seeds"] = (
                f"mean {shares.mean():.3f}, range {shares.min():.3f}-{shares.max():.3f}")
            trained = [s for s in ds.state.values if s not in inits]
            if trained:
                value = float(ds.off_block_share.sel(state=trained[0]))
                out[f"{trained[0]} below the init seeds"] = (
                    f"{int((shares > value).sum())} of {len(inits)} (one model; a seed spread, not a test)")
        return out


class OverBudget(ProbekitError):
    """The exact Hessian would take longer than ``hessian.max_time``."""


def _switchable(exc: Exception) -> bool:
    """Whether auto may answer ``exc`` with the matrix-free estimate: over the time budget or the memory budget."""
    return isinstance(exc, OverBudget) or "max_memory" in str(exc)


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
