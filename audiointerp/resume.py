"""Resumable runs: per-batch results kept on disk as the run goes, so a killed run continues.

A run's explaining loop hands every finished batch of clips to a :class:`BatchStore`. In a run
folder that is :class:`DiskStore`: ``<run>/.partial/batch_<index>.pt``, each written atomically,
next to a ``manifest.json`` naming the run they belong to (its config, less the shard, and the
model's fingerprint). Re-running the same command into the same folder finds them and explains
only the batches that are missing; the final outputs are written from all batches once every one
is there, and ``.partial/`` is then removed. Because a batch is computed from the same clips,
model and seed either way, the outputs are byte-identical to an uninterrupted run's.

Shards (``shard.index`` of ``shard.count``) are the same mechanism across processes: each job
explains its own contiguous range of batches into the shared folder, and the job that completes
the last batch writes the outputs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from audiointerp.atomic import TEMPORARY_GLOB, atomic_path, file_lock, save_torch
from audiointerp.errors import AudioInterpError, expect_int
from audiointerp.hashing import sources_sha256

log = logging.getLogger(__name__)

#: The package folder whose ``.py`` files make up :func:`code_version`.
PACKAGE_DIR = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=4)
def code_version(root: str | os.PathLike = PACKAGE_DIR) -> str:
    """Hex sha256 over every ``.py`` file under the ``audiointerp`` package folder (by relative path,
    :func:`audiointerp.hashing.sources_sha256`), computed once per process.

    Part of a run's identity (:func:`run_sha256`): results are a function of the code as much as of
    the config, so after an edit to, say, ``metrics.py`` a finished run is no longer "already
    complete", and partial batches written by the old code are not mixed with the new code's.
    """
    root = Path(root)
    files = [p.relative_to(root).as_posix() for p in root.rglob("*.py") if "__pycache__" not in p.parts]
    return sources_sha256(root, files)

PARTIAL_DIR = ".partial"
#: Held while a run's outputs are written, so two shards finishing together write them once.
ASSEMBLY_LOCK = ".assembly.lock"
#: Held (shared) by every process working in a run folder for as long as it runs; whoever can take
#: it exclusively knows no live process is writing there, so leftover temporaries are a dead run's.
OCCUPIED_LOCK = ".run.lock"


@dataclass
class BatchResults:
    """One batch's share of ``pipeline.RunResults``: attribution (B, 1, F, T), probabilities (B, C),
    metrics {mask: {column: (B,)}}, localization {score: (B,)} (empty without evidence), the
    seconds the audio-domain metrics took (0 when off), and clip_scores {column: (B,)} (the
    attribution's deletion and insertion areas, and what the explainer reports per clip)."""

    attribution: Tensor
    probabilities: Tensor
    metrics: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    localization: dict[str, Tensor] = field(default_factory=dict)
    audio_seconds: float = 0.0
    clip_scores: dict[str, Tensor] = field(default_factory=dict)


class BatchStore:
    """Where the explaining loop keeps finished batches: in memory, for a library call."""

    def __init__(self) -> None:
        self._batches: dict[int, BatchResults] = {}

    def has(self, index: int) -> bool:
        return index in self._batches

    def save(self, index: int, batch: BatchResults) -> None:
        self._batches[index] = batch

    def load(self, index: int) -> BatchResults:
        return self._batches[index]


class DiskStore(BatchStore):
    """Batches as files under ``<run_dir>/.partial``, belonging to the run named by ``key``.

    Partial results of another run (another config, model or :func:`code_version`) in the folder
    are discarded with a warning when ``alone`` (no other live process works in the folder: they
    are a dead run's); otherwise they are a live run's, and this one is refused. ``key`` already
    covers the code version (it hashes :func:`run_sha256`); the manifest records it as well, so the
    warning can say when an edit of the code is why.
    """

    def __init__(self, run_dir: Path, key: str, alone: bool = True) -> None:
        super().__init__()
        self.folder = Path(run_dir) / PARTIAL_DIR
        self.key = key
        manifest = self.folder / "manifest.json"
        if self.folder.is_dir():
            try:
                saved = json.loads(manifest.read_text())
                found, found_code = saved["key"], saved.get("code_version")
            except (OSError, ValueError, KeyError, TypeError):
                found, found_code = None, None
            if found != key and alone:
                if found_code is not None and found_code != code_version():
                    why = (f"another code version of audiointerp ({found_code[:12]}, now {code_version()[:12]}): "
                           "the package's sources changed since they were written")
                else:
                    why = "another configuration or model"
                log.warning("%s: partial results of %s; discarding them", self.folder, why)
                shutil.rmtree(self.folder, ignore_errors=True)
            elif found is not None and found != key:
                raise AudioInterpError(f"{Path(run_dir)}: another run with a different configuration or model is "
                                       "working in this folder; expected its shards to share both")
        if not manifest.is_file():
            with atomic_path(manifest) as tmp:
                tmp.write_text(json.dumps({"key": key, "code_version": code_version()}) + "\n")

    def _path(self, index: int) -> Path:
        return self.folder / f"batch_{index:06d}.pt"

    def has(self, index: int) -> bool:
        return self._path(index).is_file()

    def save(self, index: int, batch: BatchResults) -> None:
        payload = {"attribution": batch.attribution, "probabilities": batch.probabilities, "metrics": batch.metrics,
                   "localization": batch.localization, "audio_seconds": batch.audio_seconds,
                   "clip_scores": batch.clip_scores}
        save_torch(payload, self._path(index))

    def load(self, index: int) -> BatchResults:
        path = self._path(index)
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            return BatchResults(**payload)
        except Exception as error:  # a file we wrote atomically; unreadable means the disk was tampered with
            raise AudioInterpError(f"{path}: unreadable partial result ({type(error).__name__}); delete it to "
                                   "recompute that batch") from None

    def clear(self) -> None:
        """Remove the partial results, once the final outputs are written."""
        shutil.rmtree(self.folder, ignore_errors=True)


#: Config keys naming an input file or folder: a run is identified by what they point at, by content
#: (``inputs`` of :func:`run_sha256`), not by the path; a sweep job's folder name carries a hash of
#: their values instead of the values (:func:`job_folder_name`).
INPUT_PATH_KEYS: tuple[str, ...] = ("data.root", "data.csv", "model.checkpoint", "model.path", "noise.path")
#: Config keys that change nothing a run computes: where downloads and the model (and L-MAC
#: decoder) cache are kept, whether the cache is used, and how a run is sharded (shards explain
#: whole batches).
NO_RESULT_KEYS: tuple[str, ...] = ("shard", "data.download_dir", "train.cache_dir", "train.cache",
                                   "model.pretrained_dir", "noise.cache_dir", "explainer.cache_dir",
                                   "explainer.cache")


def without_keys(config: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """A copy of ``config`` without the dotted ``keys`` (``"train.cache_dir"``, ``"shard"``)."""
    config = dict(config)
    for key in keys:
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            if not isinstance(node.get(parent), dict):
                break
            node[parent] = node = dict(node[parent])
        else:
            node.pop(leaf, None)
    return config


def run_sha256(config: dict[str, Any], inputs: dict[str, Any]) -> str:
    """What a run's results are a function of, hashed: how a finished run is recognised (``run.json``).

    Args:
        config: the resolved config; :data:`INPUT_PATH_KEYS` and :data:`NO_RESULT_KEYS` are left out.
        inputs: the content of what the input paths point at (the dataset's clips, a checkpoint's
            and a noise file's sha256), so a file changed in place makes the run new.

    The package's :func:`code_version` is part of it too: an edit of the code makes the run new.
    """
    identity = {"config": without_keys(config, INPUT_PATH_KEYS + NO_RESULT_KEYS), "inputs": inputs,
                "code_version": code_version()}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def run_key(run_sha: str, model_sha256: str) -> str:
    """What makes two processes' batches interchangeable: the run (:func:`run_sha256`) and the
    model's weights."""
    return hashlib.sha256(f"{run_sha}:{model_sha256}".encode()).hexdigest()


def job_folder_name(task_overrides) -> str:
    """A sweep job's folder name (``hydra.sweep.subdir``): its overrides, sorted, as Hydra's
    ``override_dirname`` writes them (``explainer=shap,noise=white``), without ``shard.index`` (a
    run's shards share its folder), :data:`NO_RESULT_KEYS`, and :data:`INPUT_PATH_KEYS`, whose
    values would make nested or absolute folder names; those given are kept as a hash
    (``inputs=1a2b3c4d``), so jobs that differ only in an input path get folders of their own."""
    named, paths = [], []
    for override in task_overrides:
        key = str(override).split("=", 1)[0].lstrip("+~")
        if key == "shard" or key.startswith("shard.") or key in NO_RESULT_KEYS:
            continue
        (paths if key in INPUT_PATH_KEYS else named).append(str(override))
    if paths:
        named.append("inputs=" + hashlib.sha256("\n".join(sorted(paths)).encode()).hexdigest()[:8])
    return ",".join(sorted(named))


def use_deterministic_cuda_kernels() -> None:
    """Same config and seed, same bytes, on a GPU too: deterministic kernels where CUDA has them
    (cuBLAS needs its workspace fixed before its first call); a warning names any op without one."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def check_shard(index, count) -> tuple[int, int]:
    """``(shard.index, shard.count)``, or an AudioInterpError naming the bad one."""
    count = expect_int("shard.count", count, 1)
    index = expect_int("shard.index", index, 0)
    if index >= count:
        raise AudioInterpError(f"shard.index: expected 0 to {count - 1} (shard.count={count}), got {index}")
    return index, count


def shard_batches(n_batches: int, index: int, count: int) -> range:
    """The contiguous batches shard ``index`` of ``count`` explains: whole batches, so every batch is
    the same set of clips as in the unsharded run, and its results are bit-identical."""
    return range(index * n_batches // count, (index + 1) * n_batches // count)


def remove_temporaries(run_dir: Path) -> list[Path]:
    """Delete the temporary files a killed run left under ``run_dir``; returns them.

    Call only while holding :data:`OCCUPIED_LOCK` exclusively: a live process's temporaries are not leftovers.
    """
    leftovers = [p for p in Path(run_dir).rglob(TEMPORARY_GLOB) if p.is_file()]
    for path in leftovers:
        path.unlink(missing_ok=True)
    if leftovers:
        log.info("removed %d temporary file(s) left by an interrupted run in %s", len(leftovers), run_dir)
    return leftovers


class Occupancy:
    """The current process's claim on a run folder, for the whole run (see :data:`OCCUPIED_LOCK`).

    On entry, a folder no other live process works in is cleaned of a killed run's temporaries.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._locks: list = []
        #: No other live process worked in the folder when this one came: what a dead run left
        #: (temporaries, partial results of another configuration) may be removed.
        self.alone = False

    def __enter__(self) -> Occupancy:
        lock_path = self.run_dir / OCCUPIED_LOCK
        exclusive = file_lock(lock_path, blocking=False)
        self.alone = exclusive.__enter__()
        if self.alone:
            remove_temporaries(self.run_dir)
        exclusive.__exit__(None, None, None)
        # a window between the two in which another process may clean: it finds nothing of ours yet
        shared = file_lock(lock_path, shared=True)
        shared.__enter__()
        self._locks.append(shared)
        return self

    def __exit__(self, *exc_info) -> None:
        for lock in self._locks:
            lock.__exit__(None, None, None)
        self._locks.clear()
