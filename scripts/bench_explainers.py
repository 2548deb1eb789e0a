"""Seconds per clip of every explainer, and of scoring its explanation, in fp32 and bf16 side by side.

For each model setting, explainer and ``--precisions`` (``precision`` of a run: fp32, or the
model's passes under bf16 autocast; see ``audiointerp.models.PRECISIONS``) prints:
- attribution: s/clip of ``explainer.attribute`` on batches of ``--batch-size`` clips (target =
  the predicted class); SHAP's and L-MAC's ``prepare`` (the
  background; training the decoder, one epoch on the background clips here) is not timed.
- evaluation: s/clip of scoring one clip as the pipeline does: one forward of the clip (its class),
  the 14 masks of its attribution, then one forward of its 28 masked and complementary spectrograms.
- ``lime quickshift``: s/clip of LIME's segmentation alone (``Lime.segment``: min-max scaling and
  quickshift), which runs on the CPU without the model, so it is the same at every precision; the
  ``lime`` rows include it.
- bf16 against fp32, over the timed clips: Spearman rank correlation of the attributions (mean over
  clips), and the absolute difference of the FF and Fid-In means (over clips and the 14 masks).

Settings: the tiny Cnn14 (width < 1) runs on the CPU; width 1.0 runs on ``--device``. Inputs are
5 s log-mel spectrograms (1, 64, 501): real clips with ``--audio DIR`` (WAV/FLAC, resampled to
32 kHz with librosa and turned into log-mel by ``audiointerp.features.LogMel``), else random
dB spectrograms (throughput does not depend on the values). Weights are random; the SHAP
background is ``--shap-background`` clips, one per class, drawn from the inputs.

Usage: python scripts/bench_explainers.py [--clips N] [--device auto|cpu|cuda] [--lime-samples N]
       [--explainers lime shap ...] [--widths 0.0625 1.0] [--precisions fp32 bf16] [--audio DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import scipy.stats
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from audiointerp.errors import build  # noqa: E402
from audiointerp.explainers.base import Explainer  # noqa: E402
from audiointerp.explainers.captum_methods import IntegratedGradients, Occlusion, SmoothGrad  # noqa: E402
from audiointerp.explainers.gradcam import GradCam  # noqa: E402
from audiointerp.explainers.lime import Lime  # noqa: E402
from audiointerp.explainers.saliency import Saliency  # noqa: E402
from audiointerp.explainers.shap import DeepShap, GradientShap  # noqa: E402
from audiointerp.masks import MASK_NAMES, SILENCE_DB, apply_mask, make_masks  # noqa: E402
from audiointerp.metrics import score  # noqa: E402
from audiointerp.models import PRECISIONS, Cnn14, channels_last  # noqa: E402

#: Rows that time a step of an explainer that does not run the model (one measurement, every precision).
SEGMENTATION_ROWS = ("lime quickshift",)
EXPLAINER_NAMES = ("saliency", "gradcam", "lime", "shap", "shap_gradient", "integrated_gradients", "smoothgrad",
                   "occlusion", "lmac", "lmac_sparse")
SAMPLE_RATE = 32000
CLIP_SECONDS = 5.0


def build_explainers(args: argparse.Namespace) -> dict[str, Callable[[], Explainer]]:
    """Row label -> explainer factory, with the configs' defaults except where options say."""
    return {
        "saliency": Saliency,
        "gradcam": GradCam,
        **{("lime" if i == 0 else f"lime (batch {batch})"): (
            lambda batch=batch: Lime(num_samples=args.lime_samples, batch_size=batch, random_state=0,
                                     channels_last=not args.contiguous))
           for i, batch in enumerate(args.lime_batches)},
        "lime quickshift": lambda: Lime(random_state=0),
        # the additivity check is one sum per clip, and bf16 refuses it (DeepShap's docstring)
        "shap": lambda: DeepShap(per_class=1, seed=0, background_batch=args.shap_background_batch,
                                 check_additivity=False),
        "shap_gradient": lambda: GradientShap(per_class=1, seed=0,
                                              n_samples=args.shap_gradient_samples),
        "integrated_gradients": lambda: IntegratedGradients(silence_level=SILENCE_DB, n_steps=32,
                                                            internal_batch_size=args.forward_batch),
        "smoothgrad": lambda: SmoothGrad(n_samples=16, samples_per_batch=max(1, args.forward_batch // args.batch_size)),
        "occlusion": lambda: Occlusion(silence_level=SILENCE_DB,
                                       perturbations_per_eval=max(1, args.forward_batch // args.batch_size)),
        # one epoch on the background clips: explaining costs the same whatever the decoder learnt
        "lmac": lambda: configured("lmac", "explainer.epochs=1", "explainer.batch_size=2", "explainer.cache=false"),
        "lmac_sparse": lambda: configured("lmac_sparse", "explainer.epochs=1", "explainer.batch_size=2",
                                          "explainer.cache=false"),
    }


def configured(explainer: str, *overrides: str) -> Explainer:
    """``conf/explainer/<explainer>.yaml`` as a run composes it, with ``overrides``."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        return build(compose("config", overrides=[f"explainer={explainer}", *overrides]).explainer)


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


def attribution_seconds(model, explainer: Explainer, warm_up: torch.Tensor, clips: torch.Tensor, batch_size: int,
                        device: torch.device) -> tuple[float, torch.Tensor]:
    """s/clip of attribute() over ``clips`` (N, 1, F, T) in batches, and the (N, 1, F, T) float32
    attributions. On CUDA one untimed call on ``warm_up`` first builds cuDNN plans and fills the
    caching allocator; on the CPU there is little to warm and it would double the run."""
    if device.type == "cuda":
        explainer.attribute(model, warm_up, predicted(model, warm_up, batch_size))
    targets = predicted(model, clips, batch_size)
    synchronize(device)
    started = time.perf_counter()
    maps = [explainer.attribute(model, clips[i:i + batch_size], targets[i:i + batch_size]).detach().float()
            for i in range(0, len(clips), batch_size)]
    synchronize(device)
    return (time.perf_counter() - started) / len(clips), torch.cat(maps)


def segmentation_seconds(explainer: Lime, clips: torch.Tensor) -> float:
    """s/clip of LIME's segmentation of each of ``clips`` (N, 1, F, T)."""
    started = time.perf_counter()
    for clip in clips:
        explainer.segment(clip[0])
    return (time.perf_counter() - started) / len(clips)


def evaluation_seconds(model, clips: torch.Tensor, attributions: torch.Tensor, device,
                       in_channels_last: bool) -> tuple[float, dict[str, float]]:
    """s/clip of scoring as the pipeline does (its passes channels-last unless told not to), and the
    FF and Fid-In means over clips and masks."""
    scores: dict[str, list[torch.Tensor]] = {"FF": [], "FidIn": []}

    def evaluate(index: int) -> None:
        log_db = clips[index:index + 1]
        with torch.inference_mode(), channels_last(model, in_channels_last):
            p = torch.softmax(model(log_db), dim=1)
        masks = make_masks(attributions[index:index + 1], MASK_NAMES)
        pairs = [apply_mask(log_db, mask, SILENCE_DB) for mask in masks.values()]
        with torch.inference_mode(), channels_last(model, in_channels_last):
            variants = torch.softmax(model(torch.cat([m for m, _ in pairs] + [k for _, k in pairs])), dim=1)
        for position, mask in enumerate(masks.values()):
            columns = score(p, variants[position:position + 1], variants[len(masks) + position:][:1], mask)
            for name in scores:
                scores[name].append(columns[name].float().cpu())

    if device.type == "cuda":
        evaluate(0)
        scores = {name: [] for name in scores}
    synchronize(device)
    started = time.perf_counter()
    for index in range(len(clips)):
        evaluate(index)
    synchronize(device)
    return (time.perf_counter() - started) / len(clips), {k: torch.cat(v).mean().item() for k, v in scores.items()}


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over clips of the Spearman rank correlation of two (N, 1, F, T) attributions."""
    return sum(scipy.stats.spearmanr(x.flatten().numpy(), y.flatten().numpy())[0] for x, y in zip(a, b)) / len(a)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=4, help="clips timed per explainer and precision")
    parser.add_argument("--batch-size", type=int, default=4, help="clips per attribute() call")
    parser.add_argument("--device", default="auto", help="device of the width-1.0 model: auto | cpu | cuda")
    parser.add_argument("--widths", type=float, nargs="+", default=[1 / 16, 1.0], help="Cnn14 widths")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    parser.add_argument("--contiguous", action="store_true",
                        help="score, and run LIME's forwards, in the default memory format (a run's "
                             "channels_last=false), not channels-last")
    parser.add_argument("--explainers", nargs="+", default=list(EXPLAINER_NAMES), choices=EXPLAINER_NAMES)
    parser.add_argument("--lime-samples", type=int, default=100, help="LIME perturbed spectrograms per clip")
    parser.add_argument("--lime-batches", type=int, nargs="+", default=[10, 256],
                        help="LIME spectrograms per forward, one row each (the first: the config's default)")
    parser.add_argument("--shap-background", type=int, default=10, help="SHAP background clips (one per class)")
    parser.add_argument("--shap-background-batch", type=int, default=25,
                        help="SHAP background clips per shap call (attributions averaged over the chunks)")
    parser.add_argument("--shap-gradient-samples", type=int, default=200, help="shap_gradient evaluations per clip")
    parser.add_argument("--classes", type=int, default=50, help="classifier outputs (ESC-50: 50)")
    parser.add_argument("--forward-batch", type=int, default=128,
                        help="spectrograms per forward for IG, SmoothGrad and Occlusion")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--audio", type=Path, default=None, help="folder of clips to use instead of random input")
    args = parser.parse_args()
    if not 1 <= args.shap_background <= args.classes:
        parser.error(f"--shap-background: expected 1 to --classes ({args.classes}), got {args.shap_background}")
    return args


def main() -> None:
    args = parse_args()
    warnings.filterwarnings("ignore", module="shap")
    if args.threads:
        torch.set_num_threads(args.threads)
    full_device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                               else ("cpu" if args.device == "auto" else args.device))
    n_inputs = args.batch_size + args.clips  # warm-up batch + timed clips
    source = f"real clips from {args.audio}" if args.audio else "random dB spectrograms"
    inputs = load_log_mels(args.audio, n_inputs + args.shap_background) if args.audio else synthetic_log_mels(
        n_inputs + args.shap_background)
    clips, train_inputs = inputs[:n_inputs], inputs[n_inputs:]
    train_labels = torch.arange(args.shap_background)  # one clip of each of the first classes

    factories = build_explainers(args)
    rows = [name for name in factories if name.split(" ")[0] in args.explainers]
    print(f"input: {source}, (1, 64, 501) log-mel; {args.clips} timed clips, {args.batch_size} per attribute call; "
          f"{args.classes} classes; torch threads {torch.get_num_threads()}; scoring passes "
          f"{'contiguous' if args.contiguous else 'channels-last'}")
    print(f"lime: {args.lime_samples} samples, batch {' and '.join(map(str, args.lime_batches))}; shap/shap_gradient: background "
          f"{args.shap_background} clips (shap in chunks of {args.shap_background_batch}), shap_gradient "
          f"{args.shap_gradient_samples} samples; IG 32 steps; SmoothGrad 16 samples; occlusion 8x20 stride 4x10; "
          f"forward batch {args.forward_batch}; evaluation: 1 forward + 14 masks + one forward of 28 spectrograms/clip")
    precisions = args.precisions
    columns = [f"{kind} s/clip {precision}" for kind in ("attribution", "evaluation") for precision in precisions]
    compared = "fp32" in precisions and len(precisions) > 1
    agreement = ["Spearman", "|dFF|", "|dFidIn|"] if compared else []
    header = f"{'model':<18} {'device':<6} {'explainer':<21} " + " ".join(f"{c:>24}" for c in columns) + "".join(
        f" {c:>9}" for c in agreement)
    print(header)
    print("-" * len(header))
    for width in args.widths:
        device = torch.device("cpu") if width < 1 else full_device
        torch.manual_seed(0)
        model = Cnn14(n_bins=64, n_classes=args.classes, width=width).eval().to(device)
        for name in rows:
            if name in SEGMENTATION_ROWS:
                value = segmentation_seconds(factories[name](), clips[args.batch_size:])
                print(f"{f'Cnn14 width {width:g}':<18} {'cpu':<6} {name:<21} " + " ".join(
                    [f"{value:>24.3g}" for _ in precisions] + [f"{'-':>24}" for _ in precisions]), flush=True)
                continue
            seconds: dict[str, list[float]] = {"attribution": [], "evaluation": []}
            maps, means = {}, {}
            for precision in precisions:
                model.set_precision(PRECISIONS[precision])
                explainer = factories[name]()
                if explainer.needs_training_data:
                    valid = (train_inputs.to(device), train_labels) if explainer.needs_validation_data else ()
                    explainer.prepare(model, train_inputs.to(device), train_labels, *valid)
                timed = clips[args.batch_size:].to(device)
                attribution, maps[precision] = attribution_seconds(
                    model, explainer, clips[:args.batch_size].to(device), timed,
                    args.batch_size, device)
                evaluation, means[precision] = evaluation_seconds(model, timed, maps[precision], device,
                                                                  not args.contiguous)
                seconds["attribution"].append(attribution)
                seconds["evaluation"].append(evaluation)
                del explainer
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            line = f"{f'Cnn14 width {width:g}':<18} {device.type:<6} {name:<21} " + " ".join(
                f"{value:>24.3g}" for kind in ("attribution", "evaluation") for value in seconds[kind])
            if compared:
                other = next(p for p in precisions if p != "fp32")
                line += (f" {spearman(maps['fp32'].cpu(), maps[other].cpu()):>9.3f}"
                         f" {abs(means[other]['FF'] - means['fp32']['FF']):>9.3f}"
                         f" {abs(means[other]['FidIn'] - means['fp32']['FidIn']):>9.3f}")
            print(line, flush=True)
        model.set_precision(None)


if __name__ == "__main__":
    main()
