"""Atomic file writes: results are written to a temporary file beside the target, then renamed.

A crash or Ctrl-C mid-write therefore never leaves a half-written CSV, WAV or checkpoint behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: What flock raises where the file system has no locks: NFS without its lock service (ENOLCK),
#: Lustre mounted without -o flock (ENOSYS), others (EOPNOTSUPP).
NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}

#: The temporary names :func:`atomic_path` uses: ``.<stem>.<random>.tmp<suffix>``.
TEMPORARY_GLOB = ".*.tmp*"


def _umask() -> int:
    """The process's umask, read when a file is written, not at import (importing changes nothing).

    Linux reports it in /proc/self/status, so it is read without being changed; elsewhere it is
    set and restored, which another thread creating a file at that instant could see.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Result files get the permissions of any file the user creates (0644 under the usual umask 022);
    mkstemp's 0600 would hide results from the group that shares a cluster's project folder."""
    return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``target`` on success.

    The temporary name keeps the target's suffix so that writers choosing a format by extension
    (soundfile, matplotlib, torch) behave as they would on the real name.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, file_mode())
        os.replace(tmp, target)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        # name the file being written, not its temporary name (a failed write() names no file)
        if error.filename in (None, str(tmp)):
            raise type(error)(error.errno, error.strerror, str(target)) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_torch(payload: Any, target: str | os.PathLike) -> None:
    """``torch.save(payload)`` to ``target`` atomically, the same payload always giving the same bytes.

    Serialised in memory first: given a path, torch names the archive inside after the (random)
    temporary file, and writing the bytes ourselves makes a full disk an OSError naming ``target``
    (torch's own writer reports it as an obscure RuntimeError).
    """
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_path(target) as tmp:
        tmp.write_bytes(buffer.getbuffer())


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, shared: bool = False, blocking: bool = True) -> Iterator[bool]:
    """Hold an OS lock (``flock``) on ``path`` for the ``with`` block; yields whether it was acquired.

    The operating system releases it when the holder's process ends, however it ends (SIGKILL
    included), so a crashed holder never leaves the others waiting. ``shared`` locks coexist with
    each other but not with an exclusive one; ``blocking=False`` yields False instead of waiting.

    Where the file system has no locks (NFS without its lock service, Lustre without ``-o flock``)
    it warns and yields True: callers then run as if alone. Lock files are never deleted: a process
    may hold or wait on the file, and a new file of the same name would let a second holder in.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a")
    try:
        try:
            fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        except OSError as error:
            if error.errno not in NO_LOCKS:
                raise
            logging.getLogger(__name__).warning("cannot lock %s (%s; a shared file system mounted without "
                                                "locks?): going on without the lock", path, error.strerror)
        yield True
    finally:
        handle.close()  # releases the lock
