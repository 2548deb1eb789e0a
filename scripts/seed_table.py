"""Per-seed table of sweeps over seeds and explainers: faithfulness of one mask and localisation.

Reads only what the runs wrote (each job's summary.csv, run.json and saved config), one row per
seed and explainer, so a verdict can be checked on every seed rather than on their pool (README,
"L-MAC"). Runs of one explainer that differ in a setting are kept apart as the report keeps them
(``lmac_sparse[area=0.05]``):

    python -m audiointerp.run -m seed=0,1,2 explainer=saliency,gradcam,...,lmac_sparse hydra.sweep.dir=SWEEP
    python scripts/seed_table.py SWEEP [MORE_SWEEPS ...] [--seeds 0] --out docs/results/seeds.md
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from audiointerp.report.collect import find_runs, label_settings

COLUMNS = ("FidIn", "AD", "FF", "kept")
LOCALISATION = ("relevance_mass", "relevance_rank", "auroc")
CURVES = ("deletion_auc", "insertion_auc")


def rows(sweeps: list[Path], mask: str, seeds: set[int] | None = None) -> list[dict]:
    """One row per complete run under ``sweeps`` (of ``seeds`` only, when given), sorted by seed and
    then by relevance mass, highest first."""
    runs = [run for run in find_runs(sweeps, Path.cwd()) if run.status == "complete"]
    label_settings(runs)
    found = []
    for run in runs:
        if seeds is not None and run.settings["seed"] not in seeds:
            continue
        report = json.loads((run.path / "run.json").read_text())
        with open(run.path / "summary.csv", newline="") as handle:
            summary = {row["mask"]: row for row in csv.DictReader(handle)}
        explainer = run.settings["explainer"] + (f" ({run.settings['setting']})" if run.settings.get("setting") else "")
        found.append({"seed": run.settings["seed"], "explainer": explainer, "accuracy": report["clean_accuracy"],
                      **{c: float(summary[mask][c]) for c in COLUMNS},
                      **{c: (report.get("localization") or {}).get(c, float("nan")) for c in LOCALISATION},
                      **{c: (report.get("clip_scores") or {}).get(c, float("nan")) for c in CURVES}})
    # by relevance mass, highest first; runs without ground truth (NaN) after, by name
    return sorted(found, key=lambda r: (r["seed"], r["relevance_mass"] != r["relevance_mass"],
                                        -r["relevance_mass"] if r["relevance_mass"] == r["relevance_mass"] else 0,
                                        r["explainer"]))


def _cell(value: float, digits: int) -> str:
    return "—" if value != value else f"{value:.{digits}f}"  # NaN: no ground truth (real data) or no curve


def markdown(table: list[dict], mask: str) -> str:
    header = ["seed", "test accuracy", "explainer", *(f"{c} ({mask})" for c in COLUMNS), *LOCALISATION, *CURVES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table:
        accuracy = "—" if row["accuracy"] is None else f"{row['accuracy']:.2%}"  # unlabelled clips
        cells = [str(row["seed"]), accuracy, f"`{row['explainer']}`",
                 *(_cell(row[c], 1 if c == "AD" else 3) for c in COLUMNS),
                 *(_cell(row[c], 3) for c in (*LOCALISATION, *CURVES))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", type=Path, nargs="+", help="sweep folders (hydra.sweep.dir) or run folders")
    parser.add_argument("--mask", default="minmax", help="the mask whose faithfulness is shown")
    parser.add_argument("--seeds", type=int, nargs="+", help="only these seeds (default: every seed found)")
    parser.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args()
    text = markdown(rows(args.sweeps, args.mask, set(args.seeds) if args.seeds else None), args.mask)
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
