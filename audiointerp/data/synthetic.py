"""The embedded default dataset: synthetic clips generated in code, deterministic from a seed.

Every clip holds one class-defining time–frequency event (a rising chirp, a harmonic stack, a
click train, ...) at a random time, over coloured background noise plus one or two short
distractor events drawn independently of the class. The event's bounding box is stored as
ground-truth evidence, so explanations can be scored on whether they point at the event.

All class events stay within ~100–6500 Hz and last 0.5–1.5 s, so they are visible both at
32 kHz and at 16 kHz sample rate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from numbers import Real

import numpy as np
import scipy.fft
import torch

from audiointerp.data import SPLITS, ClipSet, check_clips_per_class
from audiointerp.data.base import Dataset, check_split
from audiointerp.errors import AudioInterpError
from audiointerp.hashing import file_sha256

PEAK_LEVEL = 0.9
# Tonal events have no bandwidth of their own; the evidence box is widened by this much on each
# side so it covers the STFT main lobe (Hann: ±2 bins, ±62.5 Hz at 32 kHz / 1024 and at 16 kHz /
# 512) and the skirt beside it; a box that cut the skirt off would leave an isolated line that
# looks like no tone the classifier heard.
TONAL_HALF_BANDWIDTH_HZ = 100.0
# Onset/offset ramps keep the events' spectral splatter small, so the evidence boxes stay tight.
EVENT_RAMP_S = 0.03
# Margin (s) kept at both clip edges and between the class event and distractors.
EVENT_GAP_S = 0.05
MIN_SAMPLE_RATE = 16000
# Room for the longest (1.5 s) class event plus distractors beside it.
MIN_DURATION_S = 2.0
WAVETABLE_SIZE = 8192
# Clips whose background noise is synthesised by one batched inverse FFT.
BACKGROUND_BATCH = 32


@dataclass(frozen=True)
class ClassEvent:
    """One class: its name, event-length range (s) and a synthesiser.

    ``synthesize(rng, n_samples, sample_rate)`` returns ``(signal, (f_low_hz, f_high_hz))`` with
    ``signal`` a float64 array of shape (n_samples,) and the frequency span of the event.
    """

    name: str
    duration_range_s: tuple[float, float]
    synthesize: Callable[[np.random.Generator, int, int], tuple[np.ndarray, tuple[float, float]]]


def _raised_cosine_envelope(n_samples: int, sample_rate: int, ramp_s: float = EVENT_RAMP_S) -> np.ndarray:
    """(n_samples,) envelope of ones with raised-cosine onset and offset ramps."""
    ramp = min(int(round(ramp_s * sample_rate)), n_samples // 2)
    envelope = np.ones(n_samples)
    if ramp > 0:
        rise = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
        envelope[:ramp] = rise
        envelope[n_samples - ramp:] = rise[::-1]
    return envelope


def _times(n_samples: int, sample_rate: int) -> np.ndarray:
    return np.arange(n_samples) / sample_rate


def _linear_chirp(f_start: float, f_end: float, n_samples: int, sample_rate: int, phase0: float) -> np.ndarray:
    t = _times(n_samples, sample_rate)
    length_s = n_samples / sample_rate
    phase = 2 * np.pi * (f_start * t + (f_end - f_start) * t**2 / (2 * length_s)) + phase0
    return np.sin(phase)


def _chirp_up(rng: np.random.Generator, n_samples: int, sample_rate: int):
    f_low = rng.uniform(300.0, 900.0)
    f_high = rng.uniform(2800.0, 6000.0)
    signal = _linear_chirp(f_low, f_high, n_samples, sample_rate, rng.uniform(0, 2 * np.pi))
    return signal, (f_low - TONAL_HALF_BANDWIDTH_HZ, f_high + TONAL_HALF_BANDWIDTH_HZ)


def _chirp_down(rng: np.random.Generator, n_samples: int, sample_rate: int):
    f_low = rng.uniform(300.0, 900.0)
    f_high = rng.uniform(2800.0, 6000.0)
    signal = _linear_chirp(f_high, f_low, n_samples, sample_rate, rng.uniform(0, 2 * np.pi))
    return signal, (f_low - TONAL_HALF_BANDWIDTH_HZ, f_high + TONAL_HALF_BANDWIDTH_HZ)


def _harmonic_stack(rng: np.random.Generator, n_samples: int, sample_rate: int):
    fundamental = rng.uniform(150.0, 350.0)
    n_harmonics = min(int(rng.integers(5, 11)), int(4000.0 // fundamental))
    harmonic_numbers = np.arange(1, n_harmonics + 1)
    # Falling amplitudes like a voiced sound; random phases avoid an identical waveform shape.
    amplitudes = harmonic_numbers ** -0.5
    phases = rng.uniform(0, 2 * np.pi, size=n_harmonics)
    # The stack is periodic in 1/fundamental, so one period in a fine table, read back by linear
    # interpolation, replaces n_harmonics full-length sines (the error is below -80 dB).
    table_phase = np.arange(WAVETABLE_SIZE + 1) / WAVETABLE_SIZE
    table = amplitudes @ np.sin(2 * np.pi * harmonic_numbers[:, None] * table_phase[None, :] + phases[:, None])
    cycle_position = (fundamental * _times(n_samples, sample_rate)) % 1.0
    signal = np.interp(cycle_position, table_phase, table)
    return signal, (fundamental - TONAL_HALF_BANDWIDTH_HZ,
                    n_harmonics * fundamental + TONAL_HALF_BANDWIDTH_HZ)


def _band_noise(rng: np.random.Generator, n_samples: int, sample_rate: int, f_low: float, f_high: float) -> np.ndarray:
    """(n_samples,) Gaussian noise with a flat spectrum between f_low and f_high Hz, zero outside."""
    frequencies = np.fft.rfftfreq(n_samples, d=1.0 / sample_rate)
    in_band = (frequencies >= f_low) & (frequencies <= f_high)
    spectrum = np.zeros(frequencies.shape[0], dtype=np.complex128)
    n_band = int(in_band.sum())
    spectrum[in_band] = rng.standard_normal(n_band) + 1j * rng.standard_normal(n_band)
    return np.fft.irfft(spectrum, n=n_samples)


def _noise_burst(rng: np.random.Generator, n_samples: int, sample_rate: int):
    centre = rng.uniform(1200.0, 4000.0)
    bandwidth = rng.uniform(600.0, 1500.0)
    f_low, f_high = centre - bandwidth / 2, centre + bandwidth / 2
    # An impact: the noise decays by 40-60 dB over the event, so a stationary rectangle of
    # band-limited noise (what masking leaves of a background) does not look like this class.
    decay_db = rng.uniform(40.0, 60.0)
    envelope = 10 ** (-decay_db / 20 * np.arange(n_samples) / n_samples)
    return _band_noise(rng, n_samples, sample_rate, f_low, f_high) * envelope, (f_low, f_high)


def _click_train(rng: np.random.Generator, n_samples: int, sample_rate: int):
    click_rate_hz = rng.uniform(6.0, 15.0)
    centre = rng.uniform(2000.0, 4500.0)
    # Gabor clicks: the power spectrum is Gaussian around `centre`, and ±2 amplitude-sigmas hold
    # over 99 % of it, which is what the evidence box spans.
    sigma_hz = rng.uniform(600.0, 900.0)
    sigma_s = 1.0 / (2 * np.pi * sigma_hz)
    half_width = int(np.ceil(4 * sigma_s * sample_rate))
    kernel_t = np.arange(-half_width, half_width + 1) / sample_rate
    kernel = np.exp(-0.5 * (kernel_t / sigma_s) ** 2) * np.cos(2 * np.pi * centre * kernel_t)
    period = sample_rate / click_rate_hz
    n_clicks = max(2, int((n_samples - 2 * half_width - 1) // period) + 1)
    jitter = rng.uniform(-0.05, 0.05, size=n_clicks) * period
    positions = half_width + np.arange(n_clicks) * period + jitter
    positions = np.clip(np.round(positions).astype(int), half_width, n_samples - half_width - 1)
    impulses = np.zeros(n_samples)
    impulses[positions] = 1.0
    signal = np.convolve(impulses, kernel, mode="same")
    return signal, (centre - 2 * sigma_hz, centre + 2 * sigma_hz)


def _am_tone(rng: np.random.Generator, n_samples: int, sample_rate: int):
    carrier = rng.uniform(500.0, 3000.0)
    modulation_hz = rng.uniform(3.0, 8.0)
    depth = rng.uniform(0.8, 1.0)
    t = _times(n_samples, sample_rate)
    gain = 1.0 - depth * (0.5 + 0.5 * np.cos(2 * np.pi * modulation_hz * t + rng.uniform(0, 2 * np.pi)))
    signal = gain * np.sin(2 * np.pi * carrier * t + rng.uniform(0, 2 * np.pi))
    return signal, (carrier - TONAL_HALF_BANDWIDTH_HZ, carrier + TONAL_HALF_BANDWIDTH_HZ)


def _tone_pair(rng: np.random.Generator, n_samples: int, sample_rate: int):
    f_lower = rng.uniform(400.0, 1500.0)
    f_upper = f_lower * rng.uniform(1.3, 2.6)
    t = _times(n_samples, sample_rate)
    signal = (np.sin(2 * np.pi * f_lower * t + rng.uniform(0, 2 * np.pi))
              + np.sin(2 * np.pi * f_upper * t + rng.uniform(0, 2 * np.pi)))
    return signal, (f_lower - TONAL_HALF_BANDWIDTH_HZ, f_upper + TONAL_HALF_BANDWIDTH_HZ)


def _vibrato_tone(rng: np.random.Generator, n_samples: int, sample_rate: int):
    carrier = rng.uniform(800.0, 3000.0)
    deviation_hz = rng.uniform(300.0, 600.0)
    rate_hz = rng.uniform(4.0, 7.0)
    t = _times(n_samples, sample_rate)
    phase = (2 * np.pi * carrier * t
             + (deviation_hz / rate_hz) * np.sin(2 * np.pi * rate_hz * t + rng.uniform(0, 2 * np.pi)))
    signal = np.sin(phase)
    return signal, (carrier - deviation_hz - TONAL_HALF_BANDWIDTH_HZ,
                    carrier + deviation_hz + TONAL_HALF_BANDWIDTH_HZ)


CLASS_EVENTS: tuple[ClassEvent, ...] = (
    ClassEvent("chirp_up", (0.6, 1.3), _chirp_up),
    ClassEvent("chirp_down", (0.6, 1.3), _chirp_down),
    ClassEvent("harmonic_stack", (0.5, 1.2), _harmonic_stack),
    ClassEvent("noise_burst", (0.5, 1.2), _noise_burst),
    ClassEvent("click_train", (0.7, 1.5), _click_train),
    ClassEvent("am_tone", (0.8, 1.5), _am_tone),
    ClassEvent("tone_pair", (0.5, 1.2), _tone_pair),
    ClassEvent("vibrato_tone", (0.8, 1.5), _vibrato_tone),
)
CLASS_NAMES: tuple[str, ...] = tuple(event.name for event in CLASS_EVENTS)


def _rms(signal: np.ndarray) -> float:
    return float(np.sqrt(np.mean(signal**2)) + 1e-12)


def _distractor(rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """A short generic event, drawn the same way whatever the class: a tone blip or a wideband
    noise blip, both far shorter (≤ 0.12 s) than any class event so neither mimics one."""
    if rng.random() < 0.5:
        n_samples = int(round(rng.uniform(0.04, 0.12) * sample_rate))
        t = _times(n_samples, sample_rate)
        signal = np.sin(2 * np.pi * rng.uniform(300.0, 6000.0) * t + rng.uniform(0, 2 * np.pi))
        return signal * np.hanning(n_samples)
    n_samples = int(round(rng.uniform(0.03, 0.10) * sample_rate))
    signal = _band_noise(rng, n_samples, sample_rate, 200.0, 7000.0)
    return signal * _raised_cosine_envelope(n_samples, sample_rate, ramp_s=0.005)


def _distractor_start(rng: np.random.Generator, n_samples: int, clip_samples: int,
                      event_start: int, event_end: int, gap: int) -> int:
    """Start sample for a distractor of ``n_samples`` that keeps clear of the class event, so the
    evidence box holds the class event alone (falls back to anywhere if there is no room)."""
    intervals = [(gap, event_start - gap - n_samples), (event_end + gap, clip_samples - gap - n_samples)]
    intervals = [(low, high) for low, high in intervals if high > low]
    if not intervals:
        return int(rng.integers(0, max(1, clip_samples - n_samples)))
    lengths = np.array([high - low for low, high in intervals], dtype=float)
    low, high = intervals[int(rng.choice(len(intervals), p=lengths / lengths.sum()))]
    return int(rng.integers(low, high))


def _log_frequencies(n_samples: int, sample_rate: int) -> np.ndarray:
    """(n_samples // 2 + 1,) float32 log of the rfft bin frequencies, floored at 50 Hz so that
    brown noise does not pile all its power into a DC drift."""
    frequencies = scipy.fft.rfftfreq(n_samples, d=1.0 / sample_rate)
    return np.log(np.maximum(frequencies, 50.0)).astype(np.float32)


def _coloured_noise_spectrum(rng: np.random.Generator, log_frequencies: np.ndarray) -> np.ndarray:
    """(n_bins,) complex64 rfft spectrum of noise with power ∝ f^-alpha, alpha drawn from [0, 2]
    (white to brown).

    Real and imaginary parts are uniform rather than Gaussian because uniform draws are several
    times cheaper; the inverse FFT sums so many bins that the waveform is Gaussian anyway, and
    with zero-mean, equal-variance, uncorrelated parts the noise is still stationary.
    """
    alpha = rng.uniform(0.0, 2.0)
    magnitude = np.exp(np.float32(-alpha / 2) * log_frequencies)
    magnitude[0] = 0.0
    parts = rng.random(2 * log_frequencies.shape[0], dtype=np.float32)
    parts *= 2
    parts -= 1
    return parts.view(np.complex64) * magnitude


def _as_range(option: str, value, cast: type) -> tuple:
    """A number or a [low, high] pair (list, tuple or Hydra ListConfig) as a (low, high) tuple."""
    if isinstance(value, Real) and not isinstance(value, bool):
        return cast(value), cast(value)
    try:
        items = list(value)
    except TypeError:
        items = []
    if len(items) != 2 or not all(isinstance(v, Real) and not isinstance(v, bool) for v in items):
        raise AudioInterpError(f"{option}: expected a number or a [low, high] pair, got {value!r}")
    low, high = cast(items[0]), cast(items[1])
    if low > high:
        raise AudioInterpError(f"{option}: expected low <= high, got {value!r}")
    return low, high


class SyntheticClips(Dataset):
    """Synthetic dataset: one class-defining time–frequency event per clip over noise.

    Args:
        sample_rate: Hz of the generated waveforms (>= 16000).
        duration_s: length of every clip in seconds (>= 2.0, room for a 1.5 s event).
        n_classes: how many of :data:`CLASS_NAMES` to use (the first ``n_classes``), 2..8.
        clips_per_class: split name -> clips per class, e.g. ``{"train": 40, "valid": 10, "test": 10}``.
        seed: base seed; each (seed, split, clip index) seeds its own generator.
        snr_db: class-event RMS over background RMS in dB, a number or a [low, high] range drawn per clip.
        background: add coloured background noise (turn off to get the events alone).
        n_distractors: distractor events per clip, a count or a [min, max] range (0 for none).
        distractor_level_db: distractor RMS relative to the class-event RMS in dB, number or range.
        padded_share: share of clips that are digital silence outside a stretch holding the event
            (ESC-50's zero-padded clips); ``padded_silence`` is the silent share of such a clip, a
            number or a [low, high] range.
        clean_share: share of clips without background noise: the events alone in digital silence.
    """

    #: Clips carry the box of their class event (``ClipSet.evidence``).
    has_evidence = True

    def __init__(
        self,
        sample_rate: int = 32000,
        duration_s: float = 5.0,
        n_classes: int = 8,
        clips_per_class: Mapping[str, int] | None = None,
        seed: int = 0,
        snr_db: float | tuple[float, float] = (3.0, 50.0),
        background: bool = True,
        n_distractors: int | tuple[int, int] = (1, 2),
        distractor_level_db: float | tuple[float, float] = (-8.0, -2.0),
        padded_share: float = 0.2,
        padded_silence: float | tuple[float, float] = (0.15, 0.75),
        clean_share: float = 0.3,
    ) -> None:
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or not 2 <= n_classes <= len(CLASS_EVENTS):
            raise AudioInterpError(
                f"data.n_classes: expected an integer from 2 to {len(CLASS_EVENTS)}, got {n_classes!r}")
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < MIN_SAMPLE_RATE:
            raise AudioInterpError(
                f"data.sample_rate: expected an integer >= {MIN_SAMPLE_RATE} Hz, got {sample_rate!r}")
        if isinstance(duration_s, bool) or not isinstance(duration_s, Real) or duration_s < MIN_DURATION_S:
            raise AudioInterpError(f"data.duration_s: expected a number >= {MIN_DURATION_S:g} s, got {duration_s!r}")
        if clips_per_class is None:
            clips_per_class = {"train": 40, "valid": 10, "test": 10}
        clips_per_class = check_clips_per_class(clips_per_class)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise AudioInterpError(f"data.seed: expected a non-negative integer, got {seed!r}")
        self.n_distractors_range = _as_range("data.n_distractors", n_distractors, int)
        if self.n_distractors_range[0] < 0:
            raise AudioInterpError(f"data.n_distractors: expected counts >= 0, got {n_distractors!r}")

        self.sample_rate = int(sample_rate)
        self.duration_s = float(duration_s)
        self.n_classes = n_classes
        self.class_names: list[str] = list(CLASS_NAMES[:n_classes])
        self.clips_per_class = clips_per_class
        self.seed = seed
        self.snr_db_range = _as_range("data.snr_db", snr_db, float)
        self.background = bool(background)
        self.distractor_level_db_range = _as_range("data.distractor_level_db", distractor_level_db, float)
        if isinstance(padded_share, bool) or not isinstance(padded_share, Real) or not 0 <= padded_share <= 1:
            raise AudioInterpError(f"data.padded_share: expected a number in [0, 1], got {padded_share!r}")
        self.padded_share = float(padded_share)
        if isinstance(clean_share, bool) or not isinstance(clean_share, Real) or not 0 <= clean_share <= 1:
            raise AudioInterpError(f"data.clean_share: expected a number in [0, 1], got {clean_share!r}")
        self.clean_share = float(clean_share)
        self.padded_silence_range = _as_range("data.padded_silence", padded_silence, float)
        if not (0 <= self.padded_silence_range[0] and self.padded_silence_range[1] < 1):
            raise AudioInterpError(f"data.padded_silence: expected shares in [0, 1), got {padded_silence!r}")

    @property
    def clip_samples(self) -> int:
        return int(round(self.duration_s * self.sample_rate))

    def identity(self, splits: tuple[str, ...] = SPLITS) -> dict:
        """What determines the clips of ``splits``: the generator's settings and its source (a change
        to how clips are drawn changes them without any setting changing).

        Each split draws from its own generators, seeded by (seed, split, clip index), so the count of
        a split not asked for changes no clip and is left out (:meth:`training_identity` leaves the
        test count out of the model cache key).
        """
        return {
            "dataset": "synthetic", "generator_sha256": file_sha256(__file__),
            "sample_rate": self.sample_rate, "duration_s": self.duration_s, "n_classes": self.n_classes,
            "clips_per_class": {split: self.clips_per_class.get(split) for split in splits},
            "seed": self.seed, "snr_db": list(self.snr_db_range), "background": self.background,
            "n_distractors": list(self.n_distractors_range),
            "distractor_level_db": list(self.distractor_level_db_range), "padded_share": self.padded_share,
            "padded_silence": list(self.padded_silence_range), "clean_share": self.clean_share,
        }

    def split_size(self, split: str) -> int:
        """How many clips ``load_split(split)`` returns (0 for a split without ``clips_per_class``)."""
        return self.clips_per_class.get(split, 0) * self.n_classes

    def load_split(self, split: str) -> ClipSet:
        """All clips of ``split`` ("train", "valid" or "test"), generated afresh.

        Returns a ClipSet with waveforms (N, clip_samples) float32 peak-normalised to 0.9,
        labels (N,) int64 balanced over classes, and evidence (N, 4) float32 boxes
        ``[t_start_s, t_end_s, f_low_hz, f_high_hz]`` of each clip's class event.
        """
        if check_split(split) not in self.clips_per_class:
            raise AudioInterpError(f"data.clips_per_class: has no entry for split {split!r}")
        split_index = SPLITS.index(split)
        per_class = self.clips_per_class[split]
        labels = np.tile(np.arange(self.n_classes), per_class)
        np.random.default_rng([self.seed, split_index]).shuffle(labels)
        n_clips, clip_samples = labels.shape[0], self.clip_samples

        waveforms = np.zeros((n_clips, clip_samples), dtype=np.float32)
        evidence = np.empty((n_clips, 4), dtype=np.float32)
        log_frequencies = _log_frequencies(clip_samples, self.sample_rate)
        for batch_start in range(0, n_clips, BACKGROUND_BATCH):
            batch = slice(batch_start, min(batch_start + BACKGROUND_BATCH, n_clips))
            batch_size = batch.stop - batch.start
            spectra = np.empty((batch_size, log_frequencies.shape[0]), dtype=np.complex64)
            background_rms = np.empty((batch_size, 1), dtype=np.float32)
            recorded: dict[int, np.ndarray] = {}  # row -> (clip_samples,) 0/1 span of a padded clip
            for row, clip_index in enumerate(range(batch.start, batch.stop)):
                # A generator per clip: a clip depends only on (seed, split, index, label).
                rng = np.random.default_rng([self.seed, split_index, clip_index])
                evidence[clip_index] = self._add_events(rng, CLASS_EVENTS[labels[clip_index]], waveforms[clip_index])
                if self.background:
                    spectra[row] = _coloured_noise_spectrum(rng, log_frequencies)
                    background_rms[row] = 10 ** (-rng.uniform(*self.snr_db_range) / 20)
                    # No draw when off, so clean_share=0 leaves every other clip as it was.
                    if self.clean_share > 0 and rng.random() < self.clean_share:
                        background_rms[row] = 0.0
                if rng.random() < self.padded_share:
                    recorded[row] = self._recorded_span(rng, clip_samples, evidence[clip_index])
            batch_waveforms = waveforms[batch]
            if self.background:
                noise = scipy.fft.irfft(spectra, n=clip_samples, axis=-1, workers=-1)
                noise *= background_rms / np.sqrt(np.mean(noise**2, axis=-1, keepdims=True))
                batch_waveforms += noise
            for row, span in recorded.items():
                batch_waveforms[row] *= span
            peaks = np.max(np.abs(batch_waveforms), axis=-1, keepdims=True)
            batch_waveforms *= PEAK_LEVEL / np.maximum(peaks, 1e-12)

        clip_ids = [f"synthetic-{split}-{i:04d}-{CLASS_NAMES[label]}" for i, label in enumerate(labels)]
        return ClipSet(
            waveforms=torch.from_numpy(waveforms),
            labels=torch.from_numpy(labels.astype(np.int64)),
            clip_ids=clip_ids,
            class_names=list(self.class_names),
            sample_rate=self.sample_rate,
            evidence=torch.from_numpy(evidence),
        )

    def _recorded_span(self, rng: np.random.Generator, clip_samples: int, box: np.ndarray) -> np.ndarray:
        """(clip_samples,) float32 0/1: 1 over a stretch that holds the class event, 0 elsewhere.

        Models ESC-50's clips that are shorter than 5 s and zero-padded: in the shared copy, 148 of
        735 clips (20 %) have at least 5 % of their 10 ms frames exactly zero, and in those the zero
        share has quartiles of 30 %, 50 % and 62 % (10th-90th percentile 15-74 %). A classifier
        that met digital silence in training treats a masked-out (-100 dB) region as familiar.
        """
        gap = int(round(EVENT_GAP_S * self.sample_rate))
        event_start, event_end = int(round(box[0] * self.sample_rate)), int(round(box[1] * self.sample_rate))
        shortest = min(clip_samples, event_end - event_start + 2 * gap)
        length = max(shortest, int(round((1 - rng.uniform(*self.padded_silence_range)) * clip_samples)))
        earliest, latest = max(0, event_end + gap - length), min(event_start - gap, clip_samples - length)
        start = int(rng.integers(earliest, max(earliest, latest) + 1))
        span = np.zeros(clip_samples, dtype=np.float32)
        span[start:start + length] = 1.0
        return span

    def _add_events(self, rng: np.random.Generator, class_event: ClassEvent, clip: np.ndarray) -> np.ndarray:
        """Write the class event (RMS 1 over its length) and the distractors into ``clip``.

        Args:
            clip: (clip_samples,) float32, zeros on entry; modified in place.
        Returns:
            (4,) float32 evidence box ``[t_start_s, t_end_s, f_low_hz, f_high_hz]`` of the event.
        """
        sample_rate, clip_samples = self.sample_rate, clip.shape[0]
        gap = int(round(EVENT_GAP_S * sample_rate))
        event_samples = int(round(rng.uniform(*class_event.duration_range_s) * sample_rate))
        event_start = int(rng.integers(gap, clip_samples - gap - event_samples + 1))
        event_end = event_start + event_samples

        event, (f_low, f_high) = class_event.synthesize(rng, event_samples, sample_rate)
        event = event * _raised_cosine_envelope(event_samples, sample_rate)
        clip[event_start:event_end] = event / _rms(event)

        n_distractors = int(rng.integers(self.n_distractors_range[0], self.n_distractors_range[1] + 1))
        for _ in range(n_distractors):
            distractor = _distractor(rng, sample_rate)
            level = 10 ** (rng.uniform(*self.distractor_level_db_range) / 20)
            start = _distractor_start(rng, distractor.shape[0], clip_samples, event_start, event_end, gap)
            clip[start:start + distractor.shape[0]] += level * distractor / _rms(distractor)

        return np.array([event_start / sample_rate, event_end / sample_rate, f_low, f_high], dtype=np.float32)
