"""Training-time augmentations of the (B, 1, F, T) dB inputs, applied by the training step to any classifier.

They live in the training step, not in a model, so every classifier the runner trains gets them
(Cnn14 or a user's module) and no model carries training-only modules into explaining.
Both draw from torch's global generator, which a run seeds (``seed``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from audiointerp.errors import AudioInterpError
from audiointerp.masks import SILENCE_DB


class SpecAugment:
    """Replace random frequency and time stripes of each dB spectrogram by each bin's mean (training only).

    PANNs zeroes the stripes after its input normalisation (``bn0``), where zero is each bin's
    mean; on the dB input the same is each frequency bin's mean over the batch and its frames.
    Widths are drawn uniformly from [0, width) per stripe and per example.
    """

    def __init__(self, freq_mask_width: int = 10, time_mask_width: int = 20, n_freq_masks: int = 2,
                 n_time_masks: int = 2):
        for option, value in (("freq_mask_width", freq_mask_width), ("time_mask_width", time_mask_width),
                              ("n_freq_masks", n_freq_masks), ("n_time_masks", n_time_masks)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise AudioInterpError(f"train.augment.spec_augment.{option}: expected an integer >= 0, got {value!r}")
        self.freq_mask_width = freq_mask_width
        self.time_mask_width = time_mask_width
        self.n_freq_masks = n_freq_masks
        self.n_time_masks = n_time_masks

    @staticmethod
    def _stripes(batch: int, size: int, width: int, count: int, device: torch.device) -> Tensor:
        """(batch, size) bool: True where any of ``count`` random stripes covers the position."""
        if width <= 0 or count <= 0:
            return torch.zeros(batch, size, dtype=torch.bool, device=device)
        widths = torch.randint(0, width, (batch, count, 1), device=device)
        starts = (torch.rand(batch, count, 1, device=device) * (size - widths).clamp(min=1)).long()
        positions = torch.arange(size, device=device).view(1, 1, size)
        return ((positions >= starts) & (positions < starts + widths)).any(dim=1)

    def __call__(self, x: Tensor) -> Tensor:
        """x: (B, 1, F, T) dB -> same shape, stripes set to each bin's mean."""
        batch, _, n_freq, n_time = x.shape
        freq_drop = self._stripes(batch, n_freq, self.freq_mask_width, self.n_freq_masks, x.device)
        time_drop = self._stripes(batch, n_time, self.time_mask_width, self.n_time_masks, x.device)
        drop = freq_drop[:, None, :, None] | time_drop[:, None, None, :]
        bin_mean = x.mean(dim=(0, 3), keepdim=True)  # (1, 1, F, 1)
        return torch.where(drop, bin_mean.expand_as(x), x)


class MaskDropout:
    """Set random bins of a dB spectrogram to the silence level, as a mask does (training only).

    Removal-based metrics score an explanation by classifying masked inputs; a model that never
    saw masked inputs answers them out of distribution, and the scores then measure that shift
    rather than the explanation (Hase, Xie & Bansal, NeurIPS 2021, train on randomly masked
    inputs for this reason). A share ``probability`` of training examples gets a random mask:
    half of those i.i.d. over bins, half in coarse blocks (a random 8 x 16 grid stretched over
    the spectrogram), each removing a share of bins drawn from [0, ``max_removed``).

    Args:
        probability: share of training examples masked; 0 turns it off.
        max_removed: largest share of bins removed from one example.
        level: dB of removed bins (the evaluation's ``mask.silence_level``); None = each
            example's own minimum.
    """

    GRID = (8, 16)

    def __init__(self, probability: float = 0.0, max_removed: float = 0.75, level: float | None = SILENCE_DB):
        if not 0.0 <= probability <= 1.0 or not 0.0 <= max_removed <= 1.0:
            raise AudioInterpError(f"train.augment.mask_dropout: expected probability and max_removed in [0, 1], "
                                   f"got {probability!r} and {max_removed!r}")
        self.probability = float(probability)
        self.max_removed = float(max_removed)
        self.level = level

    def __call__(self, x: Tensor) -> Tensor:
        """x: (B, 1, F, T) dB -> same shape, with removed bins at the silence level."""
        if self.probability == 0.0:
            return x
        batch, _, n_freq, n_time = x.shape
        device = x.device
        chosen = torch.rand(batch, 1, 1, 1, device=device) < self.probability
        rate = torch.rand(batch, 1, 1, 1, device=device) * self.max_removed
        fine = torch.rand(batch, 1, n_freq, n_time, device=device)
        coarse = nn.functional.interpolate(torch.rand(batch, 1, *self.GRID, device=device), size=(n_freq, n_time),
                                           mode="nearest")
        blocky = torch.rand(batch, 1, 1, 1, device=device) < 0.5
        removed = chosen & (torch.where(blocky, coarse, fine) < rate)
        level = x.amin(dim=(1, 2, 3), keepdim=True) if self.level is None else torch.full_like(x[:, :, :1, :1], self.level)
        return torch.where(removed, level.expand_as(x), x)


class TrainingAugment:
    """What the training step does to each batch of inputs: masked inputs, then SpecAugment.

    ``train.augment`` in the config: ``mask_dropout`` and ``spec_augment`` take the arguments of
    :class:`MaskDropout` and :class:`SpecAugment`; null turns one off.
    """

    def __init__(self, mask_dropout: Mapping | None = None, spec_augment: Mapping | None = None) -> None:
        self.steps = [step for step in (None if mask_dropout is None else MaskDropout(**mask_dropout),
                                        None if spec_augment is None else SpecAugment(**spec_augment))
                      if step is not None]

    def __call__(self, x: Tensor) -> Tensor:
        """x: (B, 1, F, T) dB -> the augmented copy, same shape."""
        for step in self.steps:
            x = step(x)
        return x
