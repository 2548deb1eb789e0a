"""Captum explainers: Integrated Gradients, SmoothGrad and Occlusion.

"Silence" is the level masked-out bins are set to in evaluation (``mask.silence_level``, dB), so
the reference input of Integrated Gradients and the patch filler of Occlusion mean the same
thing as a removed bin does when the explanation is scored. ``None`` stands for each input's own
minimum, as in ``audiointerp.masks.apply_mask``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from captum.attr import IntegratedGradients as CaptumIntegratedGradients
from captum.attr import NoiseTunnel
from captum.attr import Occlusion as CaptumOcclusion
from captum.attr import Saliency as CaptumSaliency
from torch import Tensor, nn

from audiointerp.devices import as_float64
from audiointerp.errors import AudioInterpError, expect_int
from audiointerp.explainers.base import Explainer, content_seed
from audiointerp.masks import SILENCE_DB


def silence_reference(inputs: Tensor, silence_level: float | None) -> Tensor:
    """inputs (B, 1, F, T) -> (B, 1, F, T) filled with ``silence_level``, or each input's minimum."""
    if silence_level is None:
        return inputs.amin(dim=(1, 2, 3), keepdim=True).expand_as(inputs).contiguous()
    return torch.full_like(inputs, float(silence_level))


def completeness_error(delta: Tensor, change: Tensor) -> Tensor:
    """|sum A - (f(x) - f(baseline))| / |f(x) - f(baseline)|: Captum's (B,) convergence ``delta`` over
    the (B,) logit ``change``, in float64 (on the CPU for a device without it) -> (B,) float32 on the
    CPU; NaN for a clip whose logit does not change (it has nothing to complete)."""
    delta, change = as_float64(delta), as_float64(change)
    return (delta.abs() / change.abs()).where(change != 0, torch.full_like(change, float("nan"))).float().cpu()


def _gradient_ready(inputs: Tensor) -> Tensor:
    """A plain copy of ``inputs``: inference-mode tensors cannot enter an autograd graph."""
    return inputs.detach().clone()


class IntegratedGradients(Explainer):
    """Integrated Gradients of the target logit from a silent reference to the input.

    Completeness says a clip's attributions sum to f(x) - f(reference) (f: the target logit); the
    quadrature misses it by an error that falls with ``n_steps``. Each call records, per clip, that
    error relative to the logit's change, ``|sum A - (f(x) - f(reference))| / |f(x) - f(reference)|``
    (:meth:`clip_diagnostics`, the run's ``ig_completeness_error`` column), at the cost of two
    forwards (Captum's convergence delta).

    Args:
        silence_level: reference level in dB; ``None`` uses each input's minimum.
        n_steps: points of Captum's quadrature along the path.
        method: Captum's quadrature rule (``gausslegendre``, ``riemann_trapezoid``, ...).
        internal_batch_size: path points per forward pass; ``None`` evaluates all
            ``B * n_steps`` at once.
    """

    def __init__(self, silence_level: float | None = SILENCE_DB, n_steps: int = 32, method: str = "gausslegendre",
                 internal_batch_size: int | None = None):
        if n_steps < 1:
            raise AudioInterpError(f"explainer.n_steps must be >= 1, got {n_steps}")
        self.silence_level = silence_level
        self.n_steps = int(n_steps)
        self.method = method
        self.internal_batch_size = internal_batch_size
        self._completeness_error: Tensor | None = None  # (B,) of the last call

    def attribute(self, model: nn.Module, inputs: Tensor, target: Tensor) -> Tensor:
        inputs = _gradient_ready(inputs)
        reference = silence_reference(inputs, self.silence_level)
        target = target.to(inputs.device)
        attribution, delta = CaptumIntegratedGradients(model).attribute(
            inputs, baselines=reference, target=target, n_steps=self.n_steps, method=self.method,
            internal_batch_size=self.internal_batch_size, return_convergence_delta=True)
        with torch.no_grad():
            rows = torch.arange(len(inputs), device=inputs.device)
            change = model(inputs)[rows, target] - model(reference)[rows, target]  # (B,)
        self._completeness_error = completeness_error(delta, change)
        return attribution.detach()

    def clip_diagnostics(self) -> dict[str, Tensor]:
        """``{"ig_completeness_error": (B,)}`` of the last call (none before the first)."""
        return {} if self._completeness_error is None else {"ig_completeness_error": self._completeness_error}

    def __repr__(self) -> str:
        return f"IntegratedGradients(n_steps={self.n_steps}, silence_level={self.silence_level})"


class _ScaledInputModel(nn.Module):
    """model(z * scale): lets one NoiseTunnel call use a different noise level per example.

    Captum's NoiseTunnel takes one standard deviation per input tensor, not per example. Feeding
    z = x / scale (scale = each example's max - min) and noise of std ``noise_fraction`` on z
    puts noise of std ``noise_fraction * scale`` on x; d/dz = scale * d/dx, undone afterwards.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, scaled_inputs: Tensor, scale: Tensor) -> Tensor:
        """scaled_inputs (N, 1, F, T), scale (N, 1, 1, 1) -> logits (N, C)."""
        return self.model(scaled_inputs * scale)


class SmoothGrad(Explainer):
    """Mean signed input gradient of the target logit over noisy copies of the input.

    Args:
        noise_fraction: noise std as a fraction of each input's (max - min) dB range.
        n_samples: noisy copies per input.
        samples_per_batch: noisy copies per forward pass (Captum's ``nt_samples_batch_size``);
            ``None`` evaluates all ``B * n_samples`` at once.
        seed: with the batch's values, seeds the noise (:func:`content_seed`): the same batch of
            clips gets the same noise in every run.
    """

    def __init__(self, noise_fraction: float = 0.15, n_samples: int = 16, samples_per_batch: int | None = None,
                 seed: int = 0):
        if n_samples < 1:
            raise AudioInterpError(f"explainer.n_samples must be >= 1, got {n_samples}")
        if noise_fraction < 0:
            raise AudioInterpError(f"explainer.noise_fraction must be >= 0, got {noise_fraction}")
        self.noise_fraction = float(noise_fraction)
        self.n_samples = int(n_samples)
        self.samples_per_batch = samples_per_batch
        self.seed = expect_int("explainer.seed", seed, 0)

    def attribute(self, model: nn.Module, inputs: Tensor, target: Tensor) -> Tensor:
        inputs = _gradient_ready(inputs)
        value_range = inputs.amax(dim=(1, 2, 3), keepdim=True) - inputs.amin(dim=(1, 2, 3), keepdim=True)
        # A constant input has no range and gets no noise; the clamp only avoids dividing by 0.
        scale = value_range.clamp_min(torch.finfo(inputs.dtype).tiny)
        tunnel = NoiseTunnel(CaptumSaliency(_ScaledInputModel(model)))
        # Captum draws the noise from torch's global generator: seed a private copy of it for the call
        with torch.random.fork_rng(devices=[inputs.device] if inputs.device.type == "cuda" else []):
            torch.manual_seed(content_seed(self.seed, inputs))
            scaled_gradient = tunnel.attribute(
                inputs / scale, nt_type="smoothgrad", nt_samples=self.n_samples,
                nt_samples_batch_size=self.samples_per_batch, stdevs=self.noise_fraction,
                target=target.to(inputs.device), additional_forward_args=(scale,), abs=False)
        return (scaled_gradient / scale).detach()

    def __repr__(self) -> str:
        return f"SmoothGrad(noise_fraction={self.noise_fraction}, n_samples={self.n_samples})"


class Occlusion(Explainer):
    """Drop of the target logit when a patch is set to silence, averaged over covering patches.

    Args:
        patch: [frequency bins, frames] of the occluding patch.
        stride: [frequency bins, frames] between patch positions.
        silence_level: patch filler in dB; ``None`` uses each input's minimum.
        perturbations_per_eval: occluded copies per forward pass (per input).
    """

    needs_gradients = False  # forward passes only: explains a black box too

    def __init__(self, patch: Sequence[int] = (8, 20), stride: Sequence[int] = (4, 10),
                 silence_level: float | None = SILENCE_DB, perturbations_per_eval: int = 64):
        if len(patch) != 2 or len(stride) != 2 or min(*patch, *stride) < 1:
            raise AudioInterpError(f"explainer.patch and explainer.stride must be two positive ints "
                                   f"[frequency bins, frames], got patch={list(patch)}, stride={list(stride)}")
        self.patch = (int(patch[0]), int(patch[1]))
        self.stride = (int(stride[0]), int(stride[1]))
        self.silence_level = silence_level
        self.perturbations_per_eval = int(perturbations_per_eval)

    def attribute(self, model: nn.Module, inputs: Tensor, target: Tensor) -> Tensor:
        inputs = _gradient_ready(inputs)
        if inputs.shape[2] < self.patch[0] or inputs.shape[3] < self.patch[1]:
            raise AudioInterpError(f"occlusion patch {list(self.patch)} is larger than the input's (F, T) = "
                                   f"{tuple(inputs.shape[2:])}")
        with torch.no_grad():
            attribution = CaptumOcclusion(model).attribute(
                inputs, sliding_window_shapes=(1, *self.patch), strides=(1, *self.stride),
                baselines=silence_reference(inputs, self.silence_level), target=target.to(inputs.device),
                perturbations_per_eval=self.perturbations_per_eval)
        return attribution.detach()

    def __repr__(self) -> str:
        return f"Occlusion(patch={list(self.patch)}, stride={list(self.stride)}, silence_level={self.silence_level})"
