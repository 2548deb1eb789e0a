"""Audio I/O: read a WAV/FLAC file as a mono clip of fixed length at the pipeline's sample rate."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile
import soxr
import torch
from torch import Tensor

from audiointerp.errors import AudioInterpError


def peak_normalise(waveforms: Tensor) -> Tensor:
    """Scale each signal so that its largest absolute sample is 1; all-zero signals stay zero.

    Args:
        waveforms: (..., samples); every signal along the last axis is scaled on its own.
    Returns:
        (..., samples), same dtype, a new tensor.
    """
    peaks = waveforms.abs().amax(dim=-1, keepdim=True)
    # Dividing by 1 where the peak is 0 keeps silent clips silent instead of producing NaNs.
    return waveforms / torch.where(peaks > 0, peaks, torch.ones_like(peaks))


# load_audio's flag has the same name as the function (both are the public spelling).
_peak_normalise = peak_normalise


def fit_length(waveforms: Tensor, n_samples: int) -> Tensor:
    """Cut the last axis to ``n_samples`` or pad it at the end with zeros.

    Args:
        waveforms: (..., samples).
    Returns:
        (..., n_samples).
    """
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    length = waveforms.shape[-1]
    if length >= n_samples:
        return waveforms[..., :n_samples]
    return torch.nn.functional.pad(waveforms, (0, n_samples - length))


def read_mono(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """The file's samples downmixed to mono (mean over channels) and its sample rate.

    Returns:
        ``(samples, sample_rate)`` with samples a float32 array of shape (frames,).
    """
    path = Path(path)
    if not path.is_file():
        raise AudioInterpError(f"{path}: no such audio file")
    try:
        samples, file_rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError, TypeError) as error:
        reason = " ".join(str(error).split())
        raise AudioInterpError(f"{path}: cannot read audio ({reason}); expected a WAV or FLAC file") from None
    return samples.mean(axis=1, dtype=np.float32), int(file_rate)


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """(frames,) float32 at ``rate_in`` -> (about frames * rate_out / rate_in,) float32 at ``rate_out``."""
    if rate_in == rate_out:
        return samples
    return soxr.resample(samples, rate_in, rate_out, quality="HQ").astype(np.float32, copy=False)


def load_audio(path: str | os.PathLike, sample_rate: int, duration_s: float | None,
               peak_normalise: bool) -> Tensor:
    """Read a WAV or FLAC file as one mono clip.

    Channels are averaged, the signal is resampled to ``sample_rate`` if the file's rate differs,
    padded with zeros or cut to ``duration_s`` (kept whole when None) and, if asked, divided by
    its largest absolute sample.

    Returns:
        (samples,) float32 with samples = round(duration_s * sample_rate).
    Raises:
        AudioInterpError: the file is missing or not readable audio.
    """
    samples, file_rate = read_mono(path)
    waveform = torch.from_numpy(resample(samples, file_rate, sample_rate))
    if duration_s is not None:
        waveform = fit_length(waveform, int(round(duration_s * sample_rate)))
    if peak_normalise:
        waveform = _peak_normalise(waveform)
    return waveform.contiguous()
