"""Deletion and insertion curves: how the attribution's ranking of bins scores, with no mask.

The masks of :mod:`audiointerp.masks` score an attribution through one threshold each; the
curves score its whole ranking, as the field's most common faithfulness scores do (Petsiuk et al.,
RISE, 2018; WAM, ICML 2025, reports them on ESC-50). Per clip, the bins are ranked by attribution
(highest first; ties by position), and the classifier's probability of the explained class c is
read at ``steps + 1`` points k = 0 .. steps, where the top ``n_k = floor(k N / steps)`` of the N
bins are

- removed (``deletion``): set to the silence level, the rest as they are; lower area is better
  (a faithful ranking removes what the class needs first);
- inserted (``insertion``): kept as they are, the rest at the silence level; higher area is better.

"Set to the silence level" is :func:`audiointerp.masks.apply_mask` with a binary mask: the run's
``mask.silence_level`` dB (``None``: each clip's own minimum), what a removed bin is everywhere
else. The area is the trapezoid rule over the removed (inserted) fraction k / steps in [0, 1], so it
is a mean probability in [0, 1].

The end points need no forward: deletion at k = 0 and insertion at k = steps are the clip as it is
(its probabilities are known), and insertion at k = 0 is deletion at k = steps (all silence). Every
other point of every clip of a batch goes through the model in forwards of ``eval_batch_size``
inputs, built chunk by chunk so that at most one chunk of copies is held at a time.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from audiointerp.masks import apply_mask

#: Points along each curve after the first (the removed or inserted share goes up by 1/steps).
CURVE_STEPS = 20
#: Per-clip columns; lower deletion area and higher insertion area are better.
CURVE_NAMES: tuple[str, ...] = ("deletion_auc", "insertion_auc")


def bin_ranks(attribution: Tensor) -> Tensor:
    """attribution (B, 1, F, T) -> (B, 1, F, T) int64 rank of each bin in its clip: 0 for the highest
    value, ties in position order (a stable sort), so a constant map ranks bins by position."""
    flat = attribution.detach().reshape(len(attribution), -1).float()
    order = torch.argsort(-flat, dim=1, stable=True)  # (B, N): bin index by rank
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks.view(attribution.shape)


def area(probabilities: Tensor) -> Tensor:
    """(B, steps + 1) probabilities at fractions 0, 1/steps, .., 1 -> (B,) trapezoid area over [0, 1]."""
    steps = probabilities.shape[1] - 1
    return (probabilities.sum(dim=1) - (probabilities[:, 0] + probabilities[:, -1]) / 2) / steps


@torch.inference_mode()
def curves(model: nn.Module, log_db: Tensor, attribution: Tensor, target: Tensor, p: Tensor,
           silence_level: float | None, eval_batch_size: int, steps: int = CURVE_STEPS) -> dict[str, Tensor]:
    """The deletion and insertion curves of a batch of clips, and their areas.

    Args:
        model: the classifier (logits), in eval mode, on ``log_db``'s device.
        log_db: (B, 1, F, T) the clips' spectrograms in dB.
        attribution: (B, 1, F, T) their attributions (only their ranking matters).
        target: (B,) int64 explained class of each clip.
        p: (B, C) softmax of the clips as they are (the pipeline's one forward of them).
        silence_level: dB a removed bin is set to; ``None`` for each clip's minimum.
        eval_batch_size: spectrograms per forward.
        steps: points after the first.

    Returns:
        ``{"deletion": (B, steps + 1), "insertion": (B, steps + 1)}`` probabilities of the target
        class, and ``CURVE_NAMES`` (B,) float32 areas; all on the CPU.
    """
    batch, n_bins = len(log_db), log_db[0].numel()
    ranks = bin_ranks(attribution).to(log_db.device)
    target = target.to(log_db.device)
    counts = [k * n_bins // steps for k in range(steps + 1)]
    # the forwards needed, as (curve, k): deletion k = 1..steps, insertion k = 1..steps-1; each for every clip
    points = [("deletion", k) for k in range(1, steps + 1)] + [("insertion", k) for k in range(1, steps)]
    rows = [(curve, k, clip) for curve, k in points for clip in range(batch)]
    values = torch.empty(len(rows), dtype=torch.float32, device=log_db.device)
    for start in range(0, len(rows), eval_batch_size):
        chunk = rows[start:start + eval_batch_size]
        clips = torch.tensor([clip for _, _, clip in chunk], device=log_db.device)
        n = torch.tensor([counts[k] for _, k, _ in chunk], device=log_db.device).view(-1, 1, 1, 1)
        top = ranks[clips] < n  # (M, 1, F, T): the top n_k bins of each row's clip
        inserted = torch.tensor([curve == "insertion" for curve, _, _ in chunk], device=log_db.device)
        keep = torch.where(inserted.view(-1, 1, 1, 1), top, ~top)
        masked, _ = apply_mask(log_db[clips], keep, silence_level)
        probabilities = torch.softmax(model(masked).float(), dim=1)
        values[start:start + len(chunk)] = probabilities.gather(1, target[clips].view(-1, 1)).squeeze(1)
    p_c = p.float().to(log_db.device).gather(1, target.view(-1, 1)).squeeze(1)  # (B,)
    deletion_tail = values[:steps * batch].view(steps, batch).T  # (B, steps): k = 1..steps
    insertion_middle = values[steps * batch:].view(steps - 1, batch).T  # (B, steps - 1): k = 1..steps-1
    deletion = torch.cat([p_c[:, None], deletion_tail], dim=1)
    insertion = torch.cat([deletion_tail[:, -1:], insertion_middle, p_c[:, None]], dim=1)
    return {"deletion": deletion.cpu(), "insertion": insertion.cpu(),
            "deletion_auc": area(deletion).cpu(), "insertion_auc": area(insertion).cpu()}
