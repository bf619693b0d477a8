"""A band-pass decomposition of the input, shaped like the branched generators: the baseline every generator
component is compared with (``afhq-cat-bandpass9``).

``x`` ``[N, 3, H, W]`` in [0, 1] is resized to ``resolution`` and split into ``branches`` difference-of-Gaussian
bands ``v_k = G_{s_k}(x) - G_{s_{k+1}}(x)`` (``G_0`` the identity) with geometrically spaced scales, plus the
residual low-pass ``R = G_{s_M}(x)``: ``f(x) = R + sum_k v_k = x`` exactly. It has no parameters; it runs through
the same analyses (``decomposition``, ``chan-vese``) as the generators.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from probekit.zoo.generator import gaussian_blur


class Band(nn.Module):
    """``G_fine(x) - G_coarse(x)``, scales in pixels (``fine`` 0: ``x`` itself)."""

    def __init__(self, fine: float, coarse: float):
        super().__init__()
        self.fine, self.coarse = float(fine), float(coarse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sharp = x if self.fine == 0 else gaussian_blur(x, self.fine)
        return sharp - gaussian_blur(x, self.coarse)


class BandPassDecomposition(nn.Module):
    """``x`` -> ``R + sum_k v_k`` ``[N, 3, r, r]`` = ``x`` resized to ``resolution`` (see the module)."""

    probekit_branches = "branches"

    def __init__(self, branches: int = 9, finest: float = 0.5, coarsest: float = 16.0, resolution: int = 64):
        super().__init__()
        scales = [0.0, *np.geomspace(finest, coarsest, branches).tolist()]
        self.branches = nn.ModuleList([Band(scales[k], scales[k + 1]) for k in range(branches)])
        self.coarsest, self.resolution = float(scales[-1]), resolution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", antialias=True,
                              align_corners=False)
        out = gaussian_blur(x, self.coarsest)
        for band in self.branches:
            out = out + band(x)
        return out


def band_pass(branches: int = 9, finest: float = 0.5, coarsest: float = 16.0,
              resolution: int = 64) -> BandPassDecomposition:
    """The zoo builder."""
    return BandPassDecomposition(branches, finest, coarsest, resolution)
