"""Everything a run writes, each file atomically (temporary file, then rename).

Layout under the run directory:
    metrics/<mask>.csv      one row per clip
    localization.csv        one row per clip: the attribution against the ground-truth evidence
                            (only for data with evidence)
    clip_scores.csv         one row per clip: scores of the attribution that need no mask,
                            deletion_auc and insertion_auc (its ranking, audiointerp.curves), and
                            ig_completeness_error where Integrated Gradients ran
    sanity.csv              one row per clip and randomisation step (only with sanity=true)
    summary.csv             mean of each metric per mask, and how degenerate the mask's scores are
    attributions.npz        all attributions with clip ids, labels, predictions
    examples/<clip_id>/     original.wav, <mask>_masked.wav, <mask>_unmasked.wav, <mask>.png
    run.json                accuracies, per-mask collapse, localisation and sanity means: the
                            same bytes however the run went (interrupted, model from the cache)
    provenance.json         how this run went: where the model came from, timings, resumed batches
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy.io import wavfile

from audiointerp.atomic import atomic_path
from audiointerp.curves import CURVE_NAMES
from audiointerp.data import ClipSet
from audiointerp.localization import ATTRIBUTION_SCORE_NAMES, MASK_SCORE_NAMES
from audiointerp.metrics import AUDIO_METRIC_NAMES, MASK_STATISTIC_NAMES, METRIC_NAMES, collapse
from audiointerp.pipeline import PREDICTION_COLUMNS, Example, RunResults

CLIP_COLUMNS = ("sample", "clip_id", "label", "predicted", "is_correct")
#: Per-clip values of one mask, after CLIP_COLUMNS, in metrics/<mask>.csv, in this order. The
#: localisation scores (binary masks on data with evidence) and the ``_audio`` metrics
#: (audio_metrics=true) are written only where computed: absent, not zero, elsewhere.
SCORE_COLUMNS = (*METRIC_NAMES, *MASK_STATISTIC_NAMES, *MASK_SCORE_NAMES, *AUDIO_METRIC_NAMES, *PREDICTION_COLUMNS)
#: Per-clip scores of the attribution itself, in clip_scores.csv, in this order where computed: the
#: deletion and insertion areas (every run) and IG's completeness error (explainer=integrated_gradients).
CLIP_SCORE_NAMES = (*CURVE_NAMES, "ig_completeness_error")
#: summary.csv: per mask, the mean of each score column but the predictions (NaN-skipping for
#: localisation scores, which are undefined on some clips), the share of ``degenerate`` masks, the
#: share of clips on the most common class of the masked / complementary inputs, and the means of
#: the attribution's localisation scores and of its ``CLIP_SCORE_NAMES`` (the same in every row:
#: they come before any mask).
SUMMARY_COLUMNS = ("mask", *METRIC_NAMES, *MASK_STATISTIC_NAMES, *MASK_SCORE_NAMES, *AUDIO_METRIC_NAMES,
                   "collapse_masked", "collapse_unmasked", *ATTRIBUTION_SCORE_NAMES, *CLIP_SCORE_NAMES)
#: What a run is, first in summary.csv and under "run" in run.json, so results can be gathered
#: without parsing Hydra's overrides: the config group choices, the silence level, the seed.
RUN_COLUMNS = ("explainer", "model", "feature", "data", "noise", "mask_set", "silence_level", "seed")
_MEAN_COLUMNS = (*METRIC_NAMES, *MASK_STATISTIC_NAMES, *MASK_SCORE_NAMES, *AUDIO_METRIC_NAMES)


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)


def _number(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.6g}"


def write_metrics(run_dir: Path, clips: ClipSet, results: RunResults) -> Path:
    """metrics/<mask>.csv per mask, with the ``SCORE_COLUMNS`` computed for it; returns the folder."""
    folder = Path(run_dir) / "metrics"
    for mask_name, per_metric in results.metrics.items():
        columns = [c for c in SCORE_COLUMNS if c in per_metric]
        values = {c: per_metric[c].tolist() for c in columns}
        rows = [_clip_cells(clips, results, i)
                + [int(values[c][i]) if c in PREDICTION_COLUMNS else _number(values[c][i]) for c in columns]
                for i in range(len(clips))]
        _write_csv(folder / f"{mask_name}.csv", [*CLIP_COLUMNS, *columns], rows)
    return folder


def _clip_cells(clips: ClipSet, results: RunResults, i: int) -> list[Any]:
    """The ``CLIP_COLUMNS`` of clip ``i``; ``is_correct`` is empty for a clip without a label (-1):
    unknown, not wrong."""
    label, predicted = int(clips.labels[i]), int(results.predicted[i])
    return [i, clips.clip_ids[i], label, predicted, int(label == predicted) if label >= 0 else ""]


def percent(accuracy: float | None) -> str:
    """An accuracy for the console: ``87.50%``, or ``n/a (no labels)`` for None (unlabelled clips)."""
    return "n/a (no labels)" if accuracy is None else f"{accuracy:.2%}"


def write_localization(run_dir: Path, clips: ClipSet, results: RunResults) -> Path | None:
    """localization.csv: ``ATTRIBUTION_SCORE_NAMES`` per clip; nothing for clips without evidence."""
    if not results.localization:
        return None
    values = {c: results.localization[c].tolist() for c in ATTRIBUTION_SCORE_NAMES}
    rows = [_clip_cells(clips, results, i) + [_number(values[c][i]) for c in ATTRIBUTION_SCORE_NAMES]
            for i in range(len(clips))]
    path = Path(run_dir) / "localization.csv"
    _write_csv(path, [*CLIP_COLUMNS, *ATTRIBUTION_SCORE_NAMES], rows)
    return path


def write_clip_scores(run_dir: Path, clips: ClipSet, results: RunResults) -> Path | None:
    """clip_scores.csv: the ``CLIP_SCORE_NAMES`` computed, per clip; nothing when none were."""
    columns = [c for c in CLIP_SCORE_NAMES if c in results.clip_scores]
    if not columns:
        return None
    values = {c: results.clip_scores[c].tolist() for c in columns}
    rows = [_clip_cells(clips, results, i) + [_number(values[c][i]) for c in columns] for i in range(len(clips))]
    path = Path(run_dir) / "clip_scores.csv"
    _write_csv(path, [*CLIP_COLUMNS, *columns], rows)
    return path


def clip_score_means(results: RunResults) -> dict[str, float]:
    """Mean of each of the run's ``CLIP_SCORE_NAMES`` over the clips where it is defined (an IG clip
    whose logit does not change has no completeness error)."""
    return {c: _mean(results.clip_scores[c], skip_nan=True) for c in CLIP_SCORE_NAMES if c in results.clip_scores}


def _mean(values, skip_nan: bool) -> float:
    values = values.double()
    return (values.nanmean() if skip_nan else values.mean()).item()


def localization_means(results: RunResults) -> dict[str, float]:
    """Mean of each attribution-level localisation score over the clips where it is defined; {} without evidence."""
    return {c: _mean(v, skip_nan=True) for c, v in results.localization.items()}


def summarise(results: RunResults) -> dict[str, dict[str, float]]:
    """{mask: {column of SUMMARY_COLUMNS but "mask": value}} for the columns computed, what
    summary.csv and run.json hold."""
    attribution_level = {**localization_means(results), **clip_score_means(results)}
    summary = {}
    for mask_name, per_metric in results.metrics.items():
        row = {c: _mean(per_metric[c], skip_nan=c in MASK_SCORE_NAMES) for c in _MEAN_COLUMNS if c in per_metric}
        row["collapse_masked"] = collapse(per_metric["predicted_masked"])
        row["collapse_unmasked"] = collapse(per_metric["predicted_unmasked"])
        summary[mask_name] = {c: (row | attribution_level)[c] for c in SUMMARY_COLUMNS[1:] if c in row | attribution_level}
    return summary


def write_summary(run_dir: Path, summary: dict[str, dict[str, float]], run: dict[str, Any]) -> Path:
    """summary.csv: one row per mask, from :func:`summarise`, after the ``RUN_COLUMNS`` of ``run``;
    a column computed for some masks only (IoU of the binary masks) is blank for the others."""
    present = [c for c in SUMMARY_COLUMNS[1:] if any(c in row for row in summary.values())]
    identity = ["" if run[c] is None else run[c] for c in RUN_COLUMNS]
    rows = [identity + [mask_name] + [_number(row[c]) if c in row else "" for c in present]
            for mask_name, row in summary.items()]
    path = Path(run_dir) / "summary.csv"
    _write_csv(path, [*RUN_COLUMNS, "mask", *present], rows)
    return path


def write_sanity(run_dir: Path, rows: list) -> Path:
    """sanity.csv: one row per clip and step of :func:`audiointerp.sanity.randomisation_checks`."""
    from audiointerp.sanity import SANITY_COLUMNS

    path = Path(run_dir) / "sanity.csv"
    _write_csv(path, list(SANITY_COLUMNS),
               [[r.step, r.randomised, r.sample, r.clip_id, r.target, _number(r.spearman), _number(r.ssim),
                 _number(r.spearman_signed)] for r in rows])
    return path


def write_attributions(run_dir: Path, clips: ClipSet, results: RunResults) -> Path:
    """attributions.npz: attributions (N, 1, F, T), probabilities (N, C), labels, predicted, clip_ids."""
    path = Path(run_dir) / "attributions.npz"
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, attributions=results.attributions.numpy(),
                                probabilities=results.probabilities.numpy(), labels=clips.labels.numpy(),
                                predicted=results.predicted.numpy(), clip_ids=np.array(clips.clip_ids))
    return path


def finished(run_dir: Path, run_sha256: str) -> bool:
    """Whether ``run_dir`` holds the complete results of the run identified by ``run_sha256``
    (``audiointerp.resume.run_sha256``; run.json, written last, records it)."""
    try:
        return json.loads((Path(run_dir) / "run.json").read_text()).get("run_sha256") == run_sha256
    except (OSError, ValueError, AttributeError):
        return False


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


class ExampleWriter:
    """Writes the WAVs and PNGs of one example clip; the pipeline's ``on_example`` callback."""

    def __init__(self, run_dir: Path, feature, sample_rate: int):
        self.folder = Path(run_dir) / "examples"
        self.feature = feature
        self.sample_rate = sample_rate

    def __call__(self, example: Example) -> None:
        folder = self.folder / example.clip_id
        for name, audio in example.audio.items():
            with atomic_path(folder / f"{name}.wav") as tmp:
                # float WAV: a masked reconstruction may exceed full scale, and clipping would distort it.
                # scipy's writer, not libsndfile's: that one adds a PEAK chunk stamped with the time
                # of writing, and the same run would not give the same bytes twice.
                wavfile.write(tmp, self.sample_rate, audio.numpy().astype(np.float32))
        for name in example.masks:
            self._plot(folder / f"{name}.png", example, name)

    def _plot(self, path: Path, example: Example, mask_name: str) -> None:
        log_db = example.log_db[0].numpy()
        vmin, vmax = np.percentile(log_db, 1), log_db.max()
        figure = spectrogram_figure(self.feature, [
            (f"input ({self.feature.unit})", log_db, dict(vmin=vmin, vmax=vmax, cmap="magma")),
            (f"mask: {mask_name}", example.masks[mask_name][0].numpy(), dict(vmin=0.0, vmax=1.0, cmap="viridis")),
            (f"masked input ({self.feature.unit})", example.masked[mask_name][0].numpy(), dict(vmin=vmin, vmax=vmax, cmap="magma"))],
            title=example.clip_id)
        with atomic_path(path) as tmp:
            figure.savefig(tmp, dpi=80)


def spectrogram_figure(feature, panels: list[tuple[str, np.ndarray, dict[str, Any]]], title: str):
    """A matplotlib Figure of (F, T) images side by side on ``feature``'s time and frequency axes.

    ``panels``: (title, (F, T) array, ``imshow`` keywords) each. The Figure is made without pyplot
    (its own Agg canvas), so drawing or saving it sets no global backend and leaves no figure open.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_bins, n_frames = panels[0][1].shape
    frequencies = feature.bin_frequencies().cpu().numpy()
    duration = float(feature.frame_times(n_frames)[-1])
    figure = Figure(figsize=(5 * len(panels), 4), constrained_layout=True)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    ticks = np.linspace(0, n_bins - 1, 6).round().astype(int)
    for axis, (name, image, style) in zip(axes, panels):
        shown = axis.imshow(image, origin="lower", aspect="auto", extent=(0, duration, -0.5, n_bins - 0.5), **style)
        axis.set_title(name)
        axis.set_xlabel("time (s)")
        figure.colorbar(shown, ax=axis)
    axes[0].set_yticks(ticks, [f"{frequencies[t]:.0f}" for t in ticks])
    axes[0].set_ylabel("frequency (Hz)")
    figure.suptitle(title)
    return figure
