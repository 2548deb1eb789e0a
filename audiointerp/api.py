"""The Python API a notebook uses: explain a clip, evaluate an explainer over many, on any classifier.

``explain`` and ``evaluate`` compose the same configuration as ``python -m audiointerp.run`` (the
``conf/`` folder, Hydra's compose API: one source of configuration, the same group names and keys as
the command line) and run the same loop over clips (:func:`audiointerp.pipeline.explain_and_score`):
what a notebook gets is what a run writes, without a run folder.

Nothing here changes global state on import; Hydra is initialised only while a config is composed
and left as it was found (a Hydra app calling this keeps its own), and CUDA's deterministic mode is
set only while clips are explained on a GPU, then restored.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor, nn

from audiointerp import masks as masks_module
from audiointerp import outputs, pipeline, train
from audiointerp.data import ClipSet
from audiointerp.data.audio import load_audio
from audiointerp.errors import AudioInterpError, build, expect_int
from audiointerp.explainers import Explainer
from audiointerp.metrics import MASK_STATISTIC_NAMES, METRIC_NAMES
from audiointerp.models import PRECISIONS, check_precision

#: The configuration folder ``python -m audiointerp.run`` composes from (the repository's ``conf/``).
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

#: Columns of :attr:`Explanation.metrics`: the seven metrics, then the mask statistics.
EXPLANATION_COLUMNS: tuple[str, ...] = (*METRIC_NAMES, *MASK_STATISTIC_NAMES)

AudioInput = str | os.PathLike | Sequence[str | os.PathLike] | Tensor
ModelInput = nn.Module | str | os.PathLike


# --- configuration --------------------------------------------------------------------------------


def _choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def compose_config(overrides: Sequence[str] = ()) -> tuple[DictConfig, dict[str, Any]]:
    """The run's configuration for command-line ``overrides``, and which option of each group it chose.

    Composed with Hydra's compose API from :data:`CONF_DIR`, without a Hydra run; Hydra's global
    state is restored afterwards (so this works inside a Hydra app, and after it Hydra is as it was).

    Returns:
        (config without the ``hydra`` node, {group: chosen option}, e.g. {"explainer": "gradcam"}).
    Raises:
        AudioInterpError: the conf folder is missing, or an override names no group option or key.
    """
    if not (CONF_DIR / "config.yaml").is_file():
        raise AudioInterpError(f"audiointerp's configuration folder {CONF_DIR} (with config.yaml) is missing; "
                               "expected the package run from its repository (pip install -e .)")
    if isinstance(overrides, str):
        overrides = [overrides]
    if not all(isinstance(o, str) for o in overrides):
        raise AudioInterpError(f"overrides: expected command-line overrides as strings such as "
                               f"'explainer.n_steps=16', got {list(overrides)!r}")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    outer = GlobalHydra.instance()
    saved = outer.hydra if outer.is_initialized() else None
    outer.clear()  # initialize_config_dir refuses to nest; the caller's Hydra is put back below
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    except (HydraException, OmegaConfBaseException, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        missing = re.search(r"Could not find '(\w+)/", first)
        hint = f" (expected {missing[1]}= one of {', '.join(_choices(missing[1]))})" if missing else ""
        raise AudioInterpError(f"overrides: {first}{hint}") from None
    finally:
        if saved is not None:
            GlobalHydra.instance().initialize(saved)
    choices = {k: v for k, v in OmegaConf.to_container(cfg.hydra.runtime.choices).items() if "/" not in k}
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, choices


def get_explainer(name: str, feature: str = "mel", **options: Any) -> Explainer:
    """The explainer ``conf/explainer/<name>.yaml`` configures, with ``options`` changed; no Hydra run.

    Interpolations such as ``${seed}`` or ``${mask.silence_level}`` take the default config's values
    (0, -100 dB, converted to ``feature``'s units: pass the feature the explainer will see, e.g.
    ``feature="ast_fbank"``, so that a baseline or an occluded patch is that feature's silence); pass
    them as options to change them, e.g. ``get_explainer("lime", num_samples=200)``.

    Raises:
        AudioInterpError: an unknown name, or an option the explainer's config does not have.
    """
    if not isinstance(name, str) or name not in _choices("explainer"):
        raise AudioInterpError(f"explainer: expected one of {', '.join(_choices('explainer'))}, got {name!r}")
    if not isinstance(feature, str) or feature not in _choices("feature"):
        raise AudioInterpError(f"feature: expected one of {', '.join(_choices('feature'))}, got {feature!r}")
    cfg, _ = compose_config([f"explainer={name}", f"feature={feature}"])
    from audiointerp.run import to_feature_units  # lazily: run.py registers a resolver when imported

    to_feature_units(cfg, build(cfg.feature))
    unknown = [key for key in options if key not in cfg.explainer or key == "_target_"]
    if unknown:
        known = [k for k in cfg.explainer if k != "_target_"]
        raise AudioInterpError(f"get_explainer({name!r}): no option {', '.join(unknown)}; "
                               f"expected any of {', '.join(known) or 'none'}")
    for key, value in options.items():
        cfg.explainer[key] = value
    return build(cfg.explainer)


@dataclass
class _Setup:
    """What one call composes before touching audio or a model."""

    cfg: DictConfig
    choices: dict[str, Any]
    feature: Any
    explainer: Explainer
    explainer_name: str
    mask_names: list[str]
    device: torch.device
    overrides: list[str]
    silence_level_db: float | None  # as configured; cfg.mask.silence_level is in the feature's units


def _setup(explainer: str | Explainer, feature: str, overrides: Sequence[str]) -> _Setup:
    """Compose and check the configuration; build the feature and the explainer. Cheap: no audio, no model."""
    if isinstance(overrides, str):
        overrides = [overrides]
    overrides = list(overrides)
    if not isinstance(feature, str) or feature not in _choices("feature"):
        raise AudioInterpError(f"feature: expected one of {', '.join(_choices('feature'))}, got {feature!r}")
    given = isinstance(explainer, Explainer)
    if not given and (not isinstance(explainer, str) or explainer not in _choices("explainer")):
        raise AudioInterpError(f"explainer: expected one of {', '.join(_choices('explainer'))} or an Explainer, "
                               f"got {explainer!r}")
    cfg, choices = compose_config([*([] if given else [f"explainer={explainer}"]), f"feature={feature}", *overrides])
    for option, minimum in (("batch_size", 1), ("eval_batch_size", 1), ("seed", 0)):
        expect_int(option, cfg[option], minimum)
    mask_names = masks_module.validate(list(cfg.mask.names), cfg.mask.ties, cfg.mask.silence_level)
    for option in ("audio_metrics", "channels_last"):
        if not isinstance(cfg[option], bool):
            raise AudioInterpError(f"{option}: expected true or false, got {cfg[option]!r}")
    check_precision("precision", cfg.precision)
    name = repr(explainer) if given else explainer
    from audiointerp.run import to_feature_units  # lazily: run.py registers a resolver when imported

    built_feature = build(cfg.feature)
    silence_level_db = cfg.mask.silence_level
    to_feature_units(cfg, built_feature)
    built = explainer if given else build(cfg.explainer)
    if built.needs_evidence:
        raise AudioInterpError(f"explainer={name}: reads each clip's ground-truth evidence, which explain() and "
                               "evaluate() do not have; use python -m audiointerp.run data=synthetic")
    if built.needs_training_data and not given:
        raise AudioInterpError(
            f"explainer={name}: learns from training clips first; prepare it and pass it: "
            f"e = audiointerp.get_explainer({name!r}); e.prepare(model, train_inputs, train_labels); explain(..., explainer=e)")
    return _Setup(cfg=cfg, choices=choices, feature=built_feature, explainer=built, explainer_name=name,
                  mask_names=mask_names, device=_device(cfg.device), overrides=overrides,
                  silence_level_db=silence_level_db)


def _device(name: str) -> torch.device:
    from audiointerp.run import resolve_device  # lazily: run.py registers a resolver when imported

    with _deterministic_kernels():  # resolve_device turns them on for CUDA; explaining does that again
        return resolve_device(name)


@contextlib.contextmanager
def _deterministic_kernels(device: torch.device | None = None) -> Iterator[None]:
    """On a CUDA ``device``, deterministic kernels inside the block, as a run has; torch's settings
    are put back afterwards, so the caller's process is left as it was."""
    from audiointerp import resume

    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    try:
        if device is not None and device.type == "cuda":
            resume.use_deterministic_cuda_kernels()
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark


# --- inputs ---------------------------------------------------------------------------------------


def _audio_paths(audio: Any) -> list[Path] | None:
    """``audio`` as a list of paths, None for a tensor; one line for anything else or a missing file."""
    if isinstance(audio, Tensor):
        return None
    if isinstance(audio, (str, os.PathLike)):
        paths = [Path(audio)]
    elif isinstance(audio, Sequence) and audio and all(isinstance(a, (str, os.PathLike)) for a in audio):
        paths = [Path(a) for a in audio]
    else:
        raise AudioInterpError(f"audio: expected a WAV/FLAC path, a non-empty list of paths or a waveform tensor "
                               f"(samples,) or (B, samples), got {type(audio).__name__}")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise AudioInterpError(f"audio: no such file {', '.join(missing)}")
    return paths


def _check_waveforms(audio: Tensor, sample_rate: int) -> Tensor:
    if not audio.is_floating_point() or audio.dim() not in (1, 2) or audio.shape[-1] == 0 or audio.dim() == 2 \
            and audio.shape[0] == 0:
        raise AudioInterpError(f"audio: expected a float waveform tensor (samples,) or (B, samples) at "
                               f"{sample_rate} Hz, got {audio.dtype} of shape {tuple(audio.shape)}")
    if not bool(torch.isfinite(audio).all()):
        raise AudioInterpError("audio: the waveform tensor holds NaN or infinite samples")
    return audio.detach().reshape(-1, audio.shape[-1]).float().cpu()


def _override_given(overrides: Sequence[str], key: str) -> bool:
    return any(o.lstrip("+~").split("=", 1)[0] == key for o in overrides)


def _clips(audio: Any, paths: list[Path] | None, setup: _Setup, peak_normalise: bool,
           labels: Tensor | None) -> ClipSet:
    """The clips to explain, at the feature's rate: files whole (or ``data.duration_s`` if overridden)."""
    rate = setup.feature.sample_rate
    if paths is None:
        waveforms = _check_waveforms(audio, rate)
        ids = [f"clip{i}" for i in range(len(waveforms))]
    else:
        duration = setup.cfg.data.duration_s if _override_given(setup.overrides, "data.duration_s") else None
        loaded = [load_audio(p, rate, duration, peak_normalise) for p in paths]
        lengths = sorted({len(w) for w in loaded})
        if len(lengths) > 1:
            raise AudioInterpError(f"audio: the files have different lengths ({lengths[0]} to {lengths[-1]} samples at "
                                   f"{rate} Hz); pass overrides=['data.duration_s=5.0'] to pad or cut them to one")
        waveforms = torch.stack(loaded)
        ids = _unique([p.stem for p in paths])
    n = len(waveforms)
    if labels is not None and len(labels) != n:
        raise AudioInterpError(f"labels: expected one per clip ({n}), got {len(labels)}")
    return ClipSet(waveforms=waveforms, labels=torch.full((n,), -1) if labels is None else labels, clip_ids=ids,
                   class_names=[], sample_rate=rate)


def _unique(ids: list[str]) -> list[str]:
    """File stems as clip ids, numbered where two files share a stem (example folders are named by id)."""
    return [f"{s}_{i}" if ids.count(s) > 1 else s for i, s in enumerate(ids)]


def _class_indices(value: Any, option: str) -> Tensor | None:
    """An int, or a list / 1-D tensor of ints, as (n,) int64; None stays None."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return torch.tensor([int(value)])
    if isinstance(value, Tensor):
        values = value.reshape(-1)
        if values.is_floating_point() or values.dtype == torch.bool:
            raise AudioInterpError(f"{option}: expected class indices (integers), got a {value.dtype} tensor")
        values = values.long().cpu()
    elif isinstance(value, Sequence) and not isinstance(value, str) \
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        values = torch.tensor([int(v) for v in value], dtype=torch.long)
    else:
        raise AudioInterpError(f"{option}: expected a class index or a list of them, got {value!r}")
    if len(values) == 0 or bool((values < 0).any()):
        raise AudioInterpError(f"{option}: expected class indices >= 0, got {values.tolist()}")
    return values


# --- models ---------------------------------------------------------------------------------------


def _settings_differences(saved: dict, current: dict) -> list[str]:
    saved, current = _flatten(saved), _flatten(current)
    return [f"{k}={saved.get(k)!r} (here {current.get(k)!r})" for k in sorted(set(saved) | set(current))
            if saved.get(k) != current.get(k)]


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _load_model(model: ModelInput, setup: _Setup) -> tuple[nn.Module, dict[str, Any]]:
    """``model`` as the project's :class:`~audiointerp.models.base.Classifier` (taking the feature's
    (B, 1, F, T) dB spectrograms), in eval mode; and the data settings it was trained with ({} unless
    it is one of our model.pt files, whose feature must be the one composed)."""
    from audiointerp.models import as_classifier, is_torchscript_file

    if not isinstance(model, (nn.Module, str, os.PathLike)):
        raise AudioInterpError(f"model: expected an nn.Module, a model.pt written by a run or a TorchScript file, "
                               f"got {type(model).__name__}")
    trained_on: dict[str, Any] = {}
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise AudioInterpError(f"model: no such file {path}; expected a TorchScript file or a run's model.pt")
        if not is_torchscript_file(path):
            settings = train.read_checkpoint_metadata(path).get("settings") or {}
            if isinstance(settings.get("feature"), dict):
                differences = _settings_differences(settings["feature"],
                                                    OmegaConf.to_container(setup.cfg.feature, resolve=True))
                if differences:
                    raise AudioInterpError(
                        f"feature: {path} was trained on other feature settings: {'; '.join(differences[:3])}; "
                        "pass the feature= and overrides=['feature.KEY=VALUE'] it was trained with")
            trained_on = settings.get("data") or {}
    return as_classifier(model, feature=setup.feature).eval(), trained_on


@contextlib.contextmanager
def _precision(model: nn.Module, setup: _Setup) -> Iterator[None]:
    """The classifier's passes at ``precision`` (fp32 unless ``precision=bf16``) inside the block; its
    own setting afterwards (a Cnn14 passed in is the caller's object)."""
    previous = getattr(model, "autocast_dtype", None)
    model.set_precision(PRECISIONS[setup.cfg.precision])
    try:
        yield
    finally:
        model.set_precision(previous)


# --- the loop -------------------------------------------------------------------------------------


@dataclass
class _Explained:
    setup: _Setup
    clips: ClipSet
    results: pipeline.RunResults
    examples: list[pipeline.Example]
    targets: Tensor


def _explain_clips(audio: Any, model: ModelInput, setup: _Setup, *, target: Any = None, labels: Any = None,
                   examples: bool) -> _Explained:
    """Check every argument, then load the model and the audio and run the pipeline once over all clips."""
    paths = _audio_paths(audio)
    targets = _class_indices(target, "target")
    label_values = _class_indices(labels, "labels")
    network, trained_on = _load_model(model, setup)
    with _precision(network, setup):  # as it will be explained: the explainer's check may read it
        setup.explainer.check(network)
    peak = setup.cfg.data.get("peak_normalise", False) if _override_given(setup.overrides, "data.peak_normalise") \
        else trained_on.get("peak_normalise", False)
    clips = _clips(audio, paths, setup, bool(peak), label_values)
    if targets is not None and len(targets) == 1:
        targets = targets.expand(len(clips)).clone()
    if targets is not None and len(targets) != len(clips):
        raise AudioInterpError(f"target: expected one class index, or one per clip ({len(clips)}), got {len(targets)}")
    if targets is not None or label_values is not None:
        _check_classes(network, setup, clips, targets, label_values)
    collected: list[pipeline.Example] = []
    cfg = setup.cfg
    # the caller's random streams are left as they were; inside, seeded as a run is (explainers draw
    # from their own generators, but a user's module may draw from torch's)
    cuda = [setup.device.index or 0] if setup.device.type == "cuda" else []
    with _deterministic_kernels(setup.device), _precision(network, setup), torch.random.fork_rng(devices=cuda):
        torch.manual_seed(cfg.seed)
        results = pipeline.explain_and_score(
            network, setup.explainer, setup.feature, clips, mask_names=setup.mask_names,
            silence_level=cfg.mask.silence_level, ties=cfg.mask.ties, batch_size=cfg.batch_size,
            eval_batch_size=cfg.eval_batch_size, device=setup.device, n_examples=len(clips) if examples else 0,
            on_example=collected.append, audio_metrics=cfg.audio_metrics, channels_last=cfg.channels_last,
            targets=targets)
    return _Explained(setup=setup, clips=clips, results=results, examples=collected,
                      targets=results.predicted if targets is None else targets)


def _check_classes(network: nn.Module, setup: _Setup, clips: ClipSet, targets: Tensor | None,
                   labels: Tensor | None) -> None:
    """Class indices beyond the model's outputs, found with one forward of one clip."""
    network.to(setup.device)
    with torch.inference_mode():
        n_classes = network(setup.feature(clips.waveforms[:1].to(setup.device)).log_db).shape[-1]
    for option, values in (("target", targets), ("labels", labels)):
        if values is not None and int(values.max()) >= n_classes:
            raise AudioInterpError(f"{option}: the model has {n_classes} classes (0 to {n_classes - 1}), "
                                   f"got {int(values.max())}")


# --- tables ---------------------------------------------------------------------------------------


def _per_clip_table(clips: ClipSet, results: pipeline.RunResults, labelled: bool) -> pd.DataFrame:
    """Every mask's metrics/<mask>.csv rows, stacked, with a ``mask`` column first."""
    frames = []
    predicted = results.predicted.numpy()
    for mask_name, per_metric in results.metrics.items():
        columns = [c for c in outputs.SCORE_COLUMNS if c in per_metric]
        frame = pd.DataFrame({
            "mask": mask_name, "sample": np.arange(len(clips)), "clip_id": clips.clip_ids,
            "label": clips.labels.numpy() if labelled else pd.array([pd.NA] * len(clips), dtype="Int64"),
            "predicted": predicted,
            "is_correct": (clips.labels.numpy() == predicted).astype(int) if labelled
            else pd.array([pd.NA] * len(clips), dtype="Int64"),
            **{c: per_metric[c].numpy() for c in columns}})
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _summary_table(explained: _Explained) -> pd.DataFrame:
    """summary.csv's rows as a DataFrame: the run's identity, the mask, the mean of each column."""
    setup = explained.setup
    identity = {"explainer": setup.explainer_name, "model": None, "feature": setup.choices.get("feature"), "data": None,
                "noise": None, "mask_set": setup.choices.get("mask"),
                "silence_level": setup.silence_level_db, "seed": setup.cfg.seed}
    rows = [{**identity, "mask": name, **row} for name, row in outputs.summarise(explained.results).items()]
    return pd.DataFrame(rows)


# --- the public functions -------------------------------------------------------------------------


@dataclass
class Explanation:
    """What :func:`explain` found for one clip or several (B of them), in the order given.

    Attributes:
        attribution: (1, F, T) float32 for one clip; (B, 1, F, T) for several.
        masks: {mask name: (1, F, T)} for one clip, {mask name: (B, 1, F, T)} for several, in [0, 1].
        metrics: a row per mask (index ``mask``; with several clips a (clip_id, mask) MultiIndex), the
            columns ``FF AI AD AG FidIn SPS COMP kept degenerate`` as ``metrics/<mask>.csv`` has them.
        predicted: (B,) int64, the class the model assigns each clip.
        target: (B,) int64, the class each attribution explains (``predicted`` unless given).
        probabilities: (B, C) softmax of the unmasked clips.
        clip_ids: B names (file stems; ``clip0``... for tensors).
        per_clip: every column a run writes per clip and mask (as :func:`evaluate` returns).
    """

    attribution: Tensor
    masks: dict[str, Tensor]
    metrics: pd.DataFrame
    predicted: Tensor
    target: Tensor
    probabilities: Tensor
    clip_ids: list[str]
    per_clip: pd.DataFrame = field(repr=False)
    examples: list[pipeline.Example] = field(repr=False)
    feature: Any = field(repr=False)
    explainer: str = "saliency"

    def _example(self, clip: int) -> pipeline.Example:
        if isinstance(clip, bool) or not isinstance(clip, int) or not -len(self.examples) <= clip < len(self.examples):
            raise AudioInterpError(f"clip: expected an index below {len(self.examples)}, got {clip!r}")
        return self.examples[clip]

    def _mask_name(self, mask: str) -> str:
        if mask not in self.masks:
            raise AudioInterpError(f"mask: expected one of {', '.join(self.masks)}, got {mask!r}")
        return mask

    def audio(self, mask: str, which: str = "masked", clip: int = 0) -> Tensor:
        """(samples,) float32 at the feature's rate: the clip restricted to ``mask`` (``masked``) or with
        it removed (``unmasked``), the feature's inverse with the clip's own phase; ``mask="original"``
        gives the clip as explained. The clip's length; not clipped to [-1, 1]."""
        example = self._example(clip)
        if mask == "original":
            return example.audio["original"]
        if which not in ("masked", "unmasked"):
            raise AudioInterpError(f"which: expected masked or unmasked, got {which!r}")
        return example.audio[f"{self._mask_name(mask)}_{which}"]

    def plot(self, mask: str = "minmax", clip: int = 0):
        """A matplotlib Figure (no pyplot, no global backend): the input, the attribution (diverging
        colours, 0 white) and the input restricted to ``mask``, in the feature's unit (dB; ``ast_fbank``:
        its normalised log energy), on time and frequency axes."""
        example = self._example(clip)
        mask = self._mask_name(mask)
        log_db = example.log_db[0].numpy()
        attribution = (self.attribution if self.attribution.dim() == 3 else self.attribution[clip])[0].numpy()
        limit = float(np.abs(attribution).max()) or 1.0
        vmin, vmax = np.percentile(log_db, 1), log_db.max()
        unit = self.feature.unit
        return outputs.spectrogram_figure(self.feature, [
            (f"input ({unit})", log_db, dict(vmin=vmin, vmax=vmax, cmap="magma")),
            (f"attribution ({self.explainer})", attribution, dict(vmin=-limit, vmax=limit, cmap="RdBu_r")),
            (f"masked input, {mask} ({unit})", example.masked[mask][0].numpy(), dict(vmin=vmin, vmax=vmax, cmap="magma"))],
            title=f"{example.clip_id}: class {int(self.target[clip])} (predicted {int(self.predicted[clip])})")

    def save(self, folder: str | os.PathLike) -> Path:
        """Write what a run writes per example clip, ``<folder>/examples/<clip_id>/``: original.wav,
        ``<mask>_masked.wav``, ``<mask>_unmasked.wav`` and a PNG per mask; and ``<folder>/metrics.csv``
        (:attr:`per_clip`). Returns ``folder``."""
        folder = Path(folder)
        writer = outputs.ExampleWriter(folder, self.feature, self.feature.sample_rate)
        for example in self.examples:
            writer(example)
        with outputs.atomic_path(folder / "metrics.csv") as tmp:
            self.per_clip.to_csv(tmp, index=False)
        return folder


def explain(audio: AudioInput, model: ModelInput, explainer: str | Explainer = "saliency", feature: str = "mel",
            overrides: Sequence[str] = (), target: int | Sequence[int] | Tensor | None = None) -> Explanation:
    """Explain what ``model`` hears in ``audio``, and score the 14 masks made from the explanation.

    Args:
        audio: a WAV/FLAC path (read whole at the feature's rate, or cut/padded to ``data.duration_s``
            when that is overridden), a list of paths of one length, or a waveform tensor (samples,) or
            (B, samples) at the feature's sample rate.
        model: an ``nn.Module`` taking the feature's (B, 1, F, T) dB spectrogram to (B, C) logits (put
            in eval mode and on the configured device), a ``model.pt`` written by a run, or a
            TorchScript file of such a module.
        explainer: a name from ``conf/explainer/`` (``saliency``, ``gradcam``, ``integrated_gradients``,
            ``lime``, ``occlusion``, ``random``...), or an Explainer (e.g. a prepared ``shap``).
        feature: ``mel`` or ``stft`` (``conf/feature/``); a model.pt must have been trained on it.
        overrides: command-line overrides, the run's keys: ``["explainer.layer=conv2", "mask=binary",
            "precision=bf16", "device=cpu", "explainer.num_samples=200"]``.
        target: None explains the predicted class; an int explains that class for every clip, a list
            or tensor one class per clip. The metrics score the explained class (FF is the drop of its
            probability when its evidence is removed, Fid-In whether the masked input is still it).

    Returns:
        An :class:`Explanation`.
    Raises:
        AudioInterpError: one line naming the bad argument, before any clip is explained.
    """
    setup = _setup(explainer, feature, overrides)
    explained = _explain_clips(audio, model, setup, target=target, examples=True)
    results, clips = explained.results, explained.clips
    one = len(clips) == 1
    per_clip = _per_clip_table(clips, results, labelled=False)
    by_clip = per_clip.sort_values("sample", kind="stable")  # each clip's 14 rows together, in MASK_NAMES order
    metrics = by_clip.set_index("mask" if one else ["clip_id", "mask"])[list(EXPLANATION_COLUMNS)]
    return Explanation(
        attribution=results.attributions[0] if one else results.attributions,
        masks={name: torch.cat([e.masks[name] for e in explained.examples]) if one
               else torch.stack([e.masks[name] for e in explained.examples]) for name in setup.mask_names},
        metrics=metrics, predicted=results.predicted, target=explained.targets, probabilities=results.probabilities,
        clip_ids=list(clips.clip_ids), per_clip=per_clip, examples=explained.examples, feature=setup.feature,
        explainer=setup.explainer_name)


def evaluate(clips: AudioInput, model: ModelInput, explainer: str | Explainer = "saliency", feature: str = "mel",
             overrides: Sequence[str] = (), labels: Sequence[int] | Tensor | None = None,
             batch_size: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Explain many clips for their predicted class and score every mask, as a run does; no files written.

    Args:
        clips: a list of WAV/FLAC paths (one length, or ``data.duration_s`` overridden), or (N, samples).
        model, explainer, feature, overrides: as for :func:`explain`.
        labels: (N,) true classes, for the ``label`` and ``is_correct`` columns (empty without them).
        batch_size: clips explained together (the ``batch_size`` option; the config's by default).

    Returns:
        (per_clip, summary): per_clip has a row per mask and clip, ``mask`` then the columns of the
        run's ``metrics/<mask>.csv``; summary has summary.csv's rows (the mean of each score column per
        mask, ``collapse_masked``, ``collapse_unmasked``), after the run's identity columns.
    """
    if batch_size is not None:
        expect_int("batch_size", batch_size, 1)
        overrides = [*([overrides] if isinstance(overrides, str) else overrides), f"batch_size={batch_size}"]
    setup = _setup(explainer, feature, overrides)
    explained = _explain_clips(clips, model, setup, labels=labels, examples=False)
    return (_per_clip_table(explained.clips, explained.results, labelled=labels is not None),
            _summary_table(explained))


__all__ = ["CONF_DIR", "Explanation", "compose_config", "evaluate", "explain", "get_explainer"]
