"""Graph-captured models (torch.export, TorchScript) made hookable.

Forward hooks cannot fire inside a compiled graph. torch.export programs are
unflattened back into their module hierarchy. Programs whose batch size is
fixed get ``probekit_fixed_batch``, and the runner pads short batches.
TorchScript hides submodule calls completely (its graph is compiled in C++),
so TorchScript models load and run but cannot be probed.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import ProbekitError

FIXED_BATCH_ATTR = "probekit_fixed_batch"


def _static_batch(program) -> int | None:
    """The first input's batch size when it is fixed in ``program``, else ``None``."""
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in program.graph_signature.user_inputs:
            size = node.meta["val"].shape[0]
            return size if isinstance(size, int) else None
    return None


def unflatten_program(program) -> nn.Module:
    """An ExportedProgram as a module tree with the original submodule paths."""
    module = torch.export.unflatten(program)
    batch = _static_batch(program)
    if batch is not None:
        setattr(module, FIXED_BATCH_ATTR, batch)
    return module


def load_exported(path: str) -> nn.Module:
    """Load a ``torch.export.save`` archive as a hookable module."""
    try:
        program = torch.export.load(path)
    except Exception as exc:
        raise ProbekitError(f"{path} is not a readable torch.export archive: {exc}") from exc
    return unflatten_program(program)


def is_torchscript(model: nn.Module) -> bool:
    return isinstance(model, torch.jit.ScriptModule)


def refuse_torchscript(path: str) -> None:
    """TorchScript runs submodules inside a compiled graph, where no Python hook can see them."""
    raise ProbekitError(
        f"{path} is TorchScript: it loads and runs, but hooks cannot see its branches; "
        "save the model with torch.export.save(torch.export.export(model, (example,))) and probe that"
    )
