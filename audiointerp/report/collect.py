"""Find the runs under some folders and gather what they wrote into one tidy table."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from audiointerp.errors import AudioInterpError
from audiointerp.outputs import RUN_COLUMNS
from audiointerp.resume import INPUT_PATH_KEYS, NO_RESULT_KEYS
from audiointerp.sanity import RANDOM_LOGIT_STEP

#: Config keys (dotted; a key names its whole subtree) whose values never set a run apart in the
#: report: the seed (pooled, as an axis of its own), what changes no result (where caches live,
#: shards), input paths (a folder moved is the same data; the run's identity holds their content),
#: what only adds outputs (examples, sanity checks, the audio-domain columns), how fast it runs, and
#: what the ``RUN_COLUMNS`` already name (the mask set, the silence level).
IGNORED_SETTINGS: tuple[str, ...] = ("seed", "hydra", "n_examples", "device", "eval_batch_size", "channels_last",
                                     "sanity", "sanity_clips", "audio_metrics", "mask.names", "mask.silence_level",
                                     "explainer.internal_batch_size", "explainer.background_batch",
                                     "explainer.perturbations_per_eval", "explainer.samples_per_batch",
                                     *NO_RESULT_KEYS, *INPUT_PATH_KEYS)
#: Config groups named by a run column: settings under them that differ between runs of the same
#: option are written into that column (``lmac[area=0.1]``); any other differing setting goes into
#: the ``setting`` column (``model.width=0.125``), which every table is grouped by.
GROUP_COLUMNS: tuple[str, ...] = ("explainer", "model", "noise", "feature", "data")
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
    #: The saved config (``.hydra/config.yaml``, interpolations unresolved), flattened to dotted keys,
    #: less :data:`IGNORED_SETTINGS`; empty for a run without it.
    config: dict = field(default_factory=dict)


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
        runs.append(Run(folder, name, "complete" if not missing else "incomplete: no " + ", ".join(missing), settings,
                        saved_settings(folder) if not missing else {}))
    return sorted(runs, key=lambda run: run.name)


def _ignored(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in IGNORED_SETTINGS)


def _flatten(node, prefix: str = "") -> dict[str, str]:
    if isinstance(node, dict):
        flat = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: json.dumps(node) if isinstance(node, (list, type(None), bool)) else str(node)}


def saved_settings(folder: Path) -> dict[str, str]:
    """``{dotted key: value as text}`` of the run's ``.hydra/config.yaml`` less :data:`IGNORED_SETTINGS`.

    Interpolations stay unresolved (``${seed}``): a value that follows another setting differs only
    where that setting does, and is not counted twice. {} when the file is missing or unreadable.
    """
    try:
        config = OmegaConf.to_container(OmegaConf.load(folder / _STARTED), resolve=False)
    except Exception:  # noqa: BLE001 - a run without a readable config is compared by run.json alone
        return {}
    return {k: v for k, v in _flatten(config).items() if not _ignored(k)}


def differing_settings(runs: list[Run]) -> list[str]:
    """Dotted keys whose values differ between complete runs that share every ``RUN_COLUMNS`` value
    but the seed: the settings those runs would otherwise be pooled over. Sorted."""
    by_condition: dict[tuple, list[Run]] = {}
    for run in runs:
        if run.status == "complete":
            key = tuple(str(run.settings.get(c)) for c in RUN_COLUMNS if c != "seed")
            by_condition.setdefault(key, []).append(run)
    differing = set()
    for group in by_condition.values():
        keys = set().union(*(r.config for r in group))
        differing |= {k for k in keys if len({r.config.get(k, "<unset>") for r in group}) > 1}
    return sorted(differing)


def label_settings(runs: list[Run]) -> list[str]:
    """Give every complete run's ``settings`` the differing settings (:func:`differing_settings`) so
    no table pools them: those under a :data:`GROUP_COLUMNS` group into that column's value
    (``explainer=lmac[area=0.1]``), the rest into ``setting`` (``model.width=0.125, precision=bf16``;
    empty when none). Returns the differing keys."""
    differing = differing_settings(runs)
    complete = [run for run in runs if run.status == "complete"]
    # a group's setting names the runs of an option it varies for (lmac's area, not saliency's)
    values: dict[tuple[str, str], set[str]] = {}
    for run in complete:
        for key in differing:
            group = key.split(".", 1)[0]
            if group in GROUP_COLUMNS:
                values.setdefault((str(run.settings.get(group)), key), set()).add(run.config.get(key, "<unset>"))
    for run in complete:
        rest = []
        suffixes: dict[str, list[str]] = {c: [] for c in GROUP_COLUMNS}
        for key in differing:
            group = key.split(".", 1)[0]
            if group in GROUP_COLUMNS:
                if len(values[(str(run.settings.get(group)), key)]) > 1:
                    suffixes[group].append(f"{key.split('.', 1)[1]}={run.config.get(key, '<unset>')}")
            else:
                rest.append(f"{key}={run.config.get(key, '<unset>')}")
        for column, parts in suffixes.items():
            if parts:
                run.settings[column] = f"{run.settings.get(column)}[{','.join(parts)}]"
        run.settings["setting"] = ", ".join(rest)
    return differing


#: Per-clip files beside metrics/ whose columns join every mask's rows of their clip: the
#: attribution against the ground truth, and its mask-free scores (deletion and insertion areas,
#: IG's completeness error).
CLIP_FILES: tuple[str, ...] = ("localization.csv", "clip_scores.csv")


#: The sanity checks' per-clip scores (from ``sanity.csv``, first ``sanity_clips`` clips only): the rank
#: correlation of the clip's attribution with the original once the whole cascade is randomised
#: (``sanity_cascade``), and for a random other class (``sanity_random_logit``). Lower: the map
#: depends on the weights and on the class, as it should.
SANITY_COLUMNS: tuple[str, ...] = ("sanity_cascade", "sanity_random_logit")


def sanity_per_clip(folder: Path) -> pd.DataFrame | None:
    """``sample`` and :data:`SANITY_COLUMNS` per clip the run's sanity checks re-explained (its
    ``sanity.csv``: the last cascade step, and the random-logit step); None without sanity checks."""
    path = folder / "sanity.csv"
    if not path.is_file():
        return None
    rows = pd.read_csv(path)
    cascade = [step for step in dict.fromkeys(rows["step"]) if step != RANDOM_LOGIT_STEP]
    columns = []
    for column, step in zip(SANITY_COLUMNS, (cascade[-1] if cascade else None, RANDOM_LOGIT_STEP)):
        found = rows.loc[rows["step"] == step, ["sample", "spearman"]]
        columns.append(found.rename(columns={"spearman": column}).set_index("sample"))
    return pd.concat(columns, axis=1).reset_index()


def per_clip_table(runs: list[Run]) -> pd.DataFrame:
    """One row per complete run x clip x mask: ``run``, the run's ``RUN_COLUMNS`` and ``setting``
    (as :func:`label_settings` left them; ``setting`` empty if it was not called), ``mask``, the
    per-clip columns of metrics/<mask>.csv, and the clip's :data:`CLIP_FILES` and
    :data:`SANITY_COLUMNS` columns where the run has them (NaN for clips the sanity checks did not
    re-explain). Rows in (run, mask file, sample) order."""
    frames = []
    for run in runs:
        if run.status != "complete":
            continue
        per_clip = [pd.read_csv(run.path / name).drop(columns=["clip_id", "label", "predicted", "is_correct"])
                    for name in CLIP_FILES if (run.path / name).is_file()]
        sanity = sanity_per_clip(run.path)
        if sanity is not None:
            per_clip.append(sanity)
        for csv_path in sorted((run.path / "metrics").glob("*.csv")):
            frame = pd.read_csv(csv_path)
            for extra in per_clip:
                frame = frame.merge(extra, on="sample", how="left", validate="one_to_one")
            frame.insert(0, "mask", csv_path.stem)
            for position, column in enumerate((*RUN_COLUMNS, "setting")):
                frame.insert(position, column, run.settings.get(column, ""))
            frame.insert(0, "run", run.name)
            frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["run", *RUN_COLUMNS, "setting", "mask"])
    return pd.concat(frames, ignore_index=True)
