"""The report's figures, its listening gallery and ``index.html``: one folder with relative links
that opens from disk."""

from __future__ import annotations

import hashlib
import html
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from audiointerp.masks import MASK_NAMES
from audiointerp.report.collect import Run
from audiointerp.report.tables import (
    LOWER_IS_BETTER,
    TABLE_METRICS,
    Table,
    _file_name,
    _header,
    _label,
    _number,
    grouped,
    with_conditions,
)

#: Masks whose example audio the gallery plays by default (every mask would be 14 x 3 players per clip).
GALLERY_MASKS: tuple[str, ...] = ("bin", "topK_30")
#: Gallery copies are scaled to this RMS (dBFS), less where that would clip, so that a masked input
#: is not judged by its loudness; the run's own WAVs stay as they were written.
LISTENING_RMS_DB = -23.0
_PEAK = 0.99


class _Figures:
    """``subplots`` and ``close`` as pyplot has them, without pyplot: each Figure gets its own Agg
    canvas, so writing a report sets no global matplotlib backend and leaves no figure open."""

    @staticmethod
    def subplots(*args, figsize=None, constrained_layout=False, **kwargs):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=figsize, constrained_layout=constrained_layout)
        FigureCanvasAgg(figure)
        return figure, figure.subplots(*args, **kwargs)

    @staticmethod
    def close(figure) -> None:
        """Nothing to release: no pyplot registry holds the figure."""


def _figure_settings() -> _Figures:
    return _Figures()


def _save(figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # no timestamp or version in the file, so a report is reproducible byte for byte
    figure.savefig(path, dpi=80, metadata={"Software": None})
    _figure_settings().close(figure)


def figures(results: pd.DataFrame, out: Path) -> list[tuple[str, str]]:
    """Per condition (data, feature, noise, and the model, silence level or other setting where runs
    differ in them: the tables' conditions, so two classifiers are never averaged into one picture):
    a heatmap of explainer x mask per metric, and the faithfulness-sparsity trade-off (FF and Fid-In
    against SPS, a point per explainer and mask).

    Returns:
        (title, path relative to ``out``) per figure, in order.
    """
    plt = _figure_settings()
    made = []
    if results.empty:
        return made
    results, conditions = with_conditions(results)
    fixed = [*conditions, "noise"]
    for group in grouped(results, fixed):
        shown = [c for c in fixed if c != "setting" or str(group[c].iloc[0])]  # as the tables name theirs
        name, label = _file_name(group, shown), _label(group, shown)
        means = group.groupby(["explainer", "mask"])[list(TABLE_METRICS)].mean()
        explainers = sorted(group["explainer"].astype(str).unique())
        masks = [m for m in MASK_NAMES if m in set(group["mask"])]
        figure, axes = plt.subplots(2, 4, figsize=(22, 3 + 0.9 * len(explainers)), constrained_layout=True)
        for axis, metric in zip(axes.flat, TABLE_METRICS):
            grid = np.array([[means.loc[(e, m), metric] if (e, m) in means.index else np.nan for m in masks]
                             for e in explainers])
            shown = axis.imshow(grid, aspect="auto", cmap="viridis_r" if metric in LOWER_IS_BETTER else "viridis")
            axis.set_xticks(range(len(masks)), masks, rotation=60, ha="right", fontsize=8)
            axis.set_yticks(range(len(explainers)), explainers, fontsize=8)
            better = "lower" if metric in LOWER_IS_BETTER else "higher"
            axis.set_title(f"{_header(metric)} ({better} is better)")
            figure.colorbar(shown, ax=axis)
        axes.flat[-1].axis("off")
        figure.suptitle(f"mean per explainer and mask: {label}")
        path = Path("figures") / f"heatmap_{name}.png"
        _save(figure, out / path)
        made.append((f"Metrics per explainer and mask ({label})", path.as_posix()))

        figure, axes = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
        for axis, metric in zip(axes, ("FF", "FidIn")):
            for explainer in explainers:
                points = means.loc[explainer].reindex(masks)
                axis.scatter(points["SPS"], points[metric], label=explainer, s=25)
            axis.set_xlabel("SPS (sparseness of the mask)")
            axis.set_ylabel(_header(metric))
            axis.grid(alpha=0.3)
        axes[1].legend(fontsize=8, loc="best")
        figure.suptitle(f"faithfulness against sparsity, a point per mask: {label}")
        path = Path("figures") / f"tradeoff_{name}.png"
        _save(figure, out / path)
        made.append((f"Faithfulness against sparsity ({label})", path.as_posix()))
    return made


def loudness_matched(audio: np.ndarray) -> np.ndarray:
    """``audio`` scaled to ``LISTENING_RMS_DB`` RMS, or to a peak of 0.99 where that is lower;
    silence stays silence."""
    audio = np.asarray(audio, dtype=np.float64)
    rms = float(np.sqrt(np.mean(audio ** 2))) if audio.size else 0.0
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if rms < 1e-7:
        return np.zeros_like(audio)
    gain = min(10 ** (LISTENING_RMS_DB / 20) / rms, _PEAK / peak)
    return audio * gain


def _run_id(run: Run) -> str:
    return hashlib.sha1(run.name.encode()).hexdigest()[:10]


def gallery(runs: list[Run], results: pd.DataFrame, out: Path, masks: tuple[str, ...] = GALLERY_MASKS) -> list[dict]:
    """Copy each example clip's mask figures and loudness-matched audio into ``out/gallery``.

    Returns:
        One entry per (run, example clip): labels and, per mask, the figure and audio paths
        relative to ``out``.
    """
    entries = []
    for run in runs:
        examples = run.path / "examples"
        if run.status != "complete" or not examples.is_dir():
            continue
        class_names = run.settings.get("class_names") or []
        rows = results[(results["run"] == run.name) & (results["mask"] == masks[0])] if masks else results.iloc[0:0]
        for clip in sorted(p for p in examples.iterdir() if p.is_dir()):
            folder = Path("gallery") / _run_id(run) / clip.name
            clip_rows = rows[rows["clip_id"] == clip.name]
            label = predicted = None
            if len(clip_rows):
                label, predicted = int(clip_rows["label"].iloc[0]), int(clip_rows["predicted"].iloc[0])
            def name(i):
                return (class_names[i] if i is not None and 0 <= i < len(class_names) else i)  # -1: no label
            entry = {"run": run.name, "settings": run.settings, "clip_id": clip.name, "label": name(label),
                     "predicted": name(predicted), "original": None, "masks": []}
            if (clip / "original.wav").is_file():
                entry["original"] = _listening_copy(clip / "original.wav", out / folder / "original.wav", out)
            for mask in masks:
                if not (clip / f"{mask}.png").is_file():
                    continue
                (out / folder).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(clip / f"{mask}.png", out / folder / f"{mask}.png")
                entry["masks"].append({
                    "mask": mask, "figure": (folder / f"{mask}.png").as_posix(),
                    "masked": _listening_copy(clip / f"{mask}_masked.wav", out / folder / f"{mask}_masked.wav", out),
                    "unmasked": _listening_copy(clip / f"{mask}_unmasked.wav", out / folder / f"{mask}_unmasked.wav", out)})
            entries.append(entry)
    return entries


def _listening_copy(source: Path, target: Path, out: Path) -> str | None:
    if not source.is_file():
        return None
    audio, rate = sf.read(source, dtype="float64")
    target.parent.mkdir(parents=True, exist_ok=True)
    sf.write(target, loudness_matched(audio), rate, subtype="PCM_16")
    return target.relative_to(out).as_posix()


# --- index.html -----------------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1500px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
td.best { font-weight: bold; background: #eef6ee; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: 0.3em; }
.interval { color: #777; font-size: 0.85em; }
img { max-width: 100%; }
.clip { border-top: 2px solid #ccc; padding-top: 0.8em; margin-top: 1.2em; }
.mask { display: inline-block; vertical-align: top; margin: 0.5em 1em 0.5em 0; max-width: 720px; }
.players div { margin: 0.2em 0; } .players span { display: inline-block; width: 7em; }
.status-bad { color: #b00; }
details { margin: 0.3em 0; }
"""


def _html_table(table: Table, links: dict[str, str]) -> str:
    best = {m: table.best(m) for m in table.metrics}
    head = "".join(f"<th>{html.escape(_header(m))}</th>" for m in table.metrics)
    body = []
    for row in table.rows:
        cells = []
        for m in table.metrics:
            mean, low, high = table.cells[row][m]
            css = ' class="best"' if row in best[m] else ""
            interval = "" if np.isnan(low) and np.isnan(high) else \
                f" <span class=\"interval\">[{_number(low)}, {_number(high)}]</span>"
            cells.append(f"<td{css}>{_number(mean)}{interval}</td>")
        body.append(f"<tr><td>{html.escape(row)}</td>{''.join(cells)}</tr>")
    files = " ".join(f'<a href="{html.escape(path)}">{kind}</a>' for kind, path in links.items())
    return (f"<table><caption>{html.escape(table.caption)} ({files})</caption>"
            f"<thead><tr><th>{html.escape(table.row_label)}</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def _audio(path: str | None, label: str) -> str:
    if path is None:
        return ""
    return f'<div><span>{label}</span><audio controls preload="metadata" src="{html.escape(path)}"></audio></div>'


_KIND_TITLES = {
    "condition": "Per condition: one row per mask",
    "condition_correct": "Per condition, correctly classified clips",
    "condition_incorrect": "Per condition, misclassified clips",
    "mask": "Per mask: the explainers compared",
    "noise": "Per explainer and mask: the noise conditions compared",
    "localization": "Against the ground truth (synthetic data): the explainers compared",
    "ranking": "The attribution's ranking, no mask: deletion and insertion areas",
    "sanity": "Sanity under randomisation: rank correlation with the original map (lower: it depends on the "
              "weights, and on the class)",
    "architecture": "Across classifiers: every explainer on every model, per mask",
    "architecture_localization": "Across classifiers: against the ground truth, the curve areas and the sanity "
                                 "checks",
    "seed_ranking": "Across seeds: how alike the seeds rank the explainers (Kendall's W)",
    "seed_winner": "Across seeds: how often two seeds agree on the best explainer",
    "metric_trust": "Which metric to trust: Spearman over explainers between each metric's ranking and the "
                    "ground truth's (per seed, mean over seeds)",
}


def index_html(runs: list[Run], tables: list[Table], table_files: dict[int, dict[str, str]],
               figure_list: list[tuple[str, str]], entries: list[dict], n_rows: int) -> str:
    """The page, as a string; every link is relative to the report folder."""
    complete = [r for r in runs if r.status == "complete"]
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>audiointerp report</title>"
             f"<style>{_STYLE}</style></head><body>",
             "<h1>audiointerp report</h1>",
             f"<p>{len(complete)} complete runs of {len(runs)} found; {n_rows} rows (run × clip × mask) in "
             f'<a href="results.csv">results.csv</a>. Best mean per column in bold '
             f"(highest, lowest for {', '.join(sorted(LOWER_IS_BETTER))}); "
             "intervals are 95 % bootstrap intervals of the mean over clips (hierarchical, seeds then clips, "
             "where a row pools seeds). Runs that differ in any setting but the seed are never pooled: the "
             "setting is in the explainer's (or noise's, ...) name or the table's caption.</p>",
             "<h2>Runs</h2><table><thead><tr><th>run</th><th>explainer</th><th>feature</th><th>data</th><th>noise</th>"
             "<th>seed</th><th>setting</th><th>status</th></tr></thead><tbody>"]
    for run in runs:
        css = "" if run.status == "complete" else ' class="status-bad"'
        values = "".join(f"<td>{html.escape(str(run.settings.get(k, '')))}</td>"
                         for k in ("explainer", "feature", "data", "noise", "seed", "setting"))
        parts.append(f"<tr><td>{html.escape(run.name)}</td>{values}<td{css}>{html.escape(run.status)}</td></tr>")
    parts.append("</tbody></table>")

    if figure_list:
        parts.append("<h2>Figures</h2>")
        for title, path in figure_list:
            parts.append(f'<h3>{html.escape(title)}</h3><img src="{html.escape(path)}" alt="{html.escape(title)}">')

    kinds = list(dict.fromkeys(t.kind for t in tables))
    if kinds:
        parts.append("<h2>Tables</h2>")
    for kind in kinds:
        parts.append(f"<h3>{html.escape(_KIND_TITLES.get(kind, kind))}</h3>")
        for index, table in enumerate(tables):
            if table.kind == kind:
                parts.append(_html_table(table, table_files[index]))

    if entries:
        parts.append("<h2>Listening gallery</h2><p>Audio is loudness-matched for listening (RMS "
                     f"{LISTENING_RMS_DB:g} dBFS, less where that would clip); the runs' own WAVs are unchanged.</p>")
    for entry in entries:
        settings = entry["settings"]
        parts.append(f'<div class="clip"><h3>{html.escape(entry["clip_id"])}</h3>'
                     f"<p>true class: <b>{html.escape(str(entry['label']))}</b>, predicted: "
                     f"<b>{html.escape(str(entry['predicted']))}</b>; explainer <b>{html.escape(str(settings.get('explainer')))}</b>, "
                     f"feature {html.escape(str(settings.get('feature')))}, noise {html.escape(str(settings.get('noise')))} "
                     f"(run {html.escape(entry['run'])})</p>")
        for item in entry["masks"]:
            parts.append(f'<div class="mask"><b>mask {html.escape(item["mask"])}</b><br>'
                         f'<img src="{html.escape(item["figure"])}" alt="{html.escape(entry["clip_id"])} {html.escape(item["mask"])}">'
                         f'<div class="players">{_audio(entry["original"], "original")}{_audio(item["masked"], "masked")}'
                         f'{_audio(item["unmasked"], "complement")}</div></div>')
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
