"""Find the runs under some folders and gather what they wrote into one tidy table."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from audiointerp.errors import AudioInterpError
from audiointerp.outputs import RUN_COLUMNS

#: Settings that define a condition; runs that differ only in ``seed`` are pooled (and counted).
CONDITION_COLUMNS: tuple[str, ...] = ("data", "feature", "explainer", "noise", "silence_level")
#: A run folder: Hydra writes this when the run starts, run.json when it ends.
_STARTED = Path(".hydra") / "config.yaml"
_REPORT_FOLDER = "report"


@dataclass
class Run:
    """One run folder: ``name`` is its path relative to the report's base folder (stable across
    machines); ``status`` is ``complete``, or what is missing."""

    path: Path
    name: str
    status: str
    settings: dict


def find_runs(paths: list[Path], base: Path) -> list[Run]:
    """Every run folder in or under ``paths`` (a run folder, a sweep folder, or a parent of them),
    sorted by name. A run is complete when it has run.json, summary.csv and metrics/.

    Raises:
        AudioInterpError: a PATH that does not exist, or no run under any of them.
    """
    found: dict[Path, None] = {}
    for path in paths:
        if not path.is_dir():
            raise AudioInterpError(f"report: {path} is not a folder (expected a run folder, a sweep folder or a parent of them)")
        for folder, subfolders, _ in os.walk(path):
            subfolders[:] = sorted(s for s in subfolders if s not in (_REPORT_FOLDER, ".hydra", "examples", "metrics"))
            folder = Path(folder)
            if (folder / _STARTED).is_file() or (folder / "run.json").is_file():
                found[folder.resolve()] = None
    if not found:
        raise AudioInterpError(f"report: no run folders (with .hydra/config.yaml or run.json) under {', '.join(map(str, paths))}")
    runs = []
    for folder in found:
        name = os.path.relpath(folder, base.resolve())
        missing = [f for f in ("run.json", "summary.csv", "metrics") if not (folder / f).exists()]
        settings: dict = {}
        if not missing:
            try:
                report = json.loads((folder / "run.json").read_text())
                settings = {**report["run"], "class_names": report.get("class_names")}
            except (KeyError, ValueError):
                missing = ["run identity in run.json (a run from before the report existed)"]
        runs.append(Run(folder, name, "complete" if not missing else "incomplete: no " + ", ".join(missing), settings))
    return sorted(runs, key=lambda run: run.name)


def per_clip_table(runs: list[Run]) -> pd.DataFrame:
    """One row per complete run x clip x mask: ``run``, the run's ``RUN_COLUMNS``, ``mask``, the
    per-clip columns of metrics/<mask>.csv, and the clip's localization.csv scores where the run
    has them. Rows in (run, mask file, sample) order."""
    frames = []
    for run in runs:
        if run.status != "complete":
            continue
        localization = None
        if (run.path / "localization.csv").is_file():
            localization = pd.read_csv(run.path / "localization.csv").drop(
                columns=["clip_id", "label", "predicted", "is_correct"])
        for csv_path in sorted((run.path / "metrics").glob("*.csv")):
            frame = pd.read_csv(csv_path)
            if localization is not None:
                frame = frame.merge(localization, on="sample", how="left", validate="one_to_one")
            frame.insert(0, "mask", csv_path.stem)
            for position, column in enumerate(RUN_COLUMNS):
                frame.insert(position, column, run.settings.get(column))
            frame.insert(0, "run", run.name)
            frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["run", *RUN_COLUMNS, "mask"])
    return pd.concat(frames, ignore_index=True)
