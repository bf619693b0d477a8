"""Hessian blocks of attention heads (each head's rows of Q, K, V and columns of O) against a naive double-backward
reference, and the matrix-free block energies against the exact blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

import probekit


class TwoAttentionLayers(nn.Module):
    """Four tokens of 6 features through two 2-head attention layers (width 8, residual) to 3 classes."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.first = nn.MultiheadAttention(8, 2, batch_first=True)
        self.second = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        t = torch.tanh(self.embed(x))
        t = t + self.first(t, t, t, need_weights=False)[0]
        t = t + self.second(t, t, t, need_weights=False)[0]
        return self.head(t.flatten(1))


SELECTED = ("first.in_proj_weight", "first.in_proj_bias", "first.out_proj.weight", "second.in_proj_weight",
            "second.out_proj.weight")


def head_indices(sizes: dict[str, int], e: int = 8, d: int = 4) -> list[int]:
    """Flat indices into the concatenation of SELECTED, head by head: its Q, K and V rows of in_proj_weight
    (``[3E, E]``), its Q, K, V entries of in_proj_bias, its columns of out_proj.weight (``[E, E]``)."""
    offsets = dict(zip(SELECTED, np.cumsum([0, *[sizes[n] for n in SELECTED[:-1]]]), strict=True))
    out = []
    for layer in ("first", "second"):
        for h in range(2):
            for part in range(3):
                rows = range(part * e + h * d, part * e + (h + 1) * d)
                out += [offsets[f"{layer}.in_proj_weight"] + r * e + c for r in rows for c in range(e)]
            if f"{layer}.in_proj_bias" in offsets:
                out += [offsets[f"{layer}.in_proj_bias"] + part * e + h * d + j for part in range(3) for j in range(d)]
            out += [offsets[f"{layer}.out_proj.weight"] + r * e + h * d + j for r in range(e) for j in range(d)]
    return out


@pytest.fixture(scope="module")
def attention_data():
    torch.manual_seed(0)
    model = TwoAttentionLayers().double().eval()
    x = torch.randn(24, 4, 6, dtype=torch.float64)
    y = torch.arange(24) % 3
    return model, x, y


def naive_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The Hessian of the mean cross-entropy over the concatenation of SELECTED, one double-backward per row."""
    params = {name: p for name, p in model.named_parameters()}
    flat = torch.cat([params[n].detach().reshape(-1) for n in SELECTED]).requires_grad_(True)
    shapes = [params[n].shape for n in SELECTED]

    def loss(vector):
        pieces = torch.split(vector, [int(np.prod(s)) for s in shapes])
        chosen = {n: p.reshape(s) for n, p, s in zip(SELECTED, pieces, shapes, strict=True)}
        return F.cross_entropy(functional_call(model, {**params, **chosen}, (x,)), y)

    with sdpa_kernel([SDPBackend.MATH]):  # the fused CPU attention kernels have no double backward
        (grad,) = torch.autograd.grad(loss(flat), flat, create_graph=True)
        return torch.stack([torch.autograd.grad(grad[i], flat, retain_graph=True)[0] for i in range(len(flat))])


def test_head_blocks_match_a_naive_double_backward_in_float64(attention_data):
    model, x, y = attention_data
    node = probekit.probe(model, x, ["hessian"], targets=y, batch_size=24, progress=False,
                          options={"hessian": {"params": ",".join(SELECTED), "mode": "exact"}})["hessian"]
    sizes = {name: p.numel() for name, p in model.named_parameters()}
    reference = naive_hessian(model, x, y).numpy()
    index = head_indices(sizes)
    got = node["hessian"].isel(state=0).values
    assert got.shape == (len(index), len(index))
    np.testing.assert_allclose(got, reference[np.ix_(index, index)], rtol=1e-5, atol=1e-10)
    assert list(node["branch"].values) == [f"{layer}.heads.{h}" for layer in ("first", "second") for h in range(2)]
    assert (node["block_norm"].isel(state=0).values > 0).all()


def test_matrix_free_block_energies_agree_with_the_exact_blocks_and_cost_k_times_m(attention_data):
    model, x, y = attention_data
    options = {"params": ",".join(SELECTED)}
    exact = probekit.probe(model, x, ["hessian"], targets=y, batch_size=24, progress=False,
                           options={"hessian": {**options, "mode": "exact"}})["hessian"]
    estimated = probekit.probe(model, x, ["hessian"], targets=y, batch_size=24, progress=False,
                               options={"hessian": {**options, "mode": "estimate", "probes": 64,
                                                    "estimate_samples": 24, "lanczos": False}})["hessian"]
    energy = exact["block_norm"].isel(state=0).values ** 2
    got, se = (estimated[name].isel(state=0).values for name in ("block_energy", "block_energy_se"))
    assert (np.abs(got - energy) <= 4 * se + 1e-12).all(), np.abs(got - energy) / se
    k, m = 4, int(estimated.attrs["probes"])
    assert m == 64 and int(estimated.attrs["hvps"]) == k * m  # K products per round, not one per block pair


@pytest.mark.parametrize("shared", ["first.out_proj.bias"])
def test_a_parameter_the_heads_share_is_one_line(attention_data, shared):
    model, x, y = attention_data
    with pytest.raises(probekit.ProbekitError, match="shared by the heads") as error:
        probekit.probe(model, x, ["hessian"], targets=y, progress=False, options={"hessian.params": shared})
    assert "\n" not in str(error.value)
