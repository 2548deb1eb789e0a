"""A tiny Cnn14 on the six real shared clips, for tests that need a real model whose activations
neither vanish nor blow up: untrained, but its BatchNorm statistics are those clips' log-mels'."""

from __future__ import annotations

import torch

from audiointerp.data.audio import load_audio
from audiointerp.features import LogMel
from audiointerp.models import Cnn14


def tiny_cnn14_on_real_clips(sample_wavs, n_classes: int = 3):
    """(waveforms (6, 160000): the clips at 32 kHz, 5 s, peak-normalised; their log-mels (6, 1, 64,
    501); a width-1/16 Cnn14, seeded 1, in eval mode, whose BatchNorm statistics are those log-mels'
    (one training-mode pass with cumulative averages))."""
    waveforms = torch.stack([load_audio(path, 32000, 5.0, peak_normalise=True) for path in sample_wavs])
    with torch.no_grad():
        log_db = LogMel()(waveforms).log_db
    torch.manual_seed(1)
    return waveforms, log_db, with_batch_norm_statistics_of(Cnn14(n_bins=64, n_classes=n_classes, width=1 / 16), log_db)


def with_batch_norm_statistics_of(model: torch.nn.Module, inputs: torch.Tensor) -> torch.nn.Module:
    """``model`` in eval mode, its BatchNorm running statistics those of ``inputs`` (B, 1, F, T):
    one training-mode pass with cumulative averages."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average: one pass sets the statistics
    model.train()
    with torch.no_grad():
        model(inputs)
    return model.eval()
