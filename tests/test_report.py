"""The report: a real smoke-scale sweep, its automatic report/, and the tables checked against the
per-clip CSVs the runs wrote."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audiointerp.masks import MASK_NAMES
from audiointerp.report.tables import TABLE_METRICS, bootstrap_interval

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=900)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """experiment=smoke -m explainer=saliency,gradcam noise=none,white_gen: four jobs, one model."""
    root = tmp_path_factory.mktemp("sweep")
    folder = root / "sweep"
    result = run_module("audiointerp.run", "-m", "experiment=smoke", "explainer=saliency,gradcam",
                        "noise=none,white_gen", "train.cache=true", f"train.cache_dir={root / 'cache'}",
                        f"hydra.sweep.dir={folder}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"report: {(folder / 'report' / 'index.html').resolve()}" in result.stdout
    return folder


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_sweep_writes_its_report_and_the_command_reproduces_it_byte_for_byte(sweep, tmp_path):
    automatic = _files(sweep / "report")
    assert {"index.html", "results.csv", "runs.csv"} <= set(automatic)
    assert any(name.startswith("gallery/") and name.endswith(".wav") for name in automatic)
    assert any(name.startswith("figures/") and name.endswith(".png") for name in automatic)
    shutil.copytree(sweep / "report", tmp_path / "before")
    result = run_module("audiointerp.report", str(sweep))
    assert result.returncode == 0, result.stderr[-3000:]
    again = _files(sweep / "report")
    assert sorted(again) == sorted(automatic)
    assert [name for name in automatic if automatic[name] != again[name]] == []
    assert not list(sweep.glob(".report.tmp-*")), "the staging folder is cleaned up"


def _job(sweep: Path, explainer: str, noise: str) -> Path:
    (job,) = [p for p in sweep.iterdir() if p.is_dir() and f"explainer={explainer}" in p.name and f"noise={noise}" in p.name]
    return job


def test_results_csv_has_every_run_clip_and_mask(sweep):
    results = pd.read_csv(sweep / "report" / "results.csv")
    assert len(results) == 4 * 16 * len(MASK_NAMES)
    assert set(results["explainer"]) == {"saliency", "gradcam"} and set(results["noise"]) == {"none", "white_gen"}
    assert {"relevance_mass", "auroc", "iou", "kept"} <= set(results.columns), "extra columns runs have come along"


@pytest.mark.parametrize("explainer,noise", [("saliency", "none"), ("gradcam", "white_gen")])
def test_condition_tables_are_the_means_of_the_per_clip_csvs(sweep, explainer, noise):
    table = pd.read_csv(sweep / "report" / "tables" / "condition" / f"synthetic_mel_{explainer}_{noise}.csv")
    assert list(table["mask"]) == list(MASK_NAMES)
    job = _job(sweep, explainer, noise)
    for correct, kind in ((None, "condition"), (1, "condition_correct"), (0, "condition_incorrect")):
        path = sweep / "report" / "tables" / kind / f"synthetic_mel_{explainer}_{noise}.csv"
        for mask in ("bin", "topK_30_pos", "sigmoid"):
            clips = pd.read_csv(job / "metrics" / f"{mask}.csv")
            if correct is not None:
                clips = clips[clips["is_correct"] == correct]
            if clips.empty:
                assert not path.exists() or mask not in set(pd.read_csv(path)["mask"])
                continue
            row = pd.read_csv(path).set_index("mask").loc[mask]
            assert row["n"] == len(clips)
            for metric in TABLE_METRICS:
                assert row[metric] == pytest.approx(clips[metric].mean(), rel=1e-9, abs=1e-12), (kind, mask, metric)
                assert row[f"{metric}_low"] <= row[metric] + 1e-12 <= row[f"{metric}_high"] + 2e-12


def test_explainer_and_noise_tables_compare_the_right_runs(sweep):
    by_mask = pd.read_csv(sweep / "report" / "tables" / "mask" / "synthetic_mel_white_gen_bin.csv").set_index("explainer")
    assert list(by_mask.index) == ["gradcam", "saliency"]
    for explainer in by_mask.index:
        clips = pd.read_csv(_job(sweep, explainer, "white_gen") / "metrics" / "bin.csv")
        assert by_mask.loc[explainer, "FF"] == pytest.approx(clips["FF"].mean())
    by_noise = pd.read_csv(sweep / "report" / "tables" / "noise" / "synthetic_mel_saliency_topK_5.csv").set_index("noise")
    assert list(by_noise.index) == ["none", "white_gen"]
    clips = pd.read_csv(_job(sweep, "saliency", "white_gen") / "metrics" / "topK_5.csv")
    assert by_noise.loc["white_gen", "AD"] == pytest.approx(clips["AD"].mean())
    localization = pd.read_csv(sweep / "report" / "tables" / "localization" / "synthetic_mel_none.csv").set_index("explainer")
    clips = pd.read_csv(_job(sweep, "gradcam", "none") / "localization.csv")
    assert localization.loc["gradcam", "auroc"] == pytest.approx(clips["auroc"].mean())
    assert localization.loc["gradcam", "n"] == 16


def test_latex_tables_have_the_right_rows_and_columns(sweep):
    tex = (sweep / "report" / "tables" / "condition" / "synthetic_mel_saliency_none.tex").read_text()
    assert tex.count(r"\toprule") == tex.count(r"\midrule") == tex.count(r"\bottomrule") == 1
    assert r"\begin{tabular}{l" + "r" * len(TABLE_METRICS) + "}" in tex
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    header = tex.split(r"\toprule")[1].split(r"\midrule")[0].strip()
    assert [cell.strip() for cell in header.rstrip("\\ ").split("&")] == ["mask", "FF", "AI", "AG", "Fid-In", "SPS", "AD", "COMP"]
    assert [line.split("&")[0].strip() for line in body] == [m.replace("_", r"\_") for m in MASK_NAMES]
    assert all(line.count("&") == len(TABLE_METRICS) and line.endswith(r"\\") for line in body)
    table = pd.read_csv(sweep / "report" / "tables" / "condition" / "synthetic_mel_saliency_none.csv")
    best_ff = table.loc[table["FF"].idxmax(), "mask"].replace("_", r"\_")
    (best_line,) = [line for line in body if line.startswith(best_ff + " ")]
    assert best_line.split("&")[1].strip().startswith(r"\textbf{"), "the highest FF is bold"
    best_ad = table.loc[table["AD"].idxmin(), "mask"].replace("_", r"\_")
    (best_line,) = [line for line in body if line.startswith(best_ad + " ")]
    assert best_line.split("&")[6].strip().startswith(r"\textbf{"), "the lowest AD is bold"
    assert r"\caption{" in tex and "16 clips" in tex


def test_bootstrap_intervals_contain_the_mean_and_shrink_with_more_clips():
    generator = np.random.default_rng(0)
    population = generator.normal(0.5, 0.2, size=400)
    few = bootstrap_interval(population[:25], resamples=1000, seed=0, key="a")
    many = bootstrap_interval(population, resamples=1000, seed=0, key="a")
    for mean, low, high in (few, many):
        assert low < mean < high
    assert few[0] == pytest.approx(population[:25].mean())
    assert (many[2] - many[1]) < 0.5 * (few[2] - few[1])  # about 1/sqrt(16) as wide
    assert bootstrap_interval(population[:25], 1000, 0, "a") == few, "seeded"
    assert bootstrap_interval(np.array([np.nan, 1.0, 3.0]), 200, 0, "b")[0] == 2.0, "NaN (undefined) values dropped"
    assert all(math.isnan(v) for v in bootstrap_interval(np.array([np.nan]), 200, 0, "c"))


def test_failed_and_incomplete_runs_are_listed(sweep, tmp_path):
    parent = tmp_path / "runs"
    shutil.copytree(_job(sweep, "saliency", "none"), parent / "good", ignore=shutil.ignore_patterns("examples"))
    # what Hydra leaves of a run that crashed: its config, no results
    shutil.copytree(_job(sweep, "gradcam", "none") / ".hydra", parent / "crashed" / ".hydra")
    result = run_module("audiointerp.report", str(parent))
    assert result.returncode == 0, result.stderr[-3000:]
    runs = pd.read_csv(parent / "report" / "runs.csv").set_index("run")
    assert runs.loc["crashed", "status"].startswith("incomplete: no run.json")
    assert runs.loc["good", "status"] == "complete"
    assert "crashed" in (parent / "report" / "index.html").read_text()
    assert set(pd.read_csv(parent / "report" / "results.csv")["run"]) == {"good"}


def test_a_missing_folder_is_a_one_line_error(tmp_path):
    result = run_module("audiointerp.report", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: report: {tmp_path / 'nowhere'} is not a folder (expected a run folder, a sweep folder or a parent of them)"]


def test_seeds_are_pooled_and_counted(sweep, tmp_path):
    parent = tmp_path / "seeds"
    for seed in (0, 1):
        target = parent / f"seed{seed}"
        shutil.copytree(_job(sweep, "saliency", "none"), target, ignore=shutil.ignore_patterns("examples"))
        report = json.loads((target / "run.json").read_text())
        report["run"]["seed"] = seed
        (target / "run.json").write_text(json.dumps(report))
    result = run_module("audiointerp.report", str(parent))
    assert result.returncode == 0, result.stderr[-3000:]
    markdown = (parent / "report" / "tables" / "condition" / "synthetic_mel_saliency_none.md").read_text()
    assert "pooled over 2 seeds" in markdown and "32 clips" in markdown


# --- the page in a real browser ------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
#: Where the browser test leaves its screenshot (an artefact of the test run, not committed).
ARTIFACTS = Path(__import__("os").environ.get("AUDIOINTERP_ARTIFACTS", REPO_ROOT / "artifacts"))


def _browser():
    if not (CHROMIUM and CHROMEDRIVER):
        if __import__("os").environ.get("CI"):
            pytest.fail("CI must install chromium and chromium-driver (see .ci/run)")
        pytest.skip("no chromium / chromedriver here (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--autoplay-policy=no-user-gesture-required", "--window-size=1400,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def test_the_page_loads_from_disk_with_every_image_and_sound(sweep):
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _browser()
    try:
        driver.get((sweep / "report" / "index.html").resolve().as_uri())
        WebDriverWait(driver, 60).until(lambda d: d.execute_script("return document.readyState") == "complete")
        images = driver.execute_script("return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
        assert len(images) >= 2 + 2 * 4, images  # two figures, and per job one example clip with two masks
        assert all(complete and width > 0 for _, complete, width in images), images
        # ask every player for its metadata and wait until each has a duration (or an error)
        driver.execute_script("document.querySelectorAll('audio').forEach(a => a.load())")
        WebDriverWait(driver, 60).until(lambda d: d.execute_script(
            "return Array.from(document.querySelectorAll('audio')).every(a => a.readyState >= 1 || a.error)"))
        players = driver.execute_script(
            "return Array.from(document.querySelectorAll('audio')).map(a => [a.getAttribute('src'), a.duration, a.error && a.error.code])")
        assert len(players) == 4 * 2 * 3, players  # 4 jobs x 2 masks x (original, masked, complement)
        assert all(error is None and duration == pytest.approx(5.0, abs=0.05) for _, duration, error in players), players
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == []
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1400, min(int(height), 6000))
        assert driver.save_screenshot(str(ARTIFACTS / "report_page.png"))
    finally:
        driver.quit()
