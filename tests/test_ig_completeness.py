"""Integrated Gradients records how far it misses completeness, per clip, on a tiny real Cnn14."""

from __future__ import annotations

import math

import torch

from audiointerp.explainers.captum_methods import IntegratedGradients
from audiointerp.models import Cnn14


def tiny_model_and_clips():
    torch.manual_seed(0)
    model = Cnn14(n_bins=32, n_classes=3, width=1 / 16).eval()
    inputs = torch.randn(3, 1, 32, 64) * 10 - 40  # (B, 1, F, T) dB
    return model, inputs, model(inputs).argmax(dim=1)


def completeness_error(model, inputs, target, explainer) -> tuple[torch.Tensor, torch.Tensor]:
    """(recorded error, the error worked out here from the attributions and two forwards), both (B,)."""
    attribution = explainer.attribute(model, inputs, target)
    with torch.no_grad():
        rows = torch.arange(len(inputs))
        change = model(inputs)[rows, target] - model(torch.full_like(inputs, -100.0))[rows, target]
    here = (attribution.sum(dim=(1, 2, 3)) - change).abs() / change.abs()
    return explainer.clip_diagnostics()["ig_completeness_error"], here


def test_the_completeness_error_is_small_at_many_steps_and_larger_at_few():
    model, inputs, target = tiny_model_and_clips()
    assert IntegratedGradients(silence_level=-100.0).clip_diagnostics() == {}, "nothing before the first call"
    few, few_here = completeness_error(model, inputs, target, IntegratedGradients(silence_level=-100.0, n_steps=2))
    many, many_here = completeness_error(model, inputs, target, IntegratedGradients(silence_level=-100.0, n_steps=256))
    assert few.shape == many.shape == (3,)
    torch.testing.assert_close(few, few_here.float(), atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(many, many_here.float(), atol=1e-4, rtol=1e-3)
    assert many.max() < 0.01, many
    assert few.max() > 10 * many.max(), (few, many)


def test_a_clip_whose_logit_does_not_change_has_no_error_to_report():
    model, inputs, target = tiny_model_and_clips()
    silent = torch.full_like(inputs[:1], -100.0)  # the reference itself: f(x) - f(reference) = 0
    explainer = IntegratedGradients(silence_level=-100.0, n_steps=4)
    explainer.attribute(model, silent, target[:1])
    assert math.isnan(explainer.clip_diagnostics()["ig_completeness_error"].item())
