"""Training, checkpoints and the model cache.

A trained model is keyed on everything that determines it (data, feature, model and training
settings, seed), so a sweep over explainers, masks and noises trains once and reuses the weights.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from audiointerp import hashing, resume
from audiointerp.atomic import atomic_path, file_lock, save_torch
from audiointerp.errors import AudioInterpError
from audiointerp.progress import progress

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What fitting produced: the best-on-validation weights and the history."""

    best_epoch: int
    best_valid_accuracy: float
    history: list[dict[str, float]]
    seconds_per_epoch: float


@torch.inference_mode()
def predict(model: nn.Module, inputs: Tensor, batch_size: int, device: torch.device) -> Tensor:
    """inputs: (N, 1, F, T) -> softmax probabilities (N, C), on the CPU."""
    model.eval()
    chunks = [torch.softmax(model(inputs[i:i + batch_size].to(device)), dim=1).float().cpu()
              for i in range(0, len(inputs), batch_size)]
    return torch.cat(chunks) if chunks else torch.empty(0, 0)


def accuracy(model: nn.Module, inputs: Tensor, labels: Tensor, batch_size: int, device: torch.device) -> float:
    """Fraction of (N, 1, F, T) inputs whose argmax prediction equals labels (N,)."""
    if len(inputs) == 0:
        return float("nan")
    return (predict(model, inputs, batch_size, device).argmax(1) == labels).float().mean().item()


def fit(model: nn.Module, train_inputs: Tensor, train_labels: Tensor, valid_inputs: Tensor, valid_labels: Tensor,
        *, epochs: int, lr: float, batch_size: int, device: torch.device, seed: int,
        eval_batch_size: int = 64, augment: Callable[[Tensor], Tensor] | None = None) -> TrainResult:
    """Adam on cross-entropy; keeps (loads into ``model``) the weights of the best validation epoch.

    train_inputs/valid_inputs: (N, 1, F, T) dB spectrograms; labels (N,) int64. ``augment``
    (``audiointerp.augment.TrainingAugment``: masked inputs, SpecAugment) changes each training
    batch, for any classifier; validation and explanation never see it.
    """
    generator = torch.Generator().manual_seed(seed)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    best_state, best_accuracy, best_epoch = None, -1.0, 0
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(train_inputs), generator=generator)
        total_loss, seen = 0.0, 0
        batches = progress(range(0, len(order), batch_size), desc=f"epoch {epoch}/{epochs}", leave=False, unit="batch")
        for start in batches:
            index = order[start:start + batch_size]
            if len(index) < 2:  # BatchNorm cannot train on a single example
                continue
            inputs, labels = train_inputs[index].to(device), train_labels[index].to(device)
            if augment is not None:
                inputs = augment(inputs)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(inputs), labels)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(index)
            seen += len(index)
            batches.set_postfix(loss=f"{loss.item():.3f}")
        valid_accuracy = accuracy(model, valid_inputs, valid_labels, eval_batch_size, device)
        history.append({"epoch": epoch, "train_loss": total_loss / max(seen, 1), "valid_accuracy": valid_accuracy})
        log.info("epoch %d: train loss %.4f, valid accuracy %.4f", epoch, total_loss / max(seen, 1), valid_accuracy)
        if valid_accuracy > best_accuracy:
            best_accuracy, best_epoch = valid_accuracy, epoch
            best_state = copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    elapsed = time.perf_counter() - started
    return TrainResult(best_epoch, best_accuracy, history, elapsed / max(epochs, 1))


def save_checkpoint(model: nn.Module, path: Path, metadata: dict[str, Any]) -> None:
    """Write ``{"state_dict", "metadata"}`` atomically; the same weights and metadata give the same bytes."""
    save_torch({"state_dict": model.state_dict(), "metadata": metadata}, path)


#: What a ``model.checkpoint`` must share with the run that explains with it, as dotted prefixes of
#: the settings saved in its metadata: the input representation, the dataset and its classes (as
#: ``training_identity`` names them, and as checkpoints saved before it did), the architecture.
#: Training settings (epochs, lr, seed, clip counts, folds) may differ: explaining another training
#: of the same model is a legitimate experiment.
CHECKPOINT_MUST_MATCH = ("feature", "data.dataset", "data._target_", "data.subset", "data.n_classes",
                         "data.duration_s", "model._target_", "model.width")


class Unusable(Exception):
    """Why a file cannot fill the model (or a cache entry be reused); the message reads after the
    file's name."""


def load_checkpoint(model: nn.Module, path: str | Path, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load weights saved by :func:`save_checkpoint` (or a bare state dict) into ``model``; returns the
    saved metadata ({} for a bare state dict).

    ``settings``: this run's model settings (as :func:`obtain_model` gets them); a checkpoint whose
    saved settings differ in :data:`CHECKPOINT_MUST_MATCH` is refused, naming the settings. Every
    problem is one AudioInterpError line, and ``model`` is left as it was.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioInterpError(f"model.checkpoint: no such file {path}")
    try:
        return _load_into(model, path, settings)
    except Unusable as problem:
        raise AudioInterpError(f"model.checkpoint: {path} {problem}") from None


def _read(path: Path) -> Any:
    """What ``torch.load(weights_only=True)`` reads from ``path``, or Unusable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on a foreign pickle; the error below says it
            # weights_only: a file from elsewhere is never unpickled beyond tensors and plain
            # containers, so a foreign or malicious pickle constructs nothing and runs no code.
            return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:
        raise Unusable(f"cannot be read ({error.strerror or error})") from None
    except Exception as error:  # a file torch did not write fails as zip, pickle, EOF, key errors...
        raise Unusable(f"is not a checkpoint: torch.load(weights_only=True) cannot read it "
                        f"({type(error).__name__})") from None


def read_checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata :func:`save_checkpoint` saved in ``path`` ({} for a bare state dict), or an
    AudioInterpError naming the file."""
    try:
        payload = _read(Path(path))
    except Unusable as problem:
        raise AudioInterpError(f"model: {path} {problem}") from None
    metadata = payload.get("metadata") if isinstance(payload, dict) and "state_dict" in payload else None
    return dict(metadata) if isinstance(metadata, dict) else {}


def _load_into(model: nn.Module, path: Path, settings: dict[str, Any] | None) -> dict[str, Any]:
    """:func:`load_checkpoint` without the option's name: raises Unusable, for a cache entry too."""
    payload = _read(path)
    if isinstance(payload, dict) and "state_dict" in payload:
        state, metadata = payload["state_dict"], payload.get("metadata")
    else:  # a bare state dict, as torch.save(model.state_dict(), ...) writes elsewhere
        state, metadata = payload, None
    if not (isinstance(state, dict) and state
            and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items())):
        raise Unusable("is not a checkpoint: it holds no state dict of named tensors")
    metadata = metadata if isinstance(metadata, dict) else {}
    if settings is not None and isinstance(metadata.get("settings"), dict):
        differences = _differences(metadata["settings"], settings)
        if len(differences) == 1:
            saved, current = differences[0]
            raise Unusable(f"was trained with {saved}, this run has {current}")
        if differences:
            listed = ", ".join(f"{saved} (this run has {current})" for saved, current in differences[:3])
            more = f" and {len(differences) - 3} more" if len(differences) > 3 else ""
            raise Unusable(f"was trained with {listed}{more}")
    # Checked before loading: load_state_dict copies the tensors that fit before it raises on the
    # others, and a half-loaded model must not go on to be retrained (the result would differ).
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = [f"{len(missing)} of its tensors missing ({_few(missing)})"] if missing else []
        parts += [f"{len(unexpected)} tensors not its own ({_few(unexpected)})"] if unexpected else []
        raise Unusable(f"does not fit this model: {'; '.join(parts)}")
    wrong = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
    if wrong:
        more = f" and {len(wrong) - 1} more" if len(wrong) > 1 else ""
        raise Unusable(f"does not fit this model: {wrong[0]} has shape {tuple(state[wrong[0]].shape)} in the file, "
                        f"{tuple(expected[wrong[0]].shape)} in the model{more}")
    model.load_state_dict(state)
    return dict(metadata)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}"""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _differences(saved: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, str]]:
    """("feature.n_mels=128", "64") for each CHECKPOINT_MUST_MATCH setting that differs, in that tuple's
    order (the feature first), then this run's. Only settings both record count: one saved before a
    setting existed, or under another name, is not held to it."""
    old, new = _flatten(saved), _flatten(current)

    def rank(key: str) -> int | None:
        return next((i for i, p in enumerate(CHECKPOINT_MUST_MATCH) if key == p or key.startswith(p + ".")), None)

    differing = [k for k in new if k in old and old[k] != new[k] and rank(k) is not None]
    return [(f"{k}={_show(old[k])}", _show(new[k])) for k in sorted(differing, key=rank)]


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _few(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def fingerprint(model: nn.Module) -> str:
    """sha256 of every parameter and buffer of ``model`` (names, dtypes, shapes, bytes), in state-dict
    order: equal fingerprints mean bit-identical weights, whatever device they are on."""
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        value = value.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def cache_key(settings: dict[str, Any]) -> str:
    """A short stable hash of the settings that determine a trained model."""
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


#: The source files, relative to the package folder, whose code turns clips into trained weights.
PACKAGE_ROOT = Path(__file__).resolve().parent
TRAINING_SOURCES = ("augment.py", "features.py", "train.py")
MODEL_SOURCES = "models"


def code_version(root: str | os.PathLike = PACKAGE_ROOT) -> str:
    """sha256 of the model, feature and training code under ``root`` (the package folder): every
    ``.py`` in ``models/``, ``features.py`` and ``train.py``, by relative path, in sorted path order.

    A change to any of them can change the weights, so it invalidates the cache entries made before.
    """
    root = Path(root)
    models = [path.relative_to(root) for path in (root / MODEL_SOURCES).rglob("*.py")]
    return hashing.sources_sha256(root, [*models, *TRAINING_SOURCES])


def cache_settings(config: dict[str, Any], dataset, model=None) -> dict[str, Any]:
    """Everything that determines the trained weights, and nothing else: the model cache key's settings.

    Args:
        config: the run's resolved configuration as a plain dict (``OmegaConf.to_container(cfg, resolve=True)``).
        model: the run's classifier: the code of a user's network (``source_sha256``) is in the key.
        dataset: the run's dataset; its ``training_identity()`` stands for the train and valid clips
            actually used (their files' bytes or generator settings), so the data's location, the
            missing-clip policy, the test split and the explaining options are not in the key.
    """
    # Paths say where weights and clips come from or go to, not what they are.
    config = resume.without_keys(config, resume.INPUT_PATH_KEYS + resume.NO_RESULT_KEYS)
    settings = {"code": code_version(), "data": dataset.training_identity(), "feature": config["feature"],
                "model": config["model"], "train": config["train"], "seed": config["seed"]}
    source = None if model is None else model.source_sha256()
    if source is not None:  # a user's network: its class's code, or its TorchScript file
        settings["network_source"] = source
    return settings


@dataclass
class ModelSource:
    """Where the run's weights came from: ``checkpoint``, ``cache``, ``trained``, or ``run folder``
    (trained by an earlier, interrupted attempt at this run); ``metadata`` is what the checkpoint
    saved (settings, best_epoch, best_valid_accuracy, history), {} for a bare state dict;
    ``train_result`` is set when trained in this process."""

    kind: str
    path: Path
    metadata: dict[str, Any]
    train_result: TrainResult | None = None


def obtain_model(model: nn.Module, *, checkpoint: str | None, cache_dir: Path | None, settings: dict[str, Any],
                 run_dir: Path, load_train_valid, epochs: int, lr: float, batch_size: int,
                 device: torch.device, seed: int,
                 augment: Callable[[Tensor], Tensor] | None = None) -> ModelSource:
    """Fill ``model`` with weights: an explicit checkpoint, else the cache, else training.

    ``load_train_valid()`` -> (train_inputs, train_labels, valid_inputs, valid_labels) is only
    called when training is needed. The checkpoint always ends up as ``run_dir/model.pt`` (a hard
    link to the cache entry where possible, so a sweep does not copy full-size weights per job).
    The cache entry is ``<cache_dir>/<key>.pt``, shared by jobs as :func:`reuse_or_make` says.
    """
    run_checkpoint = Path(run_dir) / "model.pt"
    if checkpoint:
        metadata = load_checkpoint(model, checkpoint, settings)
        log.info("loaded model.checkpoint=%s", checkpoint)
        return ModelSource("checkpoint", Path(checkpoint), metadata)
    # a re-run into the folder of an interrupted run (with or without a cache) goes on with its model
    resumed = _own_checkpoint(model, run_checkpoint, settings)
    if resumed is not None:
        return ModelSource("run folder", run_checkpoint, resumed)

    def train_and_save() -> ModelSource:
        result = fit(model, *load_train_valid(), epochs=epochs, lr=lr, batch_size=batch_size, device=device,
                     seed=seed, augment=augment)
        metadata = {"settings": settings, "best_epoch": result.best_epoch,
                    "best_valid_accuracy": result.best_valid_accuracy, "history": result.history}
        save_checkpoint(model, run_checkpoint, metadata)
        return ModelSource("trained", run_checkpoint, metadata, result)

    if not cache_dir:
        return train_and_save()
    cached = Path(cache_dir) / f"{cache_key(settings)}.pt"

    def reuse(entry: Path) -> ModelSource:
        metadata = _load_into(model, entry, settings)
        log.info("reusing cached model %s (same data, feature, model and training settings)", entry)
        _link_or_copy(entry, run_checkpoint)
        return ModelSource("cache", entry, metadata)

    def make(entry: Path) -> ModelSource:
        source = train_and_save()
        _link_or_copy(run_checkpoint, entry)
        return source

    return reuse_or_make(cached, reuse, make, what="model")


T = TypeVar("T")


def reuse_or_make(entry: Path, reuse: Callable[[Path], T], make: Callable[[Path], T], *, what: str) -> T:
    """``reuse(entry)`` if the cache entry ``entry`` is there and usable, else ``make(entry)``, which
    trains and writes it: the one protocol of every cache of trained weights (models, L-MAC decoders).

    The cache can be shared by jobs that start at once, on one machine or on a cluster's shared
    file system: the first to miss takes the entry's lock (``<entry stem>.lock`` beside it) and makes
    it; the others wait for it and reuse its entry. The OS releases the lock when its holder dies, so
    a crashed trainer leaves the next one to train. ``reuse`` raises :class:`Unusable` for an entry
    it cannot use (corrupted, another model's); it is then deleted, with a warning, and made again.
    ``what`` names the entry in log lines.
    """
    def attempt(*, discard: bool) -> tuple[T] | None:
        if not entry.is_file():
            return None
        try:
            return (reuse(entry),)
        except Unusable as problem:
            if discard:
                log.warning("%s cache entry %s %s: deleting it and training the %s again", what, entry, problem, what)
                entry.unlink(missing_ok=True)
            return None

    # Entries appear by an atomic rename, whole: one that is there and loads needs no lock.
    reused = attempt(discard=False)
    if reused is not None:
        return reused[0]
    # The lock file is never deleted: a job may hold or be waiting on it, and a new file of the same
    # name would let a second trainer in beside the first.
    with _exclusive(entry.with_suffix(".lock"), what):
        # Looked at again: another job may have made it while this one waited, or left a broken one.
        reused = attempt(discard=True)
        if reused is not None:
            return reused[0]
        # Only a holder of this lock writes the entry's temporary files, so any there are a killed
        # trainer's.
        for stale in entry.parent.glob(f".{entry.stem}.*.tmp{entry.suffix}"):
            stale.unlink(missing_ok=True)
        return make(entry)


def _own_checkpoint(model: nn.Module, run_checkpoint: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The metadata of ``run_checkpoint`` after loading it into ``model``, if it was saved for exactly
    ``settings``; None (model untouched) otherwise."""
    if not run_checkpoint.is_file():
        return None
    initial = copy.deepcopy(model.state_dict())  # training another model must start from the same init
    try:
        metadata = _load_into(model, run_checkpoint, settings)
    except Unusable:
        return None  # not loaded; trained again, and overwritten
    if cache_key(metadata.get("settings", {})) != cache_key(settings):
        model.load_state_dict(initial)
        return None
    log.info("reusing this run folder's model %s (trained before the run was interrupted)", run_checkpoint)
    return metadata


@contextlib.contextmanager
def _exclusive(lock: Path, what: str):
    """Hold ``lock`` exclusively for the block, saying so when another job holds it first."""
    # Without locks (file_lock warns) jobs may only train the same model twice, never read half of
    # one: entries are written whole by a rename.
    with contextlib.ExitStack() as held:
        if not held.enter_context(file_lock(lock, blocking=False)):
            log.info("waiting for another job training the same %s (%s)", what, lock)
            held.enter_context(file_lock(lock))
        yield


def _link_or_copy(source: Path, target: Path) -> None:
    """Make ``target`` the file ``source`` is: a hard link where the file system allows, else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and os.path.samefile(source, target):
        return  # already one file (a re-run into the same folder): nothing to do
    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
    # Renaming a link onto a name of the same file does nothing (POSIX), leaving the temporary name;
    # a job linking the same entry at the same moment could make it so.
    tmp.unlink(missing_ok=True)
