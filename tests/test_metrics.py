"""Faithfulness and complexity metrics, checked against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from audiointerp.masks import make_masks
from audiointerp.metrics import FAITHFULNESS_NAMES, METRIC_NAMES, entropy, faithfulness, gini, score


def _close(actual: torch.Tensor, expected: list[float], atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float32), atol=atol, rtol=1e-6)


def test_score_gives_every_metric_name_in_order_one_float32_per_clip():
    """What ``METRIC_NAMES`` promises its readers (the CSV columns, the report): ``score`` returns
    exactly those metrics, in that order, one value per clip; the faithfulness ones are
    :func:`faithfulness`'s and the complexity ones the mask's Gini index and entropy."""
    generator = torch.Generator().manual_seed(0)
    p, p_masked, p_unmasked = (torch.softmax(torch.randn(4, 3, generator=generator), dim=1) for _ in range(3))
    mask = torch.rand(4, 1, 5, 6, generator=generator)
    result = score(p, p_masked, p_unmasked, mask)
    assert tuple(result) == METRIC_NAMES
    assert all(v.shape == (4,) and v.dtype == torch.float32 for v in result.values())
    assert set(FAITHFULNESS_NAMES) | {"SPS", "COMP"} == set(METRIC_NAMES) and len(METRIC_NAMES) == 7
    heard = faithfulness(p, p_masked, p_unmasked)
    assert tuple(heard) == FAITHFULNESS_NAMES
    for name in FAITHFULNESS_NAMES:
        torch.testing.assert_close(result[name], heard[name])
    torch.testing.assert_close(result["SPS"], gini(mask))
    torch.testing.assert_close(result["COMP"], entropy(mask))


def test_faithfulness_metrics_on_a_hand_table():
    p = torch.tensor(
        [
            [0.7, 0.2, 0.1],  # c = 0, masked drops and flips the prediction
            [0.1, 0.3, 0.6],  # c = 2, masked raises p_c
            [0.25, 0.5, 0.25],  # c = 1, masked identical to original
            [1.0, 0.0, 0.0],  # c = 0 with p_c = 1: AG's denominator is only 1e-6
            [0.0, 1.0, 0.0],  # c = 1 with p_c = 1 and masked also 1
        ]
    )
    p_masked = torch.tensor(
        [
            [0.3, 0.6, 0.1],
            [0.05, 0.15, 0.8],
            [0.25, 0.5, 0.25],
            [0.2, 0.8, 0.0],
            [0.0, 1.0, 0.0],
        ]
    )
    p_unmasked = torch.tensor(
        [
            [0.1, 0.6, 0.3],
            [0.2, 0.5, 0.3],
            [0.5, 0.2, 0.3],
            [1.0, 0.0, 0.0],
            [0.9, 0.1, 0.0],
        ]
    )
    mask = torch.ones(5, 1, 2, 2)
    result = score(p, p_masked, p_unmasked, mask)
    assert list(result) == list(METRIC_NAMES)
    for name, values in result.items():
        assert values.shape == (5,), name
        assert values.dtype == torch.float32, name
        assert torch.isfinite(values).all(), name

    _close(result["FF"], [0.7 - 0.1, 0.6 - 0.3, 0.5 - 0.2, 0.0, 1.0 - 0.1])
    _close(result["AI"], [0.0, 100.0, 0.0, 0.0, 0.0])
    # row 0: 100 * 0.4 / 0.700001; row 3: 100 * 0.8 / 1.000001
    _close(result["AD"], [57.1427755, 0.0, 0.0, 79.9999200, 0.0], atol=1e-4)
    # row 1: 100 * 0.2 / 0.400001
    _close(result["AG"], [0.0, 49.9998750, 0.0, 0.0, 0.0], atol=1e-4)
    _close(result["FidIn"], [0.0, 1.0, 1.0, 0.0, 1.0])
    # All-ones masks are constant.
    _close(result["SPS"], [0.0] * 5)
    _close(result["COMP"], [0.0] * 5)


def test_score_does_not_blow_up_when_masked_beats_certain_prediction():
    # p_c = 1 - 1e-7 and masked 1: AG = 100 * 1e-7 / (1e-7 + 1e-6), finite and small.
    p = torch.tensor([[1 - 1e-7, 1e-7]], dtype=torch.float64)
    p_masked = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    result = score(p, p_masked, p, torch.ones(1, 1, 1, 1))
    _close(result["AG"], [100 * 1e-7 / 1.1e-6], atol=1e-4)
    _close(result["AI"], [100.0])


def _thirty_percent_mask() -> tuple[torch.Tensor, int, int]:
    n = 64 * 501
    kept = round(0.3 * n)  # 9619.2 -> 9619 bins
    flat = torch.zeros(n)
    flat[torch.randperm(n, generator=torch.Generator().manual_seed(0))[:kept]] = 1.0
    return flat.reshape(1, 1, 64, 501), n, kept


def test_thirty_percent_binary_mask_worked_example():
    mask, n, kept = _thirty_percent_mask()
    # k ones, n - k zeros, +1e-7 everywhere. The weights (2i - n - 1) sum to 0 over all i, so
    # the 1e-7 part cancels in the numerator, and the ones (ranks n-k+1..n) contribute
    # sum(2i - n - 1) = k(n - k). The denominator is n (k + n*1e-7), so
    # SPS = k(n - k) / (n (k + n*1e-7)) = 0.7000060 for k = 9619 (k = 9620 would give 0.6999748),
    # and COMP = ln k = 9.171496 (k equal shares).
    expected_sps = kept * (n - kept) / (n * (kept + n * 1e-7))
    expected_comp = math.log(kept)
    sps = gini(mask)
    comp = entropy(mask)
    _close(sps, [expected_sps], atol=1e-6)
    _close(comp, [expected_comp], atol=1e-5)
    # The quoted figures, to the stated precision.
    assert abs(sps.item() - 0.700006) < 5e-7
    assert abs(comp.item() - 9.1715) < 5e-5


def test_topk_30_mask_reproduces_the_worked_example():
    # A topK_30 mask of a tie-free 64x501 map keeps exactly 9619 bins (see test_masks),
    # so the pipeline end to end gives the quoted SPS and COMP.
    ranks = torch.randperm(64 * 501, generator=torch.Generator().manual_seed(3)).float()
    mask = make_masks(ranks.reshape(1, 1, 64, 501), names=["topK_30"])["topK_30"]
    result = score(torch.tensor([[0.9, 0.1]]), torch.tensor([[0.9, 0.1]]), torch.tensor([[0.9, 0.1]]), mask)
    assert abs(result["SPS"].item() - 0.700006) < 5e-7
    assert abs(result["COMP"].item() - 9.1715) < 5e-5


def test_small_soft_mask_by_hand():
    # |mask| = [0, 1, 3] (+1e-7 each): weights (2i - n - 1) = [-2, 0, 2] -> 6 / (3 * (4 + 3e-7)).
    # Shares [0, 1/4, 3/4] -> -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.5623351446.
    mask = torch.tensor([[0.0, -1.0, 3.0]])
    _close(gini(mask), [6 / (3 * (4 + 3e-7))], atol=1e-6)
    _close(entropy(mask), [0.5623351446], atol=1e-6)


@pytest.mark.parametrize("value", [1.0, 0.0, 0.5])
def test_constant_masks_score_zero(value):
    mask = torch.full((2, 1, 64, 501), value)
    _close(gini(mask), [0.0, 0.0], atol=0)
    _close(entropy(mask), [0.0, 0.0], atol=0)


def test_nearly_constant_mask_counts_as_constant_but_a_real_step_does_not():
    base = torch.full((1, 1, 4, 4), 0.5)
    # Range 1e-7 < 1e-8 + 1e-5 * 0.5.
    below = base.clone()
    below[0, 0, 0, 0] += 1e-7
    # Range 1e-4 is above the tolerance.
    above = base.clone()
    above[0, 0, 0, 0] += 1e-4
    _close(gini(below), [0.0], atol=0)
    _close(entropy(below), [0.0], atol=0)
    assert gini(above).item() > 0
    assert entropy(above).item() > 0


def test_one_hot_mask():
    n = 64 * 501
    mask = torch.zeros(1, 1, 64, 501)
    mask[0, 0, 10, 20] = 1.0
    # k = 1 in the closed form: (n - 1) / (n (1 + n*1e-7)), close to 1 - 1/n.
    _close(gini(mask), [(n - 1) / (n * (1 + n * 1e-7))], atol=1e-6)
    assert abs(gini(mask).item() - (1 - 1 / n)) < 5e-3
    _close(entropy(mask), [0.0], atol=1e-7)


def _numpy_gini(sample: np.ndarray) -> float:
    values = np.sort(np.abs(sample).ravel() + 1e-7)
    n = values.size
    total = 0.0
    for i, value in enumerate(values, start=1):
        total += (2 * i - n - 1) * value
    return total / (n * values.sum())


def _numpy_entropy(sample: np.ndarray) -> float:
    magnitude = np.abs(sample).ravel()
    shares = magnitude / magnitude.sum()
    shares = shares[shares > 0]
    return float(-(shares * np.log(shares)).sum())


def test_gini_and_entropy_match_numpy_reference_on_random_masks():
    rng = np.random.default_rng(4)
    masks = rng.normal(size=(5, 1, 16, 25))
    masks[1] = np.abs(masks[1]) ** 4  # heavy-tailed, strongly concentrated
    masks[2][masks[2] < 0.3] = 0.0  # many exact zeros
    masks[3] = (masks[3] > 1.0).astype(float)  # binary
    tensor = torch.from_numpy(masks).float()
    expected_gini = [_numpy_gini(sample) for sample in masks.astype(np.float32)]
    expected_entropy = [_numpy_entropy(sample) for sample in masks.astype(np.float32)]
    _close(gini(tensor), expected_gini, atol=1e-6)
    _close(entropy(tensor), expected_entropy, atol=1e-5)
    # The references themselves differ between samples, so a batched mix-up would show.
    assert len(set(np.round(expected_gini, 4))) == 5


def test_gini_and_entropy_are_per_sample_in_a_batch():
    mask, n, kept = _thirty_percent_mask()
    batch = torch.cat([mask, torch.ones_like(mask), torch.zeros_like(mask)])
    _close(gini(batch), [kept * (n - kept) / (n * (kept + n * 1e-7)), 0.0, 0.0], atol=1e-6)
    _close(entropy(batch), [math.log(kept), 0.0, 0.0], atol=1e-5)


def test_an_explained_class_other_than_the_predicted_one_is_the_class_scored():
    p = torch.tensor([[0.7, 0.2, 0.1]])
    p_masked = torch.tensor([[0.5, 0.4, 0.1]])
    p_unmasked = torch.tensor([[0.8, 0.05, 0.15]])
    mask = torch.ones(1, 1, 2, 2)
    predicted = score(p, p_masked, p_unmasked, mask)
    explained = score(p, p_masked, p_unmasked, mask, target=torch.tensor([1]))
    torch.testing.assert_close(predicted["FF"], torch.tensor([0.7 - 0.8]))
    torch.testing.assert_close(explained["FF"], torch.tensor([0.2 - 0.05]))
    assert float(explained["AI"]) == 100.0 and float(predicted["AI"]) == 0.0  # class 1 rose when kept alone
    torch.testing.assert_close(explained["AG"], torch.tensor([100 * 0.2 / (0.8 + 1e-6)]))
    assert float(explained["FidIn"]) == 0.0 and float(predicted["FidIn"]) == 1.0  # the masked input is class 0
