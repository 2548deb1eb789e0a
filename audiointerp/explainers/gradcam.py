"""Signed Grad-CAM on a chosen layer of the classifier (default: the classifier's own choice)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiointerp.errors import AudioInterpError
from audiointerp.explainers.base import Explainer


class GradCam(Explainer):
    """Channel weights = spatially averaged gradients; weighted sum of activations; no ReLU.

    Skipping Grad-CAM's usual ReLU keeps negative evidence, which the ``*_pos`` masks and the
    signed masks then treat differently. The map is bilinearly resized to the input's (F, T). The
    layer's output and its gradient are put on a (B, C, f, t) grid by the classifier's ``as_map``
    (a conv map as it is; a transformer's patch tokens on the patch grid, CLS tokens dropped).

    Args:
        layer: dotted name of the module (of the classifier's ``network``) whose (B, C, f, t) output
            is weighed, or None for the classifier's ``gradcam_layer()``: Cnn14's is the reference's
            ``conv_block6.conv2``, any other network's its last 2-D convolution. The reference's
            ``conv_block6.conv2`` sits before BatchNorm, whose per-channel shift adds a per-clip
            constant to the map and so moves its sign pattern; ``conv_block6`` (the block's
            post-BN-ReLU output, the usual Grad-CAM choice) has no such shift.
    """

    def __init__(self, layer: str | None = None) -> None:
        if layer is not None and (not isinstance(layer, str) or not layer):
            raise AudioInterpError(f"explainer.layer: expected a module name such as conv_block6.conv2 (or null for "
                                   f"the model's own choice), got {layer!r}")
        self.layer = layer

    def layer_of(self, model: nn.Module) -> str:
        """The module weighed for ``model``: ``layer``, or the model's choice; checked to exist."""
        name = self.layer or model.gradcam_layer()
        model.submodule(name, "explainer.layer")
        return name

    def check(self, model: nn.Module) -> None:
        super().check(model)
        self.layer_of(model)

    def attribute(self, model: nn.Module, inputs: Tensor, target: Tensor) -> Tensor:
        name = self.layer_of(model)
        with torch.enable_grad():
            # The input requires grad so the graph exists even for a frozen model; the
            # backward pass stops at the layer (no weight or input gradients are computed).
            logits, (output,) = model.layer_outputs(inputs.detach().clone().requires_grad_(True), [name])
            activation = model.as_map(name, output, inputs)  # a conv map as it is; a transformer's patch tokens
            if activation.dim() != 4:
                raise AudioInterpError(f"explainer.layer={name}: its output has shape {tuple(output.shape)}, not "
                                       "a (B, C, f, t) map; set explainer.layer to a 2-D convolution's module")
            selected = logits.gather(1, target.view(-1, 1).to(logits.device)).sum()
            (output_grad,) = torch.autograd.grad(selected, output)
        activation, activation_grad = activation.detach(), model.as_map(name, output_grad, inputs)
        channel_weights = activation_grad.mean(dim=(2, 3), keepdim=True)
        cam = (channel_weights * activation).sum(dim=1, keepdim=True).detach().float()  # (B, 1, f, t)
        return F.interpolate(cam, size=inputs.shape[-2:], mode="bilinear", align_corners=False)
