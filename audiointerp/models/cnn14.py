"""The PANNs Cnn14 architecture on (B, 1, F, T) log spectrograms.

Layout note: PANNs feeds (B, 1, T, F); we keep the project-wide (B, 1, F, T) layout and transpose
PANNs' 3x3 kernels when loading its checkpoint (see ``audiointerp.models.panns``). Every
non-linearity and pooling is its own ``nn.Module`` instance so that SHAP's DeepExplainer, which
rewrites gradients per module, can see (and not share) them.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from audiointerp.errors import AudioInterpError
from audiointerp.masks import SILENCE_DB

#: Channel counts of the six conv blocks of the full-size Cnn14.
CNN14_CHANNELS = (64, 128, 256, 512, 1024, 2048)
#: Under a lower-precision autocast, a pass that is differentiated with respect to its input (an
#: attribution such as saliency, IG, SmoothGrad or SHAP, or L-MAC's training) runs ``bn0`` and this
#: many conv blocks from the input in float32. Rounding the normalised spectrogram and the
#: high-resolution feature maps to bf16 flips ReLUs and moves the input gradient's ranks: on the
#: embedded default's 80 test clips (trained 1/16-width Cnn14, saliency) the Spearman correlation with
#: fp32 was 0.940 with every block in bf16, 0.964, 0.973 and 0.989 with 1, 2 and 3 blocks in float32;
#: the deep blocks mattered little (0.941 with blocks 5-6 in float32). Forward-only passes (scoring
#: masks, LIME, Occlusion) run every block in bf16.
GRADIENT_FLOAT32_BLOCKS = 3


class SpecAugment(nn.Module):
    """Zero out random frequency and time stripes of a normalised spectrogram (training only).

    Applied after ``bn0`` as in PANNs, so zero is each bin's running mean rather than some dB value.
    Widths are drawn uniformly from [0, width) per stripe and per example.
    """

    def __init__(self, freq_mask_width: int = 10, time_mask_width: int = 20, n_freq_masks: int = 2, n_time_masks: int = 2):
        super().__init__()
        self.freq_mask_width = freq_mask_width
        self.time_mask_width = time_mask_width
        self.n_freq_masks = n_freq_masks
        self.n_time_masks = n_time_masks

    def _stripes(self, batch: int, size: int, width: int, count: int, device: torch.device) -> Tensor:
        """(batch, size) bool: True where any of ``count`` random stripes covers the position."""
        if width <= 0 or count <= 0:
            return torch.zeros(batch, size, dtype=torch.bool, device=device)
        widths = torch.randint(0, width, (batch, count, 1), device=device)
        starts = (torch.rand(batch, count, 1, device=device) * (size - widths).clamp(min=1)).long()
        positions = torch.arange(size, device=device).view(1, 1, size)
        return ((positions >= starts) & (positions < starts + widths)).any(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, F, T) -> same shape with stripes set to zero."""
        if not self.training:
            return x
        batch, _, n_freq, n_time = x.shape
        freq_drop = self._stripes(batch, n_freq, self.freq_mask_width, self.n_freq_masks, x.device)
        time_drop = self._stripes(batch, n_time, self.time_mask_width, self.n_time_masks, x.device)
        drop = freq_drop[:, None, :, None] | time_drop[:, None, None, :]
        return x.masked_fill(drop, 0.0)


class MaskDropout(nn.Module):
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
        super().__init__()
        if not 0.0 <= probability <= 1.0 or not 0.0 <= max_removed <= 1.0:
            raise AudioInterpError(f"model.mask_dropout: expected probability and max_removed in [0, 1], "
                                   f"got {probability!r} and {max_removed!r}")
        self.probability = float(probability)
        self.max_removed = float(max_removed)
        self.level = level

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, 1, F, T) dB -> same shape, with removed bins at the silence level."""
        if not self.training or self.probability == 0.0:
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


class ConvBlock(nn.Module):
    """Two 3x3 conv + BN + ReLU, then 2x2 average pooling (or none), then dropout."""

    def __init__(self, in_channels: int, out_channels: int, pool: bool, dropout: float):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.pool = nn.AvgPool2d(2) if pool else nn.Identity()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C_in, F, T) -> (B, C_out, F/2, T/2), or unpooled for the last block."""
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.dropout(self.pool(x))


class Cnn14(nn.Module):
    """Cnn14 classifier: (B, 1, F, T) dB spectrogram -> (B, n_classes) logits.

    Args:
        n_bins: F, the number of frequency bins (64 for log-mel, 257 for the STFT feature).
        n_classes: size of the classifier head.
        width: scales every channel count; 1.0 is the real Cnn14.
        dropout: dropout after each conv block and around fc1.
        freq_mask_width, time_mask_width: SpecAugment stripe widths (bins, frames), training only.
        mask_dropout, mask_dropout_max, silence_level: :class:`MaskDropout`'s probability,
            max_removed and level, training only (0 = off, the PANNs recipe).
    """

    def __init__(self, n_bins: int = 64, n_classes: int = 50, width: float = 1.0, dropout: float = 0.2,
                 freq_mask_width: int = 10, time_mask_width: int = 20, mask_dropout: float = 0.0,
                 mask_dropout_max: float = 0.75, silence_level: float | None = SILENCE_DB):
        super().__init__()
        if width <= 0:
            raise AudioInterpError(f"model.width must be > 0, got {width}")
        channels = [max(1, round(c * width)) for c in CNN14_CHANNELS]
        self.n_bins = n_bins
        self.n_classes = n_classes
        self.mask_dropout = MaskDropout(mask_dropout, mask_dropout_max, silence_level)
        self.bn0 = nn.BatchNorm2d(n_bins)
        self.spec_augment = SpecAugment(freq_mask_width, time_mask_width)
        in_channels = [1, *channels[:-1]]
        for index, (c_in, c_out) in enumerate(zip(in_channels, channels), start=1):
            self.add_module(f"conv_block{index}", ConvBlock(c_in, c_out, pool=index < 6, dropout=dropout))
        self.time_max = nn.AdaptiveMaxPool1d(1)
        self.time_mean = nn.AdaptiveAvgPool1d(1)
        self.embedding_dropout = nn.Dropout(dropout)
        self.fc1 = nn.Linear(channels[-1], channels[-1])
        self.fc1_relu = nn.ReLU()
        self.fc1_dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels[-1], n_classes)
        self._init_weights()
        #: What :meth:`forward` autocasts to (``audiointerp.models.PRECISIONS``); None = float32.
        self.autocast_dtype: torch.dtype | None = None

    def set_precision(self, autocast_dtype: torch.dtype | None) -> None:
        """Run every later pass (forward, and the backward that mirrors it) under autocast to
        ``autocast_dtype``, or in float32 for None; logits come back float32 either way."""
        self.autocast_dtype = autocast_dtype

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def conv_blocks(self) -> list[ConvBlock]:
        return [getattr(self, f"conv_block{i}") for i in range(1, 7)]

    def randomisation_cascade(self) -> list[tuple[str, list[nn.Module]]]:
        """Named layer groups from the output down, for cascading randomisation (audiointerp.sanity):
        the head (fc1 and the classifier), then conv_block6 ... conv_block1."""
        return [("head", [self.fc1, self.classifier])] + [
            (f"conv_block{i}", [getattr(self, f"conv_block{i}")]) for i in range(6, 0, -1)]

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, 1, F, T) log spectrogram in dB -> (B, n_classes) float32 logits."""
        if x.shape[2] != self.n_bins:
            raise ValueError(f"Cnn14 was built for {self.n_bins} frequency bins, got input {tuple(x.shape)}")
        if self.autocast_dtype is None:
            return self._logits(x)
        exact_blocks = GRADIENT_FLOAT32_BLOCKS if torch.is_grad_enabled() and x.requires_grad else 0
        # Autocast here, around the model's own passes only: an explainer's arithmetic around them
        # (LIME's ridge regression, SHAP's multipliers) and the metrics stay float32.
        with torch.autocast(x.device.type, dtype=self.autocast_dtype):
            return self._logits(x, exact_blocks).float()

    def _logits(self, x: Tensor, exact_blocks: int = 0) -> Tensor:
        """Logits of (B, 1, F, T) ``x``; under autocast, ``bn0`` and the first ``exact_blocks`` conv
        blocks in float32 (:data:`GRADIENT_FLOAT32_BLOCKS`)."""
        x = self.mask_dropout(x)
        blocks = self.conv_blocks
        with torch.autocast(x.device.type, enabled=False) if exact_blocks else contextlib.nullcontext():
            # bn0 normalises each frequency bin: move bins to the channel axis and back.
            x = self.bn0(x.transpose(1, 2)).transpose(1, 2)
            x = self.spec_augment(x)
            for block in blocks[:exact_blocks]:
                x = block(x)
        for block in blocks[exact_blocks:]:
            x = block(x)
        x = x.mean(dim=2)  # (B, C, T'): mean over frequency
        x = (self.time_max(x) + self.time_mean(x)).squeeze(-1)  # (B, C)
        x = self.embedding_dropout(x)
        x = self.fc1_dropout(self.fc1_relu(self.fc1(x)))
        return self.classifier(x)
