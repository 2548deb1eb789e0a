"""Downloads that happen once: resumable, checksummed, renamed into place only when complete.

A download streams into ``<target>.part``; an interrupted one is resumed with an HTTP Range
request on the next call. The finished file is checked against its pinned hash before it is
renamed onto the target, so a truncated or tampered file never sits under the real name.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import stat
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from audiointerp.errors import AudioInterpError
from audiointerp.progress import progress

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60
USER_AGENT = "audiointerp (python urllib)"


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    """Hex digest of the file's bytes with ``algorithm`` ("sha256", "md5", ...)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _expected_digests(sha256: str | None, md5: str | None) -> dict[str, str]:
    return {name: value.strip().lower() for name, value in (("sha256", sha256), ("md5", md5)) if value}


def _checksum_mismatch(path: Path, digests: dict[str, str], label: Path | None = None) -> str | None:
    """A one-line description of the first digest of ``path`` that differs, or None if all match."""
    for algorithm, expected in digests.items():
        actual = file_digest(path, algorithm)
        if actual != expected:
            return f"{label or path}: {algorithm} is {actual}, expected {expected}"
    return None


def verify_file(path: str | os.PathLike, *, sha256: str | None = None, md5: str | None = None) -> Path:
    """Check ``path`` against the given hashes (none given: only that it exists).

    Returns:
        ``path`` as a Path.
    Raises:
        AudioInterpError: the file is missing or a hash differs; the message names the file, the
            expected and the actual hash.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioInterpError(f"{path}: no such file")
    mismatch = _checksum_mismatch(path, _expected_digests(sha256, md5))
    if mismatch:
        raise AudioInterpError(mismatch)
    return path


def _open(url: str, start: int):
    headers = {"User-Agent": USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)


def _resume_offset(response, requested: int) -> int | None:
    """Where the body of ``response`` starts in the file: ``requested`` if the server honoured the
    Range request, 0 if it sent the whole file, None if the body cannot be placed."""
    if not requested:
        return 0
    if response.status == 206:
        match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
        return int(match.group(1)) if match and int(match.group(1)) == requested else None
    return 0


def _total_size(response, offset: int) -> int | None:
    length = response.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


def fetch(url: str, target: str | os.PathLike, *, sha256: str | None = None, md5: str | None = None,
          what: str) -> Path:
    """Download ``url`` to ``target`` once, resuming an interrupted download and checking hashes.

    An existing ``target`` is verified and returned without any network access. Otherwise the
    body streams into ``target + ".part"`` (resumed with a Range request if a .part is there;
    restarted if the server ignores Range), the finished .part is verified and renamed onto
    ``target``. A complete download with a wrong hash is deleted, never left as the target.

    Args:
        what: what is downloaded, for messages and the progress bar ("noise white").
    Returns:
        ``target`` as a Path.
    Raises:
        AudioInterpError: the server cannot be reached or answers with an error, the transfer
            stops early (the .part is kept for the next call), or a hash differs.
    """
    target = Path(target)
    digests = _expected_digests(sha256, md5)
    if target.exists():
        return verify_file(target, sha256=sha256, md5=md5)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_suffix(target.suffix + ".part")
    start = part.stat().st_size if part.is_file() else 0

    try:
        try:
            response = _open(url, start)
        except urllib.error.HTTPError as error:
            if error.code != 416 or not start:
                raise
            # 416: nothing left after our offset, so the .part should already hold the whole file.
            match = re.search(r"/(\d+)$", error.headers.get("Content-Range", ""))
            if not (match and int(match.group(1)) == start):
                part.unlink()
                return fetch(url, target, sha256=sha256, md5=md5, what=what)
            response = None
        if response is not None:
            with response:
                _stream(response, part, start, url, what)
    except urllib.error.HTTPError as error:
        raise AudioInterpError(f"{what}: download from {url} failed: HTTP {error.code} {error.reason}") from None
    except (OSError, http.client.HTTPException) as error:
        reason = " ".join(str(getattr(error, "reason", error)).split())
        kept = f"; {part} kept, run again to resume" if part.is_file() and part.stat().st_size else ""
        raise AudioInterpError(f"{what}: download from {url} failed ({reason}){kept}") from None

    mismatch = _checksum_mismatch(part, digests, label=target)
    if mismatch:
        part.unlink()
        raise AudioInterpError(f"{mismatch} (download of {what} from {url} discarded)")
    os.replace(part, target)
    log.info("downloaded %s to %s", what, target)
    return target


def _stream(response, part: Path, start: int, url: str, what: str) -> None:
    """Write ``response``'s body into ``part``, appending at ``start`` when the server resumed."""
    offset = _resume_offset(response, start)
    if offset is None:
        # A body we cannot place would corrupt the .part; dropping it makes the next call restart.
        part.unlink()
        raise OSError(f"server answered the resume request with Content-Range "
                      f"{response.headers.get('Content-Range')!r}; partial file deleted")
    if start and offset == 0:
        log.warning("%s: the server ignored the resume request; downloading again from the start", what)
    total = _total_size(response, offset)
    received = offset
    with open(part, "ab" if offset else "wb") as file, progress(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=f"downloading {what}") as bar:
        for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
            file.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    if total is not None and received < total:
        raise OSError(f"connection closed after {received} of {total} bytes")


def _is_symlink(member: zipfile.ZipInfo) -> bool:
    # Zips made on Unix keep the file type in the high 16 bits of external_attr.
    return stat.S_ISLNK(member.external_attr >> 16)


def safe_extract_zip(archive: str | os.PathLike, target_dir: str | os.PathLike) -> Path:
    """Extract every member of ``archive`` under ``target_dir``, refusing unsafe members.

    Before anything is written, each member is checked: absolute paths, drive letters, ``..``
    components, any name that resolves outside ``target_dir``, and symbolic links are refused.

    Returns:
        ``target_dir`` as a Path.
    Raises:
        AudioInterpError: the archive is not a readable zip or has an unsafe member.
    """
    archive, target_dir = Path(archive), Path(target_dir)
    target_root = target_dir.resolve()
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = zipped.infolist()
            for member in members:
                name = member.filename
                parts = PurePosixPath(name.replace("\\", "/")).parts
                resolved = (target_root / name).resolve()
                unsafe = (name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts
                          or not resolved.is_relative_to(target_root))
                if unsafe:
                    raise AudioInterpError(f"{archive}: refusing member {name!r} (its path leaves {target_dir})")
                if _is_symlink(member):
                    raise AudioInterpError(f"{archive}: refusing member {name!r} (symbolic link)")
            target_dir.mkdir(parents=True, exist_ok=True)
            for member in progress(members, desc=f"extracting {archive.name}", unit="file"):
                destination = target_root / member.filename
                if member.is_dir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                with zipped.open(member) as source, open(destination, "wb") as sink:
                    shutil.copyfileobj(source, sink, CHUNK_BYTES)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as error:
        raise AudioInterpError(f"{archive}: not a readable zip archive ({error})") from None
    return target_dir
