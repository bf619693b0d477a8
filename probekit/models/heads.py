"""Attention heads of ``nn.MultiheadAttention`` and torchvision's Swin ``ShiftedWindowAttention``, read at the
output projection: ``out = sum_h z_h W_O[:, h]^T + b_O`` with ``z`` the concatenated head outputs.

Neither module calls its output projection as a module (both pass its weight to a fused function), so a hook
cannot see ``z``. For the probe, discovery swaps each, in place, for an exactly equivalent module that owns the
same parameter objects under the same names: :class:`ProjectedAttention` or :class:`ProjectedWindowAttention`.
Each runs the library's own fused attention once with an identity output projection, which gives ``z``
(``[N, L, E]``, or ``[N, H, W, C]`` for Swin), and then calls its ``out_proj`` (``proj``) module on it. The layer
is then of kind ``projected-heads``, like a transformers attention block: one hook on that projection gives
every head's contribution in one batched product (:mod:`probekit.models.projected_heads`), at about the cost of
one forward instead of one attention per head.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from probekit.errors import ProbekitError
from probekit.models.branches import BranchLayer, layer_name


def _identity(weight: torch.Tensor) -> torch.Tensor:
    """The identity output projection, in ``weight``'s dtype and device."""
    return torch.eye(weight.shape[1], dtype=weight.dtype, device=weight.device)


class ProjectedAttention(nn.Module):
    """``nn.MultiheadAttention`` whose output projection runs as the module ``out_proj`` on the batch-first
    concatenated head outputs ``[N, L, E]``; same parameters, same call, same outputs."""

    def __init__(self, attention: nn.MultiheadAttention):
        super().__init__()
        if attention.bias_k is not None or attention.add_zero_attn:
            raise ProbekitError("attention heads: nn.MultiheadAttention with add_bias_kv or add_zero_attn is not "
                                "supported; name other branches with --branches GLOB")
        for name in ("embed_dim", "num_heads", "head_dim", "batch_first", "dropout", "_qkv_same_embed_dim",
                     "kdim", "vdim"):
            setattr(self, name, getattr(attention, name))
        for name in ("in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight", "v_proj_weight",
                     "bias_k", "bias_v"):
            self.register_parameter(name, getattr(attention, name))
        self.add_zero_attn = False
        self.out_proj = attention.out_proj

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        with _differentiable_twice():
            return self._forward(query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights,
                                 is_causal)

    def _forward(self, query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights,
                 is_causal):
        plain = not need_weights and key_padding_mask is None and attn_mask is None and not is_causal
        if plain and query.dim() == 3:  # the common call (ViT, nn.TransformerEncoderLayer): one fused attention
            first = (lambda t: t) if self.batch_first else (lambda t: t.transpose(0, 1))
            out = self.out_proj(self._heads(first(query), first(key), first(value)))
            return first(out), None
        if self.batch_first:
            query, key, value = (t.transpose(0, 1) if t.dim() == 3 else t for t in (query, key, value))
        heads, weights = F.multi_head_attention_forward(
            query, key, value, self.embed_dim, self.num_heads, self.in_proj_weight, self.in_proj_bias,
            None, None, False, self.dropout, _identity(self.out_proj.weight), None, training=self.training,
            key_padding_mask=key_padding_mask, need_weights=need_weights, attn_mask=attn_mask,
            use_separate_proj_weight=not self._qkv_same_embed_dim, q_proj_weight=self.q_proj_weight,
            k_proj_weight=self.k_proj_weight, v_proj_weight=self.v_proj_weight,
            average_attn_weights=average_attn_weights, is_causal=is_causal)
        unbatched = heads.dim() == 2
        heads = heads.unsqueeze(0) if unbatched else heads.transpose(0, 1)  # [N, L, E]
        out = self.out_proj(heads)
        if unbatched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    def _heads(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """``[N, L, E]`` concatenated head outputs of batch-first inputs without masks, by one
        ``scaled_dot_product_attention`` (what ``F.multi_head_attention_forward`` runs for them)."""
        e = self.embed_dim
        if self._qkv_same_embed_dim:
            weights = self.in_proj_weight.split(e)
        else:
            weights = (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)
        biases = self.in_proj_bias.split(e) if self.in_proj_bias is not None else (None,) * 3
        q, k, v = (F.linear(t, w, b).unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)
                   for t, w, b in zip((query, key, value), weights, biases, strict=True))
        heads = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return heads.transpose(1, 2).flatten(2)


class ProjectedWindowAttention(nn.Module):
    """torchvision's Swin ``ShiftedWindowAttention`` whose output projection runs as the module ``proj`` on the
    concatenated head outputs ``[N, H, W, C]`` (a per-token map commutes with the windows' reversal)."""

    def __init__(self, attention: nn.Module):
        super().__init__()
        for name in ("window_size", "shift_size", "num_heads", "attention_dropout", "dropout"):
            setattr(self, name, getattr(attention, name))
        self.qkv, self.proj = attention.qkv, attention.proj
        self.relative_position_bias_table = attention.relative_position_bias_table
        self.register_buffer("relative_position_index", attention.relative_position_index)
        self._position_bias = attention.get_relative_position_bias.__func__  # the library's own, bound to us

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torchvision.models.swin_transformer import shifted_window_attention

        heads = shifted_window_attention(
            x, self.qkv.weight, _identity(self.proj.weight), self._position_bias(self), self.window_size,
            self.num_heads, shift_size=self.shift_size, attention_dropout=self.attention_dropout, dropout=0.0,
            qkv_bias=self.qkv.bias, proj_bias=None, training=self.training)
        return F.dropout(self.proj(heads), p=self.dropout, training=self.training)


def _differentiable_twice():
    """With gradients on, attention by the math kernel (the fused CPU kernels have no double backward, which the
    Hessian needs); else whichever kernel torch picks."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH]) if torch.is_grad_enabled() else nullcontext()


def _window_attention_type() -> type | None:
    try:
        from torchvision.models.swin_transformer import ShiftedWindowAttention
    except ImportError:
        return None
    return ShiftedWindowAttention


def _projection_name(module: nn.Module) -> str | None:
    """The output projection's child name of a supported attention module (``out_proj`` or Swin's ``proj``), or
    ``None`` for any other module."""
    if type(module) is nn.MultiheadAttention:
        return "out_proj"
    window = _window_attention_type()
    return "proj" if window and type(module) is window else None


def swaps_modules(model: nn.Module) -> bool:
    """Whether discovery would swap modules of ``model`` (it holds an ``nn.MultiheadAttention`` or a torchvision
    Swin attention)."""
    return any(_projection_name(m) for m in model.modules())


def attention_head_layers(model: nn.Module) -> list[BranchLayer]:
    """Swap every supported attention module of ``model`` for its projected form (in place) and return one
    ``projected-heads`` layer per attention module, branch h named ``<path>.heads.<h>``."""
    layers = []
    for path, module in list(model.named_modules()):
        projection = _projection_name(module) if path else None
        if projection is None:
            continue
        replacement = ProjectedAttention(module) if projection == "out_proj" else ProjectedWindowAttention(module)
        replacement.train(module.training)
        parent, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent), child, replacement)
        names = tuple(f"{path}.heads.{h}" for h in range(replacement.num_heads))
        layers.append(BranchLayer(layer_name(path), "projected-heads", names, (f"{path}.{projection}",),
                                  container=path))
    return layers
