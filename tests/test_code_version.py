"""A run's identity holds the package's code version: real copies of the package, edited, run as the CLI."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from audiointerp import resume
from audiointerp.resume import BatchResults, DiskStore, run_key, run_sha256

REPO_ROOT = Path(__file__).resolve().parents[1]
#: 16 test clips in 8 batches of 2, no examples, one mask set: the cheapest complete run.
CHEAP = ("experiment=smoke", "batch_size=8", "n_examples=0", "mask=binary", "train.cache=true")


def edited_copy(folder: Path) -> Path:
    """The package and its config copied into ``folder``, with one byte of metrics.py changed (a
    comment's letter: the code computes the same, but it is other code)."""
    shutil.copytree(REPO_ROOT / "audiointerp", folder / "audiointerp",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(REPO_ROOT / "conf", folder / "conf")
    metrics = folder / "audiointerp" / "metrics.py"
    source = metrics.read_bytes()
    position = source.index(b"#")
    metrics.write_bytes(source[:position + 1] + (b"X" if source[position + 1:position + 2] != b"X" else b"Y")
                        + source[position + 2:])
    return folder


def cli(source_root: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``python -m audiointerp.run`` with the package imported from ``source_root`` (first on the path)."""
    env = {**__import__("os").environ, "PYTHONPATH": str(source_root)}
    result = subprocess.run([sys.executable, "-m", "audiointerp.run", *overrides], cwd=source_root, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_the_code_version_covers_every_source_file_of_the_package(tmp_path):
    copy = edited_copy(tmp_path)
    assert resume.code_version(REPO_ROOT / "audiointerp") == resume.code_version()
    assert resume.code_version(copy / "audiointerp") != resume.code_version()
    config, inputs = {"seed": 0}, {"data": None}
    assert run_sha256(config, inputs) == run_sha256(config, inputs)
    identity = {"config": config, "inputs": inputs, "code_version": resume.code_version()}
    assert run_sha256(config, inputs) == __import__("hashlib").sha256(
        json.dumps(identity, sort_keys=True).encode()).hexdigest(), "the code version is part of the run's identity"


def test_editing_metrics_py_makes_a_finished_run_run_again(tmp_path):
    folder = tmp_path / "run"
    overrides = [*CHEAP, f"train.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={folder}"]
    cli(REPO_ROOT, *overrides)
    first = json.loads((folder / "run.json").read_text())
    assert first["code_version"] == resume.code_version()
    assert "already complete" in cli(REPO_ROOT, *overrides).stdout

    copy = edited_copy(tmp_path / "edited")
    again = cli(copy, *overrides)
    assert "already complete" not in again.stdout and "results:" in again.stdout
    second = json.loads((folder / "run.json").read_text())
    assert second["code_version"] == resume.code_version(copy / "audiointerp") != first["code_version"]
    assert second["run_sha256"] != first["run_sha256"]
    # the model's key holds the model, feature and training code only: reused, not retrained
    assert json.loads((folder / "provenance.json").read_text())["model_source"] != "trained"
    assert "already complete" in cli(copy, *overrides).stdout


def test_partial_batches_of_another_code_version_are_discarded_with_a_warning_saying_so(tmp_path, caplog):
    copy = edited_copy(tmp_path / "edited")
    run_dir = tmp_path / "run"
    # the edited code writes a batch, as a killed run of it would have left it
    script = ("import sys, torch; from pathlib import Path; from audiointerp import resume;"
              "key = resume.run_key(resume.run_sha256({'seed': 0}, {}), 'model');"
              "store = resume.DiskStore(Path(sys.argv[1]), key);"
              "store.save(0, resume.BatchResults(torch.zeros(1, 1, 2, 2), torch.ones(1, 3)));"
              "print(resume.__file__)")
    written = subprocess.run([sys.executable, "-c", script, str(run_dir)], cwd=copy, capture_output=True, text=True,
                             env={**__import__("os").environ, "PYTHONPATH": str(copy)}, timeout=120)
    assert written.returncode == 0, written.stderr
    assert written.stdout.strip() == str(copy / "audiointerp" / "resume.py")
    assert (run_dir / ".partial" / "batch_000000.pt").is_file()

    key = run_key(run_sha256({"seed": 0}, {}), "model")  # the same config and model, this code
    with caplog.at_level(logging.WARNING, logger="audiointerp.resume"):
        store = DiskStore(run_dir, key)
    assert not store.has(0), "the other code's batch is not mixed into this code's results"
    (message,) = [r.getMessage() for r in caplog.records if "discarding" in r.getMessage()]
    assert "another code version of audiointerp" in message
    # and a batch of this code's own is kept
    store.save(1, BatchResults(torch.zeros(1, 1, 2, 2), torch.ones(1, 3)))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="audiointerp.resume"):
        assert DiskStore(run_dir, key).has(1)
    assert not caplog.records


@pytest.mark.parametrize("manifest", [{"key": "another"}, {"key": "another", "code_version": "this"}])
def test_partial_batches_of_another_configuration_say_so(tmp_path, caplog, manifest):
    if manifest.get("code_version") == "this":
        manifest = {**manifest, "code_version": resume.code_version()}
    (tmp_path / ".partial").mkdir()
    (tmp_path / ".partial" / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="audiointerp.resume"):
        DiskStore(tmp_path, "mine")
    (message,) = [r.getMessage() for r in caplog.records]
    assert "another configuration or model" in message
