"""The model cache key: it changes with everything that determines the trained weights (code,
the train/valid clips' bytes, feature/model/train settings, seed) and with nothing else."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import soundfile
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from audiointerp import train
from audiointerp.errors import build

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "audiointerp"
# Two ESC-10 classes (dog, rooster): train fold 1 (two clips each), valid fold 4, test fold 5 (fold 2
# as another test fold).
STEMS = {"train": ["1-100032-A-0", "1-110389-A-0", "1-26806-A-1", "1-27724-A-1"],
         "valid": ["4-182395-A-0", "4-164021-A-1"],
         "test": ["5-203128-A-0", "5-194930-A-1"], "other": ["2-114280-A-0", "2-100786-A-1"]}


def settings(*overrides: str) -> dict:
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO_ROOT / "conf")):
        cfg = compose("config", overrides=list(overrides))
    return train.cache_settings(OmegaConf.to_container(cfg, resolve=True), build(cfg.data))


def key(*overrides: str) -> str:
    return train.cache_key(settings(*overrides))


@pytest.fixture
def esc10(esc50_copy, tmp_path):
    """(root of a small real ESC-10 copy, the overrides of a run on it)."""
    root = esc50_copy(tmp_path / "esc50", [stem for stems in STEMS.values() for stem in stems])
    return root, ["data=esc10", f"data.root={root}", "data.train_folds=[1]"]


def nudge(path: Path) -> None:
    """Rewrite a real clip with one sample changed by one quantisation step (still a valid FLAC)."""
    samples, rate = soundfile.read(path, dtype="int16")
    samples[1000] += 1 if samples[1000] < 32767 else -1
    soundfile.write(path, samples, rate, subtype="PCM_16", format="FLAC")


def test_the_key_follows_the_bytes_of_the_train_and_valid_clips_only(esc10):
    root, run = esc10
    before = key(*run)
    clip = root / "audio" / f"{STEMS['train'][0]}.flac"
    original = clip.read_bytes()
    nudge(clip)
    assert key(*run) != before, "a changed training clip must not reuse the old model"
    clip.write_bytes(original)
    assert key(*run) == before, "the key is a function of the files' contents"

    nudge(root / "audio" / f"{STEMS['test'][0]}.flac")
    assert key(*run) == before, "test clips do not determine the weights"
    nudge(root / "audio" / f"{STEMS['valid'][1]}.flac")
    assert key(*run) != before, "validation picks the best epoch, so it determines the weights"


def test_a_training_clip_missing_from_the_root_changes_the_key(esc10):
    root, run = esc10
    before = key(*run)
    (root / "audio" / f"{STEMS['train'][1]}.flac").unlink()
    assert key(*run, "data.missing=skip") != before


def test_the_same_files_in_another_folder_give_the_same_key(esc10, tmp_path):
    root, run = esc10
    moved = shutil.copytree(root, tmp_path / "elsewhere" / "ESC-50")
    assert key(*run) == key("data=esc10", f"data.root={moved}", "data.train_folds=[1]")


@pytest.mark.parametrize("override", [
    "data.missing=error", "data.test_folds=[2]", "data.clips_per_class={test: 1}", "data.download_dir=/tmp/x",
    "n_examples=0", "explainer=gradcam", "mask=binary", "noise=white", "batch_size=4", "eval_batch_size=8",
    "split=valid", "sanity=true", "audio_metrics=true", "shard.count=2", "device=cpu", "train.cache=false",
    "train.cache_dir=/tmp/cache", "model.checkpoint=/tmp/model.pt", "model.pretrained_dir=/tmp/pretrained",
    # selects the clips it selected anyway: the key is about the clips, not how they were asked for
    "data.clips_per_class={train: 5}",
])
def test_what_does_not_determine_the_weights_leaves_the_key(esc10, override):
    _, run = esc10
    assert key(*run, override) == key(*run)


@pytest.mark.parametrize("override", [
    "model.width=0.125", "train.augment.mask_dropout.probability=0.1", "mask.silence_level=-80", "train.lr=1e-4", "train.epochs=3",
    "train.batch_size=16", "feature=stft", "feature.n_mels=32", "seed=1", "data.train_folds=[1,2]",
    "data.limit=1", "data.clips_per_class={train: 1}", "data.peak_normalise=false", "data.duration_s=4.0",
    "data=esc50",
])
def test_what_determines_the_weights_changes_the_key(esc10, override):
    _, run = esc10
    assert key(*run, override) != key(*run)


def test_synthetic_key_leaves_out_the_test_count_only():
    base = ["data=synthetic"]
    assert key(*base, "data.clips_per_class.test=3") == key(*base)
    for override in ("data.clips_per_class.train=5", "data.clips_per_class.valid=3", "data.snr_db=[5.0,10.0]",
                     "data.n_classes=4", "seed=2"):
        assert key(*base, override) != key(*base), override


def copy_sources(folder: Path) -> Path:
    """The package's .py files copied to ``folder`` in the same layout."""
    for path in PACKAGE.rglob("*.py"):
        target = folder / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return folder


@pytest.mark.parametrize("changed", ["models/cnn14.py", "models/panns.py", "features.py", "train.py"])
def test_the_code_version_follows_the_model_feature_and_training_code(tmp_path, changed):
    copy = copy_sources(tmp_path / "audiointerp")
    assert train.code_version(copy) == train.code_version(), "the same sources elsewhere are the same version"
    with open(copy / changed, "a") as file:
        file.write("\n")
    assert train.code_version(copy) != train.code_version()


def test_the_code_version_ignores_other_code_and_counts_new_model_files(tmp_path):
    copy = copy_sources(tmp_path / "audiointerp")
    for other in ("pipeline.py", "run.py", "explainers/base.py", "data/esc50.py"):
        with open(copy / other, "a") as file:
            file.write("\n")
    (copy / "models" / "__pycache__").mkdir(exist_ok=True)
    (copy / "models" / "__pycache__" / "cnn14.cpython-312.pyc").write_bytes(b"not source")
    assert train.code_version(copy) == train.code_version()
    (copy / "models" / "extra.py").write_text("WIDTH = 2\n")
    assert train.code_version(copy) != train.code_version()


def test_the_key_holds_the_code_version():
    assert settings("data=synthetic")["code"] == train.code_version()
