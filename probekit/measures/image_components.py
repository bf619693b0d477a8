"""Branch outputs of an image generator as image components (paper section 7).

For ``f(x) = R + sum_k v_k`` whose branches output images of the model
output's shape, ``v_k`` is component k and ``R = f(x) - sum_k v_k``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from probekit.run.analysis import Batch
from probekit.models.branches import BranchLayer, BranchSet
from probekit.errors import ProbekitError


def image_layer(branchset: BranchSet, outputs: torch.Tensor, analysis: str) -> BranchLayer:
    """The first summed layer whose branches output images shaped like ``outputs`` ``[N, C, H, W]``."""
    if outputs.dim() != 4:
        raise ProbekitError(f"{analysis} needs a model that outputs images [N, C, H, W], not {list(outputs.shape)}")
    for layer in branchset.layers:
        if layer.kind == "sum" and layer.container is not None:
            return layer
    raise ProbekitError(f"{analysis} needs summed branches whose outputs are images; found "
                        f"{', '.join(layer.kind for layer in branchset.layers)} branch layers")


def components(batch: Batch, layer: BranchLayer, analysis: str) -> torch.Tensor:
    """``[N, K, C, H, W]``: each branch's output as an image."""
    responses = batch.responses[layer.name]
    n, k, d = responses.shape
    if d != batch.outputs[0].numel():
        raise ProbekitError(f"{analysis}: the branches of {layer.name!r} output {d} values, the model "
                            f"{list(batch.outputs.shape[1:])}; components must be images of the output's shape")
    return responses.reshape(n, k, *batch.outputs.shape[1:])


def inputs_like(inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor | None:
    """The inputs ``[N, C, h, w]`` resized (antialiased bilinear) to the outputs' ``H, W``; None when their
    channels differ or they are not images."""
    if inputs.dim() != 4 or inputs.shape[1] != outputs.shape[1]:
        return None
    if inputs.shape[-2:] == outputs.shape[-2:]:
        return inputs
    return F.interpolate(inputs.float(), size=outputs.shape[-2:], mode="bilinear", antialias=True,
                         align_corners=False)


def pixel_correlation(parts: torch.Tensor) -> torch.Tensor:
    """``[N, K, ...]`` -> ``[N, K, K]`` Pearson correlation of the K components over their values, per sample
    (0 where a component is constant)."""
    flat = parts.flatten(2).double()
    centred = flat - flat.mean(dim=2, keepdim=True)
    norms = centred.norm(dim=2)
    unit = centred / torch.where(norms > 0, norms, torch.ones_like(norms))[..., None]
    return unit @ unit.transpose(1, 2)


def fidelity(outputs: np.ndarray, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample PSNR [dB] and SSIM of ``outputs`` (clipped to [0, 1]) against ``inputs``, ``[N, C, H, W]``
    (scikit-image, data range 1)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity  # only when images are scored

    out = np.clip(outputs, 0, 1)
    psnr = [peak_signal_noise_ratio(i, o, data_range=1.0) for i, o in zip(inputs, out, strict=True)]
    ssim = [structural_similarity(i, o, data_range=1.0, channel_axis=0) for i, o in zip(inputs, out, strict=True)]
    return np.array(psnr), np.array(ssim)
