"""sha256 digests of files and of groups of source files, for keys that must change with content."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

# Read in pieces so a large clip or checkpoint is never held in memory twice.
CHUNK_BYTES = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def sources_sha256(root: str | os.PathLike, relative_paths: Iterable[str]) -> str:
    """Hex sha256 over ``(path, sha256 of bytes)`` of files under ``root``, in sorted path order.

    The relative paths are part of the digest, so the same sources under another folder give the
    same digest, and a renamed or moved file gives another.
    """
    root = Path(root)
    digest = hashlib.sha256()
    for relative in sorted(Path(p).as_posix() for p in relative_paths):
        digest.update(f"{relative}\0{file_sha256(root / relative)}\n".encode())
    return digest.hexdigest()
