"""ESC-50 (and its 10-class subset ESC-10): 2000 five-second environmental recordings in 5 folds.

With ``root`` the dataset is read from a folder holding ``meta/esc50.csv`` and ``audio/``; clips
may be ``.wav`` (as published) or ``.flac`` under the csv's file stem. Without ``root`` the
official archive is downloaded once into ``download_dir``, extracted and checked in full; a
marker file written only after the check tells later runs the copy is complete.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path

import soundfile
import torch
from hydra.utils import to_absolute_path

from audiointerp.atomic import atomic_path
from audiointerp.data import SPLITS, ClipSet, audio, check_clips_per_class
from audiointerp.data.audio import load_audio
from audiointerp.data.base import Dataset, FileIdentity, balanced_selection, check_split
from audiointerp.data.download import fetch, safe_extract_zip
from audiointerp.errors import AudioInterpError
from audiointerp.hashing import file_sha256
from audiointerp.progress import progress

log = logging.getLogger(__name__)

ESC50_URL = "https://github.com/karoldvl/ESC-50/archive/master.zip"
ESC50_CLIPS = 2000
ESC50_FOLDS = (1, 2, 3, 4, 5)
CLIP_DURATION_S = 5.0
CSV_COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
AUDIO_SUFFIXES = (".wav", ".flac")
SUBSET_NAMES = {"esc50": "ESC-50", "esc10": "ESC-10"}
MISSING_POLICIES = ("error", "skip")
# Written beside the extracted folder only once every clip has been checked.
VERIFIED_MARKER = ".verified"
ARCHIVE_NAME = "ESC-50-master.zip"
EXTRACTED_DIR = "ESC-50"
# How many missing clip ids a message names.
NAMED_MISSING = 5


@dataclass(frozen=True)
class Esc50Row:
    """One line of ``meta/esc50.csv``."""

    stem: str
    fold: int
    target: int
    category: str
    esc10: bool


def read_metadata(csv_path: str | os.PathLike) -> list[Esc50Row]:
    """The rows of an ``esc50.csv`` in file order.

    Raises:
        AudioInterpError: the file is missing, lacks a column or has a malformed row.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise AudioInterpError(f"{csv_path}: no such file; expected the ESC-50 metadata csv")
    with open(csv_path, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        absent = [column for column in CSV_COLUMNS if column not in (reader.fieldnames or [])]
        if absent:
            raise AudioInterpError(f"{csv_path}: missing column(s) {', '.join(absent)}; expected {','.join(CSV_COLUMNS)}")
        rows = []
        for line_number, record in enumerate(reader, start=2):
            try:
                esc10 = {"true": True, "false": False}[record["esc10"].strip().lower()]
                rows.append(Esc50Row(stem=Path(record["filename"].strip()).stem, fold=int(record["fold"]),
                                     target=int(record["target"]), category=record["category"].strip(), esc10=esc10))
            except (KeyError, ValueError, AttributeError):
                raise AudioInterpError(f"{csv_path}:{line_number}: malformed row {dict(record)!r}; "
                                       "expected integer fold/target and esc10 True/False") from None
    return rows


def find_clip_files(audio_dir: str | os.PathLike) -> dict[str, Path]:
    """File stem -> path of every ``.wav``/``.flac`` in ``audio_dir`` (``.wav`` wins a tie)."""
    audio_dir = Path(audio_dir)
    if not audio_dir.is_dir():
        return {}
    found: dict[str, Path] = {}
    for entry in os.scandir(audio_dir):
        path = Path(entry.path)
        suffix = path.suffix.lower()
        if suffix in AUDIO_SUFFIXES and entry.is_file() and (path.stem not in found or suffix == ".wav"):
            found[path.stem] = path
    return found


def _named(stems: Sequence[str]) -> str:
    shown = ", ".join(stems[:NAMED_MISSING])
    return shown + (", ..." if len(stems) > NAMED_MISSING else "")


def verify_esc50(root: str | os.PathLike, expected_clips: int = ESC50_CLIPS) -> None:
    """Check that ``root`` holds a complete ESC-50: ``meta/esc50.csv`` with ``expected_clips`` rows
    and the expected columns, and every clip present, readable and 5 s long.

    Raises:
        AudioInterpError: naming what is wrong and a few offending clips.
    """
    root = Path(root)
    csv_path = root / "meta" / "esc50.csv"
    rows = read_metadata(csv_path)
    if len(rows) != expected_clips:
        raise AudioInterpError(f"{csv_path}: {len(rows)} rows, expected {expected_clips}")
    files = find_clip_files(root / "audio")
    missing = [row.stem for row in rows if row.stem not in files]
    if missing:
        raise AudioInterpError(f"{root / 'audio'}: {len(missing)} of {len(rows)} clips missing ({_named(missing)})")
    bad: list[str] = []
    for row in progress(rows, desc="checking ESC-50 clips", unit="clip"):
        try:
            info = soundfile.info(str(files[row.stem]))
        except (soundfile.LibsndfileError, RuntimeError):
            bad.append(f"{row.stem} (unreadable)")
            continue
        # One sample of slack: 5 s is not a whole number of samples at every rate.
        if abs(info.frames - CLIP_DURATION_S * info.samplerate) > 1:
            bad.append(f"{row.stem} ({info.frames / info.samplerate:.3f} s)")
    if bad:
        raise AudioInterpError(f"{root / 'audio'}: {len(bad)} clips unreadable or not {CLIP_DURATION_S:g} s long "
                               f"({_named(bad)})")


def download_esc50(download_dir: str | os.PathLike, url: str = ESC50_URL,
                   expected_clips: int = ESC50_CLIPS) -> Path:
    """The root of a verified ESC-50 copy under ``download_dir``, downloaded and extracted if needed.

    Steps, each redone if a previous run stopped inside it: download ``url`` to
    ``download_dir/ESC-50-master.zip`` (resumable), extract it into ``download_dir/ESC-50``,
    verify it with :func:`verify_esc50`, write the marker, delete the archive.

    Returns:
        The extracted folder that holds ``meta/esc50.csv`` and ``audio/``.
    """
    download_dir = Path(download_dir)
    extracted = download_dir / EXTRACTED_DIR
    marker = extracted / VERIFIED_MARKER
    if marker.is_file():
        try:
            root = extracted / json.loads(marker.read_text())["root"]
        except (ValueError, KeyError, TypeError):
            root = None
        if root is not None and (root / "meta" / "esc50.csv").is_file():
            return root
        log.warning("%s is unreadable or points to a missing folder; extracting ESC-50 again", marker)

    # The archive is built by GitHub on request, so its hash changes; the content check below
    # stands in for a checksum.
    archive = fetch(url, download_dir / ARCHIVE_NAME, what="ESC-50 archive (about 600 MB)")
    staging = download_dir / f"{EXTRACTED_DIR}.extracting"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        safe_extract_zip(archive, staging)
    except AudioInterpError as error:
        shutil.rmtree(staging, ignore_errors=True)
        archive.unlink(missing_ok=True)
        raise AudioInterpError(f"{error}; deleted the archive, run again to download it again") from None
    shutil.rmtree(extracted, ignore_errors=True)
    os.replace(staging, extracted)

    roots = [folder for folder in [extracted, *sorted(extracted.iterdir())]
             if folder.is_dir() and (folder / "meta" / "esc50.csv").is_file()]
    if len(roots) != 1:
        raise AudioInterpError(f"{archive}: expected one folder with meta/esc50.csv inside, found {len(roots)}")
    root = roots[0]
    verify_esc50(root, expected_clips)
    with atomic_path(marker) as temporary:
        temporary.write_text(json.dumps({"root": root.relative_to(extracted).as_posix(), "clips": expected_clips,
                                         "url": url}))
    archive.unlink()
    log.info("ESC-50 verified in %s (archive deleted)", root)
    return root


def _folds(option: str, folds: Iterable) -> tuple[int, ...]:
    try:
        values = tuple(folds)
    except TypeError:
        values = (folds,)
    if not all(isinstance(f, Integral) and not isinstance(f, bool) and f in ESC50_FOLDS for f in values):
        raise AudioInterpError(f"{option}: expected a list of folds from 1 to 5, got {folds!r}")
    return tuple(int(f) for f in values)


class ESC50(Dataset):
    """ESC-50 or ESC-10 clips, split by fold, loaded into memory one split at a time.

    Args:
        root: folder with ``meta/esc50.csv`` and ``audio/`` (relative to the launch folder), or
            None to download and verify the official archive into ``download_dir``.
        sample_rate: Hz the clips are resampled to.
        duration_s: clip length; clips are cut or zero-padded to it.
        train_folds, valid_folds, test_folds: the folds (1-5) of each split; no fold may be in two.
        limit: at most ``limit`` clips per split, taken round-robin over the classes (see
            :func:`audiointerp.data.base.balanced_selection`), or None for all.
        clips_per_class: split name -> the first N clips (csv order) of each class in that split,
            e.g. ``{"train": 6, "valid": 2, "test": 2}``; a split not named, or None, keeps all.
            Applied before ``limit``.
        peak_normalise: divide each clip by its largest absolute sample.
        subset: "esc50" (50 classes) or "esc10" (the 10 ESC-10 classes, labels 0-9 in the order
            of their ESC-50 targets).
        missing: clips of the selected folds absent from ``root``, or shorter than ``duration_s``:
            "skip" logs a warning (with the counts; naming each short file, which is zero-padded)
            and uses the clips that are there; "error" refuses to run.
        download_dir: where the archive is downloaded and extracted when ``root`` is None.
        url, expected_clips: the archive and its clip count (tests point them at a small copy).

    Attributes:
        n_classes, class_names, sample_rate; ``clip_files``: split -> (row, path) of the clips it
        uses (present, after ``clips_per_class`` and ``limit``), csv order; ``missing_clip_ids``:
        split -> ids of its folds' clips that are not in ``root`` (all empty for a downloaded copy).
    """

    def __init__(
        self,
        root: str | None = None,
        sample_rate: int = 32000,
        duration_s: float = CLIP_DURATION_S,
        train_folds: Sequence[int] = (1, 2, 3),
        valid_folds: Sequence[int] = (4,),
        test_folds: Sequence[int] = (5,),
        limit: int | None = None,
        clips_per_class: Mapping[str, int] | None = None,
        peak_normalise: bool = True,
        subset: str = "esc50",
        missing: str = "skip",
        download_dir: str = "data",
        url: str = ESC50_URL,
        expected_clips: int = ESC50_CLIPS,
    ) -> None:
        if subset not in SUBSET_NAMES:
            raise AudioInterpError(f"data.subset: expected one of {list(SUBSET_NAMES)}, got {subset!r}")
        if missing not in MISSING_POLICIES:
            raise AudioInterpError(f"data.missing: expected one of {list(MISSING_POLICIES)}, got {missing!r}")
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, Integral) or sample_rate <= 0:
            raise AudioInterpError(f"data.sample_rate: expected a positive integer (Hz), got {sample_rate!r}")
        if isinstance(duration_s, bool) or not isinstance(duration_s, Real) or duration_s <= 0:
            raise AudioInterpError(f"data.duration_s: expected a positive number of seconds, got {duration_s!r}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, Integral) or limit < 1):
            raise AudioInterpError(f"data.limit: expected a positive integer or null, got {limit!r}")
        self.clips_per_class = {} if clips_per_class is None else check_clips_per_class(clips_per_class)
        self.folds = {"train": _folds("data.train_folds", train_folds),
                      "valid": _folds("data.valid_folds", valid_folds),
                      "test": _folds("data.test_folds", test_folds)}
        # Validation picks the best epoch, so a test fold shared with it would leak into the model too.
        for first, second in (("train", "valid"), ("train", "test"), ("valid", "test")):
            shared = sorted(set(self.folds[first]) & set(self.folds[second]))
            if shared:
                raise AudioInterpError(f"data.{second}_folds: fold(s) {shared} are also in data.{first}_folds; "
                                       "expected the train, valid and test splits to have no fold in common")

        self.sample_rate = int(sample_rate)
        self.duration_s = float(duration_s)
        self.limit = None if limit is None else int(limit)
        self.peak_normalise = bool(peak_normalise)
        self.subset = subset
        self.missing = missing
        if root is None:
            self.root = download_esc50(Path(to_absolute_path(str(download_dir))).resolve(), url=url,
                                       expected_clips=expected_clips)
        else:
            self.root = Path(to_absolute_path(str(root))).resolve()
            if not (self.root / "meta" / "esc50.csv").is_file():
                raise AudioInterpError(f"data.root={root}: no meta/esc50.csv in {self.root}; expected the ESC-50 "
                                       "folder with meta/esc50.csv and audio/")

        rows = read_metadata(self.root / "meta" / "esc50.csv")
        if subset == "esc10":
            rows = [row for row in rows if row.esc10]
        categories: dict[int, str] = {}
        for row in rows:
            if categories.setdefault(row.target, row.category) != row.category:
                raise AudioInterpError(f"{self.root / 'meta' / 'esc50.csv'}: target {row.target} is both "
                                       f"{categories[row.target]!r} and {row.category!r}; expected one category per target")
        targets = sorted(categories)
        self.label_of_target = {target: label for label, target in enumerate(targets)}
        self.class_names = [categories[target] for target in targets]
        self.n_classes = len(self.class_names)

        files = find_clip_files(self.root / "audio")
        self.clip_files: dict[str, list[tuple[Esc50Row, Path]]] = {}
        self.missing_clip_ids: dict[str, list[str]] = {}
        for split in SPLITS:
            split_rows = [row for row in rows if row.fold in self.folds[split]]
            self.clip_files[split] = [(row, files[row.stem]) for row in split_rows if row.stem in files]
            self.missing_clip_ids[split] = [row.stem for row in split_rows if row.stem not in files]
            self._report_missing(split, len(split_rows))
            # Classes in target order, which is label order.
            self.clip_files[split] = balanced_selection(self.clip_files[split], lambda clip: clip[0].target,
                                                        self.clips_per_class.get(split), self.limit)
        self._check_lengths()
        self._identity: dict[tuple[str, ...], dict] = {}
        self._files = FileIdentity()

    def _report_missing(self, split: str, n_selected: int) -> None:
        missing = self.missing_clip_ids[split]
        if not missing:
            return
        where = (f"{len(missing)} of the {n_selected} {SUBSET_NAMES[self.subset]} clips of data.{split}_folds "
                 f"{list(self.folds[split])} are missing from {self.root / 'audio'} ({_named(missing)})")
        if self.missing == "error":
            raise AudioInterpError(f"{where}; set data.missing=skip to use the clips that are there")
        present = self.clip_files[split]
        n_present_classes = len({row.target for row, _ in present})
        log.warning("%s; using the %d present (%d of %d classes) because data.missing=skip",
                    where, len(present), n_present_classes, self.n_classes)

    def _check_lengths(self) -> None:
        """Read the header of every clip the splits use: one shorter than ``duration_s`` is named in
        a warning of its own and zero-padded when loaded, or refused under ``missing="error"``."""
        short: list[str] = []
        for split in SPLITS:
            for _, path in self.clip_files[split]:
                try:
                    info = soundfile.info(str(path))
                except (soundfile.LibsndfileError, RuntimeError) as error:
                    reason = " ".join(str(error).split())
                    raise AudioInterpError(f"{path}: cannot read audio ({reason}); expected a WAV or FLAC file") from None
                # One sample of slack: duration_s is not a whole number of samples at every rate.
                if info.frames < self.duration_s * info.samplerate - 1:
                    short.append(f"{path}: {info.frames / info.samplerate:.3f} s long, shorter than "
                                 f"data.duration_s={self.duration_s:g}")
        if short and self.missing == "error":
            more = f" (and {len(short) - 1} more clips)" if len(short) > 1 else ""
            raise AudioInterpError(f"{short[0]}{more}; set data.missing=skip to zero-pad short clips")
        for message in short:
            log.warning("%s; zero-padded to %g s because data.missing=skip", message, self.duration_s)

    def identity(self, splits: tuple[str, ...] = SPLITS) -> dict:
        """What determines the clips of ``splits`` as the pipeline sees them: the clips actually used,
        by id, label and the sha256 of their file's bytes, and how they are loaded; not ``root`` nor
        ``missing`` (:meth:`training_identity` is this for train and valid)."""
        if splits not in self._identity:
            clips_sha256 = self._files.clips_sha256(
                (split, [(row.stem, self.label_of_target[row.target], path) for row, path in self.clip_files[split]])
                for split in splits)
            self._identity[splits] = {
                "dataset": "esc50", "subset": self.subset,
                "clips_sha256": clips_sha256,
                "n_clips": {split: len(self.clip_files[split]) for split in splits},
                "n_classes": self.n_classes, "sample_rate": self.sample_rate, "duration_s": self.duration_s,
                "peak_normalise": self.peak_normalise,
                # Resampling and padding turn the files into what the model is trained on.
                "loader_sha256": file_sha256(audio.__file__),
            }
        return dict(self._identity[splits])

    def split_size(self, split: str) -> int:
        """How many clips ``load_split(split)`` returns."""
        return len(self.clip_files[split])

    def load_split(self, split: str) -> ClipSet:
        """The clips of ``split`` (``clip_files[split]``: present, after ``clips_per_class`` and
        ``limit``), in csv order.

        Returns:
            ClipSet with waveforms (N, round(duration_s * sample_rate)) float32, labels (N,) int64,
            clip ids = file stems.
        """
        clips = self.clip_files[check_split(split)]
        if not clips:
            raise AudioInterpError(f"data.{split}_folds {list(self.folds[split])}: no {SUBSET_NAMES[self.subset]} clips "
                                   f"of these folds in {self.root / 'audio'}")
        n_samples = int(round(self.duration_s * self.sample_rate))
        waveforms = torch.empty((len(clips), n_samples), dtype=torch.float32)
        for index, (_, path) in enumerate(progress(clips, desc=f"loading {SUBSET_NAMES[self.subset]} {split}", unit="clip")):
            waveforms[index] = load_audio(path, self.sample_rate, self.duration_s, self.peak_normalise)
        return ClipSet(
            waveforms=waveforms,
            labels=torch.tensor([self.label_of_target[row.target] for row, _ in clips], dtype=torch.long),
            clip_ids=[row.stem for row, _ in clips],
            class_names=list(self.class_names),
            sample_rate=self.sample_rate,
        )
