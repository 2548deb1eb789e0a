"""``python -m audiointerp.run``: the Hydra app. It only composes the modules; no maths here."""

from __future__ import annotations

import logging
import random
import sys
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from audiointerp import masks, metrics, outputs, pipeline, sanity, train
from audiointerp.data import SPLITS
from audiointerp.errors import AudioInterpError, build, expect_int
from audiointerp.models import build_model
from audiointerp.models.panns import fetch_panns_checkpoint, load_panns_weights

log = logging.getLogger("audiointerp")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AudioInterpError(f"device={name}: CUDA is not available on this machine (use device=cpu or auto)")
    return torch.device(name)


def run(cfg: DictConfig) -> Path:
    started = time.perf_counter()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    choices = HydraConfig.get().runtime.choices  # which option of each config group
    for option, minimum in (("batch_size", 1), ("eval_batch_size", 1), ("n_examples", 0), ("seed", 0)):
        expect_int(option, cfg[option], minimum)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    feature = build(cfg.feature)
    dataset = build(cfg.data)
    contaminate = build(cfg.noise)
    if cfg.split not in SPLITS:
        raise AudioInterpError(f"split: expected one of {', '.join(SPLITS)}, got {cfg.split!r}")
    mask_names = masks.validate(list(cfg.mask.names), cfg.mask.ties, cfg.mask.silence_level)
    sanity.check_options(cfg.sanity, cfg.sanity_clips)
    if not isinstance(cfg.audio_metrics, bool):
        raise AudioInterpError(f"audio_metrics: expected true or false, got {cfg.audio_metrics!r}")
    explainer = build(cfg.explainer)
    if explainer.needs_evidence and not getattr(dataset, "has_evidence", False):
        raise AudioInterpError(f"explainer={choices.get('explainer')}: needs clips with ground-truth evidence "
                               f"(data=synthetic); data={choices.get('data')} has none")
    model = build_model(cfg.model, n_bins=feature.n_bins, n_classes=dataset.n_classes).to(device)
    explainer.check(model)

    def split_inputs(split: str):
        clips = dataset.load_split(split)
        return pipeline.log_spectrograms(feature, clips.waveforms, cfg.eval_batch_size, device,
                                         desc=f"{split} spectrograms"), clips.labels

    if cfg.model.pretrained not in (None, "panns"):
        raise AudioInterpError(f"model.pretrained: expected null or panns, got {cfg.model.pretrained!r}")

    def load_train_valid():  # only called when a model must be trained, so a cache hit downloads nothing
        if cfg.model.pretrained == "panns":
            load_panns_weights(model, fetch_panns_checkpoint(Path(to_absolute_path(cfg.model.pretrained_dir))))
        return (*split_inputs("train"), *split_inputs("valid"))

    source = train.obtain_model(
        model, checkpoint=cfg.model.checkpoint and to_absolute_path(cfg.model.checkpoint),
        cache_dir=Path(to_absolute_path(cfg.train.cache_dir)) if cfg.train.cache else None,
        settings=train.cache_settings(OmegaConf.to_container(cfg, resolve=True), dataset),
        run_dir=run_dir, load_train_valid=load_train_valid,
        epochs=cfg.train.epochs, lr=cfg.train.lr, batch_size=cfg.train.batch_size, device=device, seed=cfg.seed)

    if explainer.needs_training_data:
        explainer.prepare(model, *split_inputs("train"))

    clean = dataset.load_split(cfg.split)
    clean_inputs = pipeline.log_spectrograms(feature, clean.waveforms, cfg.eval_batch_size, device)
    clean_accuracy = train.accuracy(model, clean_inputs, clean.labels, cfg.eval_batch_size, device)
    clips = contaminate(clean)
    results = pipeline.explain_and_score(
        model, explainer, feature, clips, mask_names=mask_names, silence_level=cfg.mask.silence_level,
        ties=cfg.mask.ties, batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size, device=device,
        n_examples=cfg.n_examples, on_example=outputs.ExampleWriter(run_dir, feature, feature.sample_rate),
        audio_metrics=cfg.audio_metrics)
    sanity_lines, sanity_summary = [], None
    if cfg.sanity:
        rows = sanity.check_clips(model, explainer, feature, clips, n_clips=cfg.sanity_clips, seed=cfg.seed,
                                  batch_size=cfg.batch_size, device=device)
        outputs.write_sanity(run_dir, rows)
        sanity_summary = sanity.summarise(rows)
        sanity_lines = sanity.verdict(repr(explainer), sanity_summary)

    outputs.write_metrics(run_dir, clips, results)
    outputs.write_localization(run_dir, clips, results)
    per_mask = outputs.summarise(results)
    identity = {"explainer": choices.get("explainer"), "feature": choices.get("feature"), "data": choices.get("data"),
                "noise": choices.get("noise"), "mask_set": choices.get("mask"), "silence_level": cfg.mask.silence_level,
                "model_source": source.kind, "seed": cfg.seed}
    summary = outputs.write_summary(run_dir, per_mask, identity)
    warning = metrics.collapse_warning([m["predicted_masked"] for m in results.metrics.values()],
                                       [m["predicted_unmasked"] for m in results.metrics.values()], clips.class_names)
    outputs.write_attributions(run_dir, clips, results)
    explained_accuracy = (results.predicted == clips.labels).float().mean().item()
    report = {
        "run": identity,
        "split": cfg.split, "n_clips": len(clips), "class_names": list(clips.class_names), "clean_accuracy": clean_accuracy,
        "explained_accuracy": explained_accuracy, "model_source": source.kind, "model_path": str(source.path),
        "seconds": round(time.perf_counter() - started, 2), "device": str(device),
        "masks": {name: {k: row[k] for k in ("kept", "degenerate", "collapse_masked", "collapse_unmasked")}
                  for name, row in per_mask.items()},
        "collapse_warning": warning,
        # after the sanity checks, which randomise the model in place and restore it: a check that it did
        "model_sha256": train.fingerprint(model),
        "localization": outputs.localization_means(results) or None,
        "audio_seconds_per_clip": results.audio_seconds_per_clip,
        "sanity": sanity_summary, "sanity_lines": sanity_lines or None,
    }
    if source.train_result is not None:
        report.update(best_epoch=source.train_result.best_epoch,
                      best_valid_accuracy=source.train_result.best_valid_accuracy,
                      seconds_per_epoch=round(source.train_result.seconds_per_epoch, 2))
    outputs.write_json(run_dir / "run.json", report)
    print(f"{cfg.split} accuracy {clean_accuracy:.2%} (clean), {explained_accuracy:.2%} (explained, noise={contaminate.name}); "
          f"model: {source.kind}; {report['seconds']:.0f} s")
    if warning:
        print(warning)
    for line in sanity_lines:
        print(line)
    print(f"results: {run_dir.resolve()} (summary: {summary.resolve()})")
    return run_dir


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except AudioInterpError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
