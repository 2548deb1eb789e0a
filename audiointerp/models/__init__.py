"""Classifiers. Cnn14 (PANNs) is the model of the paper; `width` scales it down for CPU runs."""

from __future__ import annotations

from omegaconf import DictConfig
from torch import nn

from audiointerp.errors import build
from audiointerp.models.cnn14 import Cnn14

#: Keys of ``conf/model/*.yaml`` that say where weights come from, not how the network is built.
WEIGHT_SOURCE_KEYS = ("checkpoint", "pretrained", "pretrained_dir")


def build_model(model_cfg: DictConfig, *, n_bins: int, n_classes: int) -> nn.Module:
    """Instantiate the configured network for inputs of ``n_bins`` frequency bins."""
    network_cfg = {k: v for k, v in model_cfg.items() if k not in WEIGHT_SOURCE_KEYS}
    return build(network_cfg, n_bins=n_bins, n_classes=n_classes)


__all__ = ["Cnn14", "build_model"]
