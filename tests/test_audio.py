"""Audio I/O on real files: the shared 32 kHz ESC-50 FLACs, 44.1 kHz WAV samples and a stereo noise."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from audiointerp.data.audio import fit_length, load_audio, peak_normalise
from audiointerp.errors import AudioInterpError

# A dog bark in fold 1 of the shared copy (32 kHz FLAC, 5 s).
DOG_CLIP = "1-100032-A-0.flac"


@pytest.fixture
def flac_clip(esc50_root: Path) -> Path:
    return esc50_root / "audio" / DOG_CLIP


def band_energy(signal: np.ndarray, sample_rate: int, low_hz: float, high_hz: float) -> float:
    """Mean power per second of ``signal`` between low_hz and high_hz (rate-independent scale)."""
    spectrum = np.abs(np.fft.rfft(signal)) ** 2
    frequencies = np.fft.rfftfreq(signal.shape[0], 1.0 / sample_rate)
    return float(spectrum[(frequencies >= low_hz) & (frequencies < high_hz)].sum() / signal.shape[0] ** 2)


def test_flac_at_its_own_rate_is_read_unchanged(flac_clip):
    expected, rate = soundfile.read(flac_clip, dtype="float32")
    assert rate == 32000
    clip = load_audio(flac_clip, 32000, 5.0, peak_normalise=False)
    assert clip.shape == (160000,) and clip.dtype == torch.float32
    np.testing.assert_array_equal(clip.numpy(), expected)


def test_flac_resampled_to_16k_keeps_the_content_below_8k(flac_clip):
    original = load_audio(flac_clip, 32000, 5.0, peak_normalise=False).numpy()
    resampled = load_audio(flac_clip, 16000, 5.0, peak_normalise=False).numpy()
    assert resampled.shape == (80000,)
    for low, high in [(100, 1000), (1000, 4000), (4000, 7000)]:
        assert band_energy(resampled, 16000, low, high) == pytest.approx(band_energy(original, 32000, low, high), rel=0.05)


def test_peak_normalisation_of_a_real_clip(flac_clip):
    raw = load_audio(flac_clip, 32000, 5.0, peak_normalise=False)
    normalised = load_audio(flac_clip, 32000, 5.0, peak_normalise=True)
    assert raw.abs().max() < 1.0
    assert normalised.abs().max().item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(normalised, raw / raw.abs().max())


def test_stereo_wav_is_downmixed_by_the_channel_mean(shared_data):
    horse = shared_data / "noises" / "149024__foxen10__horse_whinny.wav"
    stereo, rate = soundfile.read(horse, dtype="float32")
    assert stereo.ndim == 2 and stereo.shape[1] == 2 and rate == 44100
    mono = load_audio(horse, 44100, 5.0, peak_normalise=False)
    assert mono.dim() == 1
    np.testing.assert_allclose(mono.numpy(), stereo.mean(axis=1), atol=1e-7)


def test_44k_wav_is_resampled_to_the_requested_length(sample_wavs):
    clip = load_audio(sample_wavs[0], 32000, 5.0, peak_normalise=True)
    assert clip.shape == (160000,)
    assert clip.abs().max().item() == pytest.approx(1.0, abs=1e-6)


def test_duration_pads_with_zeros_or_cuts(flac_clip):
    full = load_audio(flac_clip, 32000, None, peak_normalise=False)
    assert full.shape == (160000,)
    longer = load_audio(flac_clip, 32000, 6.0, peak_normalise=False)
    assert longer.shape == (192000,)
    torch.testing.assert_close(longer[:160000], full)
    assert not longer[160000:].any()
    shorter = load_audio(flac_clip, 32000, 2.0, peak_normalise=False)
    torch.testing.assert_close(shorter, full[:64000])


def test_unreadable_and_missing_files_are_named(tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF this is not audio")
    with pytest.raises(AudioInterpError, match=re.escape(str(broken))) as error:
        load_audio(broken, 32000, 5.0, peak_normalise=True)
    assert "\n" not in str(error.value)
    with pytest.raises(AudioInterpError, match=re.escape(str(tmp_path / "absent.flac"))):
        load_audio(tmp_path / "absent.flac", 32000, 5.0, peak_normalise=True)


def test_peak_normalise_is_per_row_and_keeps_silence(flac_clip):
    clip = load_audio(flac_clip, 32000, 5.0, peak_normalise=False)
    batch = torch.stack([clip, 0.25 * clip, torch.zeros_like(clip)])
    normalised = peak_normalise(batch)
    assert normalised.shape == batch.shape
    torch.testing.assert_close(normalised.abs().amax(dim=-1), torch.tensor([1.0, 1.0, 0.0]))
    torch.testing.assert_close(normalised[0], normalised[1])
    assert torch.isfinite(normalised).all()


def test_fit_length_on_a_batch():
    batch = torch.arange(12, dtype=torch.float32).reshape(2, 6)
    torch.testing.assert_close(fit_length(batch, 4), batch[:, :4])
    padded = fit_length(batch, 8)
    assert padded.shape == (2, 8) and not padded[:, 6:].any()
    torch.testing.assert_close(padded[:, :6], batch)
