"""Slider responsiveness of the notebook explorers, measured in one run (target: <= 1 s per update).

    python benchmarks/widgets.py [--rounds 5] [--threads 1]

An update is what a student waits for after releasing a slider: `set(...)`
(the observers compute, or read the cache) plus rendering the new figure to
the PNG that `show()`'s display handle receives. For each explorer, `rounds`
settings never seen before are timed ("first move"), then the same settings
again ("cached move"); medians and maxima are printed. Data (200 MNIST test
images) and the models are loaded once, outside the timings; building each
explorer (its first figure) is timed once. These 2-core machines are noisy:
read the numbers of one run together.
"""
from __future__ import annotations

import argparse
import io
import statistics
import time

import torch

from hashrobust import load_dataset, load_pretrained
from hashrobust.widgets import AdversarialExplorer, CompressionAttackExplorer, InhibitionExplorer, RatioExplorer

TARGET_S = 1.0


def update_seconds(explorer, values: dict) -> float:
    """One update: set the controls (observers fire), then render the figure to PNG bytes."""
    start = time.perf_counter()
    explorer.set(**values)
    explorer.figure().savefig(io.BytesIO(), format="png", dpi=80)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, choices=range(1, 6), help="settings per explorer (<= 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: small batches)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist", "test").subset(200)
    dense = load_pretrained("mnist", "mlp3", 1)
    zoo = {r: load_pretrained("mnist", "mlp3", r) for r in (1, 2, 4, 8, 16, 32, 64)}
    eps_moves = [{"eps": e} for e in (0.05, 0.15, 0.2, 0.25, 0.3)]
    cases = {  # name: (build, settings never seen before: each a first move, then a cached one)
        "RatioExplorer (ratio)": (RatioExplorer, [{"ratio": r} for r in (1, 2, 16, 32, 64)]),
        "AdversarialExplorer (PGD-20 eps, 3 images)":
            (lambda: AdversarialExplorer(dense, data, n=3, attack="PGD"), eps_moves),
        "CompressionAttackExplorer (eps, 7 ratios x 200 images)":
            (lambda: CompressionAttackExplorer(zoo, data, n=200), eps_moves),
        "InhibitionExplorer (GI strength, 200 images)":
            (lambda: InhibitionExplorer(dense, data, n=200), [{"strength": s} for s in (0.3, 0.5, 1, 2, 5)]),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); one update = set(...) + PNG render; "
          f"{args.rounds} settings per explorer\n")
    print(f"{'explorer (control moved)':56} {'build':>7} {'first: median':>14} {'max':>7} "
          f"{'cached: median':>15} {'max':>7}")
    worst = 0.0
    for name, (build, moves) in cases.items():
        moves = moves[:args.rounds]
        start = time.perf_counter()
        explorer = build()
        explorer.figure().savefig(io.BytesIO(), format="png", dpi=80)
        built = time.perf_counter() - start
        initial = {name: slider.value for name, slider in explorer.sliders.items()}  # computed when built
        first = [update_seconds(explorer, values) for values in moves]
        cached = []
        for values in moves:  # back to the initial setting, then the second visit of each setting
            explorer.set(**initial)
            cached.append(update_seconds(explorer, values))
        worst = max(worst, *first, *cached)
        print(f"{name:56} {built:6.2f}s {statistics.median(first):13.3f}s {max(first):6.3f}s "
              f"{statistics.median(cached):14.3f}s {max(cached):6.3f}s")
    verdict = "met" if worst <= TARGET_S else "NOT met"
    print(f"\ntarget: every slider update <= {TARGET_S:g} s on this CPU; slowest update measured {worst:.3f} s: "
          f"{verdict}")


if __name__ == "__main__":
    main()
