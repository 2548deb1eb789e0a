"""Signed Grad-CAM on a chosen layer of the model (default: Cnn14's last conv of block 6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiointerp.errors import AudioInterpError
from audiointerp.explainers.base import Explainer


class GradCam(Explainer):
    """Channel weights = spatially averaged gradients; weighted sum of activations; no ReLU.

    Skipping Grad-CAM's usual ReLU keeps negative evidence, which the ``*_pos`` masks and the
    signed masks then treat differently. The map is bilinearly resized to the input's (F, T).

    Args:
        layer: dotted name of the module whose output is weighed. The reference's
            ``conv_block6.conv2`` sits before BatchNorm, whose per-channel shift adds a per-clip
            constant to the map and so moves its sign pattern; ``conv_block6`` (the block's
            post-BN-ReLU output, the usual Grad-CAM choice) has no such shift.
    """

    def __init__(self, layer: str = "conv_block6.conv2") -> None:
        if not isinstance(layer, str) or not layer:
            raise AudioInterpError(f"explainer.layer: expected a module name such as conv_block6.conv2, got {layer!r}")
        self.layer = layer

    def check(self, model: nn.Module) -> None:
        self._layer_of(model)

    def _layer_of(self, model: nn.Module) -> nn.Module:
        try:
            return model.get_submodule(self.layer)
        except AttributeError:
            raise AudioInterpError(f"explainer.layer: {type(model).__name__} has no module {self.layer!r} "
                                   "(expected e.g. conv_block6.conv2 or conv_block6)") from None

    def attribute(self, model: nn.Module, inputs: Tensor, target: Tensor) -> Tensor:
        layer = self._layer_of(model)
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
