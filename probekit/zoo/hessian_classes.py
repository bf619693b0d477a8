"""``probekit experiment hessian-classes``: how block-diagonal the loss Hessian is, by branch, against the number
of classes C (Dong et al. 2025, "Towards Quantifying the Hessian Structure of Neural Networks": the off-block
share falls as C grows), rebuilt from the paper's setting.

Data: ``x ~ N(0, I_d)`` (d = 500), n = 5,000 samples, labels from a random linear teacher ``argmax_c (x T)_c``
(``T ~ N(0, 1)``, d x C), so the classes are learnable. Model: one hidden layer whose 8 hidden units are 8 summed
branches, ``f(x) = sum_b v_b relu(<w_b, x>)`` (``w_b`` in R^d, ``v_b`` in R^C, no biases, PyTorch's default
initialisation): 8 (d + C) parameters, 8,000 at C = 500. The loss is the mean cross-entropy; its exact Hessian
(float64, every entry, in closed form: :func:`exact_hessian`, checked against autograd's) is blocked
by branch and :func:`probekit.measures.blocks.off_block_share` gives ``|H - blockdiag(H)|_F^2 / |H|_F^2``, at
initialisation and after training (full-batch Adam).

Baseline: the same Hessian cut into random blocks of the branches' sizes (``permutations`` draws): the share a
blocking that ignores the branches gives.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn
from tqdm import tqdm

from probekit.errors import ProbekitError
from probekit.measures.blocks import off_block_share

STATES = ("init", "trained")


@dataclass(frozen=True)
class HessianClassesConfig:
    """What ``probekit experiment hessian-classes`` was asked (see ``docs/reproductions.md``)."""

    classes: tuple[int, ...] = (10, 100, 500)
    seeds: int = 1
    first_seed: int = 0
    dim: int = 500
    samples: int = 5000
    branches: int = 8
    steps: int = 300
    lr: float = 0.01
    permutations: int = 99

    def check(self):
        if not self.classes or min(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ProbekitError(f"hessian-classes: --classes must be distinct counts >= 2, not {self.classes}")
        if min(self.seeds, self.dim, self.samples, self.branches) < 1 or self.steps < 0 \
                or self.lr <= 0 or self.permutations < 0:
            raise ProbekitError("hessian-classes: --seeds, --dim, --samples and --branches must be >= 1, "
                                "--steps and --permutations >= 0, --lr > 0")


def parse_classes(text: str) -> tuple[int, ...]:
    """``10,100,500`` -> ``(10, 100, 500)``."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ProbekitError(f"--classes must be comma-separated integers, not {text!r}") from None


class BranchedHidden(nn.Module):
    """``[N, d] -> [N, C]``: ``sum_b v_b relu(<w_b, x>)``, each hidden unit with its output weights a branch."""

    def __init__(self, dim: int, classes: int, branches: int):
        super().__init__()
        self.branches = nn.ModuleList(nn.Sequential(nn.Linear(dim, 1, bias=False), nn.ReLU(),
                                                    nn.Linear(1, classes, bias=False)) for _ in range(branches))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(branch(x) for branch in self.branches)


def teacher_data(config: HessianClassesConfig, classes: int, generator: torch.Generator):
    """``(x [n, d], y [n])``: Gaussian inputs, labels of a random linear teacher."""
    x = torch.randn(config.samples, config.dim, generator=generator, dtype=torch.float64)
    teacher = torch.randn(config.dim, classes, generator=generator, dtype=torch.float64)
    return x, (x @ teacher).argmax(1)


def exact_hessian(model: BranchedHidden, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """``[P, P]`` the exact Hessian of the mean cross-entropy over every parameter, in ``named_parameters`` order
    (per branch ``w_b`` then ``v_b``), in closed form: the Gauss-Newton part ``(1/n) sum_i J_i^T H_i J_i``
    (``H_i = diag(p_i) - p_i p_i^T``) plus the residual ``(1/n) sum_i sum_c (p_i - e_y)_c d^2 z_c`` (nonzero only
    between ``v_b`` and ``w_b`` of one branch: relu'' = 0). ``tests/test_reproductions.py`` checks it against
    autograd's Hessian."""
    with torch.no_grad():
        w = torch.cat([branch[0].weight for branch in model.branches]).double()  # [B, d]
        v = torch.cat([branch[2].weight for branch in model.branches], 1).double()  # [C, B]
        x = x.double()
        pre = x @ w.T
        on, a = (pre > 0).double(), pre.clamp(min=0)  # [n, B]
        p = (a @ v.T).softmax(1)  # [n, C]
        g = p - F.one_hot(y, p.shape[1]).double()
        hv = p[:, :, None] * (v[None] - (p @ v)[:, None, :])  # [n, C, B]: H_i v_b
        m = torch.einsum("cb,ncd->nbd", v, hv)  # [n, B, B]: v_b^T H_i v_b'
        z = on[:, :, None] * x[:, None, :]  # [n, B, d]: d(pre-activation)/d w_b where the unit is on
        n, (branches, d), classes = len(x), w.shape, v.shape[0]
        size = d + classes
        h = torch.zeros(branches * size, branches * size, dtype=torch.float64)
        for b in range(branches):
            wb = slice(b * size, b * size + d)
            for c in range(branches):
                wc, vc = slice(c * size, c * size + d), slice(c * size + d, (c + 1) * size)
                h[wb, wc] = (z[:, b] * m[:, b, c, None]).T @ z[:, c]
                h[wb, vc] = z[:, b].T @ (hv[:, :, b] * a[:, c, None]) + (z[:, b].T @ g if b == c else 0)
                h[vc, wb] = h[wb, vc].T
                if c >= b:
                    vb = slice(b * size + d, (b + 1) * size)
                    both = a[:, b] * a[:, c]
                    h[vb, vc] = torch.diag(both @ p) - (p * both[:, None]).T @ p
                    h[vc, vb] = h[vb, vc].T
        return (h / n).numpy()


def branch_slices(model: BranchedHidden) -> dict[str, slice]:
    """Each branch's parameters in the flat order of :func:`exact_hessian`."""
    out, start = {}, 0
    for b, branch in enumerate(model.branches):
        size = sum(p.numel() for p in branch.parameters())
        out[f"branches.{b}"] = slice(start, start + size)
        start += size
    return out


def random_block_shares(h: np.ndarray, slices: dict[str, slice], draws: int, rng: np.random.Generator) -> np.ndarray:
    """``[draws]`` the off-block share of ``h`` cut into random blocks of the same sizes as ``slices``: with
    ``S = h**2`` and a random block label per parameter (one-hot ``L [P, B]``), the within-block energy is
    ``sum(L * (S @ L))``."""
    energy = h ** 2
    total = float(energy.sum())
    labels = np.concatenate([np.full(s.stop - s.start, b) for b, s in enumerate(slices.values())])
    out = np.empty(draws)
    for i in range(draws):
        onehot = np.eye(len(slices))[rng.permutation(labels)]
        out[i] = (total - float((onehot * (energy @ onehot)).sum())) / total
    return out


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: HessianClassesConfig) -> float:
    """Full-batch Adam on the mean cross-entropy; the final training accuracy."""
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    for _ in range(config.steps):
        loss = F.cross_entropy(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def run_hessian_classes(config: HessianClassesConfig, progress: bool = True) -> xr.Dataset:
    """Every (C, seed): the off-block share at initialisation and after training, with its random-block
    baseline; the ``hessian-classes`` node."""
    config.check()
    seeds = list(range(config.first_seed, config.first_seed + config.seeds))
    shape = (len(config.classes), len(seeds), len(STATES))
    share, null_mean, p = (np.full(shape, np.nan) for _ in range(3))
    band = np.full(shape + (2,), np.nan)
    accuracy = np.full(shape[:2], np.nan)
    params = np.zeros(len(config.classes), dtype=np.int64)
    bar = tqdm(total=len(config.classes) * len(seeds) * len(STATES), desc="hessian-classes: exact Hessians",
               unit="Hessian", disable=not progress or None)
    for i, classes in enumerate(config.classes):
        for j, seed in enumerate(seeds):
            generator = torch.Generator().manual_seed(seed)
            x, y = teacher_data(config, classes, generator)
            torch.manual_seed(seed)
            model = BranchedHidden(config.dim, classes, config.branches).double()
            slices = branch_slices(model)
            params[i] = sum(p.numel() for p in model.parameters())
            for s, state in enumerate(STATES):
                if state == "trained":
                    accuracy[i, j] = train(model, x, y, config)
                h = exact_hessian(model, x, y)
                bar.update(1)
                share[i, j, s] = off_block_share(h, slices)
                if config.permutations:
                    null = random_block_shares(h, slices, config.permutations, np.random.default_rng([seed, i, s]))
                    null_mean[i, j, s], band[i, j, s] = null.mean(), np.quantile(null, [0.025, 0.975])
                    p[i, j, s] = (1 + (null <= share[i, j, s]).sum()) / (1 + len(null))
    bar.close()
    return _dataset(config, seeds, share, null_mean, band, p, accuracy, params)


def _dataset(config, seeds, share, null_mean, band, p, accuracy, params) -> xr.Dataset:
    dims = ("classes", "seed", "state")
    return xr.Dataset(
        {
            "off_block_share": (dims, share, {
                "long_name": "share of Frobenius energy off the branch blocks", "units": "1",
                "description": "|H - blockdiag(H)|_F^2 / |H|_F^2 of the exact Hessian of the mean cross-entropy, "
                               "blocks: the 8 branches (hidden unit + its output weights)"}),
            "off_block_share_p": (dims, p, {
                "long_name": "permutation p-value of off_block_share", "units": "1",
                "null": "the Hessian cut into random blocks of the branches' sizes; small p: more block-diagonal "
                        "by branch than that", "permutations": config.permutations}),
            "off_block_share_null": (dims, null_mean, {
                "long_name": "mean of off_block_share over random blocks", "units": "1"}),
            "off_block_share_null_band": (dims + ("bound",), band, {
                "long_name": "central 95% of off_block_share over random blocks", "units": "1"}),
            "train_accuracy": (("classes", "seed"), accuracy, {
                "long_name": "training accuracy after training", "units": "1"}),
            "n_params": ("classes", params, {"long_name": "parameters (every Hessian entry is computed)"}),
        },
        coords={"classes": ("classes", np.array(config.classes)), "seed": ("seed", np.array(seeds)),
                "state": ("state", np.array(STATES, dtype=object)),
                "bound": ("bound", np.array(["low", "high"], dtype=object))},
        attrs={"options": json.dumps(asdict(config), sort_keys=True)},
    )


def summary(ds: xr.Dataset) -> dict:
    """Per state: the off-block share for each C (seed mean), and whether it falls strictly as C grows."""
    found = {}
    for state in ds.state.values:
        shares = ds.off_block_share.sel(state=state).mean("seed").values
        falls = bool(np.all(np.diff(shares) < 0))
        values = ", ".join(f"C={int(c)}: {v:.4f}" for c, v in zip(ds.classes.values, shares, strict=True))
        null = float(ds.off_block_share_null.sel(state=state).mean())
        found[f"off-block share at {state}"] = (f"{values} ({'strictly falls' if falls else 'does not fall'} as "
                                                f"C grows; random blocks {null:.3f})")
    return found
