"""Deletion and insertion curves, against probabilities worked out by hand on a linear model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from audiointerp.curves import CURVE_NAMES, area, bin_ranks, curves
from audiointerp.models import Cnn14


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def linear_model() -> nn.Module:
    """(B, 1, 1, 4) dB -> logits [sum of the four bins, 5]: p(class 0) = sigmoid(sum - 5)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]))
        model[1].bias.copy_(torch.tensor([0.0, 5.0]))
    return model.eval()


def trapezoid(values: list[float]) -> float:
    steps = len(values) - 1
    return sum((values[k] + values[k + 1]) / 2 for k in range(steps)) / steps


def test_bin_ranks_put_the_highest_first_and_break_ties_by_position():
    attribution = torch.tensor([0.1, 0.9, 0.5, 0.9]).view(1, 1, 1, 4)
    assert bin_ranks(attribution).flatten().tolist() == [3, 0, 2, 1]
    assert bin_ranks(torch.zeros(1, 1, 1, 4)).flatten().tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("eval_batch_size", [1, 3, 100])
def test_curves_of_a_linear_model_by_hand(eval_batch_size):
    model = linear_model()
    log_db = torch.tensor([[4.0, 3.0, 2.0, 1.0], [4.0, 3.0, 2.0, 1.0]]).view(2, 1, 1, 4)
    # clip 0 ranks bins 1, 2, 3, 0; clip 1 ranks them 0, 1, 2, 3 (the bins' own order)
    attribution = torch.tensor([[0.1, 0.9, 0.5, 0.2], [4.0, 3.0, 2.0, 1.0]]).view(2, 1, 1, 4)
    with torch.no_grad():
        p = torch.softmax(model(log_db), dim=1)
    target = p.argmax(dim=1)
    assert target.tolist() == [0, 0]
    got = curves(model, log_db, attribution, target, p, silence_level=0.0, eval_batch_size=eval_batch_size, steps=4)

    # sums of the bins left (deletion) or put in (insertion) after k = 0..4 bins, silence at 0 dB
    deletion_sums = [[10, 7, 5, 4, 0], [10, 6, 3, 1, 0]]
    insertion_sums = [[0, 3, 5, 6, 10], [0, 4, 7, 9, 10]]
    for clip in range(2):
        deletion = [sigmoid(s - 5) for s in deletion_sums[clip]]
        insertion = [sigmoid(s - 5) for s in insertion_sums[clip]]
        assert got["deletion"][clip].tolist() == pytest.approx(deletion, abs=1e-6)
        assert got["insertion"][clip].tolist() == pytest.approx(insertion, abs=1e-6)
        assert got["deletion_auc"][clip].item() == pytest.approx(trapezoid(deletion), abs=1e-6)
        assert got["insertion_auc"][clip].item() == pytest.approx(trapezoid(insertion), abs=1e-6)
    # the bins' own order removes the loud ones first: a lower deletion area, a higher insertion area
    assert got["deletion_auc"][1] < got["deletion_auc"][0] and got["insertion_auc"][1] > got["insertion_auc"][0]
    # clip 0 by hand, as a number: deletion (s(5)/2 + s(2) + s(0) + s(-1) + s(-5)/2) / 4
    assert got["deletion_auc"][0].item() == pytest.approx(
        (sigmoid(5) / 2 + sigmoid(2) + 0.5 + sigmoid(-1) + sigmoid(-5) / 2) / 4, abs=1e-6)


def test_a_null_silence_level_is_each_clips_minimum():
    model = linear_model()
    log_db = torch.tensor([4.0, 3.0, 2.0, 1.0]).view(1, 1, 1, 4)
    attribution = torch.tensor([4.0, 3.0, 2.0, 1.0]).view(1, 1, 1, 4)
    with torch.no_grad():
        p = torch.softmax(model(log_db), dim=1)
    got = curves(model, log_db, attribution, torch.tensor([0]), p, silence_level=None, eval_batch_size=8, steps=2)
    # N = 4, steps = 2: 0, 2, 4 bins; removed bins at the clip's minimum, 1 dB
    assert got["deletion"][0].tolist() == pytest.approx([sigmoid(5), sigmoid(1 + 1 + 2 + 1 - 5), sigmoid(4 - 5)], abs=1e-6)
    assert got["insertion"][0].tolist() == pytest.approx([sigmoid(4 - 5), sigmoid(4 + 3 + 1 + 1 - 5), sigmoid(5)], abs=1e-6)


def test_area_is_the_trapezoid_rule_over_zero_to_one():
    assert area(torch.tensor([[1.0, 1.0, 1.0]])).item() == pytest.approx(1.0)
    assert area(torch.tensor([[1.0, 0.0]])).item() == pytest.approx(0.5)
    assert area(torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0]])).item() == pytest.approx(0.25)


def test_a_tiny_cnn14_gets_the_same_curves_whatever_the_eval_batch_size():
    torch.manual_seed(0)
    model = Cnn14(n_bins=32, n_classes=3, width=1 / 16).eval()
    log_db = torch.randn(3, 1, 32, 64) * 10 - 40
    attribution = torch.randn(3, 1, 32, 64)
    with torch.no_grad():
        p = torch.softmax(model(log_db), dim=1)
    target = p.argmax(dim=1)
    one = curves(model, log_db, attribution, target, p, silence_level=-100.0, eval_batch_size=1, steps=5)
    many = curves(model, log_db, attribution, target, p, silence_level=-100.0, eval_batch_size=64, steps=5)
    for name in ("deletion", "insertion", *CURVE_NAMES):
        torch.testing.assert_close(one[name], many[name], atol=1e-5, rtol=1e-5)
    # the end points: the clip as it is, and all silence (the same for both curves)
    with torch.no_grad():
        silent = torch.softmax(model(torch.full_like(log_db, -100.0)), dim=1)[torch.arange(3), target]
    torch.testing.assert_close(one["deletion"][:, 0], p[torch.arange(3), target])
    torch.testing.assert_close(one["insertion"][:, -1], p[torch.arange(3), target])
    torch.testing.assert_close(one["deletion"][:, -1], silent, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one["insertion"][:, 0], silent, atol=1e-5, rtol=1e-5)
    assert one["deletion_auc"].shape == (3,) and one["deletion_auc"].dtype == torch.float32
