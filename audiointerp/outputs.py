"""Everything a run writes, each file atomically (temporary file, then rename).

Layout under the run directory:
    metrics/<mask>.csv      one row per clip
    summary.csv             mean of each metric per mask, and how degenerate the mask's scores are
    attributions.npz        all attributions with clip ids, labels, predictions
    examples/<clip_id>/     original.wav, <mask>_masked.wav, <mask>_unmasked.wav, <mask>.png
    run.json                accuracies, timings, where the model came from
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from audiointerp.atomic import atomic_path
from audiointerp.data import ClipSet
from audiointerp.metrics import MASK_STATISTIC_NAMES, METRIC_NAMES, collapse
from audiointerp.pipeline import PREDICTION_COLUMNS, Example, RunResults

CLIP_COLUMNS = ("sample", "clip_id", "label", "predicted", "is_correct")
#: Per-clip values of one mask, after CLIP_COLUMNS, in metrics/<mask>.csv.
SCORE_COLUMNS = (*METRIC_NAMES, *MASK_STATISTIC_NAMES, *PREDICTION_COLUMNS)
#: summary.csv: per mask, the mean of each metric and of ``kept``, the share of ``degenerate``
#: masks, and the share of clips on the most common class of the masked / complementary inputs.
SUMMARY_COLUMNS = ("mask", *METRIC_NAMES, *MASK_STATISTIC_NAMES, "collapse_masked", "collapse_unmasked")


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)


def _number(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.6g}"


def write_metrics(run_dir: Path, clips: ClipSet, results: RunResults) -> Path:
    """metrics/<mask>.csv per mask; returns the metrics folder."""
    folder = Path(run_dir) / "metrics"
    labels = clips.labels.tolist()
    predicted = results.predicted.tolist()
    for mask_name, per_metric in results.metrics.items():
        columns = {name: per_metric[name].tolist() for name in SCORE_COLUMNS}
        rows = []
        for i, clip_id in enumerate(clips.clip_ids):
            rows.append([i, clip_id, labels[i], predicted[i], int(labels[i] == predicted[i])]
                        + [_number(columns[m][i]) for m in (*METRIC_NAMES, *MASK_STATISTIC_NAMES)]
                        + [int(columns[m][i]) for m in PREDICTION_COLUMNS])
        _write_csv(folder / f"{mask_name}.csv", [*CLIP_COLUMNS, *SCORE_COLUMNS], rows)
    return folder


def summarise(results: RunResults) -> dict[str, dict[str, float]]:
    """{mask: {column of SUMMARY_COLUMNS but "mask": value}}, what summary.csv and run.json hold."""
    summary = {}
    for mask_name, per_metric in results.metrics.items():
        row = {m: per_metric[m].double().mean().item() for m in (*METRIC_NAMES, *MASK_STATISTIC_NAMES)}
        row["collapse_masked"] = collapse(per_metric["predicted_masked"])
        row["collapse_unmasked"] = collapse(per_metric["predicted_unmasked"])
        summary[mask_name] = row
    return summary


def write_summary(run_dir: Path, summary: dict[str, dict[str, float]]) -> Path:
    """summary.csv: one row per mask, from :func:`summarise`."""
    rows = [[mask_name] + [_number(row[c]) for c in SUMMARY_COLUMNS[1:]] for mask_name, row in summary.items()]
    path = Path(run_dir) / "summary.csv"
    _write_csv(path, list(SUMMARY_COLUMNS), rows)
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
                # float WAV: a masked reconstruction may exceed full scale, and clipping would distort it
                sf.write(tmp, audio.numpy(), self.sample_rate, subtype="FLOAT")
        for name in example.masks:
            self._plot(folder / f"{name}.png", example, name)

    def _plot(self, path: Path, example: Example, mask_name: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        log_db = example.log_db[0].numpy()
        masked = example.masked[mask_name][0].numpy()
        mask = example.masks[mask_name][0].numpy()
        n_bins, n_frames = log_db.shape
        frequencies = self.feature.bin_frequencies().cpu().numpy()
        duration = float(self.feature.frame_times(n_frames)[-1])
        vmin, vmax = np.percentile(log_db, 1), log_db.max()
        figure, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=True, constrained_layout=True)
        panels = [("input (dB)", log_db, dict(vmin=vmin, vmax=vmax, cmap="magma")),
                  (f"mask: {mask_name}", mask, dict(vmin=0.0, vmax=1.0, cmap="viridis")),
                  ("masked input (dB)", masked, dict(vmin=vmin, vmax=vmax, cmap="magma"))]
        ticks = np.linspace(0, n_bins - 1, 6).round().astype(int)
        for axis, (title, image, style) in zip(axes, panels):
            shown = axis.imshow(image, origin="lower", aspect="auto", extent=(0, duration, -0.5, n_bins - 0.5), **style)
            axis.set_title(title)
            axis.set_xlabel("time (s)")
            figure.colorbar(shown, ax=axis)
        axes[0].set_yticks(ticks, [f"{frequencies[t]:.0f}" for t in ticks])
        axes[0].set_ylabel("frequency (Hz)")
        figure.suptitle(example.clip_id)
        with atomic_path(path) as tmp:
            figure.savefig(tmp, dpi=80)
        plt.close(figure)
