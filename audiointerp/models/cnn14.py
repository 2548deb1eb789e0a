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
from audiointerp.models.base import Classifier

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


class BinNorm(nn.BatchNorm2d):
    """BatchNorm over the frequency bins of a (B, 1, F, T) spectrogram, as PANNs' ``bn0``: each bin
    normalised on its own. Its output is (B, 1, F, T) like its input (the bins go to the channel axis
    and back inside), so the normalised spectrogram can be listened to by name (L-MAC's ``bn0``).
    Its parameters and state-dict keys are BatchNorm2d's over F channels."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class Cnn14(Classifier):
    """Cnn14 classifier: (B, 1, F, T) dB spectrogram -> (B, n_classes) logits.

    Args:
        n_bins: F, the number of frequency bins (64 for log-mel, 257 for the STFT feature).
        n_classes: size of the classifier head.
        width: scales every channel count; 1.0 is the real Cnn14.
        dropout: dropout after each conv block and around fc1.

    Training augmentations (SpecAugment, masked inputs) are the training step's
    (``audiointerp.augment``, ``train.augment``), not the model's.
    """

    def __init__(self, n_bins: int = 64, n_classes: int = 50, width: float = 1.0, dropout: float = 0.2):
        super().__init__()
        if width <= 0:
            raise AudioInterpError(f"model.width must be > 0, got {width}")
        channels = [max(1, round(c * width)) for c in CNN14_CHANNELS]
        self.n_bins = n_bins
        self.n_classes = n_classes
        self.bn0 = BinNorm(n_bins)
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

    def gradcam_layer(self) -> str:
        """The reference's layer: block 6's last convolution (before its BatchNorm)."""
        return "conv_block6.conv2"

    def listened_layers(self, inputs: Tensor | None = None) -> list[str]:
        """The published L-MAC decoder's: conv blocks 3-6."""
        return [f"conv_block{i}" for i in range(3, 7)]

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
            return self.logits(x)
        exact_blocks = GRADIENT_FLOAT32_BLOCKS if torch.is_grad_enabled() and x.requires_grad else 0
        # Autocast here, around the model's own passes only: an explainer's arithmetic around them
        # (LIME's ridge regression, SHAP's multipliers) and the metrics stay float32.
        with torch.autocast(x.device.type, dtype=self.autocast_dtype):
            return self.logits(x, exact_blocks).float()

    def logits(self, x: Tensor, exact_blocks: int = 0) -> Tensor:
        """Logits of (B, 1, F, T) ``x``; under autocast, ``bn0`` and the first ``exact_blocks`` conv
        blocks in float32 (:data:`GRADIENT_FLOAT32_BLOCKS`)."""
        blocks = self.conv_blocks
        with torch.autocast(x.device.type, enabled=False) if exact_blocks else contextlib.nullcontext():
            x = self.bn0(x)
            for block in blocks[:exact_blocks]:
                x = block(x)
        for block in blocks[exact_blocks:]:
            x = block(x)
        x = x.mean(dim=2)  # (B, C, T'): mean over frequency
        x = (self.time_max(x) + self.time_mean(x)).squeeze(-1)  # (B, C)
        x = self.embedding_dropout(x)
        x = self.fc1_dropout(self.fc1_relu(self.fc1(x)))
        return self.classifier(x)
