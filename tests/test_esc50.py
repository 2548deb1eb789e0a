"""ESC-50 / ESC-10 on the partial shared copy (all of ESC-10 and fold 4 are there), and the
download path end to end: a small archive in the official layout, built from real clips and
served from 127.0.0.1."""

from __future__ import annotations

import csv
import json
import logging
import re
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from audiointerp.data.esc50 import ESC50, download_esc50, read_metadata, verify_esc50
from audiointerp.errors import AudioInterpError

REPO_ROOT = Path(__file__).resolve().parents[1]
ESC10_CLASSES = ["dog", "rooster", "rain", "sea_waves", "crackling_fire", "crying_baby", "sneezing",
                 "clock_tick", "helicopter", "chainsaw"]
ESC10_TARGETS = [0, 1, 10, 11, 12, 20, 21, 38, 40, 41]
# Clips of the small archive: two of fold 1 (ESC-10), two of fold 4, two of fold 5 (ESC-10).
ARCHIVE_STEMS = ["1-100032-A-0", "1-110389-A-0", "4-102844-A-49", "4-102844-B-49", "5-151085-A-20", "5-170338-A-41"]


def csv_rows(esc50_root: Path) -> list[dict]:
    with open(esc50_root / "meta" / "esc50.csv", newline="") as file:
        return list(csv.DictReader(file))


def present_stems(esc50_root: Path) -> set[str]:
    """Stems listed in the copy's MANIFEST.tsv (what the README says is there)."""
    with open(esc50_root / "MANIFEST.tsv", newline="") as file:
        return {Path(row["filename"]).stem for row in csv.DictReader(file, delimiter="\t")}


def test_metadata_has_all_rows_and_folds(esc50_root):
    rows = read_metadata(esc50_root / "meta" / "esc50.csv")
    assert len(rows) == 2000
    assert Counter(row.fold for row in rows) == {fold: 400 for fold in range(1, 6)}
    assert sorted({row.target for row in rows if row.esc10}) == ESC10_TARGETS


@pytest.mark.parametrize("fold", [1, 2, 3, 4, 5])
def test_esc10_has_80_clips_per_fold_with_labels_0_to_9(esc50_root, fold):
    test_fold = fold % 5 + 1
    others = [f for f in range(1, 6) if f not in (fold, test_fold)]
    dataset = ESC50(str(esc50_root), 32000, subset="esc10", missing="error",
                    train_folds=others, valid_folds=[fold], test_folds=[test_fold])
    assert dataset.n_classes == 10 and dataset.class_names == ESC10_CLASSES
    assert len(dataset.clip_files["valid"]) == 80 and len(dataset.clip_files["train"]) == 240
    labels = Counter(dataset.label_of_target[row.target] for row, _ in dataset.clip_files["valid"])
    assert labels == {label: 8 for label in range(10)}


def test_esc10_split_loads_real_clips_with_remapped_labels(esc50_root):
    dataset = ESC50(str(esc50_root), 32000, subset="esc10", limit=3, missing="error")
    clips = dataset.load_split("test")
    # limit=3 takes the first fold-5 clip of ESC-10 labels 0, 1 and 2, listed in csv order (the
    # csv's first three fold-5 ESC-10 rows are crying_baby and chainsaw).
    assert clips.clip_ids == ["5-181766-A-10", "5-194930-A-1", "5-203128-A-0"]
    # Targets 10 (rain), 1 (rooster) and 0 (dog) are ESC-10 labels 2, 1 and 0.
    assert clips.labels.tolist() == [2, 1, 0]
    assert [clips.class_names[label] for label in clips.labels] == ["rain", "rooster", "dog"]
    assert clips.waveforms.shape == (3, 160000) and clips.waveforms.dtype == torch.float32
    torch.testing.assert_close(clips.waveforms.abs().amax(dim=1), torch.ones(3))
    assert clips.sample_rate == 32000


def test_unnormalised_16k_clips_are_resampled_file_contents(esc50_root):
    dataset = ESC50(str(esc50_root), 16000, limit=2, peak_normalise=False, valid_folds=[4], missing="error",
                    train_folds=[1, 2, 3], test_folds=[5], subset="esc10")
    clips = dataset.load_split("valid")
    assert clips.waveforms.shape == (2, 80000)
    original, rate = soundfile.read(esc50_root / "audio" / f"{clips.clip_ids[0]}.flac", dtype="float32")
    assert rate == 32000
    # Same loudness after halving the rate (ESC-10 clips have little energy above 8 kHz).
    rms_original = float(np.sqrt(np.mean(original**2)))
    assert clips.waveforms[0].pow(2).mean().sqrt().item() == pytest.approx(rms_original, rel=0.1)
    assert clips.waveforms.abs().max() < 1.0


def test_fold_4_is_complete_for_all_50_classes(esc50_root):
    dataset = ESC50(str(esc50_root), 32000, missing="skip")
    assert dataset.n_classes == 50 and len(dataset.class_names) == 50
    assert dataset.class_names[0] == "dog" and dataset.class_names[49] == "hand_saw"
    assert dataset.label_of_target == {target: target for target in range(50)}, "ESC-50 labels are its targets"
    assert len(dataset.clip_files["valid"]) == 400 and dataset.missing_clip_ids["valid"] == []


def test_missing_clips_are_counted_and_refused_with_missing_error(esc50_root):
    there = present_stems(esc50_root)
    train_stems = [Path(row["filename"]).stem for row in csv_rows(esc50_root) if row["fold"] in ("1", "2", "3")]
    n_missing = sum(stem not in there for stem in train_stems)
    first_missing = next(stem for stem in train_stems if stem not in there)
    with pytest.raises(AudioInterpError) as error:
        ESC50(str(esc50_root), 32000, missing="error")
    message = str(error.value)
    assert f"{n_missing} of the 1200" in message and first_missing in message
    assert "data.train_folds" in message and "data.missing=skip" in message and "\n" not in message


def test_missing_clips_are_skipped_with_a_warning_by_default(esc50_root, caplog):
    there = present_stems(esc50_root)
    fold5 = [Path(row["filename"]).stem for row in csv_rows(esc50_root) if row["fold"] == "5"]
    with caplog.at_level(logging.WARNING, logger="audiointerp.data.esc50"):
        dataset = ESC50(str(esc50_root), 32000, limit=8)
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    n_missing_test = sum(stem not in there for stem in fold5)
    assert any(f"{n_missing_test} of the 400" in message and "data.test_folds" in message for message in warnings)
    assert len(warnings) == 2, "train and test folds are partial, valid (fold 4) is complete"
    clips = dataset.load_split("test")
    assert len(clips) == 8 and all(stem in there for stem in clips.clip_ids)
    # Round-robin over the classes that are there: the first present clip of the 8 lowest targets.
    present = [row for row in csv_rows(esc50_root) if row["fold"] == "5" and Path(row["filename"]).stem in there]
    targets = sorted({int(row["target"]) for row in present})[:8]
    firsts = {int(row["target"]): Path(row["filename"]).stem for row in reversed(present)}
    assert clips.clip_ids == [stem for stem in fold5 if stem in {firsts[t] for t in targets}]


def test_configuration_errors_name_the_option(esc50_root, tmp_path):
    with pytest.raises(AudioInterpError, match="data.root"):
        ESC50(str(tmp_path), 32000)
    with pytest.raises(AudioInterpError, match="data.subset"):
        ESC50(str(esc50_root), 32000, subset="esc20")
    with pytest.raises(AudioInterpError, match="data.missing"):
        ESC50(str(esc50_root), 32000, missing="ignore")
    with pytest.raises(AudioInterpError, match="data.test_folds"):
        ESC50(str(esc50_root), 32000, train_folds=[1, 2, 3], test_folds=[3])
    with pytest.raises(AudioInterpError, match="data.valid_folds"):
        ESC50(str(esc50_root), 32000, valid_folds=[6])
    with pytest.raises(AudioInterpError, match=r"data.test_folds: fold\(s\) \[4\] are also in data.valid_folds"):
        ESC50(str(esc50_root), 32000, valid_folds=[4], test_folds=[4])
    with pytest.raises(AudioInterpError, match=r"data.test_folds: fold\(s\) \[5\] are also in data.valid_folds"):
        ESC50(str(esc50_root), 32000, valid_folds=[4, 5], test_folds=[5])
    with pytest.raises(AudioInterpError, match="split"):
        ESC50(str(esc50_root), 32000, subset="esc10").load_split("dev")


def test_hydra_configs_instantiate_on_the_shared_copy(esc50_root):
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO_ROOT / "conf")):
        esc10 = compose("config", overrides=["data=esc10", f"data.root={esc50_root}", "data.limit=2"])
        esc50 = compose("config", overrides=["data=esc50", f"data.root={esc50_root}", "data.limit=2",
                                             "feature=stft"])
    dataset = instantiate(esc10.data)
    assert dataset.n_classes == 10 and dataset.sample_rate == esc10.feature.sample_rate
    dataset = instantiate(esc50.data)
    assert dataset.n_classes == 50 and dataset.missing == "skip"
    assert dataset.load_split("test").waveforms.shape == (2, int(5 * esc50.feature.sample_rate))


# --- clip counts ----------------------------------------------------------------------------------

def class_order(clips) -> dict[int, list[str]]:
    """target -> its clips' stems, in the given order."""
    by_class: dict[int, list[str]] = {}
    for row, _ in clips:
        by_class.setdefault(row.target, []).append(row.stem)
    return by_class


def esc10_fold_rows(esc50_root: Path, folds: set[int]) -> list[dict]:
    return [row for row in csv_rows(esc50_root) if row["esc10"] == "True" and int(row["fold"]) in folds]


def test_limit_takes_the_same_number_of_each_class(esc50_root):
    dataset = ESC50(str(esc50_root), 32000, subset="esc10", limit=20, missing="error")
    for split, folds in (("train", {1, 2, 3}), ("valid", {4}), ("test", {5})):
        clips = dataset.clip_files[split]
        assert len(clips) == 20
        rows = esc10_fold_rows(esc50_root, folds)
        csv_stems = [Path(row["filename"]).stem for row in rows]
        # each class's first two clips, kept in csv order
        assert [row.stem for row, _ in clips] == [stem for stem in csv_stems if stem in {row.stem for row, _ in clips}]
        expected = {}
        for row in rows:
            expected.setdefault(int(row["target"]), []).append(Path(row["filename"]).stem)
        assert class_order(clips) == {target: stems[:2] for target, stems in expected.items()}, split
    assert Counter(dataset.load_split("valid").labels.tolist()) == {label: 2 for label in range(10)}


def test_a_limit_that_is_no_multiple_of_the_classes_favours_the_lower_labels(esc50_root):
    dataset = ESC50(str(esc50_root), 32000, subset="esc10", limit=13, missing="error")
    counts = Counter(dataset.label_of_target[row.target] for row, _ in dataset.clip_files["valid"])
    assert counts == {label: 2 if label < 3 else 1 for label in range(10)}


def test_clips_per_class_takes_each_class_first_clips_and_limit_caps_them(esc50_root):
    dataset = ESC50(str(esc50_root), 32000, subset="esc10", clips_per_class={"train": 3, "test": 1}, missing="error")
    expected = {}
    for row in esc10_fold_rows(esc50_root, {1, 2, 3}):
        expected.setdefault(int(row["target"]), []).append(Path(row["filename"]).stem)
    assert class_order(dataset.clip_files["train"]) == {target: stems[:3] for target, stems in expected.items()}
    assert len(dataset.clip_files["valid"]) == 80, "a split clips_per_class does not name keeps all its clips"
    assert Counter(row.target for row, _ in dataset.clip_files["test"]) == {target: 1 for target in ESC10_TARGETS}

    capped = ESC50(str(esc50_root), 32000, subset="esc10", clips_per_class={"train": 3}, limit=15, missing="error")
    counts = Counter(capped.label_of_target[row.target] for row, _ in capped.clip_files["train"])
    assert counts == {label: 2 if label < 5 else 1 for label in range(10)}
    assert set(capped.clip_files["train"]) <= set(dataset.clip_files["train"])


@pytest.mark.parametrize(("options", "message"), [
    ({"clips_per_class": {"train": 6, "dev": 2}}, "data.clips_per_class: unknown split 'dev'"),
    ({"clips_per_class": {"train": 0}}, "data.clips_per_class.train: expected a positive integer"),
    ({"clips_per_class": {"valid": 1.5}}, "data.clips_per_class.valid: expected a positive integer"),
    ({"clips_per_class": {"test": True}}, "data.clips_per_class.test: expected a positive integer"),
    ({"clips_per_class": [6, 2, 2]}, "data.clips_per_class: expected a mapping"),
    ({"limit": 0}, "data.limit: expected a positive integer"),
    ({"limit": 2.5}, "data.limit: expected a positive integer"),
    ({"limit": "8"}, "data.limit: expected a positive integer"),
    ({"valid_folds": [5], "test_folds": [5]}, "data.test_folds: fold(s) [5] are also in data.valid_folds"),
])
def test_bad_clip_counts_and_folds_are_refused_before_anything_is_read(tmp_path, options, message):
    # tmp_path has no meta/esc50.csv: the option's error must come before the root is looked at.
    with pytest.raises(AudioInterpError) as error:
        ESC50(str(tmp_path), 32000, **options)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.parametrize("data", ["synthetic", "esc10", "esc50"])
def test_smoke_experiment_composes_with_every_data_group(esc50_root, data):
    from audiointerp.errors import build

    root = [] if data == "synthetic" else [f"data.root={esc50_root}"]
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO_ROOT / "conf")):
        cfg = compose("config", overrides=["experiment=smoke", f"data={data}", *root])
    dataset = build(cfg.data)  # as the run builds it
    assert dataset.clips_per_class == {"train": 6, "valid": 2, "test": 2}
    if data == "synthetic":
        return
    there = present_stems(esc50_root)
    for split, folds, per_class in (("train", {1, 2, 3}, 6), ("valid", {4}, 2), ("test", {5}, 2)):
        available = Counter(int(row["target"]) for row in csv_rows(esc50_root)
                            if int(row["fold"]) in folds and Path(row["filename"]).stem in there
                            and int(row["target"]) in dataset.label_of_target)
        # ESC-10 has every clip; a class of the partial ESC-50 copy with fewer clips keeps all it has
        expected = {target: min(per_class, n) for target, n in available.items()}
        assert Counter(row.target for row, _ in dataset.clip_files[split]) == expected, split
    if data == "esc10":
        assert len(dataset.clip_files["train"]) == 60


# --- clips shorter than duration_s ----------------------------------------------------------------

# Two ESC-10 classes: train fold 1, valid fold 4, test fold 5.
SMALL_COPY = {"train": ["1-100032-A-0", "1-26806-A-1"], "valid": ["4-182395-A-0", "4-164021-A-1"],
              "test": ["5-203128-A-0", "5-194930-A-1"]}


def cut_clip(path: Path, seconds: float) -> np.ndarray:
    """Rewrite the FLAC at ``path`` as its first ``seconds``; returns those samples (float32)."""
    samples, rate = soundfile.read(path, dtype="float32")
    cut = samples[:int(seconds * rate)]
    soundfile.write(path, cut, rate, subtype="PCM_16", format="FLAC")
    return cut


def small_copy(esc50_copy, folder: Path) -> Path:
    return esc50_copy(folder, [stem for stems in SMALL_COPY.values() for stem in stems])


def test_a_short_clip_is_named_in_a_warning_once_and_zero_padded(esc50_copy, tmp_path, caplog):
    root = small_copy(esc50_copy, tmp_path / "esc50")
    short, other = (root / "audio" / f"{stem}.flac" for stem in (SMALL_COPY["train"][1], SMALL_COPY["test"][0]))
    cut = cut_clip(short, 2.0)
    cut_clip(other, 4.5)
    with caplog.at_level(logging.WARNING, logger="audiointerp.data.esc50"):
        dataset = ESC50(str(root), 32000, subset="esc10", train_folds=[1], missing="skip")
        clips = dataset.load_split("train")
        dataset.load_split("test")
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert str(short) in warnings[0] and "2.000 s" in warnings[0] and "data.duration_s=5" in warnings[0]
    assert str(other) in warnings[1] and "4.500 s" in warnings[1]
    waveform = clips.waveforms[clips.clip_ids.index(short.stem)]
    torch.testing.assert_close(waveform[:64000], torch.from_numpy(cut / np.abs(cut).max()))
    assert torch.all(waveform[64000:] == 0)


def test_a_short_clip_is_refused_under_missing_error(esc50_copy, tmp_path):
    root = small_copy(esc50_copy, tmp_path / "esc50")
    short = root / "audio" / f"{SMALL_COPY['valid'][0]}.flac"
    cut_clip(short, 3.0)
    with pytest.raises(AudioInterpError) as error:
        ESC50(str(root), 32000, subset="esc10", train_folds=[1], missing="error")
    message = str(error.value)
    assert message.startswith(f"{short}: 3.000 s long") and "data.missing=skip" in message and "\n" not in message
    # a clip the splits do not use is not checked
    assert ESC50(str(root), 32000, subset="esc10", train_folds=[1], valid_folds=[2], missing="error").n_classes == 2


# --- download path ------------------------------------------------------------------------------

def build_archive(esc50_root: Path, folder: Path, stems: list[str], extra: dict[str, bytes] | None = None,
                  csv_stems: list[str] | None = None) -> Path:
    """``folder/ESC-50-master.zip`` in the official layout, holding the real clips ``stems`` and a
    csv with the real rows of ``csv_stems`` (default: ``stems``)."""
    wanted = set(csv_stems or stems)
    lines = (esc50_root / "meta" / "esc50.csv").read_text().splitlines(keepends=True)
    kept = [lines[0]] + [line for line in lines[1:] if Path(line.split(",")[0]).stem in wanted]
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / "ESC-50-master.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("ESC-50-master/README.md", "ESC-50 test copy\n")
        zipped.writestr("ESC-50-master/meta/esc50.csv", "".join(kept))
        for stem in stems:
            zipped.write(esc50_root / "audio" / f"{stem}.flac", f"ESC-50-master/audio/{stem}.flac")
        for name, data in (extra or {}).items():
            zipped.writestr(name, data)
    return archive


def small_esc50(download_dir: Path, url: str) -> ESC50:
    return ESC50(None, 32000, download_dir=str(download_dir), url=url, expected_clips=len(ARCHIVE_STEMS), missing="error")


def test_download_extract_verify_then_reuse(esc50_root, tmp_path, serve_directory):
    server = serve_directory(build_archive(esc50_root, tmp_path / "served", ARCHIVE_STEMS).parent)
    download_dir = tmp_path / "data"
    dataset = small_esc50(download_dir, server.url + "ESC-50-master.zip")
    root = download_dir / "ESC-50" / "ESC-50-master"
    assert dataset.root == root.resolve()
    assert json.loads((download_dir / "ESC-50" / ".verified").read_text())["clips"] == len(ARCHIVE_STEMS)
    assert not (download_dir / "ESC-50-master.zip").exists(), "the archive is kept after verification"
    clips = dataset.load_split("test")
    assert clips.clip_ids == ["5-151085-A-20", "5-170338-A-41"]
    # The small csv has 4 of the 50 targets (0, 20, 41, 49); labels index them in target order.
    assert dataset.class_names == ["dog", "crying_baby", "chainsaw", "hand_saw"] and clips.labels.tolist() == [1, 2]
    expected, _ = soundfile.read(esc50_root / "audio" / "5-151085-A-20.flac", dtype="float32")
    torch.testing.assert_close(clips.waveforms[0], torch.from_numpy(expected / np.abs(expected).max()))

    n_requests = len(server.requests)
    assert small_esc50(download_dir, server.url + "ESC-50-master.zip").n_classes == 4
    assert len(server.requests) == n_requests, "a verified copy was downloaded again"


def test_interrupted_download_is_resumed(esc50_root, tmp_path, serve_directory):
    archive = build_archive(esc50_root, tmp_path / "served", ARCHIVE_STEMS)
    server = serve_directory(archive.parent)
    server.cut_after = archive.stat().st_size // 2
    download_dir = tmp_path / "data"
    with pytest.raises(AudioInterpError, match="run again to resume"):
        small_esc50(download_dir, server.url + "ESC-50-master.zip")
    assert (download_dir / "ESC-50-master.zip.part").stat().st_size == server.cut_after
    assert not (download_dir / "ESC-50" / ".verified").exists()

    server.cut_after = None
    small_esc50(download_dir, server.url + "ESC-50-master.zip")
    assert server.requests[-1][1] == f"bytes={archive.stat().st_size // 2}-"
    assert (download_dir / "ESC-50" / ".verified").is_file()


def test_unverified_extraction_is_redone(esc50_root, tmp_path, serve_directory):
    server = serve_directory(build_archive(esc50_root, tmp_path / "served", ARCHIVE_STEMS).parent)
    download_dir = tmp_path / "data"
    small_esc50(download_dir, server.url + "ESC-50-master.zip")
    # As if the previous run had stopped halfway through extracting: no marker, a clip missing.
    (download_dir / "ESC-50" / ".verified").unlink()
    clip = download_dir / "ESC-50" / "ESC-50-master" / "audio" / f"{ARCHIVE_STEMS[0]}.flac"
    clip.unlink()
    small_esc50(download_dir, server.url + "ESC-50-master.zip")
    assert clip.is_file() and (download_dir / "ESC-50" / ".verified").is_file()


def test_incomplete_archive_fails_verification_without_marker(esc50_root, tmp_path, serve_directory):
    server = serve_directory(build_archive(esc50_root, tmp_path / "served", ARCHIVE_STEMS[1:],
                                           csv_stems=ARCHIVE_STEMS).parent)
    download_dir = tmp_path / "data"
    with pytest.raises(AudioInterpError, match=rf"1 of {len(ARCHIVE_STEMS)} clips missing \({ARCHIVE_STEMS[0]}\)"):
        small_esc50(download_dir, server.url + "ESC-50-master.zip")
    assert not (download_dir / "ESC-50" / ".verified").exists()


def test_verifier_checks_row_count_and_clip_length(esc50_root, tmp_path):
    root = tmp_path / "copy"
    (root / "meta").mkdir(parents=True)
    (root / "audio").mkdir()
    build_archive(esc50_root, tmp_path, ARCHIVE_STEMS[:2])
    with zipfile.ZipFile(tmp_path / "ESC-50-master.zip") as zipped:
        (root / "meta" / "esc50.csv").write_bytes(zipped.read("ESC-50-master/meta/esc50.csv"))
    with pytest.raises(AudioInterpError, match="2 rows, expected 2000"):
        verify_esc50(root)
    full, rate = soundfile.read(esc50_root / "audio" / f"{ARCHIVE_STEMS[0]}.flac")
    soundfile.write(root / "audio" / f"{ARCHIVE_STEMS[0]}.wav", full, rate)
    soundfile.write(root / "audio" / f"{ARCHIVE_STEMS[1]}.flac", full[: 3 * rate], rate)
    with pytest.raises(AudioInterpError, match=re.escape(f"{ARCHIVE_STEMS[1]} (3.000 s)")):
        verify_esc50(root, expected_clips=2)


def test_archive_with_a_parent_directory_member_is_refused(esc50_root, tmp_path, serve_directory):
    archive = build_archive(esc50_root, tmp_path / "served", ARCHIVE_STEMS, extra={"../evil.txt": b"evil"})
    server = serve_directory(archive.parent)
    download_dir = tmp_path / "data"
    with pytest.raises(AudioInterpError, match=re.escape("'../evil.txt'")):
        download_esc50(download_dir, url=server.url + "ESC-50-master.zip", expected_clips=len(ARCHIVE_STEMS))
    assert not (tmp_path / "evil.txt").exists() and not (download_dir.parent / "evil.txt").exists()
    assert not (download_dir / "ESC-50").exists() and not (download_dir / "ESC-50-master.zip").exists()
