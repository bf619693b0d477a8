"""The memory format training uses: ``channels_last`` only where this CPU is shown to get it right.

``channels_last`` trains faster on some CPUs (1.3x on one thread here), but on
CPUs with AVX2 and no AVX-512 oneDNN's 1x1 convolution weight backward writes
past its workspace in that format: a crash with one thread, a hang with two,
wrong weight gradients elsewhere. So training is contiguous unless a startup
check, run in a child process with a hard timeout (a crash or hang there
cannot touch the training process), finds that a few forward/backward steps
of the very architectures being trained give the same weight gradients in
both formats. ``PROBEKIT_MEMORY_FORMAT=contiguous`` skips the check.

The child is ``python -m probekit.zoo.memory_format SPEC`` where ``SPEC`` is
JSON: ``{"models": [[kind, config], ...], "steps": n}``; it prints one JSON
line ``{"agree": bool, "detail": str}``.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from functools import cache

import torch

CHECK_STEPS = 3  # a hang showed within 8 steps, the crash at the first; every step's gradients are compared
# channels_last must be as accurate as contiguous, both measured against a float64 contiguous reference: per
# parameter |g_cl - g64| <= 4 |g_c - g64| + 1e-5 |g64| + 1e-7 max_p |g64_p|. (A plain float32 comparison is too
# strict: on the learnt-diffusion generator float32 rounding alone moves some gradients by 2%, in both formats.)
ROUNDING_FACTOR = 4.0
RELATIVE_FLOOR = 1e-5
SCALE_FLOOR = 1e-7
TIMEOUT_S = 60.0  # the check takes 5-20 s on 2 cores


BUILDERS = {  # by import path: the training modules import this one
    "cifar": "probekit.zoo.resnet:branched_resnet18",
    "generator": "probekit.zoo.generator:BranchedGenerator",
    "discriminator": "probekit.zoo.gan_training:Discriminator",
}


def _build(kind: str, config: dict):
    """``(model, inputs)`` for one architecture kind with a fixed seed; inputs are a tuple of tensors."""
    if kind not in BUILDERS:
        raise ValueError(f"unknown architecture kind {kind!r}")
    module, name = BUILDERS[kind].split(":")
    torch.manual_seed(0)
    model = getattr(importlib.import_module(module), name)(**config)
    if kind == "cifar":
        return model, (torch.randn(8, 3, 32, 32),)
    side = config["resolution"]
    return model, (torch.rand(4, 3, side, side), torch.zeros(4, dtype=torch.long))


def weight_gradients(model: torch.nn.Module, inputs: tuple, memory_format: torch.memory_format,
                     dtype: torch.dtype = torch.float32) -> dict:
    """``{parameter name: gradient}`` of one backward of ``sum(output * fixed weights)`` in ``memory_format``."""
    model = model.to(dtype=dtype, memory_format=memory_format)
    inputs = tuple(x.to(dtype).contiguous(memory_format=memory_format) if x.is_floating_point() else x for x in inputs)
    model.zero_grad(set_to_none=True)
    output = model(*inputs)
    weights = torch.randn(output.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    (output * weights).sum().backward()
    return {name: p.grad.detach().double() for name, p in model.named_parameters() if p.grad is not None}


def disagreement(exact: dict, contiguous: dict, channels_last: dict) -> str | None:
    """The first parameter whose channels_last gradient is less accurate than the contiguous one allows,
    described; None when none is. All three are ``{name: gradient}``, ``exact`` in float64."""
    if not exact.keys() == contiguous.keys() == channels_last.keys():
        return "the formats gave gradients for different parameters"
    scale = max((float(g.norm()) for g in exact.values()), default=0.0)
    for name, g in exact.items():
        rounding = float((contiguous[name] - g).norm())
        error = float((channels_last[name] - g).norm())
        allowed = ROUNDING_FACTOR * rounding + RELATIVE_FLOOR * float(g.norm()) + SCALE_FLOOR * scale
        if not error <= allowed:  # NaN disagrees too
            return f"{name}: channels_last gradient is off by {error:.3g}, contiguous by {rounding:.3g}"
    return None


def check(models: list, steps: int = CHECK_STEPS) -> dict:
    """Compare ``steps`` backward passes in both formats for every ``(kind, config)``, on one thread and on as
    many as training uses; runs in the child."""
    training_threads = torch.get_num_threads()
    for threads in sorted({1, training_threads}):  # one thread first: there the faulty kernel crashes at once
        torch.set_num_threads(threads)
        for kind, config in models:
            model, inputs = _build(kind, config)
            exact = weight_gradients(model, inputs, torch.contiguous_format, torch.float64)
            for _ in range(steps):
                contiguous = weight_gradients(model, inputs, torch.contiguous_format)
                problem = disagreement(exact, contiguous, weight_gradients(model, inputs, torch.channels_last))
                if problem:
                    return {"agree": False, "detail": f"{kind} on {threads} thread(s): {problem}"}
    return {"agree": True, "detail": "weight gradients as accurate in channels_last as in contiguous"}


@cache
def _checked(spec: str, timeout: float) -> tuple[bool, str]:
    try:
        done = subprocess.run([sys.executable, "-m", "probekit.zoo.memory_format", spec], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"the channels_last check hung (no answer in {timeout:.0f} s)"
    if done.returncode != 0:
        how = f"signal {-done.returncode}" if done.returncode < 0 else f"exit status {done.returncode}"
        return False, f"the channels_last check crashed ({how})"
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return False, "the channels_last check gave no answer"
    return bool(answer["agree"]), str(answer["detail"])


def training_memory_format(models: list, timeout: float = TIMEOUT_S) -> tuple[torch.memory_format, str]:
    """The format to train ``models`` (``[(kind, config), ...]``) in, and one line saying why.

    ``kind`` is ``cifar`` (config of :func:`probekit.zoo.resnet.branched_resnet18`), ``generator``
    (:class:`~probekit.zoo.generator.BranchedGenerator`'s config plus ``resolution``) or ``discriminator``
    (``classes``, ``resolution``). The check runs once per process and architecture set.
    """
    if os.environ.get("PROBEKIT_MEMORY_FORMAT", "check") == "contiguous":
        return torch.contiguous_format, "contiguous (PROBEKIT_MEMORY_FORMAT=contiguous)"
    agree, detail = _checked(json.dumps({"models": models, "steps": CHECK_STEPS}, sort_keys=True), timeout)
    if agree:
        return torch.channels_last, f"channels_last ({detail} on this CPU)"
    return torch.contiguous_format, f"contiguous ({detail} on this CPU)"


if __name__ == "__main__":
    request = json.loads(sys.argv[1])
    print(json.dumps(check(request["models"], request["steps"])), flush=True)
