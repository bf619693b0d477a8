"""How the toy results move with the trainer's settings (the paper does not state them).

Runs reduced sweeps (M = 2, 5, 10, 20, 30; 300 trials each) for each setting
and prints a markdown table of success rate and mean active branches per M.

    python examples/toy_sensitivity.py > sensitivity.md
"""

from __future__ import annotations

from probekit.zoo.toy_sweep import SweepConfig, run_sweep

COUNTS = (2, 5, 10, 20, 30)
SETTINGS = [  # (lr, steps, init); the first is the default
    (0.02, 5000, "uniform:1"),
    (0.01, 5000, "uniform:1"),
    (0.05, 5000, "uniform:1"),
    (0.1, 5000, "uniform:1"),
    (0.02, 2000, "uniform:1"),
    (0.02, 20000, "uniform:1"),
    (0.02, 5000, "uniform:0.5"),
    (0.02, 5000, "normal:1"),
    (0.05, 5000, "normal:1"),
]


def main() -> None:
    header = " | ".join(f"M={m}" for m in COUNTS)
    for task in ("toy1", "toy2"):
        print(f"\n### {task}: success rate / mean active branches\n")
        print(f"| lr | steps | init | {header} |")
        print("|" + "---|" * (3 + len(COUNTS)))
        for lr, steps, init in SETTINGS:
            ds = run_sweep(SweepConfig(task=task, branches=COUNTS, trials=300, steps=steps, lr=lr, init=init),
                           progress=False)
            cells = " | ".join(f"{float(ds.success_rate.sel(n_branches=m)):.2f} / "
                               f"{float(ds.mean_active.sel(n_branches=m)):.1f}" for m in COUNTS)
            print(f"| {lr} | {steps} | {init} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
