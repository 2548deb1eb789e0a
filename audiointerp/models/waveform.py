"""``model.input=waveform``: a classifier of audio, explained on the feature's grid through the feature's inverse.

Explainers, masks and metrics work on the (B, 1, F, T) dB spectrogram of the run's feature. For a
network that reads audio (B, samples), :class:`WaveformClassifier` turns that spectrogram into audio
inside its differentiable forward, with each clip's own phase (``feature.inverse``), and classifies
the audio. So every explainer, mask and metric works unchanged, and what the network scores is
exactly the listenable audio a mask gives.

Gradients through the inverse: ``feature=stft`` inverts exactly (dB -> magnitude, times the phase,
inverse STFT); ``feature=mel`` inverts by its ``inversion`` (``nnls`` by default: multiplicative
updates warm-started from the clip's STFT power), a differentiable approximation, so gradients
are those of that approximation.

The phase is the clip's: a forward needs the analysis of the clips it classifies
(:meth:`WaveformClassifier.listening`), and rows are matched to clips one to one, or all to one
clip. A run explains a waveform classifier one clip per batch for that reason
(``audiointerp.pipeline.clips_per_batch``). Explainers that run the classifier on other clips
(SHAP's background, L-MAC's training) have no phase for them and are refused, as are the runner's
training and the sanity checks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from torch import Tensor, nn

from audiointerp.errors import AudioInterpError
from audiointerp.models.base import Classifier


class WaveformClassifier(Classifier):
    """A classifier of (B, samples) audio at ``feature.sample_rate``, as a spectrogram :class:`Classifier`.

    Args:
        inner: the network as a Classifier of audio (its ``forward`` takes (B, samples)).
        feature: the run's feature, whose inverse turns spectrograms into audio.
        sample_rate: the rate the network expects (``model.sample_rate``); must be the feature's.
    """

    input_kind = "waveform"

    def __init__(self, inner: Classifier, feature, sample_rate: int | None = None) -> None:
        super().__init__()
        if sample_rate is not None and int(sample_rate) != feature.sample_rate:
            raise AudioInterpError(f"model.sample_rate={sample_rate}: the feature's audio is at {feature.sample_rate} Hz; "
                                   f"expected the same rate (set feature.sample_rate={sample_rate})")
        self.inner = inner
        self.__dict__["feature"] = feature  # not a submodule: its buffers are the feature's, not the model's
        self._analysis = None

    @property
    def network(self) -> nn.Module:
        return self.inner.network

    @property
    def weights_included(self) -> bool:
        return self.inner.weights_included

    @property
    def channels_last_useful(self) -> bool:
        return self.inner.channels_last_useful

    @property
    def deeplift_refusal(self) -> str | None:
        return self.inner.deeplift_refusal

    def set_precision(self, autocast_dtype) -> None:
        super().set_precision(autocast_dtype)
        self.inner.set_precision(autocast_dtype)

    def state_dict(self, *args, **kwargs):
        return self.inner.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.inner.load_state_dict(state_dict, strict=strict, assign=assign)

    @contextlib.contextmanager
    def listening(self, spectrogram) -> Iterator[None]:
        """Classify inside the block with the phase of ``spectrogram`` (the analysis of B clips)."""
        previous, self._analysis = self._analysis, spectrogram
        try:
            yield
        finally:
            self._analysis = previous

    def audio(self, inputs: Tensor) -> Tensor:
        """(M, 1, F, T) dB -> (M, samples) audio, row m with clip m's phase (or the one clip's)."""
        analysis = self._analysis
        if analysis is None:
            raise AudioInterpError("a waveform classifier classifies spectrograms only with their clips' phase "
                                   "(WaveformClassifier.listening)")
        clips = len(analysis.log_db)
        if clips == 1 and len(inputs) != 1:
            analysis = analysis.expand(len(inputs))
        elif clips != len(inputs):
            raise AudioInterpError(f"a waveform classifier got {len(inputs)} spectrograms for the phase of {clips} "
                                   "clips; expected one per clip, or any number of one clip's")
        return self.feature.inverse(inputs, analysis)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.inner(self.audio(inputs))

    def layer_outputs(self, inputs: Tensor, names: Sequence[str]) -> tuple[Tensor, list[Tensor]]:
        return self.inner.layer_outputs(self.audio(inputs), names)

    def as_map(self, name: str, output: Tensor, inputs: Tensor) -> Tensor:
        """The network's own reading of its layer's output as a map (``inputs`` are the spectrograms)."""
        return self.inner.as_map(name, output, inputs)

    def gradcam_layer(self) -> str:
        return self.inner.gradcam_layer()

    def listened_layers(self, inputs: Tensor) -> list[str]:
        """The network's own choice where it makes one; else the default, run on the audio."""
        if type(self.inner).listened_layers is not Classifier.listened_layers:
            return self.inner.listened_layers(inputs)
        return super().listened_layers(inputs)

    def randomisation_cascade(self):
        return self.inner.randomisation_cascade()

    def source_sha256(self) -> str | None:
        return self.inner.source_sha256()

    def classify_audio(self, audio: Tensor, feature) -> Tensor:
        """(B, samples) -> (B, C): the network hears the audio itself."""
        return self.inner(audio)

    def __repr__(self) -> str:
        return f"WaveformClassifier({self.inner!r})"
