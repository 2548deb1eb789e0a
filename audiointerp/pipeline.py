"""The one loop over clips that every run uses: explain, mask, evaluate, score.

Per batch of clips: one forward for the target class, one attribution call, the masks, then a
single batched forward over [original, every masked, every complement] spectrogram, and the
metrics. The same loop serves one clip or four hundred, clean or noisy, any explainer; listenable
examples are an option of it, not a second copy of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from audiointerp.data import ClipSet
from audiointerp.explainers import Explainer
from audiointerp.localization import evidence_mask
from audiointerp.masks import apply_mask, make_masks
from audiointerp.metrics import mask_statistics, score

#: Per-clip columns of each mask besides the metrics: the classes the masked and the
#: complementary inputs were assigned to (what ``collapse`` counts).
PREDICTION_COLUMNS: tuple[str, ...] = ("predicted_masked", "predicted_unmasked")


@dataclass
class Example:
    """Everything written for one listenable example clip.

    log_db (1, F, T); masks/masked/unmasked: {mask name: (1, F, T)}; audio: {name: (samples,)}
    with names ``original``, ``<mask>_masked``, ``<mask>_unmasked``.
    """

    index: int
    clip_id: str
    log_db: Tensor
    masks: dict[str, Tensor]
    masked: dict[str, Tensor]
    audio: dict[str, Tensor]


@dataclass
class RunResults:
    """Per-clip results of explaining a ClipSet.

    attributions (N, 1, F, T); probabilities (N, C) of the unmasked inputs; predicted (N,);
    metrics {mask: {column: (N,)}} with the metrics and mask statistics (float32) and
    ``PREDICTION_COLUMNS`` (int64).
    """

    attributions: Tensor
    probabilities: Tensor
    predicted: Tensor
    metrics: dict[str, dict[str, Tensor]] = field(default_factory=dict)


def log_spectrograms(feature, waveforms: Tensor, batch_size: int, device: torch.device,
                     desc: str | None = None) -> Tensor:
    """waveforms (N, samples) -> model inputs (N, 1, F, T) in dB, on the CPU, in batches."""
    chunks = []
    for start in tqdm(range(0, len(waveforms), batch_size), desc=desc, disable=desc is None, leave=False):
        chunks.append(feature(waveforms[start:start + batch_size].to(device)).log_db.float().cpu())
    return torch.cat(chunks)


@torch.inference_mode()
def _probabilities(model: nn.Module, inputs: Tensor, eval_batch_size: int) -> Tensor:
    """inputs (M, 1, F, T) on the model's device -> softmax (M, C)."""
    return torch.cat([torch.softmax(model(inputs[i:i + eval_batch_size]), dim=1)
                      for i in range(0, len(inputs), eval_batch_size)])


def explain_and_score(model: nn.Module, explainer: Explainer, feature, clips: ClipSet, *,
                      mask_names: list[str], silence_level: float | None, batch_size: int,
                      eval_batch_size: int, device: torch.device, ties: str = "keep", n_examples: int = 0,
                      on_example: Callable[[Example], None] | None = None) -> RunResults:
    """Explain every clip for its predicted class and score each mask.

    The attribution of a clip is computed once and reused for all masks. ``on_example`` receives
    the first ``n_examples`` clips with their inverted audio (for writing WAVs and plots).
    Explainers that set ``needs_evidence`` get the clips' evidence region on the (F, T) grid.
    """
    model.eval().to(device)
    attributions, probabilities = [], []
    metric_rows: dict[str, dict[str, list[Tensor]]] = {m: {} for m in mask_names}
    progress = tqdm(total=len(clips), desc=f"explaining ({explainer!r})", unit="clip")
    for start in range(0, len(clips), batch_size):
        waveforms = clips.waveforms[start:start + batch_size].to(device)
        spectrogram = feature(waveforms)
        log_db = spectrogram.log_db  # (B, 1, F, T)
        with torch.no_grad():  # not inference_mode: explainers use target inside autograd graphs
            target = model(log_db).argmax(dim=1)
        context = {}
        if explainer.needs_evidence:
            context["evidence"] = None if clips.evidence is None else evidence_mask(
                clips.evidence[start:start + batch_size], feature, log_db.shape[-1]).to(device)
        attribution = explainer.attribute(model, log_db, target, **context).detach()
        masks = make_masks(attribution, mask_names, ties=ties)

        pairs = {name: apply_mask(log_db, mask, silence_level) for name, mask in masks.items()}
        stacked = torch.cat([log_db] + [masked for masked, _ in pairs.values()]
                            + [unmasked for _, unmasked in pairs.values()])
        stacked_probabilities = _probabilities(model, stacked, eval_batch_size).view(1 + 2 * len(masks), len(log_db), -1)
        p = stacked_probabilities[0]
        for position, name in enumerate(masks):
            p_masked = stacked_probabilities[1 + position]
            p_unmasked = stacked_probabilities[1 + len(masks) + position]
            columns = {**score(p, p_masked, p_unmasked, masks[name]), **mask_statistics(masks[name]),
                       "predicted_masked": p_masked.argmax(dim=1), "predicted_unmasked": p_unmasked.argmax(dim=1)}
            for column, values in columns.items():
                metric_rows[name].setdefault(column, []).append(values.cpu())

        attributions.append(attribution.float().cpu())
        probabilities.append(p.float().cpu())
        if on_example is not None:
            for offset in range(min(len(log_db), n_examples - start)):
                on_example(_example(feature, spectrogram, waveforms, offset, start + offset,
                                    clips.clip_ids[start + offset], masks, pairs))
        progress.update(len(log_db))
    progress.close()
    probabilities_all = torch.cat(probabilities)
    return RunResults(
        attributions=torch.cat(attributions),
        probabilities=probabilities_all,
        predicted=probabilities_all.argmax(dim=1),
        metrics={m: {k: torch.cat(v) for k, v in rows.items()} for m, rows in metric_rows.items()},
    )


def _example(feature, spectrogram, waveforms: Tensor, offset: int, index: int, clip_id: str,
             masks: dict[str, Tensor], pairs: dict[str, tuple[Tensor, Tensor]]) -> Example:
    """Invert one clip's masked and complement spectrograms to audio (all masks in one call)."""
    names = list(masks)
    one_clip = spectrogram.select(offset)
    log_dbs = torch.stack([pairs[n][0][offset] for n in names] + [pairs[n][1][offset] for n in names])  # (2K, 1, F, T)
    audio = feature.inverse(log_dbs, one_clip.expand(len(log_dbs))).float().cpu()
    labels = [f"{n}_masked" for n in names] + [f"{n}_unmasked" for n in names]
    return Example(
        index=index,
        clip_id=clip_id,
        log_db=one_clip.log_db[0].float().cpu(),
        masks={n: masks[n][offset].float().cpu() for n in names},
        masked={n: pairs[n][0][offset].float().cpu() for n in names},
        audio={"original": waveforms[offset].float().cpu(), **dict(zip(labels, audio))},
    )
