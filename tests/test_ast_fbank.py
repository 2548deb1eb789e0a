"""feature=ast_fbank (audiointerp.features.AstFbank) on the six real ESC-50 clips: agreement with
transformers' ASTFeatureExtractor, shapes, units and silence, and inversion back to audio.

Units: values are AST's normalised log energies, (ln E - mean) / (2 std); one unit is
2 * 4.569 nats = 39.7 dB, so 1e-3 units is 0.04 dB."""

from __future__ import annotations

import math
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from audiointerp.errors import AudioInterpError
from audiointerp.features import (
    AST_MEAN,
    AST_STD,
    KALDI_ENERGY_FLOOR,
    AstFbank,
    Spectrogram,
)
from audiointerp.masks import SILENCE_DB, apply_mask

REPO_ROOT = Path(__file__).resolve().parents[1]
FIVE_SECONDS = 80000
FRAMES_5S = 498  # 1 + (80000 - 400) // 160


@pytest.fixture(scope="module")
def clips_16k(sample_wavs: list[Path]) -> torch.Tensor:
    """(6, 80000) float32: the six clips, mono, resampled to 16 kHz (soxr_hq), 5 s each."""
    clips = []
    for path in sample_wavs:
        audio, file_rate = sf.read(path, dtype="float32", always_2d=True)
        clips.append(librosa.resample(audio.mean(axis=1), orig_sr=file_rate, target_sr=16000, res_type="soxr_hq"))
    stacked = torch.from_numpy(np.stack(clips))
    assert stacked.shape == (6, FIVE_SECONDS)
    return stacked


@pytest.fixture(scope="module")
def feature() -> AstFbank:
    return AstFbank()


@pytest.fixture(scope="module")
def spectrogram(feature: AstFbank, clips_16k: torch.Tensor) -> Spectrogram:
    return feature(clips_16k)


@pytest.fixture(scope="module")
def round_trip(feature: AstFbank, spectrogram: Spectrogram) -> torch.Tensor:
    """(6, 80000): the unmodified feature inverted back to audio."""
    return feature.inverse(spectrogram.log_db, spectrogram)


# --- agreement with AST's own feature extractor ------------------------------------------------


def test_agrees_with_transformers_ast_feature_extractor(spectrogram: Spectrogram, clips_16k: torch.Tensor) -> None:
    transformers = pytest.importorskip("transformers", reason="transformers not installed (the optional extra `hf`)")
    extractor = transformers.ASTFeatureExtractor()  # its defaults: 16 kHz, 128 bins, AudioSet mean/std
    assert (extractor.mean, extractor.std, extractor.num_mel_bins, extractor.sampling_rate) == (AST_MEAN, AST_STD, 128, 16000)
    values = extractor(list(clips_16k.numpy()), sampling_rate=16000, return_tensors="np")["input_values"]
    assert values.shape == (6, extractor.max_length, 128)
    # (B, max_length, 128), zero-padded in log energy after our T frames -> (B, 1, 128, T)
    reference = torch.from_numpy(values[:, :FRAMES_5S]).transpose(1, 2).unsqueeze(1)
    difference = (spectrogram.log_db - reference).abs()
    # Measured with transformers 5.25 (its numpy path, no torchaudio): max 1.8e-4 (float32 vs the
    # extractor's float64 FFT, largest in near-floor bins), mean 9e-8. A wrong window (povey), no
    # pre-emphasis, no DC removal or another mel scale each cost >= 0.6 somewhere (measured).
    assert float(difference.max()) < 1e-3, f"max |difference| {float(difference.max()):.3g}"
    assert float(difference.mean()) < 1e-5, f"mean |difference| {float(difference.mean()):.3g}"


# --- shapes, geometry, units ---------------------------------------------------------------


def test_shapes_for_five_seconds(feature: AstFbank, spectrogram: Spectrogram) -> None:
    assert feature.n_frames(FIVE_SECONDS) == FRAMES_5S
    assert spectrogram.log_db.shape == (6, 1, 128, FRAMES_5S) and spectrogram.log_db.dtype == torch.float32
    assert spectrogram.phase.shape == (6, 257, FRAMES_5S) and spectrogram.phase.dtype == torch.complex64
    assert spectrogram.power.shape == (6, 257, FRAMES_5S) and spectrogram.power.dtype == torch.float32
    assert spectrogram.length == FIVE_SECONDS
    assert feature.n_bins == 128
    # a clip one hop longer gets one frame more; one sample shorter than a hop boundary does not
    assert feature(torch.zeros(1, 400)).log_db.shape == (1, 1, 128, 1)
    assert feature(torch.zeros(1, 400 + 159)).log_db.shape == (1, 1, 128, 1)
    assert feature(torch.zeros(1, 400 + 160)).log_db.shape == (1, 1, 128, 2)
    with pytest.raises(AudioInterpError, match="win_length = 400"):
        feature(torch.zeros(1, 399))


def test_bands_and_frame_times(feature: AstFbank) -> None:
    centres = feature.bin_frequencies()
    edges = feature.bin_edges()
    assert centres.shape == (128,) and edges.shape == (128, 2)
    assert bool((centres[1:] > centres[:-1]).all())
    assert float(edges[0, 0]) == pytest.approx(20.0, rel=1e-5) and float(edges[-1, 1]) == pytest.approx(8000.0, rel=1e-5)
    assert bool(((edges[:, 0] < centres) & (centres < edges[:, 1])).all())
    times = feature.frame_times(FRAMES_5S)
    # frame t spans [0.01 t, 0.01 t + 0.025) s: its centre is 12.5 ms after its start
    assert float(times[0]) == pytest.approx(0.0125) and float(times[-1]) == pytest.approx(4.9825)
    assert feature.frame_half_width_s == pytest.approx(0.0125)


def test_a_tone_lands_in_its_band(feature: AstFbank) -> None:
    t = torch.arange(16000) / 16000
    for frequency in (250.0, 1000.0, 4000.0):
        log_db = feature((0.5 * torch.sin(2 * math.pi * frequency * t))[None]).log_db[0, 0]
        loudest = int(log_db[:, 10:-10].mean(dim=1).argmax())
        nearest = int((feature.bin_frequencies() - frequency).abs().argmin())
        assert abs(loudest - nearest) <= 1, f"{frequency} Hz: loudest band {loudest}, nearest centre {nearest}"


def test_dc_offset_is_removed_per_frame(feature: AstFbank, spectrogram: Spectrogram, clips_16k: torch.Tensor) -> None:
    # Kaldi subtracts each frame's mean before pre-emphasis: a constant offset changes nothing
    # (measured max 1.4e-4 units, float32 rounding of the removed 0.1).
    shifted = feature(clips_16k + 0.1).log_db
    assert float((shifted - spectrogram.log_db).abs().max()) < 1e-3
    # without the removal the offset leaks into the lowest bands
    no_removal = AstFbank(remove_dc_offset=False)
    leaked = no_removal(clips_16k + 0.1).log_db - no_removal(clips_16k).log_db
    assert float(leaked.abs().max()) > 0.1


def test_silence_is_the_floor_in_normalised_units(feature: AstFbank) -> None:
    floor = (math.log(KALDI_ENERGY_FLOOR) - AST_MEAN) / (2 * AST_STD)
    assert feature.silence_level == pytest.approx(floor) == pytest.approx(-1.2775938, abs=1e-6)
    # the dB features' silence (-100 dB, mask.silence_level's default) is this feature's floor
    assert feature.level_from_db(SILENCE_DB) == pytest.approx(feature.silence_level)
    # levels above Kaldi's floor (-69.2 dB) map to their own values: 0 dB of energy is ln 1 = 0
    assert feature.level_from_db(0.0) == pytest.approx(-AST_MEAN / (2 * AST_STD))
    assert feature.level_from_db(-60.0) > feature.silence_level
    # digital silence featurises to exactly the floor
    silent = feature(torch.zeros(2, 8000)).log_db
    assert torch.allclose(silent, torch.full_like(silent, feature.silence_level), atol=1e-6)


def test_config_instantiates_and_synthetic_data_renders_at_16k() -> None:
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base=None):
        cfg = compose(config_name="config", overrides=["feature=ast_fbank"])
    feature = instantiate(cfg.feature)
    assert isinstance(feature, AstFbank)
    assert (feature.sample_rate, feature.n_fft, feature.win_length, feature.hop_length, feature.n_mels) == (16000, 512, 400, 160, 128)
    assert (feature.window_type, feature.preemphasis, feature.remove_dc_offset) == ("hanning", 0.97, True)
    assert (feature.mean, feature.std) == (AST_MEAN, AST_STD)
    # the synthetic testbed generates at the feature's rate: 5 s -> 80000 samples -> 498 frames
    assert cfg.data.sample_rate == 16000
    assert feature.n_frames(int(cfg.data.duration_s * cfg.data.sample_rate)) == FRAMES_5S


def test_bad_options_are_refused() -> None:
    with pytest.raises(AudioInterpError, match="window"):
        AstFbank(window="hamming")
    with pytest.raises(AudioInterpError, match="preemphasis"):
        AstFbank(preemphasis=1.0)
    with pytest.raises(AudioInterpError, match="std"):
        AstFbank(std=0.0)


# --- inversion ----------------------------------------------------------------------------


def test_round_trip_reproduces_the_feature(feature: AstFbank, spectrogram: Spectrogram, round_trip: torch.Tensor,
                                           clips_16k: torch.Tensor) -> None:
    assert round_trip.shape == clips_16k.shape and round_trip.dtype == torch.float32
    error = (feature(round_trip).log_db - spectrogram.log_db).abs()
    # Measured per clip: mean 7.7e-4 to 2.8e-3 units (0.03 to 0.11 dB), 99th percentile 0.017 to
    # 0.065, max 0.71 (band 0, 20-48 Hz, in near-floor frames): the inverse leaves Kaldi's per-frame
    # DC removal out (see AstFbank). With it exact (remove_dc_offset=False) the mean is <= 9e-4.
    mean = error.mean(dim=(1, 2, 3))
    assert (mean < 5e-3).all(), f"mean |error| per clip {mean.tolist()}"
    p99 = torch.quantile(error.flatten(1), 0.99, dim=1)
    assert (p99 < 0.1).all(), f"99th percentile |error| per clip {p99.tolist()}"
    # above band 2 nothing is off by more than 0.6 units (measured 0.57)
    assert float(error[:, :, 2:].max()) < 0.75


def test_round_trip_is_near_exact_without_dc_removal(clips_16k: torch.Tensor) -> None:
    # Everything else in the inverse is exact up to the clip's edges: measured mean |error| per clip
    # 2.6e-5 to 8.9e-4, median 3.3e-5. Zeroing the 0 Hz and 8 kHz bins (outside every filter) instead
    # of scaling them with their nearest band gives a median of 9.9e-4.
    feature = AstFbank(remove_dc_offset=False)
    spectrogram = feature(clips_16k)
    error = (feature(feature.inverse(spectrogram.log_db, spectrogram)).log_db - spectrogram.log_db).abs()
    mean = error.mean(dim=(1, 2, 3))
    assert float(mean.median()) < 2e-4 and (mean < 2e-3).all(), f"mean |error| per clip {mean.tolist()}"


def test_round_trip_waveform_snr(round_trip: torch.Tensor, clips_16k: torch.Tensor) -> None:
    def snr(reference: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
        return 10 * torch.log10(reference.square().sum(-1) / (reference - estimate).square().sum(-1))

    # Full band, measured 10.3 (sea waves: strong rumble below 40 Hz, which per-frame DC removal
    # hides from the feature) to 39 dB.
    full = snr(clips_16k, round_trip)
    assert (full > 8).all(), f"SNR per clip {full.tolist()}"

    def above_50_hz(audio: torch.Tensor) -> torch.Tensor:
        spectrum = torch.fft.rfft(audio)
        spectrum[..., torch.fft.rfftfreq(audio.shape[-1], 1 / 16000) < 50] = 0
        # without the first and last 10 ms (the first frame's rising edge, the unframed tail)
        return torch.fft.irfft(spectrum, n=audio.shape[-1])[..., 160:-160]

    # Above 50 Hz, away from the edges, the waveform comes back: measured 34.5 to 57.9 dB.
    audible = snr(above_50_hz(clips_16k), above_50_hz(round_trip))
    assert (audible > 30).all(), f"SNR above 50 Hz per clip {audible.tolist()}"


def test_inverse_follows_level_changes(feature: AstFbank, spectrogram: Spectrogram, round_trip: torch.Tensor) -> None:
    # +ln(4) / (2 std) units is 4 times the energy: twice the amplitude (measured max 1.6e-3 off, peaks ~1.2)
    louder = feature.inverse(spectrogram.log_db + math.log(4.0) / (2 * feature.std), spectrogram)
    torch.testing.assert_close(louder, 2 * round_trip, atol=5e-3, rtol=1e-3)


def test_fully_masked_inverts_to_silence(feature: AstFbank, spectrogram: Spectrogram) -> None:
    two = spectrogram.take(torch.tensor([0, 5]))
    everything_removed, _ = apply_mask(two.log_db, torch.zeros_like(two.log_db), feature.silence_level)
    assert torch.equal(everything_removed, torch.full_like(two.log_db, feature.silence_level))
    silent = feature.inverse(everything_removed, two)
    assert torch.isfinite(silent).all()
    assert float(silent.abs().max()) < 1e-6  # measured exactly 0
    # a level below the floor (the dB features' -100 applied unconverted) is silent too
    assert float(feature.inverse(torch.full_like(two.log_db, SILENCE_DB), two).abs().max()) < 1e-6
    # and so is a masked-out lowest band: its gain also silences the 0 Hz bin below it
    low_removed = two.log_db.clone()
    low_removed[:, :, 0] = feature.silence_level
    again = feature(feature.inverse(low_removed, two)).log_db
    assert float(again[:, :, 0].mean()) < float(two.log_db[:, :, 0].mean())


def test_masked_bins_get_quieter_and_kept_bins_stay(feature: AstFbank, spectrogram: Spectrogram) -> None:
    log_db = spectrogram.log_db
    threshold = torch.quantile(log_db.flatten(1), 0.7, dim=1).view(-1, 1, 1, 1)
    kept = log_db >= threshold
    masked, _ = apply_mask(log_db, kept.float(), feature.silence_level)
    reconstructed = feature(feature.inverse(masked, spectrogram)).log_db
    assert torch.isfinite(reconstructed).all()
    for index in range(log_db.shape[0]):
        removed = ~kept[index]
        # kept bins keep their level: measured mean |error| 0.002 to 0.028 units (0.1 to 1.1 dB)
        kept_error = (reconstructed[index] - log_db[index])[kept[index]].abs().mean()
        assert kept_error < 0.05
        # removed bins lose energy (leakage from kept neighbours refills them only partly):
        # measured 4.0 to 7.4 dB less energy in total
        def energy(values):
            return torch.exp(values * (2 * feature.std) + feature.mean).sum()
        drop_db = 10 * torch.log10(energy(log_db[index][removed]) / energy(reconstructed[index][removed]))
        assert drop_db > 3
        # nearly no removed bin gets more than 1 dB louder (measured 0.3 to 1.6 %)
        louder = reconstructed[index][removed] > log_db[index][removed] + 1 / 39.7
        assert louder.float().mean() < 0.03


def test_gradients_through_the_inverse_are_finite(feature: AstFbank, spectrogram: Spectrogram) -> None:
    # a classifier of audio is explained through the inverse (audiointerp.models.waveform)
    one = spectrogram.select(0)
    values = one.log_db.clone().requires_grad_(True)
    threshold = torch.quantile(one.log_db.flatten(), 0.5)
    masked, _ = apply_mask(values, (one.log_db >= threshold).float(), feature.silence_level)
    audio = feature.inverse(masked, one)
    audio.square().sum().backward()
    assert values.grad is not None and torch.isfinite(values.grad).all()
    assert float(values.grad.abs().sum()) > 0


@pytest.mark.parametrize("feature_name,expected", [("ast_fbank", None), ("mel", SILENCE_DB)])
def test_the_api_sets_masked_bins_to_the_features_silence(feature_name: str, expected: float | None) -> None:
    """What explain()/evaluate() and get_explainer() build: the explainer's silence (IG's baseline,
    occlusion's patches) and the masks' level in the feature's units, the recorded level in dB."""
    import audiointerp
    from audiointerp.api import _setup

    setup = _setup("integrated_gradients", feature_name, [])
    silence = setup.feature.silence_level if expected is None else expected
    assert setup.explainer.silence_level == pytest.approx(silence)
    assert setup.cfg.mask.silence_level == pytest.approx(silence)
    assert setup.silence_level_db == SILENCE_DB
    occlusion = audiointerp.get_explainer("occlusion", feature=feature_name)
    assert occlusion.silence_level == pytest.approx(silence)


@pytest.mark.parametrize("feature_name,expected", [("ast_fbank", None), ("mel", SILENCE_DB)])
def test_to_feature_units_before_the_explainer_and_augment_are_built(feature_name: str, expected: float | None) -> None:
    """mask.silence_level is configured in dB; the run converts it (run.to_feature_units, called by
    run() before it builds the explainer and the training augmentations) to the feature's units, so
    IG's baseline and occlusion's patches are the feature's silence (-1.2776 for ast_fbank), and a dB
    feature keeps -100."""
    from audiointerp.api import compose_config
    from audiointerp.errors import build
    from audiointerp.run import build_augment, to_feature_units

    cfg, _ = compose_config([f"feature={feature_name}", "explainer=integrated_gradients"])
    feature = build(cfg.feature)
    to_feature_units(cfg, feature)
    silence = feature.silence_level if expected is None else expected
    assert cfg.mask.silence_level == pytest.approx(silence)
    assert build(cfg.explainer).silence_level == pytest.approx(silence)
    cfg_occlusion, _ = compose_config([f"feature={feature_name}", "explainer=occlusion"])
    to_feature_units(cfg_occlusion, feature)
    assert build(cfg_occlusion.explainer).silence_level == pytest.approx(silence)
    dropout = [step for step in build_augment(cfg.train.get("augment")).steps if hasattr(step, "level")]
    assert dropout and all(step.level == pytest.approx(silence) for step in dropout)
