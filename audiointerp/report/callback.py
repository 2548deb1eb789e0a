"""Writes the report into the sweep folder when a multirun ends (``hydra.callbacks.report``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from audiointerp.report.build import DEFAULT_RESAMPLES, DEFAULT_SEED, write_report


class WriteReport(Callback):
    """``on_multirun_end``: ``python -m audiointerp.report <sweep dir>``, with the same defaults, so
    running that command again reproduces the folder byte for byte."""

    def __init__(self, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> None:
        self.resamples = resamples
        self.seed = seed

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        index = write_report([sweep], sweep / "report", resamples=self.resamples, seed=self.seed)
        print(f"report: {index.resolve()}")
