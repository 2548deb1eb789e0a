"""Classifiers of the kind a user brings, importable by a run (``model._target_=user_models.SmallCnn``,
with this folder on PYTHONPATH): nothing here knows audiointerp."""

from __future__ import annotations

import torch
from torch import nn


class SmallCnn(nn.Module):
    """(B, 1, F, T) dB spectrogram -> (B, n_classes) logits: three conv stages, global pooling, a linear head."""

    def __init__(self, n_classes: int, channels: int = 8):
        super().__init__()
        self.norm = nn.BatchNorm2d(1)
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.BatchNorm2d(2 * channels), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(2 * channels, 2 * channels, 3, padding=1), nn.BatchNorm2d(2 * channels), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2 * channels, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.norm(x))
        return self.head(self.pool(x).flatten(1))


class WaveCnn(nn.Module):
    """(B, samples) audio -> (B, n_classes) logits: a small 1-D convolutional net on the raw waveform."""

    def __init__(self, n_classes: int, channels: int = 8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, channels, 64, stride=16), nn.ReLU(), nn.MaxPool1d(4),
            nn.Conv1d(channels, 2 * channels, 9, stride=2), nn.ReLU(), nn.MaxPool1d(4),
            nn.Conv1d(2 * channels, 2 * channels, 9, stride=2), nn.ReLU(),
        )
        self.head = nn.Linear(2 * channels, n_classes)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = self.features(audio.unsqueeze(1))
        return self.head(x.mean(dim=-1))
