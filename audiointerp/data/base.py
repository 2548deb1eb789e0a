"""What a run needs of a dataset, and the parts every file-backed dataset shares.

:class:`Dataset` is the written interface: ``audiointerp.run`` builds one from ``cfg.data`` and
uses nothing else of it. :class:`FileIdentity` (content identity of clip files) and
:func:`balanced_selection` (class-balanced subsets) live here so that ESC-50 and the folder
dataset use one implementation each.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from audiointerp.data import SPLITS, ClipSet
from audiointerp.errors import AudioInterpError
from audiointerp.hashing import file_sha256

#: The splits a model is trained on (train) and picked on (valid, the best epoch).
TRAINING_SPLITS: tuple[str, ...] = ("train", "valid")
#: The label of a clip whose class is not known (unlabelled data); see :class:`ClipSet`.
UNKNOWN_LABEL = -1


class Dataset(ABC):
    """What a run needs of a dataset.

    A run builds the dataset from ``cfg.data``, asks how many clips the explained split has
    (:meth:`split_size`, before anything is loaded), keys its results and the model cache by
    content (:meth:`identity`, :meth:`training_identity`), builds a model with ``n_classes``
    outputs and loads whole splits as :class:`ClipSet` (:meth:`load_split`). Everything that can
    be wrong with the data (a missing or unreadable file, a bad option) is raised as one
    AudioInterpError line from the constructor, before anything expensive runs.

    Attributes:
        n_classes: how many classes the model tells apart (its output size); None when the data
            has no labels and names no classes, so the classifier's own output size (from its
            checkpoint) must be used.
        class_names: names of the classes, indexed by label ([] when ``n_classes`` is None).
        sample_rate: Hz of every waveform :meth:`load_split` returns.
        has_evidence: clips carry ground-truth evidence boxes (``ClipSet.evidence``), which
            localisation scores and evidence-based explainers (``oracle``) need.
        has_labels: clips carry their class; when False every label is
            :data:`UNKNOWN_LABEL` (-1), no model can be trained on the data (a run needs
            ``model.checkpoint``), explanations are of the model's predicted class and accuracies
            are reported as null.
    """

    n_classes: int | None
    class_names: list[str]
    sample_rate: int
    has_evidence: bool = False
    has_labels: bool = True

    @abstractmethod
    def split_size(self, split: str) -> int:
        """How many clips ``load_split(split)`` returns, known without loading any (0 for none)."""

    @abstractmethod
    def load_split(self, split: str) -> ClipSet:
        """All clips of ``split`` ("train", "valid" or "test") in memory.

        Returns:
            ClipSet with waveforms (N, samples) float32 at ``sample_rate``, all the same length,
            labels (N,) int64 (-1 where unknown), N clip ids, ``class_names`` and, when
            ``has_evidence``, evidence (N, 4).
        """

    @abstractmethod
    def identity(self, splits: tuple[str, ...] = SPLITS) -> dict:
        """What determines the clips of ``splits`` as the pipeline sees them, as a JSON-able dict:
        their content (file hashes or generator settings), labels and how they are loaded, but not
        where they are (a copy elsewhere is the same data). Part of the run's fingerprint."""

    def training_identity(self) -> dict:
        """What determines the train and valid clips as the model sees them (part of the model cache
        key): :meth:`identity` of those splits, so the test split does not change the key."""
        return self.identity(TRAINING_SPLITS)


def check_split(split: str) -> str:
    """``split`` if it is one of :data:`SPLITS`; one AudioInterpError line otherwise."""
    if split not in SPLITS:
        raise AudioInterpError(f"split: expected one of {list(SPLITS)}, got {split!r}")
    return split


def check_runnable(dataset: Dataset, checkpoint: str | None, data_choice: str | None) -> None:
    """Refuse, in one line, a run that cannot work with this dataset, before anything is trained:
    data without labels can only be explained with a trained classifier (``model.checkpoint``),
    and then the classifier's output size must be known (``data.class_names``)."""
    if dataset.has_labels:
        return
    if not checkpoint:
        raise AudioInterpError(f"data={data_choice}: the clips have no labels, so no model can be trained on them; "
                               "expected model.checkpoint=FILE (a classifier trained elsewhere) to explain them")
    if dataset.n_classes is None:
        raise AudioInterpError(f"data={data_choice}: the clips have no labels, so the classifier's classes are "
                               "unknown; expected data.class_names=[...], the checkpoint's classes in output order")


class FileIdentity:
    """Content identity of clip files: each file's sha256, read once per path and kept.

    A run asks for the train split's identity twice (model cache key, run fingerprint), so the
    hashes are cached; one instance belongs to one dataset object.
    """

    def __init__(self) -> None:
        self._sha256: dict[Path, str] = {}

    def sha256(self, path: str | os.PathLike) -> str:
        """Hex sha256 of the file's bytes (read on first request only)."""
        path = Path(path)
        if path not in self._sha256:
            self._sha256[path] = file_sha256(path)
        return self._sha256[path]

    def clips_sha256(self, clips_by_split: Iterable[tuple[str, Iterable[tuple[str, int, Path]]]]) -> str:
        """Hex sha256 over ``(split, clip id, label, file sha256)`` of every clip.

        Args:
            clips_by_split: ``(split, clips)`` pairs in the order the digest takes them; each clip is
                ``(clip_id, label, path)``, taken in clip-id order, so the digest does not depend
                on the order files were listed in.
        """
        digest = hashlib.sha256()
        for split, clips in clips_by_split:
            for clip_id, label, path in sorted(clips, key=lambda clip: clip[0]):
                digest.update(f"{split}\0{clip_id}\0{label}\0{self.sha256(path)}\n".encode())
        return digest.hexdigest()


Item = TypeVar("Item")


def balanced_selection(items: Sequence[Item], class_of: Callable[[Item], Hashable], per_class: int | None,
                       limit: int | None) -> list[Item]:
    """The items a split uses, class-balanced, in their original order.

    Each class keeps its first ``per_class`` items (all when None). Of those, ``limit`` (all when
    None) are taken round-robin: every class's r-th item, classes in ``class_of`` order, before any
    class's (r+1)-th, so a limit of 20 on 10 classes gives 2 items of each.

    Args:
        items: the split's clips in their order (csv order, path order).
        class_of: an item's class, sortable (a label or a target).
    """
    by_class: dict[Hashable, list[int]] = {}  # class -> positions in ``items``, in order
    for position, item in enumerate(items):
        by_class.setdefault(class_of(item), []).append(position)
    ranked = sorted((rank, cls, position) for cls, positions in by_class.items()
                    for rank, position in enumerate(positions[:per_class]))
    return [items[position] for position in sorted(position for _, _, position in ranked[:limit])]
