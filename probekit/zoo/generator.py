"""``branched-generator``: ``f(x) = R + sum_k v_k(phi_k)`` (paper section 7, appendix E).

Each branch ``v_k`` is a slim StarGAN-v2 generator: an encoder of
instance-normalised residual blocks that halve the resolution, and a decoder
of residual blocks whose adaptive instance norms take a style code, here a
learnt embedding of the target class (non-diverse class transfer; a single
class for re-generation). Images are ``[N, 3, H, W]`` in [0, 1] image units;
inputs of another size are resized (antialiased bilinear) to the model's
``resolution`` first, so the output is always ``resolution`` pixels square.

``R`` and the branch inputs ``phi_k`` come from one of two pre-processings:

* ``"gaussian"``: ``R`` is ``x`` blurred with a Gaussian of ``sigma`` pixels and
  every branch receives ``x``;
* ``"diffusion"``: a learnt nonlinear diffusion ``u_{i+1} = u_i - tau p(u_i)``,
  ``u_0 = x``, for ``M + 1`` steps, with ``p(u) = -div(c(u) grad u)`` and a
  bounded conductivity ``c > 0`` from an 8-layer bottleneck CNN (Eqs. 16-17; see
  :class:`DiffusionOperator`). With ``d_i = u_{i+1} - u_i``, ``phi_k = k (d_k - d_{k-1})``
  (discrete ``t u_tt``) and ``R = u_{M+1} - (M + 1) d_M`` (discrete
  ``T p(u(T)) + u(T)``), summation by parts gives ``x = R + sum_k phi_k`` exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from probekit.errors import ProbekitError

PREPROCESSINGS = ("gaussian", "diffusion")


class ResBlock(nn.Module):
    """Instance-normalised pre-activation residual block, optionally halving H and W:
    ``[N, cin, H, W] -> [N, cout, H', W']``."""

    def __init__(self, cin: int, cout: int, downsample: bool):
        super().__init__()
        self.downsample = downsample
        self.norm1 = nn.InstanceNorm2d(cin, affine=True)
        self.conv1 = nn.Conv2d(cin, cin, 3, 1, 1)
        self.norm2 = nn.InstanceNorm2d(cin, affine=True)
        self.conv2 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.shortcut = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else nn.Identity()

    def forward(self, x):
        out = self.conv1(F.leaky_relu(self.norm1(x), 0.2))
        if self.downsample:
            out, x = F.avg_pool2d(out, 2), F.avg_pool2d(x, 2)
        out = self.conv2(F.leaky_relu(self.norm2(out), 0.2))
        return (out + self.shortcut(x)) / math.sqrt(2)


class AdaIN(nn.Module):
    """Instance norm whose scale and shift come from a style code ``[N, style]``."""

    def __init__(self, style: int, channels: int):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.fc = nn.Linear(style, 2 * channels)

    def forward(self, x, s):
        gamma, beta = self.fc(s)[:, :, None, None].chunk(2, dim=1)
        return (1 + gamma) * self.norm(x) + beta


class AdaINResBlock(nn.Module):
    """Residual block with style-modulated norms, optionally doubling H and W."""

    def __init__(self, cin: int, cout: int, style: int, upsample: bool):
        super().__init__()
        self.upsample = upsample
        self.norm1 = AdaIN(style, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2 = AdaIN(style, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.shortcut = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else nn.Identity()

    def forward(self, x, s):
        out = F.leaky_relu(self.norm1(x, s), 0.2)
        if self.upsample:
            out, x = F.interpolate(out, scale_factor=2, mode="nearest"), F.interpolate(x, scale_factor=2,
                                                                                       mode="nearest")
        out = self.conv2(F.leaky_relu(self.norm2(self.conv1(out), s), 0.2))
        return (out + self.shortcut(x)) / math.sqrt(2)


class SlimGenerator(nn.Module):
    """One branch: ``phi_k`` ``[N, 3, H, W]`` and style ``[N, style]`` -> an image component ``[N, 3, H, W]``.

    ``widths[0]`` channels at full resolution, then one halving per further width (H, W divisible by
    ``2 ** (len(widths) - 1)``); one bottleneck block on each side.
    """

    def __init__(self, widths: tuple[int, ...], style: int):
        super().__init__()
        self.from_rgb = nn.Conv2d(3, widths[0], 3, 1, 1)
        pairs = list(zip(widths[:-1], widths[1:], strict=True))
        self.encode = nn.ModuleList([ResBlock(a, b, True) for a, b in pairs]
                                    + [ResBlock(widths[-1], widths[-1], False)])
        self.decode = nn.ModuleList([AdaINResBlock(widths[-1], widths[-1], style, False)]
                                    + [AdaINResBlock(b, a, style, True) for a, b in reversed(pairs)])
        self.to_rgb = nn.Sequential(nn.InstanceNorm2d(widths[0], affine=True), nn.LeakyReLU(0.2),
                                    nn.Conv2d(widths[0], 3, 1))

    def forward(self, x, s):
        out = self.from_rgb(x)
        for block in self.encode:
            out = block(out)
        for block in self.decode:
            out = block(out, s)
        return self.to_rgb(out)


class DiffusionOperator(nn.Module):
    """``p(u) = -div(c(u) grad u)``: a learnt nonlinear (Perona-Malik-like) diffusion ``[N, 3, H, W] -> [N, 3, H, W]``.

    The conductivity ``c = c_min + (c_max - c_min) sigmoid(q(u))`` ``[N, 3, H, W]`` (one per colour channel)
    comes from ``q``, an 8-layer bottleneck CNN, tanh between layers: 3x3 convs 3 -> 56 -> 28 -> 14, two 1x1
    convs at 14, 3x3 convs 14 -> 28 -> 56 -> 3 (38,909 parameters; the paper's ``p`` has 40.5k). Fluxes are
    4-neighbour differences with no flux across the border. Because ``c >= c_min > 0``, ``u <- u - tau p(u)``
    always smooths, and with ``tau * c_max <= 0.25`` the explicit scheme is stable. Both bounds are there
    because adversarial training finds the shortcut ``R = x``: a free CNN ``p`` learnt a near-constant step
    (every ``phi_k`` vanished; a first 128 px run), and a conductivity free to reach 0 fell from 1.25 to 0.13
    in 200 iterations (R within 51 dB of x). With the defaults and ``tau = 0.1``, ten steps smooth like a
    Gaussian of 1.4 to 2.2 pixels, around the ``gaussian`` pre-processing's sigma of 2.
    """

    def __init__(self, min_conductivity: float = 1.0, max_conductivity: float = 2.5):
        super().__init__()
        widths = (3, 56, 28, 14, 14, 14, 28, 56, 3)
        layers = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers.append(nn.Conv2d(a, b, 1 if i in (3, 4) else 3, 1, 0 if i in (3, 4) else 1))
            if i < len(widths) - 2:
                layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)
        self.min_conductivity, self.max_conductivity = min_conductivity, max_conductivity

    def conductivity(self, u: torch.Tensor) -> torch.Tensor:
        """``c(u)`` ``[N, 3, H, W]`` in (``min_conductivity``, ``max_conductivity``)."""
        span = self.max_conductivity - self.min_conductivity
        return self.min_conductivity + span * torch.sigmoid(self.net(u))

    def forward(self, u):
        c = self.conductivity(u)
        flux_x = 0.5 * (c[..., 1:] + c[..., :-1]) * (u[..., 1:] - u[..., :-1])  # [N, 3, H, W - 1]
        flux_y = 0.5 * (c[..., 1:, :] + c[..., :-1, :]) * (u[..., 1:, :] - u[..., :-1, :])  # [N, 3, H - 1, W]
        flux_x, flux_y = F.pad(flux_x, (1, 1)), F.pad(flux_y, (0, 0, 1, 1))  # no flux across the border
        return -(flux_x[..., 1:] - flux_x[..., :-1] + flux_y[..., 1:, :] - flux_y[..., :-1, :])


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[N, C, H, W]`` with reflect padding (``sigma`` in pixels)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


class BranchedGenerator(nn.Module):
    """``x`` ``[N, 3, H, W]`` in [0, 1] -> ``R + sum_k v_k(phi_k, s_target)`` ``[N, 3, r, r]``, r = ``resolution``.

    ``target`` (``[N]`` class ids) picks the style; without it every sample gets ``default_target``
    (:meth:`select_target`, e.g. ``"male"`` for female -> male, before probing).
    """

    probekit_branches = "branches"

    def __init__(self, branches: int = 9, classes: int = 1, widths: tuple[int, ...] = (8, 16, 32), style: int = 16,
                 preprocessing: str = "gaussian", sigma: float = 2.0, tau: float = 0.1, resolution: int = 64):
        super().__init__()
        if preprocessing not in PREPROCESSINGS:
            raise ValueError(f"preprocessing must be one of {PREPROCESSINGS}, not {preprocessing!r}")
        self.branches = nn.ModuleList([SlimGenerator(tuple(widths), style) for _ in range(branches)])
        self.styles = nn.Embedding(classes, style)
        self.preprocessing, self.sigma, self.tau, self.resolution = preprocessing, sigma, tau, resolution
        self.diffusion = DiffusionOperator() if preprocessing == "diffusion" else None
        self.default_target = 0
        self.class_names = [str(i) for i in range(classes)]

    def select_target(self, name: str) -> None:
        """Make class ``name`` (one of ``class_names``) the style of every forward without ``target``."""
        if name not in self.class_names:
            raise ProbekitError(f"unknown target class {name!r}; this generator's classes: "
                                f"{', '.join(self.class_names)}")
        self.default_target = self.class_names.index(name)

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` at the model's resolution (unchanged when it already is)."""
        if x.shape[-2:] == (self.resolution, self.resolution):
            return x
        return F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", antialias=True,
                             align_corners=False)

    def decompose_input(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``R`` ``[N, 3, H, W]`` and the branch inputs ``phi_k`` (M of them)."""
        m = len(self.branches)
        if self.diffusion is None:
            return gaussian_blur(x, self.sigma), [x] * m
        u, steps = x, []
        for _ in range(m + 1):
            step = -self.tau * self.diffusion(u)
            steps.append(step)
            u = u + step
        phis = [k * (steps[k] - steps[k - 1]) for k in range(1, m + 1)]
        return u - (m + 1) * steps[m], phis

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        if target is None:
            target = torch.full((len(x),), self.default_target, dtype=torch.long, device=x.device)
        s = self.styles(target)
        r, phis = self.decompose_input(self.resize(x))
        out = r
        for branch, phi in zip(self.branches, phis, strict=True):
            out = out + branch(phi, s)
        return out


def branched_generator(**config) -> BranchedGenerator:
    """The zoo builder (``config`` as :class:`BranchedGenerator` takes it)."""
    return BranchedGenerator(**config)
