"""LIME (the ``lime`` package's image explainer) on the spectrogram as a gray image.

Each clip's dB spectrogram is min-max normalised to [0, 1] and handed to
``lime_image.LimeImageExplainer`` as an (F, T) image; the package makes it RGB, segments it with
quickshift, switches segments off (each replaced by its mean, the package default) and fits a
weighted ridge model on the target class's probability. Perturbed images come back to the
classifier function, which undoes the normalisation so the model sees dB again.
"""

from __future__ import annotations

import numpy as np
import torch
from lime import lime_image
from torch import Tensor, nn

from audiointerp.errors import AudioInterpError
from audiointerp.explainers.base import Explainer, model_device


class Lime(Explainer):
    """Per-clip LIME; the attribution is each segment's ridge weight painted over the segment.

    Args:
        num_samples: perturbed images per clip (the package's ``num_samples``).
        batch_size: perturbed images per classifier call, i.e. per model forward; the package's
            default of 10 leaves a GPU mostly idle.
        random_state: seed of the package's sampler (and, through it, of quickshift's ties);
            each clip starts from it, so a clip's attribution does not depend on its batch.
    """

    def __init__(self, num_samples: int = 1000, batch_size: int = 256, random_state: int | None = 0):
        if num_samples < 2:
            raise AudioInterpError(f"explainer.num_samples must be >= 2, got {num_samples}")
        if batch_size < 1:
            raise AudioInterpError(f"explainer.batch_size must be >= 1, got {batch_size}")
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.random_state = random_state

    def attribute(self, model: nn.Module, inputs: Tensor, target: Tensor) -> Tensor:
        device = model_device(model)
        attributions = [self._explain_one(model, clip[0].detach().cpu().double().numpy(), int(label), device)
                        for clip, label in zip(inputs, target.tolist())]
        return torch.from_numpy(np.stack(attributions)[:, None]).to(dtype=inputs.dtype, device=inputs.device)

    def _explain_one(self, model: nn.Module, log_db: np.ndarray, label: int, device: torch.device) -> np.ndarray:
        """log_db (F, T) in dB -> (F, T) segment weights for class ``label``."""
        low, high = float(log_db.min()), float(log_db.max())
        # A flat clip has no range; any positive span makes the round trip exact (image = 0).
        span = high - low if high > low else 1.0
        image = (log_db - low) / span

        def probabilities(images: np.ndarray) -> np.ndarray:
            """images (N, F, T, 3) in [0, 1], gray -> softmax (N, C) of the model on the dB values."""
            log_dbs = torch.from_numpy(images[..., 0] * span + low).to(device=device, dtype=torch.float32)
            with torch.inference_mode():
                return torch.softmax(model(log_dbs.unsqueeze(1)), dim=1).double().cpu().numpy()

        explainer = lime_image.LimeImageExplainer(random_state=self.random_state)
        explanation = explainer.explain_instance(
            image, probabilities, labels=(label,), top_labels=None, num_features=np.iinfo(np.int32).max,
            num_samples=self.num_samples, batch_size=self.batch_size)
        segment_weight = np.zeros(int(explanation.segments.max()) + 1)
        for segment, weight in explanation.local_exp[label]:
            segment_weight[segment] = weight
        return segment_weight[explanation.segments]

    def __repr__(self) -> str:
        return f"Lime(num_samples={self.num_samples}, batch_size={self.batch_size})"
