"""What a run needs of a classifier: the written contract every model meets, and its generic parts.

The contract (:class:`Classifier`):

- ``forward(inputs)``: inputs (B, 1, F, T) float32, the run's feature in dB (``feature=mel``:
  64 x 501, ``feature=stft``: 257 x 313), -> (B, C) float32 logits. Explainers, masks and
  metrics only ever see this spectrogram; a classifier that reads audio is brought to it by
  :class:`audiointerp.models.waveform.WaveformClassifier`, which inverts the spectrogram to audio
  inside its forward.
- ``input_kind``: ``"spectrogram"`` or ``"waveform"`` (what the wrapped network reads).
- ``network``: the module whose sub-module names the options use (``explainer.layer``,
  ``explainer.layers``): the model itself for Cnn14, the wrapped module for a user's classifier.
- ``set_precision(dtype)``: later passes autocast to ``dtype`` (None: float32); logits stay float32.
- ``layer_outputs(inputs, names)``: one forward, the logits and the outputs of the named modules
  (forward hooks here; a TorchScript model reads them from its graph).
- ``as_map(name, output, inputs)``: module ``name``'s output as a (B, C, f, t) map on the grid of
  ``inputs`` (what Grad-CAM weighs and L-MAC listens to): the output itself here; a transformer puts
  its patch tokens back on the patch grid (``audiointerp.models.ast``). Linear, so it maps the
  output's gradient alike.
- ``gradcam_layer()``, ``listened_layers(inputs)``, ``randomisation_cascade()``: the automatic
  choices of Grad-CAM's layer, L-MAC's listened layers and the sanity checks' randomisation order,
  used when the option is not set; Cnn14 names its own.
- ``weights_included``: True when the weights come with the model (a TorchScript file), so a run never
  trains it.
- ``channels_last_useful``: False where the channels-last layout means nothing (a transformer):
  ``channels_last=true`` then leaves the model as it is.
- ``deeplift_refusal``: None, or why DeepSHAP's rules cannot explain the network exactly
  (``explainer=shap`` is then refused with it).

Any ``nn.Module`` mapping (B, 1, F, T) to (B, C) logits meets it once wrapped by
:func:`audiointerp.models.as_classifier`.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from audiointerp.errors import AudioInterpError
from audiointerp.hashing import file_sha256

#: What a classifier's network reads (``model.input``).
INPUT_KINDS: tuple[str, ...] = ("spectrogram", "waveform")
#: How many of a network's finest-to-coarsest grids L-MAC listens to when ``explainer.layers`` is
#: null: the deepest four, as the published decoder listens to Cnn14's conv blocks 3-6.
LISTENED_GRIDS = 4


def module_kind(module: nn.Module) -> str:
    """The class name of ``module``, also for a TorchScript module (which keeps it as ``original_name``)."""
    return getattr(module, "original_name", None) or type(module).__name__


def _has_matrix_weight(module: nn.Module) -> bool:
    weight = dict(module.named_parameters(recurse=False)).get("weight")
    return weight is not None and weight.dim() >= 2


class Classifier(nn.Module):
    """The contract of every classifier a run explains (the module docstring lists it).

    Subclasses implement :meth:`logits` (the network's own pass); :meth:`forward` adds the
    precision. The defaults of the automatic layer choices read the network's modules.
    """

    input_kind: str = "spectrogram"
    #: The weights come with the model (nothing to train); see the module docstring.
    weights_included: bool = False
    #: Whether the channels-last memory format means anything for the network; see the module docstring.
    channels_last_useful: bool = True
    #: Why DeepSHAP cannot explain the network (None: it can); see the module docstring.
    deeplift_refusal: str | None = None

    def __init__(self) -> None:
        super().__init__()
        #: What :meth:`forward` autocasts to (``audiointerp.models.PRECISIONS``); None = float32.
        self.autocast_dtype: torch.dtype | None = None

    @property
    def network(self) -> nn.Module:
        """The module whose sub-module names the layer options use."""
        return self

    def set_precision(self, autocast_dtype: torch.dtype | None) -> None:
        """Run every later pass (forward, and the backward that mirrors it) under autocast to
        ``autocast_dtype``, or in float32 for None; logits come back float32 either way."""
        self.autocast_dtype = autocast_dtype

    def logits(self, inputs: Tensor) -> Tensor:
        """inputs (B, 1, F, T) dB -> (B, C) logits, at the network's own precision."""
        raise NotImplementedError

    def forward(self, inputs: Tensor) -> Tensor:
        """inputs (B, 1, F, T) dB -> (B, C) float32 logits."""
        if self.autocast_dtype is None:
            return self.logits(inputs).float()
        with torch.autocast(inputs.device.type, dtype=self.autocast_dtype):
            return self.logits(inputs).float()

    # --- layers by name ---------------------------------------------------------------------

    def submodule(self, name: str, option: str) -> nn.Module:
        """The network's module ``name``, or an AudioInterpError naming ``option``."""
        modules = dict(self.network.named_modules())  # get_submodule is not there for TorchScript
        if name in modules and name:
            return modules[name]
        known = [n for n in modules if n][-3:]
        raise AudioInterpError(f"{option}: the model ({module_kind(self.network)}) has no module {name!r}; "
                               f"expected a name from its named_modules(), such as {', '.join(known)}")

    def layer_outputs(self, inputs: Tensor, names: Sequence[str]) -> tuple[Tensor, list[Tensor]]:
        """One forward of (B, 1, F, T) ``inputs``: its (B, C) logits and the outputs of the
        network's modules ``names``, in that order (the first output of a module called twice)."""
        modules = [self.submodule(name, "layer") for name in names]
        captured: dict[int, Tensor] = {}

        def keeper(position: int):
            def keep(_module: nn.Module, _args, output) -> None:
                captured.setdefault(position, output[0] if isinstance(output, (tuple, list)) else output)
            return keep

        handles = [module.register_forward_hook(keeper(i)) for i, module in enumerate(modules)]
        try:
            logits = self(inputs)
        finally:
            for handle in handles:
                handle.remove()
        missing = [names[i] for i in range(len(names)) if i not in captured]
        if missing:
            raise AudioInterpError(f"layer: module {missing[0]!r} is not called by the model's forward")
        return logits, [captured[i] for i in range(len(names))]

    def as_map(self, name: str, output: Tensor, inputs: Tensor) -> Tensor:
        """Module ``name``'s ``output`` (as :meth:`layer_outputs` returned it, for (B, 1, F, T)
        ``inputs``) as a (B, C, f, t) map: here the output itself. Must be linear (a rearrangement):
        Grad-CAM maps the output's gradient with it too."""
        return output

    # --- automatic choices ------------------------------------------------------------------

    def gradcam_layer(self) -> str:
        """Grad-CAM's default layer: the network's last 2-D convolution (in definition order)."""
        convolutions = [name for name, module in self.network.named_modules()
                        if name and module_kind(module) == "Conv2d"]
        if not convolutions:
            raise AudioInterpError(f"explainer.layer: the model ({module_kind(self.network)}) has no Conv2d to "
                                   "choose by default; set explainer.layer to a module whose output is (B, C, f, t)")
        return convolutions[-1]

    def listened_layers(self, inputs: Tensor) -> list[str]:
        """L-MAC's default layers: for each of the network's (f, t) grids the last module that
        outputs a (B, C, f, t) map on it, of the deepest :data:`LISTENED_GRIDS` grids, shallow to
        deep. ``inputs`` (B, 1, F, T) are run once to see the shapes."""
        names = [name for name, _ in self.network.named_modules() if name]
        with torch.no_grad():
            _, outputs = self.layer_outputs(inputs, names)
        last_on_grid: dict[tuple[int, int], str] = {}
        for name, output in zip(names, outputs):
            if (isinstance(output, Tensor) and output.dim() == 4 and output.shape[0] == len(inputs)
                    and output.shape[-2:].numel() > 1):  # a pooled 1 x 1 map says nothing of where
                last_on_grid.pop(tuple(output.shape[-2:]), None)  # a later module on a grid seen before
                last_on_grid[tuple(output.shape[-2:])] = name
        if not last_on_grid:
            raise AudioInterpError(f"explainer.layers: no module of the model ({module_kind(self.network)}) outputs "
                                   "a (B, C, f, t) map; set explainer.layers to modules that do")
        return list(last_on_grid.values())[-LISTENED_GRIDS:]

    def randomisation_cascade(self) -> list[tuple[str, list[nn.Module]]]:
        """The sanity checks' steps, from the output back: each module of the network that owns a
        weight matrix (convolutions, linear layers), last defined first."""
        steps = [(name, [module]) for name, module in self.network.named_modules()
                 if name and _has_matrix_weight(module)]
        if not steps:
            raise AudioInterpError(f"sanity: the model ({module_kind(self.network)}) has no module with a weight "
                                   "matrix to randomise")
        return steps[::-1]

    @contextlib.contextmanager
    def listening(self, spectrogram) -> Iterator[None]:
        """The clips' analysis (phase) while their spectrograms and copies of them are classified:
        needed only by a classifier that inverts to audio; a no-op here."""
        yield

    def classify_audio(self, audio: Tensor, feature) -> Tensor:
        """(B, samples) audio at the feature's rate -> (B, C) float32 logits, as the model hears it:
        here the feature of the audio."""
        return self(feature(audio).log_db.float())

    def source_sha256(self) -> str | None:
        """The content of the code (or file) that defines the network, where the package's own code
        version does not cover it (a user's class, a TorchScript file); None for the package's models.
        Part of the model cache key and the run's identity, so editing it retrains and re-runs."""
        return None


class ModuleClassifier(Classifier):
    """A user's ``nn.Module`` on (B, 1, F, T) dB spectrograms -> (B, C) logits, as a :class:`Classifier`.

    Its state dict is the network's own (no prefix), so ``model.checkpoint`` files are the
    user's ``state_dict()`` and a run's ``model.pt`` loads back into the user's class.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.wrapped = network

    @property
    def network(self) -> nn.Module:
        return self.wrapped

    def logits(self, inputs: Tensor) -> Tensor:
        return self.wrapped(inputs)

    def state_dict(self, *args, **kwargs):
        return self.wrapped.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.wrapped.load_state_dict(state_dict, strict=strict, assign=assign)

    def source_sha256(self) -> str | None:
        if type(self.wrapped).__module__.split(".")[0] == "audiointerp":
            return None
        try:
            return file_sha256(inspect.getsourcefile(type(self.wrapped)))
        except (TypeError, OSError):  # a class defined where no file holds it (an interactive session)
            return None

    def __repr__(self) -> str:
        return f"ModuleClassifier({module_kind(self.wrapped)})"
