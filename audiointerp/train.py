"""Training, checkpoints and the model cache.

A trained model is keyed on everything that determines it (data, feature, model and training
settings, seed), so a sweep over explainers, masks and noises trains once and reuses the weights.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from audiointerp.atomic import atomic_path
from audiointerp.errors import AudioInterpError

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
        eval_batch_size: int = 64) -> TrainResult:
    """Adam on cross-entropy; keeps (loads into ``model``) the weights of the best validation epoch.

    train_inputs/valid_inputs: (N, 1, F, T) dB spectrograms; labels (N,) int64. SpecAugment lives in
    the model and is active in train mode only, so validation and explanation never see it.
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
        batches = tqdm(range(0, len(order), batch_size), desc=f"epoch {epoch}/{epochs}", leave=False, unit="batch")
        for start in batches:
            index = order[start:start + batch_size]
            if len(index) < 2:  # BatchNorm cannot train on a single example
                continue
            inputs, labels = train_inputs[index].to(device), train_labels[index].to(device)
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
    """Write ``{"state_dict", "metadata"}`` atomically."""
    with atomic_path(path) as tmp:
        torch.save({"state_dict": model.state_dict(), "metadata": metadata}, tmp)


def load_checkpoint(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load weights saved by :func:`save_checkpoint` into ``model``; returns the saved metadata."""
    path = Path(path)
    if not path.is_file():
        raise AudioInterpError(f"model.checkpoint: no such file {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError, TypeError, EOFError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise AudioInterpError(f"model.checkpoint: {path} is not a checkpoint for this model/feature ({first_line})") from None
    return dict(payload.get("metadata", {}))


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


@dataclass
class ModelSource:
    """Where the run's weights came from: ``checkpoint``, ``cache`` or ``trained``."""

    kind: str
    path: Path
    train_result: TrainResult | None = None


def obtain_model(model: nn.Module, *, checkpoint: str | None, cache_dir: Path | None, settings: dict[str, Any],
                 run_dir: Path, load_train_valid, epochs: int, lr: float, batch_size: int,
                 device: torch.device, seed: int) -> ModelSource:
    """Fill ``model`` with weights: an explicit checkpoint, else the cache, else training.

    ``load_train_valid()`` -> (train_inputs, train_labels, valid_inputs, valid_labels) is only
    called when training is needed. The checkpoint always ends up as ``run_dir/model.pt`` (a hard
    link to the cache entry where possible, so a sweep does not copy full-size weights per job).
    """
    run_checkpoint = Path(run_dir) / "model.pt"
    if checkpoint:
        load_checkpoint(model, checkpoint)
        log.info("loaded model.checkpoint=%s", checkpoint)
        return ModelSource("checkpoint", Path(checkpoint))
    cached = Path(cache_dir) / f"{cache_key(settings)}.pt" if cache_dir else None
    if cached is not None and cached.is_file():
        load_checkpoint(model, cached)
        log.info("reusing cached model %s (same data, feature, model and training settings)", cached)
        _link_or_copy(cached, run_checkpoint)
        return ModelSource("cache", cached)
    train_inputs, train_labels, valid_inputs, valid_labels = load_train_valid()
    result = fit(model, train_inputs, train_labels, valid_inputs, valid_labels, epochs=epochs, lr=lr,
                 batch_size=batch_size, device=device, seed=seed)
    metadata = {"settings": settings, "best_epoch": result.best_epoch,
                "best_valid_accuracy": result.best_valid_accuracy, "history": result.history}
    save_checkpoint(model, run_checkpoint, metadata)
    if cached is not None:
        _link_or_copy(run_checkpoint, cached)
    return ModelSource("trained", run_checkpoint, result)


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
