"""``data=folder``: real ESC-10 clips re-encoded at several rates and lengths into class subfolders
or csv lists (the ``esc10_folder`` fixture), loaded, split, identified and refused when broken."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr
import torch

from audiointerp.data import SPLITS
from audiointerp.data.base import Dataset, check_runnable
from audiointerp.data.folder import AudioFolder, split_counts
from audiointerp.errors import AudioInterpError

REPO_ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["dog", "rain", "rooster"]  # the first 3 ESC-10 classes, in name order
RATE = 32000


@pytest.fixture(scope="module")
def tree(esc10_folder, tmp_path_factory) -> Path:
    """3 classes x 6 clips; clip i at 16 kHz (even i) or 44.1 kHz (odd i), 3 s (even) or 7 s (odd)."""
    return esc10_folder(tmp_path_factory.mktemp("esc10") / "clips")


def copy_tree(tree: Path, target: Path) -> Path:
    shutil.copytree(tree, target)
    return target


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def clip_paths(tree: Path) -> list[str]:
    """Every clip's path relative to ``tree``, sorted."""
    return sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.suffix in (".wav", ".flac"))


def test_class_subfolders_are_labelled_resampled_and_fitted_to_the_duration(tree):
    dataset = AudioFolder(root=str(tree), sample_rate=RATE, duration_s=5.0, seed=0)
    assert isinstance(dataset, Dataset) and dataset.has_labels and not dataset.has_evidence
    assert dataset.class_names == CLASSES and dataset.n_classes == 3
    assert sum(dataset.split_size(split) for split in SPLITS) == 18
    checked = Counter()
    for split in SPLITS:
        clips = dataset.load_split(split)
        assert clips.waveforms.shape == (dataset.split_size(split), 5 * RATE) and clips.waveforms.dtype == torch.float32
        assert clips.sample_rate == RATE and clips.class_names == CLASSES
        for waveform, label, clip_id in zip(clips.waveforms, clips.labels.tolist(), clips.clip_ids):
            assert clip_id.split("/")[0] == CLASSES[label]
            samples, file_rate = soundfile.read(tree / clip_id, dtype="float32")
            # The file's content at 32 kHz, cut to 5 s or zero-padded, peak-normalised.
            expected = torch.from_numpy(soxr.resample(samples, file_rate, RATE, quality="HQ"))[:5 * RATE]
            expected = expected / expected.abs().max()
            torch.testing.assert_close(waveform[:expected.shape[0]], expected, rtol=0, atol=1e-6)
            assert waveform.abs().max().item() == pytest.approx(1.0)
            if len(samples) / file_rate < 5:  # a 3 s clip: its 3 s at 32 kHz, then zeros
                assert expected.shape[0] == 3 * RATE and not torch.any(waveform[3 * RATE:])
            else:  # a 7 s clip: its first 5 s
                assert expected.shape[0] == 5 * RATE
            checked[(file_rate, round(len(samples) / file_rate))] += 1
    assert checked == {(16000, 3): 9, (44100, 7): 9}


def test_splits_are_class_balanced_deterministic_and_follow_the_seed(tree, tmp_path):
    first = AudioFolder(root=str(tree), sample_rate=RATE, seed=0)
    again = AudioFolder(root=str(copy_tree(tree, tmp_path / "elsewhere")), sample_rate=RATE, seed=0)
    other_seed = AudioFolder(root=str(tree), sample_rate=RATE, seed=1)
    ids = {split: [clip.clip_id for clip in first.clip_files[split]] for split in SPLITS}
    assert ids == {split: [clip.clip_id for clip in again.clip_files[split]] for split in SPLITS}
    assert ids != {split: [clip.clip_id for clip in other_seed.clip_files[split]] for split in SPLITS}
    assert sorted(sum(ids.values(), [])) == clip_paths(tree), "every clip in exactly one split"
    for dataset in (first, other_seed):
        for split, expected in (("train", 4), ("valid", 1), ("test", 1)):  # 6 clips x 0.7 / 0.15 / 0.15
            per_class = Counter(clip.label for clip in dataset.clip_files[split])
            assert per_class == {0: expected, 1: expected, 2: expected}, (split, per_class)
    # clips_per_class and limit select class-balanced, like ESC-50's options
    capped = AudioFolder(root=str(tree), sample_rate=RATE, seed=0, clips_per_class={"train": 2}, limit=4)
    assert Counter(clip.label for clip in capped.clip_files["train"]) == {0: 2, 1: 1, 2: 1}
    assert [c.clip_id for c in capped.clip_files["train"]][:2] == [ids["train"][0], ids["train"][1]]
    assert capped.split_size("test") == 3


def test_split_counts_give_every_split_a_clip_of_a_small_class():
    assert split_counts(6, {"train": 0.7, "valid": 0.15, "test": 0.15}) == {"train": 4, "valid": 1, "test": 1}
    assert split_counts(3, {"train": 0.8, "valid": 0.1, "test": 0.1}) == {"train": 1, "valid": 1, "test": 1}
    assert split_counts(10, {"train": 0.5, "valid": 0.0, "test": 0.5}) == {"train": 5, "valid": 0, "test": 5}
    assert split_counts(1, {"train": 0.7, "valid": 0.15, "test": 0.15}) == {"train": 1, "valid": 0, "test": 0}


def test_a_csv_split_column_is_used_as_given_and_class_names_pin_the_labels(tree):
    paths = clip_paths(tree)
    splits = ["valid" if i % 6 == 5 else "test" if i % 6 == 0 else "train" for i in range(len(paths))]
    listing = write_csv(tree / "list.csv", ["path", "label", "split"],
                        [[path, path.split("/")[0], split] for path, split in zip(paths, splits)])
    dataset = AudioFolder(csv=str(listing), class_names=["rooster", "dog", "rain"], sample_rate=RATE)
    assert dataset.class_names == ["rooster", "dog", "rain"]
    for split in SPLITS:
        assert [c.clip_id for c in dataset.clip_files[split]] == [p for p, s in zip(paths, splits) if s == split]
    test = dataset.load_split("test")
    assert [dataset.class_names[label] for label in test.labels.tolist()] == [p.split("/")[0] for p in test.clip_ids]
    assert AudioFolder(csv=str(listing), sample_rate=RATE).class_names == CLASSES  # sorted labels


def test_an_unlabelled_csv_has_no_classes_and_is_all_explained(tree, tmp_path):
    paths = clip_paths(tree)
    listing = write_csv(tree / "unlabelled.csv", ["path"], [[path] for path in paths])
    dataset = AudioFolder(csv=str(listing), sample_rate=RATE)
    assert not dataset.has_labels and dataset.n_classes is None and dataset.class_names == []
    assert dataset.split_size("train") == dataset.split_size("valid") == 0 and dataset.split_size("test") == 18
    test = dataset.load_split("test")
    assert test.labels.tolist() == [-1] * 18 and test.clip_ids == paths and test.class_names == []
    with pytest.raises(AudioInterpError, match="no clips in the train split"):
        dataset.load_split("train")
    # no model can be trained on it, and a checkpoint's classes must be named
    with pytest.raises(AudioInterpError, match="expected model.checkpoint"):
        check_runnable(dataset, None, "folder")
    with pytest.raises(AudioInterpError, match="expected data.class_names"):
        check_runnable(dataset, "model.pt", "folder")
    named = AudioFolder(csv=str(listing), sample_rate=RATE, class_names=CLASSES)
    assert named.n_classes == 3 and not named.has_labels and named.load_split("test").class_names == CLASSES
    check_runnable(named, "model.pt", "folder")
    check_runnable(AudioFolder(root=str(tree), sample_rate=RATE), None, "folder")
    # an empty label column is unlabelled too; so is a folder of files without class subfolders
    blank = write_csv(tree / "blank.csv", ["path", "label"], [[path, ""] for path in paths])
    assert not AudioFolder(csv=str(blank), sample_rate=RATE).has_labels
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in paths[:4]:
        shutil.copyfile(tree / path, flat / Path(path).name)
    flat_set = AudioFolder(root=str(flat), sample_rate=RATE)
    assert not flat_set.has_labels and flat_set.split_size("test") == 4


def test_identity_follows_the_files_bytes_and_splits_not_their_place(tree, tmp_path):
    original = AudioFolder(root=str(tree), sample_rate=RATE, seed=0)
    moved = AudioFolder(root=str(copy_tree(tree, tmp_path / "copy")), sample_rate=RATE, seed=0)
    assert moved.identity() == original.identity() and moved.training_identity() == original.training_identity()
    assert set(original.training_identity()["n_clips"]) == {"train", "valid"}
    # one sample of one test clip changed: the run's identity changes, the training key does not
    test_clip = moved.clip_files["test"][0]
    samples, rate = soundfile.read(test_clip.path, dtype="int16")
    samples[100] = samples[100] + 1 if samples[100] < 32767 else samples[100] - 1
    soundfile.write(test_clip.path, samples, rate, subtype="PCM_16")
    changed = AudioFolder(root=str(tmp_path / "copy"), sample_rate=RATE, seed=0)
    assert changed.identity()["clips_sha256"] != original.identity()["clips_sha256"]
    assert changed.training_identity() == original.training_identity()
    # loading settings and the seed (which moves clips between splits) are part of it
    assert AudioFolder(root=str(tree), sample_rate=16000).identity() != original.identity()
    assert AudioFolder(root=str(tree), sample_rate=RATE, duration_s=4.0).identity() != original.identity()
    assert AudioFolder(root=str(tree), sample_rate=RATE, seed=1).identity() != original.identity()


def assert_one_line(error: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(error.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, (part, message)


def test_broken_files_are_one_line_errors_naming_them(tree, tmp_path):
    broken = copy_tree(tree, tmp_path / "broken")
    corrupt = broken / "rain" / "corrupt.wav"
    corrupt.write_bytes(b"RIFF not really a wave file" * 10)
    with pytest.raises(AudioInterpError) as error:
        AudioFolder(root=str(broken), sample_rate=RATE)
    assert_one_line(error, str(corrupt), "cannot read audio")
    corrupt.unlink()
    empty = broken / "dog" / "empty.wav"
    soundfile.write(empty, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioInterpError) as error:
        AudioFolder(root=str(broken), sample_rate=RATE)
    assert_one_line(error, str(empty), "no samples")
    empty.unlink()
    (broken / "silence_class").mkdir()
    with pytest.raises(AudioInterpError) as error:
        AudioFolder(root=str(broken), sample_rate=RATE)
    assert_one_line(error, str(broken / "silence_class"), "no audio files")
    (broken / "silence_class").rmdir()
    with pytest.raises(AudioInterpError) as error:
        AudioFolder(root=str(broken), sample_rate=RATE, class_names=["dog", "rain"])
    assert_one_line(error, str(broken / "rooster"), "not one of data.class_names")
    with pytest.raises(AudioInterpError) as error:
        AudioFolder(root=str(tmp_path / "absent"), sample_rate=RATE)
    assert_one_line(error, "data.root", "no such folder")


@pytest.mark.parametrize("header, row, parts", [
    (["file", "label"], ["dog/x.wav", "dog"], ["{csv}: no 'path' column", "path,label[,split]"]),
    (["path", "label"], ["dog/absent.wav", "dog"], ["{tree}/dog/absent.wav: no such audio file"]),
    (["path", "label", "split"], [None, "dog", "validation"], ["{csv}:2: split 'validation'", "train, valid, test"]),
    (["path", "label"], [None, "cat"], ["{csv}:2: label 'cat' is not one of data.class_names"]),
    (["path", "label"], ["../outside.wav", "dog"], ["{csv}:2: path '../outside.wav'", "inside it"]),
])
def test_a_malformed_csv_is_one_line_naming_the_file_and_what_was_expected(tree, header, row, parts):
    real = clip_paths(tree)[0]
    listing = write_csv(tree / "bad.csv", header, [[real if cell is None else cell for cell in row]])
    with pytest.raises(AudioInterpError) as error:
        AudioFolder(csv=str(listing), sample_rate=RATE, class_names=CLASSES)
    assert_one_line(error, *(part.format(csv=listing, tree=tree) for part in parts))


def test_mixed_labels_and_bad_options_are_refused(tree):
    paths = clip_paths(tree)
    mixed = write_csv(tree / "mixed.csv", ["path", "label"], [[paths[0], "dog"], [paths[1], ""]])
    with pytest.raises(AudioInterpError) as error:
        AudioFolder(csv=str(mixed), sample_rate=RATE)
    assert_one_line(error, f"{mixed}:3", "empty label")
    for options, option in [({"root": str(tree), "csv": str(mixed)}, "exactly one of data.root"),
                            ({}, "exactly one of data.root"),
                            ({"root": str(tree), "split_fractions": {"train": 0.7, "test": 0.2}}, "sum to 1"),
                            ({"root": str(tree), "split_fractions": {"dev": 1.0}}, "unknown split 'dev'"),
                            ({"root": str(tree), "duration_s": 0}, "data.duration_s"),
                            ({"root": str(tree), "clips_per_class": {"train": 0}}, "data.clips_per_class.train")]:
        with pytest.raises(AudioInterpError) as error:
            AudioFolder(sample_rate=RATE, **options)
        assert_one_line(error, option)


# --- through the CLI ---------------------------------------------------------------------------


def run_cli(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "audiointerp.run", *overrides], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=900)


def test_a_corrupt_clip_stops_the_cli_with_one_line(tree, tmp_path):
    broken = copy_tree(tree, tmp_path / "broken")
    (broken / "dog" / "corrupt.flac").write_bytes(b"fLaC" + bytes(100))
    result = run_cli("data=folder", f"data.root={broken}", "experiment=smoke", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and str(broken / "dog" / "corrupt.flac") in lines[-1]
    assert "Traceback" not in result.stderr


def metric_rows(run_dir: Path) -> list[dict[str, str]]:
    """The rows of the first mask's metrics csv (every mask's csv has the same clip columns)."""
    with open(sorted((run_dir / "metrics").glob("*.csv"))[0], newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def folder_run(tree, tmp_path_factory) -> Path:
    """The smoke experiment on the class-subfolder tree with the default Cnn14: trained, explained, scored."""
    run_dir = tmp_path_factory.mktemp("folder_run")
    result = run_cli("data=folder", f"data.root={tree}", "experiment=smoke", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_a_smoke_run_on_your_folder_completes(folder_run, tree):
    report = json.loads((folder_run / "run.json").read_text())
    assert report["run"]["data"] == "folder" and report["class_names"] == CLASSES
    assert report["n_clips"] == 3  # one test clip per class
    assert 0 <= report["clean_accuracy"] <= 1 and 0 <= report["explained_accuracy"] <= 1
    rows = metric_rows(folder_run)
    assert sorted(row["clip_id"].split("/")[0] for row in rows) == CLASSES
    assert all(row["is_correct"] == str(int(row["label"] == row["predicted"])) for row in rows)
    assert (folder_run / "model.pt").is_file()


def test_unlabelled_clips_are_explained_with_a_checkpoint_and_get_null_accuracy(folder_run, tree, tmp_path):
    listing = write_csv(tree / "to_explain.csv", ["path"], [[path] for path in clip_paths(tree)[:4]])
    refused = run_cli("data=folder", f"data.csv={listing}", "experiment=smoke", f"hydra.run.dir={tmp_path / 'refused'}")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "expected model.checkpoint" in refused.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "refused" / "model.pt").exists(), "nothing may be trained on unlabelled clips"
    run_dir = tmp_path / "unlabelled"
    result = run_cli("data=folder", f"data.csv={listing}", f"data.class_names=[{','.join(CLASSES)}]",
                     f"model.checkpoint={folder_run / 'model.pt'}", "experiment=smoke", "data.clips_per_class=null",
                     f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "n/a (no labels)" in result.stdout
    report = json.loads((run_dir / "run.json").read_text())
    assert report["n_clips"] == 4 and report["clean_accuracy"] is None and report["explained_accuracy"] is None
    rows = metric_rows(run_dir)
    assert [row["label"] for row in rows] == ["-1"] * 4 and [row["is_correct"] for row in rows] == [""] * 4
    assert {int(row["predicted"]) for row in rows} <= {0, 1, 2}
