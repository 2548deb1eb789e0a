"""The embedded synthetic dataset: shapes, determinism, ground-truth boxes and learnability."""

from __future__ import annotations

import re

import librosa
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from audiointerp.data import ClipSet
from audiointerp.data.synthetic import CLASS_NAMES, SyntheticClips
from audiointerp.errors import AudioInterpError

SMALL_SPLITS = {"train": 3, "valid": 2, "test": 2}


def _dataset(**overrides) -> SyntheticClips:
    options = dict(sample_rate=32000, duration_s=5.0, n_classes=8, clips_per_class=SMALL_SPLITS, seed=0)
    options.update(overrides)
    return SyntheticClips(**options)


def _rows_shared(first: torch.Tensor, second: torch.Tensor) -> int:
    """How many rows of ``first`` (N, S) also occur, bit for bit, as a row of ``second`` (M, S)."""
    return sum(bool((second == row).all(dim=1).any()) for row in first)


@pytest.mark.parametrize("sample_rate", [32000, 16000])
def test_split_shapes_dtype_range_and_balance(sample_rate: int) -> None:
    dataset = _dataset(sample_rate=sample_rate)
    assert dataset.class_names == list(CLASS_NAMES)
    assert dataset.n_classes == 8 and dataset.sample_rate == sample_rate
    for split, per_class in SMALL_SPLITS.items():
        clips = dataset.load_split(split)
        n_clips = 8 * per_class
        assert isinstance(clips, ClipSet) and len(clips) == n_clips
        assert clips.waveforms.shape == (n_clips, 5 * sample_rate)
        assert clips.waveforms.dtype == torch.float32
        peaks = clips.waveforms.abs().amax(dim=1)
        assert torch.allclose(peaks, torch.full_like(peaks, 0.9), atol=1e-5)
        assert clips.labels.dtype == torch.int64
        assert torch.bincount(clips.labels, minlength=8).tolist() == [per_class] * 8
        assert clips.sample_rate == sample_rate and clips.class_names == dataset.class_names

        assert len(set(clips.clip_ids)) == n_clips
        for clip_id, label in zip(clips.clip_ids, clips.labels.tolist()):
            match = re.fullmatch(rf"synthetic-{split}-(\d{{4}})-([a-z_]+)", clip_id)
            assert match is not None, clip_id
            assert match.group(2) == dataset.class_names[label]

        assert clips.evidence is not None and clips.evidence.shape == (n_clips, 4)
        assert clips.evidence.dtype == torch.float32
        t_start, t_end, f_low, f_high = clips.evidence.unbind(dim=1)
        assert (t_start >= 0).all() and (t_end <= 5.0).all()
        assert ((t_end - t_start) >= 0.5 - 1e-4).all() and ((t_end - t_start) <= 1.5 + 1e-4).all()
        assert (f_low >= 40).all() and (f_high <= 7000).all() and (f_high > f_low).all()


def test_labels_are_shuffled_not_blocked() -> None:
    labels = _dataset(clips_per_class={"train": 10}).load_split("train").labels
    assert not torch.equal(labels, torch.sort(labels).values)


def test_splits_hold_different_clips() -> None:
    dataset = _dataset()
    splits = {split: dataset.load_split(split).waveforms for split in SMALL_SPLITS}
    assert _rows_shared(splits["train"], splits["valid"]) == 0
    assert _rows_shared(splits["train"], splits["test"]) == 0
    assert _rows_shared(splits["valid"], splits["test"]) == 0


def test_same_seed_gives_identical_clips_and_other_seed_differs() -> None:
    first = _dataset(seed=3).load_split("test")
    again = _dataset(seed=3).load_split("test")
    assert torch.equal(first.waveforms, again.waveforms)
    assert torch.equal(first.labels, again.labels)
    assert torch.equal(first.evidence, again.evidence)
    assert first.clip_ids == again.clip_ids

    other = _dataset(seed=4).load_split("test")
    assert _rows_shared(first.waveforms, other.waveforms) == 0
    assert not torch.equal(first.evidence, other.evidence)


def test_fewer_classes_use_the_first_class_names() -> None:
    dataset = _dataset(n_classes=3)
    clips = dataset.load_split("valid")
    assert dataset.class_names == list(CLASS_NAMES[:3])
    assert torch.bincount(clips.labels).tolist() == [2, 2, 2]


def test_hydra_instantiates_it_from_a_config() -> None:
    config = OmegaConf.create({
        "_target_": "audiointerp.data.synthetic.SyntheticClips",
        "sample_rate": 16000,
        "duration_s": 3.0,
        "n_classes": 4,
        "clips_per_class": {"train": 2, "valid": 1, "test": 1},
        "seed": 1,
        "snr_db": [6.0, 12.0],
        "n_distractors": [0, 2],
    })
    clips = instantiate(config).load_split("train")
    assert clips.waveforms.shape == (8, 48000)


@pytest.mark.parametrize(
    ("options", "option_named"),
    [
        ({"n_classes": 1}, "n_classes"),
        ({"n_classes": len(CLASS_NAMES) + 1}, "n_classes"),
        ({"sample_rate": 8000}, "sample_rate"),
        ({"duration_s": 1.0}, "duration_s"),
        ({"clips_per_class": {"train": 2, "dev": 1}}, "clips_per_class"),
        ({"clips_per_class": {"train": 0}}, "clips_per_class"),
        ({"snr_db": [10.0, 5.0]}, "snr_db"),
        ({"n_distractors": "two"}, "n_distractors"),
    ],
)
def test_bad_options_raise_naming_the_option(options: dict, option_named: str) -> None:
    with pytest.raises(AudioInterpError, match=option_named):
        _dataset(**options)


def test_unknown_or_unconfigured_split_raises() -> None:
    with pytest.raises(AudioInterpError, match="split"):
        _dataset().load_split("dev")
    with pytest.raises(AudioInterpError, match="clips_per_class"):
        _dataset(clips_per_class={"train": 2}).load_split("test")


def _energy_inside_boxes(clips: ClipSet, time_margin_s: float, freq_margin_hz: float,
                         time_shift_s: float = 0.0) -> torch.Tensor:
    """(N,) fraction of each clip's STFT power inside its evidence box, grown by the margins
    (and moved by ``time_shift_s``)."""
    n_fft, hop = 1024, 256
    power = torch.stft(clips.waveforms, n_fft, hop, window=torch.hann_window(n_fft), return_complex=True).abs() ** 2
    frame_times = torch.arange(power.shape[-1]) * hop / clips.sample_rate
    bin_freqs = torch.arange(power.shape[-2]) * clips.sample_rate / n_fft
    fractions = []
    for clip_power, (t_start, t_end, f_low, f_high) in zip(power, clips.evidence.tolist()):
        t_start, t_end = t_start + time_shift_s, t_end + time_shift_s
        in_time = (frame_times >= t_start - time_margin_s) & (frame_times <= t_end + time_margin_s)
        in_band = (bin_freqs >= f_low - freq_margin_hz) & (bin_freqs <= f_high + freq_margin_hz)
        inside = in_band[:, None] & in_time[None, :]
        fractions.append((clip_power * inside).sum() / clip_power.sum())
    return torch.stack(fractions)


@pytest.mark.parametrize("sample_rate", [32000, 16000])
def test_evidence_box_holds_the_class_event(sample_rate: int) -> None:
    dataset = _dataset(sample_rate=sample_rate, background=False, n_distractors=0,
                       clips_per_class={"test": 4})
    clips = dataset.load_split("test")
    # Half a window either side (an STFT frame sees that far) plus two hops and three bins.
    time_margin_s = 512 / sample_rate + 2 * 256 / sample_rate
    freq_margin_hz = 3 * sample_rate / 1024
    fractions = _energy_inside_boxes(clips, time_margin_s, freq_margin_hz)
    for class_index, name in enumerate(dataset.class_names):
        worst = fractions[clips.labels == class_index].min().item()
        assert worst >= 0.9, f"{name}: only {worst:.3f} of the energy inside its evidence box"

    # The boxes are tight: the same box moved past the event holds almost none of it, and a box
    # covers only a small part of the time-frequency plane.
    event_lengths = clips.evidence[:, 1] - clips.evidence[:, 0]
    shift = float(event_lengths.max()) + 2 * time_margin_s + 0.05
    moved_start = clips.evidence[:, 0] + shift
    shift_back = moved_start + event_lengths > 5.0
    shifted = [
        _energy_inside_boxes(clips.subset([i]), time_margin_s, freq_margin_hz,
                             time_shift_s=-shift if shift_back[i] else shift).item()
        for i in range(len(clips))
    ]
    assert max(shifted) < 0.05
    box_area = event_lengths / 5.0 * (clips.evidence[:, 3] - clips.evidence[:, 2]) / (sample_rate / 2)
    assert (box_area < 0.25).all()


def test_distractors_stay_clear_of_the_class_event() -> None:
    plain = _dataset(background=False, n_distractors=0, padded_share=0.0, clips_per_class={"test": 2}).load_split("test")
    distracted = _dataset(background=False, n_distractors=2, padded_share=0.0,
                          clips_per_class={"test": 2}).load_split("test")
    assert torch.equal(plain.evidence, distracted.evidence)
    for clean, busy, box in zip(plain.waveforms, distracted.waveforms, plain.evidence.tolist()):
        start, end = round(box[0] * 32000), round(box[1] * 32000)
        outside = torch.ones_like(clean, dtype=torch.bool)
        outside[start:end] = False
        assert clean[outside].abs().max() == 0
        # Distractors add energy away from the event and leave the event itself untouched
        # (up to the peak normalisation's scale).
        assert busy[outside].pow(2).sum() > 1e-3 * busy.pow(2).sum()
        event_clean, event_busy = clean[start:end], busy[start:end]
        scale = event_busy.abs().max() / event_clean.abs().max()
        assert torch.allclose(event_busy, event_clean * scale, atol=1e-5)


def test_snr_sets_background_level() -> None:
    clips = _dataset(snr_db=10.0, n_distractors=0, padded_share=0.0, clean_share=0.0,
                     clips_per_class={"test": 2}).load_split("test")
    for waveform, box in zip(clips.waveforms, clips.evidence.tolist()):
        start, end = round(box[0] * 32000), round(box[1] * 32000)
        outside = torch.cat([waveform[:start], waveform[end:]])
        event_plus_noise_power = waveform[start:end].pow(2).mean()
        noise_power = outside.pow(2).mean()
        snr_db = 10 * torch.log10((event_plus_noise_power - noise_power) / noise_power).item()
        assert abs(snr_db - 10.0) < 1.5


def _shift_invariant_features(clips: ClipSet) -> torch.Tensor:
    """(N, D) features a linear model can use whatever the event's time and frequency: the
    log-mel profile averaged and maxed over time, plus the magnitude of the 2-D Fourier transform
    of the log-mel image (unchanged by shifts, but tells rising from falling patterns)."""
    n_fft = 1024
    mel = torch.from_numpy(
        librosa.filters.mel(sr=clips.sample_rate, n_fft=n_fft, n_mels=48, fmin=50, fmax=7500)).float()
    power = torch.stft(clips.waveforms, n_fft, n_fft // 2, window=torch.hann_window(n_fft), return_complex=True).abs() ** 2
    log_mel = torch.log(mel @ power + 1e-8)
    # The median over time is the stationary background; only what stands out of it matters.
    foreground = (log_mel - log_mel.median(dim=-1, keepdim=True).values).clamp(min=0)
    modulation = torch.fft.fft2(foreground).abs()
    modulation = torch.cat([modulation[:, :8, :48], modulation[:, :8, -48:]], dim=-1)
    return torch.cat([foreground.mean(-1), foreground.amax(-1), torch.log(modulation + 1e-3).flatten(1)], dim=1)


def test_classes_are_separable_by_a_linear_model() -> None:
    dataset = _dataset(clips_per_class={"train": 40, "test": 20}, seed=7)
    train, test = dataset.load_split("train"), dataset.load_split("test")
    train_features, test_features = _shift_invariant_features(train), _shift_invariant_features(test)
    mean, std = train_features.mean(0), train_features.std(0) + 1e-6
    train_features, test_features = (train_features - mean) / std, (test_features - mean) / std

    weights = torch.zeros(train_features.shape[1], dataset.n_classes, requires_grad=True)
    bias = torch.zeros(dataset.n_classes, requires_grad=True)
    optimiser = torch.optim.LBFGS([weights, bias], max_iter=300, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(train_features @ weights + bias, train.labels)
        loss = loss + 1e-2 * weights.pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        predictions = (test_features @ weights + bias).argmax(dim=1)
    accuracy = (predictions == test.labels).float().mean().item()
    assert accuracy >= 0.9, f"linear model reached only {accuracy:.3f} test accuracy"


def _zero_frames(waveform: torch.Tensor, frame: int = 320) -> torch.Tensor:
    """(n_frames,) bool: 10 ms frames (at 32 kHz) that are exactly zero."""
    frames = waveform[: waveform.shape[0] // frame * frame].reshape(-1, frame)
    return (frames == 0).all(dim=1)


def test_padded_clips_are_digital_silence_outside_a_stretch_holding_the_event() -> None:
    clips = _dataset(padded_share=1.0, padded_silence=[0.15, 0.75], clean_share=0.0,
                     clips_per_class={"test": 4}).load_split("test")
    for waveform, box in zip(clips.waveforms, clips.evidence.tolist()):
        zero = _zero_frames(waveform)
        assert 0.12 <= zero.float().mean().item() <= 0.78
        recorded = (~zero).nonzero().flatten()
        # one contiguous stretch (zeros only before and after it) that holds the whole event
        assert not zero[recorded[0]:recorded[-1] + 1].any()
        assert recorded[0] * 0.01 <= box[0] and box[1] <= (recorded[-1] + 1) * 0.01
    none = _dataset(padded_share=0.0, clean_share=0.0, clips_per_class={"test": 4}).load_split("test")
    assert not any(_zero_frames(w).any() for w in none.waveforms)


def test_the_default_padded_share_matches_esc50() -> None:
    """A fifth of the clips, like the 148 of 735 shared ESC-50 clips with >= 5 % zero frames
    (clean clips, silent outside their events, are counted apart)."""
    clips = SyntheticClips(clips_per_class={"train": 40}, seed=0, clean_share=0.0).load_split("train")
    padded = sum(_zero_frames(w).float().mean().item() >= 0.05 for w in clips.waveforms)
    assert 0.14 <= padded / len(clips) <= 0.26, padded


def test_clean_clips_have_nothing_but_their_events() -> None:
    clean = _dataset(clean_share=1.0, padded_share=0.0, n_distractors=0, clips_per_class={"test": 2}).load_split("test")
    for waveform, box in zip(clean.waveforms, clean.evidence.tolist()):
        start, end = round(box[0] * 32000), round(box[1] * 32000)
        assert waveform[:start].abs().max() == 0 and waveform[end:].abs().max() == 0
