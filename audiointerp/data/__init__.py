"""Datasets, audio I/O and contamination.

Every dataset is held in memory as a :class:`ClipSet` per split; the rest of the pipeline only
sees ClipSets, so synthetic clips and ESC-50 go through the same code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from audiointerp.errors import AudioInterpError

#: The splits every dataset has: trained on, validated on (best epoch), explained by default.
SPLITS: tuple[str, ...] = ("train", "valid", "test")


def check_clips_per_class(value: Any) -> dict[str, int]:
    """``data.clips_per_class`` (split name -> clips per class, every dataset's option) as a dict.

    Raises:
        AudioInterpError: not a mapping, an unknown split name, or a count that is not a positive integer.
    """
    if not isinstance(value, Mapping):
        raise AudioInterpError(
            f"data.clips_per_class: expected a mapping like {{train: 40, valid: 10, test: 10}}, got {value!r}")
    counts = dict(value)
    for split, count in counts.items():
        if split not in SPLITS:
            raise AudioInterpError(f"data.clips_per_class: unknown split {split!r}, expected one of {list(SPLITS)}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise AudioInterpError(f"data.clips_per_class.{split}: expected a positive integer, got {count!r}")
    return counts


@dataclass
class ClipSet:
    """One split of a dataset, all clips at the feature's sample rate and the same length.

    Attributes:
        waveforms: (N, samples) float32 in [-1, 1].
        labels: (N,) int64 class indices; -1 where the class is unknown (unlabelled data, see
            ``Dataset.has_labels`` in :mod:`audiointerp.data.base`).
        clip_ids: N stable identifiers (file stems for ESC-50, paths relative to the data folder
            for ``data=folder``).
        class_names: names of all classes of the dataset, indexed by label ([] when unlabelled
            data names no classes).
        sample_rate: Hz of ``waveforms``.
        evidence: optional (N, 4) float32 boxes ``[t_start_s, t_end_s, f_low_hz, f_high_hz]`` of the
            class-defining event (synthetic data only; used to score localization).
    """

    waveforms: Tensor
    labels: Tensor
    clip_ids: list[str]
    class_names: list[str]
    sample_rate: int
    evidence: Tensor | None = field(default=None)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: slice | list[int] | Tensor) -> ClipSet:
        """The clips at ``index`` (a slice or a list/tensor of positions), as a new ClipSet."""
        if isinstance(index, slice):
            positions = list(range(len(self)))[index]
        else:
            positions = [int(i) for i in index]
        idx = torch.as_tensor(positions, dtype=torch.long)
        return ClipSet(
            waveforms=self.waveforms[idx],
            labels=self.labels[idx],
            clip_ids=[self.clip_ids[i] for i in positions],
            class_names=self.class_names,
            sample_rate=self.sample_rate,
            evidence=None if self.evidence is None else self.evidence[idx],
        )
