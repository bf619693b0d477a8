"""The paper's toy experiments (section 4.1, Figs. 2-4): many small branched perceptrons at once.

Every (M, trial) network ``f(x) = sum_k LeakyReLU(w_k x + b_k)`` is trained by
full-batch gradient descent on the four toy points with
``L = 1/2 sum_j (f(x_j) - y_j)^2``. All networks of all M are one batched
tensor program: their branches are laid end to end in flat parameter vectors
``w, b`` of length ``sum_M M * trials``, and per-network sums are segment sums
(``index_add_``) over that axis. Tensors are laid out ``[sample, branch]`` so
every elementwise op runs over a long contiguous axis.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import xarray as xr
from tqdm import tqdm

from probekit.zoo.architectures import LEAKY_SLOPE
from probekit.run.datasets import TOY_POINTS
from probekit.errors import ProbekitError
from probekit.measures.activity_rule import active_flags, relative_norms

SUCCESS_DELTA = 1e-4  # success: sum_j (f(x_j) - y_j)^2 < delta (the paper's choice)
ACTIVE_FRACTION = 0.1  # active: response norm >= 10% of the network's largest branch


@dataclass(frozen=True)
class SweepConfig:
    """One sweep. ``init`` is ``uniform:A`` (w, b ~ U(-A, A)) or ``normal:S`` (N(0, S^2))."""

    task: str = "toy1"
    branches: tuple[int, ...] = tuple(range(2, 31))
    trials: int = 1000
    steps: int = 5000
    lr: float = 0.02
    init: str = "uniform:1"
    seed: int = 0
    dtype: str = "float32"
    record_dynamics: int = 0
    dynamics_every: int = 25

    def check(self) -> None:
        if self.task not in TOY_POINTS:
            raise ProbekitError(f"--task must be one of {', '.join(TOY_POINTS)}, not {self.task!r}")
        if not self.branches or min(self.branches) < 1:
            raise ProbekitError("--branches needs branch counts >= 1, e.g. 2:30")
        if self.trials < 1 or self.steps < 0 or self.lr <= 0 or self.dynamics_every < 1:
            raise ProbekitError("--trials and --dynamics-every must be >= 1, --steps >= 0 and --lr > 0")
        if not 0 <= self.record_dynamics <= self.trials:
            raise ProbekitError(f"--record-dynamics must be between 0 and --trials ({self.trials})")
        if self.dtype not in ("float32", "float64"):
            raise ProbekitError(f"--dtype must be float32 or float64, not {self.dtype!r}")
        parse_init(self.init)


def parse_branch_counts(text: str) -> tuple[int, ...]:
    """``2:30`` (inclusive range) or ``2,4,8`` -> branch counts."""
    try:
        if ":" in text:
            low, high = (int(v) for v in text.split(":"))
            counts = tuple(range(low, high + 1))
        else:
            counts = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ProbekitError(f"--branches must look like 2:30 or 2,4,8, not {text!r}") from None
    if not counts:
        raise ProbekitError(f"--branches {text!r} names no branch count")
    return counts


def parse_init(text: str) -> tuple[str, float]:
    kind, _, scale = text.partition(":")
    try:
        value = float(scale or 1.0)
    except ValueError:
        value = -1.0
    if kind not in ("uniform", "normal") or value <= 0:
        raise ProbekitError(f"--init must be uniform:A or normal:S with a positive number, not {text!r}")
    return kind, value


def initial_parameters(config: SweepConfig, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w, b)`` of shape ``[trials, m]`` for the M = ``m`` networks, seeded by ``(seed, m)``."""
    kind, scale = parse_init(config.init)
    gen = torch.Generator().manual_seed(config.seed * 1_000_003 + m)
    dtype = getattr(torch, config.dtype)
    if kind == "uniform":
        draw = lambda: (torch.rand(config.trials, m, generator=gen, dtype=dtype) * 2 - 1) * scale  # noqa: E731
    else:
        draw = lambda: torch.randn(config.trials, m, generator=gen, dtype=dtype) * scale  # noqa: E731
    return draw(), draw()


class FlatNetworks:
    """The branches of every (M, trial) network laid end to end.

    ``network[i]`` is the network of flat branch ``i``; networks are ordered
    by M (in ``counts`` order), then by trial.
    """

    def __init__(self, counts: tuple[int, ...], trials: int):
        self.counts, self.trials = counts, trials
        sizes = torch.tensor([m for m in counts for _ in range(trials)])
        self.n_networks = len(sizes)
        self.network = torch.repeat_interleave(torch.arange(self.n_networks), sizes)
        self.offsets = torch.cumsum(sizes, 0) - sizes

    def padded_index(self, m_max: int, trials: int | None = None) -> torch.Tensor:
        """``[len(counts), trials, m_max]`` flat indices (``-1`` past a network's M) of the first ``trials``."""
        trials = self.trials if trials is None else trials
        index = torch.full((len(self.counts), trials, m_max), -1, dtype=torch.long)
        for g, m in enumerate(self.counts):
            first = self.offsets[g * self.trials: g * self.trials + trials]
            index[g, :, :m] = first[:, None] + torch.arange(m)
        return index


def forward(w, b, x, network, n_networks):
    """Branch pre-activations and responses ``[4, K]``, and network outputs ``f`` ``[4, n_networks]``."""
    pre = torch.addcmul(b, x[:, None], w)
    v = torch.nn.functional.leaky_relu(pre, LEAKY_SLOPE)
    f = torch.zeros(x.shape[0], n_networks, dtype=w.dtype).index_add_(1, network, v)
    return pre, v, f


def train(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor, nets: FlatNetworks, steps: int,
          lr: float, trace=None, progress: bool = False) -> None:
    """Full-batch gradient descent on every network at once, in place on ``w`` and ``b`` ``[K]``.

    dL/dw_k = sum_j (f(x_j) - y_j) sigma'(w_k x_j + b_k) x_j and dL/db_k likewise without x_j
    (paper Eq. 5). ``trace(step, v)`` is called with the responses ``[4, K]`` before each step and
    after the last.
    """
    bar = tqdm(total=steps, desc="training", unit="step", disable=not progress, mininterval=0.5)
    for step in range(steps):
        pre, v, f = forward(w, b, x, nets.network, nets.n_networks)
        if trace is not None:
            trace(step, v)
        residual = torch.index_select(f - y[:, None], 1, nets.network)  # [4, K]
        grad = torch.ops.aten.leaky_relu_backward(residual, pre, LEAKY_SLOPE, False)
        w.sub_(x @ grad, alpha=lr)
        b.sub_(grad.sum(0), alpha=lr)
        bar.update()
    bar.close()
    if trace is not None:
        trace(steps, forward(w, b, x, nets.network, nets.n_networks)[1])


def _gather(flat: torch.Tensor, index: torch.Tensor) -> np.ndarray:
    """``flat[..., index]`` with NaN where ``index`` is -1; ``flat`` is ``[4, K]`` -> ``[*index.shape, 4]``."""
    values = flat[:, index.clamp_min(0)].movedim(0, -1).double()
    return torch.where((index >= 0)[..., None], values, torch.nan).numpy()


def run_sweep(config: SweepConfig, progress: bool = True) -> xr.Dataset:
    """Train every network of the sweep and return the ``toy-sweep`` node."""
    config.check()
    xs, ys = TOY_POINTS[config.task]
    dtype = getattr(torch, config.dtype)
    x, y = torch.tensor(xs, dtype=dtype), torch.tensor(ys, dtype=dtype)
    nets = FlatNetworks(config.branches, config.trials)
    params = [initial_parameters(config, m) for m in config.branches]
    w = torch.cat([p[0].reshape(-1) for p in params])
    b = torch.cat([p[1].reshape(-1) for p in params])
    m_max = max(config.branches)
    recorder = DynamicsRecorder(nets, m_max, config) if config.record_dynamics else None
    train(w, b, x, y, nets, config.steps, config.lr, trace=recorder, progress=progress)
    _, v, f = forward(w, b, x, nets.network, nets.n_networks)
    responses = _gather(v, nets.padded_index(m_max))  # [G, T, m_max, 4]
    return assemble(config, responses, f, recorder)


class DynamicsRecorder:
    """Keeps the responses of the first ``record_dynamics`` trials of each M every ``dynamics_every`` steps."""

    def __init__(self, nets: FlatNetworks, m_max: int, config: SweepConfig):
        self.index = nets.padded_index(m_max, config.record_dynamics)
        self.every, self.last = config.dynamics_every, config.steps
        self.steps, self.frames = [], []

    def __call__(self, step: int, v: torch.Tensor) -> None:
        if step % self.every == 0 or step == self.last:
            self.steps.append(step)
            self.frames.append(_gather(v, self.index))

    def trajectory(self) -> np.ndarray:
        """``[G, traced trial, step, branch, sample]``."""
        return np.stack(self.frames, axis=2)


def wilson_interval(successes: np.ndarray, n: int, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Binomial confidence interval (Wilson score, via scipy) per entry of ``successes``."""
    from scipy.stats import binomtest

    bounds = [binomtest(int(k), n).proportion_ci(confidence_level=confidence, method="wilson") for k in successes]
    return np.array([c.low for c in bounds]), np.array([c.high for c in bounds])


def assemble(config: SweepConfig, responses: np.ndarray, f: torch.Tensor, recorder) -> xr.Dataset:
    """The node: per (M, trial) results and per-M summaries (see docs/toy-experiments.md)."""
    counts = np.array(config.branches)
    groups, trials, m_max = len(counts), config.trials, responses.shape[2]
    y = np.array(TOY_POINTS[config.task][1])
    residual = f.double().numpy().T.reshape(groups, trials, -1) - y  # [G, T, 4]
    sse = (residual ** 2).sum(-1)
    norms = np.sqrt(np.nansum(responses ** 2, axis=-1))  # [G, T, m_max], 0 on padding
    valid = np.arange(m_max)[None, None, :] < counts[:, None, None]
    active = valid & (active_flags(relative_norms(norms), ACTIVE_FRACTION) == 1)  # the activity analysis's rule
    n_active = active.sum(-1)
    success = sse < SUCCESS_DELTA
    rate = success.mean(1)
    low, high = wilson_interval(success.sum(1), trials)
    cov = np.einsum("gtks,gtls->gtkl", responses, responses)
    names = np.array([f"branches.{k}" for k in range(m_max)], dtype=object)
    xs = np.array(TOY_POINTS[config.task][0])
    ds = xr.Dataset(
        {
            "final_loss": (("n_branches", "trial"), 0.5 * sse,
                           {"long_name": "final loss 1/2 sum_j (f(x_j) - y_j)^2", "units": "1"}),
            "success": (("n_branches", "trial"), success,
                        {"long_name": "training succeeded", "description": f"sum_j (f - y)^2 < {SUCCESS_DELTA}"}),
            "responses": (("n_branches", "trial", "branch", "sample"), responses.astype(np.float32),
                          {"long_name": "branch response v_k(x_j)", "units": "1",
                           "description": "NaN for branches past the network's M"}),
            "active": (("n_branches", "trial", "branch"), active,
                       {"long_name": "active branch", "description": "norm >= 10% of the network's largest"}),
            "n_active": (("n_branches", "trial"), n_active, {"long_name": "active branches", "units": "branches"}),
            "cov": (("n_branches", "trial", "branch", "branch_other"), cov.astype(np.float32),
                    {"long_name": "response covariance F F^T", "units": "1"}),
            "success_rate": ("n_branches", rate, {"long_name": "success rate", "units": "1"}),
            "success_rate_low": ("n_branches", low, {"long_name": "success rate, 95% Wilson lower bound",
                                                     "units": "1"}),
            "success_rate_high": ("n_branches", high, {"long_name": "success rate, 95% Wilson upper bound",
                                                       "units": "1"}),
            "mean_active": ("n_branches", n_active.mean(1), {"long_name": "mean active branches",
                                                            "units": "branches"}),
            "mean_silent": ("n_branches", counts - n_active.mean(1), {"long_name": "mean silent branches",
                                                                     "units": "branches"}),
        },
        coords={
            "n_branches": ("n_branches", counts),
            "trial": ("trial", np.arange(trials)),
            "branch": ("branch", names),
            "branch_other": ("branch_other", names),
            "sample": ("sample", np.arange(len(xs))),
            "x": ("sample", xs),
            "target": ("sample", y),
        },
        attrs={"options": _options_json(config)},
    )
    if recorder is not None:
        ds = ds.assign_coords(traced_trial=("traced_trial", np.arange(config.record_dynamics)),
                              step=("step", np.array(recorder.steps)))
        ds["trajectory"] = (("n_branches", "traced_trial", "step", "branch", "sample"),
                            recorder.trajectory().astype(np.float32),
                            {"long_name": "branch response during training", "units": "1"})
    return ds


def _options_json(config: SweepConfig) -> str:
    import json

    return json.dumps({**asdict(config), "branches": list(config.branches)}, sort_keys=True)


def summary(ds: xr.Dataset) -> dict:
    """Key numbers for ``probekit show`` and the report: success and activity per M (up to 12 rows)."""
    rows = {}
    for m in ds.n_branches.values[:12]:
        point = ds.sel(n_branches=m)
        rows[f"M={int(m)}"] = (f"success {float(point.success_rate):.3f}, "
                               f"active {float(point.mean_active):.2f}, silent {float(point.mean_silent):.2f}")
    return rows
