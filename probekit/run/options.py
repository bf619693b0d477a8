"""Typed analysis options from ``--option NAME.KEY=VALUE`` text.

An analysis's ``Options`` is a dataclass; each field's annotation says how its
text is read: ``bool`` (true/false, yes/no, on/off, 1/0), ``int``, ``float``
(finite only: ``nan`` and ``inf`` would silently change a comparison's
meaning), ``str``, ``Literal["a", "b"]`` (one of the values),
``list[T]`` or ``tuple[T, ...]`` (comma-separated), ``T | None`` (``none``
or empty text is None) and unions (the first member that reads the text
wins); ``Annotated[T, "help text"]`` reads as ``T``. Every bad value is one error line naming the option and what
it takes. Help text (``field(metadata={"help": ...})`` or the ``Annotated`` string) is shown by
``probekit plugins NAME``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types

from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from probekit.errors import ProbekitError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_NONE = {"", "none", "null"}
_SCALARS = (bool, int, float, str)


def describe(kind) -> str:
    """What an annotation accepts, in words: ``int``, ``one of a, b``, ``comma-separated int``, ``... or none``."""
    origin, args = get_origin(kind), get_args(kind)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (list, tuple):
        return f"comma-separated {describe(args[0])}"
    if origin in (Union, types.UnionType):
        return " or ".join("none" if a is type(None) else describe(a) for a in args)
    return getattr(kind, "__name__", str(kind))


def check_annotation(kind, where: str) -> None:
    """Refuse annotations the reader cannot parse (at registration, not at the first run)."""
    origin, args = get_origin(kind), get_args(kind)
    if kind in _SCALARS or kind is type(None) or origin is Literal:
        return
    if origin in (list, tuple) and args and (origin is list or len(args) == 1 or args[1] is Ellipsis):
        return check_annotation(args[0], where)
    if origin in (Union, types.UnionType):
        for arg in args:
            check_annotation(arg, where)
        return
    raise ProbekitError(f"{where}: options of type {kind!r} are not supported ({describe_supported()})")


def describe_supported() -> str:
    return "use bool, int, float, str, Literal[...], list[T], tuple[T, ...], T | None or unions of them"


def _scalar(text: str, kind: type, where: str):
    if kind is bool:
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise ValueError
    value = kind(text)
    if kind is float and not math.isfinite(value):
        raise ProbekitError(f"{where} must be a finite number, not {text!r}")
    return value


def _read(text: str, kind, where: str):
    """``text`` as ``kind``; ValueError when it does not fit (callers name the option)."""
    origin, args = get_origin(kind), get_args(kind)
    if kind is type(None):
        if text.strip().lower() in _NONE:
            return None
        raise ValueError
    if origin is Literal:
        for value in args:
            if text == str(value):
                return value
        raise ValueError
    if origin in (list, tuple):
        items = [_read(part.strip(), args[0], where) for part in text.split(",") if part.strip()]
        return items if origin is list else tuple(items)
    if origin in (Union, types.UnionType):
        ordered = sorted(args, key=lambda a: a is not type(None))  # none first, so "none" is never a str
        for arg in ordered:
            try:
                return _read(text, arg, where)
            except ValueError:
                continue
        raise ValueError
    return _scalar(text.strip() if kind is not str else text, kind, where)


def convert(text: str, kind, where: str):
    """``text`` read as ``kind`` (see the module docstring), or one error line."""
    try:
        return _read(text, kind, where)
    except (ValueError, TypeError):
        raise ProbekitError(f"{where} must be {describe(kind)}, not {text!r}") from None


def option_types(options_class: type) -> dict[str, Any]:
    """``{field: annotation}`` of an options dataclass, each checked to be readable."""
    hints = get_type_hints(options_class, include_extras=False)
    fields = {f.name for f in dataclasses.fields(options_class)}
    for name in fields:
        check_annotation(hints[name], f"{options_class.__qualname__}.{name}")
    return {name: hints[name] for name in fields}


def option_help(options_class: type) -> dict[str, str]:
    """``{field: help text}`` from ``field(metadata={"help": ...})`` or ``Annotated[T, "help"]``."""
    hints = get_type_hints(options_class, include_extras=True)
    found = {}
    for f in dataclasses.fields(options_class):
        texts = [str(f.metadata["help"])] if "help" in f.metadata else []
        texts += [a for a in getattr(hints.get(f.name), "__metadata__", ()) if isinstance(a, str)]
        if texts:
            found[f.name] = texts[0]
    return found


def parse_options(analysis: type, pairs: dict[str, str]):
    """Build ``analysis.Options`` from ``{key: text}``; unknown keys and bad values are one error line each."""
    kinds = option_types(analysis.Options)
    values = {}
    for key, text in pairs.items():
        if key not in kinds:
            valid = ", ".join(sorted(kinds)) or "none"
            raise ProbekitError(f"unknown option {key!r} of {analysis.name} (its options: {valid})")
        values[key] = convert(text, kinds[key], f"{analysis.name}.{key}")
    options = analysis.Options(**values)
    check = getattr(options, "check", None)
    if check is not None:
        check()
    return options


def options_json(options: Any) -> str:
    """The options as JSON, defaults included (the node attr ``options``)."""
    return json.dumps(dataclasses.asdict(options), sort_keys=True, default=list)



