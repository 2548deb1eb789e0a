"""Evidence boxes on the feature's grid."""

from __future__ import annotations

import torch

from audiointerp.features import LogMel, LogStft
from audiointerp.localization import evidence_mask


def test_stft_box_covers_the_overlapping_bins_and_frames():
    feature = LogStft(sample_rate=16000, n_fft=512, win_length=512, hop_length=256)
    # 31.25 Hz bins, each ±15.625 Hz; frames every 16 ms, each window ±16 ms
    boxes = torch.tensor([[1.0, 1.5, 1000.0, 1100.0]])
    region = evidence_mask(boxes, feature, n_frames=313)
    assert region.shape == (1, 1, 257, 313) and region.dtype == torch.bool
    rows = region[0, 0].any(dim=1).nonzero().flatten().tolist()
    columns = region[0, 0].any(dim=0).nonzero().flatten().tolist()
    assert rows == [32, 33, 34, 35]          # 1000 .. 1093.75 Hz
    assert columns == list(range(62, 95))    # 0.992 .. 1.504 s
    assert region.sum().item() == 4 * 33    # a rectangle


def test_mel_box_takes_every_filter_whose_triangle_overlaps_it():
    feature = LogMel()
    edges = feature.bin_edges()
    assert edges.shape == (64, 2) and (edges[:, 1] > edges[:, 0]).all()
    # a pure tone's box, narrower than one mel band, still covers the filters that hear it
    boxes = torch.tensor([[0.0, 5.0, 1990.0, 2010.0], [2.0, 2.5, 300.0, 6000.0]])
    region = evidence_mask(boxes, feature, n_frames=501)
    tone_rows = region[0, 0].any(dim=1).nonzero().flatten()
    hearing = feature.mel_filterbank[:, round(2000 / 31.25)] > 0  # filters with weight at 2000 Hz
    assert set(hearing.nonzero().flatten().tolist()) <= set(tone_rows.tolist()) and 2 <= len(tone_rows) <= 3
    assert region[0, 0, tone_rows].all(), "a box spanning the clip covers every frame"
    wide_rows = region[1, 0].any(dim=1).nonzero().flatten()
    frequencies = feature.bin_frequencies()
    assert frequencies[wide_rows[0]] < 300 < frequencies[wide_rows[0] + 1]
    assert frequencies[wide_rows[-1] - 1] < 6000 < frequencies[wide_rows[-1]]


# --- scores against E, on hand-built attributions and regions -------------------------------

import math  # noqa: E402

import pytest  # noqa: E402

from audiointerp.localization import (  # noqa: E402
    attribution_scores,
    auroc,
    mask_scores,
    pointing_game,
    relevance_mass,
    relevance_rank,
)


def _grid(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)[None, None]


# E: the left column of a 3 x 4 grid (3 of 12 bins)
EVIDENCE = _grid([[1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]]).bool()


def test_relevance_mass_counts_positive_attribution_only():
    attribution = _grid([[2, -5, 0, 0], [1, 0, 0, 1], [0, 0, -9, 0]])
    assert relevance_mass(attribution, EVIDENCE).item() == pytest.approx(3 / 4)
    assert relevance_mass(-attribution.abs(), EVIDENCE).isnan().item(), "no positive relevance: undefined, not 0"
    assert relevance_mass(EVIDENCE.float(), EVIDENCE).item() == 1.0
    assert relevance_mass(1 - EVIDENCE.float(), EVIDENCE).item() == 0.0, "empty overlap"


def test_relevance_rank_shares_ties_at_the_cut():
    # top 3 bins: 9 (in E), 8 (out), then a three-way tie at 5 for the last slot, one of them in E
    attribution = _grid([[9, 8, 0, 0], [5, 5, 0, 0], [0, 5, 0, 0]])
    assert relevance_rank(attribution, EVIDENCE).item() == pytest.approx((1 + 1 / 3) / 3)
    assert relevance_rank(torch.ones_like(attribution), EVIDENCE).item() == pytest.approx(3 / 12), \
        "a constant map ranks nothing: the share of E"
    assert relevance_rank(EVIDENCE.float(), EVIDENCE).item() == 1.0
    empty = torch.zeros_like(EVIDENCE)
    assert relevance_rank(attribution, empty).isnan().item()


def test_pointing_game_tolerance_and_ties():
    far = _grid([[0, 0, 0, 7], [0, 0, 0, 0], [0, 0, 0, 0]])  # 3 frames from E
    near = _grid([[0, 7, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])  # 1 frame from E
    assert pointing_game(far, EVIDENCE).item() == 0.0
    assert pointing_game(near, EVIDENCE, tolerance=(0, 0)).item() == 0.0
    assert pointing_game(near, EVIDENCE, tolerance=(1, 1)).item() == 1.0
    assert pointing_game(torch.ones_like(far), EVIDENCE, tolerance=(0, 0)).item() == pytest.approx(3 / 12), \
        "all bins tie: the share of maxima that hit"


def test_auroc_with_ties_and_degenerate_regions():
    assert auroc(EVIDENCE.float() * 3 - 1, EVIDENCE).item() == 1.0
    assert auroc(1 - EVIDENCE.float(), EVIDENCE).item() == 0.0
    assert auroc(torch.zeros(1, 1, 3, 4), EVIDENCE).item() == 0.5, "ties count one half"
    # E values {2, 1, 0}, outside {1, 0 x 8}: pairs won 9 + 8 + 0, tied 0 + 1 + 8 -> (17 + 4.5) / 27
    attribution = _grid([[2, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    assert auroc(attribution, EVIDENCE).item() == pytest.approx(21.5 / 27)
    assert auroc(attribution, torch.zeros_like(EVIDENCE)).isnan().item()
    assert auroc(attribution, torch.ones_like(EVIDENCE)).isnan().item()


def test_auroc_matches_pairwise_counting_on_random_maps():
    generator = torch.Generator().manual_seed(0)
    attribution = torch.randint(0, 5, (3, 1, 6, 7), generator=generator).float()  # many ties
    evidence = torch.rand(3, 1, 6, 7, generator=generator) < 0.3
    for clip in range(3):
        inside = attribution[clip][evidence[clip]]
        outside = attribution[clip][~evidence[clip]]
        wins = (inside[:, None] > outside[None, :]).double().sum() + 0.5 * (inside[:, None] == outside[None, :]).double().sum()
        assert auroc(attribution, evidence)[clip].item() == pytest.approx((wins / (len(inside) * len(outside))).item())


def test_mask_scores_iou_precision_recall():
    mask = _grid([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])  # 2 of 3 in E, 1 outside
    scores = mask_scores(mask, EVIDENCE)
    assert scores["iou"].item() == pytest.approx(2 / 4)
    assert scores["precision"].item() == pytest.approx(2 / 3)
    assert scores["recall"].item() == pytest.approx(2 / 3)
    full = mask_scores(EVIDENCE.float(), EVIDENCE)
    assert all(v.item() == 1.0 for v in full.values())
    disjoint = mask_scores(1 - EVIDENCE.float(), EVIDENCE)
    assert disjoint["iou"].item() == 0.0 and disjoint["precision"].item() == 0.0 and disjoint["recall"].item() == 0.0
    empty = mask_scores(torch.zeros_like(mask), EVIDENCE)
    assert empty["precision"].isnan().item() and empty["recall"].item() == 0.0 and empty["iou"].item() == 0.0


def test_scores_are_per_clip_in_a_batch():
    attribution = torch.cat([EVIDENCE.float(), 1 - EVIDENCE.float()])
    evidence = torch.cat([EVIDENCE, EVIDENCE])
    scores = attribution_scores(attribution, evidence)
    assert scores["relevance_mass"].tolist() == [1.0, 0.0]
    assert scores["auroc"].tolist() == [1.0, 0.0]
    assert scores["pointing_game"].tolist()[0] == 1.0
    assert math.isclose(scores["evidence_share"][1].item(), 0.25)
