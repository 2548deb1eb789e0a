"""Ground-truth evidence on the feature's grid, and scores of explanations against it.

Synthetic clips store the box ``[t_start_s, t_end_s, f_low_hz, f_high_hz]`` of their class event.
:func:`evidence_mask` turns boxes into the region E of the (F, T) spectrogram that the event can
reach: every bin whose passband overlaps the box's frequency span, and every frame whose analysis
window overlaps its time span. E is therefore a superset of the event's energy, so removing E
removes the event, and keeping E keeps all of it.
"""

from __future__ import annotations

import torch
from torch import Tensor


def evidence_mask(boxes: Tensor, feature, n_frames: int) -> Tensor:
    """Evidence boxes -> region E on the feature's grid.

    Args:
        boxes: (N, 4) float ``[t_start_s, t_end_s, f_low_hz, f_high_hz]`` per clip.
        feature: a :class:`audiointerp.features.SpectrogramFeature` (its bin edges and frame times).
        n_frames: T, frames per clip.

    Returns:
        (N, 1, F, T) bool, True inside E.
    """
    boxes = boxes.detach().to("cpu", torch.float32)
    edges = feature.bin_edges()  # (F, 2)
    times = feature.frame_times(n_frames)  # (T,)
    half_window = feature.frame_half_width_s
    t_start, t_end, f_low, f_high = (column[:, None] for column in boxes.unbind(dim=1))  # (N, 1) each
    in_band = (edges[None, :, 1] > f_low) & (edges[None, :, 0] < f_high)  # (N, F)
    in_time = (times[None, :] + half_window > t_start) & (times[None, :] - half_window < t_end)  # (N, T)
    return (in_band[:, :, None] & in_time[:, None, :]).unsqueeze(1)
