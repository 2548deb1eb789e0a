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

from audiointerp.devices import as_float64


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


# --- scores of an attribution against E ------------------------------------------------------

#: Attribution-level scores, one value per clip, in localization.csv.
ATTRIBUTION_SCORE_NAMES: tuple[str, ...] = ("evidence_share", "relevance_mass", "relevance_rank",
                                            "pointing_game", "auroc")
#: Scores of a binary mask against E, extra columns of metrics/<mask>.csv.
MASK_SCORE_NAMES: tuple[str, ...] = ("iou", "precision", "recall")
#: The pointing game counts a hit within this many (frequency bins, frames) of E. E already holds
#: every bin and frame the event can reach, so one step either way only forgives an argmax on E's
#: edge, where windows half overlap the event.
POINTING_TOLERANCE: tuple[int, int] = (1, 1)


def _flat(values: Tensor, evidence: Tensor) -> tuple[Tensor, Tensor]:
    """(N, ...) values and (N, ...) bool evidence -> (N, M) float64 and (N, M) bool."""
    if values.shape != evidence.shape:
        raise ValueError(f"attribution/mask {tuple(values.shape)} and evidence {tuple(evidence.shape)} differ in shape")
    n = values.shape[0]
    return values.detach().reshape(n, -1).to("cpu", torch.float64), evidence.detach().reshape(n, -1).to("cpu", torch.bool)


def evidence_share(evidence: Tensor) -> Tensor:
    """(N, 1, F, T) bool -> (N,) float32: |E| / (F T), what a random attribution's mass tends to."""
    return as_float64(evidence.reshape(evidence.shape[0], -1)).mean(dim=1).float()


def relevance_mass(attribution: Tensor, evidence: Tensor) -> Tensor:
    """Relevance mass accuracy: sum of A+ inside E over sum of A+ (Arras et al. 2022).

    Args:
        attribution: (N, 1, F, T).
        evidence: (N, 1, F, T) bool.

    Returns:
        (N,) float32 in [0, 1]; NaN for a clip with no positive attribution at all.
    """
    values, inside = _flat(attribution, evidence)
    positive = values.clamp_min(0)
    total = positive.sum(dim=1)
    inside_total = (positive * inside).sum(dim=1)
    return torch.where(total > 0, inside_total / total.where(total > 0, torch.ones_like(total)),
                       torch.full_like(total, float("nan"))).float()


def relevance_rank(attribution: Tensor, evidence: Tensor) -> Tensor:
    """Relevance rank accuracy: the share of the |E| highest-ranked bins of A that lie in E.

    Ties at the |E|-th value are broken at random in expectation: the bins strictly above it
    count fully, and the slots left over are shared among the tied bins in proportion to how many
    of them lie in E. So a constant attribution scores |E| / (F T), not 0 or 1 by position.

    Args:
        attribution: (N, 1, F, T).
        evidence: (N, 1, F, T) bool.

    Returns:
        (N,) float32 in [0, 1]; NaN for a clip with an empty E.
    """
    values, inside = _flat(attribution, evidence)
    size = inside.sum(dim=1)  # (N,) |E|
    scores = []
    for row, row_inside, k in zip(values, inside, size.tolist()):
        if k == 0:
            scores.append(float("nan"))
            continue
        threshold = torch.topk(row, k).values[-1]
        above = row > threshold
        tied = row == threshold
        slots = k - int(above.sum())
        hits = float((above & row_inside).sum()) + slots * float((tied & row_inside).sum()) / float(tied.sum())
        scores.append(hits / k)
    return torch.tensor(scores, dtype=torch.float32)


def pointing_game(attribution: Tensor, evidence: Tensor,
                  tolerance: tuple[int, int] = POINTING_TOLERANCE) -> Tensor:
    """Pointing game: 1 if the argmax of A lies in E, grown by ``tolerance`` (bins, frames).

    When several bins share the maximum, the score is the share of them that hit (the expected
    hit of a random tie-break), so a constant attribution does not hit by position.

    Args:
        attribution: (N, 1, F, T).
        evidence: (N, 1, F, T) bool.
        tolerance: (frequency bins, frames) E is dilated by on each side.

    Returns:
        (N,) float32 in [0, 1]; NaN for a clip with an empty E.
    """
    if attribution.shape != evidence.shape or attribution.dim() != 4:
        raise ValueError(f"expected attribution and evidence (N, 1, F, T), got {tuple(attribution.shape)} "
                         f"and {tuple(evidence.shape)}")
    bins, frames = tolerance
    grown = torch.nn.functional.max_pool2d(evidence.detach().to("cpu", torch.float32), kernel_size=(2 * bins + 1, 2 * frames + 1),
                                           stride=1, padding=(bins, frames)) > 0
    values, hit_region = _flat(attribution, grown)
    at_max = values == values.amax(dim=1, keepdim=True)
    share = (at_max & hit_region).sum(dim=1).double() / at_max.sum(dim=1).double()
    empty = evidence.reshape(evidence.shape[0], -1).sum(dim=1) == 0
    return torch.where(empty, torch.full_like(share, float("nan")), share).float()


def auroc(attribution: Tensor, evidence: Tensor) -> Tensor:
    """Area under the ROC curve of A as a detector of E, per clip.

    The Mann-Whitney statistic with average ranks, so tied values count one half: a constant
    attribution scores exactly 0.5.

    Args:
        attribution: (N, 1, F, T).
        evidence: (N, 1, F, T) bool.

    Returns:
        (N,) float32 in [0, 1]; NaN where E is empty or covers everything.
    """
    from scipy.stats import rankdata

    values, inside = _flat(attribution, evidence)
    ranks = torch.from_numpy(rankdata(values.numpy(), method="average", axis=1))  # (N, M), 1-based
    positives = inside.sum(dim=1).double()
    negatives = inside.shape[1] - positives
    rank_sum = (ranks * inside).sum(dim=1)
    area = (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
    defined = (positives > 0) & (negatives > 0)
    return torch.where(defined, area, torch.full_like(area, float("nan"))).float()


def attribution_scores(attribution: Tensor, evidence: Tensor) -> dict[str, Tensor]:
    """``ATTRIBUTION_SCORE_NAMES`` -> (N,) float32 each, for (N, 1, F, T) attribution and evidence."""
    return {"evidence_share": evidence_share(evidence), "relevance_mass": relevance_mass(attribution, evidence),
            "relevance_rank": relevance_rank(attribution, evidence),
            "pointing_game": pointing_game(attribution, evidence), "auroc": auroc(attribution, evidence)}


def mask_scores(mask: Tensor, evidence: Tensor) -> dict[str, Tensor]:
    """IoU, precision and recall of a binary mask (kept where > 0.5) against E, per clip.

    Args:
        mask: (N, 1, F, T) binary mask.
        evidence: (N, 1, F, T) bool.

    Returns:
        ``MASK_SCORE_NAMES`` -> (N,) float32; NaN where a ratio is 0 / 0 (an empty mask's
        precision, an empty E's recall, IoU of two empty regions).
    """
    values, inside = _flat(mask, evidence)
    kept = values > 0.5
    overlap = (kept & inside).sum(dim=1).double()
    union = (kept | inside).sum(dim=1).double()

    def ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
        return torch.where(denominator > 0, numerator / denominator.clamp_min(1), torch.full_like(numerator, float("nan"))).float()

    return {"iou": ratio(overlap, union), "precision": ratio(overlap, kept.sum(dim=1).double()),
            "recall": ratio(overlap, inside.sum(dim=1).double())}
