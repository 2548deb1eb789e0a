"""Throughput of every explainer, and of scoring its explanation, in clips per second.

For each model setting and explainer prints:
- attribution: clips/s of ``explainer.attribute`` on batches of ``--batch-size`` clips (target =
  the predicted class), after one warm-up batch; SHAP's ``prepare`` is not timed.
- evaluation: clips/s of scoring one clip as the pipeline does: the 14 masks of its attribution,
  then one forward of 29 spectrograms (original + 14 masked + 14 complements).

Settings: the tiny Cnn14 (width < 1) runs on the CPU; width 1.0 runs on ``--device``. Inputs are
5 s log-mel spectrograms (1, 64, 501): real clips with ``--audio DIR`` (WAV/FLAC, resampled to
32 kHz with librosa and turned into log-mel by ``audiointerp.features.LogMel``), else random
dB spectrograms (throughput does not depend on the values). Weights are random; the SHAP
background is ``--shap-per-class`` clips of each of ``--classes`` classes drawn from the inputs.

Usage: python scripts/bench_explainers.py [--clips N] [--device auto|cpu|cuda] [--lime-samples N]
       [--explainers lime shap ...] [--widths 0.0625 1.0] [--audio DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from audiointerp.explainers.base import Explainer  # noqa: E402
from audiointerp.explainers.captum_methods import IntegratedGradients, Occlusion, SmoothGrad  # noqa: E402
from audiointerp.explainers.gradcam import GradCam  # noqa: E402
from audiointerp.explainers.lime import Lime  # noqa: E402
from audiointerp.explainers.saliency import Saliency  # noqa: E402
from audiointerp.explainers.shap import DeepShap, GradientShap  # noqa: E402
from audiointerp.masks import MASK_NAMES, apply_mask, make_masks  # noqa: E402
from audiointerp.models import Cnn14  # noqa: E402

EXPLAINER_NAMES = ("saliency", "gradcam", "lime", "shap", "shap_gradient", "integrated_gradients", "smoothgrad",
                   "occlusion")
SILENCE_DB = -100.0
SAMPLE_RATE = 32000
CLIP_SECONDS = 5.0


def build_explainers(args: argparse.Namespace) -> dict[str, Callable[[], Explainer]]:
    """Row label -> explainer factory, with the configs' defaults except where options say."""
    return {
        "saliency": Saliency,
        "gradcam": GradCam,
        "lime": lambda: Lime(num_samples=args.lime_samples, batch_size=args.lime_batch, random_state=0),
        "lime (batch 10)": lambda: Lime(num_samples=args.lime_samples, batch_size=10, random_state=0),
        "shap": lambda: DeepShap(per_class=args.shap_per_class, seed=0, background_batch=args.shap_background_batch),
        "shap_gradient": lambda: GradientShap(per_class=args.shap_per_class, seed=0,
                                              n_samples=args.shap_gradient_samples),
        "integrated_gradients": lambda: IntegratedGradients(silence_level=SILENCE_DB, n_steps=32,
                                                            internal_batch_size=args.forward_batch),
        "smoothgrad": lambda: SmoothGrad(n_samples=16, samples_per_batch=max(1, args.forward_batch // args.batch_size)),
        "occlusion": lambda: Occlusion(silence_level=SILENCE_DB,
                                       perturbations_per_eval=max(1, args.forward_batch // args.batch_size)),
    }


def load_log_mels(folder: Path, n_clips: int) -> torch.Tensor:
    """Up to ``n_clips`` audio files of ``folder`` (repeated if fewer) -> (n_clips, 1, 64, 501) dB."""
    from audiointerp.data.audio import load_audio
    from audiointerp.features import LogMel

    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".wav", ".flac", ".ogg"})
    if not paths:
        sys.exit(f"error: no .wav/.flac/.ogg files in {folder}")
    waveforms = [load_audio(path, SAMPLE_RATE, CLIP_SECONDS, peak_normalise=False) for path in paths[:n_clips]]
    waveforms = [waveforms[i % len(waveforms)] for i in range(n_clips)]
    with torch.no_grad():
        return LogMel(sample_rate=SAMPLE_RATE)(torch.stack(waveforms)).log_db.float()


def synthetic_log_mels(n_clips: int, seed: int = 0) -> torch.Tensor:
    """(n_clips, 1, 64, 501) random dB spectrograms: -60 +- 15 dB with a louder band per clip."""
    generator = torch.Generator().manual_seed(seed)
    log_db = torch.randn(n_clips, 1, 64, 501, generator=generator) * 15 - 60
    for i in range(n_clips):
        low = int(torch.randint(0, 48, (1,), generator=generator))
        log_db[i, :, low:low + 16] += 30
    return log_db


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def predicted(model, clips: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.no_grad():  # not inference_mode: explainers use the target inside autograd graphs
        return torch.cat([model(clips[i:i + batch_size]).argmax(1) for i in range(0, len(clips), batch_size)])


def attribution_rate(model, explainer: Explainer, warm_up: torch.Tensor, clips: torch.Tensor, batch_size: int,
                     device: torch.device) -> tuple[float, torch.Tensor]:
    """clips/s of attribute() over ``clips`` (N, 1, F, T) in batches, and the (N, 1, F, T)
    attributions. On CUDA one untimed call on ``warm_up`` first builds cuDNN plans and fills
    the caching allocator; on the CPU there is little to warm and it would double the run."""
    if device.type == "cuda":
        explainer.attribute(model, warm_up, predicted(model, warm_up, batch_size))
    targets = predicted(model, clips, batch_size)
    synchronize(device)
    started = time.perf_counter()
    maps = [explainer.attribute(model, clips[i:i + batch_size], targets[i:i + batch_size])
            for i in range(0, len(clips), batch_size)]
    synchronize(device)
    return len(clips) / (time.perf_counter() - started), torch.cat(maps)


def evaluation_rate(model, clips: torch.Tensor, attributions: torch.Tensor, device) -> float:
    """clips/s of building the 14 masks and one forward of 29 spectrograms per clip."""

    def score(index: int) -> None:
        log_db = clips[index:index + 1]
        masks = make_masks(attributions[index:index + 1], MASK_NAMES)
        pairs = [apply_mask(log_db, mask, SILENCE_DB) for mask in masks.values()]
        stacked = torch.cat([log_db] + [masked for masked, _ in pairs] + [kept for _, kept in pairs])
        with torch.inference_mode():
            torch.softmax(model(stacked), dim=1).cpu()

    if device.type == "cuda":
        score(0)
    synchronize(device)
    started = time.perf_counter()
    for index in range(len(clips)):
        score(index)
    synchronize(device)
    return len(clips) / (time.perf_counter() - started)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=8, help="clips timed per explainer (on CUDA after a warm-up batch)")
    parser.add_argument("--batch-size", type=int, default=4, help="clips per attribute() call")
    parser.add_argument("--device", default="auto", help="device of the width-1.0 model: auto | cpu | cuda")
    parser.add_argument("--widths", type=float, nargs="+", default=[1 / 16, 1.0], help="Cnn14 widths")
    parser.add_argument("--explainers", nargs="+", default=list(EXPLAINER_NAMES), choices=EXPLAINER_NAMES)
    parser.add_argument("--lime-samples", type=int, default=1000, help="LIME perturbed spectrograms per clip")
    parser.add_argument("--lime-batch", type=int, default=256, help="LIME spectrograms per forward")
    parser.add_argument("--shap-per-class", type=int, default=2, help="SHAP background clips per class")
    parser.add_argument("--shap-background-batch", type=int, default=25,
                        help="SHAP background clips per shap call (attributions averaged over the chunks)")
    parser.add_argument("--shap-gradient-samples", type=int, default=200, help="shap_gradient evaluations per clip")
    parser.add_argument("--classes", type=int, default=50, help="classifier outputs (ESC-50: 50)")
    parser.add_argument("--forward-batch", type=int, default=128,
                        help="spectrograms per forward for IG, SmoothGrad and Occlusion")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--audio", type=Path, default=None, help="folder of clips to use instead of random input")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    warnings.filterwarnings("ignore", module="shap")
    if args.threads:
        torch.set_num_threads(args.threads)
    full_device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                               else ("cpu" if args.device == "auto" else args.device))
    n_background = args.shap_per_class * args.classes
    n_inputs = args.batch_size + args.clips  # warm-up batch + timed clips
    source = f"real clips from {args.audio}" if args.audio else "random dB spectrograms"
    inputs = load_log_mels(args.audio, n_inputs + n_background) if args.audio else synthetic_log_mels(
        n_inputs + n_background)
    clips, train_inputs = inputs[:n_inputs], inputs[n_inputs:]
    train_labels = torch.arange(n_background) % args.classes

    factories = build_explainers(args)
    rows = [name for name in factories if name.split(" ")[0] in args.explainers]
    print(f"input: {source}, (1, 64, 501) log-mel; {args.clips} timed clips, {args.batch_size} per attribute call; "
          f"{args.classes} classes; torch threads {torch.get_num_threads()}")
    print(f"lime: {args.lime_samples} samples, batch {args.lime_batch} (and 10); shap/shap_gradient: background "
          f"{n_background} clips (shap in chunks of {args.shap_background_batch}), shap_gradient {args.shap_gradient_samples} samples; IG 32 steps; SmoothGrad 16 samples; occlusion 8x20 "
          f"stride 4x10; forward batch {args.forward_batch}; evaluation: 14 masks + one forward of 29 spectrograms/clip")
    header = f"{'model':<22} {'device':<7} {'explainer':<22} {'attribution clips/s':>20} {'evaluation clips/s':>19}"
    print(header)
    print("-" * len(header))
    for width in args.widths:
        device = torch.device("cpu") if width < 1 else full_device
        torch.manual_seed(0)
        model = Cnn14(n_bins=64, n_classes=args.classes, width=width).eval().to(device)
        for name in rows:
            explainer = factories[name]()
            if explainer.needs_training_data:
                explainer.prepare(model, train_inputs.to(device), train_labels)
            timed = clips[args.batch_size:].to(device)
            rate, attributions = attribution_rate(model, explainer, clips[:args.batch_size].to(device), timed,
                                                  args.batch_size, device)
            evaluation = evaluation_rate(model, timed, attributions, device)
            print(f"{f'Cnn14 width {width:g}':<22} {device.type:<7} {name:<22} {rate:>20.3g} {evaluation:>19.3g}",
                  flush=True)
            del explainer, attributions
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
