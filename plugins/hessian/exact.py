"""Exact loss Hessians over a parameter selection (paper section 5, Eq. 14).

Three ways, all exact:

* :func:`summed_hessian`, for parameters inside the branches of one summed
  container ``s = sum_k v_k (+ R)``: ``H = J^T H_s J + blockdiag(R_k)``.
  ``J_k = dv_k/dw_k`` per sample (each branch alone), ``H_s`` the per-sample
  Hessian of the loss w.r.t. the container output ``s`` (the rest of the model
  only), and ``R_k`` the Hessian of ``g . v_k(w_k)`` with ``g = dL/ds`` fixed,
  from HVPs that run branch k alone. It needs the part of the model after
  ``s`` to treat samples independently (eval mode).
* :func:`generic_hessian`, for anything else (grouped convs followed by
  mixing layers): rows of the full Hessian from batched double-backward
  passes through the whole model, in chunks.
* :func:`naive_hessian`: the reference, one double-backward pass per row.

Losses are sums over the batch (divide by N for a mean). Memory: chunk
sizes come from :class:`MemoryPlan`, sized from the bytes autograd saves for
one sample.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vjp, vmap
from tqdm.auto import tqdm  # (renders as a widget in a notebook)

from probekit.api import BranchLayer, call_model, forward_hooks, ProbekitError
from .params import ParamBlock, block_slices
from .structure import linear_layer_jacobian, proves_within_zero, single_linear_layer

# progress without a remaining-time estimate: the first chunk (graph building, allocation) is the slowest, so an
# early ETA overstates the run several fold; the budget (hessian.max_time) bounds it instead
NO_ETA = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}]"

MAX_HEAD_OUTPUTS = 1024  # the summed method takes dim(s) backward passes through the head; beyond this, generic
ZERO_PROBES = 2  # random HVPs that must all be exactly zero before R_k is taken as identically zero
WITHIN = ("auto", "full")


def flat_selected(grads: dict[str, torch.Tensor | None], blocks: tuple[ParamBlock, ...], like: torch.Tensor,
                  lead: tuple[int, ...] = ()) -> torch.Tensor:
    """The selected elements of per-parameter tensors ``[*lead, *param.shape]`` as ``[*lead, P]``.

    None (a parameter the output does not depend on) gives zeros of ``like``'s dtype and device.
    """
    parts = []
    for block in blocks:
        g = grads[block.name]
        if g is None:
            parts.append(like.new_zeros(*lead, block.size))
        else:
            parts.append(block.take(g.reshape(*lead, -1)))
    return torch.cat(parts, dim=-1)


@contextmanager
def grad_only_for(model: nn.Module, names: set[str]) -> Iterator[dict[str, nn.Parameter]]:
    """Within the block only the parameters ``names`` require grad; yields them by name."""
    saved = {name: p.requires_grad for name, p in model.named_parameters()}
    chosen = {}
    try:
        for name, p in model.named_parameters():
            p.requires_grad_(name in names)
            if name in names:
                chosen[name] = p
        yield chosen
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(saved[name])


def saved_bytes(run: Callable[[], torch.Tensor]) -> int:
    """Bytes autograd saves for backward while ``run()`` executes (its graph's activation memory)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.enable_grad():
        run()
    return total


def parse_bytes(text: str) -> int:
    """``8GiB``, ``512MiB``, ``2GB``, ``1000000`` -> bytes."""
    units = {"kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40, "kb": 10 ** 3, "mb": 10 ** 6,
             "gb": 10 ** 9, "tb": 10 ** 12, "b": 1}
    value = str(text).strip().lower()
    for unit, factor in units.items():
        if value.endswith(unit):
            value, scale = value[: -len(unit)], factor
            break
    else:
        scale = 1
    try:
        return int(float(value) * scale)
    except ValueError:
        raise ProbekitError(f"{text!r} is not a memory size (e.g. 8GiB, 512MiB)") from None


def gib(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB"


@dataclass(frozen=True)
class MemoryPlan:
    """How many units (samples or Hessian rows) fit in one chunk under ``budget`` bytes.

    Cost model, from ``a`` = bytes autograd saves per sample: a per-sample
    Jacobian with D outputs costs ``a (1 + 2 D)`` per sample in the chunk; a
    chunk of c Hessian rows over a batch of N costs ``N a (3 + 3 c)``.
    """

    budget: int

    def chunk(self, fixed: int, per_unit: int, what: str, most: int) -> int:
        room = self.budget - fixed
        if room < per_unit:
            raise ProbekitError(f"hessian: one chunk of {what} needs about {gib(fixed + per_unit)}, over "
                                f"max_memory={gib(self.budget)}; raise hessian.max_memory or lower --batch-size")
        return max(1, min(most, room // per_unit))

    def jacobian_samples(self, per_sample: int, outputs: int, fixed: int, n: int) -> int:
        return self.chunk(fixed, per_sample * (1 + 2 * outputs), "per-sample Jacobians", n)

    def hessian_rows(self, per_sample: int, n: int, fixed: int, rows: int) -> int:
        return self.chunk(fixed + 3 * n * per_sample, 3 * n * per_sample, "Hessian rows", rows)


def naive_hessian(loss_of: Callable[[nn.Module], torch.Tensor], model: nn.Module, blocks: tuple[ParamBlock, ...],
                  rows: range | None = None) -> torch.Tensor:
    """Rows ``rows`` (default all) of the Hessian, one double-backward pass through the whole model per row:
    ``[len(rows), P]``. The reference the others are tested and timed against."""
    params = dict(model.named_parameters())
    names = list(dict.fromkeys(b.name for b in blocks))
    grads = torch.autograd.grad(loss_of(model), [params[n] for n in names], create_graph=True)
    g = flat_selected(dict(zip(names, grads, strict=True)), blocks, grads[0])
    out = []
    for i in rows if rows is not None else range(g.numel()):
        row = torch.autograd.grad(g[i], [params[n] for n in names], retain_graph=True, allow_unused=True)
        out.append(flat_selected(dict(zip(names, row, strict=True)), blocks, g))
    return torch.stack(out) if out else g.new_zeros(0, g.numel())


def generic_hessian(loss_of: Callable[[nn.Module], torch.Tensor], model: nn.Module, blocks: tuple[ParamBlock, ...],
                    plan: MemoryPlan, per_sample_bytes: int, n: int, progress: bool = False,
                    after_first_chunk: Callable[[float, int], None] | None = None) -> torch.Tensor:
    """The full ``[P, P]`` Hessian, rows in chunks of batched double-backward passes through the whole model.

    ``after_first_chunk(seconds, chunks)`` is called once the first chunk is done (it may raise to stop early);
    the progress bar shows the estimated time left."""
    names = list(dict.fromkeys(b.name for b in blocks))
    total = sum(b.size for b in blocks)
    with grad_only_for(model, set(names)) as chosen, torch.enable_grad():  # the run probes under no_grad
        params = [chosen[n] for n in names]
        itemsize = params[0].element_size()
        chunk = plan.hessian_rows(per_sample_bytes, n, 2 * total * total * itemsize, total)
        g = flat_selected(dict(zip(names, torch.autograd.grad(loss_of(model), params, create_graph=True),
                                   strict=True)), blocks, params[0])
        rows = []
        starts = range(0, total, chunk)
        began = time.perf_counter()
        for start in tqdm(starts, desc="hessian rows", unit="chunk", disable=not progress or None, leave=False,
                          bar_format=NO_ETA):
            if len(rows) == 1 and after_first_chunk is not None:
                after_first_chunk(time.perf_counter() - began, len(starts))
            stop = min(start + chunk, total)
            basis = torch.zeros(stop - start, total, dtype=g.dtype, device=g.device)
            basis[torch.arange(stop - start), torch.arange(start, stop)] = 1
            batched = torch.autograd.grad(g, params, grad_outputs=basis, retain_graph=True, allow_unused=True,
                                          is_grads_batched=True)
            rows.append(flat_selected(dict(zip(names, batched, strict=True)), blocks, g, (stop - start,)).detach())
    return torch.cat(rows)


@dataclass
class SummedParts:
    """The summed method's results for one batch (sums over its samples).

    ``hessian`` ``[P, P]``; per branch (selection order) ``distributive_sq`` = sum_n |J_k,n|_F^2 and
    ``collaborative_sq`` = sum_n |H_s,n J_k,n|_F^2, the squared norms of Eq. 14's two factors;
    ``zero_within`` the branches whose ``R_k`` was found identically zero (not computed row by row).
    """

    hessian: torch.Tensor
    distributive_sq: torch.Tensor
    collaborative_sq: torch.Tensor
    zero_within: tuple[str, ...] = ()


def _container_io(model: nn.Module, layer: BranchLayer, x: torch.Tensor) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """One forward pass: each branch's input, a zero leaf ``delta`` added to the first branch's output (so
    ``dL/d delta = dL/ds`` through whatever the container and the model do after the sum), the model output."""
    inputs, captured = {}, {}

    def keep_input(path):
        return lambda module, args: inputs.__setitem__(path, args[0].detach())

    def shift_output(module, args, out):
        captured["delta"] = delta = torch.zeros_like(out, requires_grad=True)
        return out.detach() + delta

    before = [(path, keep_input(path)) for path in layer.modules]
    with forward_hooks(model, [(layer.modules[0], shift_output)], before), grad_only_for(model, set()), \
            torch.enable_grad():
        outputs = call_model(model, x)
    return inputs, captured["delta"], outputs


def head_hessian(loss: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``g = dL/ds`` ``[N, D]`` and the per-sample Hessian ``H_s`` ``[N, D, D]`` (one backward per output)."""
    (g,) = torch.autograd.grad(loss, s, create_graph=True)
    flat = g.flatten(1)
    rows = []
    for d in range(flat.shape[1]):
        (row,) = torch.autograd.grad(flat[:, d].sum(), s, retain_graph=True, allow_unused=True)
        rows.append(torch.zeros_like(flat) if row is None else row.flatten(1))
    return flat.detach(), torch.stack(rows, dim=1).detach()


def _branch_function(module: nn.Module, names: list[str]):
    """``(selected params, out(w, x))`` of one branch, ``out``: ``[N, ...] -> [N, D]`` with the others fixed."""
    selected = {n: p.detach() for n, p in module.named_parameters() if n in names}
    fixed = {n: t.detach() for n, t in (*module.named_parameters(), *module.named_buffers()) if n not in names}

    def out(w, x):
        return functional_call(module, {**fixed, **w}, (x,)).flatten(1)

    return selected, out


def within_is_zero(gradient: Callable, selected: dict[str, torch.Tensor], probes: int = ZERO_PROBES) -> bool:
    """Whether ``R_k``, the Jacobian of ``gradient`` at ``selected``, is identically zero: ``probes`` HVPs
    with seeded Gaussian directions all exactly 0.0.

    A nonzero matrix maps a random direction to exactly zero with probability 0, so this is exact but for a
    measure-zero event. It is the common case: a ReLU branch is piecewise linear in any one linear layer's
    weights (BatchNorm in eval mode, pooling and residual sums included), so that layer's ``R_k`` is 0.
    """
    gen = torch.Generator().manual_seed(0)
    directions = {k: torch.randn((probes, *v.shape), generator=gen, dtype=v.dtype).to(v.device)
                  for k, v in selected.items()}
    _, hvp = vjp(gradient, selected)  # H is symmetric, so v^T H = (H v)^T
    products = vmap(hvp)(directions)[0]
    return all(bool((t == 0).all()) for t in products.values())


def branch_parts(module: nn.Module, path: str, blocks: tuple[ParamBlock, ...], u: torch.Tensor, g: torch.Tensor,
                 plan: MemoryPlan, fixed: int, within: str = "auto") -> tuple[torch.Tensor, torch.Tensor | None]:
    """One branch: per-sample Jacobians ``J`` ``[N, D, P_k]`` and ``R_k`` ``[P_k, P_k]``, running branch k alone.

    ``R_k`` is None when ``within="auto"`` and :func:`within_is_zero` finds it identically zero; ``"full"``
    always computes it, one HVP per selected parameter. ``blocks`` are whole parameter tensors of the branch at
    ``path``, as :func:`select_params` makes them for summed branches.
    """
    names = [b.name[len(path) + 1:] for b in blocks]
    selected, out = _branch_function(module, names)
    n, d = g.shape
    trial = {k: v.clone().requires_grad_() for k, v in selected.items()}
    per_sample = saved_bytes(lambda: out(trial, u[:1]))
    layer = single_linear_layer(module, names)
    samples = plan.jacobian_samples(per_sample, d, fixed, n)  # the budget holds for both ways
    if layer is not None:  # one linear layer: D backward passes to its output, contracted with its inputs
        jacobian = linear_layer_jacobian(module, layer, names, u, d)
    else:
        jac = vmap(jacrev(lambda w, x: out(w, x.unsqueeze(0)).squeeze(0)), in_dims=(None, 0), chunk_size=samples)(
            selected, u)
        jacobian = torch.cat([jac[a].reshape(n, d, -1) for a in names], dim=2).detach()

    def linearised(w):  # g . v_k(w), g fixed
        return (out(w, u) * g).sum()

    if within == "auto" and (proves_within_zero(module, names) or within_is_zero(grad(linearised), selected)):
        return jacobian, None
    rows = plan.hessian_rows(per_sample, n, fixed, jacobian.shape[-1])
    if within == "auto" and len(names) > 1:
        return jacobian, _within_by_pairs(linearised, selected, names, rows).detach()
    second = jacrev(grad(linearised), chunk_size=rows)(selected)  # {a: {b: [*a.shape, *b.shape]}}
    r = torch.cat([torch.cat([second[a][b].reshape(selected[a].numel(), -1) for b in names], dim=1)
                   for a in names])
    return jacobian, r.detach()


def _within_by_pairs(linearised: Callable, selected: dict[str, torch.Tensor], names: list[str],
                     rows: int) -> torch.Tensor:
    """``R_k`` block by parameter-tensor pair, skipping what is provably zero and using symmetry.

    A tensor's own block ``R_aa`` is skipped when HVP probes show it is identically zero (one layer of a ReLU
    branch is piecewise linear in its own weights); each cross block ``R_ab = R_ba^T`` is computed once, with as
    many backward passes as the smaller tensor has elements. For the first two layers of a ReLU branch only the
    cross block is left: about a third of the passes of the full ``R_k``.
    """
    sizes = [selected[a].numel() for a in names]
    offsets = [sum(sizes[:i]) for i in range(len(names))]
    r = next(iter(selected.values())).new_zeros(sum(sizes), sum(sizes))

    def restricted(a: str, b: str):
        """``w_a -> d/dw_b [g . v_k]`` with every other tensor fixed at its value."""
        return lambda wa: grad(lambda wb: linearised({**selected, a: wa, b: wb}))(selected[b])

    for i, a in enumerate(names):
        own = {a: selected[a]}
        if not within_is_zero(grad(lambda w, a=a: linearised({**selected, **w})), own):
            block = jacrev(grad(lambda w, a=a: linearised({**selected, **w})), chunk_size=rows)(own)[a][a]
            r[offsets[i]:offsets[i] + sizes[i], offsets[i]:offsets[i] + sizes[i]] = block.reshape(sizes[i], -1)
        for j in range(i + 1, len(names)):
            b = names[j]
            small, large = (a, b) if sizes[i] <= sizes[j] else (b, a)
            # w_large -> d/dw_small [g . v_k]: its Jacobian is R[small, large], one backward pass per element of
            # the output, i.e. of the smaller tensor
            cross = jacrev(restricted(large, small), chunk_size=rows)(selected[large])  # [*small, *large]
            block = cross.reshape(selected[small].numel(), selected[large].numel())
            si, li = names.index(small), names.index(large)
            r[offsets[si]:offsets[si] + sizes[si], offsets[li]:offsets[li] + sizes[li]] = block
            r[offsets[li]:offsets[li] + sizes[li], offsets[si]:offsets[si] + sizes[si]] = block.T
    return r


def summed_hessian(model: nn.Module, layer: BranchLayer, blocks: tuple[ParamBlock, ...], x: torch.Tensor,
                   loss_of_outputs: Callable[[torch.Tensor], torch.Tensor], plan: MemoryPlan,
                   progress: bool = False, within: str = "auto") -> SummedParts:
    """``J^T H_s J + blockdiag(R_k)`` over ``blocks`` (all in branches of the summed ``layer``); see the module doc.
    ``within``: ``"auto"`` skips an ``R_k`` that HVP probes show is zero, ``"full"`` computes every one."""
    inputs, s, outputs = _container_io(model, layer, x)
    with torch.enable_grad():
        g, h_s = head_hessian(loss_of_outputs(outputs), s)
    n, d = g.shape
    slices = block_slices(blocks)
    total = sum(b.size for b in blocks)
    itemsize = g.element_size()
    fixed = total * total * itemsize + 2 * n * d * total * itemsize
    jacobians, within_terms = [], []
    branches = [(path, branch) for path, branch in zip(layer.modules, layer.branches, strict=True)
                if branch in slices]
    bar = tqdm(branches, desc="hessian branches", unit="branch", disable=not progress or None, leave=False)
    for path, branch in bar:
        own = tuple(b for b in blocks if b.branch == branch)
        jacobian, r = branch_parts(model.get_submodule(path), path, own, inputs[path], g, plan, fixed, within)
        jacobians.append(jacobian)
        within_terms.append(r)
    jac = torch.cat(jacobians, dim=2)  # [N, D, P]
    collaborative = torch.bmm(h_s, jac)  # H_s J: d/dw [dL/ds], [N, D, P]
    hessian = jac.reshape(n * d, total).T @ collaborative.reshape(n * d, total)
    for (_, branch), r in zip(branches, within_terms, strict=True):
        if r is not None:
            hessian[slices[branch], slices[branch]] += r
    dist = torch.stack([jac[..., slices[b]].pow(2).sum() for _, b in branches])
    collab = torch.stack([collaborative[..., slices[b]].pow(2).sum() for _, b in branches])
    zero = tuple(b for (_, b), r in zip(branches, within_terms, strict=True) if r is None)
    return SummedParts(hessian, dist, collab, zero)


def is_plain_sum(model: nn.Module, layer: BranchLayer, x: torch.Tensor, rtol: float = 1e-4) -> bool:
    """Whether the container's output is the plain sum of its branch outputs (plus its ``residual`` module's, when
    it has one) on ``x``: a gated mixture ``sum_k g_k(x) e_k(x)`` marked as a sum is not, and the summed
    method would give a wrong Hessian for it."""
    seen: dict[str, torch.Tensor] = {}

    def keep(path):
        return lambda module, args, out: seen.__setitem__(path, out.detach())

    container = model.get_submodule(layer.container)
    residual = getattr(container, "residual", None)
    after = [(path, keep(path)) for path in (layer.container, *layer.modules)]
    if isinstance(residual, nn.Module):
        after.append((f"{layer.container}.residual" if layer.container else "residual", keep("residual")))
    with forward_hooks(model, after), torch.no_grad():
        call_model(model, x)
    total = sum(seen[path] for path in layer.modules) + seen.get("residual", 0)
    out = seen[layer.container]
    return out.shape == total.shape and bool(torch.allclose(out, total, rtol=rtol,
                                                            atol=rtol * float(out.abs().max().clamp_min(1e-12))))


def summed_layer_of(blocks: tuple[ParamBlock, ...], layers: tuple[BranchLayer, ...]) -> BranchLayer | None:
    """The summed branch layer holding every selected block, if there is exactly one."""
    names = {b.layer for b in blocks}
    if len(names) != 1:
        return None
    layer = next(layer for layer in layers if layer.name in names)
    return layer if layer.kind == "sum" and layer.container is not None else None
