"""``python -m audiointerp.run``: the Hydra app. It only composes the modules; no maths here."""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from audiointerp import masks, metrics, outputs, pipeline, resume, sanity, train
from audiointerp.atomic import file_lock
from audiointerp.augment import TrainingAugment
from audiointerp.data import SPLITS
from audiointerp.data.base import check_runnable
from audiointerp.devices import resolve_device
from audiointerp.errors import AudioInterpError, build, expect_int
from audiointerp.models import PRECISIONS, Classifier, build_model, check_precision, loads_pretrained
from audiointerp.models.panns import fetch_panns_checkpoint, load_panns_weights

log = logging.getLogger("audiointerp")

# A sweep job's folder (conf/config.yaml hydra.sweep.subdir); registered on import, so in every
# process a launcher runs jobs in, which all import this module to call the task.
OmegaConf.register_new_resolver("audiointerp.job_folder", resume.job_folder_name, replace=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Run:
    """What one run is made of, checked and built before anything is trained or explained."""

    cfg: DictConfig
    config: dict  # the resolved config as plain containers
    run_dir: Path
    choices: dict  # which option of each config group
    started: float  # perf_counter() at the start
    shard: tuple[int, int]
    fingerprint: str  # what the results are a function of (resume.run_sha256)
    device: torch.device
    feature: object
    dataset: object  # audiointerp.data.base.Dataset
    contaminate: object
    mask_names: list[str]
    explainer: object
    model: Classifier
    augment: TrainingAugment


def run(cfg: DictConfig) -> Path:
    started = time.perf_counter()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    choices = HydraConfig.get().runtime.choices  # which option of each config group
    config = OmegaConf.to_container(cfg, resolve=True)
    # Everything is checked before anything is trained, explained or written: a bad value costs
    # seconds. Options first, then what reads or fetches files (the data, the noise, a checkpoint).
    for option, minimum in (("batch_size", 1), ("eval_batch_size", 1), ("n_examples", 0), ("seed", 0)):
        expect_int(option, cfg[option], minimum)
    expect_int("train.epochs", cfg.train.epochs, 1)
    expect_int("train.batch_size", cfg.train.batch_size, 2)  # BatchNorm cannot train on one clip
    if isinstance(cfg.train.lr, bool) or not isinstance(cfg.train.lr, (int, float)) or not cfg.train.lr > 0:
        raise AudioInterpError(f"train.lr: expected a positive number, got {cfg.train.lr!r}")
    shard = resume.check_shard(cfg.shard.index, cfg.shard.count)
    if cfg.split not in SPLITS:
        raise AudioInterpError(f"split: expected one of {', '.join(SPLITS)}, got {cfg.split!r}")
    mask_names = masks.validate(list(cfg.mask.names), cfg.mask.ties, cfg.mask.silence_level)
    sanity.check_options(cfg.sanity, cfg.sanity_clips)
    for option in ("audio_metrics", "channels_last"):
        if not isinstance(cfg[option], bool):
            raise AudioInterpError(f"{option}: expected true or false, got {cfg[option]!r}")
    check_precision("train.precision", cfg.train.precision)
    check_precision("precision", cfg.precision)
    if cfg.model.get("pretrained") not in (None, "panns") and not loads_pretrained(cfg.model):  # AST: a hub id
        raise AudioInterpError(f"model.pretrained: expected null or panns, got {cfg.model.pretrained!r}")
    feature = build(cfg.feature)
    to_feature_units(cfg, feature)  # before anything reads ${mask.silence_level}
    augment = build_augment(cfg.train.get("augment"))
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    explainer = build(cfg.explainer)
    contaminate = build(cfg.noise)
    dataset = build(cfg.data)
    names_its_classes = _model_class_says(cfg.model, "classes_included")
    if names_its_classes and dataset.has_labels:
        raise AudioInterpError(f"model={choices.get('model')} names its own classes, which data={choices.get('data')}'s "
                               "labels are not; give it clips without labels (data=folder data.csv=FILE with a path "
                               "column only), each explained for its top class")
    if not names_its_classes:  # its own weights and classes: no checkpoint and no data.class_names needed
        trained = cfg.model.get("checkpoint") or _model_class_says(cfg.model, "weights_included")  # a TorchScript file
        check_runnable(dataset, trained, choices.get("data"))  # unlabelled data: a trained classifier only
    if dataset.split_size(cfg.split) == 0:
        raise AudioInterpError(f"split={cfg.split}: data={choices.get('data')} has no clips in it; expected at least one "
                               "to explain")
    contaminate.check()
    if explainer.needs_evidence and not getattr(dataset, "has_evidence", False):
        raise AudioInterpError(f"explainer={choices.get('explainer')}: needs clips with ground-truth evidence "
                               f"(data=synthetic); data={choices.get('data')} has none")
    model = build_model(cfg.model, feature=feature, n_classes=dataset.n_classes).to(device)
    model.set_precision(PRECISIONS[cfg.precision])  # as it will be explained: the explainer's check may read it
    explainer.check(model)
    checkpoint = cfg.model.get("checkpoint")
    if model.input_kind == "waveform":
        if not (checkpoint or model.weights_included):
            raise AudioInterpError("model.input=waveform: the runner trains spectrogram classifiers only; give the "
                                   "trained network as model.checkpoint=PATH or model=torchscript")
        if cfg.sanity:
            raise AudioInterpError("sanity: the sanity checks explain several clips per call, which a waveform "
                                   "classifier cannot (each clip needs its own phase); set sanity=false")
    if checkpoint:  # read now, so that a file that is no fitting checkpoint costs nothing
        train.load_checkpoint(model, to_absolute_path(checkpoint), train.cache_settings(config, dataset, model))

    # What the results are a function of: the config, and the content of the files it names by path.
    fingerprint = resume.run_sha256(config, {
        "data": dataset.identity(SPLITS), "noise": contaminate.identity(),
        "checkpoint": train.fingerprint(model) if checkpoint or model.weights_included else None,
        "network_source": model.source_sha256()})
    with resume.Occupancy(run_dir) as occupancy:
        if outputs.finished(run_dir, fingerprint):
            if occupancy.alone:  # a run killed between writing run.json and clearing its partial results
                shutil.rmtree(run_dir / resume.PARTIAL_DIR, ignore_errors=True)
            print(f"already complete: {run_dir.resolve()} (same configuration and inputs; delete the folder to "
                  "run it again)")
            return run_dir
        return _run(Run(cfg, config, run_dir, choices, started, shard, fingerprint, device, feature, dataset,
                        contaminate, mask_names, explainer, model, augment), occupancy.alone)


def _model_class_says(model_cfg: DictConfig, attribute: str) -> bool:
    """Whether the configured classifier's class sets ``attribute`` to True, read before it is built:
    ``weights_included`` (a TorchScript file, BirdNET: trained elsewhere, so clips without labels can
    be explained) or ``classes_included`` (BirdNET's species: no data.class_names needed, and
    labelled clips, of other classes, are no data for it; a TorchScript file names no classes)."""
    from hydra.utils import get_object

    try:
        return getattr(get_object(str(model_cfg.get("_target_"))), attribute, False) is True
    except Exception:  # noqa: BLE001 - build_model says in one line what is wrong with the target
        return False


def to_feature_units(cfg: DictConfig, feature) -> None:
    """``mask.silence_level`` is given in dB; from here on it is in the feature's own units (the same
    for a dB feature; ``ast_fbank``'s normalised log energy), so that masks, baselines, occlusion
    patches and training augmentations all set a bin to what inverts to silence. Everything that
    reads it through ``${mask.silence_level}`` is built after this; null (each clip's own minimum)
    stays null."""
    if cfg.mask.silence_level is not None:
        cfg.mask.silence_level = float(feature.level_from_db(cfg.mask.silence_level))


def build_augment(options) -> TrainingAugment:
    """``train.augment`` as the training step's augmentation (null: none), or a one-line error."""
    options = {} if options is None else dict(options)
    unknown = sorted(set(options) - {"mask_dropout", "spec_augment"})
    if unknown:
        raise AudioInterpError(f"train.augment: unknown key {unknown[0]!r}; expected mask_dropout and spec_augment")
    try:
        return TrainingAugment(**{k: None if v is None else dict(v) for k, v in options.items()})
    except TypeError as error:
        raise AudioInterpError(f"train.augment: {error}") from None


def _run(context: Run, alone: bool) -> Path:
    cfg, run_dir, device, feature, dataset, model = (context.cfg, context.run_dir, context.device, context.feature,
                                                     context.dataset, context.model)
    explainer, shard, fingerprint = context.explainer, context.shard, context.fingerprint

    def split_inputs(split: str):
        clips = dataset.load_split(split)
        return pipeline.log_spectrograms(feature, clips.waveforms, cfg.eval_batch_size, device,
                                         desc=f"{split} spectrograms"), clips.labels

    def load_train_valid():  # only called when a model must be trained, so a cache hit downloads nothing
        if cfg.model.get("pretrained") == "panns":
            load_panns_weights(model, fetch_panns_checkpoint(Path(to_absolute_path(cfg.model.pretrained_dir))))
        return (*split_inputs("train"), *split_inputs("valid"))

    model.set_precision(PRECISIONS[cfg.train.precision])  # training is fp32 unless asked
    checkpoint = cfg.model.get("checkpoint")
    if model.weights_included and not checkpoint:  # a TorchScript file: its own weights, never trained here
        path = cfg.model.get("path") or getattr(model.network, "model_file", None)  # null: the file the package ships
        source = train.ModelSource("file", Path(to_absolute_path(str(path))), {})
    else:
        source = train.obtain_model(
            model, checkpoint=checkpoint and to_absolute_path(checkpoint),
            cache_dir=Path(to_absolute_path(cfg.train.cache_dir)) if cfg.train.cache else None,
            settings=train.cache_settings(context.config, dataset, model),
            run_dir=run_dir, load_train_valid=load_train_valid, epochs=cfg.train.epochs, lr=cfg.train.lr,
            batch_size=cfg.train.batch_size, device=device, seed=cfg.seed, augment=context.augment)

    model.set_precision(PRECISIONS[cfg.precision])
    if explainer.needs_training_data:
        valid = split_inputs("valid") if explainer.needs_validation_data else ()
        explainer.prepare(model, *split_inputs("train"), *valid)

    clips = context.contaminate(dataset.load_split(cfg.split))
    store = resume.DiskStore(run_dir, resume.run_key(fingerprint, train.fingerprint(model)), alone=alone)
    batch_size = pipeline.clips_per_batch(model, cfg.batch_size)
    n_batches = -(-len(clips) // batch_size)
    batches = resume.shard_batches(n_batches, *shard)
    resumed = sum(store.has(b) for b in batches)
    if resumed:
        log.info("resuming: %d of this run's %d batches of clips were finished before", resumed, len(batches))
    results = pipeline.explain_and_score(
        model, explainer, feature, clips, mask_names=context.mask_names, silence_level=cfg.mask.silence_level,
        ties=cfg.mask.ties, batch_size=batch_size, eval_batch_size=cfg.eval_batch_size, device=device,
        n_examples=cfg.n_examples, on_example=outputs.ExampleWriter(run_dir, feature, feature.sample_rate),
        audio_metrics=cfg.audio_metrics, store=store, batches=batches, channels_last=cfg.channels_last)
    if results is None:
        done = sum(store.has(b) for b in range(n_batches))
        print(f"shard {shard[0]} of {shard[1]}: batches {batches.start}-{batches.stop - 1} done; {done} of {n_batches} "
              f"batches of {run_dir.resolve()} are; the shard that finishes the last one writes the results")
        return run_dir
    with file_lock(run_dir / resume.ASSEMBLY_LOCK):
        if outputs.finished(run_dir, fingerprint):  # another shard wrote them while this one waited
            return run_dir
        _write_results(context, clips, results, source, resumed)
        store.clear()
    return run_dir


def _write_results(context: Run, clips, results, source, resumed) -> None:
    """Every output file of a run whose clips are all explained; run.json last."""
    cfg, run_dir, choices, device, feature, model, explainer = (context.cfg, context.run_dir, context.choices,
                                                                context.device, context.feature, context.model,
                                                                context.explainer)
    fingerprint, contaminate, started = context.fingerprint, context.contaminate, context.started
    labelled = bool((clips.labels >= 0).all())  # unlabelled clips (label -1) have no accuracy: null in run.json
    explained_accuracy = (results.predicted == clips.labels).float().mean().item() if labelled else None
    if contaminate.name == "none" or not labelled:  # the explained clips are the clean ones, classified once already
        clean_accuracy = explained_accuracy
    else:
        clean = context.dataset.load_split(cfg.split)
        clean_probabilities = pipeline.classify_clips(model, feature, clean.waveforms, cfg.eval_batch_size, device)
        clean_accuracy = (clean_probabilities.argmax(dim=1) == clean.labels).float().mean().item()
    sanity_lines, sanity_summary = [], None
    if cfg.sanity:
        rows = sanity.check_clips(model, explainer, feature, clips, n_clips=cfg.sanity_clips, seed=cfg.seed,
                                  batch_size=cfg.batch_size, device=device)
        outputs.write_sanity(run_dir, rows)
        sanity_summary = sanity.summarise(rows)
        sanity_lines = sanity.verdict(repr(explainer), sanity_summary)

    outputs.write_metrics(run_dir, clips, results)
    outputs.write_localization(run_dir, clips, results)
    outputs.write_clip_scores(run_dir, clips, results)
    per_mask = outputs.summarise(results)
    identity = {"explainer": choices.get("explainer"), "model": choices.get("model"), "feature": choices.get("feature"),
                "data": choices.get("data"),
                "noise": choices.get("noise"), "mask_set": choices.get("mask"),
                "silence_level": context.config["mask"]["silence_level"],  # in dB, as configured
                "seed": cfg.seed}
    summary = outputs.write_summary(run_dir, per_mask, identity)
    # the data's classes, or a pretrained classifier's own where the clips have none (model=birdnet's species)
    class_names = list(clips.class_names) or list(getattr(model.network, "class_names", None) or [])
    warning = metrics.collapse_warning([m["predicted_masked"] for m in results.metrics.values()],
                                       [m["predicted_unmasked"] for m in results.metrics.values()], class_names)
    outputs.write_attributions(run_dir, clips, results)
    seconds = round(time.perf_counter() - started, 2)
    # How this process got its results; not part of them (run.json is the same however the model
    # was obtained, and whether the run was interrupted).
    provenance = {"model_source": source.kind, "model_path": str(source.path), "seconds": seconds,
                  "resumed_batches": resumed, "audio_seconds_per_clip": results.audio_seconds_per_clip,
                  "seconds_per_epoch": None if source.train_result is None
                  else round(source.train_result.seconds_per_epoch, 2)}
    outputs.write_json(run_dir / "provenance.json", provenance)
    report = {
        "run": identity, "run_sha256": fingerprint, "code_version": resume.code_version(),
        "split": cfg.split, "n_clips": len(clips), "class_names": class_names, "clean_accuracy": clean_accuracy,
        "explained_accuracy": explained_accuracy, "device": str(device), "precision": cfg.precision,
        "masks": {name: {k: row[k] for k in ("kept", "degenerate", "collapse_masked", "collapse_unmasked")}
                  for name, row in per_mask.items()},
        "collapse_warning": warning,
        # after the sanity checks, which randomise the model in place and restore it: a check that it did
        "model_sha256": train.fingerprint(model),
        "localization": outputs.localization_means(results) or None,
        "clip_scores": outputs.clip_score_means(results) or None,
        "sanity": sanity_summary, "sanity_lines": sanity_lines or None,
    }
    # from the checkpoint's metadata: the same whether trained here, resumed or taken from the cache
    report.update({k: source.metadata[k] for k in ("best_epoch", "best_valid_accuracy") if k in source.metadata})
    outputs.write_json(run_dir / "run.json", report)  # last: its presence says the run is complete
    print(f"{cfg.split} accuracy {outputs.percent(clean_accuracy)} (clean), {outputs.percent(explained_accuracy)} "
          f"(explained, noise={contaminate.name}); "
          f"model: {source.kind}; {seconds:.0f} s")
    if warning:
        print(warning)
    for line in sanity_lines:
        print(line)
    print(f"results: {run_dir.resolve()} (summary: {summary.resolve()})")


def _log_to_file(message: str) -> None:
    """``message`` into run.log (Hydra's file handler) only: the console gets it on stderr."""
    record = logging.LogRecord("audiointerp", logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    _log_to_file(message)
    sys.exit(2)


#: What a full disk, a read-only or unwritable folder look like; reported as one line, not a traceback.
_STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def _main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except AudioInterpError as error:
        _fail(str(error))
    except MissingMandatoryValue as error:  # a ??? in a config group (model=module's _target_, say)
        _fail(f"{error.full_key}: must be set (e.g. {error.full_key}=...); the config leaves it open")
    except OSError as error:
        if error.errno not in _STORAGE_ERRORS:
            raise
        what = "write" if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) else "access"
        _fail(f"cannot {what} {error.filename or 'the output folder'}: {(error.strerror or str(error)).lower()}")


def resume_arguments(arguments: list[str]) -> list[str]:
    """The command line of ``resume=PATH``: the overrides saved in PATH, into PATH again.

    PATH is a run folder (``.hydra/overrides.yaml``) or a sweep folder (``multirun.yaml``); other
    arguments are returned unchanged. A run's shards all save their own ``shard.*`` overrides into
    the folder they share, so those are dropped: the resumed run explains every batch still missing.
    """
    given = [a for a in arguments if a.startswith("resume=")]
    if not given:
        return arguments
    if len(arguments) != 1:
        raise AudioInterpError(f"resume: takes no other arguments (it re-runs the saved ones), got {' '.join(arguments)}")
    folder = Path(given[0].split("=", 1)[1])
    quoted = "'" + str(folder).replace("\\", "\\\\").replace("'", "\\'") + "'"
    if (folder / ".hydra" / "overrides.yaml").is_file():
        saved = OmegaConf.load(folder / ".hydra" / "overrides.yaml")
        return [*(o for o in saved if not o.lstrip("+~").startswith("shard.")), f"hydra.run.dir={quoted}"]
    if (folder / "multirun.yaml").is_file():
        saved = OmegaConf.load(folder / "multirun.yaml").hydra.overrides
        keep_hydra = [o for o in saved.hydra if not o.startswith(("hydra.sweep.dir=", "hydra.mode="))]
        return ["-m", *saved.task, *keep_hydra, f"hydra.sweep.dir={quoted}"]
    raise AudioInterpError(f"resume={folder}: expected a run folder (with .hydra/overrides.yaml) or a sweep "
                           "folder (with multirun.yaml)")


def check_output_folder(arguments: list[str]) -> None:
    """An AudioInterpError if the run's (or sweep's) folder cannot be created or written.

    Checked before Hydra starts: Hydra creates the folder and writes ``.hydra/`` into it first, and
    reports a failure there as a traceback.
    """
    key = "hydra.sweep.dir=" if {"-m", "--multirun"} & set(arguments) else "hydra.run.dir="
    given = [a.split("=", 1)[1].strip("'\"") for a in arguments if a.startswith(key)]
    folder = Path(given[-1].split("$", 1)[0] if given else "outputs")  # up to any ${now:...}
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise AudioInterpError(f"{key}{folder}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        reason = "read-only file system" if os.statvfs(existing).f_flag & os.ST_RDONLY else "permission denied"
        raise AudioInterpError(f"cannot write {folder}: {reason}")


def main() -> None:
    # A log line that cannot be written (a full disk) must not print a traceback of its own: the
    # error that caused it is reported as one line.
    logging.raiseExceptions = False
    try:
        sys.argv[1:] = resume_arguments(sys.argv[1:])
        check_output_folder(sys.argv[1:])
    except AudioInterpError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    _main()


if __name__ == "__main__":
    main()
