"""Masks from attributions, checked against values worked out by hand."""

from __future__ import annotations

import pytest
import torch

from audiointerp.errors import AudioInterpError
from audiointerp.masks import BINARY_MASK_NAMES, MASK_NAMES, SOFT_MASK_NAMES, apply_mask, make_masks

# Two samples of shape (1, 2, 3), written flattened (row-major) below.
# Sample 0: negatives, a zero, and four non-positive values so A+ has ties at 0.
# Sample 1: a tie (0.5, 0.5) right at the 50 % quantile.
ATTRIBUTION = torch.tensor(
    [
        [[[-1.0, 0.0, 3.0], [-0.5, 1.0, -2.0]]],
        [[[0.5, -3.0, 4.0], [-1.0, 1.2, 0.5]]],
    ]
)

# torch.quantile at level L over n = 6 sorted values s_0..s_5 sits at position 5L and
# interpolates linearly: 0.95 -> 4.75, 0.70 -> 3.5, 0.50 -> 2.5.
#
# Sample 0: sorted A = [-2, -1, -0.5, 0, 1, 3]
#   q95 = 1 + 0.75*2 = 2.5, q70 = 0 + 0.5*1 = 0.5, q50 = -0.5 + 0.5*0.5 = -0.25
#   min -2, max 3 -> minmax = (A + 2) / 5; A+ = [0, 0, 3, 0, 1, 0], minmax_pos = A+ / 3
#   sorted A+ = [0, 0, 0, 0, 1, 3]: q95 = 2.5, q70 = 0.5, q50 = 0 (so every bin is kept)
# Sample 1: sorted A = [-3, -1, 0.5, 0.5, 1.2, 4]
#   q95 = 1.2 + 0.75*2.8 = 3.3, q70 = 0.5 + 0.5*0.7 = 0.85, q50 = 0.5 (tie: both 0.5 kept)
#   min -3, max 4 -> minmax = (A + 3) / 7; A+ = [0.5, 0, 4, 0, 1.2, 0.5], minmax_pos = A+ / 4
#   sorted A+ = [0, 0, 0.5, 0.5, 1.2, 4]: q95 = 3.3, q70 = 0.85, q50 = 0.5
SIG = {
    -3.0: 0.0474258732,
    -2.0: 0.1192029220,
    -1.0: 0.2689414214,
    -0.5: 0.3775406688,
    0.0: 0.5,
    0.5: 0.6224593312,
    1.0: 0.7310585786,
    1.2: 0.7685247835,
    3.0: 0.9525741268,
    4.0: 0.9820137900,
}
EXPECTED = {
    "minmax": ([0.2, 0.4, 1.0, 0.3, 0.6, 0.0], [0.5, 0.0, 1.0, 2 / 7, 0.6, 0.5]),
    "sigmoid": (
        [SIG[-1.0], SIG[0.0], SIG[3.0], SIG[-0.5], SIG[1.0], SIG[-2.0]],
        [SIG[0.5], SIG[-3.0], SIG[4.0], SIG[-1.0], SIG[1.2], SIG[0.5]],
    ),
    "bin": ([0, 0, 1, 0, 1, 0], [1, 0, 1, 0, 1, 1]),
    "topK_5": ([0, 0, 1, 0, 0, 0], [0, 0, 1, 0, 0, 0]),
    "topK_30": ([0, 0, 1, 0, 1, 0], [0, 0, 1, 0, 1, 0]),
    "topK_50": ([0, 1, 1, 0, 1, 0], [1, 0, 1, 0, 1, 1]),
    "minmax_pos": ([0, 0, 1, 0, 1 / 3, 0], [0.125, 0, 1, 0, 0.3, 0.125]),
    "sigmoid_pos": (
        [0.5, 0.5, SIG[3.0], 0.5, SIG[1.0], 0.5],
        [SIG[0.5], 0.5, SIG[4.0], 0.5, SIG[1.2], SIG[0.5]],
    ),
    "pos_thresh_25": ([0, 0, 1, 0, 1, 0], [0, 0, 1, 0, 1, 0]),
    "pos_thresh_50": ([0, 0, 1, 0, 0, 0], [0, 0, 1, 0, 0, 0]),
    "pos_thresh_75": ([0, 0, 1, 0, 0, 0], [0, 0, 1, 0, 0, 0]),
    "topK_5_pos": ([0, 0, 1, 0, 0, 0], [0, 0, 1, 0, 0, 0]),
    "topK_30_pos": ([0, 0, 1, 0, 1, 0], [0, 0, 1, 0, 1, 0]),
    "topK_50_pos": ([1, 1, 1, 1, 1, 1], [1, 0, 1, 0, 1, 1]),
}


def _as_map(rows: tuple[list[float], list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(2, 1, 2, 3)


def test_name_tuples():
    assert MASK_NAMES == (
        "minmax", "sigmoid", "bin", "topK_5", "topK_30", "topK_50", "minmax_pos", "sigmoid_pos",
        "pos_thresh_25", "pos_thresh_50", "pos_thresh_75", "topK_5_pos", "topK_30_pos", "topK_50_pos",
    )  # fmt: skip
    assert SOFT_MASK_NAMES == ("minmax", "sigmoid", "minmax_pos", "sigmoid_pos")
    assert len(BINARY_MASK_NAMES) == 10
    assert set(BINARY_MASK_NAMES) | set(SOFT_MASK_NAMES) == set(MASK_NAMES)


def test_every_mask_matches_hand_computed_values():
    masks = make_masks(ATTRIBUTION)
    assert list(masks) == list(MASK_NAMES)
    for name in MASK_NAMES:
        mask = masks[name]
        assert mask.shape == (2, 1, 2, 3), name
        assert mask.dtype == torch.float32, name
        torch.testing.assert_close(mask, _as_map(EXPECTED[name]), atol=1e-6, rtol=0, msg=name)


def test_binary_masks_hold_only_zero_and_one():
    masks = make_masks(torch.randn(3, 1, 8, 10))
    for name in BINARY_MASK_NAMES:
        assert set(masks[name].unique().tolist()) <= {0.0, 1.0}, name


@pytest.mark.parametrize("value", [2.0, 0.0])
def test_constant_attribution_gives_finite_masks(value):
    attribution = torch.full((2, 1, 3, 4), value)
    masks = make_masks(attribution)
    for name, mask in masks.items():
        assert torch.isfinite(mask).all(), name
    # Every bin ties with the quantile, so all top-K masks keep everything.
    for name in ("topK_5", "topK_30", "topK_50", "topK_5_pos", "topK_30_pos", "topK_50_pos"):
        assert (masks[name] == 1).all(), name
    assert (masks["minmax"] == 0).all()
    assert (masks["bin"] == float(value > 0)).all()
    if value > 0:
        # A+ / (max A + 1e-8) with A+ = max A = 2.
        torch.testing.assert_close(masks["minmax_pos"], torch.ones_like(attribution), atol=1e-6, rtol=0)
        assert (masks["pos_thresh_75"] == 1).all()
    else:
        assert (masks["minmax_pos"] == 0).all()
        assert (masks["pos_thresh_25"] == 0).all()
        assert (masks["sigmoid"] == 0.5).all()


def test_all_negative_attribution_gives_defined_positive_masks():
    # The largest value -1e-8 would make a naive max A + 1e-8 exactly 0 in float32.
    attribution = torch.tensor([[[[-1e-8, -5.0, -2.0]]], [[[-1.0, -1.0, -3.0]]]])
    masks = make_masks(attribution)
    for name, mask in masks.items():
        assert torch.isfinite(mask).all(), name
    assert (masks["minmax_pos"] == 0).all()
    assert not torch.signbit(masks["minmax_pos"]).any()
    assert (masks["sigmoid_pos"] == 0.5).all()
    for name in ("pos_thresh_25", "pos_thresh_50", "pos_thresh_75"):
        assert (masks[name] == 0).all(), name
    for name in ("topK_5_pos", "topK_30_pos", "topK_50_pos"):
        assert (masks[name] == 1).all(), name
    assert (masks["bin"] == 0).all()


def test_names_subset_is_returned_in_canonical_order():
    masks = make_masks(ATTRIBUTION, names=["topK_50_pos", "bin", "minmax"])
    assert list(masks) == ["minmax", "bin", "topK_50_pos"]
    torch.testing.assert_close(masks["topK_50_pos"], _as_map(EXPECTED["topK_50_pos"]))


def test_unknown_name_raises_and_lists_valid_names():
    with pytest.raises(AudioInterpError) as error:
        make_masks(ATTRIBUTION, names=["bin", "topK_10"])
    message = str(error.value)
    assert "topK_10" in message
    assert "minmax" in message and "topK_50_pos" in message
    assert "\n" not in message


def test_masks_do_not_require_grad_and_float64_input_gives_float32():
    attribution = ATTRIBUTION.double().requires_grad_(True)
    masks = make_masks(attribution)
    for name, mask in masks.items():
        assert not mask.requires_grad, name
        assert mask.dtype == torch.float32, name
    torch.testing.assert_close(masks["topK_30"], _as_map(EXPECTED["topK_30"]))


def test_full_size_batch_keeps_the_expected_fraction():
    # Each sample is a permutation of 0..n-1, so values are distinct and exact in float32:
    # with n = 32064 the 0.7 quantile sits at 0.7 * 32063 = 22444.1, so topK_30 keeps
    # values >= 22445, i.e. 32064 - 22445 = 9619 bins; topK_5: 0.95 * 32063 = 30459.85 ->
    # 1604 bins; topK_50: 16031.5 -> 16032 bins.
    generator = torch.Generator().manual_seed(0)
    batch, freq, time = 4, 64, 501
    n = freq * time
    ranks = torch.argsort(torch.rand(batch, n, generator=generator), dim=1).float()
    attribution = ranks.reshape(batch, 1, freq, time)
    masks = make_masks(attribution)
    for name, mask in masks.items():
        assert mask.shape == (batch, 1, freq, time), name
        assert mask.dtype == torch.float32, name
    assert masks["topK_30"].sum(dim=(1, 2, 3)).tolist() == [9619.0] * batch
    assert masks["topK_5"].sum(dim=(1, 2, 3)).tolist() == [1604.0] * batch
    assert masks["topK_50"].sum(dim=(1, 2, 3)).tolist() == [16032.0] * batch
    torch.testing.assert_close(masks["topK_30"], (attribution >= 22445).float())


def test_batch_split_into_quantile_chunks_matches_exact_threshold():
    # 524 * 32064 > 2**24 values, so the quantiles are taken in two chunks (523 rows, then 1);
    # every row, including the one after the split, must still get its own threshold.
    generator = torch.Generator().manual_seed(1)
    batch, n = 524, 64 * 501
    ranks = torch.argsort(torch.rand(batch, n, generator=generator), dim=1).double()
    # Shift each row by row * n (exact in float64) so rows have different thresholds and a
    # row given another row's quantile would keep all or nothing.
    offsets = torch.arange(batch, dtype=torch.float64)[:, None] * n
    attribution = (ranks + offsets).reshape(batch, 1, 64, 501)
    masks = make_masks(attribution, names=["topK_30"])
    torch.testing.assert_close(masks["topK_30"], (ranks >= 22445).float().reshape(batch, 1, 64, 501))


def test_apply_mask_with_fixed_silence_level():
    spectrogram = torch.tensor([[[[-20.0, -50.0, 0.0]]]])
    mask = torch.tensor([[[[1.0, 0.0, 0.5]]]])
    masked, unmasked = apply_mask(spectrogram, mask, silence_level=-100.0)
    # (X + 100) * M - 100 and (X + 100) * (1 - M) - 100
    torch.testing.assert_close(masked, torch.tensor([[[[-20.0, -100.0, -50.0]]]]))
    torch.testing.assert_close(unmasked, torch.tensor([[[[-100.0, -50.0, -50.0]]]]))


def test_apply_mask_default_silence_is_minus_100():
    spectrogram = torch.tensor([[[[-20.0, 0.0]]]])
    mask = torch.tensor([[[[0.0, 0.0]]]])
    masked, _ = apply_mask(spectrogram, mask)
    assert masked.tolist() == [[[[-100.0, -100.0]]]]


def test_apply_mask_with_per_sample_minimum():
    spectrogram = torch.tensor([[[[-20.0, -50.0, 0.0]]], [[[-10.0, -30.0, -60.0]]]])
    mask = torch.tensor([[[[1.0, 0.0, 0.5]]], [[[1.0, 0.0, 0.5]]]])
    masked, unmasked = apply_mask(spectrogram, mask, silence_level=None)
    # Sample 0: s = -50 -> masked [-20, -50, 25 - 50], unmasked [-50, 0 - 50, 25 - 50].
    # Sample 1: s = -60 -> masked [50 - 60, -60, 0 - 60], unmasked [-60, 30 - 60, -60].
    torch.testing.assert_close(masked, torch.tensor([[[[-20.0, -50.0, -25.0]]], [[[-10.0, -60.0, -60.0]]]]))
    torch.testing.assert_close(unmasked, torch.tensor([[[[-50.0, -50.0, -25.0]]], [[[-60.0, -30.0, -60.0]]]]))


def test_apply_mask_broadcasts_mask():
    spectrogram = torch.tensor([[[[-20.0, -50.0]]], [[[-40.0, -10.0]]]])
    mask = torch.tensor([[[[1.0, 0.0]]]])
    masked, unmasked = apply_mask(spectrogram, mask, silence_level=-80.0)
    torch.testing.assert_close(masked, torch.tensor([[[[-20.0, -80.0]]], [[[-40.0, -80.0]]]]))
    torch.testing.assert_close(unmasked, torch.tensor([[[[-80.0, -50.0]]], [[[-80.0, -10.0]]]]))


@pytest.mark.parametrize("silence_level", [-100.0, None])
def test_all_ones_mask_keeps_everything_and_removes_everything(silence_level):
    generator = torch.Generator().manual_seed(2)
    spectrogram = torch.rand(3, 1, 64, 501, generator=generator) * -80.0
    masked, unmasked = apply_mask(spectrogram, torch.ones_like(spectrogram), silence_level=silence_level)
    assert masked.shape == unmasked.shape == spectrogram.shape
    torch.testing.assert_close(masked, spectrogram)
    if silence_level is None:
        silence = spectrogram.amin(dim=(1, 2, 3), keepdim=True).expand_as(spectrogram)
    else:
        silence = torch.full_like(spectrogram, silence_level)
    torch.testing.assert_close(unmasked, silence)
