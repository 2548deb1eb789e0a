"""Every explainer returns finite attributions of the input's shape for the target class."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from audiointerp.errors import AudioInterpError
from audiointerp.explainers.gradcam import GradCam
from audiointerp.explainers.saliency import Saliency
from audiointerp.models import Cnn14


@pytest.fixture(scope="module")
def model_and_inputs():
    torch.manual_seed(0)
    model = Cnn14(n_bins=64, n_classes=5, width=1 / 16).eval()
    inputs = torch.randn(3, 1, 64, 120) * 10 - 40
    return model, inputs


def test_saliency_is_the_target_logit_gradient(model_and_inputs):
    model, inputs = model_and_inputs
    target = torch.tensor([0, 3, 4])
    attribution = Saliency().attribute(model, inputs, target)
    assert attribution.shape == inputs.shape
    for i in range(3):
        x = inputs[i:i + 1].clone().requires_grad_(True)
        model(x)[0, target[i]].backward()
        torch.testing.assert_close(attribution[i:i + 1], x.grad)
    assert (attribution < 0).any() and (attribution > 0).any(), "saliency must stay signed"


def _block6_input(model, inputs):
    x = model.bn0(inputs)  # BinNorm: each frequency bin normalised, (B, 1, F, T) in and out
    for block in model.conv_blocks[:5]:
        x = block(x)
    return x


def _gradcam_by_hand(model, activation, block_output, target, size):
    """Grad-CAM of ``activation`` (a leaf), with ``block_output`` computed from it: the head by hand."""
    y = block_output.mean(dim=2)
    y = (model.time_max(y) + model.time_mean(y)).squeeze(-1)
    logits = model.classifier(model.fc1_relu(model.fc1(y)))
    logits.gather(1, target.view(-1, 1)).sum().backward()
    weights = activation.grad.mean(dim=(2, 3), keepdim=True)
    cam = (weights * activation).sum(1, keepdim=True)
    return F.interpolate(cam, size=size, mode="bilinear", align_corners=False)


def test_gradcam_matches_definition_and_keeps_negative_values(model_and_inputs):
    model, inputs = model_and_inputs
    target = torch.tensor([1, 2, 0])
    attribution = GradCam().attribute(model, inputs, target)
    assert attribution.shape == inputs.shape and torch.isfinite(attribution).all()

    # the definition, computed by hand: activation of block 6's last conv, gradients of the target logit
    x = _block6_input(model, inputs)
    block6 = model.conv_block6
    activation = block6.conv2(block6.relu1(block6.bn1(block6.conv1(x)))).detach().requires_grad_(True)
    expected = _gradcam_by_hand(model, activation, block6.relu2(block6.bn2(activation)), target, inputs.shape[-2:])
    torch.testing.assert_close(attribution, expected.detach(), rtol=1e-4, atol=1e-6)
    assert (attribution < 0).any(), "signed Grad-CAM must keep negative evidence (no ReLU)"


def test_gradcam_layer_option_weighs_the_chosen_module(model_and_inputs):
    model, inputs = model_and_inputs
    target = torch.tensor([1, 2, 0])
    before_bn = GradCam(layer="conv_block6.conv2").attribute(model, inputs, target)
    block_output = GradCam(layer="conv_block6").attribute(model, inputs, target)
    assert block_output.shape == inputs.shape and torch.isfinite(block_output).all()
    assert not torch.allclose(before_bn, block_output)

    # by hand on the block's output: weights = mean gradient of the target logit over (f, t)
    activation = model.conv_block6(_block6_input(model, inputs)).detach().requires_grad_(True)
    expected = _gradcam_by_hand(model, activation, activation, target, inputs.shape[-2:])
    torch.testing.assert_close(block_output, expected.detach(), rtol=1e-4, atol=1e-6)


def test_gradcam_unknown_layer_names_the_option(model_and_inputs):
    model, inputs = model_and_inputs
    with pytest.raises(AudioInterpError, match=r"explainer.layer: the model \(Cnn14\) has no module 'conv_block9'"):
        GradCam(layer="conv_block9").attribute(model, inputs, torch.tensor([0, 0, 0]))
