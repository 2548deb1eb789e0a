"""Per-seed table of a sweep over seeds and explainers: faithfulness of one mask and localisation.

Reads only what the runs wrote (each job's summary.csv and run.json), one row per seed and explainer,
so a verdict can be checked on every seed rather than on their pool (README, "L-MAC"):

    python -m audiointerp.run -m seed=0,1,2 explainer=saliency,gradcam,...,lmac_sparse hydra.sweep.dir=SWEEP
    python scripts/seed_table.py SWEEP --out docs/results/seeds.md
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

COLUMNS = ("FidIn", "AD", "FF", "kept")
LOCALISATION = ("relevance_mass", "relevance_rank", "auroc")
CURVES = ("deletion_auc", "insertion_auc")


def rows(sweep: Path, mask: str) -> list[dict]:
    found = []
    for run_json in sorted(sweep.glob("*/run.json")):
        run = json.loads(run_json.read_text())
        with open(run_json.parent / "summary.csv", newline="") as handle:
            summary = {row["mask"]: row for row in csv.DictReader(handle)}
        row = {"seed": run["run"]["seed"], "explainer": run["run"]["explainer"], "accuracy": run["clean_accuracy"],
               **{c: float(summary[mask][c]) for c in COLUMNS},
               **{c: (run.get("localization") or {}).get(c, float("nan")) for c in LOCALISATION},
               **{c: (run.get("clip_scores") or {}).get(c, float("nan")) for c in CURVES}}
        found.append(row)
    return sorted(found, key=lambda r: (r["seed"], -r["relevance_mass"]))


def markdown(table: list[dict], mask: str) -> str:
    header = ["seed", "test accuracy", "explainer", *(f"{c} ({mask})" for c in COLUMNS), *LOCALISATION, *CURVES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table:
        cells = [str(row["seed"]), f"{row['accuracy']:.2%}", f"`{row['explainer']}`",
                 *(f"{row[c]:.1f}" if c == "AD" else f"{row[c]:.3f}" for c in COLUMNS),
                 *(f"{row[c]:.3f}" for c in (*LOCALISATION, *CURVES))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="a sweep folder (hydra.sweep.dir)")
    parser.add_argument("--mask", default="minmax", help="the mask whose faithfulness is shown")
    parser.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args()
    text = markdown(rows(args.sweep, args.mask), args.mask)
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
