"""Log-power spectrogram features and their inversion back to audio.

Two features, both instantiated by Hydra (``_target_: audiointerp.features.LogMel`` or
``audiointerp.features.LogStft``):

- :class:`LogMel`: Hann-windowed centred STFT power, a Slaney-style mel filterbank
  (``librosa.filters.mel`` defaults: Slaney mel scale, Slaney area normalisation), then dB.
- :class:`LogStft`: the same STFT power in dB, one row per linear-frequency bin.

``forward`` returns a :class:`Spectrogram` that keeps the STFT phase and linear power next to
the dB model input, so that a masked dB spectrogram can be turned back into audio with
:meth:`SpectrogramFeature.inverse`, re-using the original phase.

dB values are ``10 * log10(power + AMIN)`` and are never clipped: a mask that pulls a bin to
-100 dB really means "silence", and inversion maps ``-100 dB`` back to exactly zero power.
"""

from __future__ import annotations

from dataclasses import dataclass

import librosa
import numpy as np
import torch
from torch import Tensor, nn

from audiointerp.errors import AudioInterpError

# Added to the power before the log so that digital silence gives a finite -100 dB.
AMIN = 1e-10

MEL_INVERSIONS: tuple[str, ...] = ("nnls", "gain", "pinv")

# Multiplicative updates can drive powers towards zero geometrically; on CPU, float32
# subnormals then make every later matmul very slow. Anything this small is far below AMIN
# and cannot change a dB value, so it is flushed to exactly zero.
_FLUSH_BELOW = 1e-20


def _as_float32_on(buffer: Tensor, device: torch.device) -> Tensor:
    """``buffer`` as float32 on ``device``, same shape; a no-op when it already is.

    Buffers follow ``module.to(...)``, which may have moved or cast them (e.g. to float64);
    computations stay float32 on the input's device regardless.
    """
    return buffer.to(device=device, dtype=torch.float32)


def _magnitude(power: Tensor) -> Tensor:
    """sqrt(max(power, 0)), with a zero gradient where the power is 0 (sqrt's is infinite there): a
    classifier of audio is differentiated through the inverse (``audiointerp.models.waveform``), and
    silent bins must not turn its gradients into NaN."""
    audible = power > 0
    return torch.where(audible, power, 1.0).sqrt() * audible


@dataclass
class Spectrogram:
    """A featurised batch, with what is needed to invert a (masked) copy of it.

    Attributes:
        log_db: (B, 1, F, T) float32 feature in dB, unclipped; the model input.
        phase: (B, K, T) complex64 unit phasors of the STFT, K = n_fft // 2 + 1 (1 where the
            STFT is exactly zero).
        power: (B, K, T) float32 linear STFT power |X|^2, unclipped.
        length: number of waveform samples per clip, so inversion returns the same length.
    """

    log_db: Tensor
    phase: Tensor
    power: Tensor
    length: int

    def select(self, index: int) -> Spectrogram:
        """Clip ``index`` as a batch of one: log_db (1, 1, F, T), phase/power (1, K, T)."""
        return Spectrogram(
            log_db=self.log_db[index : index + 1],
            phase=self.phase[index : index + 1],
            power=self.power[index : index + 1],
            length=self.length,
        )

    def take(self, index: Tensor) -> Spectrogram:
        """Clips ``index`` (M,) (repeats allowed) as a batch of M, e.g. to invert masked copies of many clips."""
        index = index.to(self.log_db.device)
        return Spectrogram(log_db=self.log_db[index], phase=self.phase[index], power=self.power[index],
                           length=self.length)

    def expand(self, batch_size: int) -> Spectrogram:
        """Repeat a batch of one ``batch_size`` times, e.g. to invert many masks of one clip.

        Returns views (no copy): log_db (batch_size, 1, F, T), phase/power (batch_size, K, T).
        """
        if self.log_db.shape[0] != 1:
            raise ValueError(f"expand: expected a batch of one clip, got {self.log_db.shape[0]}")
        return Spectrogram(
            log_db=self.log_db.expand(batch_size, -1, -1, -1),
            phase=self.phase.expand(batch_size, -1, -1),
            power=self.power.expand(batch_size, -1, -1),
            length=self.length,
        )


class SpectrogramFeature(nn.Module):
    """Shared STFT, dB conversion and phase-reusing inversion for the log features.

    Subclasses say how linear STFT power (K bins) maps to the F feature bins
    (:meth:`_bins_from_power`) and how feature-bin power maps back (:meth:`_power_from_bins`).

    The window and any matrices are non-persistent buffers, so they follow ``.to(device)``
    without appearing in a state dict; they are also moved to the input's device on the fly,
    so a CPU-constructed feature works on CUDA tensors.
    """

    window: Tensor

    def __init__(self, sample_rate: int, n_fft: int, win_length: int, hop_length: int) -> None:
        super().__init__()
        for option, value in (("sample_rate", sample_rate), ("n_fft", n_fft), ("win_length", win_length), ("hop_length", hop_length)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
                raise AudioInterpError(f"{option}: expected a positive integer, got {value!r}")
        if win_length > n_fft:
            raise AudioInterpError(f"win_length: expected at most n_fft={n_fft}, got {win_length}")
        if hop_length > win_length:
            # With gaps between windows the STFT cannot be inverted, which inversion relies on.
            raise AudioInterpError(f"hop_length: expected at most win_length={win_length}, got {hop_length}")
        self.sample_rate = int(sample_rate)
        self.n_fft = int(n_fft)
        self.win_length = int(win_length)
        self.hop_length = int(hop_length)
        self.register_buffer("window", torch.hann_window(self.win_length, dtype=torch.float32), persistent=False)

    # --- geometry -------------------------------------------------------------------------

    @property
    def n_linear_bins(self) -> int:
        """K, the number of one-sided STFT bins."""
        return self.n_fft // 2 + 1

    @property
    def n_bins(self) -> int:
        """F, the number of feature bins (rows of ``log_db``)."""
        raise NotImplementedError

    def n_frames(self, n_samples: int) -> int:
        """Number of frames T that ``forward`` gives for a clip of ``n_samples`` samples."""
        # torch.stft(center=True) pads n_fft // 2 on both sides, so frames sit at every hop.
        return 1 + int(n_samples) // self.hop_length

    def frame_times(self, n_frames: int) -> Tensor:
        """Centre time of each frame in seconds, shape (T,) float32, T = ``n_frames``."""
        return torch.arange(int(n_frames), dtype=torch.float32) * (self.hop_length / self.sample_rate)

    def bin_frequencies(self) -> Tensor:
        """Centre frequency of each feature bin in Hz, shape (F,) float32, increasing."""
        raise NotImplementedError

    def bin_edges(self) -> Tensor:
        """Lowest and highest frequency (Hz) each feature bin responds to, shape (F, 2) float32."""
        raise NotImplementedError

    @property
    def frame_half_width_s(self) -> float:
        """Half the analysis window in seconds: how far from its centre time a frame sees."""
        return self.win_length / 2 / self.sample_rate

    # --- forward --------------------------------------------------------------------------

    def forward(self, waveform: Tensor) -> Spectrogram:
        """Featurise a batch of clips.

        Args:
            waveform: (B, samples) float waveform; computed in float32 on its own device.

        Returns:
            :class:`Spectrogram` with ``log_db`` (B, 1, F, T), ``phase`` and ``power``
            (B, K, T), and ``length`` = samples.
        """
        if waveform.dim() != 2:
            raise ValueError(f"waveform: expected shape (B, samples), got {tuple(waveform.shape)}")
        n_samples = waveform.shape[-1]
        if n_samples <= self.n_fft // 2:
            # Reflect padding needs more samples than the padding it adds.
            raise AudioInterpError(
                f"waveform: expected more than n_fft // 2 = {self.n_fft // 2} samples per clip, got {n_samples}"
            )
        stft = self._stft(waveform.to(torch.float32))
        magnitude = stft.abs()
        power = magnitude.square()
        phase = torch.where(magnitude > 0, stft / magnitude.clamp_min(torch.finfo(torch.float32).tiny), torch.ones_like(stft))
        log_db = self._power_to_db(self._bins_from_power(power)).unsqueeze(1)
        return Spectrogram(log_db=log_db, phase=phase, power=power, length=n_samples)

    # --- inverse --------------------------------------------------------------------------

    def inverse(self, log_db: Tensor, spectrogram: Spectrogram) -> Tensor:
        """Turn a (masked) dB feature back into audio, re-using the original STFT phase.

        Args:
            log_db: (B, 1, F, T) dB feature, e.g. a masked copy of ``spectrogram.log_db``.
            spectrogram: the :class:`Spectrogram` that ``forward`` gave for the original clips;
                its phase (and, for some mel inversions, its power) is used.

        Returns:
            (B, samples) float32 waveform, samples = ``spectrogram.length``.
        """
        expected = tuple(spectrogram.log_db.shape)
        if tuple(log_db.shape) != expected:
            raise ValueError(f"log_db: expected shape {expected} (that of spectrogram.log_db), got {tuple(log_db.shape)}")
        bin_power = self._db_to_power(log_db.to(torch.float32).squeeze(1))
        linear_power = self._power_from_bins(bin_power, spectrogram)
        stft = _magnitude(linear_power) * spectrogram.phase.to(linear_power.device)
        return self._istft(stft, spectrogram.length)

    # --- subclass hooks -------------------------------------------------------------------

    def _bins_from_power(self, power: Tensor) -> Tensor:
        """Map STFT power (B, K, T) to feature-bin power (B, F, T)."""
        raise NotImplementedError

    def _power_from_bins(self, bin_power: Tensor, spectrogram: Spectrogram) -> Tensor:
        """Map feature-bin power (B, F, T) back to non-negative STFT power (B, K, T)."""
        raise NotImplementedError

    # --- shared helpers -------------------------------------------------------------------

    def _window_on(self, device: torch.device) -> Tensor:
        """The Hann window, shape (win_length,), on ``device``."""
        return _as_float32_on(self.window, device)

    def _stft(self, waveform: Tensor) -> Tensor:
        """(B, samples) float32 -> (B, K, T) complex64 centred, reflect-padded STFT."""
        return torch.stft(
            waveform,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self._window_on(waveform.device),
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )

    def _istft(self, stft: Tensor, length: int) -> Tensor:
        """(B, K, T) complex64 -> (B, length) float32, the inverse of :meth:`_stft`."""
        return torch.istft(
            stft,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self._window_on(stft.device),
            center=True,
            length=length,
        )

    @staticmethod
    def _power_to_db(power: Tensor) -> Tensor:
        """Power (any shape) -> ``10 log10(power + AMIN)`` dB, same shape, unclipped."""
        return 10.0 * torch.log10(power + AMIN)

    @staticmethod
    def _db_to_power(log_db: Tensor) -> Tensor:
        """dB (any shape) -> power, same shape; exact inverse of :meth:`_power_to_db`.

        Subtracting AMIN makes -100 dB (the dB of digital silence and of masked-out bins)
        map to zero power rather than to a 1e-10 floor that would be spread over many bins.
        """
        return (torch.pow(10.0, log_db / 10.0) - AMIN).clamp_min(0.0)


class LogStft(SpectrogramFeature):
    """Log-power STFT: ``10 log10(|STFT|^2 + 1e-10)`` with a centred Hann window.

    F = K = n_fft // 2 + 1 bins (257 with the defaults); a 5 s clip at 16 kHz gives
    (1, 257, 313). Inversion is exact up to float error: dB -> power -> magnitude, times the
    original phase, then ``torch.istft``.
    """

    def __init__(self, sample_rate: int = 16000, n_fft: int = 512, win_length: int = 512, hop_length: int = 256) -> None:
        super().__init__(sample_rate=sample_rate, n_fft=n_fft, win_length=win_length, hop_length=hop_length)

    @property
    def n_bins(self) -> int:
        return self.n_linear_bins

    def bin_frequencies(self) -> Tensor:
        """Frequency of each STFT bin in Hz, shape (K,) float32: 0 to sample_rate / 2."""
        return torch.arange(self.n_linear_bins, dtype=torch.float32) * (self.sample_rate / self.n_fft)

    def bin_edges(self) -> Tensor:
        """Each STFT bin's frequency ± half the bin spacing, shape (K, 2) float32."""
        centres = self.bin_frequencies()
        half_spacing = self.sample_rate / self.n_fft / 2
        return torch.stack([centres - half_spacing, centres + half_spacing], dim=1)

    def _bins_from_power(self, power: Tensor) -> Tensor:
        """Identity: (B, K, T) -> (B, K, T)."""
        return power

    def _power_from_bins(self, bin_power: Tensor, spectrogram: Spectrogram) -> Tensor:
        """Identity: (B, K, T) -> (B, K, T)."""
        return bin_power


class LogMel(SpectrogramFeature):
    """Log-mel power spectrogram.

    Centred Hann-window STFT power, a ``librosa.filters.mel`` filterbank (Slaney mel scale and
    Slaney area normalisation, i.e. librosa's defaults), then ``10 log10(mel + 1e-10)``
    unclipped. A 5 s clip at 32 kHz gives (1, 64, 501) with the defaults.

    Inversion maps mel power M (B, F, T) back to STFT power P (B, K, T), takes its square root
    as magnitude, and re-uses the original phase. With filterbank W (F, K), ``inversion`` is:

    - ``"nnls"`` (default): non-negative least squares, min ||W P - M||^2 over P >= 0, solved
      with ``nnls_iterations`` batched multiplicative updates ``P <- P * W^T M / W^T W P``
      (they keep P >= 0 and never increase the residual) warm-started from the ORIGINAL STFT
      power. The problem has far more unknowns (K) than equations (F); the warm start picks,
      among the many fits, one with the original fine structure within each mel band, so an
      unmodified input comes back exactly and a masked one sounds like the original with
      bands removed, instead of like band-limited noise. Because it is multiplicative, energy
      only goes where the original clip had some.
    - ``"gain"``: the mel-domain gain M / M_original is spread to STFT bins through the
      filterbank transpose normalised so each STFT bin's weights sum to 1, then multiplies the
      original STFT power. One closed-form step; near-identical results to ``"nnls"``.
    - ``"pinv"``: ``max(pinv(W) M, 0)``; needs no original power, but smears each band's
      energy over its bins, so even an unmodified input comes back with ~0.7 dB mel error,
      and kept bands leak energy into masked neighbours.

    STFT bins outside every filter (below ``f_min``, above ``f_max``) carry no information in
    the mel feature, so every inversion gives them zero power.
    """

    mel_filterbank: Tensor
    mel_to_linear_gain: Tensor
    mel_pseudo_inverse: Tensor

    def __init__(
        self,
        sample_rate: int = 32000,
        n_fft: int = 1024,
        win_length: int = 1024,
        hop_length: int = 320,
        n_mels: int = 64,
        f_min: float = 50.0,
        f_max: float = 14000.0,
        inversion: str = "nnls",
        nnls_iterations: int = 20,
    ) -> None:
        super().__init__(sample_rate=sample_rate, n_fft=n_fft, win_length=win_length, hop_length=hop_length)
        if not isinstance(n_mels, (int, np.integer)) or isinstance(n_mels, bool) or n_mels <= 0:
            raise AudioInterpError(f"n_mels: expected a positive integer, got {n_mels!r}")
        nyquist = self.sample_rate / 2
        if not 0.0 <= float(f_min) < float(f_max) <= nyquist:
            raise AudioInterpError(
                f"f_min/f_max: expected 0 <= f_min < f_max <= sample_rate / 2 = {nyquist:g}, got f_min={f_min}, f_max={f_max}"
            )
        if inversion not in MEL_INVERSIONS:
            raise AudioInterpError(f"inversion: expected one of {', '.join(MEL_INVERSIONS)}, got {inversion!r}")
        if not isinstance(nnls_iterations, (int, np.integer)) or isinstance(nnls_iterations, bool) or nnls_iterations < 1:
            # Zero updates would return the original power and ignore the input entirely.
            raise AudioInterpError(f"nnls_iterations: expected a positive integer, got {nnls_iterations!r}")
        self.n_mels = int(n_mels)
        self.f_min = float(f_min)
        self.f_max = float(f_max)
        self.inversion = inversion
        self.nnls_iterations = int(nnls_iterations)

        filterbank = librosa.filters.mel(
            sr=self.sample_rate, n_fft=self.n_fft, n_mels=self.n_mels, fmin=self.f_min, fmax=self.f_max, dtype=np.float64
        )
        empty = np.flatnonzero(filterbank.max(axis=1) <= 0)
        if empty.size:
            raise AudioInterpError(
                f"n_mels: {self.n_mels} bands between {self.f_min:g} and {self.f_max:g} Hz leave {empty.size} filters "
                f"empty at n_fft={self.n_fft}; expected fewer mel bands or a larger n_fft"
            )
        weight_per_linear_bin = filterbank.sum(axis=0, keepdims=True)
        mel_to_linear_gain = np.divide(
            filterbank, weight_per_linear_bin, out=np.zeros_like(filterbank), where=weight_per_linear_bin > 0
        ).T
        self.register_buffer("mel_filterbank", torch.from_numpy(filterbank).to(torch.float32), persistent=False)
        self.register_buffer("mel_to_linear_gain", torch.from_numpy(mel_to_linear_gain).to(torch.float32), persistent=False)
        self.register_buffer(
            "mel_pseudo_inverse", torch.from_numpy(np.linalg.pinv(filterbank)).to(torch.float32), persistent=False
        )

    @property
    def n_bins(self) -> int:
        return self.n_mels

    def bin_frequencies(self) -> Tensor:
        """Centre frequency of each mel band in Hz, shape (n_mels,) float32, increasing.

        These are the peaks of the triangular filters: the inner points of
        ``librosa.mel_frequencies(n_mels + 2, fmin=f_min, fmax=f_max)`` (Slaney scale).
        """
        edges = librosa.mel_frequencies(self.n_mels + 2, fmin=self.f_min, fmax=self.f_max)
        return torch.from_numpy(edges[1:-1].astype(np.float32))

    def bin_edges(self) -> Tensor:
        """The feet of each triangular mel filter in Hz, shape (n_mels, 2) float32."""
        edges = librosa.mel_frequencies(self.n_mels + 2, fmin=self.f_min, fmax=self.f_max).astype(np.float32)
        return torch.from_numpy(np.stack([edges[:-2], edges[2:]], axis=1))

    def _bins_from_power(self, power: Tensor) -> Tensor:
        """(B, K, T) STFT power -> (B, n_mels, T) mel power."""
        return torch.matmul(_as_float32_on(self.mel_filterbank, power.device), power)

    def _power_from_bins(self, bin_power: Tensor, spectrogram: Spectrogram) -> Tensor:
        """(B, n_mels, T) mel power -> (B, K, T) non-negative STFT power, per ``self.inversion``."""
        device = bin_power.device
        if self.inversion == "pinv":
            return torch.matmul(_as_float32_on(self.mel_pseudo_inverse, device), bin_power).clamp_min(0.0)
        original_power = spectrogram.power.to(device=device, dtype=torch.float32)
        if self.inversion == "gain":
            original_mel_power = self._bins_from_power(original_power)
            mel_gain = torch.where(
                original_mel_power > 0, bin_power / original_mel_power.clamp_min(torch.finfo(torch.float32).tiny), 0.0
            )
            return torch.matmul(_as_float32_on(self.mel_to_linear_gain, device), mel_gain) * original_power
        return self._nnls_multiplicative(bin_power, original_power)

    def _nnls_multiplicative(self, mel_power: Tensor, start: Tensor) -> Tensor:
        """Approximate argmin_{P >= 0} ||W P - M||^2 by multiplicative updates.

        Args:
            mel_power: (B, n_mels, T) target mel power M >= 0.
            start: (B, K, T) non-negative warm start (the original STFT power).

        Returns:
            (B, K, T) non-negative STFT power P.
        """
        filterbank = _as_float32_on(self.mel_filterbank, mel_power.device)
        filterbank_t = filterbank.T
        numerator = torch.matmul(filterbank_t, mel_power)
        # A bin whose bands are all silent (masked, or no band covers it) cannot take any energy;
        # zeroing it up front keeps masked regions silent whatever the iteration count.
        estimate = torch.where(numerator > 0, start, 0.0)
        for _ in range(self.nnls_iterations):
            # W^T (W P) rather than (W^T W) P: two thin matmuls instead of one K x K.
            denominator = torch.matmul(filterbank_t, torch.matmul(filterbank, estimate))
            # (the same values as dividing by the clamped denominator, and finite gradients where it is 0)
            ratio = numerator / torch.where(denominator > 0, denominator, 1.0)
            estimate = estimate * torch.where(denominator > 0, ratio, 0.0)
            estimate = torch.where(estimate < _FLUSH_BELOW, 0.0, estimate)
        return estimate

