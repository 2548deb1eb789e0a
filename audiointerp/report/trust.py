"""Which metric to trust: on data with ground truth, how well ranking explainers by a faithfulness
metric agrees with ranking them by their localisation of the evidence.

Per condition (data, feature, noise, and any setting the runs differ in), per seed: each explainer's
mean of a metric (per mask for the mask metrics, per clip for the deletion and insertion areas) and
its mean of a ground-truth score; the Spearman correlation over explainers of the two rankings. The
table gives the mean of the seeds' correlations with an interval over seeds. Seeds are never pooled
before ranking: each seed is one trained model, and its explainers are ranked on it.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from audiointerp.masks import MASK_NAMES
from audiointerp.report.tables import CONFIDENCE, LOWER_IS_BETTER, Table, _file_name, _label, _order, grouped, with_conditions

#: Faithfulness metrics scored per mask, in the table's order.
MASK_TRUST_METRICS: tuple[str, ...] = ("FF", "AI", "AD", "AG", "FidIn")
#: Faithfulness metrics of the attribution's ranking, one value per clip (no mask).
CLIP_TRUST_METRICS: tuple[str, ...] = ("deletion_auc", "insertion_auc")
#: The ground truth the metrics are checked against (higher is better for both).
GROUND_TRUTH_SCORES: tuple[str, ...] = ("relevance_mass", "auroc")
#: The reference explainers (chance, and the ground truth as an attribution): part of every ranking.
REFERENCE_EXPLAINERS: tuple[str, ...] = ("random", "oracle")
#: Fewer explainers than this in a seed give that seed no correlation (two only say which is first).
MIN_EXPLAINERS = 3
#: Seeds from which the interval is a percentile bootstrap over seeds; fewer give min-max.
MIN_BOOTSTRAP_SEEDS = 3


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of ``a`` and ``b`` (ties at average ranks); NaN when either is
    constant or they have fewer than 2 values."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 2:
        return float("nan")
    ra, rb = pd.Series(a).rank(method="average").to_numpy(), pd.Series(b).rank(method="average").to_numpy()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


def seed_interval(values: list[float], resamples: int, seed: int, key: str) -> tuple[float, float, float]:
    """Mean of the seeds' ``values`` (NaN dropped) and its interval over seeds: a percentile bootstrap
    at ``CONFIDENCE`` (seeded by ``seed`` and ``key``) from ``MIN_BOOTSTRAP_SEEDS`` seeds on, else
    min-max (NaN for one seed). All NaN for no values."""
    values = np.asarray([v for v in values if not np.isnan(v)], dtype=np.float64)
    nan = float("nan")
    if values.size == 0:
        return nan, nan, nan
    if values.size == 1:
        return float(values[0]), nan, nan
    if values.size < MIN_BOOTSTRAP_SEEDS:
        return float(values.mean()), float(values.min()), float(values.max())
    generator = np.random.default_rng([seed, zlib.crc32(key.encode())])
    means = values[generator.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(values.mean()), float(low), float(high)


def trust_tables(results: pd.DataFrame, resamples: int, seed: int) -> list[Table]:
    """``metric_trust`` tables, one per (data, feature, noise[, silence level][, setting]) whose runs
    have a ground-truth score: a row per metric (and mask), a column per ground-truth score, each cell
    the mean over seeds of Spearman's correlation over explainers between the explainers' means of
    the metric and of the score, oriented so that +1 means "ranks explainers as the ground truth
    does" (lower-is-better metrics, AD and the deletion area, are negated). Every explainer of the
    condition takes part, the references ``random`` and ``oracle`` too; a seed needs
    ``MIN_EXPLAINERS`` with both values. None without ground truth or with fewer explainers."""
    truths = [t for t in GROUND_TRUTH_SCORES if t in results.columns and results[t].notna().any()]
    if results.empty or not truths:
        return []
    results, conditions = with_conditions(results)
    fixed = [*conditions, "noise"]
    tables = []
    for frame in grouped(results, fixed):
        if not frame[truths].notna().any().any() or frame["explainer"].nunique() < MIN_EXPLAINERS:
            continue
        per_clip = frame.drop_duplicates(subset=["run", "sample"])  # clip scores repeat on every mask's row
        truth = per_clip.groupby(["seed", "explainer"])[truths].mean()
        # (row label, metric, mask or None, the metric's per (seed, explainer) means)
        rows = []
        masks = _order(frame["mask"], MASK_NAMES)
        for metric in MASK_TRUST_METRICS:
            if metric in frame.columns and frame[metric].notna().any():
                means = frame.groupby(["mask", "seed", "explainer"])[metric].mean()
                rows += [(f"{metric} / {mask}", metric, mask, means.loc[mask]) for mask in masks]
        for metric in CLIP_TRUST_METRICS:
            if metric in per_clip.columns and per_clip[metric].notna().any():
                rows.append((metric, metric, "", per_clip.groupby(["seed", "explainer"])[metric].mean()))
        if not rows:
            continue
        seeds = sorted(frame["seed"].unique())
        shown = [c for c in fixed if c != "setting" or str(frame[c].iloc[0])]
        name = _file_name(frame, shown)
        cells, counts, extra = {}, {}, {}
        for label, metric, mask, means in rows:
            sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
            cells[label], used_seeds, used_explainers = {}, set(), []
            for score in truths:
                per_seed = []
                for s in seeds:
                    pair = pd.concat([means.loc[s].rename("metric") if s in means.index.get_level_values(0)
                                      else pd.Series(dtype=float, name="metric"),
                                      truth.loc[s, score].rename("truth")], axis=1).dropna()
                    if len(pair) < MIN_EXPLAINERS:
                        continue
                    used_explainers.append(len(pair))
                    rho = spearman(sign * pair["metric"].to_numpy(), pair["truth"].to_numpy())
                    if not np.isnan(rho):  # NaN: the metric (or the score) ties every explainer
                        per_seed.append(rho)
                        used_seeds.add(s)
                cells[label][score] = seed_interval(per_seed, resamples, seed, f"metric_trust/{name}/{label}/{score}")
            counts[label] = len(used_seeds)
            n = sorted(set(used_explainers))
            extra[label] = {"metric": metric, "mask": mask,
                            "explainers": (str(n[0]) if len(n) == 1 else f"{n[0]}-{n[-1]}") if n else "0"}
        explainers = sorted(frame["explainer"].astype(str).unique())
        references = [e for e in REFERENCE_EXPLAINERS if e in explainers]
        anchors = (f", the reference{'s' if len(references) > 1 else ''} {' and '.join(references)} among them "
                   f"(anchoring the ranking: chance and the ground truth itself)") if references else ""
        lower = [m for m in (*MASK_TRUST_METRICS, *CLIP_TRUST_METRICS) if m in LOWER_IS_BETTER]
        interval = (f"{CONFIDENCE:.0%} percentile bootstrap over seeds, {resamples} resamples" if len(seeds) >= MIN_BOOTSTRAP_SEEDS
                    else "min-max over the seeds" if len(seeds) == 2 else "one seed, no interval")
        caption = (f"{_label(frame, shown)}: which metric to trust. Spearman correlation over explainers between "
                   f"ranking them by the metric's mean and by the ground-truth score's mean, computed per seed; "
                   f"mean over seeds [{interval}]. Oriented so that +1 = ranks the explainers as the ground truth "
                   f"does ({', '.join(lower)} negated: lower is better). {len(explainers)} explainers "
                   f"({', '.join(explainers)}){anchors}; {len(seeds)} seeds ({', '.join(map(str, seeds))}); a seed needs {MIN_EXPLAINERS} "
                   f"explainers; a metric that ties every explainer has none (–). CSV: n = seeds with a correlation, "
                   f"explainers = explainers ranked per seed")
        labels = [r[0] for r in rows]
        tables.append(Table("metric_trust", name, "metric / mask", labels, truths, cells, caption, counts, extra=extra))
    return tables
