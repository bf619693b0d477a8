"""probekit: probe branched neural networks and measure Branch Specialization."""

__version__ = "0.1.0"

from .analysis import Analysis, Batch, RunContext  # noqa: E402
from .branched import SummedBranches, mark_branches  # noqa: E402
from .errors import ProbekitError  # noqa: E402
from .hookspecs import hookimpl  # noqa: E402
from .store import open_results  # noqa: E402

__all__ = [
    "Analysis",
    "Batch",
    "ProbekitError",
    "RunContext",
    "SummedBranches",
    "__version__",
    "hookimpl",
    "mark_branches",
    "open_results",
]
