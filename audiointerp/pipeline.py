"""The one loop over clips that every run uses: explain, mask, evaluate, score.

Per batch of clips: one forward for the target class, one attribution call, the masks, then a
single batched forward over [original, every masked, every complement] spectrogram, and the
metrics. The same loop serves one clip or four hundred, clean or noisy, any explainer; listenable
examples are an option of it, not a second copy of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from audiointerp.data import ClipSet
from audiointerp.explainers import Explainer
from audiointerp.features import Spectrogram
from audiointerp.localization import attribution_scores, evidence_mask, mask_scores
from audiointerp.masks import BINARY_MASK_NAMES, apply_mask, make_masks
from audiointerp.metrics import FAITHFULNESS_NAMES, faithfulness, mask_statistics, score

#: Spectrograms inverted at once on the CPU for the audio-domain metrics: the mel inverse's
#: (batch, K, T) temporaries fall out of cache beyond a few (2-core box: 1.27 s per clip at 4,
#: 1.38 at 8, 1.98 at 32). On a GPU, eval_batch_size is used.
CPU_INVERSE_BATCH = 4

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
    metrics {mask: {column: (N,)}} with the metrics and mask statistics (float32), ``PREDICTION_COLUMNS``
    (int64), and where computed the binary masks' ``MASK_SCORE_NAMES`` and ``AUDIO_METRIC_NAMES``;
    localization {score: (N,)} float32 with ``ATTRIBUTION_SCORE_NAMES`` for clips with evidence,
    empty otherwise; audio_seconds_per_clip: the audio-domain path's cost, None when off.
    """

    attributions: Tensor
    probabilities: Tensor
    predicted: Tensor
    metrics: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    localization: dict[str, Tensor] = field(default_factory=dict)
    audio_seconds_per_clip: float | None = None


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


def audio_domain_inputs(feature, spectrogram: Spectrogram, log_dbs: Tensor, clip_index: Tensor,
                        batch_size: int) -> Tensor:
    """Masked spectrograms -> audio (the feature's inverse, with each clip's phase) -> spectrograms again.

    What the model hears when a masked spectrogram is played: the inverse cannot realise every
    masked spectrogram exactly (overlapping frames, mel bands), so this differs from ``log_dbs``.

    Args:
        spectrogram: the clips' analysis (B clips).
        log_dbs: (M, 1, F, T) masked copies in dB, row m a copy of clip ``clip_index[m]``.
        clip_index: (M,) int64 in [0, B).
        batch_size: spectrograms inverted at once (bounds the (batch, K, T) complex STFTs).

    Returns:
        (M, 1, F, T) float32 log spectrograms of the inverted audio, on ``log_dbs``' device.
    """
    chunks = []
    for start in range(0, len(log_dbs), batch_size):
        rows = slice(start, start + batch_size)
        audio = feature.inverse(log_dbs[rows], spectrogram.take(clip_index[rows]))
        chunks.append(feature(audio).log_db.float())
    return torch.cat(chunks)


def explain_and_score(model: nn.Module, explainer: Explainer, feature, clips: ClipSet, *,
                      mask_names: list[str], silence_level: float | None, batch_size: int,
                      eval_batch_size: int, device: torch.device, ties: str = "keep", n_examples: int = 0,
                      on_example: Callable[[Example], None] | None = None,
                      audio_metrics: bool = False) -> RunResults:
    """Explain every clip for its predicted class and score each mask.

    The attribution of a clip is computed once and reused for all masks. ``on_example`` receives
    the first ``n_examples`` clips with their inverted audio (for writing WAVs and plots).
    Clips with ground-truth evidence get localisation scores (``RunResults.localization``, and
    IoU, precision, recall for binary masks); explainers that set ``needs_evidence`` get the
    region too. ``audio_metrics`` adds the faithfulness metrics on :func:`audio_domain_inputs`.
    """
    model.eval().to(device)
    attributions, probabilities = [], []
    metric_rows: dict[str, dict[str, list[Tensor]]] = {m: {} for m in mask_names}
    localization_rows: dict[str, list[Tensor]] = {}
    audio_seconds = 0.0
    progress = tqdm(total=len(clips), desc=f"explaining ({explainer!r})", unit="clip")
    for start in range(0, len(clips), batch_size):
        waveforms = clips.waveforms[start:start + batch_size].to(device)
        spectrogram = feature(waveforms)
        log_db = spectrogram.log_db  # (B, 1, F, T)
        with torch.no_grad():  # not inference_mode: explainers use target inside autograd graphs
            target = model(log_db).argmax(dim=1)
        evidence = None if clips.evidence is None else evidence_mask(
            clips.evidence[start:start + batch_size], feature, log_db.shape[-1])  # (B, 1, F, T) bool, CPU
        context = {"evidence": None if evidence is None else evidence.to(device)} if explainer.needs_evidence else {}
        attribution = explainer.attribute(model, log_db, target, **context).detach()
        masks = make_masks(attribution, mask_names, ties=ties)

        pairs = {name: apply_mask(log_db, mask, silence_level) for name, mask in masks.items()}
        variants = torch.cat([masked for masked, _ in pairs.values()] + [unmasked for _, unmasked in pairs.values()])
        stacked_probabilities = _probabilities(model, torch.cat([log_db, variants]), eval_batch_size).view(
            1 + 2 * len(masks), len(log_db), -1)
        if audio_metrics:
            began = time.perf_counter()
            clip_index = torch.arange(len(log_db)).repeat(2 * len(masks))  # variants are mask-major
            heard = audio_domain_inputs(feature, spectrogram, variants, clip_index,
                                        eval_batch_size if device.type == "cuda" else CPU_INVERSE_BATCH)
            audio_probabilities = _probabilities(model, heard, eval_batch_size).view(2 * len(masks), len(log_db), -1)
            audio_seconds += time.perf_counter() - began
        p = stacked_probabilities[0]
        for position, name in enumerate(masks):
            p_masked = stacked_probabilities[1 + position]
            p_unmasked = stacked_probabilities[1 + len(masks) + position]
            columns = {**score(p, p_masked, p_unmasked, masks[name]), **mask_statistics(masks[name]),
                       "predicted_masked": p_masked.argmax(dim=1), "predicted_unmasked": p_unmasked.argmax(dim=1)}
            if evidence is not None and name in BINARY_MASK_NAMES:
                columns.update(mask_scores(masks[name], evidence))
            if audio_metrics:
                heard = faithfulness(p, audio_probabilities[position], audio_probabilities[len(masks) + position])
                columns.update({f"{m}_audio": heard[m] for m in FAITHFULNESS_NAMES})
            for column, values in columns.items():
                metric_rows[name].setdefault(column, []).append(values.cpu())
        if evidence is not None:
            for column, values in attribution_scores(attribution, evidence).items():
                localization_rows.setdefault(column, []).append(values)

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
        localization={k: torch.cat(v) for k, v in localization_rows.items()},
        audio_seconds_per_clip=audio_seconds / len(clips) if audio_metrics and len(clips) else None,
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
