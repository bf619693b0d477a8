"""Attention heads as summed branches: ``out = sum_h W_O^h softmax(Q_h K_h^T / sqrt(d) + mask) V_h + b_O``.

Heads are not modules inside ``nn.MultiheadAttention`` (or torchvision's Swin ``ShiftedWindowAttention``), so
hooks cannot see them. For the probe, discovery swaps each such module, in place, for an exactly equivalent
per-head module that owns the same parameter objects under the same names: :class:`HeadwiseAttention` or
:class:`HeadwiseWindowAttention`. Each of their ``heads.<h>`` children returns head h's contribution after the
output projection, batch first (``[N, L, E]``, or ``[N, H, W, C]`` for Swin), so the heads plus the output
bias give the module's output. Only the forward route changes; the library computes the attention itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from probekit.errors import ProbekitError
from probekit.models.branches import BranchLayer, layer_name


class AttentionHead(nn.Module):
    """Head ``h`` of :class:`HeadwiseAttention`: ``(p_h [N, L, S], v [N, S, E], W_O [E, E]) -> [N, L, E]``."""

    def __init__(self, index: int, head_dim: int):
        super().__init__()
        self.columns = slice(index * head_dim, (index + 1) * head_dim)

    def forward(self, weights: torch.Tensor, values: torch.Tensor, out_weight: torch.Tensor) -> torch.Tensor:
        return weights.matmul(values[..., self.columns]).matmul(out_weight[:, self.columns].T)


class HeadwiseAttention(nn.Module):
    """``nn.MultiheadAttention`` with one module per head; same parameters, same call, same outputs (in eval).

    ``F.multi_head_attention_forward`` gives the per-head attention weights ``[N, H, L, S]`` (masks and all);
    head h then contributes ``p_h V_h W_O^h^T``.
    """

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
        self.heads = nn.ModuleList(AttentionHead(h, self.head_dim) for h in range(self.num_heads))

    def _value_projection(self, value: torch.Tensor) -> torch.Tensor:
        """``[N, S, E]`` projected values of every head."""
        e = self.embed_dim
        weight = self.in_proj_weight[2 * e:] if self._qkv_same_embed_dim else self.v_proj_weight
        bias = self.in_proj_bias[2 * e:] if self.in_proj_bias is not None else None
        return F.linear(value, weight, bias)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if self.batch_first:
            query, key, value = (t.transpose(0, 1) if t.dim() == 3 else t for t in (query, key, value))
        _, weights = F.multi_head_attention_forward(
            query, key, value, self.embed_dim, self.num_heads, self.in_proj_weight, self.in_proj_bias,
            None, None, False, self.dropout, self.out_proj.weight, self.out_proj.bias, training=self.training,
            key_padding_mask=key_padding_mask, need_weights=True, attn_mask=attn_mask,
            use_separate_proj_weight=not self._qkv_same_embed_dim, q_proj_weight=self.q_proj_weight,
            k_proj_weight=self.k_proj_weight, v_proj_weight=self.v_proj_weight, average_attn_weights=False,
            is_causal=is_causal)
        unbatched = query.dim() == 2
        values = self._value_projection(value.unsqueeze(1) if unbatched else value).transpose(0, 1)  # [N, S, E]
        weights = weights.unsqueeze(0) if unbatched else weights  # [N, H, L, S]
        out = sum(head(weights[:, h], values, self.out_proj.weight) for h, head in enumerate(self.heads))
        if self.out_proj.bias is not None:
            out = out + self.out_proj.bias
        if unbatched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        weights = weights.squeeze(0) if unbatched else weights
        return out, weights.mean(dim=-3) if average_attn_weights else weights


class WindowHead(nn.Module):
    """Head ``h`` of :class:`HeadwiseWindowAttention`: torchvision's own window attention with the output
    projection restricted to the head's columns and no bias; ``[N, H, W, C] -> [N, H, W, C]``."""

    def __init__(self, index: int, head_dim: int):
        super().__init__()
        self.columns = slice(index * head_dim, (index + 1) * head_dim)

    def forward(self, x: torch.Tensor, owner: nn.Module, position_bias: torch.Tensor) -> torch.Tensor:
        from torchvision.models.swin_transformer import shifted_window_attention

        proj = torch.zeros_like(owner.proj.weight)
        proj[:, self.columns] = owner.proj.weight[:, self.columns]
        return shifted_window_attention(
            x, owner.qkv.weight, proj, position_bias, owner.window_size, owner.num_heads,
            shift_size=owner.shift_size, attention_dropout=owner.attention_dropout, dropout=owner.dropout,
            qkv_bias=owner.qkv.bias, proj_bias=None, training=owner.training)


class HeadwiseWindowAttention(nn.Module):
    """torchvision's Swin ``ShiftedWindowAttention`` with one module per head; same parameters and outputs."""

    def __init__(self, attention: nn.Module):
        super().__init__()
        for name in ("window_size", "shift_size", "num_heads", "attention_dropout", "dropout"):
            setattr(self, name, getattr(attention, name))
        self.qkv, self.proj = attention.qkv, attention.proj
        self.relative_position_bias_table = attention.relative_position_bias_table
        self.register_buffer("relative_position_index", attention.relative_position_index)
        self._position_bias = attention.get_relative_position_bias.__func__  # the library's own, bound to us
        head_dim = self.proj.in_features // self.num_heads
        self.heads = nn.ModuleList(WindowHead(h, head_dim) for h in range(self.num_heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self._position_bias(self)
        out = sum(head(x, self, bias) for head in self.heads)
        return out + self.proj.bias if self.proj.bias is not None else out


def swaps_modules(model: nn.Module) -> bool:
    """Whether discovery would swap modules of ``model`` for their per-head form (it holds an
    ``nn.MultiheadAttention`` or a torchvision Swin attention)."""
    try:
        from torchvision.models.swin_transformer import ShiftedWindowAttention
    except ImportError:
        ShiftedWindowAttention = None  # noqa: N806
    return any(type(m) is nn.MultiheadAttention or (ShiftedWindowAttention and type(m) is ShiftedWindowAttention)
               for m in model.modules())


def _headwise(module: nn.Module) -> nn.Module | None:
    """The per-head replacement of an attention module, or ``None`` for any other module."""
    if type(module) is nn.MultiheadAttention:
        return HeadwiseAttention(module)
    try:
        from torchvision.models.swin_transformer import ShiftedWindowAttention
    except ImportError:
        return None
    return HeadwiseWindowAttention(module) if type(module) is ShiftedWindowAttention else None


def attention_head_layers(model: nn.Module) -> list[BranchLayer]:
    """Swap every supported attention module of ``model`` for its per-head form (in place) and return one
    ``heads`` layer per attention module, with one branch per head (``<path>.heads.<h>``)."""
    for path, module in list(model.named_modules()):
        replacement = _headwise(module) if path else None
        if replacement is not None:
            replacement.train(module.training)
            parent, _, child = path.rpartition(".")
            setattr(model.get_submodule(parent), child, replacement)
    layers = []
    for path, module in model.named_modules():
        if isinstance(module, (HeadwiseAttention, HeadwiseWindowAttention)):
            names = tuple(f"{path}.heads.{h}" for h in range(len(module.heads)))
            layers.append(BranchLayer(layer_name(path), "heads", names, names, container=path))
    return layers
