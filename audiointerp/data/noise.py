"""Contamination: mixing clips with a background noise to see how explanations move.

Clip and noise are each scaled to unit RMS, mixed as ``alpha * clip + (1 - alpha) * noise`` and
the mix is peak-normalised, so ``alpha`` alone sets the clip-to-noise RMS ratio,
``alpha / (1 - alpha)`` (0.6 -> 1.5, about 3.5 dB), whatever the recording levels.
"""

from __future__ import annotations

import logging
from numbers import Real
from pathlib import Path
from urllib.parse import unquote, urlparse

import torch
from hydra.utils import to_absolute_path
from torch import Tensor

from audiointerp.data import ClipSet
from audiointerp.data.audio import load_audio, peak_normalise
from audiointerp.data.download import fetch, verify_file
from audiointerp.errors import AudioInterpError
from audiointerp.hashing import file_sha256

log = logging.getLogger(__name__)

#: The three CC0 Freesound fragments, as committed to exile8/coursework24 (commit 5061df0).
NOISE_BASE_URL = "https://raw.githubusercontent.com/exile8/coursework24/5061df0/noises/"
# Below this RMS a signal counts as silent; it is left at zero rather than blown up to unit RMS.
SILENT_RMS = 1e-8


def check_alpha(alpha: float) -> float:
    """``alpha`` as a float, if it is a number in (0, 1]; AudioInterpError naming noise.alpha otherwise."""
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not 0.0 < float(alpha) <= 1.0:
        raise AudioInterpError(f"noise.alpha: expected a number in (0, 1] (the clip's share of the mix), got {alpha!r}")
    return float(alpha)


def _unit_rms(signals: Tensor) -> Tensor:
    """(..., samples) -> (..., samples), each signal scaled to RMS 1 (silent ones stay zero)."""
    rms = signals.pow(2).mean(dim=-1, keepdim=True).sqrt()
    return torch.where(rms > SILENT_RMS, signals / rms.clamp_min(SILENT_RMS), torch.zeros_like(signals))


def rms_weighted_mix(clips: Tensor, noise: Tensor, alpha: float) -> Tensor:
    """The mix before peak normalisation: ``alpha * clip / rms(clip) + (1 - alpha) * noise / rms(noise)``.

    The RMS of the clip part over that of the noise part is therefore ``alpha / (1 - alpha)``.

    Args:
        clips: (N, S).
        noise: (S,), the same noise for every clip, or (N, S), one per clip.
    Returns:
        (N, S).
    """
    alpha = check_alpha(alpha)
    if noise.shape[-1] != clips.shape[-1] or noise.dim() not in (1, 2) or (noise.dim() == 2 and noise.shape != clips.shape):
        raise ValueError(f"noise of shape {tuple(noise.shape)} does not fit clips of shape {tuple(clips.shape)}")
    return alpha * _unit_rms(clips) + (1.0 - alpha) * _unit_rms(noise.to(clips.dtype))


def mix(clips: Tensor, noise: Tensor, alpha: float) -> Tensor:
    """Clips contaminated with noise: :func:`rms_weighted_mix`, then each peak-normalised.

    ``alpha`` = 1 gives the peak-normalised clips exactly.

    Args:
        clips: (N, S).
        noise: (S,) or (N, S).
    Returns:
        (N, S), every row with largest absolute sample 1 (unless all zero).
    """
    if check_alpha(alpha) == 1.0:
        return peak_normalise(clips)
    return peak_normalise(rms_weighted_mix(clips, noise, alpha))


def loop_to_length(waveform: Tensor, n_samples: int) -> Tensor:
    """A recording fitted to ``n_samples`` without silence: repeated end to start while shorter,
    then cut, so a clip longer than the noise is noisy throughout (zero-padding would leave its end
    clean, and a mask there would look like it removed no noise).

    Args:
        waveform: (samples,) with samples >= 1.
    Returns:
        (n_samples,); sample i is ``waveform[i % samples]``.
    """
    if waveform.shape[-1] == 0:
        raise ValueError("cannot loop an empty recording")
    repeats = -(-n_samples // waveform.shape[-1])
    return waveform.repeat(max(repeats, 1))[:n_samples]


class _NoiseMixer:
    """Shared by the noises: check the clips' sample rate, build the noise, mix."""

    name: str

    def __init__(self, alpha: float, sample_rate: int) -> None:
        self.alpha = check_alpha(alpha)
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
            raise AudioInterpError(f"noise.sample_rate: expected a positive integer (Hz), got {sample_rate!r}")
        self.sample_rate = sample_rate

    def noise(self, n_samples: int) -> Tensor:
        """(n_samples,) float32 noise at ``sample_rate``."""
        raise NotImplementedError

    def check(self) -> None:
        """Fetch and read the noise now, so that a missing or unreadable file is reported before training."""
        self.noise(1)

    def identity(self) -> str | None:
        """The content of a noise the config names only by place (a file of one's own): its sha256."""
        return None

    def __call__(self, clips: ClipSet) -> ClipSet:
        """Every clip mixed with the noise (see :func:`mix`); ids, labels and evidence unchanged."""
        if clips.sample_rate != self.sample_rate:
            raise AudioInterpError(f"noise.sample_rate={self.sample_rate} but the clips are at {clips.sample_rate} Hz; "
                                   "expected the same rate (the default follows feature.sample_rate)")
        noise = self.noise(clips.waveforms.shape[-1])
        return ClipSet(
            waveforms=mix(clips.waveforms, noise, self.alpha),
            labels=clips.labels,
            clip_ids=list(clips.clip_ids),
            class_names=clips.class_names,
            sample_rate=clips.sample_rate,
            evidence=clips.evidence,
        )


class FileNoise(_NoiseMixer):
    """``noise=white|room|horse``: a recorded noise, fetched once and checked against its sha256.

    The whole recording is read and fitted to the clips' length by :func:`loop_to_length`: a
    recording shorter than the clips is repeated, a longer one cut, so every sample of a clip of
    any length gets noise.

    Args:
        name: what the noise is called in results ("white", "room", "horse").
        url: where the noise file is downloaded from; the file name is kept in ``cache_dir``.
        sha256: pinned hash of the downloaded file; a mismatch is an error.
        path: a noise file of your own (relative to the launch folder) used instead of the
            download; checked only against ``path_sha256``.
        path_sha256: expected hash of ``path``, or None for no check.
        alpha: the clip's share of the mix, in (0, 1].
        sample_rate: Hz of the clips (the noise is downmixed and resampled to it).
        cache_dir: where downloaded noise files are kept (relative to the launch folder).
    """

    def __init__(self, name: str, url: str, sha256: str | None, path: str | None = None,
                 path_sha256: str | None = None, alpha: float = 0.6, sample_rate: int = 32000,
                 cache_dir: str = "data/noises") -> None:
        super().__init__(alpha, sample_rate)
        self.name = name
        self.url = url
        self.sha256 = sha256
        self.path = path
        self.path_sha256 = path_sha256
        self.cache_dir = cache_dir
        self._waveform: Tensor | None = None

    def noise_file(self) -> Path:
        """The noise file on disk: ``path`` if given, else the download in ``cache_dir`` (fetched now
        if absent). Hashes are checked every time, so a file changed since is noticed."""
        if self.path is not None:
            path = Path(to_absolute_path(str(self.path)))
            if not path.is_file():
                raise AudioInterpError(f"noise.path={self.path}: no such file ({path}); expected a WAV or FLAC noise")
            return verify_file(path, sha256=self.path_sha256)
        filename = unquote(Path(urlparse(self.url).path).name)
        if not filename:
            raise AudioInterpError(f"noise.url={self.url}: expected a URL ending in the noise's file name")
        target = Path(to_absolute_path(str(self.cache_dir))) / filename
        return fetch(self.url, target, sha256=self.sha256, what=f"noise {self.name}")

    def identity(self) -> str | None:
        return None if self.path is None else file_sha256(self.noise_file())

    def noise(self, n_samples: int) -> Tensor:
        if self._waveform is None:
            path = self.noise_file()
            waveform = load_audio(path, self.sample_rate, None, peak_normalise=False)
            if waveform.shape[-1] == 0:
                raise AudioInterpError(f"{path}: the noise {self.name} has no samples; expected a recording")
            self._waveform = waveform
            log.info("noise %s: %s (%.2f s), alpha %.2f", self.name, path, waveform.shape[-1] / self.sample_rate,
                     self.alpha)
        return loop_to_length(self._waveform, n_samples)


class GeneratedWhiteNoise(_NoiseMixer):
    """``noise=white_gen``: Gaussian white noise generated from ``seed``, no file needed.

    The same noise is mixed into every clip, as with a recorded noise.
    """

    name = "white_gen"

    def __init__(self, alpha: float = 0.6, seed: int = 0, sample_rate: int = 32000) -> None:
        super().__init__(alpha, sample_rate)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise AudioInterpError(f"noise.seed: expected an integer, got {seed!r}")
        self.seed = seed

    def noise(self, n_samples: int) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        return torch.randn(n_samples, generator=generator, dtype=torch.float32)


class NoNoise:
    """``noise=none``: clips are explained as they are."""

    name = "none"

    def check(self) -> None:
        """Nothing to read."""

    def identity(self) -> None:
        return None

    def __call__(self, clips: ClipSet) -> ClipSet:
        return clips
