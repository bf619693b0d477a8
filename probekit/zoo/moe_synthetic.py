"""``probekit experiment moe-synthetic``: expert specialization on clustered data (Chen et al. 2022, "Towards
Understanding the Mixture-of-Experts Layer in Deep Learning", setting 1), rebuilt from the paper's definitions
(its code has no licence; none is copied).

Data (their Definition 3.1): K clusters, each with a feature ``v_k`` and a cluster centre ``c_k`` (2K orthonormal
directions of R^d). A sample draws clusters ``k != k'``, a label ``y = +-1``, a sign ``eps = +-1`` and
``alpha ~ U(0.5, 2)``, ``beta ~ U(1, 2)``, ``gamma ~ U(0.5, 3)``; its P patches are ``y alpha v_k`` (the
feature), ``beta c_k`` (the cluster centre), ``eps gamma v_k'`` (feature noise from another cluster) and P - 3
Gaussian patches ``N(0, sigma_p^2 / d I)``, in a random order.

Models: an expert is a two-layer CNN over the patches, ``f(x) = sum_j sum_p act(<w_j, x_p>)`` with ``act`` cubic
(nonlinear) or the identity (linear); the router ``h(x) = sum_p Theta^T x_p`` sends each sample to one expert
(top-1 of ``h + r``, ``r ~ U(0, 1)`` while training) and the mixture outputs ``pi_m(x) f_m(x)``, ``pi =
softmax(h)``. Training (their Algorithm 1): logistic loss over the whole training set, experts by normalised
gradient descent (each expert's step divided by its gradient's norm), the router (from ``Theta = 0``) by gradient
descent. The single-CNN baseline is one nonlinear CNN with as many filters as all the experts together.

Each mixture is a :class:`probekit.models.experts.MixtureOfExperts`; the routing is read with probekit's own
hooks (discovery and capture), and the dispatch entropy ``H(cluster | expert)`` with
:func:`probekit.measures.routing.dispatch_entropy`, beside its null (the clusters shuffled over the test samples:
routing that ignores them) and a bootstrap interval over the test samples.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn
from tqdm import tqdm

from probekit.errors import ProbekitError
from probekit.measures.routing import dispatch_counts, dispatch_entropy
from probekit.models.experts import MixtureOfExperts
from probekit.stats.evidence import EvidenceOptions, permutation_evidence

MODELS = ("nonlinear", "linear", "single")
PUBLISHED = {"nonlinear": (0.9946, 0.0055, 0.098, 0.088), "linear": (0.930, 0.0211, 1.300, 0.044),
             "single": (0.785, math.nan, math.nan, math.nan)}  # accuracy, sd, dispatch entropy, sd (10 runs)


@dataclass(frozen=True)
class MoeConfig:
    """What ``probekit experiment moe-synthetic`` was asked (see ``docs/reproductions.md``)."""

    seeds: int = 3
    first_seed: int = 0
    clusters: int = 4
    patches: int = 4
    dim: int = 50
    train: int = 16000
    test: int = 16000
    sigma_p: float = 1.0
    experts: int = 8
    filters: int = 16
    steps: int = 500
    lr: float = 0.001  # the experts' normalised step
    router_lr: float = 0.064  # experts^2 x lr: their theory's router rate (Theorem 4.2, eta_r = Theta(M^2) eta)
    init_scale: float = 0.001  # the experts' initial weights ~ N(0, init_scale^2)
    permutations: int = 999
    resamples: int = 200
    level: float = 0.95
    correction: str = "holm"

    def check(self):
        EvidenceOptions.check(self)
        if min(self.seeds, self.train, self.test, self.steps) < 1:
            raise ProbekitError("moe-synthetic: --seeds, --train, --test and --steps must be >= 1")
        shape_ok = self.clusters >= 2 and self.patches >= 3 and self.dim >= 2 * self.clusters
        if not shape_ok or min(self.experts, self.filters) < 1 or min(self.lr, self.router_lr, self.init_scale) <= 0 \
                or self.sigma_p < 0:
            raise ProbekitError("moe-synthetic: needs clusters >= 2, patches >= 3, dim >= 2 x clusters (orthonormal "
                                "features and centres), experts and filters >= 1, positive rates and init scale")


def cluster_data(n: int, config: MoeConfig, basis: torch.Tensor, generator: torch.Generator):
    """``(x [n, P, d], y [n] in +-1, cluster [n])`` from Definition 3.1; ``basis [2K, d]``: the features
    ``v_k`` (rows 0..K-1) and the centres ``c_k`` (rows K..2K-1)."""
    k_count, p, d = config.clusters, config.patches, config.dim
    cluster = torch.randint(k_count, (n,), generator=generator)
    other = (cluster + torch.randint(1, k_count, (n,), generator=generator)) % k_count  # k' != k, uniform
    y = torch.randint(2, (n,), generator=generator) * 2 - 1
    eps = torch.randint(2, (n,), generator=generator) * 2 - 1
    alpha = 0.5 + 1.5 * torch.rand(n, generator=generator)
    beta = 1 + torch.rand(n, generator=generator)
    gamma = 0.5 + 2.5 * torch.rand(n, generator=generator)
    patches = config.sigma_p / math.sqrt(d) * torch.randn(n, p, d, generator=generator)
    patches[:, 0] = (y * alpha)[:, None] * basis[cluster]
    patches[:, 1] = beta[:, None] * basis[k_count + cluster]
    patches[:, 2] = (eps * gamma)[:, None] * basis[other]
    order = torch.rand(n, p, generator=generator).argsort(1)  # a random patch order per sample
    return patches.gather(1, order[:, :, None].expand(n, p, d)), y.float(), cluster


class PatchCNN(nn.Module):
    """``[N, P, d] -> [N]``: ``sum_j sum_p act(<w_j, x_p>)``, act cubic or the identity."""

    def __init__(self, dim: int, filters: int, cubic: bool, init_scale: float, generator: torch.Generator):
        super().__init__()
        self.weight = nn.Parameter(init_scale * torch.randn(filters, dim, generator=generator))
        self.cubic = cubic

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x @ self.weight.T
        return (z ** 3 if self.cubic else z).sum((1, 2))


class PatchRouter(nn.Module):
    """``[N, P, d] -> [N, M]`` dense gates: ``pi_m(x)`` on the top-1 expert of ``h(x) + r`` (``r ~ U(0, 1)``
    while training, 0 in eval), 0 elsewhere; ``h(x) = sum_p Theta^T x_p``, ``pi = softmax(h)``."""

    def __init__(self, dim: int, experts: int):
        super().__init__()
        self.theta = nn.Linear(dim, experts, bias=False)
        nn.init.zeros_(self.theta.weight)
        self.generator: torch.Generator | None = None  # the training noise's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.theta(x.sum(1))
        noisy = h + torch.rand(h.shape, generator=self.generator) if self.training else h
        chosen = noisy.argmax(1, keepdim=True)
        return torch.zeros_like(h).scatter(1, chosen, h.softmax(1).gather(1, chosen))


def build(kind: str, config: MoeConfig, generator: torch.Generator) -> nn.Module:
    """A nonlinear or linear mixture of ``experts`` CNNs, or the single nonlinear CNN of as many filters."""
    if kind == "single":
        return PatchCNN(config.dim, config.experts * config.filters, True, config.init_scale, generator)
    experts = [PatchCNN(config.dim, config.filters, kind == "nonlinear", config.init_scale, generator)
               for _ in range(config.experts)]
    return MixtureOfExperts(experts, PatchRouter(config.dim, config.experts))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: MoeConfig, generator: torch.Generator,
          progress) -> None:
    """Algorithm 1: full-batch logistic loss; each expert (or the single CNN) by normalised gradient descent,
    the router by gradient descent."""
    experts = list(model.experts) if isinstance(model, MixtureOfExperts) else [model]
    router = list(model.gate.parameters()) if isinstance(model, MixtureOfExperts) else []
    if router:
        model.gate.generator = generator
    model.train()
    for _ in range(config.steps):
        loss = F.softplus(-y * model(x)).mean()
        weights = [e.weight for e in experts]
        grads = torch.autograd.grad(loss, weights + router, allow_unused=True)
        with torch.no_grad():
            for w, g in zip(weights, grads[:len(weights)], strict=True):
                if g is not None and float(g.norm()) > 0:
                    w -= config.lr * g / g.norm()
            for theta, g in zip(router, grads[len(weights):], strict=True):
                if g is not None:
                    theta -= config.router_lr * g
        progress.update(1)
    model.eval()


def routed_gates(model: MixtureOfExperts, x: torch.Tensor) -> np.ndarray:
    """``[N, M]`` the gate values probekit records for each test sample (its discovery and capture hooks)."""
    from probekit.models.branches import DiscoveryConfig, discover
    from probekit.run.capture import capture

    branchset = discover(model, DiscoveryConfig())
    (layer,) = [layer for layer in branchset.layers if layer.kind == "gated"]
    with capture(model, branchset) as recorder, torch.no_grad():
        model(x)
        return recorder.take_gates()[layer.name].double().numpy()


def probe(model: nn.Module, kind: str, x: torch.Tensor, y: torch.Tensor, cluster: np.ndarray, config: MoeConfig,
          rng: np.random.Generator) -> dict:
    """Test accuracy with its interval; for a mixture, the dispatch entropy with its null and interval and the
    cluster x expert counts."""
    with torch.no_grad():
        correct = (torch.sign(model(x)) == y).double().numpy()
    o = config
    found = {"accuracy": permutation_evidence(lambda rows: correct[rows].mean(), None, len(correct), 0,
                                              o.resamples, o.level, rng)}
    if kind == "single":
        return found
    gates = routed_gates(model, x)
    k = config.clusters
    found["dispatch_entropy"] = permutation_evidence(
        lambda rows: dispatch_entropy(dispatch_counts(gates[rows], cluster[rows], k)),
        lambda r: dispatch_entropy(dispatch_counts(gates, r.permutation(cluster), k)),
        len(cluster), o.permutations, o.resamples, o.level, rng, alternative="less", desc="moe dispatch null")
    found["counts"] = dispatch_counts(gates, cluster, k)
    return found


def run_moe_synthetic(config: MoeConfig, progress: bool = True) -> xr.Dataset:
    """Train and probe every model for every seed; the ``moe-synthetic`` node."""
    config.check()
    seeds = list(range(config.first_seed, config.first_seed + config.seeds))
    shape = (len(MODELS), len(seeds))
    out = {name: np.full(shape, np.nan) for name in ("accuracy", "dispatch_entropy", "dispatch_entropy_p",
                                                      "dispatch_entropy_null")}
    ci = {name: np.full(shape + (2,), np.nan) for name in ("accuracy", "dispatch_entropy")}
    band = np.full(shape + (2,), np.nan)
    counts = np.zeros(shape + (config.clusters, config.experts), dtype=np.int64)
    bar = tqdm(total=len(seeds) * len(MODELS) * config.steps, desc="moe-synthetic: training", unit="step",
               disable=not progress or None)
    for j, seed in enumerate(seeds):
        generator = torch.Generator().manual_seed(seed)
        basis = torch.linalg.qr(torch.randn(config.dim, 2 * config.clusters, generator=generator))[0].T
        x_train, y_train, _ = cluster_data(config.train, config, basis, generator)
        x_test, y_test, cluster = cluster_data(config.test, config, basis, generator)
        for i, kind in enumerate(MODELS):
            model = build(kind, config, generator)
            train(model, x_train, y_train, config, generator, bar)
            found = probe(model, kind, x_test, y_test, cluster.numpy(), config,
                          np.random.default_rng([seed, i]))
            out["accuracy"][i, j], ci["accuracy"][i, j] = found["accuracy"]["observed"], found["accuracy"]["ci"]
            if "counts" in found:
                d = found["dispatch_entropy"]
                out["dispatch_entropy"][i, j], ci["dispatch_entropy"][i, j] = d["observed"], d["ci"]
                out["dispatch_entropy_p"][i, j], out["dispatch_entropy_null"][i, j] = d["p"], d["null"]
                band[i, j], counts[i, j] = d["band"], found["counts"]
    bar.close()
    return _dataset(config, seeds, out, ci, band, counts)


def _dataset(config: MoeConfig, seeds: list[int], out: dict, ci: dict, band: np.ndarray,
             counts: np.ndarray) -> xr.Dataset:
    dims, bound = ("model", "seed"), ("model", "seed", "bound")
    interval = {"level": config.level, "resamples": config.resamples, "resampled": "the test samples"}
    published = np.array([PUBLISHED[m] for m in MODELS])
    return xr.Dataset(
        {
            "accuracy": (dims, out["accuracy"], {"long_name": "test accuracy", "units": "1"}),
            "accuracy_ci": (bound, ci["accuracy"], {"long_name": f"{config.level:.0%} bootstrap interval of "
                                                    "accuracy", **interval}),
            "dispatch_entropy": (dims, out["dispatch_entropy"], {
                "long_name": "dispatch entropy H(cluster | expert)", "units": "nat",
                "description": "-sum_m (n_m/n) sum_k (n_km/n_m) log(n_km/n_m) over the test samples; 0: each "
                               "expert receives one cluster; NaN for the single CNN"}),
            "dispatch_entropy_p": (dims, out["dispatch_entropy_p"], {
                "long_name": "permutation p-value of dispatch_entropy", "units": "1",
                "null": "the clusters shuffled over the test samples (routing that ignores them); small p: "
                        "more specialised than that", "permutations": config.permutations}),
            "dispatch_entropy_null": (dims, out["dispatch_entropy_null"], {
                "long_name": "mean of dispatch_entropy under the null", "units": "nat"}),
            "dispatch_entropy_null_band": (bound, band, {
                "long_name": "central 95% of dispatch_entropy under the null", "units": "nat"}),
            "dispatch_entropy_ci": (bound, ci["dispatch_entropy"], {
                "long_name": f"{config.level:.0%} bootstrap interval of dispatch_entropy", **interval}),
            "dispatch_count": (("model", "seed", "cluster", "expert"), counts, {
                "long_name": "test samples of the cluster dispatched to the expert", "units": "samples"}),
            "published_accuracy": ("model", published[:, 0], {
                "long_name": "Chen et al. 2022, setting 1: mean test accuracy over 10 runs", "units": "1"}),
            "published_accuracy_sd": ("model", published[:, 1], {"long_name": "its standard deviation"}),
            "published_dispatch_entropy": ("model", published[:, 2], {
                "long_name": "Chen et al. 2022, setting 1: mean dispatch entropy over 10 runs", "units": "nat"}),
            "published_dispatch_entropy_sd": ("model", published[:, 3], {"long_name": "its standard deviation"}),
        },
        coords={"model": ("model", np.array(MODELS, dtype=object)), "seed": ("seed", np.array(seeds)),
                "bound": ("bound", np.array(["low", "high"], dtype=object)),
                "cluster": ("cluster", np.arange(config.clusters)), "expert": ("expert", np.arange(config.experts))},
        attrs={"options": json.dumps(asdict(config), sort_keys=True)},
    )


def summary(ds: xr.Dataset) -> dict:
    """Per model: accuracy and dispatch entropy over the seeds (mean +- sd), beside the published numbers."""
    found = {}
    for model in ds.model.values:
        row = ds.sel(model=model)
        acc = row.accuracy.values
        text = f"accuracy {acc.mean():.4f} +- {acc.std(ddof=1) if len(acc) > 1 else 0:.4f}"
        if not np.isnan(row.dispatch_entropy.values).all():
            ent = row.dispatch_entropy.values
            text += (f", dispatch entropy {ent.mean():.3f} +- {ent.std(ddof=1) if len(ent) > 1 else 0:.3f} nats "
                     f"(null {float(row.dispatch_entropy_null.mean()):.3f}; largest p "
                     f"{float(row.dispatch_entropy_p.max()):.3g})")
        text += f"; published {float(row.published_accuracy):.4f}"
        if not np.isnan(float(row.published_dispatch_entropy)):
            text += f", {float(row.published_dispatch_entropy):.3f} nats"
        found[f"{model} ({ds.sizes['seed']} seeds)"] = text
    return found
