"""The forward passes of ``importance``: each branch's mean part, the gated pass that gives the estimates, and
one ablated pass per branch and ablation, all through :func:`probekit.api.edit_branches`.

Per-sample losses come from the run's loss summed over one sample at a time, so a branch's change in loss is
a mean over samples with a standard error.
"""

from __future__ import annotations

import torch

from probekit.api import BranchLayer, call_model, edit_branches, summed_loss, take_inputs

ABLATIONS = ("zero", "mean", "resample")


def per_sample_loss(loss: str, outputs: torch.Tensor, targets, inputs, analysis: str) -> torch.Tensor:
    """``[N]`` float64: the loss ``loss`` of each sample of a batch."""
    return torch.stack([summed_loss(loss, outputs[i:i + 1], None if targets is None else targets[i:i + 1],
                                    analysis, take_inputs(inputs, slice(i, i + 1))) for i in range(len(outputs))]
                       ).double()


def correct(outputs: torch.Tensor, targets) -> torch.Tensor | None:
    """``[N]`` 0/1 whether the arg-max class is the target (classifier outputs ``[N, C]``), else ``None``."""
    if targets is None or outputs.dim() != 2 or targets.dim() != 1 or targets.dtype.is_floating_point:
        return None
    return (outputs.argmax(1) == targets).double()


def part_sums(model, layers: list[BranchLayer], inputs) -> dict[tuple[str, int], torch.Tensor]:
    """``{(layer, k): sum over the batch's samples of branch k's part}`` (float64), from one plain forward."""
    sums = {}

    def keep(layer, k, part):
        sums[layer.name, k] = part.detach().double().sum(0)
        return part

    with torch.no_grad(), edit_branches(model, layers, keep):
        call_model(model, inputs)
    return sums


def gated_pass(model, layers: list[BranchLayer], inputs, loss_of) -> tuple[torch.Tensor, dict, dict, torch.Tensor]:
    """One forward and backward with a scalar gate ``xi = 1`` on every branch of every sample: ``(per-sample
    losses [N], parts {(layer, k): [N, ...]}, their loss gradients, dL/dxi [N, B])`` (B branches, layer by
    layer); ``loss_of(outputs)`` gives the per-sample losses."""
    offsets, start = {}, 0
    for layer in layers:
        offsets[layer.name] = start
        start += len(layer.branches)
    parts, gated = {}, {}
    gates = None

    def gate(layer, k, part):
        nonlocal gates
        if gates is None:
            gates = torch.ones(part.shape[0], start, dtype=part.dtype, device=part.device, requires_grad=True)
        parts[layer.name, k] = part.detach()
        out = part * gates[:, offsets[layer.name] + k].reshape(-1, *[1] * (part.dim() - 1))
        out.retain_grad()
        gated[layer.name, k] = out
        return out

    with torch.enable_grad(), edit_branches(model, layers, gate):
        losses = loss_of(call_model(model, inputs))
        losses.sum().backward()
    grads = {key: out.grad if out.grad is not None else torch.zeros_like(out) for key, out in gated.items()}
    gate_grads = gates.grad if gates.grad is not None else torch.zeros_like(gates)
    return losses.detach(), parts, grads, gate_grads.detach().double()


def replacement(mode: str, part: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """What ablation ``mode`` puts in place of a part ``[N, ...]``: zeros, the branch's mean part, or each
    sample's part from the next sample of the batch (the last takes the first's)."""
    if mode == "zero":
        return torch.zeros_like(part)
    if mode == "mean":
        return mean.to(part.dtype).expand_as(part)
    return part.roll(1, dims=0)


def ablated_pass(model, target: BranchLayer, k: int, mode: str, means: dict, inputs) -> torch.Tensor:
    """The model's outputs with branch ``k`` of ``target`` ablated by ``mode`` (no gradients)."""
    def ablate(layer, j, part):
        if layer.name != target.name or j != k:
            return part
        return replacement(mode, part, means[layer.name, j])

    with torch.no_grad(), edit_branches(model, [target], ablate):
        return call_model(model, inputs)
