"""How many Integrated Gradients steps keep completeness on the default testbed: one real run per n_steps.

    python scripts/ig_completeness.py [--steps 8,16,32,64,128,256] [--out outputs/ig_completeness]
                                      [--table docs/results/ig_completeness.md] [OVERRIDE ...]

Runs ``python -m audiointerp.run explainer=integrated_gradients explainer.n_steps=N`` for each N on
the default config (the embedded synthetic testbed and its tiny Cnn14, trained once and then taken
from the model cache; ``mask=binary n_examples=0`` only to save time: neither changes IG), then
prints, per N, the completeness error each clip's run recorded (``clip_scores.csv``,
``ig_completeness_error`` = |sum A - (f(x) - f(baseline))| / |f(x) - f(baseline)|): mean, median,
largest, and the share of clips under 1 %. Extra arguments are passed to every run (e.g. ``seed=1``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="8,16,32,64,128,256", help="n_steps values, comma-separated")
    parser.add_argument("--out", type=Path, default=Path("outputs/ig_completeness"), help="folder of the runs")
    parser.add_argument("--table", type=Path, help="also write the Markdown table to this file")
    args, overrides = parser.parse_known_args()
    rows = []
    for n_steps in (int(s) for s in args.steps.split(",")):
        folder = args.out / f"n_steps_{n_steps}"
        command = [sys.executable, "-m", "audiointerp.run", "explainer=integrated_gradients",
                   f"explainer.n_steps={n_steps}", "mask=binary", "n_examples=0", *overrides,
                   f"hydra.run.dir={folder}"]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            print(result.stderr[-2000:], file=sys.stderr)
            return result.returncode
        errors = pd.read_csv(folder / "clip_scores.csv")["ig_completeness_error"].dropna()
        accuracy = json.loads((folder / "run.json").read_text())["clean_accuracy"]
        rows.append({"n_steps": n_steps, "clips": len(errors), "mean": errors.mean(), "median": errors.median(),
                     "max": errors.max(), "share_under_1%": (errors < 0.01).mean(), "test_accuracy": accuracy})
        print(pd.DataFrame(rows).iloc[-1:].to_string(index=False, header=len(rows) == 1, float_format="%.4f"),
              flush=True)
    print()
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + " ---: |" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c]) for c in columns) + " |")
    table = "\n".join(lines) + "\n"
    print(table, end="")
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(f"`python scripts/ig_completeness.py {' '.join(sys.argv[1:])}`\n\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
