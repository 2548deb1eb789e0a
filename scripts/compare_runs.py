"""How far two runs of the same clips agree: e.g. ``precision=bf16`` against ``precision=fp32``.

Prints, for run B against run A (same clips, in the same order): the Spearman rank correlation of
each clip's attribution (mean and minimum over clips), the share of clips whose predicted class
agrees, and per metric the absolute difference of the two summaries' means over the masks.

Usage: python scripts/compare_runs.py RUN_A RUN_B [--metrics FF FidIn AI AD]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import scipy.stats


def summary_means(run: Path, metrics: list[str]) -> dict[str, float]:
    """Mean over the masks of each metric's per-mask mean in ``run/summary.csv``."""
    with open(run / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {m: float(np.mean([float(row[m]) for row in rows])) for m in metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--metrics", nargs="+", default=["FF", "FidIn", "AI", "AD", "AG"])
    args = parser.parse_args()
    for run in (args.run_a, args.run_b):
        if not (run / "attributions.npz").is_file() or not (run / "summary.csv").is_file():
            sys.exit(f"error: {run}: expected a finished run folder (attributions.npz, summary.csv)")
    with np.load(args.run_a / "attributions.npz") as a, np.load(args.run_b / "attributions.npz") as b:
        if list(a["clip_ids"]) != list(b["clip_ids"]):
            sys.exit(f"error: {args.run_b}: explains other clips than {args.run_a}; expected the same clips")
        rho = np.array([scipy.stats.spearmanr(x.ravel(), y.ravel())[0]
                        for x, y in zip(a["attributions"], b["attributions"])])
        same_class = float(np.mean(a["predicted"] == b["predicted"]))
    means_a, means_b = summary_means(args.run_a, args.metrics), summary_means(args.run_b, args.metrics)
    print(f"A: {args.run_a}\nB: {args.run_b}\n{len(rho)} clips")
    print(f"{'attribution Spearman, mean':<32} {np.nanmean(rho):.4f}")
    print(f"{'attribution Spearman, minimum':<32} {np.nanmin(rho):.4f}")
    print(f"{'same predicted class':<32} {same_class:.2%}")
    print(f"{'metric':<10} {'A':>10} {'B':>10} {'|B - A|':>10}")
    for metric in args.metrics:
        print(f"{metric:<10} {means_a[metric]:>10.4f} {means_b[metric]:>10.4f} "
              f"{abs(means_b[metric] - means_a[metric]):>10.4f}")


if __name__ == "__main__":
    main()
