"""The floor: attributions that know nothing about the model or the clip."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from audiointerp.errors import AudioInterpError
from audiointerp.explainers.base import Explainer


class RandomAttribution(Explainer):
    """Attributions drawn i.i.d. from a standard normal, from the explainer's own generator.

    Standard normal rather than uniform on [0, 1): its sign is random too, so ``bin`` keeps about
    half the bins and the ``*_pos`` masks see about half of them, as they would for a real signed
    explainer. Each clip's map is drawn on its own, in clip order, so the maps do not depend on how
    clips are batched; the global RNG that training uses is never touched.

    Args:
        seed: seeds this explainer's generator.
    """

    def __init__(self, seed: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise AudioInterpError(f"explainer.seed: expected a non-negative integer, got {seed!r}")
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def attribute(self, model: nn.Module, inputs: Tensor, target: Tensor) -> Tensor:
        """inputs (B, 1, F, T) -> (B, 1, F, T) float32 N(0, 1) draws on the inputs' device."""
        draws = [torch.randn(inputs.shape[1:], generator=self.generator) for _ in range(inputs.shape[0])]
        return torch.stack(draws).to(inputs.device)
