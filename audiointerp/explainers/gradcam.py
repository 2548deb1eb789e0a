"""Signed Grad-CAM on the model's ``gradcam_layer`` (Cnn14: the last conv of block 6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiointerp.explainers.base import Explainer


class GradCam(Explainer):
    """Channel weights = spatially averaged gradients; weighted sum of activations; no ReLU.

    Skipping Grad-CAM's usual ReLU keeps negative evidence, which the ``*_pos`` masks and the
    signed masks then treat differently. The map is bilinearly resized to the input's (F, T).
    """

    def attribute(self, model: nn.Module, inputs: Tensor, target: Tensor) -> Tensor:
        layer = getattr(model, "gradcam_layer", None)
        if layer is None:
            raise TypeError(f"{type(model).__name__} has no `gradcam_layer` for Grad-CAM")
        captured: dict[str, Tensor] = {}

        def keep_activation(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
            captured["activation"] = output

        handle = layer.register_forward_hook(keep_activation)
        try:
            with torch.enable_grad():
                # The input requires grad so the graph exists even for a frozen model; the
                # backward pass stops at the layer (no weight or input gradients are computed).
                logits = model(inputs.detach().clone().requires_grad_(True))
                selected = logits.gather(1, target.view(-1, 1).to(logits.device)).sum()
                activation = captured["activation"]  # (B, C, f, t)
                (activation_grad,) = torch.autograd.grad(selected, activation)
        finally:
            handle.remove()
        channel_weights = activation_grad.mean(dim=(2, 3), keepdim=True)
        cam = (channel_weights * activation).sum(dim=1, keepdim=True).detach()  # (B, 1, f, t)
        return F.interpolate(cam, size=inputs.shape[-2:], mode="bilinear", align_corners=False)
