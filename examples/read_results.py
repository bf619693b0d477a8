"""Open a probekit store in your own analysis: which branches are silent, and which pairs covary most.

    python examples/read_results.py demo-out/digits.zarr
"""

import sys

import numpy as np

import probekit


def main(path: str) -> None:
    tree = probekit.open_results(path)
    activity = tree["activity"]
    for layer in activity.layer.values:
        in_layer = activity.sel(branch=activity.branch_layer == layer)
        silent = in_layer.branch.values[in_layer.active.values == 0]  # 1 active, 0 silent, NaN unknown
        print(f"{layer}: {int(in_layer.active.sum())} active, silent: {', '.join(silent) or 'none'}")
    if "covariance" in tree.children:
        corr = tree["covariance"].corr
        values = np.where(np.eye(corr.shape[0], dtype=bool), np.nan, corr.values)
        i, j = np.unravel_index(np.nanargmax(np.abs(values)), values.shape)
        print(f"most correlated pair: {corr.branch.values[i]} ~ {corr.branch_other.values[j]} "
              f"(corr {values[i, j]:.3f})")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "demo-out/digits.zarr")
