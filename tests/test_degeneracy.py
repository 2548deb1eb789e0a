"""kept, degenerate, collapse and the run-level warning, against values worked out by hand; the
``rank`` tie rule of the top-K masks."""

from __future__ import annotations

import math

import pytest
import torch

from audiointerp.errors import AudioInterpError
from audiointerp.masks import make_masks
from audiointerp.metrics import collapse, collapse_warning, degenerate, kept, mask_statistics, most_common


def test_kept_is_the_mean_of_the_mask_soft_or_binary():
    masks = torch.tensor([
        [[[1.0, 0.0], [0.0, 0.0]]],     # one bin of four
        [[[0.5, 0.25], [1.0, 0.25]]],   # soft: (0.5 + 0.25 + 1 + 0.25) / 4
        [[[1.0, 1.0], [1.0, 1.0]]],     # all kept
        [[[0.0, 0.0], [0.0, 0.0]]],     # all removed
    ])
    torch.testing.assert_close(kept(masks), torch.tensor([0.25, 0.5, 1.0, 0.0]))
    torch.testing.assert_close(degenerate(masks), torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert list(mask_statistics(masks)) == ["kept", "degenerate"]


def test_a_constant_soft_mask_is_degenerate_and_a_nearly_constant_one_is_not():
    masks = torch.stack([torch.full((1, 3, 3), 0.5), torch.full((1, 3, 3), 0.5)])
    masks[1, 0, 2, 2] = 0.5001
    torch.testing.assert_close(degenerate(masks), torch.tensor([1.0, 0.0]))


def test_collapse_is_the_share_of_the_most_common_class():
    assert collapse(torch.tensor([4, 4, 4, 4])) == 1.0
    assert collapse(torch.tensor([0, 1, 2, 3])) == 0.25
    assert collapse(torch.tensor([2, 5, 2, 1, 2])) == pytest.approx(3 / 5)
    assert most_common(torch.tensor([2, 5, 2, 1, 2])) == 2
    assert most_common(torch.tensor([3, 1, 1, 3])) == 1  # equal counts: the lower class
    assert math.isnan(collapse(torch.tensor([], dtype=torch.long)))


def test_collapse_warning_pools_every_mask_and_names_the_class():
    names = ["dog", "rain", "saw"]
    spread = [torch.tensor([0, 1, 2, 0, 1]), torch.tensor([2, 1, 0, 2, 1])]
    assert collapse_warning(spread, spread, names) is None
    # 19 of 20 masked inputs on class 1 (95 %): one line naming it; complements fine
    onto_rain = [torch.tensor([1] * 10), torch.tensor([1] * 9 + [0])]
    line = collapse_warning(onto_rain, spread, names)
    assert line is not None and "\n" not in line and line.startswith("warning: ")
    assert "95% of masked inputs" in line and "class 1 (rain)" in line and "complementary" not in line
    # exactly 90 % is not more than 90 %
    assert collapse_warning([torch.tensor([1] * 9 + [0])], spread, names) is None
    both = collapse_warning(onto_rain, [torch.tensor([2] * 10)], names)
    assert "masked inputs" in both and "100% of complementary inputs are classified as class 2 (saw)" in both


@pytest.mark.parametrize("name,percent", [("topK_5", 5), ("topK_30", 30), ("topK_50", 50),
                                          ("topK_5_pos", 5), ("topK_30_pos", 30), ("topK_50_pos", 50)])
def test_rank_ties_keep_exactly_k_percent_of_a_constant_map(name, percent):
    attribution = torch.full((2, 1, 64, 501), 0.7)
    n_bins = 64 * 501
    reference = make_masks(attribution, [name])[name]
    assert reference.sum().item() == 2 * n_bins, "the reference keeps every tied bin"
    mask = make_masks(attribution, [name], ties="rank")[name]
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert mask.sum(dim=(1, 2, 3)).tolist() == [math.ceil(percent / 100 * n_bins)] * 2
    # stable order: equal values are taken in position order, so the first bins are kept
    flat = mask.reshape(2, -1)
    assert flat[:, :math.ceil(percent / 100 * n_bins)].all()


def test_rank_ties_on_a_two_valued_map_keep_the_high_values_first():
    # 10 % of the bins at 1 (like the oracle's evidence), the rest at -1 (signed) or 0 (positive part)
    attribution = -torch.ones(1, 1, 10, 40)
    attribution[..., 2:4, 10:30] = 1.0  # 40 of 400 bins
    high = attribution > 0
    for name, k in (("topK_5", 20), ("topK_30", 120), ("topK_30_pos", 120), ("topK_50_pos", 200)):
        mask = make_masks(attribution, [name], ties="rank")[name].bool()
        assert mask.sum().item() == k, name
        if k <= 40:
            assert not (mask & ~high).any(), name  # only evidence bins
        else:
            assert (mask & high).sum().item() == 40, name  # all of the evidence, then the ties
    # the reference's rule turns topK_30_pos into an all-ones mask here
    assert make_masks(attribution, ["topK_30_pos"])["topK_30_pos"].all()


def test_rank_ties_match_the_quantile_rule_when_there_are_no_ties():
    attribution = torch.randn(3, 1, 20, 50, generator=torch.Generator().manual_seed(1))
    for name in ("topK_5", "topK_30", "topK_50"):
        torch.testing.assert_close(make_masks(attribution, [name], ties="rank")[name],
                                   make_masks(attribution, [name])[name])


def test_unknown_tie_rule_names_the_option():
    with pytest.raises(AudioInterpError, match="mask.ties"):
        make_masks(torch.zeros(1, 1, 2, 2), ["topK_5"], ties="random")
