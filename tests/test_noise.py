"""Contamination with the three real Freesound noises and generated white noise."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from audiointerp.data import ClipSet
from audiointerp.data.audio import load_audio, peak_normalise
from audiointerp.data.noise import FileNoise, GeneratedWhiteNoise, NoNoise, mix, rms_weighted_mix
from audiointerp.errors import AudioInterpError

REPO_ROOT = Path(__file__).resolve().parents[1]
NOISE_FILES = {
    "white": "165058__theundecided__white-noise.wav",
    "room": "203297__mzui__room-tone-office-industrial-ambience-01.wav",
    "horse": "149024__foxen10__horse_whinny.wav",
}
WHITE_SHA256 = "27f2ca1a3e4e24c33e2917e8580be9350a117f169dcca159517d0dfd61feb561"
HORSE_SHA256 = "15a1249a7a42a3c3d58f9e7825b262047454fc156b79da36a3563f6c69055a39"
CLIP_STEMS = ["1-100032-A-0", "4-102844-A-49", "5-151085-A-20"]


@pytest.fixture(scope="module")
def clips(esc50_root: Path) -> ClipSet:
    """Three real ESC-50 clips at 32 kHz, peak-normalised, with stand-in evidence boxes."""
    waveforms = torch.stack([load_audio(esc50_root / "audio" / f"{stem}.flac", 32000, 5.0, True) for stem in CLIP_STEMS])
    return ClipSet(waveforms=waveforms, labels=torch.tensor([0, 49, 20]), clip_ids=list(CLIP_STEMS),
                   class_names=[f"class{i}" for i in range(50)], sample_rate=32000,
                   evidence=torch.tensor([[0.0, 1.0, 100.0, 200.0]] * 3))


@pytest.fixture(scope="module")
def room_noise(shared_data: Path) -> torch.Tensor:
    return load_audio(shared_data / "noises" / NOISE_FILES["room"], 32000, 5.0, False)


def rms(x: torch.Tensor) -> torch.Tensor:
    return x.double().pow(2).mean(dim=-1).sqrt()


@pytest.mark.parametrize("alpha", [0.6, 0.3, 0.9])
def test_clip_to_noise_rms_ratio_is_alpha_over_one_minus_alpha(clips, room_noise, alpha):
    mixture = rms_weighted_mix(clips.waveforms, room_noise, alpha)
    for clip, mixed in zip(clips.waveforms, mixture):
        # Recover how much of each source is in the mix, without knowing how it was made.
        sources = torch.stack([clip, room_noise], dim=1).double()
        (clip_gain, noise_gain), *_ = np.linalg.lstsq(sources.numpy(), mixed.double().numpy(), rcond=None)
        ratio = (clip_gain * rms(clip)) / (noise_gain * rms(room_noise))
        assert ratio.item() == pytest.approx(alpha / (1 - alpha), rel=1e-4)


def test_mix_is_peak_normalised_and_alpha_one_is_the_clip(clips, room_noise):
    quiet_clips = 0.1 * clips.waveforms
    mixed = mix(quiet_clips, room_noise, 0.6)
    assert mixed.shape == clips.waveforms.shape
    torch.testing.assert_close(mixed.abs().amax(dim=-1), torch.ones(3))
    torch.testing.assert_close(mixed, peak_normalise(rms_weighted_mix(quiet_clips, room_noise, 0.6)))
    assert torch.equal(mix(quiet_clips, room_noise, 1.0), peak_normalise(quiet_clips))
    per_clip_noise = torch.stack([room_noise, -room_noise, room_noise])
    torch.testing.assert_close(mix(quiet_clips, per_clip_noise, 0.6)[0], mixed[0])
    with pytest.raises(ValueError):
        mix(quiet_clips, room_noise[:1000], 0.6)


@pytest.mark.parametrize("alpha", [0.0, -0.2, 1.5, True, "0.6", float("nan")])
def test_alpha_out_of_range_names_the_option(clips, room_noise, alpha):
    with pytest.raises(AudioInterpError, match=re.escape("noise.alpha")):
        mix(clips.waveforms, room_noise, alpha)
    with pytest.raises(AudioInterpError, match=re.escape("noise.alpha")):
        GeneratedWhiteNoise(alpha=alpha, seed=0, sample_rate=32000)


def test_file_noise_from_a_user_path_mixes_every_clip(clips, shared_data, tmp_path):
    horse = shared_data / "noises" / NOISE_FILES["horse"]
    noise = FileNoise("horse", url="http://127.0.0.1:1/unused.wav", sha256="0" * 64, path=str(horse),
                      path_sha256=HORSE_SHA256, alpha=0.6, sample_rate=32000, cache_dir=str(tmp_path / "cache"))
    contaminated = noise(clips)
    assert noise.name == "horse" and not (tmp_path / "cache").exists()
    assert contaminated.clip_ids == clips.clip_ids and torch.equal(contaminated.labels, clips.labels)
    assert torch.equal(contaminated.evidence, clips.evidence) and contaminated.sample_rate == 32000
    horse_mono = load_audio(horse, 32000, 5.0, False)
    torch.testing.assert_close(contaminated.waveforms, mix(clips.waveforms, horse_mono, 0.6))
    assert not torch.allclose(contaminated.waveforms, clips.waveforms, atol=1e-2)


def test_user_noise_path_is_checked_only_against_its_own_hash(clips, shared_data, tmp_path):
    altered = tmp_path / "horse.wav"
    data = bytearray((shared_data / "noises" / NOISE_FILES["horse"]).read_bytes())
    data[-10] ^= 0x01
    altered.write_bytes(data)
    unchecked = FileNoise("horse", url="http://127.0.0.1:1/x.wav", sha256=HORSE_SHA256, path=str(altered))
    assert len(unchecked(clips)) == 3
    checked = FileNoise("horse", url="http://127.0.0.1:1/x.wav", sha256=HORSE_SHA256, path=str(altered),
                        path_sha256=HORSE_SHA256)
    with pytest.raises(AudioInterpError, match=re.escape(str(altered))):
        checked(clips)
    with pytest.raises(AudioInterpError, match="noise.path"):
        FileNoise("horse", url="http://127.0.0.1:1/x.wav", sha256=None, path=str(tmp_path / "absent.wav"))(clips)


def noise_config(name: str, overrides: list[str]):
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO_ROOT / "conf")):
        return compose("config", overrides=[f"noise={name}", *overrides]).noise


@pytest.mark.parametrize("name", ["white", "room", "horse"])
def test_configured_noise_is_fetched_and_matches_its_pinned_hash(name, clips, shared_data, tmp_path, serve_directory):
    server = serve_directory(shared_data / "noises")
    config = noise_config(name, [])
    filename = NOISE_FILES[name]
    assert config.url.endswith("/" + filename)
    local = noise_config(name, [f"noise.url={server.url}{filename}", f"noise.cache_dir={tmp_path / 'noises'}"])
    noise = instantiate(local)
    assert noise.name == name and noise.alpha == 0.6
    contaminated = noise(clips)
    cached = tmp_path / "noises" / filename
    assert cached.read_bytes() == (shared_data / "noises" / filename).read_bytes()
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == config.sha256
    torch.testing.assert_close(contaminated.waveforms,
                               mix(clips.waveforms, load_audio(cached, 32000, 5.0, False), 0.6))
    instantiate(local)(clips)
    assert len(server.requests) == 1, "the cached noise was downloaded again"


def test_a_corrupted_noise_download_is_refused(clips, shared_data, tmp_path, serve_directory):
    served = tmp_path / "served"
    served.mkdir()
    data = bytearray((shared_data / "noises" / NOISE_FILES["white"]).read_bytes())
    data[1000] ^= 0xFF
    (served / NOISE_FILES["white"]).write_bytes(data)
    server = serve_directory(served)
    noise = FileNoise("white", url=server.url + NOISE_FILES["white"], sha256=WHITE_SHA256,
                      cache_dir=str(tmp_path / "noises"))
    with pytest.raises(AudioInterpError) as error:
        noise(clips)
    message = str(error.value)
    assert NOISE_FILES["white"] in message and WHITE_SHA256 in message
    assert hashlib.sha256(data).hexdigest() in message
    assert not list((tmp_path / "noises").iterdir()), "the corrupted download was kept"


def test_a_corrupted_cached_noise_is_refused(clips, shared_data, tmp_path):
    cache = tmp_path / "noises"
    cache.mkdir()
    cached = cache / NOISE_FILES["white"]
    shutil.copyfile(shared_data / "noises" / NOISE_FILES["white"], cached)
    with open(cached, "r+b") as file:
        file.seek(2000)
        file.write(b"\x00")
    noise = FileNoise("white", url="http://127.0.0.1:1/" + NOISE_FILES["white"], sha256=WHITE_SHA256,
                      cache_dir=str(cache))
    with pytest.raises(AudioInterpError, match=re.escape(str(cached))):
        noise(clips)


def test_generated_white_noise_is_deterministic_and_white(clips):
    config = noise_config("white_gen", ["seed=7"])
    first, second = instantiate(config), instantiate(config)
    assert first.name == "white_gen" and first.seed == 7
    torch.testing.assert_close(first(clips).waveforms, second(clips).waveforms, rtol=0, atol=0)
    other = GeneratedWhiteNoise(alpha=0.6, seed=8, sample_rate=32000)
    assert not torch.allclose(first(clips).waveforms, other(clips).waveforms)
    noise = first.noise(160000)
    assert abs(noise.mean().item()) < 0.01 and noise.std().item() == pytest.approx(1.0, abs=0.01)
    power = torch.fft.rfft(noise).abs().pow(2)
    low_band, high_band = power[1:40000].mean(), power[40000:80000].mean()
    assert (low_band / high_band).item() == pytest.approx(1.0, abs=0.05)


def test_sample_rate_mismatch_and_no_noise(clips):
    with pytest.raises(AudioInterpError, match="noise.sample_rate"):
        GeneratedWhiteNoise(alpha=0.6, seed=0, sample_rate=16000)(clips)
    assert NoNoise().name == "none" and NoNoise()(clips) is clips


def longest_zero_run(signal: torch.Tensor) -> int:
    """Length of the longest stretch of exactly-zero samples in a (samples,) signal."""
    longest = current = 0
    for is_zero in (signal == 0).tolist():
        current = current + 1 if is_zero else 0
        longest = max(longest, current)
    return longest


@pytest.mark.parametrize("name", ["horse", "room"])
def test_a_recorded_noise_is_looped_over_clips_longer_than_it(name, clips, shared_data, tmp_path):
    """12 s clips and a 5 s recording: the noise repeats the whole recording, with no silent tail."""
    path = shared_data / "noises" / NOISE_FILES[name]
    recording = load_audio(path, 32000, None, False)  # the whole file, stereo downmixed
    assert recording.shape[-1] == 5 * 32000
    long_clips = ClipSet(waveforms=torch.cat([clips.waveforms] * 3, dim=-1)[:, :12 * 32000], labels=clips.labels,
                         clip_ids=clips.clip_ids, class_names=clips.class_names, sample_rate=32000)
    noise = FileNoise(name, url="http://127.0.0.1:1/unused.wav", sha256=None, path=str(path), sample_rate=32000,
                      cache_dir=str(tmp_path / "cache"))
    looped = noise.noise(12 * 32000)
    assert looped.shape == (12 * 32000,) and longest_zero_run(looped) < 10
    length = recording.shape[-1]
    torch.testing.assert_close(looped[:length], recording, rtol=0, atol=0)
    torch.testing.assert_close(looped[length:2 * length], recording, rtol=0, atol=0)
    torch.testing.assert_close(looped[2 * length:], recording[:12 * 32000 - 2 * length], rtol=0, atol=0)
    # A shorter clip gets the recording's start.
    torch.testing.assert_close(noise.noise(32000), recording[:32000], rtol=0, atol=0)
    contaminated = noise(long_clips)
    torch.testing.assert_close(contaminated.waveforms, mix(long_clips.waveforms, looped, 0.6))
    # The clips' last seconds, past the recording's end, are mixed with noise too.
    tail = slice(10 * 32000, None)
    assert not torch.allclose(contaminated.waveforms[:, tail], peak_normalise(long_clips.waveforms)[:, tail], atol=1e-2)


def test_the_noise_configs_have_no_duration_option():
    for name in ("white", "room", "horse"):
        assert "duration_s" not in noise_config(name, [])
