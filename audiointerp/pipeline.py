"""The one loop over clips that every run uses: explain, mask, evaluate, score.

Per batch of clips: one forward of the originals (the target class and the metrics' reference),
one attribution call, the masks, then a single batched forward over [every masked, every
complement] spectrogram, and the metrics. The same loop serves one clip or four hundred, clean or
noisy, any explainer; listenable examples are an option of it, not a second copy of it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from audiointerp import curves, models
from audiointerp.data import ClipSet
from audiointerp.explainers import Explainer
from audiointerp.features import Spectrogram
from audiointerp.localization import attribution_scores, evidence_mask, mask_scores
from audiointerp.masks import BINARY_MASK_NAMES, apply_mask, make_masks
from audiointerp.metrics import FAITHFULNESS_NAMES, faithfulness, mask_statistics, score
from audiointerp.progress import progress
from audiointerp.resume import BatchResults, BatchStore

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
    #: {column: (N,) float32}: scores of the attribution itself, no mask: ``curves.CURVE_NAMES``
    #: (its ranking) and the explainer's ``clip_diagnostics`` (IG's ``ig_completeness_error``).
    clip_scores: dict[str, Tensor] = field(default_factory=dict)


def log_spectrograms(feature, waveforms: Tensor, batch_size: int, device: torch.device,
                     desc: str | None = None) -> Tensor:
    """waveforms (N, samples) -> model inputs (N, 1, F, T) in dB, on the CPU, in batches."""
    chunks = []
    for start in progress(range(0, len(waveforms), batch_size), desc=desc, disable=desc is None, leave=False):
        chunks.append(feature(waveforms[start:start + batch_size].to(device)).log_db.float().cpu())
    return torch.cat(chunks)


@torch.inference_mode()
def _probabilities(model: nn.Module, inputs: Tensor, eval_batch_size: int) -> Tensor:
    """inputs (M, 1, F, T) on the model's device -> softmax (M, C)."""
    return torch.cat([torch.softmax(model(inputs[i:i + eval_batch_size]), dim=1)
                      for i in range(0, len(inputs), eval_batch_size)])


@torch.inference_mode()
def heard_probabilities(model: nn.Module, feature, spectrogram: Spectrogram, log_dbs: Tensor, clip_index: Tensor,
                        batch_size: int) -> Tensor:
    """Masked spectrograms -> audio (the feature's inverse, with each clip's phase) -> softmax as the model hears it.

    What the model hears when a masked spectrogram is played: a spectrogram classifier gets the
    audio analysed again (the inverse cannot realise every masked spectrogram exactly: overlapping
    frames, mel bands), a classifier of audio gets the audio itself (``classify_audio``).

    Args:
        spectrogram: the clips' analysis (B clips).
        log_dbs: (M, 1, F, T) masked copies in dB, row m a copy of clip ``clip_index[m]``.
        clip_index: (M,) int64 in [0, B).
        batch_size: spectrograms inverted at once (bounds the (batch, K, T) complex STFTs).

    Returns:
        (M, C) float32 probabilities, on ``log_dbs``' device.
    """
    chunks = []
    for start in range(0, len(log_dbs), batch_size):
        rows = slice(start, start + batch_size)
        audio = feature.inverse(log_dbs[rows], spectrogram.take(clip_index[rows]))
        chunks.append(torch.softmax(_classify_audio(model, audio, feature), dim=1))
    return torch.cat(chunks)


def _classify_audio(model: nn.Module, audio: Tensor, feature) -> Tensor:
    """(B, samples) -> (B, C) logits as ``model`` hears the audio (``Classifier.classify_audio``)."""
    if hasattr(model, "classify_audio"):
        return model.classify_audio(audio, feature)
    return model(feature(audio).log_db.float())


def listening(model: nn.Module, spectrogram: Spectrogram):
    """``model.listening(spectrogram)`` (a classifier of audio classifies with these clips' phase), or
    nothing for a model without it."""
    return model.listening(spectrogram) if hasattr(model, "listening") else contextlib.nullcontext()


def clips_per_batch(model: nn.Module, batch_size: int) -> int:
    """Clips explained together: ``batch_size``, or one for a classifier of audio, whose every forward
    is of one clip's spectrogram and copies of it (its phase; ``audiointerp.models.waveform``)."""
    return 1 if getattr(model, "input_kind", "spectrogram") == "waveform" else batch_size


def classify_clips(model: nn.Module, feature, waveforms: Tensor, batch_size: int, device: torch.device) -> Tensor:
    """(N, samples) clips -> (N, C) softmax probabilities on the CPU, each clip's spectrogram classified as
    the explained clips are (:func:`clips_per_batch` clips at a time, within :func:`listening`)."""
    batch_size = clips_per_batch(model, batch_size)
    chunks = []
    for start in range(0, len(waveforms), batch_size):
        spectrogram = feature(waveforms[start:start + batch_size].to(device))
        with listening(model, spectrogram):
            chunks.append(_probabilities(model, spectrogram.log_db, batch_size).cpu())
    return torch.cat(chunks)


def explain_and_score(model: nn.Module, explainer: Explainer, feature, clips: ClipSet, *,
                      mask_names: list[str], silence_level: float | None, batch_size: int,
                      eval_batch_size: int, device: torch.device, ties: str = "keep", n_examples: int = 0,
                      on_example: Callable[[Example], None] | None = None,
                      audio_metrics: bool = False, store: BatchStore | None = None,
                      batches: range | None = None, channels_last: bool = False,
                      targets: Tensor | None = None) -> RunResults | None:
    """Explain every clip for its predicted class (or ``targets``) and score each mask.

    The attribution of a clip is computed once and reused for all masks. ``on_example`` receives
    the first ``n_examples`` clips with their inverted audio (for writing WAVs and plots).
    Clips with ground-truth evidence get localisation scores (``RunResults.localization``, and
    IoU, precision, recall for binary masks); explainers that set ``needs_evidence`` get the
    region too. ``audio_metrics`` adds the faithfulness metrics as heard (:func:`heard_probabilities`).

    Clips are explained ``batch_size`` at a time, batch ``b`` being clips ``[b * batch_size,
    (b + 1) * batch_size)``. Each finished batch goes to ``store`` (in memory by default; a
    :class:`~audiointerp.resume.DiskStore` makes the run resumable), and batches the store
    already has are not explained again. Only the ``batches`` given are explained (all by
    default; a shard's range otherwise). Returns the results of every clip once the store has
    every batch, else None (other shards' batches are still missing).

    ``channels_last``: the forward-only passes that classify the clips and their masked copies run
    with the model channels-last (:func:`audiointerp.models.channels_last`); an explainer's passes run
    as it chooses (LIME's forwards follow the same option, given by its config).

    ``targets``: (N,) int64, the class each clip's attribution explains instead of the predicted one
    (:func:`audiointerp.explain`'s ``target``); the metrics then score that class.
    """
    store = BatchStore() if store is None else store
    batch_size = clips_per_batch(model, batch_size)
    n_batches = -(-len(clips) // batch_size)
    batches = range(n_batches) if batches is None else batches
    todo = [b for b in batches if not store.has(b)]
    model.eval().to(device)
    def clips_in(b: int) -> int:
        return min(batch_size, len(clips) - b * batch_size)

    bar = progress(total=sum(map(clips_in, batches)), initial=sum(clips_in(b) for b in batches if b not in todo),
                 desc=f"explaining ({explainer!r})", unit="clip")
    for b in todo:
        start = b * batch_size
        batch = _explain_batch(model, explainer, feature, clips, start, min(start + batch_size, len(clips)),
                               mask_names=mask_names, silence_level=silence_level, ties=ties,
                               eval_batch_size=eval_batch_size, device=device, n_examples=n_examples,
                               on_example=on_example, audio_metrics=audio_metrics, channels_last=channels_last,
                               targets=None if targets is None else targets[start:start + batch_size])
        store.save(b, batch)
        bar.update(len(batch.probabilities))
    bar.close()
    if not all(store.has(b) for b in range(n_batches)):
        return None
    return _gather([store.load(b) for b in range(n_batches)], len(clips), audio_metrics)


def _gather(batches: list[BatchResults], n_clips: int, audio_metrics: bool) -> RunResults:
    """Every batch's results, in clip order, as one RunResults."""
    probabilities = torch.cat([b.probabilities for b in batches])
    columns = {name: list(per_mask) for name, per_mask in batches[0].metrics.items()}
    audio_seconds = sum(b.audio_seconds for b in batches)
    return RunResults(
        attributions=torch.cat([b.attribution for b in batches]),
        probabilities=probabilities,
        predicted=probabilities.argmax(dim=1),
        metrics={name: {c: torch.cat([b.metrics[name][c] for b in batches]) for c in cols}
                 for name, cols in columns.items()},
        localization={c: torch.cat([b.localization[c] for b in batches]) for c in batches[0].localization},
        audio_seconds_per_clip=audio_seconds / n_clips if audio_metrics and n_clips else None,
        clip_scores={c: torch.cat([b.clip_scores[c] for b in batches]) for c in batches[0].clip_scores},
    )


def _explain_batch(model: nn.Module, explainer: Explainer, feature, clips: ClipSet, start: int, stop: int, *,
                   mask_names: list[str], silence_level: float | None, ties: str, eval_batch_size: int,
                   device: torch.device, n_examples: int, on_example: Callable[[Example], None] | None,
                   audio_metrics: bool, channels_last: bool = False, targets: Tensor | None = None) -> BatchResults:
    """Clips ``[start, stop)``: explain, mask, evaluate, score; the examples among them go to ``on_example``."""
    waveforms = clips.waveforms[start:stop].to(device)
    spectrogram = feature(waveforms)
    # a classifier of audio hears these clips' spectrograms (and copies of them) with their phase
    with listening(model, spectrogram):
        log_db = spectrogram.log_db  # (B, 1, F, T)
        # The one forward of the clips as they are: the explained class and the metrics' reference.
        with models.channels_last(model, channels_last):
            p = _probabilities(model, log_db, eval_batch_size)
        # a normal tensor: explainers use it inside autograd graphs
        target = p.argmax(dim=1).clone() if targets is None else targets.to(device=device, dtype=torch.long)
        evidence = None if clips.evidence is None else evidence_mask(
            clips.evidence[start:stop], feature, log_db.shape[-1])  # (B, 1, F, T) bool, CPU
        context = {"evidence": None if evidence is None else evidence.to(device)} if explainer.needs_evidence else {}
        # float32 whatever precision the model's passes run in (bf16 under precision=bf16)
        attribution = explainer.attribute(model, log_db, target, **context).detach().float()
        clip_scores = {c: v.detach().float().cpu() for c, v in explainer.clip_diagnostics().items()}
        masks = make_masks(attribution, mask_names, ties=ties)

        pairs = {name: apply_mask(log_db, mask, silence_level) for name, mask in masks.items()}
        variants = torch.cat([masked for masked, _ in pairs.values()] + [unmasked for _, unmasked in pairs.values()])
        with models.channels_last(model, channels_last):
            variant_probabilities = _probabilities(model, variants, eval_batch_size).view(2 * len(masks), len(log_db), -1)
        audio_seconds = 0.0
        if audio_metrics:
            began = time.perf_counter()
            clip_index = torch.arange(len(log_db)).repeat(2 * len(masks))  # variants are mask-major
            audio_probabilities = heard_probabilities(
                model, feature, spectrogram, variants, clip_index,
                eval_batch_size if device.type == "cuda" else CPU_INVERSE_BATCH).view(2 * len(masks), len(log_db), -1)
            audio_seconds = time.perf_counter() - began
        metric_columns: dict[str, dict[str, Tensor]] = {}
        for position, name in enumerate(masks):
            p_masked = variant_probabilities[position]
            p_unmasked = variant_probabilities[len(masks) + position]
            columns = {**score(p, p_masked, p_unmasked, masks[name], target), **mask_statistics(masks[name]),
                       "predicted_masked": p_masked.argmax(dim=1), "predicted_unmasked": p_unmasked.argmax(dim=1)}
            if evidence is not None and name in BINARY_MASK_NAMES:
                columns.update(mask_scores(masks[name], evidence))
            if audio_metrics:
                heard = faithfulness(p, audio_probabilities[position], audio_probabilities[len(masks) + position],
                                     target)
                columns.update({f"{m}_audio": heard[m] for m in FAITHFULNESS_NAMES})
            metric_columns[name] = {column: values.cpu() for column, values in columns.items()}
        localization = {} if evidence is None else {c: v.cpu() for c, v in attribution_scores(attribution, evidence).items()}
        with models.channels_last(model, channels_last):  # the attribution's ranking, no mask: curves.py
            ranked = curves.curves(model, log_db, attribution, target, p, silence_level, eval_batch_size)
        clip_scores = {**{c: ranked[c] for c in curves.CURVE_NAMES}, **clip_scores}

        if on_example is not None:
            for offset in range(min(len(log_db), n_examples - start)):
                on_example(_example(feature, spectrogram, waveforms, offset, start + offset,
                                    clips.clip_ids[start + offset], masks, pairs))
        return BatchResults(attribution=attribution.cpu(), probabilities=p.cpu(), metrics=metric_columns,
                            localization=localization, audio_seconds=audio_seconds, clip_scores=clip_scores)


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
