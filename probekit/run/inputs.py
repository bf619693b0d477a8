"""Model inputs of either form a run meets: one tensor ``[N, ...]`` (images, vectors), or a dict of tensors
``{"input_ids": [N, T], "attention_mask": [N, T], ...}`` passed to the model as keyword arguments (token models).

Every place that moves, slices, counts or feeds a batch's inputs goes through these functions, so an analysis
handles both forms with the same code.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

Inputs = torch.Tensor | Mapping[str, torch.Tensor]


def to_device(inputs: Inputs, device: torch.device) -> Inputs:
    """``inputs`` on ``device`` (every tensor of a dict)."""
    if isinstance(inputs, Mapping):
        return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in inputs.items()}
    return inputs.to(device)


def count_inputs(inputs: Inputs) -> int:
    """N, the samples in the batch."""
    if isinstance(inputs, Mapping):
        return int(next(v for v in inputs.values() if isinstance(v, torch.Tensor)).shape[0])
    return int(inputs.shape[0])


def take_inputs(inputs: Inputs, rows) -> Inputs:
    """The samples ``rows`` (a slice, an index tensor or a boolean mask) of every tensor."""
    if isinstance(inputs, Mapping):
        return {key: value[rows] if isinstance(value, torch.Tensor) else value for key, value in inputs.items()}
    return inputs[rows]


def pad_to(inputs: Inputs, size: int) -> Inputs:
    """``inputs`` padded to ``size`` samples by repeating the last one (models that take a fixed batch)."""
    n = count_inputs(inputs)

    def padded(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, t[-1:].expand(size - n, *t.shape[1:])])

    if isinstance(inputs, Mapping):
        return {key: padded(value) if isinstance(value, torch.Tensor) else value for key, value in inputs.items()}
    return padded(inputs)


def sample_shape(inputs: Inputs) -> tuple[int, ...]:
    """The shape of one sample (of ``input_ids`` for a dict)."""
    if isinstance(inputs, Mapping):
        first = inputs.get("input_ids", next(v for v in inputs.values() if isinstance(v, torch.Tensor)))
        return tuple(first.shape[1:])
    return tuple(inputs.shape[1:])


def output_tensor(output) -> torch.Tensor:
    """The tensor of a model's output: itself, the ``logits`` of a transformers ``ModelOutput`` (or its first
    field), or the first element of a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, Mapping) and output:
        return output_tensor(next(iter(output.values())))
    if isinstance(output, (tuple, list)) and output:
        return output_tensor(output[0])
    raise TypeError(f"the model returned {type(output).__name__}, not a tensor")


def call_model(model, inputs: Inputs) -> torch.Tensor:
    """``model(inputs)`` or ``model(**inputs)``, as one output tensor (:func:`output_tensor`)."""
    if isinstance(inputs, Mapping):
        return output_tensor(model(**inputs))
    return output_tensor(model(inputs))
