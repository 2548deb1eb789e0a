"""Contamination: mixing clips with a background noise to see how explanations move."""

from __future__ import annotations

from audiointerp.data import ClipSet


class NoNoise:
    """``noise=none``: clips are explained as they are."""

    name = "none"

    def __call__(self, clips: ClipSet) -> ClipSet:
        return clips
