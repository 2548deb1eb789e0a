"""LIME as the ``lime`` package's image explainer computes it, with the perturbations made on the model's device.

Each clip's dB spectrogram is min-max normalised to [0, 1], made RGB and segmented exactly as
``lime_image.LimeImageExplainer.explain_instance`` does (quickshift, kernel_size=4, max_dist=200,
ratio=0.2, its seed drawn from the sampler). The rest reproduces the package without its per-sample
NumPy images: the same binary samples (one draw of ``num_samples * n_segments`` coin flips, the
first row all ones), a switched-off segment replaced by its mean (the package's default), the
target class's softmax probability, the cosine-distance kernel sqrt(exp(-d^2 / 0.25^2)) and
``Ridge(alpha=1)`` weighted by it. Only the perturbed spectrograms are built differently: as one
(B, 1, F, T) tensor per batch on the model's device, each bin taken from the clip or from its
segment's mean, instead of a float64 RGB copy of the image per sample masked segment by segment.
The model is given the same float32 values bit for bit, so the attributions are the package's up
to the rounding of its ridge fit (tests/test_explainers_more.py compares the two).

The forwards are forward-only passes like the scoring of masks, so they run in the same layout:
the model channels-last while a batch of clips is explained (``channels_last``, the run's option;
``audiointerp.models.channels_last``), and at the run's ``precision``. The segmentation, which does
not touch the model, is :meth:`Lime.segment`, so that it can be timed apart.
"""

from __future__ import annotations

import numpy as np
import torch
from lime.wrappers.scikit_image import SegmentationAlgorithm
from skimage.color import gray2rgb
from sklearn.linear_model import Ridge
from sklearn.metrics import pairwise_distances
from sklearn.utils import check_random_state
from torch import Tensor, nn

from audiointerp import models
from audiointerp.errors import AudioInterpError
from audiointerp.explainers.base import Explainer, model_device

# lime_image.LimeImageExplainer's defaults: kernel width of its exponential kernel, ridge penalty.
KERNEL_WIDTH = 0.25
RIDGE_ALPHA = 1.0


def target_probabilities(model: nn.Module, on: Tensor, off: Tensor, segment_of_bin: Tensor, kept: Tensor,
                         label: int, batch_size: int) -> Tensor:
    """The softmax probability of class ``label`` for each perturbed spectrogram -> (S,) float32 on the CPU.

    ``on`` and ``off`` (F, T): the clip and its segments' means, in dB; ``segment_of_bin`` (F, T):
    each bin's segment; ``kept`` (S, K) bool: which of the K segments sample s keeps. All on the
    model's device, where the (B, 1, F, T) perturbed spectrograms are built, ``batch_size`` per
    forward; the probabilities leave it as float32 (a device such as Apple's MPS has no float64).
    """
    probabilities = []
    with torch.inference_mode():
        for start in range(0, len(kept), batch_size):
            keep_bin = kept[start:start + batch_size][:, segment_of_bin]  # (B, F, T)
            perturbed = torch.where(keep_bin, on, off).unsqueeze(1)
            probabilities.append(torch.softmax(model(perturbed), dim=1)[:, label].float())
    return torch.cat(probabilities).cpu()


class Lime(Explainer):
    """Per-clip LIME; the attribution is each segment's ridge weight painted over the segment.

    Args:
        num_samples: perturbed spectrograms per clip (the package's ``num_samples``).
        batch_size: perturbed spectrograms per model forward: the package's 10, as the config (on a
            2-core CPU larger batches were slower); a GPU wants more.
        random_state: seed of the sampler (and, through it, of quickshift's ties), as the package's
            ``random_state``; each clip starts from it, so a clip's attribution does not depend on
            its batch. ``None`` draws from NumPy's global generator, as the package does.
        channels_last: run the forwards with the model's weights channels-last, as the run's
            ``channels_last`` does for scoring (the config passes that option on).
    """

    needs_gradients = False  # forward passes only: explains a black box too

    def __init__(self, num_samples: int = 1000, batch_size: int = 10, random_state: int | None = 0,
                 channels_last: bool = True):
        if num_samples < 2:
            raise AudioInterpError(f"explainer.num_samples must be >= 2, got {num_samples}")
        if batch_size < 1:
            raise AudioInterpError(f"explainer.batch_size must be >= 1, got {batch_size}")
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.random_state = random_state
        self.channels_last = bool(channels_last)

    def attribute(self, model: nn.Module, inputs: Tensor, target: Tensor) -> Tensor:
        """inputs (B, 1, F, T) dB, target (B,) -> (B, 1, F, T) segment weights for each clip's target."""
        device = model_device(model)
        with models.channels_last(model, self.channels_last):
            attributions = [self._explain_one(model, clip[0], int(label), device)
                            for clip, label in zip(inputs, target.tolist())]
        return torch.stack(attributions)[:, None].to(dtype=inputs.dtype, device=inputs.device)

    def segment(self, log_db: Tensor) -> tuple[np.ndarray, np.ndarray, float, float, np.random.RandomState]:
        """log_db (F, T) in dB -> the min-max scaled image (F, T) float64, its quickshift segments
        (F, T) labelled 0..K-1, the scale's low and span, and the sampler after quickshift's seed was
        drawn from it (the package's order of draws from one generator)."""
        log_db = log_db.detach().cpu().double().numpy()
        low, high = float(log_db.min()), float(log_db.max())
        # A flat clip has no range; any positive span makes the round trip exact (image = 0).
        span = high - low if high > low else 1.0
        image = (log_db - low) / span
        random_state = check_random_state(self.random_state)
        segmentation = SegmentationAlgorithm("quickshift", kernel_size=4, max_dist=200, ratio=0.2,
                                             random_seed=random_state.randint(0, high=1000))
        return image, segmentation(gray2rgb(image)), low, span, random_state

    def _explain_one(self, model: nn.Module, log_db: Tensor, label: int, device: torch.device) -> Tensor:
        """log_db (F, T) in dB -> (F, T) float64 segment weights for class ``label``, on the CPU."""
        image, segments, low, span, random_state = self.segment(log_db)
        # quickshift labels its segments 0..K-1, so segment k is the samples' column k.
        n_segments = int(segments.max()) + 1
        samples = random_state.randint(0, 2, self.num_samples * n_segments).reshape(self.num_samples, n_segments)
        samples[0, :] = 1

        # The package's own reductions and arithmetic (a segment's mean by np.mean, then
        # image * span + low in float64, cast to float32), so that the model sees bit-identical
        # spectrograms; a bincount sum would differ in the last bits.
        segment_mean = np.array([image[segments == k].mean() for k in range(n_segments)])
        on = torch.from_numpy(image * span + low).to(device=device, dtype=torch.float32)
        off = torch.from_numpy(segment_mean[segments] * span + low).to(device=device, dtype=torch.float32)
        segment_of_bin = torch.from_numpy(segments).to(device)
        kept = torch.from_numpy(samples.astype(bool)).to(device)

        target_probability = target_probabilities(model, on, off, segment_of_bin, kept, label,
                                                  self.batch_size).numpy().astype(np.float64)

        distances = pairwise_distances(samples, samples[:1], metric="cosine").ravel()
        kernel = np.sqrt(np.exp(-(distances ** 2) / KERNEL_WIDTH ** 2))
        # With num_features above the segment count the package's "auto" feature selection keeps
        # every segment (it only orders them), so the ridge model is fitted on all of them.
        ridge = Ridge(alpha=RIDGE_ALPHA, fit_intercept=True).fit(samples, target_probability, sample_weight=kernel)
        return torch.from_numpy(ridge.coef_[segments])

    def __repr__(self) -> str:
        return f"Lime(num_samples={self.num_samples}, batch_size={self.batch_size}, channels_last={self.channels_last})"
