"""Downloads against a local HTTP server serving the real noise files: checksums, resuming, and
refusing zip members that would land outside the target folder."""

from __future__ import annotations

import hashlib
import re
import shutil
import stat
import zipfile
from pathlib import Path

import pytest

from audiointerp.data.download import fetch, file_digest, safe_extract_zip, verify_file
from audiointerp.errors import AudioInterpError

WHITE_NOISE = "165058__theundecided__white-noise.wav"
WHITE_NOISE_SHA256 = "27f2ca1a3e4e24c33e2917e8580be9350a117f169dcca159517d0dfd61feb561"


@pytest.fixture
def noise_file(shared_data: Path) -> Path:
    return shared_data / "noises" / WHITE_NOISE


def test_file_digest_matches_hashlib_and_the_published_hash(noise_file):
    data = noise_file.read_bytes()
    assert file_digest(noise_file, "sha256") == hashlib.sha256(data).hexdigest() == WHITE_NOISE_SHA256
    assert file_digest(noise_file, "md5") == hashlib.md5(data).hexdigest()


def test_verify_file_accepts_right_and_names_wrong_hash(noise_file, tmp_path):
    assert verify_file(noise_file, sha256=WHITE_NOISE_SHA256.upper()) == noise_file
    wrong_md5 = "0" * 32
    with pytest.raises(AudioInterpError) as error:
        verify_file(noise_file, md5=wrong_md5)
    message = str(error.value)
    assert str(noise_file) in message and wrong_md5 in message
    assert hashlib.md5(noise_file.read_bytes()).hexdigest() in message and "\n" not in message
    with pytest.raises(AudioInterpError, match="no such file"):
        verify_file(tmp_path / "absent.wav", sha256=WHITE_NOISE_SHA256)


def test_fetch_downloads_verifies_and_then_skips(noise_file, tmp_path, serve_directory):
    server = serve_directory(noise_file.parent)
    target = tmp_path / "cache" / WHITE_NOISE
    assert fetch(server.url + WHITE_NOISE, target, sha256=WHITE_NOISE_SHA256, what="white noise") == target
    assert target.read_bytes() == noise_file.read_bytes()
    assert not list(target.parent.glob("*.part"))
    assert fetch(server.url + WHITE_NOISE, target, sha256=WHITE_NOISE_SHA256, what="white noise") == target
    assert len(server.requests) == 1, "a verified file was downloaded again"


def test_fetch_refuses_a_wrong_checksum_and_leaves_no_file(noise_file, tmp_path, serve_directory):
    served = tmp_path / "served"
    served.mkdir()
    corrupted = bytearray(noise_file.read_bytes())
    corrupted[5000] ^= 0xFF
    (served / WHITE_NOISE).write_bytes(corrupted)
    server = serve_directory(served)
    target = tmp_path / "cache" / WHITE_NOISE
    with pytest.raises(AudioInterpError) as error:
        fetch(server.url + WHITE_NOISE, target, sha256=WHITE_NOISE_SHA256, what="white noise")
    message = str(error.value)
    assert str(target) in message and WHITE_NOISE_SHA256 in message
    assert hashlib.sha256(corrupted).hexdigest() in message
    assert not target.exists() and not target.with_suffix(".wav.part").exists()


def test_interrupted_download_is_resumed_with_a_range_request(noise_file, tmp_path, serve_directory):
    server = serve_directory(noise_file.parent)
    server.cut_after = 100_000
    target = tmp_path / WHITE_NOISE
    part = target.with_suffix(".wav.part")
    with pytest.raises(AudioInterpError, match=re.escape(str(part))):
        fetch(server.url + WHITE_NOISE, target, sha256=WHITE_NOISE_SHA256, what="white noise")
    assert part.stat().st_size == 100_000 and not target.exists()

    server.cut_after = None
    fetch(server.url + WHITE_NOISE, target, sha256=WHITE_NOISE_SHA256, what="white noise")
    assert server.requests[-1][1] == "bytes=100000-"
    assert target.read_bytes() == noise_file.read_bytes() and not part.exists()


def test_resume_restarts_when_the_server_ignores_range(noise_file, tmp_path, serve_directory):
    server = serve_directory(noise_file.parent)
    server.honour_range = False
    target = tmp_path / WHITE_NOISE
    # Bytes that are not the file's start: appending to them would fail the checksum.
    target.with_suffix(".wav.part").write_bytes(b"\0" * 4096)
    fetch(server.url + WHITE_NOISE, target, sha256=WHITE_NOISE_SHA256, what="white noise")
    assert server.requests[-1][1] == "bytes=4096-"
    assert target.read_bytes() == noise_file.read_bytes()


def test_complete_part_file_is_finished_without_downloading_again(noise_file, tmp_path, serve_directory):
    server = serve_directory(noise_file.parent)
    target = tmp_path / WHITE_NOISE
    shutil.copyfile(noise_file, target.with_suffix(".wav.part"))
    fetch(server.url + WHITE_NOISE, target, sha256=WHITE_NOISE_SHA256, what="white noise")
    assert target.read_bytes() == noise_file.read_bytes()


def test_fetch_reports_http_errors_and_keeps_a_bad_cached_file(noise_file, tmp_path, serve_directory):
    server = serve_directory(noise_file.parent)
    with pytest.raises(AudioInterpError, match="HTTP 404"):
        fetch(server.url + "absent.wav", tmp_path / "absent.wav", what="noise")
    cached = tmp_path / WHITE_NOISE
    cached.write_bytes(b"not the noise")
    with pytest.raises(AudioInterpError, match=re.escape(str(cached))):
        fetch(server.url + WHITE_NOISE, cached, sha256=WHITE_NOISE_SHA256, what="white noise")
    assert cached.read_bytes() == b"not the noise"
    assert [path for path, _ in server.requests] == ["/absent.wav"]


def test_safe_extract_zip_extracts_real_files(noise_file, tmp_path):
    archive = tmp_path / "noise.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.write(noise_file, f"top/noises/{WHITE_NOISE}")
    safe_extract_zip(archive, tmp_path / "out")
    assert (tmp_path / "out" / "top" / "noises" / WHITE_NOISE).read_bytes() == noise_file.read_bytes()


@pytest.mark.parametrize("member", ["../evil.txt", "top/../../evil.txt", "/tmp/evil.txt"])
def test_safe_extract_zip_refuses_paths_leaving_the_target(tmp_path, member):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("top/fine.txt", "fine")
        zipped.writestr(member, "evil")
    target = tmp_path / "nested" / "out"
    with pytest.raises(AudioInterpError, match=re.escape(member)):
        safe_extract_zip(archive, target)
    assert not target.exists(), "members were written before the archive was checked"
    assert not (tmp_path / "nested" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()


def test_safe_extract_zip_refuses_symlinks(tmp_path):
    archive = tmp_path / "link.zip"
    link = zipfile.ZipInfo("top/link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr(link, "/etc/passwd")
    with pytest.raises(AudioInterpError, match="symbolic link"):
        safe_extract_zip(archive, tmp_path / "out")


def test_safe_extract_zip_names_a_broken_archive(noise_file, tmp_path):
    with pytest.raises(AudioInterpError, match="not a readable zip"):
        safe_extract_zip(noise_file, tmp_path / "out")
