"""Measure how well LogStft and LogMel invert, and how long they take, on real clips.

For each WAV clip (resampled to each feature's rate) prints:
- STFT round trip: SNR in dB of inverse(forward(x)) against x.
- Mel round trip, per inversion variant: mean |dB| difference between the input log-mel and
  the log-mel of the reconstructed audio.
- Masked mel (top 30 % of each clip's bins kept, the rest set to -100 dB), per variant: the
  same error on the kept bins, and how many dB quieter the masked-out bins became.
- Time per clip for forward and inverse, single-clip calls and one batched call.

Usage: python scripts/bench_features.py [--data DIR] [--device cpu|cuda] [--repeats N] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from audiointerp.data.audio import load_audio  # noqa: E402
from audiointerp.features import MEL_INVERSIONS, LogMel, LogStft, SpectrogramFeature  # noqa: E402

KEEP_FRACTION = 0.30
SILENCE_DB = -100.0


def load_clips(wav_paths: list[Path], sample_rate: int) -> torch.Tensor:
    """Mono WAVs resampled as the pipeline loads them (not normalised), cut to the shortest:
    (B, samples) float32."""
    clips = [load_audio(path, sample_rate, duration_s=None, peak_normalise=False) for path in wav_paths]
    length = min(len(clip) for clip in clips)
    return torch.stack([clip[:length] for clip in clips])


def snr_db(reference: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
    """(B, samples) x2 -> (B,) signal-to-error ratio in dB."""
    error = (estimate - reference).square().sum(-1)
    return 10 * torch.log10(reference.square().sum(-1) / error.clamp_min(1e-30))


def keep_top_bins(log_db: torch.Tensor, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1, F, T) -> (masked log_db, kept bool mask), both (B, 1, F, T); per-clip threshold."""
    flat = log_db.flatten(1)
    threshold = torch.quantile(flat, 1 - fraction, dim=1).view(-1, 1, 1, 1)
    kept = log_db >= threshold
    return torch.where(kept, log_db, torch.full_like(log_db, SILENCE_DB)), kept


def seconds_per_call(function: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Best-of-``repeats`` wall time of ``function`` in seconds (after one warm-up call)."""
    function()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def timings(feature: SpectrogramFeature, waveforms: torch.Tensor, repeats: int) -> tuple[list[float], list[float], float, float]:
    """Per-clip single-call forward/inverse seconds, then batched seconds per clip (forward, inverse)."""
    device = waveforms.device
    forward_single, inverse_single = [], []
    for index in range(waveforms.shape[0]):
        clip = waveforms[index : index + 1]
        spectrogram = feature(clip)
        forward_single.append(seconds_per_call(lambda: feature(clip), repeats, device))
        inverse_single.append(seconds_per_call(lambda: feature.inverse(spectrogram.log_db, spectrogram), repeats, device))
    batch_spectrogram = feature(waveforms)
    batch_size = waveforms.shape[0]
    forward_batched = seconds_per_call(lambda: feature(waveforms), repeats, device) / batch_size
    inverse_batched = (
        seconds_per_call(lambda: feature.inverse(batch_spectrogram.log_db, batch_spectrogram), repeats, device) / batch_size
    )
    return forward_single, inverse_single, forward_batched, inverse_batched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "samples", help="folder of WAV clips")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (best is reported)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    wav_paths = sorted(args.data.glob("*.wav"))
    if not wav_paths:
        sys.exit(f"no WAV files in {args.data}")
    device = torch.device(args.device)
    names = [path.stem for path in wav_paths]

    stft_feature = LogStft()
    mel_features = {name: LogMel(inversion=name) for name in MEL_INVERSIONS}
    stft_audio = load_clips(wav_paths, stft_feature.sample_rate).to(device)
    mel_audio = load_clips(wav_paths, mel_features["nnls"].sample_rate).to(device)

    with torch.no_grad():
        stft_spectrogram = stft_feature(stft_audio)
        stft_snr = snr_db(stft_audio, stft_feature.inverse(stft_spectrogram.log_db, stft_spectrogram)).cpu()

        mel_spectrogram = mel_features["nnls"](mel_audio)
        masked_db, kept = keep_top_bins(mel_spectrogram.log_db, KEEP_FRACTION)
        round_trip_error: dict[str, torch.Tensor] = {}
        kept_error: dict[str, torch.Tensor] = {}
        masked_drop: dict[str, torch.Tensor] = {}
        for name, feature in mel_features.items():
            reconstructed = feature(feature.inverse(mel_spectrogram.log_db, mel_spectrogram)).log_db
            round_trip_error[name] = (reconstructed - mel_spectrogram.log_db).abs().mean(dim=(1, 2, 3)).cpu()
            masked_reconstruction = feature(feature.inverse(masked_db, mel_spectrogram)).log_db
            difference = (masked_reconstruction - mel_spectrogram.log_db).cpu()
            kept_cpu = kept.cpu()
            kept_error[name] = torch.stack([difference[i][kept_cpu[i]].abs().mean() for i in range(len(names))])
            masked_drop[name] = torch.stack([-difference[i][~kept_cpu[i]].mean() for i in range(len(names))])

        stft_forward, stft_inverse, stft_forward_batch, stft_inverse_batch = timings(stft_feature, stft_audio, args.repeats)
        mel_timing = {name: timings(feature, mel_audio, args.repeats) for name, feature in mel_features.items()}

    print(f"device: {device}, torch {torch.__version__} ({torch.get_num_threads()} CPU threads), {len(names)} clips from {args.data}")
    print(f"LogStft {stft_feature.sample_rate} Hz n_fft={stft_feature.n_fft} hop={stft_feature.hop_length}; "
          f"LogMel {mel_features['nnls'].sample_rate} Hz n_fft={mel_features['nnls'].n_fft} "
          f"hop={mel_features['nnls'].hop_length} n_mels={mel_features['nnls'].n_mels} "
          f"nnls_iterations={mel_features['nnls'].nnls_iterations}")
    print()
    print("Round trip (unmasked): STFT SNR, and mel mean |dB error| per inversion")
    header = f"{'clip':<11}{'stft SNR dB':>12}" + "".join(f"{'mel ' + name + ' dB':>14}" for name in MEL_INVERSIONS)
    print(header)
    rows = names + ["mean"]
    for row, name in enumerate(rows):
        pick = (lambda values: values.mean()) if name == "mean" else (lambda values, r=row: values[r])
        line = f"{name:<11}{float(pick(stft_snr)):>12.2f}"
        line += "".join(f"{float(pick(round_trip_error[inv])):>14.4f}" for inv in MEL_INVERSIONS)
        print(line)
    print()
    print(f"Masked mel (top {KEEP_FRACTION:.0%} bins kept, rest {SILENCE_DB:g} dB): "
          "mean |dB error| on kept bins / mean dB drop on masked bins")
    print(f"{'clip':<11}" + "".join(f"{name + ' kept|drop':>22}" for name in MEL_INVERSIONS))
    for row, name in enumerate(rows):
        pick = (lambda values: values.mean()) if name == "mean" else (lambda values, r=row: values[r])
        print(f"{name:<11}" + "".join(
            f"{float(pick(kept_error[inv])):>13.3f} |{float(pick(masked_drop[inv])):>7.1f}" for inv in MEL_INVERSIONS
        ))
    print()
    print("Time per clip in ms (single-clip calls; last row: one batched call / clips)")
    print(f"{'clip':<11}{'stft fwd':>10}{'stft inv':>10}{'mel fwd':>10}" + "".join(f"{'mel inv ' + name:>14}" for name in MEL_INVERSIONS))
    for row, name in enumerate(names + ["mean", "batched"]):
        if name == "batched":
            values = [stft_forward_batch, stft_inverse_batch, mel_timing["nnls"][2]] + [mel_timing[inv][3] for inv in MEL_INVERSIONS]
        elif name == "mean":
            values = [np.mean(stft_forward), np.mean(stft_inverse), np.mean(mel_timing["nnls"][0])]
            values += [np.mean(mel_timing[inv][1]) for inv in MEL_INVERSIONS]
        else:
            values = [stft_forward[row], stft_inverse[row], mel_timing["nnls"][0][row]]
            values += [mel_timing[inv][1][row] for inv in MEL_INVERSIONS]
        widths = [10, 10, 10] + [14] * len(MEL_INVERSIONS)
        print(f"{name:<11}" + "".join(f"{1000 * value:>{width}.2f}" for value, width in zip(values, widths)))


if __name__ == "__main__":
    main()
