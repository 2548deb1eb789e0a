"""Classifiers. Cnn14 (PANNs) is the model of the paper; `width` scales it down for CPU runs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from omegaconf import DictConfig
from torch import nn

from audiointerp.errors import AudioInterpError, build
from audiointerp.models.cnn14 import Cnn14

#: The ``precision`` option: the dtype the model's passes autocast to (None: float32 throughout).
#: Inputs, outputs, attributions and metrics stay float32 either way.
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}

#: Keys of ``conf/model/*.yaml`` that say where weights come from, not how the network is built.
WEIGHT_SOURCE_KEYS = ("checkpoint", "pretrained", "pretrained_dir")


def build_model(model_cfg: DictConfig, *, n_bins: int, n_classes: int) -> nn.Module:
    """Instantiate the configured network for inputs of ``n_bins`` frequency bins."""
    network_cfg = {k: v for k, v in model_cfg.items() if k not in WEIGHT_SOURCE_KEYS}
    return build(network_cfg, n_bins=n_bins, n_classes=n_classes)


@contextlib.contextmanager
def channels_last(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """``model``'s conv weights, and so its feature maps, channels-last (NHWC) inside the block.

    For forward-only passes: measured on a 2-core AVX2 CPU in fp32, a forward of 29 log-mels takes
    5.75 s channels-last against 7.26 s (full-width Cnn14), 0.07-0.08 s against 0.10-0.19 s (width
    1/16); but a forward and backward of 8 clips takes 7.5-8.6 s against 6.6 s at full width, so
    gradient explainers keep the default layout. Converting the weights costs a copy of them.
    """
    if not enabled:
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


__all__ = ["PRECISIONS", "Cnn14", "build_model", "channels_last", "check_precision"]
