"""Classifiers: the contract every model meets (``base``), Cnn14 (PANNs, the paper's; ``width``
scales it down for CPU runs), the Audio Spectrogram Transformer (``ast``, transformers needed only
when it is built), a user's ``nn.Module``, a TorchScript file, and classifiers of audio."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from audiointerp.errors import AudioInterpError, build
from audiointerp.models.ast import AST
from audiointerp.models.base import INPUT_KINDS, Classifier, ModuleClassifier
from audiointerp.models.cnn14 import Cnn14
from audiointerp.models.torchscript import TorchScriptClassifier
from audiointerp.models.waveform import WaveformClassifier

#: The ``precision`` option: the dtype the model's passes autocast to (None: float32 throughout).
#: Inputs, outputs, attributions and metrics stay float32 either way.
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}

#: Keys of ``conf/model/*.yaml`` that say where weights come from, not how the network is built.
WEIGHT_SOURCE_KEYS = ("checkpoint", "pretrained", "pretrained_dir")
#: Keys of ``conf/model/*.yaml`` that say how the network is brought to the classifier contract
#: (``audiointerp.models.base``): what it reads, and at which rate.
ADAPTER_KEYS = ("input", "sample_rate")


def _accepted(target: str, names: tuple[str, ...]) -> set[str]:
    """Which of ``names`` the callable ``target`` (a dotted path) takes as keyword arguments."""
    from hydra.utils import get_object

    quiet = logging.getLogger("hydra.utils")  # it logs a failed import as an ERROR of its own
    was_disabled, quiet.disabled = quiet.disabled, True
    try:
        constructor = get_object(target)
    except Exception as error:  # noqa: BLE001 - an import of the user's code can fail in any way
        raise AudioInterpError(f"model._target_: cannot import {target!r} ({type(error).__name__}: "
                               f"{' '.join(str(error).split())[:120]}); expected an importable nn.Module class") from None
    finally:
        quiet.disabled = was_disabled
    try:
        parameters = inspect.signature(constructor).parameters
    except (TypeError, ValueError):
        return set()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return set(names)
    return {name for name in names if name in parameters}


def loads_pretrained(model_cfg: DictConfig) -> bool:
    """Whether ``model._target_`` loads ``model.pretrained`` itself (its constructor takes it: AST's
    hub id or folder) rather than the runner (Cnn14's ``panns``)."""
    return bool(_accepted(str(model_cfg.get("_target_")), ("pretrained",)))


def build_model(model_cfg: DictConfig, *, feature, n_classes: int | None) -> Classifier:
    """The configured classifier for the run's ``feature`` and ``n_classes`` classes.

    ``model._target_`` is Cnn14, :class:`~audiointerp.models.torchscript.TorchScriptClassifier`, or
    any ``nn.Module`` class of the user's (``model=module``), built with the config's other keys as
    constructor arguments, plus ``n_bins`` (the feature's F), ``n_classes``, ``feature`` (the feature
    module) and ``pretrained`` (``model.pretrained``) where its constructor takes them and the config
    does not set them. ``model.input=waveform`` wraps it in
    :class:`~audiointerp.models.waveform.WaveformClassifier`.
    """
    settings = {k: v for k, v in model_cfg.items() if k not in WEIGHT_SOURCE_KEYS + ADAPTER_KEYS}
    target = settings.get("_target_")
    if not isinstance(target, str) or not target:
        raise AudioInterpError(f"model._target_: expected the dotted name of an nn.Module class, got {target!r}")
    input_kind = model_cfg.get("input", "spectrogram")
    if input_kind not in INPUT_KINDS:
        raise AudioInterpError(f"model.input: expected one of {', '.join(INPUT_KINDS)}, got {input_kind!r}")
    # the feature itself to a network that reads its shape (AST: its frames per clip), and where weights
    # come from to one that loads them itself (AST: model.pretrained)
    given = {"n_bins": feature.n_bins, "n_classes": n_classes, "feature": feature,
             "pretrained": model_cfg.get("pretrained")}
    extra = {k: given[k] for k in _accepted(target, tuple(given)) if k not in settings and given[k] is not None}
    if input_kind == "waveform":
        extra.pop("n_bins", None)  # a network of audio has no frequency bins
    try:
        network = build(settings, **extra)
    except AudioInterpError:
        raise
    except Exception as error:  # noqa: BLE001 - the user's constructor
        cause = error.__cause__ or error
        raise AudioInterpError(f"model._target_={target}: building it failed ({type(cause).__name__}: "
                               f"{' '.join(str(cause).split())[:160]}); check the model.* constructor arguments") from None
    return as_classifier(network, feature=feature, input_kind=input_kind, sample_rate=model_cfg.get("sample_rate"))


def as_classifier(model, *, feature=None, input_kind: str = "spectrogram", sample_rate: int | None = None) -> Classifier:
    """``model`` as a :class:`Classifier`: one already is; an ``nn.Module`` is wrapped
    (:class:`ModuleClassifier`); a path is a TorchScript file or one of our ``model.pt`` files.
    ``input_kind="waveform"`` adds the inverse of ``feature`` in front of it."""
    if isinstance(model, (str, os.PathLike)):
        model = load_model_file(model, feature)
    if not isinstance(model, nn.Module):
        raise AudioInterpError(f"model: expected an nn.Module, a TorchScript file or a model.pt, got {type(model).__name__}")
    classifier = model if isinstance(model, Classifier) else ModuleClassifier(model)
    if input_kind == "waveform" and classifier.input_kind != "waveform":
        if feature is None:
            raise AudioInterpError("model.input=waveform: needs the run's feature, whose inverse gives the audio")
        classifier = WaveformClassifier(classifier, feature, sample_rate)
    return classifier


def is_torchscript_file(path) -> bool:
    """Whether ``path`` is a ``torch.jit.save`` archive (a zip holding the model's code), not a ``torch.save`` one."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def load_model_file(path, feature=None) -> Classifier:
    """A classifier from a file: a TorchScript file, or a ``model.pt`` a run wrote (its saved model
    settings rebuild the network, then its weights are loaded)."""
    from audiointerp import train

    path = Path(path)
    if not path.is_file():
        raise AudioInterpError(f"model: no such file {path}; expected a TorchScript file or a run's model.pt")
    if is_torchscript_file(path):
        return TorchScriptClassifier(str(path))
    metadata = train.read_checkpoint_metadata(path)
    settings = metadata.get("settings") or {}
    if not isinstance(settings.get("model"), dict) or not isinstance(settings.get("feature"), dict):
        raise AudioInterpError(f"model: {path} holds no saved model and feature settings; expected a model.pt "
                               "written by a run (or build the nn.Module yourself and load its state dict)")
    if feature is None:
        feature = build(settings["feature"])
    n_classes = (settings.get("data") or {}).get("n_classes")
    model = build_model(OmegaConf.create(settings["model"]), feature=feature, n_classes=n_classes)
    train.load_checkpoint(model, path)
    return model.eval()


@contextlib.contextmanager
def channels_last(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """``model``'s conv weights, and so its feature maps, channels-last (NHWC) inside the block.

    For forward-only passes: measured on a 2-core AVX2 CPU in fp32, a forward of 29 log-mels takes
    5.75 s channels-last against 7.26 s (full-width Cnn14), 0.07-0.08 s against 0.10-0.19 s (width
    1/16); but a forward and backward of 8 clips takes 7.5-8.6 s against 6.6 s at full width, so
    gradient explainers keep the default layout. Converting the weights costs a copy of them.
    """
    if not enabled or not getattr(model, "channels_last_useful", True):  # a transformer: nothing to gain
        yield model
        return
    # Weights converted inside an inference_mode block would become inference tensors, which no
    # later backward pass (a gradient explainer) may use.
    with torch.inference_mode(False):
        model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        with torch.inference_mode(False):
            model.to(memory_format=torch.contiguous_format)


def check_precision(option: str, value) -> torch.dtype | None:
    """The autocast dtype of ``precision``-like option ``option``, or an AudioInterpError."""
    if value not in PRECISIONS:
        raise AudioInterpError(f"{option}: expected one of {', '.join(PRECISIONS)}, got {value!r}")
    return PRECISIONS[value]


__all__ = ["AST", "INPUT_KINDS", "PRECISIONS", "Classifier", "Cnn14", "ModuleClassifier", "TorchScriptClassifier",
           "WaveformClassifier", "as_classifier", "build_model", "channels_last", "check_precision", "load_model_file",
           "loads_pretrained"]
