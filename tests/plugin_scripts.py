"""Python programs that register one analysis with probekit, for tests that run probekit in a child process."""

HEADER = """import json, os, signal, sys, time
import numpy as np
import xarray as xr
from probekit import Analysis
from probekit.hookspecs import hookimpl
from probekit.plugins import manager
"""


def plugin_script(analysis_source: str, class_name: str, run_cli: bool = True) -> str:
    """A program defining ``analysis_source`` (which defines ``class_name``), registering it, and (with
    ``run_cli``) running ``probekit`` with the program's arguments; without it, a ``sitecustomize`` body."""
    footer = f"""

class Plugin:
    @hookimpl
    def probekit_register_analyses(register):
        register({class_name})


manager().register(Plugin, name={class_name.lower()!r})
"""
    cli = "from probekit.cli import main\nsys.exit(main(sys.argv[1:]))\n" if run_cli else ""
    return HEADER + analysis_source + footer + cli
