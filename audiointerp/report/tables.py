"""The reference's results tables, every cell a mean over clips with a bootstrap confidence interval,
written as Markdown, LaTeX (booktabs, best value in bold) and CSV."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from audiointerp.masks import MASK_NAMES

#: The reference's column order.
TABLE_METRICS: tuple[str, ...] = ("FF", "AI", "AG", "FidIn", "SPS", "AD", "COMP")
#: Scores of the attribution against the ground truth, tabled where runs have them.
LOCALIZATION_METRICS: tuple[str, ...] = ("relevance_mass", "relevance_rank", "pointing_game", "auroc")
#: Lower is better for these; higher for every other metric.
LOWER_IS_BETTER: frozenset[str] = frozenset({"AD", "COMP"})
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

    def best(self, metric: str) -> set[str]:
        """The rows with the best mean in ``metric`` (highest, lowest for ``LOWER_IS_BETTER``), ties
        included; none when every row has the same mean (nothing stands out)."""
        means = {row: self.cells[row][metric][0] for row in self.rows if not np.isnan(self.cells[row][metric][0])}
        if len(set(means.values())) < 2:
            return set()
        target = (min if metric in LOWER_IS_BETTER else max)(means.values())
        return {row for row, mean in means.items() if mean == target}


def _label(frame: pd.DataFrame, columns: list[str]) -> str:
    return ", ".join(f"{c}={frame[c].iloc[0]}" for c in columns)


def _order(values, preferred: tuple[str, ...] = ()) -> list[str]:
    present = list(dict.fromkeys(str(v) for v in values))
    return [v for v in preferred if v in present] + sorted(v for v in present if v not in preferred)


def _table(frame: pd.DataFrame, kind: str, fixed: list[str], row_column: str, metrics: list[str],
           resamples: int, seed: int, note: str = "") -> Table:
    rows = _order(frame[row_column], MASK_NAMES if row_column == "mask" else ())
    name = "_".join(str(frame[c].iloc[0]) for c in fixed)
    cells, counts = {}, {}
    for row in rows:
        selected = frame[frame[row_column].astype(str) == row]
        counts[row] = len(selected)
        cells[row] = {m: bootstrap_interval(selected[m].to_numpy(), resamples, seed, f"{kind}/{name}/{row}/{m}")
                      for m in metrics}
    n_seeds = frame["seed"].nunique()
    clips = sorted(set(counts.values()))
    clip_text = f"{clips[0]} clips" if len(clips) == 1 else f"{clips[0]}-{clips[-1]} clips"
    seeds = f", pooled over {n_seeds} seeds" if n_seeds > 1 else ""
    caption = (f"{_label(frame, fixed)}{note}: mean over {clip_text} per row{seeds}, "
               f"[{CONFIDENCE:.0%} bootstrap interval, {resamples} resamples]")
    return Table(kind, name, row_column, rows, metrics, cells, caption, counts)


def build_tables(results: pd.DataFrame, resamples: int, seed: int) -> list[Table]:
    """The reference's tables from the tidy per-clip table, in a fixed order:

    - ``condition``: per (data, feature, explainer, noise[, silence level]), one row per mask;
    - ``condition_correct`` / ``condition_incorrect``: the same on correctly / wrongly classified clips;
    - ``mask``: per (data, feature, noise, mask), the explainers compared;
    - ``noise``: per (data, feature, explainer, mask), the noise conditions compared;
    - ``localization``: per (data, feature, noise), the explainers' scores against the ground truth
      (runs with evidence only; one row per clip, not per mask).
    The silence level is part of a condition only when the report's runs differ in it.
    """
    if results.empty:
        return []
    results = results.copy()
    results["silence_level"] = results["silence_level"].astype(str)
    conditions = ["data", "feature"] + (["silence_level"] if results["silence_level"].nunique() > 1 else [])
    tables: list[Table] = []

    def grouped(frame: pd.DataFrame, fixed: list[str]):
        for _, group in sorted(frame.groupby(fixed, sort=False), key=lambda item: tuple(map(str, item[0]))):
            yield group

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
            text = f"{_number(mean)} [{_number(low)}, {_number(high)}]"
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
        record = {table.row_label: row, "n": table.counts[row]}
        for m in table.metrics:
            record[m], record[f"{m}_low"], record[f"{m}_high"] = table.cells[row][m]
        records.append(record)
    return pd.DataFrame.from_records(records)
