"""Everything a run writes, each file atomically (temporary file, then rename).

Layout under the run directory:
    metrics/<mask>.csv      one row per clip
    summary.csv             mean of each metric per mask
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
from audiointerp.metrics import METRIC_NAMES
from audiointerp.pipeline import Example, RunResults

CLIP_COLUMNS = ("sample", "clip_id", "label", "predicted", "is_correct")


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
        rows = []
        for i, clip_id in enumerate(clips.clip_ids):
            rows.append([i, clip_id, labels[i], predicted[i], int(labels[i] == predicted[i])]
                        + [_number(per_metric[m][i].item()) for m in METRIC_NAMES])
        _write_csv(folder / f"{mask_name}.csv", [*CLIP_COLUMNS, *METRIC_NAMES], rows)
    return folder


def write_summary(run_dir: Path, results: RunResults) -> Path:
    """summary.csv: one row per mask, the mean of each metric over clips."""
    rows = [[mask_name] + [_number(per_metric[m].float().mean().item()) for m in METRIC_NAMES]
            for mask_name, per_metric in results.metrics.items()]
    path = Path(run_dir) / "summary.csv"
    _write_csv(path, ["mask", *METRIC_NAMES], rows)
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
