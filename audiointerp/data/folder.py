"""``data=folder``: your own recordings, from class subfolders or a csv list.

Three layouts:

* ``root=DIR`` with class subfolders ``DIR/<class>/**/<clip>.wav`` (or any format in
  :data:`AUDIO_SUFFIXES`): the folder names are the classes, sorted.
* ``root=DIR`` holding audio files and no subfolders: unlabelled clips.
* ``csv=FILE`` with a header and columns ``path,label[,split]``: paths relative to the csv's
  folder; an absent ``label`` column or all-empty labels mean unlabelled clips; a ``split`` column
  (train / valid / test) assigns every clip its split.

Clips of any length, sample rate and channel count are downmixed, resampled to ``sample_rate`` and
zero-padded or cut to ``duration_s``. Without a split column labelled clips are split by
``split_fractions`` within each class (:func:`assign_splits`), deterministically from ``seed``;
unlabelled clips, which no model can be trained on, all go to the test split.

Every file is found and its header read in the constructor, so a missing, unreadable or empty file,
a malformed csv or an unknown label is one AudioInterpError line naming the file before anything
expensive runs.
"""

from __future__ import annotations

import csv as csv_module
import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path, PurePosixPath

import soundfile
import torch
from hydra.utils import to_absolute_path

from audiointerp.data import SPLITS, ClipSet, audio, check_clips_per_class
from audiointerp.data.audio import load_audio
from audiointerp.data.base import UNKNOWN_LABEL, Dataset, FileIdentity, balanced_selection, check_split
from audiointerp.errors import AudioInterpError
from audiointerp.hashing import file_sha256
from audiointerp.progress import progress

log = logging.getLogger(__name__)

#: File endings read as audio (what libsndfile decodes), compared in lower case.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff")
CSV_PATH_COLUMN, CSV_LABEL_COLUMN, CSV_SPLIT_COLUMN = "path", "label", "split"
DEFAULT_SPLIT_FRACTIONS = {"train": 0.7, "valid": 0.15, "test": 0.15}
# How far the fractions' sum may be from 1 (0.7 + 0.15 + 0.15 is not exactly 1 in floating point).
FRACTION_SUM_TOLERANCE = 1e-6


@dataclass(frozen=True)
class FolderClip:
    """One clip of the folder: ``clip_id`` is its path relative to the root (or the csv's folder)
    in POSIX form, ``label`` its class index (-1 unknown), ``split`` the split a csv gave it."""

    clip_id: str
    path: Path
    label: int
    split: str | None = None


def is_audio_file(path: Path) -> bool:
    """A visible file with an audio ending (``.DS_Store`` and other hidden files are skipped)."""
    return path.suffix.lower() in AUDIO_SUFFIXES and not path.name.startswith(".") and path.is_file()


def check_split_fractions(value) -> dict[str, float]:
    """``data.split_fractions`` as {split: fraction} for every split (0 where not named).

    Raises:
        AudioInterpError: not a mapping of train / valid / test to numbers >= 0 summing to 1.
    """
    expected = "expected fractions of train, valid and test that sum to 1, e.g. {train: 0.7, valid: 0.15, test: 0.15}"
    if not isinstance(value, Mapping):
        raise AudioInterpError(f"data.split_fractions: {expected}; got {value!r}")
    fractions = {split: 0.0 for split in SPLITS}
    for split, fraction in dict(value).items():
        if split not in SPLITS:
            raise AudioInterpError(f"data.split_fractions: unknown split {split!r}; {expected}")
        if isinstance(fraction, bool) or not isinstance(fraction, Real) or not 0 <= fraction <= 1:
            raise AudioInterpError(f"data.split_fractions.{split}: expected a number from 0 to 1, got {fraction!r}")
        fractions[split] = float(fraction)
    if abs(sum(fractions.values()) - 1) > FRACTION_SUM_TOLERANCE:
        raise AudioInterpError(f"data.split_fractions: {expected}; got {dict(value)!r} "
                               f"(sum {sum(fractions.values()):g})")
    return fractions


def split_counts(n_clips: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """How many of a class's ``n_clips`` each split gets: the largest-remainder rounding of
    ``n_clips * fraction``, then, where the class has enough clips, at least one in every split
    with a fraction above 0 (taken from the split that has most), so a small class is in every split."""
    exact = {split: n_clips * fractions[split] for split in SPLITS}
    counts = {split: math.floor(exact[split]) for split in SPLITS}
    by_remainder = sorted(SPLITS, key=lambda split: (-(exact[split] - counts[split]), SPLITS.index(split)))
    for split in by_remainder[:n_clips - sum(counts.values())]:
        counts[split] += 1
    for split in SPLITS:
        if fractions[split] > 0 and counts[split] == 0:
            richest = max(SPLITS, key=lambda other: (counts[other], -SPLITS.index(other)))
            if counts[richest] > 1:
                counts[richest] -= 1
                counts[split] += 1
    return counts


def assign_splits(clips: Sequence[FolderClip], fractions: Mapping[str, float], seed: int) -> dict[str, str]:
    """clip_id -> split: each class's clips split by ``fractions`` (:func:`split_counts`).

    A class's clips are put in an order drawn from ``seed`` (by the sha256 of seed and clip id, so a
    clip's place does not depend on the other classes, nor on the order files were listed in); the
    first ``counts["train"]`` go to train, the next to valid, the rest to test.
    """
    by_class: dict[int, list[str]] = {}
    for clip in clips:
        by_class.setdefault(clip.label, []).append(clip.clip_id)
    assigned: dict[str, str] = {}
    for clip_ids in by_class.values():
        shuffled = sorted(clip_ids, key=lambda clip_id: hashlib.sha256(f"{seed}\0{clip_id}".encode()).hexdigest())
        counts = split_counts(len(shuffled), fractions)
        start = 0
        for split in SPLITS:
            for clip_id in shuffled[start:start + counts[split]]:
                assigned[clip_id] = split
            start += counts[split]
    return assigned


def _sorted_labels(names: set[str]) -> list[str]:
    """Class names in label order: numerically when all are integers ("2" before "10"), else as text."""
    if all(name.lstrip("-").isdigit() for name in names):
        return sorted(names, key=int)
    return sorted(names)


class AudioFolder(Dataset):
    """Your own audio clips, from class subfolders or a csv list (see the module docstring).

    Args:
        root: folder with class subfolders, or with unlabelled audio files only (relative to the
            launch folder). Exactly one of ``root`` and ``csv``.
        csv: csv file with columns ``path,label[,split]`` (relative to the launch folder); its paths
            are relative to its own folder and may not leave it.
        class_names: the classes in label order. None: the subfolder names, or the csv's labels,
            sorted (numerically when all are integers). Given: every folder or label must be one of
            them, and unlabelled data gets them as its classes (the output order of the checkpoint
            that explains it); without them unlabelled data has ``n_classes`` None.
        sample_rate: Hz the clips are resampled to.
        duration_s: clip length; longer clips are cut, shorter ones zero-padded at the end.
        split_fractions: split -> share of each class's clips, summing to 1 (a split not named gets
            none); not used when a csv has a split column, nor for unlabelled clips (all test).
        seed: draws the split of each clip (:func:`assign_splits`).
        clips_per_class: split -> the first N clips (clip id order) of each class in that split; a
            split not named, or None, keeps all. Applied before ``limit``.
        limit: at most ``limit`` clips per split, round-robin over the classes, or None for all.
        peak_normalise: divide each clip by its largest absolute sample.

    Attributes:
        n_classes, class_names, sample_rate, has_labels; ``source``: the root or csv path;
        ``clip_files``: split -> its :class:`FolderClip` list, in clip id order, after
        ``clips_per_class`` and ``limit``.
    """

    def __init__(
        self,
        root: str | None = None,
        csv: str | None = None,
        class_names: Sequence[str] | None = None,
        sample_rate: int = 32000,
        duration_s: float = 5.0,
        split_fractions: Mapping[str, float] | None = None,
        seed: int = 0,
        clips_per_class: Mapping[str, int] | None = None,
        limit: int | None = None,
        peak_normalise: bool = True,
    ) -> None:
        if (root is None) == (csv is None):
            raise AudioInterpError(f"data=folder: expected exactly one of data.root=DIR (class subfolders) and "
                                   f"data.csv=FILE (path,label[,split] columns), got root={root!r}, csv={csv!r}")
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, Integral) or sample_rate <= 0:
            raise AudioInterpError(f"data.sample_rate: expected a positive integer (Hz), got {sample_rate!r}")
        if isinstance(duration_s, bool) or not isinstance(duration_s, Real) or duration_s <= 0:
            raise AudioInterpError(f"data.duration_s: expected a positive number of seconds, got {duration_s!r}")
        if isinstance(seed, bool) or not isinstance(seed, Integral):
            raise AudioInterpError(f"data.seed: expected an integer, got {seed!r}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, Integral) or limit < 1):
            raise AudioInterpError(f"data.limit: expected a positive integer or null, got {limit!r}")
        if class_names is not None:
            if isinstance(class_names, str) or not all(isinstance(name, str) and name for name in class_names) \
                    or len(set(class_names)) != len(class_names) or not class_names:
                raise AudioInterpError(f"data.class_names: expected a list of distinct non-empty names, "
                                       f"got {class_names!r}")
            class_names = list(class_names)
        self.split_fractions = check_split_fractions(DEFAULT_SPLIT_FRACTIONS if split_fractions is None
                                                     else split_fractions)
        self.clips_per_class = {} if clips_per_class is None else check_clips_per_class(clips_per_class)
        self.sample_rate = int(sample_rate)
        self.duration_s = float(duration_s)
        self.seed = int(seed)
        self.limit = None if limit is None else int(limit)
        self.peak_normalise = bool(peak_normalise)

        if root is not None:
            self.source = Path(to_absolute_path(str(root))).resolve()
            clips, names = self._from_folders(class_names)
        else:
            self.source = Path(to_absolute_path(str(csv))).resolve()
            clips, names = self._from_csv(class_names)
        self.has_labels = any(clip.label != UNKNOWN_LABEL for clip in clips)
        self.class_names = names
        self.n_classes = len(names) if names else None
        for clip in clips:
            self._check_readable(clip.path)

        if all(clip.split is not None for clip in clips):
            split_of = {clip.clip_id: clip.split for clip in clips}
        elif not self.has_labels:  # nothing to train on: every clip is explained
            split_of = {clip.clip_id: "test" for clip in clips}
        else:
            split_of = assign_splits(clips, self.split_fractions, self.seed)
        self.clip_files: dict[str, list[FolderClip]] = {}
        for split in SPLITS:
            in_split = sorted((clip for clip in clips if split_of[clip.clip_id] == split), key=lambda c: c.clip_id)
            self.clip_files[split] = balanced_selection(in_split, lambda clip: clip.label,
                                                        self.clips_per_class.get(split), self.limit)
        self._identity: dict[tuple[str, ...], dict] = {}
        self._files = FileIdentity()
        log.info("data=folder %s: %s", self.source, ", ".join(f"{len(self.clip_files[s])} {s}" for s in SPLITS))

    def _from_folders(self, given_names: list[str] | None) -> tuple[list[FolderClip], list[str]]:
        """The clips under ``source``: class subfolders, or unlabelled audio files directly in it."""
        root = self.source
        if not root.is_dir():
            raise AudioInterpError(f"data.root={root}: no such folder; expected a folder with one subfolder of "
                                   "audio clips per class")
        entries = sorted(entry for entry in root.iterdir() if not entry.name.startswith("."))
        folders = [entry for entry in entries if entry.is_dir()]
        loose = [entry for entry in entries if is_audio_file(entry)]
        if loose and folders:
            raise AudioInterpError(f"{loose[0]}: an audio file beside class subfolders; expected every clip in "
                                   f"{root}/<class>/ (or no subfolders, for unlabelled clips)")
        if loose:
            return [FolderClip(entry.name, entry, UNKNOWN_LABEL) for entry in loose], given_names or []
        if not folders:
            raise AudioInterpError(f"data.root={root}: no class subfolders and no audio files "
                                   f"({', '.join(AUDIO_SUFFIXES)}); expected {root}/<class>/<clip>")
        names = given_names or [folder.name for folder in folders]
        clips = []
        for folder in folders:
            if folder.name not in names:
                raise AudioInterpError(f"{folder}: folder {folder.name!r} is not one of data.class_names {names}; "
                                       "expected one subfolder per listed class")
            files = sorted(path for path in folder.rglob("*") if is_audio_file(path)
                           and not any(part.startswith(".") for part in path.relative_to(root).parts))
            if not files:
                raise AudioInterpError(f"{folder}: no audio files ({', '.join(AUDIO_SUFFIXES)}); expected at least "
                                       "one clip in every class folder")
            label = names.index(folder.name)
            clips += [FolderClip(path.relative_to(root).as_posix(), path, label) for path in files]
        return clips, names

    def _from_csv(self, given_names: list[str] | None) -> tuple[list[FolderClip], list[str]]:
        """The clips listed in the csv ``source``, with their labels and splits if it has them."""
        csv_path = self.source
        if not csv_path.is_file():
            raise AudioInterpError(f"data.csv={csv_path}: no such file; expected a csv with columns path,label[,split]")
        try:
            with open(csv_path, newline="", encoding="utf-8-sig") as file:
                reader = csv_module.DictReader(file)
                columns = [name.strip() for name in reader.fieldnames or []]
                records = [(line, {(k or "").strip(): (v or "").strip() for k, v in record.items()})
                           for line, record in enumerate(reader, start=2)]
        except (UnicodeDecodeError, csv_module.Error) as error:
            raise AudioInterpError(f"{csv_path}: not a readable csv ({error}); expected UTF-8 text with columns "
                                   "path,label[,split]") from None
        if CSV_PATH_COLUMN not in columns:
            raise AudioInterpError(f"{csv_path}: no {CSV_PATH_COLUMN!r} column (found {columns}); expected a header "
                                   "with columns path,label[,split]")
        if not records:
            raise AudioInterpError(f"{csv_path}: no rows; expected one row per clip under the header "
                                   "path,label[,split]")
        has_split = CSV_SPLIT_COLUMN in columns
        labels = [record.get(CSV_LABEL_COLUMN, "") for _, record in records]
        labelled = [bool(label) for label in labels]
        if any(labelled) and not all(labelled):
            line = records[labelled.index(False)][0]
            raise AudioInterpError(f"{csv_path}:{line}: empty label; expected every row to have a label, or none "
                                   "(unlabelled clips)")
        if any(labelled):
            names = given_names or _sorted_labels(set(labels))
        else:
            names = given_names or []
        clips, seen = [], set()
        for (line, record), label in zip(records, labels):
            written = record[CSV_PATH_COLUMN]
            relative = PurePosixPath(written.replace("\\", "/"))
            if not written or relative.is_absolute() or ".." in relative.parts:
                raise AudioInterpError(f"{csv_path}:{line}: path {written!r}; expected a file path relative to the "
                                       f"csv's folder {csv_path.parent}, inside it")
            clip_id = relative.as_posix()
            if clip_id in seen:
                raise AudioInterpError(f"{csv_path}:{line}: {clip_id} is listed twice; expected each clip once")
            seen.add(clip_id)
            if label and label not in names:
                raise AudioInterpError(f"{csv_path}:{line}: label {label!r} is not one of data.class_names {names}")
            split = None
            if has_split:
                split = record.get(CSV_SPLIT_COLUMN, "").lower()
                if split not in SPLITS:
                    raise AudioInterpError(f"{csv_path}:{line}: split {record.get(CSV_SPLIT_COLUMN, '')!r}; expected "
                                           f"one of {', '.join(SPLITS)}")
            clips.append(FolderClip(clip_id, csv_path.parent / relative, names.index(label) if label else UNKNOWN_LABEL,
                                    split))
        return clips, names

    @staticmethod
    def _check_readable(path: Path) -> None:
        """Read the file's header: missing, unreadable and empty files are refused now, by name."""
        if not path.is_file():
            raise AudioInterpError(f"{path}: no such audio file; expected a WAV, FLAC, OGG or MP3 clip there")
        try:
            info = soundfile.info(str(path))
        except (soundfile.LibsndfileError, RuntimeError, ValueError, TypeError) as error:
            reason = " ".join(str(error).split())
            raise AudioInterpError(f"{path}: cannot read audio ({reason}); expected a WAV, FLAC, OGG or MP3 "
                                   "clip") from None
        if info.frames <= 0:
            raise AudioInterpError(f"{path}: the file holds no samples; expected an audio clip")

    def identity(self, splits: tuple[str, ...] = SPLITS) -> dict:
        """What determines the clips of ``splits`` as the pipeline sees them: every clip by id
        (relative path), label and the sha256 of its file's bytes, the classes, and how clips are
        loaded; not where the folder is."""
        if splits not in self._identity:
            clips_sha256 = self._files.clips_sha256(
                (split, [(clip.clip_id, clip.label, clip.path) for clip in self.clip_files[split]]) for split in splits)
            self._identity[splits] = {
                "dataset": "folder", "clips_sha256": clips_sha256,
                "n_clips": {split: len(self.clip_files[split]) for split in splits},
                "class_names": list(self.class_names), "n_classes": self.n_classes, "has_labels": self.has_labels,
                "sample_rate": self.sample_rate, "duration_s": self.duration_s, "peak_normalise": self.peak_normalise,
                # Resampling and padding turn the files into what the model sees.
                "loader_sha256": file_sha256(audio.__file__),
            }
        return dict(self._identity[splits])

    def split_size(self, split: str) -> int:
        """How many clips ``load_split(split)`` returns."""
        return len(self.clip_files[check_split(split)])

    def load_split(self, split: str) -> ClipSet:
        """The clips of ``split`` in clip id order.

        Returns:
            ClipSet with waveforms (N, round(duration_s * sample_rate)) float32, labels (N,) int64
            (-1 for unlabelled clips), clip ids = paths relative to the root or the csv's folder.
        """
        clips = self.clip_files[check_split(split)]
        if not clips:
            raise AudioInterpError(f"data=folder {self.source}: no clips in the {split} split; expected at least one "
                                   "(see data.split_fractions, or the csv's split column)")
        n_samples = int(round(self.duration_s * self.sample_rate))
        waveforms = torch.empty((len(clips), n_samples), dtype=torch.float32)
        for index, clip in enumerate(progress(clips, desc=f"loading {split} clips", unit="clip")):
            waveforms[index] = load_audio(clip.path, self.sample_rate, self.duration_s, self.peak_normalise)
        return ClipSet(
            waveforms=waveforms,
            labels=torch.tensor([clip.label for clip in clips], dtype=torch.long),
            clip_ids=[clip.clip_id for clip in clips],
            class_names=list(self.class_names),
            sample_rate=self.sample_rate,
        )
