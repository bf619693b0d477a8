"""Shortcuts the branch's structure allows, each exact:

* :func:`proves_within_zero`: when the selection is one linear layer (a ``Conv2d`` or ``Linear``'s weight and bias)
  and everything in the branch is piecewise linear (convolutions, linear layers, BatchNorm in eval mode, ReLU-like
  activations, pooling, sums, reshapes), the branch output is piecewise linear in that layer's parameters, so the
  within-branch term ``R_k`` is exactly zero: no random probes are needed.
* :func:`linear_layer_jacobian`: the per-sample Jacobian of the branch output ``[N, D]`` with respect to one linear
  layer's parameters, from the layer's linearity: backpropagate the ``D`` output directions to the layer's output
  and contract them with the layer's unfolded inputs, instead of differentiating per sample.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

from probekit.api import forward_hooks

PIECEWISE_LINEAR_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
                            nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.Hardtanh, nn.MaxPool2d, nn.AvgPool2d,
                            nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Identity, nn.Dropout,
                            nn.Sequential, nn.ModuleList)
PIECEWISE_LINEAR_FUNCTIONS = {F.relu, F.leaky_relu, F.relu6, F.hardtanh, F.max_pool2d, F.avg_pool2d,
                              F.adaptive_avg_pool2d, F.adaptive_max_pool2d, torch.flatten, torch.relu, torch.cat,
                              operator.add, operator.sub, operator.neg, operator.getitem, getattr}
PIECEWISE_LINEAR_METHODS = {"flatten", "view", "reshape", "relu", "size", "contiguous", "add", "sub", "mean",
                            "sum", "squeeze", "unsqueeze", "permute", "transpose"}


def single_linear_layer(module: nn.Module, names: list[str]) -> str | None:
    """The path of the ``Conv2d`` (ungrouped) or ``Linear`` whose weight (and bias) are exactly ``names``, else None."""
    paths = {name.rpartition(".")[0] for name in names}
    if len(paths) != 1:
        return None
    (path,) = paths
    layer = module.get_submodule(path) if path else module
    own = {f"{path}.{n}" if path else n for n, _ in layer.named_parameters(recurse=False)}
    plain_conv = isinstance(layer, nn.Conv2d) and layer.groups == 1 and layer.padding_mode == "zeros"
    if not (plain_conv or isinstance(layer, nn.Linear)) or set(names) != own:
        return None
    return path


def proves_within_zero(module: nn.Module, names: list[str]) -> bool:
    """Whether the branch is provably piecewise linear in the selected layer (see the module docstring)."""
    if single_linear_layer(module, names) is None:
        return False
    try:
        graph = torch.fx.symbolic_trace(module).graph
    except Exception:  # untraceable control flow: let the random probes decide
        return False
    modules = dict(module.named_modules())
    for node in graph.nodes:
        if node.op == "call_module":
            sub = modules[node.target]
            if not isinstance(sub, PIECEWISE_LINEAR_MODULES) or (isinstance(sub, nn.modules.batchnorm._BatchNorm)
                                                                 and sub.training) or \
                    (isinstance(sub, nn.Dropout) and sub.training):
                return False
        elif node.op == "call_function" and node.target not in PIECEWISE_LINEAR_FUNCTIONS:
            return False
        elif node.op == "call_method" and node.target not in PIECEWISE_LINEAR_METHODS:
            return False
    return True


class _InputGrad(torch.autograd.Function):
    """A layer's output, already computed, whose input gradient is ``backward(grad)`` (no parameter gradients)."""

    @staticmethod
    def forward(ctx, x, out, backward):
        ctx.backward = backward
        return out.clone()  # not a view: the next layer may be an in-place activation

    @staticmethod
    def backward(ctx, grad):
        return ctx.backward(grad), None, None


def _input_grad_of(layer: nn.Module):
    """``grad -> input grad`` of ``layer`` by a route cheaper than autograd's, or None:

    * a stride-1, ungrouped ``Conv2d``: a forward convolution of the gradient with the flipped, transposed kernel
      (on CPU about twice as fast as ``convolution_backward`` for narrow layers);
    * an eval-mode ``BatchNorm``: a per-channel scale ``gamma / sqrt(var + eps)``.

    Only for torch's own ``forward``: a subclass that overrides it (weight standardisation, say) keeps autograd's.
    """
    if type(layer).forward is nn.Conv2d.forward and layer.stride == (1, 1) and layer.groups == 1 and \
            layer.padding_mode == "zeros" and not isinstance(layer.padding, str):
        pad = tuple(d * (k - 1) - p for d, k, p in zip(layer.dilation, layer.kernel_size, layer.padding, strict=True))
        if min(pad) >= 0:
            kernel = layer.weight.detach().transpose(0, 1).flip(2, 3)
            return lambda g: F.conv2d(g, kernel, padding=pad, dilation=layer.dilation)
    if type(layer).forward is nn.modules.batchnorm._BatchNorm.forward and not layer.training and \
            layer.track_running_stats and layer.running_var is not None:
        scale = torch.rsqrt(layer.running_var + layer.eps)
        scale = scale if layer.weight is None else scale * layer.weight.detach()
        return lambda g: g * scale.view(1, -1, *[1] * (g.dim() - 2))
    return None


def _cheaper_input_grads(module: nn.Module, skip: str) -> list:
    """Forward hooks (for :func:`forward_hooks`) that give every layer of ``module`` but ``skip`` with a cheaper
    input gradient (:func:`_input_grad_of`) that route; forward values stay bit for bit the same."""
    hooks = []
    for path, layer in module.named_modules():
        backward = None if path == skip else _input_grad_of(layer)
        if backward is not None:
            hooks.append((path, lambda mod, args, out, backward=backward: _InputGrad.apply(args[0], out.detach(),
                                                                                            backward)))
    return hooks


def linear_layer_jacobian(module: nn.Module, path: str, names: list[str], u: torch.Tensor, d: int) -> torch.Tensor:
    """``[N, D, P]``: d(branch output)/d(the layer's ``names``), in the order of ``names``, each flattened."""
    layer = module.get_submodule(path) if path else module
    seen = {}

    def keep(mod, args, out):
        seen["x"] = args[0].detach()
        seen["z"] = out.detach().requires_grad_()
        return seen["z"].clone()  # the rest of the branch runs from this leaf (a copy, for in-place activations)

    with torch.enable_grad(), forward_hooks(module, [(path, keep), *_cheaper_input_grads(module, path)]):
        y = module(u).flatten(1)
    x, z = seen["x"], seen["z"]
    eye = torch.eye(d, dtype=y.dtype, device=y.device)
    # [D, N, *z.shape[1:]]: D backward passes, one at a time (is_grads_batched falls back to a slower loop with
    # copies for convolutions on CPU)
    gz = torch.stack([torch.autograd.grad(y, z, eye[k].expand_as(y), retain_graph=k < d - 1)[0] for k in range(d)])
    parts = []
    for name in names:
        if name.endswith("bias"):
            parts.append(gz.flatten(3).sum(3) if gz.dim() > 3 else gz)  # [D, N, O]
        elif isinstance(layer, nn.Linear):
            parts.append(torch.einsum("dno,ni->dnoi", gz, x).flatten(2))
        else:
            cols = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # [N, I*k*k, L]
            parts.append(torch.einsum("dnol,nkl->dnok", gz.flatten(3), cols).flatten(2))
    return torch.cat(parts, dim=2).transpose(0, 1).detach()  # [N, D, P]
