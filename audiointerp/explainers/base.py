"""The one interface every explainer implements."""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor, nn

from audiointerp.errors import AudioInterpError


def content_seed(seed: int, values: Tensor) -> int:
    """A 63-bit seed from ``seed`` and the bytes of ``values``: random draws made from it depend on
    what is explained, never on the global generator (which training consumes, so it differs between
    a model trained in the run and one from the cache) nor on what was explained before (a resumed
    run starts mid-way)."""
    digest = hashlib.sha256(str(seed).encode() + values.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return int.from_bytes(digest.digest()[:8], "little") >> 1


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters live (the CPU for a model without any)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


class Explainer:
    """``attribute(model, inputs, target) -> attribution`` shaped like ``inputs``, like Captum's.

    Subclasses that need data beyond the clip (a SHAP background, say) set
    ``needs_training_data`` and override :meth:`prepare`, called once per run before the first clip;
    those that also choose among what they learn (``lmac``'s best epoch) set ``needs_validation_data``
    and get the validation split's inputs and labels after the training split's.
    Reference explainers that read the ground truth (``oracle``) set ``needs_evidence``; they are
    then called with ``evidence=`` the (B, 1, F, T) bool region of each clip's class event.
    Explainers that only run the classifier forward (``lime``, ``occlusion``, ``random``, ``oracle``)
    clear ``needs_gradients``; the others differentiate it, which a black box does not allow.
    """

    needs_training_data: bool = False
    needs_validation_data: bool = False
    needs_evidence: bool = False
    needs_gradients: bool = True

    def check(self, model: nn.Module) -> None:
        """Raise AudioInterpError if the explainer's settings do not fit ``model``; called before training.

        Here: an explainer that differentiates the classifier (``needs_gradients``) is refused for a
        black box whose network says ``differentiable = False`` (``model=birdnet``); one that runs
        the model on other clips (``needs_training_data``: a background, a decoder's training) is
        refused for a classifier of audio, which hears a spectrogram only with its own clip's phase
        (``audiointerp.models.waveform``)."""
        network = getattr(model, "network", model)
        if self.needs_gradients and not getattr(network, "differentiable", True):
            raise AudioInterpError(f"explainer={type(self).__name__}: differentiates the classifier, but {network!r} is "
                                   "a black box without gradients; use lime, occlusion or random")
        if self.needs_training_data and getattr(model, "input_kind", "spectrogram") == "waveform":
            raise AudioInterpError(f"explainer={type(self).__name__}: runs the classifier on training clips, whose "
                                   "phase a waveform classifier's inverse does not have; use saliency, gradcam, "
                                   "integrated_gradients, smoothgrad, lime, occlusion or random")

    def prepare(self, model: nn.Module, train_inputs: Tensor, train_labels: Tensor) -> None:
        """Called once with the training split's (N, 1, F, T) inputs and (N,) labels."""

    def model_changed(self, model: nn.Module) -> None:
        """``model``'s weights were changed in place (the sanity checks randomise and restore them):
        recompute anything :meth:`prepare` derived from them."""

    def attribute(self, model: nn.Module, inputs: Tensor, target: Tensor) -> Tensor:
        """inputs (B, 1, F, T), target (B,) class indices -> attribution (B, 1, F, T)."""
        raise NotImplementedError

    def clip_diagnostics(self) -> dict[str, Tensor]:
        """Per-clip checks of the last :meth:`attribute` call, ``{column: (B,) float}``, that a run
        writes beside its scores (``clip_scores.csv``); none by default. Integrated Gradients
        reports how far its attributions miss completeness (``ig_completeness_error``)."""
        return {}

    def __repr__(self) -> str:
        return type(self).__name__
