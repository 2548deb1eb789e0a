"""Killed runs resume: real CLI processes SIGKILLed mid-explaining, re-run, compared byte for byte."""

from __future__ import annotations

import filecmp
import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from audiointerp.errors import AudioInterpError
from audiointerp.resume import OCCUPIED_LOCK, BatchResults, DiskStore, Occupancy, job_folder_name, run_sha256, shard_batches

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Not results: Hydra's own record of the launch (it names the folder), the log (timestamps) and
#: provenance.json (timings, whether batches were resumed, where the model came from).
NOT_COMPARED = {".hydra", "run.log", "provenance.json", "multirun.yaml"}
#: 16 test clips in 8 batches of 2; the first two clips are examples (WAVs and PNGs).
CHEAP = ("experiment=smoke", "batch_size=2", "n_examples=2", "mask=binary", "train.cache=true")


def command(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "audiointerp.run", *overrides]


def run(*overrides: str) -> subprocess.CompletedProcess:
    result = subprocess.run(command(*overrides), cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def kill_when(overrides: list[str], partial_dir_glob: str, root: Path, n_batches: int, seed: int) -> int:
    """Start the CLI, SIGKILL it once ``n_batches`` batch files match under ``root``, plus a random
    fraction of a batch's time; returns how many batch files were there at the kill."""
    process = subprocess.Popen(command(*overrides), cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        seen: list[float] = []  # when each new batch file was first seen
        while len(seen) < n_batches:
            count = len(list(root.glob(partial_dir_glob)))
            seen += [time.monotonic()] * (count - len(seen))
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # somewhere inside the next batch: a fraction of the last batch's time as seen (a fixed
        # delay outlasted several batches on a fast CPU)
        batch_seconds = seen[-1] - seen[-2] if len(seen) > 1 and seen[-1] > seen[-2] else 0.02
        time.sleep(random.Random(seed).uniform(0.0, 0.8) * batch_seconds)
        assert process.poll() is None, "the run ended before it could be killed"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    return len(list(root.glob(partial_dir_glob)))


def outputs(folder: Path) -> dict[str, Path]:
    """Every file under ``folder`` but the NOT_COMPARED ones, by relative path."""
    files = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not set(relative.parts) & NOT_COMPARED:
            files[str(relative)] = path
    return files


def assert_same_outputs(resumed: Path, uninterrupted: Path) -> None:
    got, expected = outputs(resumed), outputs(uninterrupted)
    assert sorted(got) == sorted(expected)
    different = [name for name in expected if not filecmp.cmp(got[name], expected[name], shallow=False)]
    assert not different, different
    assert "metrics/bin.csv" in expected and "attributions.npz" in expected and "model.pt" in expected
    assert any(name.endswith(".wav") for name in expected) and any(name.endswith(".png") for name in expected)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A model cache all runs here share, so only one trains."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache) -> Path:
    folder = tmp_path_factory.mktemp("uninterrupted")
    run(*CHEAP, f"train.cache_dir={cache}", f"hydra.run.dir={folder}")
    return folder


def test_a_run_killed_while_explaining_resumes_to_the_same_bytes(tmp_path, cache, uninterrupted):
    seed = random.randrange(1_000_000)
    at = random.Random(seed).randint(1, 6)
    folder = tmp_path / "killed"
    overrides = [*CHEAP, f"train.cache_dir={cache}", f"hydra.run.dir={folder}"]
    killed_at = kill_when(overrides, ".partial/batch_*.pt", folder, at, seed)
    assert 1 <= killed_at < 8, f"seed {seed}: killed after {killed_at} batches"
    assert not (folder / "run.json").exists()

    result = run(*overrides)
    assert (folder / "provenance.json").read_text().count(f'"resumed_batches": {killed_at}') == 1, result.stdout
    assert_same_outputs(folder, uninterrupted)
    leftovers = [p.name for p in folder.rglob("*") if ".tmp" in p.name or p.name == ".partial"]
    assert not leftovers, leftovers
    for path in folder.rglob("*"):
        if path.is_file() and ".hydra" not in path.parts:
            assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~current_umask(), path


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_resume_path_reruns_the_saved_command_and_a_finished_run_is_not_redone(tmp_path, cache, uninterrupted):
    folder = tmp_path / "killed"
    killed_at = kill_when([*CHEAP, f"train.cache_dir={cache}", f"hydra.run.dir={folder}"], ".partial/batch_*.pt",
                          folder, 2, 0)
    # what a killed run leaves: a temporary file mid-write
    (folder / "metrics").mkdir(exist_ok=True)
    (folder / "metrics" / ".bin.abc123.tmp.csv").write_text("half a row")
    result = run(f"resume={folder}")
    assert f'"resumed_batches": {killed_at}' in (folder / "provenance.json").read_text(), result.stdout
    assert_same_outputs(folder, uninterrupted)
    assert not (folder / "metrics" / ".bin.abc123.tmp.csv").exists()

    before = {name: path.stat().st_mtime_ns for name, path in outputs(folder).items()}
    # what a run killed between writing run.json and clearing its partial results leaves
    (folder / ".partial").mkdir()
    (folder / ".partial" / "batch_000000.pt").write_bytes(b"stale")
    again = run(f"resume={folder}")
    assert "already complete" in again.stdout
    assert {name: path.stat().st_mtime_ns for name, path in outputs(folder).items() if ".partial" not in name} == before
    assert not (folder / ".partial").exists()


def test_a_finished_run_is_redone_when_a_file_it_names_changed_in_place(tmp_path, uninterrupted):
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes((uninterrupted / "model.pt").read_bytes())
    folder = tmp_path / "run"
    overrides = [*CHEAP, f"model.checkpoint={checkpoint}", f"hydra.run.dir={folder}"]
    run(*overrides, f"train.cache_dir={tmp_path / 'cache'}")
    first = json.loads((folder / "run.json").read_text())
    # where the cache lives changes no result
    assert "already complete" in run(*overrides, f"train.cache_dir={tmp_path / 'elsewhere'}").stdout
    # retrained in place: other weights under the same path and the same settings
    payload = torch.load(checkpoint, weights_only=True)
    name = next(k for k, v in payload["state_dict"].items() if v.is_floating_point())
    payload["state_dict"][name] = payload["state_dict"][name] + 0.5
    torch.save(payload, checkpoint)
    again = run(*overrides, f"train.cache_dir={tmp_path / 'cache'}")
    assert "already complete" not in again.stdout
    second = json.loads((folder / "run.json").read_text())
    assert second["model_sha256"] != first["model_sha256"] and second["run_sha256"] != first["run_sha256"]


def test_a_run_is_identified_by_its_results_settings_and_input_contents():
    config = {"seed": 0, "explainer": {"name": "lime"}, "shard": {"index": 0, "count": 1},
              "train": {"epochs": 2, "cache_dir": "a", "cache": True}, "data": {"root": "/x", "limit": None},
              "model": {"width": 1, "checkpoint": None}, "noise": {"path": None, "cache_dir": "n"}}
    inputs = {"data": {"clips_sha256": "1"}, "noise": None, "checkpoint": None}
    same = run_sha256(config, inputs)
    moved = {**config, "shard": {"index": 1, "count": 4}, "train": {**config["train"], "cache_dir": "b", "cache": False},
             "data": {**config["data"], "root": "/y"}, "noise": {"path": None, "cache_dir": "m"}}
    assert run_sha256(moved, inputs) == same
    assert run_sha256({**config, "train": {**config["train"], "epochs": 3}}, inputs) != same
    assert run_sha256(config, {**inputs, "data": {"clips_sha256": "2"}}) != same
    assert run_sha256(config, {**inputs, "checkpoint": "abc"}) != same
    assert config["train"]["cache_dir"] == "a", "the caller's config must not be changed"


def test_a_sweep_jobs_folder_is_named_by_its_overrides_with_paths_hashed():
    assert job_folder_name(["noise=white", "explainer=shap"]) == "explainer=shap,noise=white"  # as Hydra sorts them
    assert job_folder_name(["explainer=shap", "shard.index=3", "shard.count=4", "train.cache_dir=/c"]) == "explainer=shap"
    one = job_folder_name(["explainer=shap", "noise.path=/noises/a.wav"])
    other = job_folder_name(["explainer=shap", "noise.path=/noises/b.wav"])
    assert one.startswith("explainer=shap,inputs=") and other.startswith("explainer=shap,inputs=") and one != other
    assert "/" not in one + other


def test_resume_of_a_sharded_run_explains_every_missing_batch(tmp_path):
    from audiointerp.run import resume_arguments

    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- explainer=lime\n- shard.index=2\n- shard.count=3\n")
    assert resume_arguments([f"resume={tmp_path}"]) == ["explainer=lime", f"hydra.run.dir='{tmp_path}'"]


def test_resume_rejects_a_folder_that_is_not_a_run(tmp_path):
    result = subprocess.run(command(f"resume={tmp_path}"), cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: resume={tmp_path}: expected a run folder (with .hydra/overrides.yaml) or a sweep folder (with multirun.yaml)"]


def test_shards_in_one_folder_combine_into_the_unsharded_run(tmp_path, cache, uninterrupted):
    folder = tmp_path / "sharded"
    for index in (2, 0, 1):  # any order: the one that completes the last batch writes the results
        result = run(*CHEAP, f"train.cache_dir={cache}", f"hydra.run.dir={folder}", f"shard.index={index}", "shard.count=3")
        if index != 1:
            assert "the shard that finishes the last one writes the results" in result.stdout
            assert not (folder / "run.json").exists()
    assert_same_outputs(folder, uninterrupted)


def test_shards_split_whole_batches_without_overlap():
    for n_batches in (1, 7, 8, 100):
        for count in (1, 3, 8):
            ranges = [shard_batches(n_batches, i, count) for i in range(count)]
            assert [b for r in ranges for b in r] == list(range(n_batches))


def job_folder(sweep: Path, explainer: str) -> Path:
    """A job's folder is named after all its overrides (Hydra's override_dirname)."""
    (folder,) = [p for p in sweep.iterdir() if p.is_dir() and f"explainer={explainer}" in p.name.split(",")]
    return folder


def test_a_sweep_killed_mid_job_resumes_skipping_finished_jobs(tmp_path, cache):
    sweep = ["-m", *CHEAP, f"train.cache_dir={cache}", "explainer=saliency,random,gradcam"]
    run(*sweep, f"hydra.sweep.dir={tmp_path / 'uninterrupted'}")
    killed = tmp_path / "killed"
    seed = random.randrange(1_000_000)
    # the second job (explainer=random) is killed mid-way
    kill_when([*sweep, f"hydra.sweep.dir={killed}"], "*explainer=random*/.partial/batch_*.pt", killed,
              random.Random(seed).randint(1, 6), seed)
    first = job_folder(killed, "saliency") / "summary.csv"
    finished_at = first.stat().st_mtime_ns
    assert not any("explainer=gradcam" in p.name for p in killed.iterdir())
    result = run(*sweep, f"hydra.sweep.dir={killed}")
    assert "already complete" in result.stdout
    assert first.stat().st_mtime_ns == finished_at, "a finished job must not be run again"
    for explainer in ("saliency", "random", "gradcam"):
        assert_same_outputs(job_folder(killed, explainer), job_folder(tmp_path / "uninterrupted", explainer))
    assert (killed / "report" / "index.html").read_bytes() == (tmp_path / "uninterrupted" / "report" / "index.html").read_bytes()


def test_partial_results_of_another_run_are_discarded_only_when_no_one_works_there(tmp_path):
    batch = BatchResults(attribution=torch.zeros(2, 1, 4, 5), probabilities=torch.full((2, 3), 1 / 3))
    store = DiskStore(tmp_path, "config-a")
    store.save(0, batch)
    assert DiskStore(tmp_path, "config-a", alone=False).has(0)  # a shard of the same run: shared
    with pytest.raises(AudioInterpError, match="another run with a different configuration or model is working"):
        DiskStore(tmp_path, "config-b", alone=False)
    assert store.has(0), "a live run's batches must survive"
    assert not DiskStore(tmp_path, "config-b", alone=True).has(0)  # a dead run's: discarded


def test_occupancy_cleans_only_a_dead_runs_temporaries(tmp_path):
    leftover = tmp_path / "metrics" / ".bin.x1.tmp.csv"
    leftover.parent.mkdir()
    leftover.write_text("partial")
    with Occupancy(tmp_path) as first:  # a live run in the folder...
        assert first.alone
        live = tmp_path / ".summary.x2.tmp.csv"
        live.write_text("being written")
        assert not leftover.exists()
        with Occupancy(tmp_path) as second:  # ...so a second process must leave its temporaries alone
            assert not second.alone
            assert live.exists()
    assert live.exists()
    with Occupancy(tmp_path):
        assert not live.exists()
    assert (tmp_path / OCCUPIED_LOCK).exists()  # never removed: a process may be waiting on it
