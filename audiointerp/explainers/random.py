"""The floor: attributions that know nothing about the model."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from audiointerp.errors import AudioInterpError
from audiointerp.explainers.base import Explainer, content_seed


class RandomAttribution(Explainer):
    """Attributions drawn i.i.d. from a standard normal, seeded by the explainer's seed and the clip.

    Standard normal rather than uniform on [0, 1): its sign is random too, so ``bin`` keeps about
    half the bins and the ``*_pos`` masks see about half of them, as they would for a real signed
    explainer. Each clip's map comes from a generator seeded with ``seed`` and a hash of the clip's
    values, so the same clip always gets the same map whatever the model (what the randomisation
    sanity checks must find), however clips are batched; the global RNG is never touched.

    Args:
        seed: mixed into every clip's generator seed.
    """

    needs_gradients = False  # forward passes only: explains a black box too

    def __init__(self, seed: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise AudioInterpError(f"explainer.seed: expected a non-negative integer, got {seed!r}")
        self.seed = seed

    def _generator(self, clip: Tensor) -> torch.Generator:
        return torch.Generator().manual_seed(content_seed(self.seed, clip))

    def attribute(self, model: nn.Module, inputs: Tensor, target: Tensor) -> Tensor:
        """inputs (B, 1, F, T) -> (B, 1, F, T) float32 N(0, 1) draws on the inputs' device."""
        draws = [torch.randn(clip.shape, generator=self._generator(clip)) for clip in inputs]
        return torch.stack(draws).to(inputs.device)
