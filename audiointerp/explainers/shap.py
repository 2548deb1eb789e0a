"""SHAP explainers against a class-balanced background from the training split.

- :class:`DeepShap`: ``shap``'s DeepExplainer (DeepLIFT multipliers averaged over the
  background). The attributions of a clip sum to f(x) - E[f(background)], f the target logit.
- :class:`GradientShap`: ``shap``'s GradientExplainer (expected gradients) on the same background.

Only the target logit is explained: the model is wrapped in :class:`TargetLogit`, a one-output
model whose class is set per clip, so shap differentiates one output instead of all C.

Three things the stock PyTorch DeepExplainer gets wrong on Cnn14, fixed in :class:`_CnnDeepExplainer`:

1. ``nn.AdaptiveMaxPool1d`` (Cnn14's max over time) is not among shap's supported modules; shap
   warns and passes the plain gradient through it, which routes the background's share of the
   difference to the wrong frames, so the attributions no longer add up (on calibrated tiny
   Cnn14s the error ran from a fifth of the explained logit difference to more than all of
   it). It gets DeepLIFT's max rule here, the one shap applies to ``nn.MaxPool1d``.
2. The forward hooks store each ReLU's input and output as ``nn.Parameter`` attributes, and the
   clean-up only descends into ``nn.Sequential``-style containers. Inside Cnn14's ``ConvBlock``s
   they stay behind after every call: registered as model parameters (so they show up in
   ``state_dict()`` and ``parameters()``) and holding the last call's activations for the whole
   background. Here every module is cleaned.
3. Hooks and stored activations are removed only when ``shap_values`` succeeds; after an
   exception (out of memory, say) a second call would stack a second set of hooks.
"""

from __future__ import annotations

import numpy as np
import shap
import torch
import torch.nn.functional as F
from shap.explainers._deep.deep_pytorch import PyTorchDeep
from torch import Tensor, nn

from audiointerp.errors import AudioInterpError
from audiointerp.explainers.base import Explainer, model_device
from audiointerp.models.cnn14 import SpecAugment

#: Attributes the DeepLIFT forward hooks leave on modules (shap's and ours).
_INTERIM_ATTRIBUTES = ("x", "y", "_deeplift_io")


class TargetLogit(nn.Module):
    """(B, 1, F, T) -> (B, 1): the logit of class ``target`` (set before each explanation)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.target = 0

    def forward(self, inputs: Tensor) -> Tensor:
        return self.model(inputs)[:, self.target:self.target + 1]


def class_balanced_background(inputs: Tensor, labels: Tensor, per_class: int, seed: int) -> Tensor:
    """inputs (N, 1, F, T), labels (N,) -> (M, 1, F, T): ``per_class`` random clips of each class.

    A class with fewer clips contributes all of them. Clips keep their order in ``inputs``.
    """
    if per_class < 1:
        raise AudioInterpError(f"explainer.per_class must be >= 1, got {per_class}")
    if len(inputs) != len(labels) or len(inputs) == 0:
        raise AudioInterpError(f"SHAP background: need matching, non-empty inputs and labels, "
                               f"got {len(inputs)} inputs and {len(labels)} labels")
    generator = np.random.default_rng(seed)
    labels_np = labels.cpu().numpy()
    chosen = [generator.choice(np.flatnonzero(labels_np == label), size=min(per_class, int((labels_np == label).sum())),
                               replace=False)
              for label in np.unique(labels_np)]
    return inputs[torch.from_numpy(np.sort(np.concatenate(chosen)))]


def _keep_pool_io(module: nn.Module, inputs: tuple, output: Tensor) -> None:
    module._deeplift_io = (inputs[0].detach(), output.detach())


def _adaptive_max_pool_deeplift(module: nn.AdaptiveMaxPool1d, grad_input: tuple, grad_output: tuple) -> tuple:
    """DeepLIFT's max rule (shap's ``maxpool``) for ``nn.AdaptiveMaxPool1d``.

    The joint batch is [explained copies; background] (2n rows). Per output, the rise
    y - y_ref is split into (max(y, y_ref) - y_ref), routed to the explained row's argmax, and
    (y - max(y, y_ref)), routed to the background row's argmax; dividing by the input
    difference there gives multipliers whose products with it sum to y - y_ref exactly.
    """
    inputs, outputs = module._deeplift_io  # (2n, C, L), (2n, C, L_out)
    half = len(inputs) // 2
    _, argmax = F.adaptive_max_pool1d(inputs, module.output_size, return_indices=True)
    explained, reference = outputs[:half], outputs[half:]
    cross_max = torch.maximum(explained, reference)
    shares = torch.cat([cross_max - reference, explained - cross_max]) * grad_output[0]
    # scatter_add: adaptive windows may overlap, so two outputs can share an argmax.
    routed = torch.zeros_like(inputs).scatter_add_(2, argmax, shares)
    input_delta = inputs[:half] - inputs[half:]
    multipliers = torch.where(input_delta.abs() < 1e-7, torch.zeros_like(input_delta),
                              (routed[:half] + routed[half:]) / input_delta)
    return (multipliers.repeat(2, 1, 1), *grad_input[1:])


class _CnnDeepExplainer(PyTorchDeep):
    """shap's PyTorch DeepExplainer plus the max-over-time rule and a complete clean-up."""

    framework = "pytorch"  # read by shap's additivity error message

    def __init__(self, model: nn.Module, data: Tensor):
        super().__init__(model, data)
        self._live_handles: list = []

    def add_handles(self, model: nn.Module, forward_handle, backward_handle) -> list:
        if isinstance(model, nn.AdaptiveMaxPool1d):
            handles = [model.register_forward_hook(_keep_pool_io),
                       model.register_full_backward_hook(_adaptive_max_pool_deeplift)]
        elif isinstance(model, SpecAugment) and not model.training:
            handles = []  # the identity in eval mode: nothing to rewrite, and no "unrecognized" warning
        else:
            handles = super().add_handles(model, forward_handle, backward_handle)
        self._live_handles.extend(handles)
        return handles

    def remove_attributes(self, model: nn.Module) -> None:
        for module in model.modules():
            for name in _INTERIM_ATTRIBUTES:
                if name in module._parameters or name in module.__dict__:
                    delattr(module, name)

    def shap_values(self, X, *args, **kwargs):
        """shap's, but hooks and stored activations also go when it raises (out of memory, say):
        shap removes them only on success, and a second set of hooks would apply every rule twice."""
        try:
            return super().shap_values(X, *args, **kwargs)
        finally:
            for handle in self._live_handles:
                handle.remove()  # a no-op for the ones shap already removed
            self._live_handles.clear()
            self.remove_attributes(self.model)


class _BackgroundShap(Explainer):
    """Shared by both SHAP explainers: the background, the one-output wrapper, the clip loop."""

    needs_training_data = True

    def __init__(self, per_class: int = 2, seed: int = 0):
        if per_class < 1:
            raise AudioInterpError(f"explainer.per_class must be >= 1, got {per_class}")
        self.per_class = int(per_class)
        self.seed = int(seed)
        self.background: Tensor | None = None  # (M, 1, F, T) on the model's device
        self._target_logit: TargetLogit | None = None

    def prepare(self, model: nn.Module, train_inputs: Tensor, train_labels: Tensor) -> None:
        model.eval()  # shap's multipliers assume inference behaviour (BN statistics, no dropout)
        device = model_device(model)
        self.background = class_balanced_background(train_inputs, train_labels, self.per_class, self.seed).to(device)
        self._target_logit = TargetLogit(model)
        self._build(self._target_logit, self.background)

    def model_changed(self, model: nn.Module) -> None:
        # E[f(background)] and shap's wrapped model belong to the old weights
        if self._target_logit is not None and self._target_logit.model is model:
            self._build(self._target_logit, self.background)

    def _build(self, target_logit: TargetLogit, background: Tensor) -> None:
        raise NotImplementedError

    def _explain_clip(self, clip: Tensor) -> np.ndarray:
        """clip (1, 1, F, T) on the background's device -> shap values (1, 1, F, T)."""
        raise NotImplementedError

    def attribute(self, model: nn.Module, inputs: Tensor, target: Tensor) -> Tensor:
        if self._target_logit is None or self._target_logit.model is not model:
            raise AudioInterpError(f"{self!r}: call prepare(model, train_inputs, train_labels) with this model first")
        if model.training:
            raise AudioInterpError(f"{self!r}: the model must be in eval mode")
        clips = inputs.detach().to(self.background.device)
        attributions = []
        # shap explains one clip at a time anyway (each against the whole background), and one
        # call per clip lets each clip have its own target class.
        for clip, label in zip(clips, target.tolist()):
            self._target_logit.target = int(label)
            attributions.append(torch.from_numpy(np.asarray(self._explain_clip(clip[None]))).reshape(1, *clip.shape))
        return torch.cat(attributions).to(dtype=inputs.dtype, device=inputs.device)


class DeepShap(_BackgroundShap):
    """shap's DeepExplainer for the target logit against a class-balanced training background.

    DeepLIFT's attribution is a mean over background clips, so the background is explained in
    chunks of at most ``background_batch`` clips and the chunks' attributions are averaged,
    weighted by chunk size. The result is the same as in one call (and still sums to
    f(x) - E[f(background)]), but shap's joint batch of 2 x chunk spectrograms bounds the memory:
    the full-width Cnn14 with the whole 100-clip ESC-50 background in one call needs more than
    24 GB on a CPU.

    Args:
        per_class: background clips drawn per class from the training split.
        seed: seed of that draw.
        check_additivity: let shap assert that each chunk's attributions sum to
            f(x) - E[f(chunk)] (absolute tolerance 0.01 on the logit).
        background_batch: background clips per shap call (null: all in one call).
    """

    def __init__(self, per_class: int = 2, seed: int = 0, check_additivity: bool = True,
                 background_batch: int | None = 25):
        super().__init__(per_class, seed)
        if background_batch is not None and background_batch < 1:
            raise AudioInterpError(f"explainer.background_batch must be >= 1 or null, got {background_batch}")
        self.check_additivity = bool(check_additivity)
        self.background_batch = background_batch
        # one (explainer, E[f(chunk)] per class (C,), chunk's share of the background) per chunk
        self._chunks: list[tuple[_CnnDeepExplainer, np.ndarray, float]] = []
        self.background_logit_mean: np.ndarray | None = None  # (C,) E[f(background)] per class

    def _build(self, target_logit: TargetLogit, background: Tensor) -> None:
        with torch.no_grad():
            logits = target_logit.model(background).cpu().numpy()  # (M, C)
        self.background_logit_mean = logits.mean(0)
        size = self.background_batch or len(background)
        self._chunks = [(_CnnDeepExplainer(target_logit, background[start:start + size]),
                         logits[start:start + size].mean(0), min(size, len(background) - start) / len(background))
                        for start in range(0, len(background), size)]

    def _explain_clip(self, clip: Tensor) -> np.ndarray:
        target = self._target_logit.target
        total = 0.0
        for deep, chunk_logit_mean, share in self._chunks:
            # the additivity check compares with the expected value of the explained output
            deep.expected_value = chunk_logit_mean[target:target + 1]
            total = total + share * np.asarray(deep.shap_values(clip, check_additivity=self.check_additivity))
        return total

    def __repr__(self) -> str:
        return f"DeepShap(per_class={self.per_class}, background_batch={self.background_batch})"


class GradientShap(_BackgroundShap):
    """shap's GradientExplainer (expected gradients) for the target logit.

    Args:
        per_class, seed: the background, as for :class:`DeepShap`; ``seed`` also seeds the
            sampling of (background clip, path point) pairs, the same for every clip.
        n_samples: gradient evaluations per clip (shap's ``nsamples``).
        batch_size: evaluations per forward pass.
        local_smoothing: std of noise added to the clip at each evaluation (0 = none).
    """

    def __init__(self, per_class: int = 2, seed: int = 0, n_samples: int = 200, batch_size: int = 50,
                 local_smoothing: float = 0.0):
        super().__init__(per_class, seed)
        if n_samples < 1 or batch_size < 1:
            raise AudioInterpError(f"explainer.n_samples and batch_size must be >= 1, got {n_samples}, {batch_size}")
        self.n_samples = int(n_samples)
        self.batch_size = int(batch_size)
        self.local_smoothing = float(local_smoothing)
        self._gradient: shap.GradientExplainer | None = None

    def _build(self, target_logit: TargetLogit, background: Tensor) -> None:
        # its constructor runs the background through the model only to count the outputs
        with torch.no_grad():
            self._gradient = shap.GradientExplainer(target_logit, background, batch_size=self.batch_size,
                                                    local_smoothing=self.local_smoothing)

    def _explain_clip(self, clip: Tensor) -> np.ndarray:
        # shap draws its samples from NumPy's global generator after seeding it; leave it as found
        global_state = np.random.get_state()
        try:
            return self._gradient.shap_values(clip, nsamples=self.n_samples, rseed=self.seed)
        finally:
            np.random.set_state(global_state)

    def __repr__(self) -> str:
        return f"GradientShap(per_class={self.per_class}, n_samples={self.n_samples})"
