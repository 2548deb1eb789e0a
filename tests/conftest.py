"""Shared fixtures. Real audio comes from the shared data folder beside the repository
(override with AUDIOINTERP_SHARED_DATA); tests that need it fail, saying where they looked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_data_root() -> Path:
    return Path(os.environ.get("AUDIOINTERP_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder holding samples/, noises/ and esc50/."""
    root = _shared_data_root()
    if not (root / "samples").is_dir():
        pytest.fail(f"shared test data not found: looked in {root} (set AUDIOINTERP_SHARED_DATA)")
    return root


@pytest.fixture(scope="session")
def sample_wavs(shared_data: Path) -> list[Path]:
    """The six real ESC-50 clips (44.1 kHz mono WAV)."""
    wavs = sorted((shared_data / "samples").glob("*.wav"))
    if len(wavs) != 6:
        pytest.fail(f"expected 6 WAV clips in {shared_data / 'samples'}, found {len(wavs)}")
    return wavs
