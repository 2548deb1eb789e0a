"""LogMel / LogStft on the six real ESC-50 clips: shapes, agreement with librosa, batching,
and how well a (masked) spectrogram inverts back to audio."""

from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from audiointerp.errors import AudioInterpError
from audiointerp.features import MEL_INVERSIONS, LogMel, LogStft, Spectrogram

REPO_ROOT = Path(__file__).resolve().parents[1]
SILENCE_DB = -100.0


def _load(wav_paths: list[Path], sample_rate: int) -> torch.Tensor:
    """(6, 5 * sample_rate) float32 mono clips, resampled with soxr_hq."""
    clips = []
    for path in wav_paths:
        audio, file_rate = sf.read(path, dtype="float32", always_2d=True)
        clips.append(librosa.resample(audio.mean(axis=1), orig_sr=file_rate, target_sr=sample_rate, res_type="soxr_hq"))
    return torch.from_numpy(np.stack(clips))


@pytest.fixture(scope="module")
def clips_32k(sample_wavs: list[Path]) -> torch.Tensor:
    return _load(sample_wavs, 32000)


@pytest.fixture(scope="module")
def clips_16k(sample_wavs: list[Path]) -> torch.Tensor:
    return _load(sample_wavs, 16000)


def _keep_top(log_db: torch.Tensor, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep each clip's loudest ``fraction`` of bins, set the rest to -100 dB; also return the kept mask."""
    threshold = torch.quantile(log_db.flatten(1), 1 - fraction, dim=1).view(-1, 1, 1, 1)
    kept = log_db >= threshold
    return torch.where(kept, log_db, torch.full_like(log_db, SILENCE_DB)), kept


# --- shapes and values --------------------------------------------------------------------


def test_log_mel_shapes_on_5s_clips(clips_32k: torch.Tensor) -> None:
    feature = LogMel()
    assert clips_32k.shape == (6, 160000)
    spectrogram = feature(clips_32k)
    assert spectrogram.log_db.shape == (6, 1, 64, 501)
    assert spectrogram.log_db.dtype == torch.float32
    assert spectrogram.phase.shape == (6, 513, 501) and spectrogram.phase.dtype == torch.complex64
    assert spectrogram.power.shape == (6, 513, 501) and spectrogram.power.dtype == torch.float32
    assert spectrogram.length == 160000
    assert torch.isfinite(spectrogram.log_db).all() and torch.isfinite(spectrogram.power).all()
    assert feature.n_bins == 64 and feature.n_frames(160000) == 501
    # Phasors have unit modulus so that inversion controls the magnitude alone.
    torch.testing.assert_close(spectrogram.phase.abs(), torch.ones(6, 513, 501), atol=1e-5, rtol=0)


def test_log_stft_shapes_on_5s_clips(clips_16k: torch.Tensor) -> None:
    feature = LogStft()
    assert clips_16k.shape == (6, 80000)
    spectrogram = feature(clips_16k)
    assert spectrogram.log_db.shape == (6, 1, 257, 313)
    assert spectrogram.log_db.dtype == torch.float32
    assert spectrogram.phase.shape == (6, 257, 313) and spectrogram.phase.dtype == torch.complex64
    assert spectrogram.power.shape == (6, 257, 313)
    assert torch.isfinite(spectrogram.log_db).all()
    assert feature.n_bins == 257 and feature.n_frames(80000) == 313
    # For the STFT feature the dB map is the power itself in dB.
    torch.testing.assert_close(spectrogram.log_db[:, 0], 10 * torch.log10(spectrogram.power + 1e-10))


def test_log_mel_matches_librosa(clips_32k: torch.Tensor) -> None:
    clip = clips_32k[2].numpy()
    reference_power = librosa.feature.melspectrogram(
        y=clip, sr=32000, n_fft=1024, hop_length=320, win_length=1024, window="hann", center=True,
        pad_mode="reflect", power=2.0, n_mels=64, fmin=50.0, fmax=14000.0,
    )
    reference_db = 10 * np.log10(reference_power + 1e-10)
    ours = LogMel()(clips_32k[2:3]).log_db[0, 0].numpy()
    audible = reference_db > -60
    np.testing.assert_allclose(ours[audible], reference_db[audible], atol=0.01)


def test_log_db_is_unclipped(clips_32k: torch.Tensor) -> None:
    # Half a second of digital silence must reach the -100 dB floor, far below any top_db clip.
    waveform = clips_32k[:1].clone()
    waveform[:, 64000:80000] = 0
    log_db = LogMel()(waveform).log_db
    assert float(log_db.min()) == pytest.approx(SILENCE_DB, abs=1e-3)
    assert float(log_db.max()) - float(log_db.min()) > 100


@pytest.mark.parametrize("feature_class, rate_fixture", [(LogMel, "clips_32k"), (LogStft, "clips_16k")])
def test_batched_forward_equals_per_clip(feature_class, rate_fixture, request) -> None:
    clips = request.getfixturevalue(rate_fixture)
    feature = feature_class()
    batched = feature(clips)
    for index in range(len(clips)):
        single = feature(clips[index : index + 1])
        torch.testing.assert_close(batched.log_db[index : index + 1], single.log_db, atol=1e-3, rtol=0)
        torch.testing.assert_close(batched.power[index : index + 1], single.power, atol=1e-4, rtol=1e-4)


def test_hydra_configs_instantiate_the_features() -> None:
    mel = instantiate(OmegaConf.load(REPO_ROOT / "conf" / "feature" / "mel.yaml"))
    stft = instantiate(OmegaConf.load(REPO_ROOT / "conf" / "feature" / "stft.yaml"))
    assert isinstance(mel, LogMel) and (mel.sample_rate, mel.n_bins, mel.hop_length, mel.n_fft) == (32000, 64, 320, 1024)
    assert isinstance(stft, LogStft) and (stft.sample_rate, stft.n_bins, stft.hop_length, stft.n_fft) == (16000, 257, 256, 512)


# --- axes ---------------------------------------------------------------------------------


def test_mel_bin_frequencies_are_filter_centres() -> None:
    feature = LogMel()
    frequencies = feature.bin_frequencies()
    assert frequencies.shape == (64,) and frequencies.dtype == torch.float32
    assert (frequencies.diff() > 0).all()
    assert 50.0 < float(frequencies[0]) < 200.0 and 12000.0 < float(frequencies[-1]) < 14000.0
    # Each filter's peak sits at its centre frequency (to within one STFT bin).
    linear_frequencies = np.arange(513) * 32000 / 1024
    peaks = linear_frequencies[feature.mel_filterbank.numpy().argmax(axis=1)]
    assert np.abs(peaks - frequencies.numpy()).max() <= 32000 / 1024


def test_stft_bin_frequencies_are_linear() -> None:
    frequencies = LogStft().bin_frequencies()
    assert frequencies.shape == (257,)
    assert float(frequencies[0]) == 0.0 and float(frequencies[-1]) == pytest.approx(8000.0)
    torch.testing.assert_close(frequencies.diff(), torch.full((256,), 16000 / 512))


@pytest.mark.parametrize("feature, n_samples, duration", [(LogMel(), 160000, 5.0), (LogStft(), 80000, 5.0)])
def test_frame_times_span_the_clip(feature, n_samples: int, duration: float) -> None:
    n_frames = feature.n_frames(n_samples)
    times = feature.frame_times(n_frames)
    assert times.shape == (n_frames,) and float(times[0]) == 0.0
    assert (times.diff() > 0).all()
    assert float(times[1]) == pytest.approx(feature.hop_length / feature.sample_rate)
    # Centred frames: the last one sits within one hop of the clip's end.
    assert duration - feature.hop_length / feature.sample_rate <= float(times[-1]) <= duration


# --- inversion ----------------------------------------------------------------------------


def test_stft_round_trip_snr_at_least_60_db(clips_16k: torch.Tensor) -> None:
    feature = LogStft()
    spectrogram = feature(clips_16k)
    reconstructed = feature.inverse(spectrogram.log_db, spectrogram)
    assert reconstructed.shape == clips_16k.shape and reconstructed.dtype == torch.float32
    error = (reconstructed - clips_16k).square().sum(-1)
    snr = 10 * torch.log10(clips_16k.square().sum(-1) / error)
    assert (snr >= 60).all(), f"STFT round-trip SNR per clip: {snr.tolist()}"


# Measured mean |dB error| per clip (scripts/bench_features.py): nnls and gain <= 0.02,
# pinv 0.46 to 0.88. The bounds leave room for float differences but catch a wrong scale,
# a lost phase or a misplaced band, which all cost several dB.
_MEL_ROUND_TRIP_BOUND_DB = {"nnls": 0.05, "gain": 0.05, "pinv": 1.0}


@pytest.mark.parametrize("inversion", MEL_INVERSIONS)
def test_mel_round_trip_error(clips_32k: torch.Tensor, inversion: str) -> None:
    feature = LogMel(inversion=inversion)
    spectrogram = feature(clips_32k)
    reconstructed = feature.inverse(spectrogram.log_db, spectrogram)
    assert reconstructed.shape == clips_32k.shape
    error = (feature(reconstructed).log_db - spectrogram.log_db).abs().mean(dim=(1, 2, 3))
    assert (error <= _MEL_ROUND_TRIP_BOUND_DB[inversion]).all(), f"{inversion}: mean |dB error| per clip {error.tolist()}"


@pytest.mark.parametrize("inversion", MEL_INVERSIONS)
def test_masked_mel_inverts_to_quieter_masked_bins(clips_32k: torch.Tensor, inversion: str) -> None:
    feature = LogMel(inversion=inversion)
    spectrogram = feature(clips_32k)
    masked_db, kept = _keep_top(spectrogram.log_db, 0.30)
    reconstructed = feature.inverse(masked_db, spectrogram)
    assert torch.isfinite(reconstructed).all()
    reconstructed_db = feature(reconstructed).log_db
    assert torch.isfinite(reconstructed_db).all()
    for index in range(len(clips_32k)):
        masked_out = ~kept[index]
        # Mean dB over masked bins falls for every variant (measured >= 7 dB nnls/gain, >= 4.7 dB pinv).
        level_drop = (spectrogram.log_db[index] - reconstructed_db[index])[masked_out].mean()
        assert level_drop > 3
        # The kept bins keep their level (measured 0.08 to 0.44 dB for nnls/gain, up to 2 dB for pinv).
        kept_error = (reconstructed_db[index] - spectrogram.log_db[index])[kept[index]].abs().mean()
        assert kept_error < (3.0 if inversion == "pinv" else 1.0)
        if inversion == "pinv":
            # pinv spreads kept bands' energy into masked neighbours, so the energy checks below
            # do not hold for it (measured -2.7 to +7.2 dB).
            continue
        original_energy = torch.pow(10, spectrogram.log_db[index][masked_out] / 10).sum()
        reconstructed_energy = torch.pow(10, reconstructed_db[index][masked_out] / 10).sum()
        # Leakage from the kept bins refills the masked ones only partly (measured 4.4 to 8.4 dB less energy).
        assert 10 * torch.log10(original_energy / reconstructed_energy) > 3
        # Nearly no masked bin gets louder (measured < 0.3 %).
        got_louder = reconstructed_db[index][masked_out] > spectrogram.log_db[index][masked_out] + 1
        assert got_louder.float().mean() < 0.01


@pytest.mark.parametrize("inversion", MEL_INVERSIONS)
def test_mel_inverse_follows_level_changes(clips_32k: torch.Tensor, inversion: str) -> None:
    feature = LogMel(inversion=inversion)
    spectrogram = feature(clips_32k)
    reconstructed = feature.inverse(spectrogram.log_db, spectrogram)
    # +6.02 dB everywhere is twice the amplitude.
    louder = feature.inverse(spectrogram.log_db + 20 * np.log10(2.0), spectrogram)
    torch.testing.assert_close(louder, 2 * reconstructed, atol=1e-4, rtol=1e-3)
    # -20 dB on the lower 32 bands: bands 0..30 (clear of the boundary band) drop by 20 dB
    # (measured 19.98 to 20.06 dB for nnls/gain, 18.4 to 20.1 dB for pinv).
    attenuated = spectrogram.log_db.clone()
    attenuated[:, :, :32] -= 20
    change = feature(feature.inverse(attenuated, spectrogram)).log_db - spectrogram.log_db
    tolerance = 2.0 if inversion == "pinv" else 0.5
    for index in range(len(clips_32k)):
        audible = spectrogram.log_db[index, :, :31] > -60
        mean_change = float(change[index, :, :31][audible].mean())
        assert mean_change == pytest.approx(-20.0, abs=tolerance)


def test_fully_masked_mel_inverts_to_silence(clips_32k: torch.Tensor) -> None:
    feature = LogMel()
    spectrogram = feature(clips_32k[:2])
    reconstructed = feature.inverse(torch.full_like(spectrogram.log_db, SILENCE_DB), spectrogram)
    assert torch.isfinite(reconstructed).all()
    assert float(reconstructed.abs().max()) < 1e-6


def test_masked_stft_inverse_is_finite_and_quieter(clips_16k: torch.Tensor) -> None:
    feature = LogStft()
    spectrogram = feature(clips_16k)
    masked_db, _ = _keep_top(spectrogram.log_db, 0.30)
    reconstructed = feature.inverse(masked_db, spectrogram)
    assert torch.isfinite(reconstructed).all()
    assert (reconstructed.square().sum(-1) < clips_16k.square().sum(-1)).all()


def test_select_and_expand_invert_many_masks_of_one_clip(clips_32k: torch.Tensor) -> None:
    feature = LogMel()
    spectrogram = feature(clips_32k)
    one_clip = spectrogram.select(3)
    assert one_clip.log_db.shape == (1, 1, 64, 501)
    masked_db, _ = _keep_top(one_clip.log_db, 0.30)
    many = feature.inverse(torch.cat([one_clip.log_db, masked_db]), one_clip.expand(2))
    alone = feature.inverse(masked_db, one_clip)
    torch.testing.assert_close(many[1:], alone, atol=1e-5, rtol=0)
    assert isinstance(one_clip, Spectrogram)


@pytest.mark.cuda
def test_cuda_matches_cpu(clips_32k: torch.Tensor) -> None:
    feature = LogMel()
    cpu = feature(clips_32k[:2])
    cuda = feature(clips_32k[:2].cuda())
    assert cuda.log_db.device.type == "cuda"
    audible = cpu.log_db > -60
    torch.testing.assert_close(cuda.log_db.cpu()[audible], cpu.log_db[audible], atol=1e-2, rtol=0)
    masked_db, _ = _keep_top(cuda.log_db, 0.30)
    assert torch.isfinite(feature.inverse(masked_db, cuda)).all()


# --- configuration errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    "make, option",
    [
        (lambda: LogMel(inversion="griffinlim"), "inversion"),
        (lambda: LogMel(f_max=20000.0), "f_min/f_max"),
        (lambda: LogMel(f_min=500.0, f_max=400.0), "f_min/f_max"),
        (lambda: LogMel(n_mels=512), "n_mels"),
        (lambda: LogMel(nnls_iterations=0), "nnls_iterations"),
        (lambda: LogStft(win_length=1024), "win_length"),
        (lambda: LogStft(hop_length=0), "hop_length"),
    ],
)
@pytest.mark.filterwarnings("ignore:Empty filters detected")
def test_bad_options_name_the_option(make, option: str) -> None:
    with pytest.raises(AudioInterpError, match=f"^{option}:"):
        make()


def test_too_short_waveform_is_a_user_error() -> None:
    with pytest.raises(AudioInterpError, match="^waveform:"):
        LogMel()(torch.zeros(1, 100))
