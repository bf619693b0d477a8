"""Checks of an analysis class when it is registered, and of an instance before the pass starts, so an
author's mistake is one clear line before any sample is probed (not a crash after the whole pass)."""

from __future__ import annotations

import dataclasses
import importlib.util
import re

from probekit.errors import ProbekitError
from probekit.run.analysis import Analysis
from probekit.run.merging import RULES
from probekit.run.options import option_types
from probekit.run.sample_arrays import SampleArray
from probekit.run.taps import Tap

PLOT_TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def check_class(cls) -> None:
    """Raise one line naming what is wrong with a registered analysis class."""
    where = f"analysis {getattr(cls, 'name', cls)!r} ({getattr(cls, '__module__', '?')})"
    if not (isinstance(cls, type) and issubclass(cls, Analysis)):
        raise ProbekitError(f"{where} is not a subclass of probekit.api.Analysis")
    if not (isinstance(cls.Options, type) and dataclasses.is_dataclass(cls.Options)):
        raise ProbekitError(f"{where}: Options must be a dataclass")
    option_types(cls.Options)
    rules = cls.merge_rules
    if rules is not None:
        if not isinstance(rules, dict):
            raise ProbekitError(f"{where}: merge_rules must be a dict {{attribute: rule}} or None")
        for attribute, rule in rules.items():
            if rule not in RULES:
                raise ProbekitError(f"{where}: merge rule {rule!r} of {attribute!r} is not one of {', '.join(RULES)}")
            if rule == "custom" and not callable(getattr(cls, f"merge_{attribute}", None)):
                raise ProbekitError(f"{where}: merge rule 'custom' of {attribute!r} needs a method "
                                    f"merge_{attribute}(mine, theirs)")
    if cls.plot is not None:
        if not (isinstance(cls.plot, str) and PLOT_TARGET.fullmatch(cls.plot)):
            raise ProbekitError(f"{where}: plot must be 'module:function', not {cls.plot!r}")
        module = cls.plot.partition(":")[0]
        if importlib.util.find_spec(module) is None:
            raise ProbekitError(f"{where}: plot module {module!r} does not exist")
    if not isinstance(cls.taps, dict) or not all(isinstance(t, Tap) for t in cls.taps.values()):
        raise ProbekitError(f"{where}: taps must be a dict {{name: Tap(...)}}")


def check_instance(analysis: Analysis) -> None:
    """After ``__init__``, before the pass: its taps (which ``__init__`` may choose from the options) are Taps,
    every merge-rule attribute exists and none is a per-sample array."""
    where = f"analysis {analysis.name!r}"
    if not isinstance(analysis.taps, dict) or not all(isinstance(t, Tap) for t in analysis.taps.values()):
        raise ProbekitError(f"{where}: taps must be a dict {{name: Tap(...)}} (set in __init__ from its options)")
    for attribute in analysis.merge_rules or {}:
        if not hasattr(analysis, attribute):
            known = ", ".join(sorted(k for k in vars(analysis) if not k.startswith("_") and k not in
                                     ("context", "options"))) or "none"
            raise ProbekitError(f"{where}: merge_rules names {attribute!r}, which __init__ does not set "
                                f"(its attributes: {known})")
        if isinstance(getattr(analysis, attribute), SampleArray):
            raise ProbekitError(f"{where}: {attribute!r} is a per-sample array; the runner writes, merges and "
                                "restores those itself, so leave it out of merge_rules")
