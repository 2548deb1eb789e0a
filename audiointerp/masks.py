"""Turn an attribution map into the 14 masks used to evaluate explanations, and apply a mask
to a dB spectrogram.

Every statistic (min, max, quantile) is taken per sample over all non-batch dimensions, so a
batch of explanations is masked exactly as if each sample were processed on its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from audiointerp.errors import AudioInterpError
from audiointerp.features import SILENCE_FLOOR_DB

#: The silence floor in dB (its home is :mod:`audiointerp.features`): the level masked-out bins are
#: set to by default, in a feature's own units once the run converts it (``level_from_db``).
SILENCE_DB: float = SILENCE_FLOOR_DB

MASK_NAMES: tuple[str, ...] = (
    "minmax",
    "sigmoid",
    "bin",
    "topK_5",
    "topK_30",
    "topK_50",
    "minmax_pos",
    "sigmoid_pos",
    "pos_thresh_25",
    "pos_thresh_50",
    "pos_thresh_75",
    "topK_5_pos",
    "topK_30_pos",
    "topK_50_pos",
)
SOFT_MASK_NAMES: tuple[str, ...] = ("minmax", "sigmoid", "minmax_pos", "sigmoid_pos")
BINARY_MASK_NAMES: tuple[str, ...] = tuple(name for name in MASK_NAMES if name not in SOFT_MASK_NAMES)

# Percent of each sample kept by the top-K masks, keyed by mask name.
_TOPK_PERCENT: dict[str, int] = {"topK_5": 5, "topK_30": 30, "topK_50": 50}
_TOPK_POS_PERCENT: dict[str, int] = {"topK_5_pos": 5, "topK_30_pos": 30, "topK_50_pos": 50}
_POS_THRESH_PERCENT: dict[str, int] = {"pos_thresh_25": 25, "pos_thresh_50": 50, "pos_thresh_75": 75}

# torch.quantile's size cap. Current releases apply it to the reduced (per-sample) length
# only, but the cap has also been applied to the whole input, so the batch is kept under it too.
_QUANTILE_MAX_ELEMENTS = 2**24

_EPS = 1e-8

#: How top-K masks treat bins tied at the threshold. ``keep`` (the reference's definition and
#: the default): every bin >= the (1 - K/100) quantile, so ties can make the mask larger than K %
#: (a map with fewer than K % positive values gives an all-ones ``topK_*_pos``). ``rank``: exactly
#: ceil(K/100 * F * T) bins by descending value, ties broken by position (stable sort).
TIE_RULES: tuple[str, ...] = ("keep", "rank")


def _per_sample_quantiles(values: Tensor, levels: Sequence[float]) -> Tensor:
    """Per-sample quantiles with torch.quantile's linear interpolation.

    Args:
        values: (B, ...) floating tensor; each sample is flattened.
        levels: quantile levels in [0, 1], length L.

    Returns:
        (L, B, 1, ..., 1) tensor (same rank as ``values``), so that ``values >= result[j]``
        broadcasts per sample.
    """
    batch = values.shape[0]
    flat = values.reshape(batch, -1)
    per_sample = max(flat.shape[1], 1)
    levels_tensor = torch.tensor(list(levels), dtype=flat.dtype, device=flat.device)
    # Hundreds of 257x313 maps exceed the cap in total; rows are independent, so splitting
    # the batch leaves the result unchanged (and bounds the sorted copy quantile makes).
    rows_per_chunk = max(1, _QUANTILE_MAX_ELEMENTS // per_sample)
    chunks = [
        torch.quantile(flat[start : start + rows_per_chunk], levels_tensor, dim=1)
        for start in range(0, batch, rows_per_chunk)
    ]
    quantiles = torch.cat(chunks, dim=1)  # (L, B)
    return quantiles.reshape(len(levels), batch, *([1] * (values.dim() - 1)))


def _top_fraction_masks(values: Tensor, selected: Sequence[str], percent_by_name: dict[str, int],
                        ties: str = "keep") -> dict[str, Tensor]:
    """Top-K masks of ``values`` (B, 1, F, T) for the selected names of ``percent_by_name``.

    ``ties="keep"``: {name: values >= q}, q the per-sample (1 - k/100) quantile (one quantile pass
    serves all names). ``ties="rank"``: the ceil(k/100 * n) highest-ranked bins of each sample,
    n = F * T, equal values ranked by position (one stable sort serves all names).
    """
    names = [name for name in selected if name in percent_by_name]
    if not names:
        return {}
    if ties == "keep":
        thresholds = _per_sample_quantiles(values, [1 - percent_by_name[name] / 100 for name in names])
        return {name: values >= threshold for name, threshold in zip(names, thresholds)}
    flat = values.reshape(values.shape[0], -1)
    n_bins = flat.shape[1]
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n_bins, device=flat.device).expand_as(order))
    return {name: (rank < math.ceil(percent_by_name[name] / 100 * n_bins)).reshape(values.shape) for name in names}


def _validate_names(names: Sequence[str] | None) -> list[str]:
    if names is None:
        return list(MASK_NAMES)
    if isinstance(names, str):
        names = [names]
    unknown = [name for name in names if name not in MASK_NAMES]
    if unknown:
        raise AudioInterpError(
            f"mask.names: unknown mask name(s) {', '.join(map(repr, unknown))}; "
            f"expected any of {', '.join(MASK_NAMES)}"
        )
    requested = set(names)
    return [name for name in MASK_NAMES if name in requested]


def validate(names: Sequence[str] | None, ties: str, silence_level: object = SILENCE_DB) -> list[str]:
    """Check mask names, the tie rule and the silence level before any work starts; returns the
    names in order.

    Raises:
        AudioInterpError: naming ``mask.names``, ``mask.ties`` or ``mask.silence_level`` and what was expected.
    """
    if ties not in TIE_RULES:
        raise AudioInterpError(f"mask.ties: expected one of {', '.join(TIE_RULES)}, got {ties!r}")
    if silence_level is not None and (isinstance(silence_level, bool) or not isinstance(silence_level, (int, float))
                                      or not math.isfinite(silence_level)):
        raise AudioInterpError(f"mask.silence_level: expected a level in dB (a finite number) or null "
                               f"(each clip's own minimum), got {silence_level!r}")
    return _validate_names(names)


def make_masks(attribution: Tensor, names: Sequence[str] | None = None, ties: str = "keep") -> dict[str, Tensor]:
    """Build masks from an attribution map.

    Args:
        attribution: (B, 1, F, T) attribution A (any rank >= 2 works; statistics are taken
            per sample over all non-batch dimensions). It is detached; gradients never flow.
        names: subset of ``MASK_NAMES`` to build; ``None`` builds all 14.
        ties: how the top-K masks treat values tied at their threshold, one of ``TIE_RULES``.

    Returns:
        ``{name: mask}`` in ``MASK_NAMES`` order, each mask (B, 1, F, T) float32 on the
        attribution's device. Binary masks hold only 0. and 1.; soft masks lie in [0, 1].

    Raises:
        AudioInterpError: a name in ``names`` is not one of ``MASK_NAMES``, or ``ties`` is not
            one of ``TIE_RULES``.
    """
    selected = validate(names, ties)
    if attribution.dim() < 2:
        raise ValueError(f"attribution must be (B, 1, F, T), got shape {tuple(attribution.shape)}")
    values = attribution.detach()
    if not values.is_floating_point():
        values = values.float()
    reduce_dims = tuple(range(1, values.dim()))
    positive = values.clamp_min(0)

    masks: dict[str, Tensor] = {}

    needs_min_max = {"minmax", "minmax_pos"} | set(_POS_THRESH_PERCENT)
    if needs_min_max & set(selected):
        sample_max = values.amax(dim=reduce_dims, keepdim=True)
        sample_min = values.amin(dim=reduce_dims, keepdim=True)
        # When every value is negative A+ is all zero; clamping the denominator at 0 keeps
        # 0 / (max A + eps) from becoming 0/0 (max A = -eps) or -0 while the result for
        # max A >= 0 is exactly A+ / (max A + eps).
        minmax_pos = positive / (sample_max.clamp_min(0) + _EPS)
    if "minmax" in selected:
        masks["minmax"] = (values - sample_min) / (sample_max - sample_min + _EPS)
    if "sigmoid" in selected:
        masks["sigmoid"] = torch.sigmoid(values)
    if "bin" in selected:
        masks["bin"] = values > 0

    masks.update(_top_fraction_masks(values, selected, _TOPK_PERCENT, ties))

    if "minmax_pos" in selected:
        masks["minmax_pos"] = minmax_pos
    if "sigmoid_pos" in selected:
        masks["sigmoid_pos"] = torch.sigmoid(positive)
    for name in selected:
        if name in _POS_THRESH_PERCENT:
            masks[name] = minmax_pos >= _POS_THRESH_PERCENT[name] / 100

    masks.update(_top_fraction_masks(positive, selected, _TOPK_POS_PERCENT, ties))

    return {name: masks[name].to(torch.float32) for name in selected}


def apply_mask(
    spectrogram: Tensor, mask: Tensor, silence_level: float | None = SILENCE_DB
) -> tuple[Tensor, Tensor]:
    """Keep the masked part of a dB spectrogram, and separately its complement.

    Removed bins are pulled towards a silence level ``s`` rather than to 0, because 0 dB is
    loud; a mask value m gives ``(X - s) * m + s``.

    Args:
        spectrogram: (B, 1, F, T) spectrogram X in dB.
        mask: (B, 1, F, T) mask M in [0, 1], or any shape broadcastable to X.
        silence_level: s in dB; ``None`` uses each sample's minimum of X, shape (B, 1, 1, 1).

    Returns:
        ``(masked, unmasked)``, both X's shape: ``(X - s) * M + s`` and ``(X - s) * (1 - M) + s``.
    """
    if silence_level is None:
        reduce_dims = tuple(range(1, spectrogram.dim()))
        silence = spectrogram.amin(dim=reduce_dims, keepdim=True)
    else:
        silence = torch.as_tensor(silence_level, dtype=spectrogram.dtype, device=spectrogram.device)
    mask = mask.to(device=spectrogram.device, dtype=spectrogram.dtype)
    above_silence = spectrogram - silence
    masked = above_silence * mask + silence
    unmasked = above_silence * (1 - mask) + silence
    return masked, unmasked
