"""Deprecated since 1.0: the 0.1 home of the results-schema helpers, kept working for the 1.x series.

Import them from :mod:`probekit.api` instead (``from probekit.api import branch_coords``); see CHANGELOG.md,
"Migrating from 0.1".
"""

from __future__ import annotations

import warnings

from probekit.api import branch_coords, class_coords, layer_coords, sample_coords

__all__ = ["branch_coords", "class_coords", "layer_coords", "sample_coords"]

warnings.warn("probekit.schema is deprecated and will be removed in 2.0: import branch_coords, class_coords, "
              "layer_coords and sample_coords from probekit.api", DeprecationWarning, stacklevel=2)
