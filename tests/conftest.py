"""Shared fixtures. Real audio comes from the shared data folder beside the repository
(override with AUDIOINTERP_SHARED_DATA); tests that need it fail, saying where they looked."""

from __future__ import annotations

import functools
import os
import re
import shutil
import threading
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` run wherever torch sees a GPU and are skipped, saying so, elsewhere."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False here")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


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


# --- ESC-50 copy and a local HTTP server for download tests ------------------------------------


@pytest.fixture(scope="session")
def esc50_root(shared_data: Path) -> Path:
    """The partial shared ESC-50 copy (meta/esc50.csv with all 2000 rows, 735 FLAC clips)."""
    root = shared_data / "esc50"
    if not (root / "meta" / "esc50.csv").is_file() or not (root / "audio").is_dir():
        pytest.fail(f"ESC-50 copy not found: expected meta/esc50.csv and audio/ in {root}")
    return root


@pytest.fixture(scope="session")
def esc50_copy(esc50_root: Path):
    """``esc50_copy(folder, stems) -> folder``: a small ESC-50 root made in ``folder``, with
    meta/esc50.csv holding the real csv rows of ``stems`` (csv order) and audio/ their real FLAC files."""

    def make(folder: Path, stems: list[str]) -> Path:
        wanted = set(stems)
        lines = (esc50_root / "meta" / "esc50.csv").read_text().splitlines(keepends=True)
        kept = [lines[0]] + [line for line in lines[1:] if Path(line.split(",")[0]).stem in wanted]
        assert len(kept) == len(wanted) + 1, f"not all of {sorted(wanted)} are in the csv"
        (folder / "meta").mkdir(parents=True)
        (folder / "meta" / "esc50.csv").write_text("".join(kept))
        (folder / "audio").mkdir()
        for stem in stems:
            shutil.copyfile(esc50_root / "audio" / f"{stem}.flac", folder / "audio" / f"{stem}.flac")
        return folder

    return make


@dataclass
class LocalServer:
    """A file server on 127.0.0.1 for one test.

    Attributes:
        url: base URL ending in "/"; ``url + name`` serves ``directory / name``.
        requests: (path, Range header or None) of every GET, in order.
        honour_range: answer ``Range: bytes=N-`` with 206 (else the whole file, as a server
            without range support does).
        cut_after: if set, whole-file answers announce the full length but stop after this many
            bytes, like a dropped connection.
    """

    url: str
    requests: list = field(default_factory=list)
    honour_range: bool = True
    cut_after: int | None = None


class _FileHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - silence the per-request stderr lines
        pass

    def do_GET(self):
        state = self.server.state
        range_header = self.headers.get("Range")
        state.requests.append((self.path, range_header))
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        body = path.read_bytes()
        start = 0
        if range_header and state.honour_range:
            match = re.fullmatch(r"bytes=(\d+)-", range_header)
            start = int(match.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        sent = body[start:]
        if start == 0 and state.cut_after is not None:
            sent = sent[:state.cut_after]
            self.close_connection = True
        self.wfile.write(sent)


@pytest.fixture
def serve_directory():
    """``serve_directory(folder) -> LocalServer`` serving real files from ``folder``; stopped after the test."""
    servers = []

    def start(directory: Path) -> LocalServer:
        handler = functools.partial(_FileHandler, directory=str(directory))
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.state = LocalServer(url=f"http://127.0.0.1:{server.server_address[1]}/")
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server.state

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


# --- a small trained model on the embedded testbed ---------------------------------------------


@pytest.fixture(scope="session")
def trained():
    """A tiny Cnn14 trained on the embedded synthetic set (about 2.5 minutes on 2 cores), with its
    feature and the test split: (model in eval mode, LogMel, ClipSet with evidence)."""
    import torch

    from audiointerp import pipeline, train
    from audiointerp.augment import TrainingAugment
    from audiointerp.data.synthetic import SyntheticClips
    from audiointerp.features import LogMel
    from audiointerp.models import Cnn14

    CPU = torch.device("cpu")
    torch.manual_seed(0)
    feature = LogMel()
    dataset = SyntheticClips(clips_per_class={"train": 30, "valid": 6, "test": 4}, seed=0)
    splits = {split: dataset.load_split(split) for split in ("train", "valid", "test")}
    inputs = {split: pipeline.log_spectrograms(feature, clips.waveforms, 64, CPU) for split, clips in splits.items()}
    model = Cnn14(n_bins=64, n_classes=dataset.n_classes, width=1 / 16, dropout=0.0)
    augment = TrainingAugment(mask_dropout={"probability": 0.2}, spec_augment={})  # the default run's
    result = train.fit(model, inputs["train"], splits["train"].labels, inputs["valid"], splits["valid"].labels,
                       epochs=40, lr=1e-3, batch_size=32, device=CPU, seed=0, augment=augment)
    assert result.best_valid_accuracy >= 0.75, result.history
    return model.eval(), feature, splits["test"]


# --- your own audio: an ESC-10 class-subfolder tree at several rates and lengths -------------------


@pytest.fixture(scope="session")
def esc10_folder(esc50_root: Path):
    """``esc10_folder(folder, classes=3, per_class=6, rates=(16000, 44100), durations=(3.0, 7.0)) -> folder``:
    a ``data=folder`` tree ``folder/<category>/<stem>.wav|.flac`` of real ESC-10 clips.

    The first ``classes`` ESC-10 classes (by ESC-50 target) and the first ``per_class`` clips of each
    that the shared copy has (csv order); clip i of a class is resampled to ``rates[i % len(rates)]``,
    made ``durations[i % len(durations)]`` seconds long (cut, or looped from its start: real sound,
    no silence) and written as 16-bit WAV (even i) or FLAC (odd i). The folders are the ESC-50
    category names (dog, rooster, rain for 3 classes), so ``data=folder`` labels them in name order
    (dog 0, rain 1, rooster 2), not in ESC-50 target order.
    """
    import csv as csv_module

    import numpy as np
    import soundfile
    import soxr

    with open(esc50_root / "meta" / "esc50.csv", newline="") as handle:
        rows = [row for row in csv_module.DictReader(handle) if row["esc10"] == "True"]
    present = {path.stem for path in (esc50_root / "audio").glob("*.flac")}

    def make(folder: Path, classes: int = 3, per_class: int = 6, rates=(16000, 44100),
             durations=(3.0, 7.0)) -> Path:
        targets = sorted({int(row["target"]) for row in rows})[:classes]
        assert len(targets) == classes, f"ESC-10 has {len(targets)} classes, asked for {classes}"
        for target in targets:
            stems = [Path(row["filename"]).stem for row in rows
                     if int(row["target"]) == target and Path(row["filename"]).stem in present][:per_class]
            assert len(stems) == per_class, f"only {len(stems)} clips of ESC-50 target {target} in {esc50_root}"
            category = next(row["category"] for row in rows if int(row["target"]) == target)
            (folder / category).mkdir(parents=True, exist_ok=True)
            for i, stem in enumerate(stems):
                samples, rate = soundfile.read(esc50_root / "audio" / f"{stem}.flac", dtype="float32")
                new_rate, duration = rates[i % len(rates)], durations[i % len(durations)]
                resampled = soxr.resample(samples, rate, new_rate)
                n_samples = int(round(duration * new_rate))
                fitted = np.resize(resampled, n_samples)  # repeats the clip from its start when longer
                suffix = ".wav" if i % 2 == 0 else ".flac"
                soundfile.write(folder / category / f"{stem}{suffix}", fitted, new_rate, subtype="PCM_16")
        return folder

    return make
