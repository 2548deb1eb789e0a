"""The ceiling: the clip's ground-truth evidence as the attribution."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from audiointerp.errors import AudioInterpError
from audiointerp.explainers.base import Explainer


class Oracle(Explainer):
    """+1 inside the class event's region E, -1 outside (E from ``audiointerp.localization``).

    -1 rather than 0 outside so the signed masks separate E from the rest too: ``sigmoid`` keeps
    E at 0.73 and the rest at 0.27 (with 0 outside it would keep half of everything). The masks of
    the positive part (``*_pos``, ``pos_thresh_*``) see 1 inside and 0 outside either way, and
    ``bin``, ``minmax`` and ``pos_thresh_*`` are exactly E. Top-K masks larger than E include ties;
    ``mask.ties=rank`` keeps exactly K %.

    Needs data that carries evidence (``data=synthetic``); the run refuses others before starting.
    """

    needs_evidence = True
    needs_gradients = False  # forward passes only: explains a black box too

    def attribute(self, model: nn.Module, inputs: Tensor, target: Tensor, evidence: Tensor | None = None) -> Tensor:
        """inputs (B, 1, F, T), evidence (B, 1, F, T) bool -> (B, 1, F, T) float32 in {-1, 1}."""
        if evidence is None:
            raise AudioInterpError("explainer=oracle: the clips carry no ground-truth evidence "
                                   "(expected data=synthetic)")
        if evidence.shape != inputs.shape:
            raise ValueError(f"evidence: expected shape {tuple(inputs.shape)}, got {tuple(evidence.shape)}")
        inside = evidence.to(device=inputs.device, dtype=torch.bool)
        return torch.where(inside, 1.0, -1.0).to(torch.float32)
