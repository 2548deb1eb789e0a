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
