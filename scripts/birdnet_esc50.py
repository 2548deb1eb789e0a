"""BirdNET (``model=birdnet``) on the shared ESC-50 bird clips: the clip list, then what the runs show.

``clips`` writes ``data/birdnet_esc50/``: a link per clip of the chosen ESC-50 categories, named
``<rank>_<category>_<file>``, and ``clips.csv`` with a ``path`` column only (unlabelled clips:
BirdNET's classes are its species, not ESC-50's, so the runs' accuracies stay empty). Runs take
clips in name order, so the first clip of every category comes first and ``n_examples`` equal to
the number of categories gives one example of each.
Nothing is copied and nothing of it is committed (``data/`` is ignored).

``summary`` reads finished runs (their ``attributions.npz``, ``run.json``, ``summary.csv`` and
examples) and prints, per clip, BirdNET's top species on the clip as the run heard it and its own
confidence (sigmoid of the logit, recomputed on the clip from disk), and, per example clip and
binary mask, the masked WAV's RMS over the frames the mask keeps something in and over the frames
it removes whole, beside the original's over the same frames:

    python scripts/birdnet_esc50.py clips                 # -> data/birdnet_esc50/clips.csv
    python -m audiointerp.run model=birdnet data=folder data.csv=data/birdnet_esc50/clips.csv \\
        explainer=lime explainer.num_samples=200 n_examples=4 hydra.run.dir=outputs/birdnet/lime
    python scripts/birdnet_esc50.py summary outputs/birdnet/lime [outputs/birdnet/occlusion ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ESC50 = Path(os.environ.get("AUDIOINTERP_SHARED_DATA", REPO.parent / "shared" / "data")) / "esc50"
CATEGORIES = ("crow", "rooster", "hen", "chirping_birds")  # ESC-50's bird-ish classes
#: Where BirdNET has something to say: it names a crow species on every crow clip and Red Junglefowl
#: on most roosters, but agrees on no species for hens (median top confidence 0.12 over the 8 present).
DEFAULT_CATEGORIES = ("crow", "rooster", "chirping_birds")


def write_clips(esc50: Path, out: Path, categories: list[str], per_category: dict[str, int]) -> Path:
    """Links to the present clips of ``categories`` (at most ``per_category[c]`` each, in file order)
    and ``out/clips.csv``; returns the csv's path."""
    meta = pd.read_csv(esc50 / "meta" / "esc50.csv")
    present = {p.name for p in (esc50 / "audio").iterdir()}
    meta["file"] = meta["filename"].str.replace(".wav", ".flac", regex=False)
    meta = meta[meta["file"].isin(present)].sort_values("file")
    chosen = {c: list(meta[meta["category"] == c]["file"])[:per_category.get(c)] for c in categories}
    missing = [c for c, files in chosen.items() if not files]
    if missing:
        raise SystemExit(f"error: no clips of {', '.join(missing)} in {esc50}; expected ESC-50 categories")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for rank in range(max(len(files) for files in chosen.values())):  # first clip of every category first
        for category, files in chosen.items():
            if rank < len(files):
                name = f"{rank + 1}_{category}_{files[rank]}"  # clips are taken in name order
                link = out / name
                if link.is_symlink() or link.exists():
                    link.unlink()
                link.symlink_to((esc50 / "audio" / files[rank]).resolve())
                rows.append(name)
    with open(out / "clips.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path"])
        writer.writerows([r] for r in rows)
    return out / "clips.csv"


def rms(audio: np.ndarray, where: np.ndarray) -> float:
    """RMS of the samples of ``audio`` selected by the bool ``where``."""
    chosen = np.asarray(audio, dtype=np.float64)[where]
    return float(np.sqrt(np.mean(chosen ** 2))) if chosen.size else float("nan")


def db(value: float) -> str:
    return f"{20 * np.log10(value):6.1f}" if value > 0 else ("   n/a" if np.isnan(value) else "  -inf")


def summarise(run: Path, masks: list[str]) -> None:
    import torch

    from audiointerp.data.audio import load_audio
    from audiointerp.masks import make_masks
    from audiointerp.models.birdnet import BirdNet

    report = json.loads((run / "run.json").read_text())
    names = report["class_names"]
    saved = np.load(run / "attributions.npz", allow_pickle=False)
    config = (run / ".hydra" / "config.yaml").read_text()
    print(f"\n== {run}  explainer={report['run']['explainer']}  clips={report['n_clips']}  "
          f"accuracy={report['clean_accuracy']}")
    clip_ids = [str(c) for c in saved["clip_ids"]]
    probabilities = saved["probabilities"]
    csv_path = next(line.split(":", 1)[1].strip() for line in config.splitlines() if line.strip().startswith("csv:"))
    folder = (REPO / csv_path).parent if not Path(csv_path).is_absolute() else Path(csv_path).parent
    model = BirdNet(32000)
    waves = torch.stack([load_audio(folder / c, 32000, 5.0, True) for c in clip_ids])
    confidence = model.confidences(waves)
    by_category: dict[str, list[str]] = {}
    for i, clip in enumerate(clip_ids):
        top = int(probabilities[i].argmax())
        category = next(c for c in CATEGORIES + (clip.split("_")[1],) if clip.split("_", 1)[1].startswith(c + "_"))
        by_category.setdefault(category, []).append(
            f"{names[top].split('_')[1]} ({confidence[i, top]:.2f}, p={probabilities[i, top]:.2f})")
    for category, tops in by_category.items():
        print(f"  {category}: " + "; ".join(tops))
    summary = pd.read_csv(run / "summary.csv").set_index("mask")
    print("  mean over clips, per mask: FF (drop of p when the mask's region is removed), AD (drop when only it is kept, %), "
          "AI, Fid-In (top species kept from it alone), kept share")
    for mask in masks:
        if mask in summary.index:
            row = summary.loc[mask]
            print(f"    {mask:10s} FF {row['FF']:+.3f}  AD {row['AD']:.3f}  AI {row['AI']:.3f}  "
                  f"FidIn {row['FidIn']:.3f}  kept {row['kept']:.3f}")
    print("  examples: RMS (dBFS) of the masked WAV and of the original over frames the mask keeps something "
          "in / removes whole; BirdNET on the example WAVs as written (original, masked, complement)")
    for example in sorted(p for p in (run / "examples").iterdir() if p.is_dir()):
        index = clip_ids.index(example.name)
        explained = int(probabilities[index].argmax())
        attribution = torch.from_numpy(saved["attributions"][index:index + 1])
        original, rate = soundfile.read(example / "original.wav", dtype="float64")
        for mask in masks:
            wav = example / f"{mask}_masked.wav"
            if not wav.is_file():
                continue
            masked, _ = soundfile.read(wav, dtype="float64")
            complement, _ = soundfile.read(example / f"{mask}_unmasked.wav", dtype="float64")
            heard = model.confidences(torch.from_numpy(np.stack([original, masked, complement])).float())[:, explained]
            keep = make_masks(attribution.float(), [mask])[mask][0, 0].numpy() > 0.5  # (F, T)
            frames_kept = keep.any(axis=0)  # frames where the mask keeps any band
            hop = len(original) // (len(frames_kept) - 1)  # centred frames: frame t at sample t * hop
            samples_kept = frames_kept[np.clip(np.round(np.arange(len(original)) / hop).astype(int), 0, len(frames_kept) - 1)]
            print(f"    {example.name} {mask:8s} frames kept {frames_kept.mean():.2f}, bins kept {keep.mean():.2f}: "
                  f"masked {db(rms(masked, samples_kept))} / {db(rms(masked, ~samples_kept))}, "
                  f"original {db(rms(original, samples_kept))} / {db(rms(original, ~samples_kept))}; "
                  f"BirdNET's confidence in {names[explained].split('_')[1]} on the WAVs: original {heard[0]:.2f}, "
                  f"masked {heard[1]:.2f}, complement {heard[2]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    clips = commands.add_parser("clips", help="write data/birdnet_esc50/clips.csv and its links")
    clips.add_argument("--esc50", type=Path, default=DEFAULT_ESC50)
    clips.add_argument("--out", type=Path, default=REPO / "data" / "birdnet_esc50")
    clips.add_argument("--categories", nargs="+", default=list(DEFAULT_CATEGORIES))
    clips.add_argument("--per-category", default="crow=2,rooster=1,chirping_birds=1",
                       help="at most N clips of each category, e.g. crow=9,hen=2 (a category not named: all)")
    summary = commands.add_parser("summary", help="print what finished runs show")
    summary.add_argument("runs", nargs="+", type=Path)
    summary.add_argument("--masks", nargs="+", default=["bin", "topK_30"])
    arguments = parser.parse_args()
    if arguments.command == "clips":
        limits = dict(item.split("=") for item in arguments.per_category.split(",") if item)
        path = write_clips(arguments.esc50, arguments.out, arguments.categories, {k: int(v) for k, v in limits.items()})
        print(f"{sum(1 for _ in open(path)) - 1} clips: {path}")
    else:
        for run in arguments.runs:
            summarise(run, arguments.masks)


if __name__ == "__main__":
    main()
