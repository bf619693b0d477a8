"""Graph-captured models (torch.export, TorchScript) made hookable.

Forward hooks cannot fire inside a compiled graph. torch.export programs are
unflattened back into their module hierarchy. TorchScript hides submodule
calls completely, so it is converted to an FX graph with taps after its
grouped convs. Programs whose batch size is fixed get
``probekit_fixed_batch``, and the runner pads short batches.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import nn

from probekit.errors import ProbekitError

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


def load_exported(path: str, trust_code: bool = False) -> nn.Module:
    """Load a ``torch.export.save`` archive as a hookable module. The archive is a program whose weights may be
    pickles that run code (docs/security.md), so this refuses unless ``trust_code`` says the user trusts it."""
    if not trust_code:
        raise ProbekitError(f"{path} is a torch.export archive, a program: loading it needs trust_code "
                            "(--trust-code), given only if you trust the file's author")
    try:
        program = torch.export.load(path)
    except Exception as exc:
        raise ProbekitError(f"{path} is not a readable torch.export archive: {exc}") from exc
    return unflatten_program(program)


def is_torchscript(model: nn.Module) -> bool:
    return isinstance(model, torch.jit.ScriptModule)


_sink: Callable[[str, torch.Tensor], None] | None = None


def _tap(path: str, value: torch.Tensor) -> torch.Tensor:
    """Inserted into graphs after a grouped conv: hands its output to the active capture."""
    if _sink is not None:
        _sink(path, value)
    return value


@contextmanager
def tap_sink(sink: Callable[[str, torch.Tensor], None]):
    """Route tapped graph outputs to ``sink(path, tensor)`` while the block runs."""
    global _sink
    _sink = sink
    try:
        yield
    finally:
        _sink = None


@contextmanager
def _quiet_conversion():
    """Silence the converter's per-buffer warnings and shape-specialisation log lines."""
    logger = logging.getLogger("torch._export")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def torchscript_to_tapped(model: torch.jit.ScriptModule, example: torch.Tensor) -> nn.Module:
    """A TorchScript model as an FX graph whose grouped convs are tapped.

    TorchScript runs submodules inside its compiled graph, out of reach of
    Python hooks. We convert it to an ExportedProgram (traced at
    ``example``'s shape, so its batch size is fixed) and insert a tap after
    every conv with ``groups > 1``. The result has ``probekit_taps``:
    ``{conv path: groups}``. Summed branches are not recoverable this way.
    """
    from torch._export.converter import TS2EPConverter

    from probekit.models.discovery import conv_node_groups

    try:
        with _quiet_conversion():
            graph_module = TS2EPConverter(model, (example,)).convert().module()
    except Exception as exc:
        raise ProbekitError(
            f"cannot convert this TorchScript model for probing ({type(exc).__name__}: {exc}); "
            "save it with torch.export instead"
        ) from exc
    taps = {}
    for node in list(graph_module.graph.nodes):
        groups = conv_node_groups(node)
        weight = node.args[1] if groups > 1 and len(node.args) > 1 else None
        if weight is None or getattr(weight, "op", None) != "get_attr":
            continue
        path = weight.target.rpartition(".")[0]
        with graph_module.graph.inserting_after(node):
            tapped = graph_module.graph.call_function(_tap, (path, node))
        node.replace_all_uses_with(tapped, delete_user_cb=lambda user, tap=tapped: user is not tap)
        taps[path] = groups
    graph_module.recompile()
    graph_module.probekit_taps = taps
    setattr(graph_module, FIXED_BATCH_ATTR, example.shape[0])
    return graph_module
