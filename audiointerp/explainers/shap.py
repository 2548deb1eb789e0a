"""SHAP explainers against a class-balanced background from the training split.

- :class:`DeepShap`: DeepSHAP, what ``shap``'s DeepExplainer computes: DeepLIFT multipliers of
  the clip against each background clip, averaged. The attributions of a clip sum to
  f(x) - E[f(background)], f the target logit.
- :class:`GradientShap`: ``shap``'s GradientExplainer (expected gradients) on the same background.

DeepShap runs its own DeepLIFT pass (:func:`_deeplift`) instead of shap's PyTorch DeepExplainer,
which was both slower and wrong on Cnn14:

1. Cost. For every clip shap runs one forward and one backward over a joint batch of 2K
   spectrograms (the clip repeated K times, then the K background clips), with a full backward
   hook on every module. But it keeps only the background half's gradients, and the rules need
   only the clip's activations from the other half. Here all clips of a call go forward once
   together, the background goes forward once per call (its graph kept for every clip of the
   call), each clip costs one backward over K rows, and only ReLUs and the max pool get rules:
   the other modules are affine in eval mode, where the plain gradient is DeepLIFT's multiplier.
2. ``nn.AdaptiveMaxPool1d`` (Cnn14's max over time) is not among shap's supported modules; shap
   warns and passes the plain gradient through it, which routes the background's share of the
   difference to the wrong frames, so the attributions no longer add up (on calibrated tiny
   Cnn14s the error ran from a fifth of the explained logit difference to more than all of
   it). It gets DeepLIFT's max rule here, the one shap applies to ``nn.MaxPool1d``.
3. shap's hooks store activations as ``nn.Parameter`` attributes that its clean-up misses inside
   Cnn14's ``ConvBlock``s (they showed up in ``state_dict()``), and its hooks stay on the model
   when a call raises. Here activations live only during a call, and the hooks (forward hooks
   only) are on the model only while the clips and the background go forward, removed in a
   ``finally``.

The multipliers are shap's, rule for rule (the background rows' gradients of its joint batch),
so the attributions equal its own (with the max rule added) to float rounding.

GradientShap explains only the target logit: the model is wrapped in :class:`TargetLogit`, a
one-output model whose class is set per clip, so shap differentiates one output instead of all C.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import shap
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiointerp.errors import AudioInterpError
from audiointerp.explainers.base import Explainer, content_seed, model_device
from audiointerp.models import PRECISIONS

#: Largest |sum of a clip's attributions - (f(x) - E[f(background)])| that passes the additivity
#: check (shap's tolerance, absolute, on the logit).
ADDITIVITY_TOLERANCE = 0.01

#: Leaf modules that are affine in their input in eval mode: their plain gradient is already the
#: DeepLIFT multiplier, so they need no rule.
_AFFINE_IN_EVAL = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.AvgPool1d, nn.AvgPool2d,
                   nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Dropout, nn.Identity, nn.Flatten)


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


# --- DeepLIFT -------------------------------------------------------------------------------

class _Explained:
    """The explained clips, as the rules' backward passes read them.

    ``activations`` holds, per rule module, what its ``record`` kept from the forward of all B
    clips of the call; ``clip`` is the row whose attributions the running backward computes.
    """

    def __init__(self) -> None:
        self.activations: dict[nn.Module, tuple[Tensor, ...]] = {}
        self.clip = 0

    def of(self, module: nn.Module) -> tuple[Tensor, ...]:
        """``module``'s recorded activations of the current clip, each with a batch axis of 1."""
        return tuple(values[self.clip:self.clip + 1] for values in self.activations[module])


class _ReLURescale(torch.autograd.Function):
    """A ReLU over the K background rows. Forward: its output, unchanged. Backward: DeepLIFT's
    rescale rule against the explained clip x, per element and row r:
    grad * (relu(x) - relu(r)) / (x - r), or the ReLU's own gradient at r where |x - r| < 1e-6
    (shap's ``nonlinear_1d`` on the background half of its joint batch)."""

    @staticmethod
    def record(module: nn.ReLU, inputs: Tensor, output: Tensor) -> tuple[Tensor, ...]:
        """What the backward needs of the explained clips: the input (B, ...)."""
        return (inputs,)

    @staticmethod
    def forward(ctx, inputs: Tensor, output: Tensor, module: nn.Module, explained: _Explained) -> Tensor:
        ctx.save_for_backward(inputs, output)  # (K, ...) each
        ctx.module, ctx.explained = module, explained
        return output

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        reference_in, reference_out = ctx.saved_tensors
        (clip_in,) = ctx.explained.of(ctx.module)  # (1, ...), broadcast over the K rows
        delta_in = clip_in - reference_in
        multiplier = (clip_in.clamp(min=0) - reference_out).div_(delta_in)
        # where the input barely moved the quotient is noise (or 0/0): the ReLU's gradient at r
        multiplier = torch.where(delta_in.abs_() < 1e-6, reference_out > 0, multiplier)
        return multiplier.mul_(grad_output), None, None, None


class _AdaptiveMaxPoolRule(torch.autograd.Function):
    """An ``nn.AdaptiveMaxPool1d`` over the K background rows (C, L) -> (C, L_out). Forward: its
    output, unchanged. Backward: DeepLIFT's max rule (shap's ``maxpool``) against the explained
    clip x. Per output, the rise y_x - y_r is split into (max(y_x, y_r) - y_r), routed to the
    clip's argmax, and (y_x - max(y_x, y_r)), routed to the background row's argmax; dividing by
    the input difference there gives multipliers whose products with it sum to y_x - y_r exactly.

    Both shares are weighted by the background row's incoming gradient; shap weights the clip's
    share by the clip rows' gradient of its joint batch. The two are equal unless a ReLU above
    fell back to its own gradient (|x - r| < 1e-6) with x and r on either side of zero.
    """

    @staticmethod
    def record(module: nn.AdaptiveMaxPool1d, inputs: Tensor, output: Tensor) -> tuple[Tensor, ...]:
        """What the backward needs of the explained clips: input (B, C, L), output and argmax (B, C, L_out)."""
        _, argmax = F.adaptive_max_pool1d(inputs, module.output_size, return_indices=True)
        return inputs, output, argmax

    @staticmethod
    def forward(ctx, inputs: Tensor, output: Tensor, module: nn.Module, explained: _Explained) -> Tensor:
        _, argmax = F.adaptive_max_pool1d(inputs, module.output_size, return_indices=True)
        ctx.save_for_backward(inputs, output, argmax)  # (K, C, L), (K, C, L_out), (K, C, L_out)
        ctx.module, ctx.explained = module, explained
        return output

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        reference_in, reference_out, reference_argmax = ctx.saved_tensors
        clip_in, clip_out, clip_argmax = ctx.explained.of(ctx.module)
        cross_max = torch.maximum(clip_out, reference_out)
        # scatter_add: adaptive windows may overlap, so two outputs can share an argmax.
        routed = torch.zeros_like(reference_in)
        routed.scatter_add_(2, clip_argmax.expand_as(reference_argmax), (cross_max - reference_out) * grad_output)
        routed.scatter_add_(2, reference_argmax, (clip_out - cross_max) * grad_output)
        delta_in = clip_in - reference_in
        return torch.where(delta_in.abs() < 1e-7, 0.0, routed / delta_in), None, None, None


#: The DeepLIFT rule of each module type that is not affine.
_RULES: dict[type[nn.Module], type[torch.autograd.Function]] = {
    nn.ReLU: _ReLURescale,
    nn.AdaptiveMaxPool1d: _AdaptiveMaxPoolRule,
}


def _rule_modules(model: nn.Module) -> dict[nn.Module, type[torch.autograd.Function]]:
    """The modules of ``model`` that have a rule, each with its rule."""
    return {module: rule for module in model.modules() for kind, rule in _RULES.items() if isinstance(module, kind)}


def _unsupported_modules(model: nn.Module) -> list[str]:
    """Type names of ``model``'s leaf modules that have no DeepLIFT rule and are not affine in eval mode."""
    return sorted({type(module).__name__ for module in model.modules()
                   if next(module.children(), None) is None
                   and not isinstance(module, (*_RULES, *_AFFINE_IN_EVAL))})


@contextmanager
def _forward_hooks(modules: Iterable[nn.Module],
                   hook: Callable[[nn.Module, tuple, Tensor], Tensor | None]) -> Iterator[None]:
    """``hook`` on each of ``modules`` inside the ``with`` block, removed however it ends."""
    handles = [module.register_forward_hook(hook) for module in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _deeplift(model: nn.Module, clips: Tensor, targets: list[int], background: Tensor,
              background_batch: int) -> tuple[Tensor, Tensor, Tensor]:
    """DeepSHAP of each clip's target logit against ``background``.

    clips (B, 1, F, T), one target class per clip, background (M, 1, F, T) ->
    attributions (B, 1, F, T), f(clip) (B,) and E[f(background)] (B,) of each clip's target logit.

    One forward of the B clips records what the rules need of them. Then, per chunk of at most
    ``background_batch`` background clips, one forward of the chunk with the rules in its graph,
    and per clip one backward of the target logit summed over the chunk: row k of the gradient is
    the multiplier of the clip against background clip k, so the attributions are
    mean_k gradient_k * (x - background_k).
    """
    rules = _rule_modules(model)
    explained = _Explained()

    def record(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        explained.activations[module] = tuple(value.detach() for value in rules[module].record(module, inputs[0], output))

    def apply_rule(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        return rules[module].apply(inputs[0], output.detach(), module, explained)

    rows = torch.arange(len(clips), device=clips.device)
    target_index = torch.tensor(targets, device=clips.device)
    # The clips go forward as the background does, as a pass differentiated by its input, so that a
    # classifier choosing its precision layout by that (Cnn14 under bf16: bn0 and blocks 1-3 float32)
    # runs both sides of every difference in the same one; the graph is dropped at once.
    with _forward_hooks(rules, record), torch.enable_grad():
        clip_logit = model(clips.detach().requires_grad_())[rows, target_index].detach()
    attributions = torch.zeros_like(clips)
    background_logit = torch.zeros_like(clip_logit)
    for start in range(0, len(background), background_batch):
        reference = background[start:start + background_batch].detach().requires_grad_()  # (K, 1, F, T)
        with _forward_hooks(rules, apply_rule), torch.enable_grad():
            logits = model(reference)  # (K, C)
        for row, target in enumerate(targets):
            explained.clip = row
            (gradient,) = torch.autograd.grad(logits[:, target].sum(), reference, retain_graph=row < len(targets) - 1)
            attributions[row] += (gradient * (clips[row] - reference.detach())).sum(0)
        background_logit += logits.detach()[:, target_index].sum(0)
    return attributions / len(background), clip_logit, background_logit / len(background)


# --- Explainers -------------------------------------------------------------------------------

class _BackgroundShap(Explainer):
    """Shared by both SHAP explainers: the background and the checks before explaining."""

    needs_training_data = True

    def __init__(self, per_class: int = 2, seed: int = 0):
        if per_class < 1:
            raise AudioInterpError(f"explainer.per_class must be >= 1, got {per_class}")
        self.per_class = int(per_class)
        self.seed = int(seed)
        self.background: Tensor | None = None  # (M, 1, F, T) on the model's device
        self._model: nn.Module | None = None

    def prepare(self, model: nn.Module, train_inputs: Tensor, train_labels: Tensor) -> None:
        model.eval()  # the multipliers assume inference behaviour (BN statistics, no dropout)
        device = model_device(model)
        self.background = class_balanced_background(train_inputs, train_labels, self.per_class, self.seed).to(device)
        self._model = model

    def _clips(self, model: nn.Module, inputs: Tensor) -> Tensor:
        """inputs (B, 1, F, T) -> the same, detached, on the background's device; raises unless
        ``model`` is the prepared one, in eval mode."""
        if self._model is not model:
            raise AudioInterpError(f"{self!r}: call prepare(model, train_inputs, train_labels) with this model first")
        if model.training:
            raise AudioInterpError(f"{self!r}: the model must be in eval mode")
        return inputs.detach().to(self.background.device)


class DeepShap(_BackgroundShap):
    """DeepSHAP (shap's DeepExplainer) for the target logit against a class-balanced training background.

    DeepLIFT's attribution is a mean over background clips, so the background is run in chunks
    of at most ``background_batch`` clips and the chunks' sums are added: the result is the same
    as with one chunk, but the graph kept for the backward passes holds a chunk, not the whole
    background: for the full-width Cnn14 on 5 s clips it takes about 0.14 GB per background clip
    (measured on a CPU), some 14 GB for the whole 100-clip ESC-50 background in one chunk. All
    clips of a call share each chunk's forward, so the cost per clip falls with the number of
    clips per call.

    Args:
        per_class: background clips drawn per class from the training split.
        seed: seed of that draw.
        check_additivity: raise if a clip's attributions do not sum to f(x) - E[f(background)]
            (absolute tolerance ``ADDITIVITY_TOLERANCE`` on the logit), i.e. the model has an
            operation the DeepLIFT rules do not cover.
        background_batch: background clips per forward (null: all in one).
    """

    def __init__(self, per_class: int = 2, seed: int = 0, check_additivity: bool = True,
                 background_batch: int | None = 25):
        super().__init__(per_class, seed)
        if background_batch is not None and background_batch < 1:
            raise AudioInterpError(f"explainer.background_batch must be >= 1 or null, got {background_batch}")
        self.check_additivity = bool(check_additivity)
        self.background_batch = background_batch

    def check(self, model: nn.Module) -> None:
        super().check(model)
        if isinstance(getattr(model, "network", model), torch.jit.ScriptModule):
            raise AudioInterpError("explainer=shap: DeepSHAP rewrites the gradients of the model's ReLU and max-pool "
                                   "modules, which a TorchScript model does not allow; use explainer=shap_gradient "
                                   "(expected gradients), or give the model's class as model=module")
        refusal = getattr(model, "deeplift_refusal", None)  # the classifier says why its network has no exact rules
        if refusal:
            raise AudioInterpError(f"explainer=shap: {refusal}; use explainer=shap_gradient (expected gradients)")
        self._refuse_unchecked_precision(model)

    def _refuse_unchecked_precision(self, model: nn.Module) -> None:
        """Raise if the model's passes run at a precision whose rounding the additivity check cannot pass.

        DeepLIFT's sums telescope exactly only where each layer's output difference is its input
        difference times the multiplier; a bf16 pass rounds every feature map and the logits to 8
        bits, so the sums miss f(x) - E[f(background)] by more than the absolute 0.01 tolerance on
        any logit of ordinary size, even with both sides run in the same layout."""
        dtype = getattr(model, "autocast_dtype", None)
        if dtype is not None and self.check_additivity:
            name = next((key for key, value in PRECISIONS.items() if value == dtype), str(dtype))
            raise AudioInterpError(
                f"explainer=shap: under precision={name} DeepSHAP's attributions cannot add up to f(x) - "
                f"E[f(background)] within {ADDITIVITY_TOLERANCE} (the model's passes round to {name}); use "
                f"precision=fp32, or explainer.check_additivity=false to explain under {name} unchecked")

    def prepare(self, model: nn.Module, train_inputs: Tensor, train_labels: Tensor) -> None:
        super().prepare(model, train_inputs, train_labels)
        unsupported = _unsupported_modules(model)
        if unsupported:
            warnings.warn(f"{self!r}: no DeepLIFT rule for {', '.join(unsupported)}; they get plain gradients, "
                          f"exact only if they are affine", stacklevel=2)

    def attribute(self, model: nn.Module, inputs: Tensor, target: Tensor) -> Tensor:
        clips = self._clips(model, inputs)
        self._refuse_unchecked_precision(model)
        attributions, clip_logit, background_logit = _deeplift(
            model, clips, [int(label) for label in target.tolist()], self.background,
            self.background_batch or len(self.background))
        if self.check_additivity:
            error = (attributions.sum(dim=(1, 2, 3)) - (clip_logit - background_logit)).abs()
            if not bool(error.max() < ADDITIVITY_TOLERANCE):  # NaN sums fail too
                worst = int(error.argmax())
                raise AudioInterpError(
                    f"{self!r}: the attributions of clip {worst} of the batch sum to "
                    f"{float(attributions[worst].sum()):.4g}, not f(x) - E[f(background)] = "
                    f"{float(clip_logit[worst] - background_logit[worst]):.4g}: the model has an operation "
                    f"the DeepLIFT rules do not cover (set explainer.check_additivity=false to go on anyway)")
        return attributions.to(dtype=inputs.dtype, device=inputs.device)

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
        self._target_logit: TargetLogit | None = None
        self._gradient: shap.GradientExplainer | None = None

    def prepare(self, model: nn.Module, train_inputs: Tensor, train_labels: Tensor) -> None:
        super().prepare(model, train_inputs, train_labels)
        self._target_logit = TargetLogit(model)
        self._build()

    def model_changed(self, model: nn.Module) -> None:
        if self._model is model:
            self._build()

    def _build(self) -> None:
        # its constructor runs the background through the model only to count the outputs
        with torch.no_grad():
            self._gradient = shap.GradientExplainer(self._target_logit, self.background, batch_size=self.batch_size,
                                                    local_smoothing=self.local_smoothing)

    def attribute(self, model: nn.Module, inputs: Tensor, target: Tensor) -> Tensor:
        clips = self._clips(model, inputs)
        attributions = []
        # one shap call per clip lets each clip have its own target class
        for clip, label in zip(clips, target.tolist()):
            self._target_logit.target = int(label)
            attributions.append(torch.from_numpy(np.asarray(self._explain_clip(clip[None]))).reshape(1, *clip.shape))
        return torch.cat(attributions).to(dtype=inputs.dtype, device=inputs.device)

    def _explain_clip(self, clip: Tensor) -> np.ndarray:
        """clip (1, 1, F, T) on the background's device -> shap values (1, 1, F, T)."""
        # shap draws its samples from NumPy's global generator after seeding it; leave it as found.
        # Its local smoothing noise comes from torch's global generator, which training consumes:
        # a private copy, seeded from the seed and the clip, makes it the same in every run.
        global_state = np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[clip.device] if clip.device.type == "cuda" else []):
                torch.manual_seed(content_seed(self.seed, clip))
                return self._gradient.shap_values(clip, nsamples=self.n_samples, rseed=self.seed)
        finally:
            np.random.set_state(global_state)

    def __repr__(self) -> str:
        return f"GradientShap(per_class={self.per_class}, n_samples={self.n_samples})"
