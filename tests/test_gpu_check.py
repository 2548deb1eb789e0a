"""scripts/gpu_check.py: its CPU dry run goes through every step on the shared ESC-10 clips and writes
the JSON a GPU run would; its byte-for-byte comparison of two runs sees a changed result."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_on_the_cpu_writes_the_check_json(tmp_path, shared_data):
    out = tmp_path / "gpu_check.json"
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--explainers", "saliency",
                             "--workdir", str(tmp_path / "work"), "--out", str(out),
                             "--data-root", str(shared_data / "esc50"), "--noise-dir", str(shared_data / "noises")],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    steps = report["steps"]
    assert report["mode"] == "cpu dry run" and report["settings"]["width"] == 0.03125
    assert report["elapsed_s"] <= seconds and report["within_budget"]
    # the CUDA tests ran: skipped, each saying why, on a machine without a GPU
    assert steps["cuda_tests"]["status"] == "passed" and "tests/test_cuda.py" in steps["cuda_tests"]["files"]
    counts = steps["cuda_tests"]["counts"]
    assert counts.get("skipped", 0) + counts.get("passed", 0) >= 4 and not counts.get("failed"), counts
    if counts.get("skipped"):
        assert steps["cuda_tests"]["skip_reasons"] == ["needs a CUDA GPU: torch.cuda.is_available() is False here"]
    # the design card's command, trained then from the cache, and the same bytes both times
    assert steps["design_card"]["command"].startswith("audiointerp.run explainer=shap noise=white data=esc10")
    assert steps["design_card"]["model_source"] == "trained" and steps["design_card_again"]["model_source"] == "cache"
    assert steps["determinism"]["identical"] is True and steps["determinism"]["files_compared"] >= 5
    assert report["deterministic"] is True
    # one joblib sweep over both precisions (no shap in it), every job finished on the CPU
    (sweep,) = steps["sweeps"]["sweeps"].values()
    assert "hydra/launcher=joblib" in sweep["command"] and sweep["status"] == "passed"
    jobs = list(sweep["jobs"].values())
    assert sorted((job["explainer"], job["precision"]) for job in jobs) == [("saliency", "bf16"), ("saliency", "fp32")]
    assert all(job["finished"] and job["model_source"] == "cache" and job["device"] == "cpu" for job in jobs)
    assert set(report["s_per_clip"]) == {"saliency", "shap"} and set(report["s_per_clip"]["saliency"]) == {"fp32", "bf16"}
    assert all(value > 0 for values in report["s_per_clip"].values() for value in values.values())
    assert report["sweep_wall_s"] > 0
    assert report["gpu_memory"]["polled"] is False and steps["compile"]["status"] == "skipped"
    # without gradcam's and lime's numbers the paper's sweep is not extrapolated, and it says why
    assert report["paper_sweep_extrapolated"]["seconds"] is None
    assert "no fp32 s/clip for" in report["paper_sweep_extrapolated"]["reason"]


def test_the_run_comparison_sees_one_changed_byte_and_ignores_how_a_run_ran(tmp_path):
    compare_runs = load_script().compare_runs
    for name in ("a", "b"):
        (tmp_path / name / "metrics").mkdir(parents=True)
        (tmp_path / name / "metrics" / "bin.csv").write_text("sample,FF\n0,0.25\n")
        (tmp_path / name / "provenance.json").write_text(json.dumps({"seconds": len(name)}))
        (tmp_path / name / ".hydra").mkdir()
        (tmp_path / name / ".hydra" / "config.yaml").write_text(f"run: {name}\n")
    (tmp_path / "b" / "provenance.json").write_text(json.dumps({"seconds": 99}))
    same = compare_runs(tmp_path / "a", tmp_path / "b")
    assert same == {"identical": True, "files_compared": 1, "differing": [], "in_one_only": []}
    (tmp_path / "b" / "metrics" / "bin.csv").write_text("sample,FF\n0,0.26\n")
    (tmp_path / "b" / "attributions.npz").write_bytes(b"\x00")
    changed = compare_runs(tmp_path / "a", tmp_path / "b")
    assert changed["identical"] is False
    assert changed["differing"] == ["metrics/bin.csv"] and changed["in_one_only"] == ["attributions.npz"]


def test_the_paper_sweep_extrapolation_scales_shap_by_its_background_and_stft_by_its_bins():
    extrapolate = load_script().extrapolate_paper
    s_per_clip = {"saliency": {"fp32": 1.0}, "gradcam": {"fp32": 1.0}, "lime": {"fp32": 2.0}, "shap": {"fp32": 1.0}}
    result = extrapolate(s_per_clip, (20, 100))
    mel = 1.0 + 1.0 + 2.0 + 5.0  # shap: a 5x larger background on ESC-50
    stft = mel * (257 * 313) / (64 * 501)
    assert result["seconds"] == round(400 * (4 * mel + stft))
    assert len(result["assumptions"]) == 4
