"""Checkpoints and the shared model cache (audiointerp.train): real tiny Cnn14s, real files, real processes."""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from audiointerp import train
from audiointerp.errors import AudioInterpError
from audiointerp.models import Cnn14

REPO_ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
N_BINS, N_FRAMES, N_CLASSES = 32, 32, 3  # the smallest input Cnn14's five poolings take
SETTINGS = {"data": {"dataset": "synthetic", "n_classes": N_CLASSES, "duration_s": 1.0},
            "feature": {"_target_": "audiointerp.features.LogMel", "n_mels": N_BINS, "hop_length": 320},
            "model": {"_target_": "audiointerp.models.Cnn14", "width": 1 / 32},
            "train": {"epochs": 1, "lr": 1e-3}, "seed": 0}


def tiny_model(n_classes: int = N_CLASSES, width: float = 1 / 32) -> Cnn14:
    torch.manual_seed(0)  # the same initial weights (and SpecAugment draws) for every call
    return Cnn14(n_bins=N_BINS, n_classes=n_classes, width=width, dropout=0.0)


def tiny_data():
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(8, 1, N_BINS, N_FRAMES, generator=generator)
    labels = torch.arange(8) % N_CLASSES
    return inputs[:6], labels[:6], inputs[6:], labels[6:]


def obtain(model, run_dir: Path, cache_dir: Path | None, settings: dict = SETTINGS, checkpoint=None):
    return train.obtain_model(model, checkpoint=checkpoint, cache_dir=cache_dir, settings=settings, run_dir=run_dir,
                              load_train_valid=tiny_data, epochs=1, lr=1e-3, batch_size=4, device=CPU, seed=0)


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory) -> Path:
    """A tiny model trained once and saved with SETTINGS in its metadata: run_dir/model.pt."""
    run_dir = tmp_path_factory.mktemp("trained")
    assert obtain(tiny_model(), run_dir, None).kind == "trained"
    return run_dir / "model.pt"


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


# --- re-runs and byte-identical checkpoints -------------------------------------------------------


def test_rerun_into_the_same_folder_leaves_no_temporary_file(tmp_path):
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    assert obtain(tiny_model(), run_dir, cache).kind == "trained"
    (entry,) = cache.glob("*.pt")
    for _ in range(2):
        # from the cache, or from the run folder's own model.pt (resume): either way one file
        assert obtain(tiny_model(), run_dir, cache).kind in ("cache", "run folder")
        assert leftovers(run_dir) == [] and leftovers(cache) == []
        assert os.path.samefile(run_dir / "model.pt", entry)
    assert sorted(p.name for p in run_dir.iterdir()) == ["model.pt"]


def test_linking_onto_a_link_to_the_same_file_leaves_no_temporary_file(tmp_path):
    """A run folder whose model.pt is already the cache entry, linked again (a re-run, or two jobs
    linking one entry at once): renaming a link onto a name of the same file does nothing, and
    used to leave .model.*.tmp.pt behind."""
    entry, target = tmp_path / "cache" / "0123.pt", tmp_path / "run" / "model.pt"
    train.save_checkpoint(tiny_model(), entry, {})
    for _ in range(3):
        train._link_or_copy(entry, target)
        assert os.path.samefile(entry, target)
        assert leftovers(target.parent) == [] and leftovers(entry.parent) == []


def test_the_same_model_saves_to_the_same_bytes_whatever_the_file_name(tmp_path):
    model = tiny_model()
    train.save_checkpoint(model, tmp_path / "model.pt", {"settings": SETTINGS})
    train.save_checkpoint(model, tmp_path / "other.pt", {"settings": SETTINGS})
    assert (tmp_path / "model.pt").read_bytes() == (tmp_path / "other.pt").read_bytes()


# --- files that are not checkpoints for this run ---------------------------------------------------


class Detonator:
    """Unpickling it beyond weights_only would run its __reduce__: create the file it names."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def write_text(path, marker):
    path.write_text("epochs: 40\nlr: 0.001\n")


def write_foreign_pickle(path, marker):
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": Detonator(marker)}, handle)


def write_torch_object(path, marker):
    torch.save({"state_dict": Detonator(marker), "metadata": {}}, path)


def write_torch_list(path, marker):
    torch.save([1, 2, 3], path)


def write_truncated(path, marker):
    train.save_checkpoint(tiny_model(), path, {"settings": SETTINGS})
    path.write_bytes(path.read_bytes()[:2000])


def write_garbage(path, marker):
    path.write_bytes(bytes(range(256)) * 40)


def write_empty(path, marker):
    path.write_bytes(b"")


NOT_CHECKPOINTS = [write_text, write_foreign_pickle, write_torch_object, write_torch_list, write_truncated,
                   write_garbage, write_empty]


@pytest.mark.parametrize("write", NOT_CHECKPOINTS, ids=lambda f: f.__name__[6:])
def test_a_file_that_is_not_a_checkpoint_is_one_line_and_never_unpickled(tmp_path, write):
    path, marker = tmp_path / "model.pt", tmp_path / "detonated"
    write(path, marker)
    assert not marker.exists()
    model = tiny_model()
    before = train.fingerprint(model)
    with pytest.raises(AudioInterpError) as caught:
        train.load_checkpoint(model, path, SETTINGS)
    message = str(caught.value)
    assert message.startswith(f"model.checkpoint: {path} is not a checkpoint"), message
    assert "\n" not in message and len(message) < 200, message
    assert not marker.exists(), "the file was unpickled beyond weights_only: its code ran"
    assert train.fingerprint(model) == before


def test_a_foreign_pickle_as_model_checkpoint_is_one_line_from_the_cli(tmp_path):
    path, marker = tmp_path / "foreign.pt", tmp_path / "detonated"
    write_foreign_pickle(path, marker)
    result = subprocess.run(
        [sys.executable, "-m", "audiointerp.run", "experiment=smoke", "n_examples=0", f"model.checkpoint={path}",
         f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert errors == [f"error: model.checkpoint: {path} is not a checkpoint: torch.load(weights_only=True) "
                      "cannot read it (UnpicklingError)"], result.stderr[-3000:]
    assert not marker.exists()


def with_settings(**changes) -> dict:
    settings = {section: dict(values) if isinstance(values, dict) else values for section, values in SETTINGS.items()}
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        settings[section][key] = value
    return settings


def test_a_checkpoint_trained_for_another_feature_names_the_setting(trained_checkpoint):
    model = tiny_model()
    before = train.fingerprint(model)
    with pytest.raises(AudioInterpError) as caught:
        train.load_checkpoint(model, trained_checkpoint, with_settings(feature__n_mels=128))
    assert str(caught.value) == f"model.checkpoint: {trained_checkpoint} was trained with feature.n_mels=32, this run has 128"
    with pytest.raises(AudioInterpError) as caught:
        train.load_checkpoint(model, trained_checkpoint,
                              with_settings(data__dataset="esc50", data__n_classes=10, feature__hop_length=160,
                                            model__width=0.0625, feature__n_mels=64))
    # the feature first: the setting most often changed
    assert str(caught.value) == (f"model.checkpoint: {trained_checkpoint} was trained with feature.n_mels=32 "
                                 "(this run has 64), feature.hop_length=320 (this run has 160), "
                                 "data.dataset=synthetic (this run has esc50) and 2 more")
    assert train.fingerprint(model) == before


def test_a_checkpoint_from_another_training_of_the_same_model_loads(trained_checkpoint):
    """Training settings, the seed and settings the checkpoint never recorded do not stop it."""
    model = tiny_model()
    settings = with_settings(train__epochs=40, train__lr=1e-4, data__clips_per_class={"train": 40})
    settings["seed"], settings["code"] = 7, "a newer version"
    metadata = train.load_checkpoint(model, trained_checkpoint, settings)
    assert metadata["settings"] == SETTINGS and metadata["best_epoch"] == 1
    assert train.fingerprint(model) == train.fingerprint(torch_loaded(trained_checkpoint))


def torch_loaded(path: Path) -> Cnn14:
    model = tiny_model()
    model.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    return model


def test_a_bare_state_dict_loads_if_it_fits_and_names_the_tensor_if_not(tmp_path, trained_checkpoint):
    bare = tmp_path / "bare.pt"
    torch.save(torch_loaded(trained_checkpoint).state_dict(), bare)
    model = tiny_model()
    assert train.load_checkpoint(model, bare, SETTINGS) == {}
    assert train.fingerprint(model) == train.fingerprint(torch_loaded(trained_checkpoint))

    torch.save(tiny_model(n_classes=5).state_dict(), bare)
    with pytest.raises(AudioInterpError, match=r"^model\.checkpoint: .*bare\.pt does not fit this model: "
                                               r"classifier\.weight has shape \(5, 64\) in the file, \(3, 64\) "
                                               r"in the model and 1 more$"):
        train.load_checkpoint(tiny_model(), bare, SETTINGS)
    torch.save({"conv.weight": torch.zeros(1)}, bare)
    with pytest.raises(AudioInterpError, match=r"does not fit this model: \d+ of its tensors missing .*; "
                                               r"1 tensors not its own \(conv\.weight\)$"):
        train.load_checkpoint(tiny_model(), bare, SETTINGS)


# --- a corrupted cache entry ------------------------------------------------------------------------


def corrupt_truncated(entry: Path, trained: Path):
    entry.write_bytes(trained.read_bytes()[: trained.stat().st_size // 2])


def corrupt_garbage(entry: Path, trained: Path):
    entry.write_bytes(os.urandom(4096))


def corrupt_shapes(entry: Path, trained: Path):
    """Every tensor but the head fits: a half-loading reader would start training from its convs."""
    other = tiny_model(n_classes=5)
    for parameter in other.parameters():
        torch.nn.init.constant_(parameter, 0.5)
    train.save_checkpoint(other, entry, {})


@pytest.mark.parametrize("corrupt", [corrupt_truncated, corrupt_garbage, corrupt_shapes], ids=lambda f: f.__name__[8:])
def test_a_corrupted_cache_entry_is_deleted_and_retrained_as_if_absent(tmp_path, trained_checkpoint, corrupt, caplog):
    cache = tmp_path / "cache"
    cache.mkdir()
    entry = cache / f"{train.cache_key(SETTINGS)}.pt"
    corrupt(entry, trained_checkpoint)
    model = tiny_model()
    with caplog.at_level(logging.WARNING, logger="audiointerp.train"):
        source = obtain(model, tmp_path / "run", cache)
    assert source.kind == "trained"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(f"model cache entry {entry} "), warnings
    assert "deleting it and training the model again" in warnings[0]
    # Retrained from the same initial weights as without any entry: bit for bit the checkpoint
    # trained_checkpoint's run made, and the entry is now that model.
    assert train.fingerprint(model) == train.fingerprint(torch_loaded(trained_checkpoint))
    assert entry.read_bytes() == trained_checkpoint.read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == sorted([entry.name, entry.with_suffix(".lock").name])


def test_a_file_system_without_locks_warns_and_still_trains_and_caches(tmp_path, monkeypatch, caplog):
    """Lustre mounted without -o flock answers flock with ENOSYS; no such file system here, so flock
    answers as it would there."""
    import errno
    import fcntl

    def no_locks(handle, operation):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    cache = tmp_path / "cache"
    with caplog.at_level(logging.WARNING, logger="audiointerp.atomic"):
        assert obtain(tiny_model(), tmp_path / "run", cache).kind == "trained"
    lock = cache / f"{train.cache_key(SETTINGS)}.lock"
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot lock {lock} (Function not implemented; a shared file system mounted without locks?): going "
        "on without the lock"]
    assert obtain(tiny_model(), tmp_path / "other run", cache).kind == "cache"


# --- many jobs, one cache -------------------------------------------------------------------------

#: One job: waits until every job of the test has started (files in ``gate``), then obtains the
#: tiny model through the shared cache and prints where it came from. The data loader takes
#: ``delay`` seconds, so a trainer holds the lock long enough for the others to find it busy.
JOB = r"""
import logging, sys, time
from pathlib import Path
import torch
sys.path.insert(0, {tests!r})
import test_cache as t
from audiointerp import train
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
name, gate, n_jobs, cache, delay = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]), float(sys.argv[5])
(gate / name).touch()
while len(list(gate.iterdir())) < n_jobs:
    time.sleep(0.01)
def slow_data():
    print("training", flush=True)
    time.sleep(delay)
    return t.tiny_data()
source = train.obtain_model(t.tiny_model(), checkpoint=None, cache_dir=cache, settings=t.SETTINGS,
                            run_dir=gate.parent / name, load_train_valid=slow_data, epochs=1, lr=1e-3,
                            batch_size=4, device=torch.device("cpu"), seed=0)
print("source", source.kind, flush=True)
"""


def start_job(tmp_path: Path, name: str, n_jobs: int, delay: float) -> subprocess.Popen:
    gate = tmp_path / "gate"
    gate.mkdir(exist_ok=True)
    code = JOB.format(tests=str(Path(__file__).parent))
    return subprocess.Popen([sys.executable, "-c", code, name, str(gate), str(n_jobs), str(tmp_path / "cache"),
                             str(delay)], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_jobs_starting_together_train_once_and_the_others_wait_and_reuse(tmp_path):
    jobs = [start_job(tmp_path, f"job{i}", 2, delay=2.0) for i in range(2)]
    outputs = [job.communicate(timeout=120) for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], [err[-2000:] for _, err in outputs]
    kinds = sorted(out.split("source ")[-1].strip() for out, _ in outputs)
    assert kinds == ["cache", "trained"], outputs
    waiter_err = next(err for out, err in outputs if "source cache" in out)
    lock = tmp_path / "cache" / f"{train.cache_key(SETTINGS)}.lock"
    assert f"waiting for another job training the same model ({lock})" in waiter_err, waiter_err
    assert lock.exists(), "the lock file stays: another job may be holding it"
    assert os.path.samefile(tmp_path / "job0" / "model.pt", tmp_path / "job1" / "model.pt")


def test_a_killed_trainer_lets_the_waiting_job_train(tmp_path):
    holder = start_job(tmp_path, "holder", 1, delay=600.0)  # trains "forever" while holding the lock
    assert holder.stdout.readline() == "training\n"
    waiter = start_job(tmp_path, "waiter", 1, delay=0.0)
    lock = tmp_path / "cache" / f"{train.cache_key(SETTINGS)}.lock"
    waiting = f"waiting for another job training the same model ({lock})"
    lines = []
    while waiting not in "".join(lines):  # on stderr once the waiter found the lock busy
        line = waiter.stderr.readline()
        assert line, f"the waiter ended without waiting: {''.join(lines)}"
        lines.append(line)
    time.sleep(0.5)
    assert waiter.poll() is None, "the waiter must still be waiting while the holder lives"
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    out, err = waiter.communicate(timeout=120)
    assert waiter.returncode == 0, err[-2000:]
    assert out.splitlines() == ["training", "source trained"], (out, err)
    assert (tmp_path / "cache" / f"{train.cache_key(SETTINGS)}.pt").is_file()
    assert leftovers(tmp_path / "cache") == []
