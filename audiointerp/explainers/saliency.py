"""Saliency: the signed gradient of the target logit with respect to the input."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from audiointerp.explainers.base import Explainer


def target_logit_gradient(model: nn.Module, inputs: Tensor, target: Tensor) -> Tensor:
    """d logit_target / d inputs for each example: inputs (B, 1, F, T), target (B,) -> (B, 1, F, T).

    Examples are independent in eval mode, so the gradient of the summed target logits is each
    example's own gradient.
    """
    with torch.enable_grad():
        inputs = inputs.detach().clone().requires_grad_(True)
        logits = model(inputs)
        selected = logits.gather(1, target.view(-1, 1).to(logits.device)).sum()
        (gradient,) = torch.autograd.grad(selected, inputs)
    return gradient.detach()


class Saliency(Explainer):
    """Signed input gradient (no absolute value, so evidence against the class stays negative)."""

    def attribute(self, model: nn.Module, inputs: Tensor, target: Tensor) -> Tensor:
        return target_logit_gradient(model, inputs, target)
