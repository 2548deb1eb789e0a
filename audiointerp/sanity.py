"""Randomisation sanity checks (Adebayo et al. 2018): does an explanation depend on the model, and
on the class it explains?

Cascading model-parameter randomisation re-draws the weights of the model's layers from the
output down (the classifier head, then conv block 6 ... 1), re-explains a fixed subset of clips
after each step, and compares the new attributions with the original ones: Spearman rank
correlation of |A| and SSIM of |A| (each min-max normalised per clip), and the Spearman
correlation of the signed maps. An explanation that
reflects what the model learnt should fall apart; one that stays put (Spearman near 1) is
independent of the model. The random-logit check explains a random other class with the trained
model: an explanation that does not move does not depend on the class it claims to explain.

The run's model is changed in place and always restored: :func:`restored` checks bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from audiointerp.data import ClipSet
from audiointerp.errors import AudioInterpError
from audiointerp.explainers import Explainer
from audiointerp.localization import evidence_mask
from audiointerp.progress import progress

#: Above this mean Spearman correlation of |A| with the original, an attribution is reported as not
#: depending on the model (every layer randomised) or on the class explained (random logit).
INDEPENDENCE_SPEARMAN = 0.9
RANDOM_LOGIT_STEP = "random_logit"
SANITY_COLUMNS = ("step", "randomised", "sample", "clip_id", "target", "spearman", "ssim", "spearman_signed")


@dataclass
class SanityRow:
    """One clip at one step: ``randomised`` names the layer groups re-drawn so far ("" for the
    random-logit check, which keeps the model and changes ``target``)."""

    step: str
    randomised: str
    sample: int
    clip_id: str
    target: int
    spearman: float
    ssim: float
    spearman_signed: float


def rank_correlation(original: Tensor, other: Tensor, magnitude: bool = True) -> Tensor:
    """Spearman rank correlation of |original| and |other| (of the signed maps with
    ``magnitude=False``) per clip, ties at their average rank.

    Args:
        original, other: (N, 1, F, T) attributions.

    Returns:
        (N,) float32; NaN where either map is constant (no ranking to correlate).
    """
    from scipy.stats import rankdata

    def prepared(values: Tensor):
        values = values.detach().abs() if magnitude else values.detach()
        return values.reshape(len(values), -1).to("cpu", torch.float64).numpy()

    a, b = prepared(original), prepared(other)
    values = []
    for row_a, row_b in zip(rankdata(a, axis=1), rankdata(b, axis=1)):
        row_a, row_b = row_a - row_a.mean(), row_b - row_b.mean()
        denominator = math.sqrt(float((row_a ** 2).sum() * (row_b ** 2).sum()))
        values.append(float((row_a * row_b).sum()) / denominator if denominator > 0 else float("nan"))
    return torch.tensor(values, dtype=torch.float32)


def _unit_range(values: np.ndarray) -> np.ndarray:
    low, high = values.min(), values.max()
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def structural_similarity(original: Tensor, other: Tensor) -> Tensor:
    """SSIM (scikit-image, 7 x 7 windows) of |original| and |other|, each min-max normalised to [0, 1].

    Args:
        original, other: (N, 1, F, T) attributions.

    Returns:
        (N,) float32 in [-1, 1].
    """
    from skimage.metrics import structural_similarity as ssim

    a = original.detach().abs().to("cpu", torch.float64).numpy()
    b = other.detach().abs().to("cpu", torch.float64).numpy()
    return torch.tensor([ssim(_unit_range(x[0]), _unit_range(y[0]), data_range=1.0) for x, y in zip(a, b)],
                        dtype=torch.float32)


@contextmanager
def restored(model: nn.Module) -> Iterator[nn.Module]:
    """Lets the block change ``model``'s weights; puts every parameter and buffer back afterwards,
    exceptions included, and checks that they are bit-identical to before."""
    saved = {name: value.detach().clone() for name, value in model.state_dict().items()}
    training = model.training
    try:
        yield model
    finally:
        model.load_state_dict(saved)
        model.train(training)
        changed = [name for name, value in model.state_dict().items() if not torch.equal(value, saved[name])]
        if changed:
            raise RuntimeError(f"sanity: could not restore the model's {', '.join(changed)}")


@torch.no_grad()
def randomise(modules: list[nn.Module], generator: torch.Generator) -> None:
    """Re-draw the weights of every layer in ``modules`` that has a weight matrix (convolutions,
    linear layers, of any classifier, TorchScript too) as Cnn14 initialises them (Xavier-uniform
    weights, zero biases), from ``generator``. Normalisation layers (1-D weights) are left as trained."""
    for module in modules:
        for layer in module.modules():
            own = dict(layer.named_parameters(recurse=False))
            weight = own.get("weight")
            if weight is None or weight.dim() < 2:
                continue
            receptive = weight[0, 0].numel()
            fan_out, fan_in = weight.shape[0] * receptive, weight.shape[1] * receptive
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            draw = torch.rand(weight.shape, generator=generator, dtype=torch.float64) * 2 * bound - bound
            weight.copy_(draw.to(weight))
            if own.get("bias") is not None:
                own["bias"].zero_()


def _explain(explainer: Explainer, model: nn.Module, inputs: Tensor, target: Tensor, batch_size: int,
             evidence: Tensor | None) -> Tensor:
    """(N, 1, F, T) inputs -> (N, 1, F, T) attributions on the CPU, ``batch_size`` clips per call."""
    chunks = []
    for start in range(0, len(inputs), batch_size):
        rows = slice(start, start + batch_size)
        context = {"evidence": evidence[rows]} if explainer.needs_evidence else {}
        chunks.append(explainer.attribute(model, inputs[rows], target[rows], **context).detach().float().cpu())
    return torch.cat(chunks)


def randomisation_checks(model: nn.Module, explainer: Explainer, inputs: Tensor, clip_ids: list[str], *,
                         n_classes: int, seed: int, batch_size: int, evidence: Tensor | None = None,
                         progress=None) -> list[SanityRow]:
    """Cascading model-parameter randomisation, then the random-logit check, on ``inputs``.

    Args:
        model: the trained model; it must have ``randomisation_cascade()`` (named layer groups from
            the output down). It is restored bit for bit before this returns.
        explainer: the run's explainer; ``model_changed`` is called after every change of weights.
        inputs: (N, 1, F, T) clips on the model's device, explained for the model's predicted class.
        clip_ids: N ids, for the rows.
        n_classes: for drawing the random other class.
        seed: seeds the re-drawn weights and the random classes.
        batch_size: clips per ``attribute`` call.
        evidence: (N, 1, F, T) bool, for explainers that need it.
        progress: called with the name of each step after it is done (e.g. a tqdm update).

    Returns:
        One :class:`SanityRow` per clip and step: the cascade's steps in order, then ``random_logit``.
    """
    model.eval()
    with torch.no_grad():
        target = model(inputs).argmax(dim=1)
    original = _explain(explainer, model, inputs, target, batch_size, evidence)
    generator = torch.Generator().manual_seed(seed)
    rows: list[SanityRow] = []

    def compare(step: str, randomised: str, attribution: Tensor, targets: Tensor) -> None:
        spearman = rank_correlation(original, attribution).tolist()
        ssim = structural_similarity(original, attribution).tolist()
        signed = rank_correlation(original, attribution, magnitude=False).tolist()
        rows.extend(SanityRow(step, randomised, i, clip_ids[i], int(targets[i]), spearman[i], ssim[i], signed[i])
                    for i in range(len(inputs)))
        if progress is not None:
            progress(step)

    with restored(model):
        done = []
        for step, modules in model.randomisation_cascade():
            randomise(modules, generator)
            explainer.model_changed(model)
            done.append(step)
            compare(step, "+".join(done), _explain(explainer, model, inputs, target, batch_size, evidence), target)
    explainer.model_changed(model)

    other = (target.cpu() + torch.randint(1, n_classes, target.shape, generator=generator)) % n_classes
    compare(RANDOM_LOGIT_STEP, "", _explain(explainer, model, inputs, other.to(target.device), batch_size, evidence), other)
    return rows


def summarise(rows: list[SanityRow]) -> dict[str, dict[str, float]]:
    """{step: {"spearman": mean, "ssim": mean, "spearman_signed": mean}} over the clips where
    defined, steps in order."""
    steps: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        entry = steps.setdefault(row.step, {"spearman": [], "ssim": [], "spearman_signed": []})
        entry["spearman"].append(row.spearman)
        entry["ssim"].append(row.ssim)
        entry["spearman_signed"].append(row.spearman_signed)
    return {step: {k: float(np.nanmean(v)) if not np.isnan(v).all() else float("nan") for k, v in values.items()}
            for step, values in steps.items()}


def _unchanged(step: dict[str, float]) -> float:
    """The correlation a verdict reads: of |A|, or of the signed maps where |A| is constant (the
    oracle's +-1 map has no magnitude ranking, only a sign pattern)."""
    return step["spearman_signed"] if math.isnan(step["spearman"]) else step["spearman"]


def verdict(explainer_name: str, summary: dict[str, dict[str, float]]) -> list[str]:
    """The lines a run prints: how far the attributions moved, and a ``warning:`` per independence found."""
    cascade = [step for step in summary if step != RANDOM_LOGIT_STEP]
    moved = ", ".join(f"{step} {_unchanged(summary[step]):.2f}" for step in cascade)
    of = "signed A (|A| is constant)" if math.isnan(summary[cascade[0]]["spearman"]) else "|A|"
    lines = [f"sanity ({explainer_name}): Spearman of {of} with the original after randomising down to {moved}; "
             f"SSIM {summary[cascade[0]]['ssim']:.2f} -> {summary[cascade[-1]]['ssim']:.2f}; "
             f"explaining a random other class: Spearman {_unchanged(summary[RANDOM_LOGIT_STEP]):.2f}"]
    final = _unchanged(summary[cascade[-1]])
    if final >= INDEPENDENCE_SPEARMAN:
        lines.append(f"warning: sanity: {explainer_name}'s attributions do not change when every layer of the model "
                     f"is randomised (Spearman {final:.2f}): they are independent of the model")
    other = _unchanged(summary[RANDOM_LOGIT_STEP])
    if other >= INDEPENDENCE_SPEARMAN:
        lines.append(f"warning: sanity: {explainer_name}'s attributions do not change when a random other class is "
                     f"explained (Spearman {other:.2f}): they are independent of the class explained")
    return lines


def check_options(enabled: object, n_clips: object) -> None:
    """Refuse ``sanity`` / ``sanity_clips`` values that are not what they should be, before any work."""
    if not isinstance(enabled, bool):
        raise AudioInterpError(f"sanity: expected true or false, got {enabled!r}")
    if isinstance(n_clips, bool) or not isinstance(n_clips, int) or n_clips < 1:
        raise AudioInterpError(f"sanity_clips: expected a positive integer, got {n_clips!r}")


def check_clips(model: nn.Module, explainer: Explainer, feature, clips: ClipSet, *, n_clips: int, seed: int,
                batch_size: int, device: torch.device) -> list[SanityRow]:
    """:func:`randomisation_checks` on the first ``n_clips`` of ``clips`` (all when fewer), with a progress bar."""
    subset = clips.subset(slice(0, n_clips))
    spectrogram = feature(subset.waveforms.to(device))
    evidence = None if subset.evidence is None else evidence_mask(
        subset.evidence, feature, spectrogram.log_db.shape[-1]).to(device)
    steps = len(model.randomisation_cascade()) + 1
    with progress(total=steps, desc=f"sanity checks ({explainer!r}, {len(subset)} clips)", unit="step") as bar:
        return randomisation_checks(model, explainer, spectrogram.log_db.detach(), subset.clip_ids,
                                    n_classes=len(clips.class_names), seed=seed, batch_size=batch_size,
                                    evidence=evidence, progress=lambda step: bar.update(1))
