"""The losses analyses differentiate, by name, and how ``auto`` picks one.

``mse``: 1/2 |f - y|^2 (regression targets, the toy models); ``ce``:
cross-entropy on f as logits; ``clamped``: the paper's section 6 loss,
cross-entropy between softmax(f) and softmax of +-1 class indicators (f is
already clamped by the model); ``next-token``: a language model's cross-entropy
of each token given those before it (logits ``[N, T, V]``, targets the input
tokens shifted by one, padding left out); ``same-token``: a masked language
model's cross-entropy of each token at its own position. The token losses take
their targets from the inputs, not from the data's targets. Every loss sums
over samples; divide for a mean.

A model names the loss it was trained with in a ``probekit_loss`` attribute
(the zoo's clamped ``branched-resnet18`` sets ``"clamped"``; a Hugging Face
language model ``"lm"``, made next-token or same-token by ``probekit_causal``);
``auto`` uses it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from probekit.errors import ProbekitError

LOSSES = ("auto", "mse", "ce", "clamped", "next-token", "same-token")
TOKEN_LOSSES = ("next-token", "same-token")
LOSS_ATTR = "probekit_loss"
CAUSAL_ATTR = "probekit_causal"


def indicator_targets(labels: torch.Tensor, classes: int = 10) -> torch.Tensor:
    """The paper's target distribution: softmax of +1 for the true class and -1 elsewhere; ``[N] -> [N, classes]``."""
    signs = torch.full((labels.shape[0], classes), -1.0, device=labels.device)
    signs[torch.arange(labels.shape[0]), labels] = 1.0
    return signs.softmax(dim=1)


def resolve_loss(name: str, model, has_classes: bool, analysis: str) -> str:
    """``auto``: the model's own ``probekit_loss`` when it names one, else ce for data with classes, else mse."""
    if name not in LOSSES:
        raise ProbekitError(f"{analysis}.loss must be one of {', '.join(LOSSES)}, not {name!r}")
    if name != "auto":
        return name
    declared = getattr(model, LOSS_ATTR, None)
    if declared == "lm":
        return "next-token" if getattr(model, CAUSAL_ATTR, True) else "same-token"
    if declared in LOSSES[1:]:
        return declared
    return "ce" if has_classes else "mse"


def summed_loss(name: str, outputs: torch.Tensor, targets: torch.Tensor | None, analysis: str,
                inputs=None) -> torch.Tensor:
    """The loss ``name`` summed over the batch; ``outputs`` ``[N, ...]``, ``targets`` ``[N]`` or like outputs;
    ``inputs`` (the batch's, a tensor of token ids or a dict with ``input_ids``) for the token losses."""
    if name in TOKEN_LOSSES:
        return token_loss(outputs, inputs, name == "next-token", analysis)
    if targets is None:
        raise ProbekitError(f"{analysis} needs data with targets (the loss needs them)")
    if name == "ce":
        return F.cross_entropy(outputs, targets.long(), reduction="sum")
    if name == "clamped":
        return F.cross_entropy(outputs, indicator_targets(targets.long(), outputs.shape[1]).to(outputs.dtype),
                               reduction="sum")
    if targets.numel() != outputs.numel():
        raise ProbekitError(f"{analysis}: mse needs one target per output value; outputs "
                            f"{tuple(outputs.shape)}, targets {tuple(targets.shape)} (try --option "
                            f"{analysis}.loss=ce)")
    return 0.5 * (outputs - targets.reshape(outputs.shape).to(outputs.dtype)).pow(2).sum()


def token_loss(logits: torch.Tensor, inputs, causal: bool, analysis: str) -> torch.Tensor:
    """Cross-entropy of the input tokens, summed over sequences and tokens: ``logits`` ``[N, T, V]``; each token
    given those before it (``causal``), else at its own position; tokens with ``attention_mask`` 0 left out."""
    tokens = inputs.get("input_ids") if isinstance(inputs, dict) else inputs
    if not isinstance(tokens, torch.Tensor) or logits.dim() != 3 or tokens.shape != logits.shape[:2]:
        raise ProbekitError(f"{analysis}: a token loss needs token inputs [N, T] and logits [N, T, V], not "
                            f"{tuple(getattr(tokens, 'shape', ()))} and {tuple(logits.shape)}")
    mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
    targets = tokens.long().clone()
    if mask is not None:
        targets[mask == 0] = -100
    if causal:
        logits, targets = logits[:, :-1], targets[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                           reduction="sum")
