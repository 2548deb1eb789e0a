"""The reference's results tables, every cell a mean over clips with a bootstrap confidence interval,
written as Markdown, LaTeX (booktabs, best value in bold) and CSV.

Runs are pooled into one cell only when they differ in nothing but the seed (the report's
``setting`` column and the suffixes of ``explainer`` and the other run columns hold whatever else
differs; :mod:`audiointerp.report.collect`). A cell pooled over several seeds is the mean of the
seeds' means, and its interval a hierarchical bootstrap (:func:`hierarchical_interval`): seeds are
resampled, then clips within each resampled seed, so the spread between seeds (between trained
models) widens it, as it should; clips of one model are not independent draws of another's.
"""

from __future__ import annotations

import itertools
import re
import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from audiointerp.masks import MASK_NAMES
from audiointerp.report.collect import SANITY_COLUMNS

#: The reference's column order.
TABLE_METRICS: tuple[str, ...] = ("FF", "AI", "AG", "FidIn", "SPS", "AD", "COMP")
#: Scores of the attribution against the ground truth, tabled where runs have them.
LOCALIZATION_METRICS: tuple[str, ...] = ("relevance_mass", "relevance_rank", "pointing_game", "auroc")
#: Scores of the attribution itself with no mask (``clip_scores.csv``), tabled where runs have them.
CLIP_SCORE_METRICS: tuple[str, ...] = ("deletion_auc", "insertion_auc", "ig_completeness_error")
#: Lower is better for these; higher for every other metric.
LOWER_IS_BETTER: frozenset[str] = frozenset({"AD", "COMP", "deletion_auc", "ig_completeness_error", *SANITY_COLUMNS})
CONFIDENCE = 0.95


def bootstrap_interval(values: np.ndarray, resamples: int, seed: int, key: str) -> tuple[float, float, float]:
    """Mean of ``values`` (NaN dropped) and its percentile bootstrap interval at ``CONFIDENCE``.

    The generator is seeded with ``seed`` and ``key`` (the cell's name), so a cell's interval does
    not depend on which other cells a report has.

    Returns:
        (mean, low, high); all NaN for no values.
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    generator = np.random.default_rng([seed, zlib.crc32(key.encode())])
    means = values[generator.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(values.mean()), float(low), float(high)


def hierarchical_interval(groups: list[np.ndarray], resamples: int, seed: int,
                          key: str) -> tuple[float, float, float]:
    """Mean of the groups' means (a group: one seed's per-clip values; NaN dropped, empty groups
    left out) and its two-level percentile bootstrap interval at ``CONFIDENCE``: each resample draws
    as many groups as there are, with replacement, then each drawn group's clips with replacement.
    One group is :func:`bootstrap_interval` of its values. Seeded like it, by ``seed`` and ``key``.

    Returns:
        (mean, low, high); all NaN for no values.
    """
    groups = [g[~np.isnan(g)] for g in (np.asarray(g, dtype=np.float64) for g in groups)]
    groups = [g for g in groups if g.size]
    if len(groups) <= 1:
        return bootstrap_interval(groups[0] if groups else np.array([]), resamples, seed, key)
    generator = np.random.default_rng([seed, zlib.crc32(key.encode())])
    n_groups = len(groups)
    drawn = generator.integers(0, n_groups, size=(resamples, n_groups))  # (R, S) which seed fills each slot
    # each group's clip-resampled means for every slot it could fill: (S, R, S)
    inner = np.stack([g[generator.integers(0, g.size, size=(resamples, n_groups, g.size))].mean(axis=2)
                      for g in groups])
    means = np.take_along_axis(inner, drawn[None], axis=0)[0].mean(axis=1)  # (R,)
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(np.mean([g.mean() for g in groups])), float(low), float(high)


def kendalls_w(scores: np.ndarray) -> float:
    """Kendall's coefficient of concordance of ``scores`` (m raters x n objects: seeds x explainers),
    ranked within each rater (ties at average ranks, with the tie correction): 1 when every seed ranks
    the explainers alike, near 0 when the seeds' rankings are unrelated. NaN for fewer than 2 of
    either, or when every rater ties everything."""
    scores = np.asarray(scores, dtype=np.float64)
    m, n = scores.shape
    if m < 2 or n < 2 or np.isnan(scores).any():
        return float("nan")
    ranks = np.stack([pd.Series(row).rank(method="average").to_numpy() for row in scores])
    totals = ranks.sum(axis=0)
    spread = ((totals - totals.mean()) ** 2).sum()
    ties = sum(((counts ** 3) - counts).sum() for counts in (np.unique(row, return_counts=True)[1] for row in scores))
    denominator = m ** 2 * (n ** 3 - n) - m * ties
    return float(12 * spread / denominator) if denominator > 0 else float("nan")


def winner_agreement(scores: np.ndarray, lower_is_better: bool) -> float:
    """Share of pairs of seeds (rows of ``scores``, seeds x explainers) whose best explainers are the
    same (the same set, where a seed has ties). NaN for fewer than 2 seeds."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) < 2 or np.isnan(scores).any():
        return float("nan")
    best = [frozenset(np.flatnonzero(row == (row.min() if lower_is_better else row.max()))) for row in scores]
    pairs = list(itertools.combinations(best, 2))
    return float(np.mean([a == b for a, b in pairs]))


@dataclass
class Table:
    """One table: ``cells[row][metric] = (mean, low, high)``; ``caption`` says what was pooled."""

    kind: str
    name: str
    row_label: str
    rows: list[str]
    metrics: list[str]
    cells: dict[str, dict[str, tuple[float, float, float]]]
    caption: str
    counts: dict[str, int] = field(default_factory=dict)
    #: False for tables of statistics that are no score to win on (the seeds' agreement).
    mark_best: bool = True
    #: Further per-row columns of the CSV (after the row label): ``extra[row][column] = value``.
    extra: dict[str, dict[str, object]] = field(default_factory=dict)

    def best(self, metric: str) -> set[str]:
        """The rows with the best mean in ``metric`` (highest, lowest for ``LOWER_IS_BETTER``), ties
        included; none when every row has the same mean (nothing stands out)."""
        if not self.mark_best:
            return set()
        means = {row: self.cells[row][metric][0] for row in self.rows if not np.isnan(self.cells[row][metric][0])}
        if len(set(means.values())) < 2:
            return set()
        target = (min if metric in LOWER_IS_BETTER else max)(means.values())
        return {row for row, mean in means.items() if mean == target}


def _label(frame: pd.DataFrame, columns: list[str]) -> str:
    return ", ".join(str(frame[c].iloc[0]) if c == "setting" else f"{c}={frame[c].iloc[0]}" for c in columns)


def _file_name(frame: pd.DataFrame, fixed: list[str]) -> str:
    """The table's file name: its fixed values joined by ``_``, characters a file name should not
    hold replaced (``lmac[area=0.1]`` -> ``lmac-area=0.1``)."""
    name = "_".join(str(frame[c].iloc[0]).replace("]", "") for c in fixed)
    return re.sub(r"[^\w.=+-]+", "-", name).strip("-")


def _units(selected: pd.DataFrame, metric: str) -> list[np.ndarray]:
    """The per-clip values of ``metric`` in ``selected``, one array per seed, in seed order (runs that
    differ in nothing else, so runs of one seed are one model's clips)."""
    return [group[metric].to_numpy() for _, group in selected.groupby("seed", sort=True)]


def _order(values, preferred: tuple[str, ...] = ()) -> list[str]:
    present = list(dict.fromkeys(str(v) for v in values))
    return [v for v in preferred if v in present] + sorted(v for v in present if v not in preferred)


def _table(frame: pd.DataFrame, kind: str, fixed: list[str], row_column: str, metrics: list[str],
           resamples: int, seed: int, note: str = "") -> Table:
    rows = _order(frame[row_column], MASK_NAMES if row_column == "mask" else ())
    fixed = [c for c in fixed if c != "setting" or str(frame[c].iloc[0])]
    name = _file_name(frame, fixed)
    cells, counts = {}, {}
    for row in rows:
        selected = frame[frame[row_column].astype(str) == row]
        counts[row] = len(selected)
        cells[row] = {m: hierarchical_interval(_units(selected, m), resamples, seed, f"{kind}/{name}/{row}/{m}")
                      for m in metrics}
    n_seeds = frame["seed"].nunique()
    clips = sorted(set(counts.values()))
    clip_text = f"{clips[0]} clips" if len(clips) == 1 else f"{clips[0]}-{clips[-1]} clips"
    if n_seeds > 1:
        seeds = ", ".join(map(str, sorted(frame["seed"].unique())))
        caption = (f"{_label(frame, fixed)}{note}: mean of the seeds' means, {clip_text} per row, pooled over "
                   f"{n_seeds} seeds ({seeds}) [{CONFIDENCE:.0%} hierarchical bootstrap interval: seeds, then clips "
                   f"within each; {resamples} resamples]")
    else:
        caption = (f"{_label(frame, fixed)}{note}: mean over {clip_text} per row, "
                   f"[{CONFIDENCE:.0%} bootstrap interval, {resamples} resamples]")
    return Table(kind, name, row_column, rows, metrics, cells, caption, counts)


def _seed_tables(frame: pd.DataFrame, fixed: list[str], masks: list[str], metrics: list[str]) -> list[Table]:
    """Across seeds, per mask and metric, how stable the explainers' ranking is: Kendall's W of the
    seeds' rankings (``seed_ranking``) and the share of seed pairs that agree on the winner
    (``seed_winner``). Only seeds every explainer has are used; none without 2 seeds and 2 explainers."""
    fixed = [c for c in fixed if c != "setting" or str(frame[c].iloc[0])]
    explainers = sorted(frame["explainer"].astype(str).unique())
    seeds = sorted(set.intersection(*(set(frame.loc[frame["explainer"].astype(str) == e, "seed"]) for e in explainers)))
    if len(explainers) < 2 or len(seeds) < 2:
        return []
    frame = frame[frame["seed"].isin(seeds)]
    name = _file_name(frame, fixed)
    w_cells, agree_cells = {}, {}
    for mask in masks:
        rows = frame[frame["mask"] == mask]
        per_seed = rows.groupby(["seed", "explainer"])[metrics].mean()
        w_cells[mask], agree_cells[mask] = {}, {}
        for metric in metrics:
            grid = np.array([[per_seed.loc[(s, e), metric] if (s, e) in per_seed.index else np.nan for e in explainers]
                             for s in seeds])
            nan = float("nan")
            w_cells[mask][metric] = (kendalls_w(grid), nan, nan)
            agree_cells[mask][metric] = (winner_agreement(grid, metric in LOWER_IS_BETTER), nan, nan)
    label = _label(frame, fixed)
    about = f"{len(explainers)} explainers ({', '.join(explainers)}) over {len(seeds)} seeds ({', '.join(map(str, seeds))})"
    counts = {mask: len(seeds) for mask in masks}
    return [Table("seed_ranking", name, "mask", masks, metrics, w_cells,
                  f"{label}: Kendall's W of the explainers' ranking by each seed's mean, {about}; "
                  "1 = every seed ranks them alike", counts, mark_best=False),
            Table("seed_winner", name, "mask", masks, metrics, agree_cells,
                  f"{label}: share of pairs of seeds that agree on the best explainer, {about}", counts,
                  mark_best=False)]


def with_conditions(results: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """A copy of ``results`` with ``model``, ``silence_level`` and ``setting`` as text, and the columns
    that define a condition besides the explainer and the noise: data, feature, and the model, the
    silence level and ``setting`` where the report's runs differ in them."""
    results = results.copy()
    results["silence_level"] = results["silence_level"].astype(str)
    if "setting" not in results.columns:
        results["setting"] = ""
    results["setting"] = results["setting"].fillna("").astype(str)
    results["model"] = results["model"].fillna("").astype(str) if "model" in results.columns else ""
    conditions = ["data", "feature"] + [c for c in ("model", "silence_level", "setting") if results[c].nunique() > 1]
    return results, conditions


def grouped(frame: pd.DataFrame, fixed: list[str]):
    """``frame``'s groups by ``fixed``, in the order of their values as text."""
    for _, group in sorted(frame.groupby(fixed, sort=False), key=lambda item: tuple(map(str, item[0]))):
        yield group


def build_tables(results: pd.DataFrame, resamples: int, seed: int) -> list[Table]:
    """The reference's tables from the tidy per-clip table, in a fixed order:

    - ``condition``: per (data, feature, explainer, noise[, silence level]), one row per mask;
    - ``condition_correct`` / ``condition_incorrect``: the same on correctly / wrongly classified clips;
    - ``mask``: per (data, feature, noise, mask), the explainers compared;
    - ``noise``: per (data, feature, explainer, mask), the noise conditions compared;
    - ``seed_ranking`` / ``seed_winner``: per (data, feature, noise), where explainers share 2 or
      more seeds, how stable their ranking is across seeds, per mask and metric (:func:`kendalls_w`,
      :func:`winner_agreement`);
    - ``localization``: per (data, feature, noise), the explainers' scores against the ground truth
      (runs with evidence only; one row per clip, not per mask);
    - ``ranking``: per (data, feature, noise), the explainers' deletion and insertion areas (and IG's
      completeness error), which score the attribution's ranking with no mask (one row per clip);
    - ``sanity``: per (data, feature, noise), the explainers' sanity checks (runs with ``sanity=true``;
      one row per re-explained clip): rank correlation with the original map once the whole model is
      randomised, and for a random other class (lower: the map depends on them);
    - ``architecture`` / ``architecture_localization``: where runs differ in the model, per (data,
      noise, mask) / per (data, noise) every explainer on every model side by side (rows
      ``explainer · model``, with the feature where models were fed different ones); the second
      also holds the sanity checks' columns.
    The silence level and the ``setting`` column (every other setting runs differ in but the seed)
    are part of a condition only when the report's runs differ in them; cells pooled over seeds
    have hierarchical intervals (:func:`hierarchical_interval`).
    """
    if results.empty:
        return []
    results, conditions = with_conditions(results)
    tables: list[Table] = []

    per_condition = [*conditions, "explainer", "noise"]
    for group in grouped(results, per_condition):
        tables.append(_table(group, "condition", per_condition, "mask", list(TABLE_METRICS), resamples, seed))
    for correct, kind in ((1, "condition_correct"), (0, "condition_incorrect")):
        subset = results[results["is_correct"] == correct]
        for group in grouped(subset, per_condition):
            note = ", correctly classified clips" if correct else ", misclassified clips"
            tables.append(_table(group, kind, per_condition, "mask", list(TABLE_METRICS), resamples, seed, note))
    if results["explainer"].nunique() > 1:
        fixed = [*conditions, "noise", "mask"]
        for group in grouped(results, fixed):
            tables.append(_table(group, "mask", fixed, "explainer", list(TABLE_METRICS), resamples, seed))
        fixed = [*conditions, "noise"]
        for group in grouped(results, fixed):
            tables.extend(_seed_tables(group, fixed, _order(group["mask"], MASK_NAMES), list(TABLE_METRICS)))
    if results["noise"].nunique() > 1:
        fixed = [*conditions, "explainer", "mask"]
        for group in grouped(results, fixed):
            tables.append(_table(group, "noise", fixed, "noise", list(TABLE_METRICS), resamples, seed))
    present = [m for m in LOCALIZATION_METRICS if m in results.columns]
    if present:
        # the attribution-level scores repeat on every mask's row: one per clip is enough
        per_clip = results.dropna(subset=present, how="all").drop_duplicates(subset=["run", "sample"])
        fixed = [*conditions, "noise"]
        for group in grouped(per_clip, fixed):
            tables.append(_table(group, "localization", fixed, "explainer", present, resamples, seed))
    present = [m for m in CLIP_SCORE_METRICS if m in results.columns]
    if present:
        # the attribution's own scores also repeat on every mask's row
        per_clip = results.dropna(subset=present, how="all").drop_duplicates(subset=["run", "sample"])
        fixed = [*conditions, "noise"]
        for group in grouped(per_clip, fixed):
            shown = [m for m in present if group[m].notna().any()]
            tables.append(_table(group, "ranking", fixed, "explainer", shown, resamples, seed,
                                 note=" (the attribution's ranking, no mask: deletion and insertion areas)"))
    present = [m for m in SANITY_COLUMNS if m in results.columns and results[m].notna().any()]
    if present:
        # the sanity checks re-explained the first sanity_clips clips of each run, once per clip
        per_clip = results.dropna(subset=present, how="all").drop_duplicates(subset=["run", "sample"])
        fixed = [*conditions, "noise"]
        for group in grouped(per_clip, fixed):
            tables.append(_table(group, "sanity", fixed, "explainer", present, resamples, seed,
                                 note=" (the sanity checks' clips: rank correlation with the original map)"))
    if "model" in conditions:
        tables.extend(_architecture_tables(results, [c for c in conditions if c not in ("model", "feature")],
                                           resamples, seed))
    return tables


def _architecture_tables(results: pd.DataFrame, conditions: list[str], resamples: int, seed: int) -> list[Table]:
    """Every explainer on every model in one table, so that "is the best explainer the same on both
    architectures?" is read off one page: the faithfulness metrics per (conditions, noise, mask), and
    the scores against the ground truth and of the attribution's ranking per (conditions, noise)."""
    results = results.copy()
    label = results["explainer"] + " · " + results["model"]
    if results.groupby("model")["feature"].nunique().max() > 1 or results["feature"].nunique() > 1:
        label = label + " · " + results["feature"].astype(str)
    results["explainer · model"] = label
    tables = []
    fixed = [*conditions, "noise", "mask"]
    for group in grouped(results, fixed):
        tables.append(_table(group, "architecture", fixed, "explainer · model", list(TABLE_METRICS), resamples, seed))
    per_clip_metrics = [m for m in (*LOCALIZATION_METRICS, *CLIP_SCORE_METRICS[:2], *SANITY_COLUMNS)
                        if m in results.columns]
    if per_clip_metrics:
        per_clip = results.dropna(subset=per_clip_metrics, how="all").drop_duplicates(subset=["run", "sample"])
        fixed = [*conditions, "noise"]
        for group in grouped(per_clip, fixed):
            shown = [m for m in per_clip_metrics if group[m].notna().any()]
            tables.append(_table(group, "architecture_localization", fixed, "explainer · model", shown, resamples,
                                 seed, note=" (no mask: against the ground truth where there is one, the "
                                            "deletion and insertion areas, and the sanity checks' rank "
                                            "correlations on their clips)"))
    return tables


# --- formats ------------------------------------------------------------------------------------

def _number(value: float) -> str:
    if np.isnan(value):
        return "–"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}"


def _header(metric: str) -> str:
    return "Fid-In" if metric == "FidIn" else metric


def to_markdown(table: Table) -> str:
    """A GitHub Markdown table, mean [low, high] per cell, best mean per column in bold."""
    best = {m: table.best(m) for m in table.metrics}
    lines = [f"**{table.caption}**", "",
             "| " + " | ".join([table.row_label, *map(_header, table.metrics)]) + " |",
             "| --- |" + " ---: |" * len(table.metrics)]
    for row in table.rows:
        cells = []
        for m in table.metrics:
            mean, low, high = table.cells[row][m]
            text = _number(mean) if np.isnan(low) and np.isnan(high) else f"{_number(mean)} [{_number(low)}, {_number(high)}]"
            cells.append(f"**{text}**" if row in best[m] else text)
        lines.append("| " + " | ".join([row.replace("_", "\\_"), *cells]) + " |")
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    for plain, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                           ("$", r"\$"), ("{", r"\{"), ("}", r"\}")):
        text = text.replace(plain, escaped)
    return text


def to_latex(table: Table) -> str:
    """A booktabs ``table`` environment: mean with the interval in small type, best mean in bold."""
    best = {m: table.best(m) for m in table.metrics}
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             r"\begin{tabular}{l" + "r" * len(table.metrics) + "}", r"\toprule",
             " & ".join([_latex_escape(table.row_label), *(_latex_escape(_header(m)) for m in table.metrics)]) + r" \\",
             r"\midrule"]
    for row in table.rows:
        cells = []
        for m in table.metrics:
            mean, low, high = table.cells[row][m]
            value = _number(mean).replace("–", "--")
            value = rf"\textbf{{{value}}}" if row in best[m] else value
            interval = "" if np.isnan(low) else rf"\,{{\scriptsize[{_number(low)}, {_number(high)}]}}"
            cells.append(value + interval)
        lines.append(" & ".join([_latex_escape(row), *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{_latex_escape(table.caption)}}}",
              rf"\label{{tab:{table.kind}:{_latex_escape(table.name)}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_frame(table: Table) -> pd.DataFrame:
    """One row per table row: the row label, its clip count, and mean / low / high per metric."""
    records = []
    for row in table.rows:
        record = {table.row_label: row, **table.extra.get(row, {}), "n": table.counts[row]}
        for m in table.metrics:
            record[m], record[f"{m}_low"], record[f"{m}_high"] = table.cells[row][m]
        records.append(record)
    return pd.DataFrame.from_records(records)
