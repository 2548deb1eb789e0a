"""Does the best explainer depend on the architecture? Every explainer on every model, side by side.

Reads what the runs of one or more sweeps wrote (per-clip metrics, localisation, curve areas, sanity
checks, run.json) and prints, per model and explainer, the mean over seeds of: Fid-In and AD of one
mask, relevance mass and AUROC against the ground truth, the deletion and insertion areas, and the
sanity checks' rank correlations with the original map once the whole cascade is randomised and for
a random class (lower: the explanation depends on the weights and the class, as it should; the
report's ``sanity_cascade`` and ``sanity_random_logit``). Brackets hold the 95 % hierarchical
bootstrap interval (seeds, then clips within a seed; the report's). Below the table: per metric,
each model's best explainer and the Spearman correlation of the two models' rankings of the
post-hoc explainers (``random`` and ``oracle`` left out: every model ranks them last and first), of
the means over seeds and of each seed's own means.

    bash scripts/architectures.sh        # the sweeps, then this script
    python scripts/architecture_table.py SWEEP [SWEEP ...] --out docs/results/architectures.md
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from audiointerp.report.collect import find_runs, label_settings, per_clip_table
from audiointerp.report.tables import LOWER_IS_BETTER, hierarchical_interval

#: (column, header, digits); the first two on the chosen mask, the rest once per clip.
SCORES = (("FidIn", "Fid-In", 3), ("AD", "AD", 1), ("relevance_mass", "relevance mass", 3), ("auroc", "AUROC", 3),
          ("deletion_auc", "deletion area", 3), ("insertion_auc", "insertion area", 3),
          ("sanity_cascade", "sanity ρ (all randomised)", 3), ("sanity_random_logit", "sanity ρ (random class)", 3))
RESAMPLES, SEED = 1000, 0


def collect(sweeps: list[Path], mask: str) -> pd.DataFrame:
    """One row per run and clip: model, explainer, seed, accuracy and the :data:`SCORES` present."""
    runs = [run for run in find_runs(sweeps, Path.cwd()) if run.status == "complete"]
    label_settings(runs)
    table = per_clip_table(runs)
    table = table[table["mask"] == mask].copy()
    accuracy = {run.name: json.loads((run.path / "run.json").read_text())["clean_accuracy"] for run in runs}
    table["accuracy"] = table["run"].map(accuracy)
    return table


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Per (model, explainer): the seeds, the models' accuracies and each score's (mean, low, high).

    Raises:
        SystemExit: runs that differ in anything but the model, the explainer and the seed (the
            feature, data, noise or another setting), which one table would pool.
    """
    for column in ("feature", "data", "noise", "setting"):
        values = table[column].fillna("").astype(str).unique() if column in table else []
        if len(values) > 1:
            raise SystemExit(f"architecture_table: the runs differ in {column} ({', '.join(sorted(values))}); "
                             "give the runs of one condition only")
    rows = []
    for (model, explainer), group in table.groupby(["model", "explainer"], sort=True):
        row = {"model": model, "explainer": explainer, "seeds": sorted(group["seed"].unique()),
               "accuracy": group.groupby("seed")["accuracy"].first().mean()}
        for column, _, _ in SCORES:
            if column in group and group[column].notna().any():
                units = [g[column].to_numpy(dtype=float) for _, g in group.groupby("seed", sort=True)]
                row[column] = hierarchical_interval(units, RESAMPLES, SEED, f"{model}/{explainer}/{column}")
                row[f"{column} by seed"] = group.groupby("seed")[column].mean().to_dict()
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(summary: pd.DataFrame, mask: str) -> str:
    shown = [s for s in SCORES if s[0] in summary.columns]
    header = ["model", "seeds", "test accuracy", "explainer",
              *(f"{h} ({mask})" if c in ("FidIn", "AD") else h for c, h, _ in shown)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in summary.iterrows():
        cells = [row["model"], ",".join(map(str, row["seeds"])), f"{row['accuracy']:.2%}", f"`{row['explainer']}`"]
        for column, _, digits in shown:
            value = row.get(column)
            cells.append("—" if not isinstance(value, tuple) or np.isnan(value[0]) else
                         f"{value[0]:.{digits}f} [{value[1]:.{digits}f}, {value[2]:.{digits}f}]")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    models = sorted(summary["model"].unique())
    for column, title, _ in shown:
        if column not in summary.columns:
            continue
        means = summary.assign(mean=summary[column].map(lambda v: v[0] if isinstance(v, tuple) else np.nan))
        lower = column in LOWER_IS_BETTER
        best = []
        for model in models:
            of_model = means[(means["model"] == model) & means["mean"].notna()]
            of_model = of_model[~of_model["explainer"].isin(("random", "oracle"))]  # the references bound, not compete
            if len(of_model):
                pick = of_model.loc[of_model["mean"].idxmin() if lower else of_model["mean"].idxmax()]
                best.append(f"{model}: `{pick['explainer']}`")
        agreement = []
        for a, b in itertools.combinations(models, 2):
            pivot = means.pivot(index="explainer", columns="model", values="mean")[[a, b]].dropna()
            pivot = pivot.drop(index=["random", "oracle"], errors="ignore")  # both models put them last and first
            if len(pivot) >= 3:
                per_seed = []
                for seed in sorted(set().union(*summary[f"{column} by seed"].dropna()), key=int):
                    by_seed = summary.assign(value=summary[f"{column} by seed"].map(
                        lambda values, seed=seed: values.get(seed, np.nan) if isinstance(values, dict) else np.nan))
                    seed_pivot = by_seed.pivot(index="explainer", columns="model", values="value")
                    seed_pivot = seed_pivot.reindex(pivot.index)[[a, b]].dropna()
                    if len(seed_pivot) >= 3:
                        per_seed.append(f"seed {seed} {spearmanr(seed_pivot[a], seed_pivot[b]).statistic:.2f}")
                agreement.append(f"Spearman of the {a} and {b} rankings over {len(pivot)} explainers "
                                 f"{spearmanr(pivot[a], pivot[b]).statistic:.2f}"
                                 + (f" (by seed: {', '.join(per_seed)})" if per_seed else ""))
        lines.append(f"- {title}: best {', '.join(best)}" + (f"; {'; '.join(agreement)}" if agreement else ""))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", type=Path, nargs="+", help="sweep folders (hydra.sweep.dir) or run folders")
    parser.add_argument("--mask", default="minmax", help="the mask whose Fid-In and AD are shown")
    parser.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args()
    text = markdown(summarise(collect(args.sweeps, args.mask)), args.mask)
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
