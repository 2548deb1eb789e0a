"""Per-clip faithfulness and complexity scores of one mask.

Faithfulness metrics compare the classifier's probabilities on the original input, the input
restricted to the mask (``masked``) and the input with the mask removed (``unmasked``), all
for the class c the classifier predicts on the original. Complexity metrics look at the mask
alone: SPS (sparseness, Gini index) and COMP (complexity, Shannon entropy).
"""

from __future__ import annotations

import torch
from torch import Tensor

from audiointerp.devices import as_float64

METRIC_NAMES: tuple[str, ...] = ("FF", "AI", "AD", "AG", "FidIn", "SPS", "COMP")
#: The metrics that depend on the classifier's outputs (the rest look at the mask alone).
FAITHFULNESS_NAMES: tuple[str, ...] = ("FF", "AI", "AD", "AG", "FidIn")
#: The faithfulness metrics on masked inputs turned into audio and analysed again (audio_metrics=true).
AUDIO_METRIC_NAMES: tuple[str, ...] = tuple(f"{name}_audio" for name in FAITHFULNESS_NAMES)

# Added to every |mask| value before the Gini index so an all-zero mask has a defined sum.
_GINI_EPS = 1e-7
# Keeps AD/AG finite when p_c is 0 or 1.
_PROB_EPS = 1e-6
# A mask whose range is below this (plus a relative part) carries no ranking: SPS = COMP = 0.
_CONSTANT_ABS_TOL = 1e-8
_CONSTANT_REL_TOL = 1e-5


def _flatten_per_sample(mask: Tensor) -> Tensor:
    """(B, ...) mask -> (B, N) float64 with N the product of the non-batch sizes.

    float64 because Gini and entropy sum tens of thousands of terms per sample; on the CPU for a
    device without float64 (``audiointerp.devices.as_float64``).
    """
    if mask.dim() < 1:
        raise ValueError(f"mask must have a leading batch dimension, got shape {tuple(mask.shape)}")
    return as_float64(mask.reshape(mask.shape[0], -1))


def _is_constant(flat: Tensor) -> Tensor:
    """(B, N) -> (B,) bool: True where the sample's range is negligible."""
    value_range = flat.amax(dim=1) - flat.amin(dim=1)
    return value_range < _CONSTANT_ABS_TOL + _CONSTANT_REL_TOL * flat.abs().amax(dim=1)


def gini(mask: Tensor) -> Tensor:
    """Gini index (SPS) of |mask| per sample; 0 is spread evenly, near 1 is concentrated.

    With a_1 <= ... <= a_n the sorted values of |mask| + 1e-7,
    ``gini = sum_i (2i - n - 1) a_i / (n * sum_i a_i)`` (i 1-based). Constant masks give 0.

    Args:
        mask: (B, ...) mask, usually (B, 1, F, T).

    Returns:
        (B,) float32 on the mask's device.
    """
    flat = _flatten_per_sample(mask)
    n = flat.shape[1]
    if n == 0:
        return torch.zeros(flat.shape[0], dtype=torch.float32, device=mask.device)
    values, _ = torch.sort(flat.abs() + _GINI_EPS, dim=1)
    rank = torch.arange(1, n + 1, dtype=torch.float64, device=flat.device)
    weights = 2 * rank - n - 1
    index = (values * weights).sum(dim=1) / (n * values.sum(dim=1))
    index = torch.where(_is_constant(flat), torch.zeros_like(index), index)
    return index.to(device=mask.device, dtype=torch.float32)


def entropy(mask: Tensor) -> Tensor:
    """Shannon entropy (COMP, natural log) of |mask| normalised to sum to 1, per sample.

    ``-sum_j q_j ln q_j`` with ``q = |mask| / sum |mask|`` and 0 ln 0 = 0. Constant masks
    (including all-zero ones, where q is undefined) give 0.

    Args:
        mask: (B, ...) mask, usually (B, 1, F, T).

    Returns:
        (B,) float32 on the mask's device.
    """
    flat = _flatten_per_sample(mask)
    if flat.shape[1] == 0:
        return torch.zeros(flat.shape[0], dtype=torch.float32, device=mask.device)
    magnitude = flat.abs()
    total = magnitude.sum(dim=1, keepdim=True)
    constant = _is_constant(flat)
    # Constant samples are zeroed below; a dummy total of 1 only avoids 0/0 for all-zero ones.
    safe_total = torch.where(total > 0, total, torch.ones_like(total))
    share = magnitude / safe_total
    result = -torch.special.xlogy(share, share).sum(dim=1)
    result = torch.where(constant, torch.zeros_like(result), result)
    return result.to(device=mask.device, dtype=torch.float32)


def score(p: Tensor, p_masked: Tensor, p_unmasked: Tensor, mask: Tensor,
          target: Tensor | None = None) -> dict[str, Tensor]:
    """All of ``METRIC_NAMES`` for one mask, per clip.

    With c = ``target`` (the explained class), or argmax p per row when None:
    FF = p_c - p_unmasked_c; AI = 100 [p_masked_c > p_c];
    AD = 100 max(0, p_c - p_masked_c) / (p_c + 1e-6);
    AG = 100 max(0, p_masked_c - p_c) / (1 - p_c + 1e-6);
    FidIn = [argmax p_masked == c]; SPS = ``gini(mask)``; COMP = ``entropy(mask)``.

    Args:
        p: (B, C) softmax probabilities on the original inputs.
        p_masked: (B, C) probabilities on the inputs restricted to the mask.
        p_unmasked: (B, C) probabilities on the inputs with the mask removed.
        mask: (B, 1, F, T) mask (any shape with leading B).
        target: (B,) int64 explained class per clip, or None for the predicted one.

    Returns:
        ``{metric: (B,) float32}`` in ``METRIC_NAMES`` order, on p's device.
    """
    if p.dim() != 2 or p_masked.shape != p.shape or p_unmasked.shape != p.shape:
        raise ValueError(
            "p, p_masked and p_unmasked must all be (B, C) with equal shapes, got "
            f"{tuple(p.shape)}, {tuple(p_masked.shape)}, {tuple(p_unmasked.shape)}"
        )
    if mask.dim() < 1 or mask.shape[0] != p.shape[0]:
        raise ValueError(f"mask must have leading batch size {p.shape[0]}, got shape {tuple(mask.shape)}")

    results = {**faithfulness(p, p_masked, p_unmasked, target), "SPS": gini(mask), "COMP": entropy(mask)}
    return {name: results[name].to(device=p.device, dtype=torch.float32) for name in METRIC_NAMES}


def faithfulness(p: Tensor, p_masked: Tensor, p_unmasked: Tensor, target: Tensor | None = None) -> dict[str, Tensor]:
    """The ``FAITHFULNESS_NAMES`` metrics of :func:`score`, which need no mask, per clip.

    Args:
        p, p_masked, p_unmasked: (B, C) probabilities, as for :func:`score`.
        target: (B,) explained classes, or None for argmax p.

    Returns:
        ``{metric: (B,) float32}`` in ``FAITHFULNESS_NAMES`` order, on p's device.
    """
    device = p.device
    p = as_float64(p)
    p_masked = as_float64(p_masked).to(p.device)
    p_unmasked = as_float64(p_unmasked).to(p.device)

    predicted = p.argmax(dim=1, keepdim=True) if target is None else target.to(p.device).long().view(-1, 1)  # (B, 1)
    p_c = p.gather(1, predicted).squeeze(1)
    masked_c = p_masked.gather(1, predicted).squeeze(1)
    unmasked_c = p_unmasked.gather(1, predicted).squeeze(1)

    results = {
        "FF": p_c - unmasked_c,
        "AI": 100.0 * (masked_c > p_c).to(torch.float64),
        "AD": 100.0 * (p_c - masked_c).clamp_min(0) / (p_c + _PROB_EPS),
        "AG": 100.0 * (masked_c - p_c).clamp_min(0) / (1 - p_c + _PROB_EPS),
        "FidIn": (p_masked.argmax(dim=1) == predicted.squeeze(1)).to(torch.float64),
    }
    return {name: results[name].to(device=device, dtype=torch.float32) for name in FAITHFULNESS_NAMES}


# --- degeneracy: is a score measuring the explanation at all? -------------------------------

MASK_STATISTIC_NAMES: tuple[str, ...] = ("kept", "degenerate")
# Above this share of clips on one class, masked (or complementary) inputs tell nothing about
# the explanation: the run says so.
COLLAPSE_WARNING_SHARE = 0.9


def kept(mask: Tensor) -> Tensor:
    """Fraction of the spectrogram a mask keeps: its mean per sample (soft masks included).

    Args:
        mask: (B, ...) mask in [0, 1].

    Returns:
        (B,) float32.
    """
    return _flatten_per_sample(mask).mean(dim=1).to(device=mask.device, dtype=torch.float32)


def degenerate(mask: Tensor) -> Tensor:
    """1.0 where a mask is constant (keeps all, removes all, or keeps everything equally), else 0.0.

    Args:
        mask: (B, ...) mask.

    Returns:
        (B,) float32.
    """
    flat = _flatten_per_sample(mask)
    return (flat.amax(dim=1) == flat.amin(dim=1)).to(device=mask.device, dtype=torch.float32)


def mask_statistics(mask: Tensor) -> dict[str, Tensor]:
    """``{"kept": (B,), "degenerate": (B,)}`` float32, in ``MASK_STATISTIC_NAMES`` order."""
    return {"kept": kept(mask), "degenerate": degenerate(mask)}


def collapse(predicted: Tensor) -> float:
    """Share of clips assigned to the single most common class.

    Args:
        predicted: (N,) class indices, e.g. of the masked inputs of one mask.

    Returns:
        A share in (0, 1], NaN for no clips; 1.0 means one class for every clip.
    """
    if predicted.numel() == 0:
        return float("nan")
    counts = torch.bincount(predicted.reshape(-1).long().cpu())
    return counts.max().item() / predicted.numel()


def most_common(predicted: Tensor) -> int:
    """The most common class index in (N,) ``predicted`` (the lowest index among equals)."""
    return int(torch.bincount(predicted.reshape(-1).long().cpu()).argmax())


def collapse_warning(masked: list[Tensor], unmasked: list[Tensor], class_names: list[str]) -> str | None:
    """One warning line when, pooled over every mask and clip of a run, the masked or the
    complementary inputs land on one class for more than ``COLLAPSE_WARNING_SHARE`` of them.

    Args:
        masked, unmasked: per mask, (N,) classes of the masked / complementary inputs.
        class_names: names indexed by class.

    Returns:
        The line, or None when neither collapses.
    """
    parts = []
    for kind, predictions in (("masked", masked), ("complementary", unmasked)):
        if not predictions:
            continue
        pooled = torch.cat([p.reshape(-1) for p in predictions])
        share = collapse(pooled)
        if share > COLLAPSE_WARNING_SHARE:
            label = most_common(pooled)
            name = class_names[label] if label < len(class_names) else str(label)
            parts.append(f"{share:.0%} of {kind} inputs are classified as class {label} ({name})")
    if not parts:
        return None
    return ("warning: " + " and ".join(parts) + " over all masks and clips: the scores reflect how the model "
            "reacts to masking, not the explanation (see collapse_* in summary.csv); try mask.silence_level=null "
            "(each clip's own minimum) or a model trained on clips with silent regions")
