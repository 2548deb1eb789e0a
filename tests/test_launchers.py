"""Sweeps through Hydra's launcher plugins (hydra/launcher=joblib, submitit_local), sharing one model cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPLAINERS = ("saliency", "gradcam", "random")
#: The smallest run the CLI accepts that still trains: two classes, 2-s clips, a 1/32-width Cnn14.
TINY = ["experiment=smoke", "data.n_classes=2", "data.clips_per_class={train:4,valid:2,test:1}",
        "data.duration_s=2.0", "model.width=0.03125", "train.epochs=1", "n_examples=0", "train.cache=true"]


def model_source(job: Path) -> str:
    """Where the job's weights came from: provenance.json has it (run.json did, before it)."""
    for name in ("provenance.json", "run.json"):
        record = json.loads((job / name).read_text()) if (job / name).is_file() else {}
        if "model_source" in record:
            return record["model_source"]
    raise AssertionError(f"no model_source in {job}")


def test_joblib_and_submitit_local_sweeps_run_and_train_the_model_once_between_them(tmp_path):
    cache = tmp_path / "cache"
    sweeps = {"joblib": ["hydra.launcher.n_jobs=3"], "submitit_local": ["hydra.launcher.timeout_min=10"]}
    # Both sweeps at once, so that six jobs in two kinds of process race for one cache entry.
    processes = {launcher: subprocess.Popen(
        [sys.executable, "-m", "audiointerp.run", "-m", f"hydra/launcher={launcher}", *options,
         f"explainer={','.join(EXPLAINERS)}", *TINY, f"train.cache_dir={cache}", f"hydra.sweep.dir={tmp_path / launcher}"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for launcher, options in sweeps.items()}
    outputs = {launcher: process.communicate(timeout=600)[0] for launcher, process in processes.items()}
    sources = []
    for launcher, process in processes.items():
        assert process.returncode == 0, (launcher, outputs[launcher][-4000:])
        sweep = tmp_path / launcher
        jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "report")
        # Named by hydra.job.override_dirname (conf/config.yaml hydra.sweep.subdir), whatever the
        # launcher; the cache folder is one of the excluded keys.
        assert [next(e for e in EXPLAINERS if f"explainer={e}," in job.name) for job in jobs] == sorted(EXPLAINERS), jobs
        assert all("cache_dir" not in job.name and "launcher" not in job.name for job in jobs), jobs
        assert all((job / "run.json").is_file() for job in jobs), launcher
        sources += [model_source(job) for job in jobs]
        # The report callback ran in the launching process when the multirun ended.
        assert (sweep / "report" / "index.html").is_file(), (launcher, outputs[launcher][-4000:])
        assert f"report: {(sweep / 'report' / 'index.html').resolve()}" in outputs[launcher]
    assert sorted(sources) == ["cache"] * 5 + ["trained"], sources
    assert len(list(cache.glob("*.pt"))) == 1
    assert not [p.name for p in cache.iterdir() if ".tmp" in p.name]


#: Stand-ins for SLURM's commands on a machine without it: submitit checks that srun exists, and
#: sbatch keeps the script it is given and answers as the real one does.
FAKE_SBATCH = """#!/bin/sh
cp "$1" "$FAKE_SBATCH_CAPTURE"
echo "Submitted batch job 4242"
"""


def test_slurm_settings_from_the_command_line_reach_the_sbatch_script(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("srun", "#!/bin/sh\nexit 1\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    captured = tmp_path / "submitted.sh"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SBATCH_CAPTURE": str(captured)}
    sweep = tmp_path / "sweep"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "audiointerp.run", "-m", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
         "hydra.launcher.gpus_per_node=1", "hydra.launcher.cpus_per_task=8", "hydra.launcher.mem_gb=32",
         "hydra.launcher.timeout_min=720", "hydra.launcher.array_parallelism=2", f"explainer={','.join(EXPLAINERS)}",
         f"hydra.sweep.dir={sweep}"], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not captured.is_file() and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.2)  # cp may still be writing it
    finally:
        launcher.kill()  # it would wait for the jobs, polling a SLURM that is not there
        output = launcher.communicate(timeout=30)[0]
    assert captured.is_file(), output[-4000:]
    directives = {line.split("=")[0]: line.split("=", 1)[1] for line in captured.read_text().splitlines()
                  if line.startswith("#SBATCH ") and "=" in line}
    assert directives["#SBATCH --partition"] == "gpu"
    assert directives["#SBATCH --gpus-per-node"] == "1"
    assert directives["#SBATCH --cpus-per-task"] == "8"
    assert directives["#SBATCH --mem"] == "32GB"
    assert directives["#SBATCH --time"] == "720"
    assert directives["#SBATCH --array"] == "0-2%2"  # three jobs, at most two at once
    assert directives["#SBATCH --output"].startswith(f"{sweep}/.submitit/")
    assert f"{sys.executable} -u -m submitit.core._submit" in captured.read_text()
