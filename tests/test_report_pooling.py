"""The report never pools runs that differ in a setting; seeds are pooled with a hierarchical bootstrap
and are an axis of their own (ranking stability). Run folders are written here as runs write them
(``.hydra/config.yaml``, run.json, summary.csv, metrics/<mask>.csv, clip_scores.csv), with chosen values."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from audiointerp.report.tables import TABLE_METRICS, bootstrap_interval, hierarchical_interval, kendalls_w, winner_agreement

REPO_ROOT = Path(__file__).resolve().parents[1]
N_CLIPS = 20


def config(explainer: str, seed: int, **changed) -> dict:
    """A run's saved config as Hydra writes it (interpolations unresolved), with dotted ``changed``."""
    saved = {"data": {"_target_": "audiointerp.data.synthetic.SyntheticClips", "seed": "${seed}"},
             "feature": {"_target_": "audiointerp.features.LogMel", "n_mels": 64},
             "model": {"_target_": "audiointerp.models.Cnn14", "width": 0.0625},
             "train": {"epochs": 2, "cache_dir": f"/caches/{seed}"},
             "explainer": {"_target_": f"x.{explainer}", "silence_level": "${mask.silence_level}", "area": 0.1},
             "mask": {"names": ["bin"], "silence_level": -100.0, "ties": "keep"},
             "noise": {"_target_": "audiointerp.data.noise.NoNoise"},
             "seed": seed, "device": "auto", "precision": "fp32", "n_examples": 3, "batch_size": 16,
             "shard": {"index": 0, "count": 1}}
    for key, value in changed.items():
        *parents, leaf = key.split(".")
        node = saved
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return saved


def write_run(folder: Path, explainer: str, seed: int, fidin: np.ndarray, ff: np.ndarray | None = None,
              deletion: np.ndarray | None = None, model: str = "cnn14", sanity: dict | None = None, **changed) -> Path:
    """A complete run folder: one mask (bin), per-clip FidIn (and FF, deletion areas) as given;
    ``sanity``: {step: per-clip Spearman} for the first clips, in cascade order, written as sanity.csv."""
    ff = np.zeros(N_CLIPS) if ff is None else ff
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config(explainer, seed, **changed)))
    identity = {"explainer": explainer, "model": model, "feature": "mel", "data": "synthetic", "noise": "none", "mask_set": "binary",
                "silence_level": -100.0, "seed": seed}
    (folder / "run.json").write_text(json.dumps({"run": identity, "class_names": ["a", "b"]}))
    clips = pd.DataFrame({"sample": range(N_CLIPS), "clip_id": [f"clip{i}" for i in range(N_CLIPS)],
                          "label": 0, "predicted": 0, "is_correct": 1})
    metrics = clips.assign(FF=ff, AI=0.0, AD=0.0, AG=0.0, FidIn=fidin, SPS=0.5, COMP=1.0)
    (folder / "metrics").mkdir()
    metrics.to_csv(folder / "metrics" / "bin.csv", index=False)
    if deletion is not None:
        clips.assign(deletion_auc=deletion, insertion_auc=1 - deletion).to_csv(folder / "clip_scores.csv", index=False)
    if sanity is not None:
        pd.DataFrame([{"step": step, "randomised": step, "sample": i, "clip_id": f"clip{i}", "target": 0,
                       "spearman": value, "ssim": 0.0, "spearman_signed": value}
                      for step, values in sanity.items() for i, value in enumerate(values)]
                     ).to_csv(folder / "sanity.csv", index=False)
    pd.DataFrame([{**identity, "mask": "bin", "FidIn": float(np.mean(fidin))}]).to_csv(folder / "summary.csv", index=False)
    return folder


def report(*paths: Path, out: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "audiointerp.report", *map(str, paths), "--out", str(out)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_runs_that_differ_only_in_an_explainer_option_are_two_rows_not_one(tmp_path):
    write_run(tmp_path / "runs" / "a", "lmac", 0, np.ones(N_CLIPS), **{"explainer.area": 0.1})
    write_run(tmp_path / "runs" / "b", "lmac", 0, np.zeros(N_CLIPS), **{"explainer.area": 0.5})
    write_run(tmp_path / "runs" / "c", "saliency", 0, np.full(N_CLIPS, 0.25))
    report(tmp_path / "runs", out=tmp_path / "report")
    table = pd.read_csv(tmp_path / "report" / "tables" / "mask" / "synthetic_mel_none_bin.csv").set_index("explainer")
    assert table["FidIn"].to_dict() == {"lmac[area=0.1]": 1.0, "lmac[area=0.5]": 0.0, "saliency": 0.25}
    assert (table["n"] == N_CLIPS).all(), "no row pools two runs"
    condition_tables = sorted(p.name for p in (tmp_path / "report" / "tables" / "condition").glob("*.csv"))
    assert condition_tables == ["synthetic_mel_lmac-area=0.1_none.csv", "synthetic_mel_lmac-area=0.5_none.csv",
                                "synthetic_mel_saliency_none.csv"]


@pytest.mark.parametrize("key,values", [("precision", ["fp32", "bf16"]), ("mask.ties", ["keep", "rank"])])
def test_runs_that_differ_in_a_setting_outside_the_columns_are_tabled_apart_and_named(tmp_path, key, values):
    write_run(tmp_path / "runs" / "a", "saliency", 0, np.ones(N_CLIPS), **{key: values[0]})
    write_run(tmp_path / "runs" / "b", "saliency", 0, np.zeros(N_CLIPS), **{key: values[1]})
    report(tmp_path / "runs", out=tmp_path / "report")
    folder = tmp_path / "report" / "tables" / "condition"
    tables = {p.stem: pd.read_csv(p).set_index("mask") for p in folder.glob("*.csv")}
    assert len(tables) == 2, sorted(tables)
    by_value = {next(v for v in values if f"{key}={v}" in name): t.loc["bin", "FidIn"] for name, t in tables.items()}
    assert by_value == {values[0]: 1.0, values[1]: 0.0}
    captions = [p.read_text().splitlines()[0] for p in folder.glob("*.md")]
    assert sorted(f"{key}={v}" in c for c in captions for v in values).count(True) == 2
    runs = pd.read_csv(tmp_path / "report" / "runs.csv").set_index("run")
    assert runs.loc["runs/a", "setting"] == f"{key}={values[0]}"


def test_runs_of_two_classifiers_or_two_widths_are_tabled_apart_by_model(tmp_path):
    """The model is a run column: two architectures are two conditions, and two widths of one
    architecture are named in its column (``cnn14[width=...]``), never pooled."""
    write_run(tmp_path / "runs" / "a", "saliency", 0, np.ones(N_CLIPS), model="cnn14")
    write_run(tmp_path / "runs" / "b", "saliency", 0, np.zeros(N_CLIPS), model="ast",
              **{"model._target_": "audiointerp.models.ast.AST"})
    write_run(tmp_path / "runs" / "c", "saliency", 0, np.full(N_CLIPS, 0.5), model="cnn14", **{"model.width": 0.125})
    report(tmp_path / "runs", out=tmp_path / "report")
    folder = tmp_path / "report" / "tables" / "condition"
    tables = {p.stem: pd.read_csv(p).set_index("mask").loc["bin", "FidIn"] for p in folder.glob("*.csv")}
    assert tables == {"synthetic_mel_cnn14-width=0.0625_saliency_none": 1.0, "synthetic_mel_ast_saliency_none": 0.0,
                      "synthetic_mel_cnn14-width=0.125_saliency_none": 0.5}
    runs = pd.read_csv(tmp_path / "report" / "runs.csv").set_index("run")
    assert runs["model"].to_dict() == {"runs/a": "cnn14[width=0.0625]", "runs/b": "ast", "runs/c": "cnn14[width=0.125]"}
    assert "model=ast" in (folder / "synthetic_mel_ast_saliency_none.md").read_text().splitlines()[0]


def test_settings_that_change_no_result_do_not_split_runs_and_seeds_are_pooled(tmp_path):
    # other cache folders (from config()), devices, example counts: the same condition, two seeds
    write_run(tmp_path / "runs" / "a", "saliency", 0, np.ones(N_CLIPS), **{"device": "cpu", "n_examples": 0})
    write_run(tmp_path / "runs" / "b", "saliency", 1, np.zeros(N_CLIPS), **{"device": "cuda", "n_examples": 5})
    report(tmp_path / "runs", out=tmp_path / "report")
    (table,) = (tmp_path / "report" / "tables" / "condition").glob("*.md")
    assert table.name == "synthetic_mel_saliency_none.md"
    text = table.read_text()
    assert "pooled over 2 seeds (0, 1)" in text and "hierarchical bootstrap" in text
    row = pd.read_csv(table.with_suffix(".csv")).set_index("mask").loc["bin"]
    assert row["FidIn"] == 0.5 and row["n"] == 2 * N_CLIPS


def test_the_hierarchical_interval_is_wider_than_the_row_bootstrap_when_seeds_disagree():
    generator = np.random.default_rng(0)
    seeds = [generator.normal(mean, 0.05, size=100) for mean in (0.2, 0.5, 0.8)]
    rows = bootstrap_interval(np.concatenate(seeds), 2000, 0, "k")
    nested = hierarchical_interval(seeds, 2000, 0, "k")
    assert nested[0] == pytest.approx(np.mean([s.mean() for s in seeds]))
    assert nested[1] < nested[0] < nested[2]
    # clips as if independent: about 0.25 / sqrt(300) wide; seeds: about 0.25 / sqrt(3)
    assert (nested[2] - nested[1]) > 5 * (rows[2] - rows[1])
    # seeds that agree: about as wide as the row bootstrap
    alike = [generator.normal(0.5, 0.05, size=100) for _ in range(3)]
    close = hierarchical_interval(alike, 2000, 0, "k")
    flat = bootstrap_interval(np.concatenate(alike), 2000, 0, "k")
    assert (close[2] - close[1]) < 2 * (flat[2] - flat[1])
    assert hierarchical_interval([seeds[0]], 500, 0, "k") == bootstrap_interval(seeds[0], 500, 0, "k")
    assert hierarchical_interval(seeds, 500, 0, "k") == hierarchical_interval(seeds, 500, 0, "k"), "seeded"


def test_a_report_pools_disagreeing_seeds_with_the_wider_interval(tmp_path):
    generator = np.random.default_rng(1)
    for seed, mean in enumerate((0.1, 0.5, 0.9)):
        write_run(tmp_path / "runs" / f"s{seed}", "saliency", seed, np.zeros(N_CLIPS),
                  ff=generator.normal(mean, 0.02, size=N_CLIPS))
    report(tmp_path / "runs", out=tmp_path / "report")
    row = pd.read_csv(tmp_path / "report" / "tables" / "condition" / "synthetic_mel_saliency_none.csv").set_index(
        "mask").loc["bin"]
    clips = pd.concat([pd.read_csv(tmp_path / "runs" / f"s{s}" / "metrics" / "bin.csv") for s in range(3)])
    mean, low, high = bootstrap_interval(clips["FF"].to_numpy(), 1000, 0, "any")
    assert row["FF"] == pytest.approx(clips["FF"].mean())
    assert row["FF_high"] - row["FF_low"] > 3 * (high - low)


def test_kendalls_w_and_winner_agreement_by_hand():
    alike = np.array([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0], [0.1, 0.2, 0.3]])
    assert kendalls_w(alike) == pytest.approx(1.0)
    assert winner_agreement(alike, lower_is_better=False) == 1.0
    assert winner_agreement(alike, lower_is_better=True) == 1.0
    # two seeds that reverse each other: rank sums 4, 4, 4 -> W = 0
    assert kendalls_w(np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])) == pytest.approx(0.0)
    # m = 3 seeds, n = 3: ranks (1,2,3), (1,2,3), (2,1,3) -> sums 4, 5, 9; S = 14; W = 12*14 / (9 * 24) = 7/9
    assert kendalls_w(np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [2.0, 1.0, 3.0]])) == pytest.approx(7 / 9)
    # winners: explainer 2, 2, 0 -> one pair of three agrees
    assert winner_agreement(np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [3.0, 1.0, 2.0]]), False) == pytest.approx(1 / 3)


def test_the_report_tables_ranking_stability_across_seeds(tmp_path):
    # FF: explainer a beats b on every seed; FidIn: seeds 0 and 1 prefer a, seed 2 prefers b
    for seed in range(3):
        write_run(tmp_path / "runs" / f"a{seed}", "a", seed, np.full(N_CLIPS, 0.9 if seed < 2 else 0.1),
                  ff=np.full(N_CLIPS, 0.8), deletion=np.full(N_CLIPS, 0.2))
        write_run(tmp_path / "runs" / f"b{seed}", "b", seed, np.full(N_CLIPS, 0.5),
                  ff=np.full(N_CLIPS, 0.3), deletion=np.full(N_CLIPS, 0.4))
    report(tmp_path / "runs", out=tmp_path / "report")
    tables = tmp_path / "report" / "tables"
    w = pd.read_csv(tables / "seed_ranking" / "synthetic_mel_none.csv").set_index("mask").loc["bin"]
    agree = pd.read_csv(tables / "seed_winner" / "synthetic_mel_none.csv").set_index("mask").loc["bin"]
    assert w["FF"] == pytest.approx(1.0) and agree["FF"] == 1.0
    # two explainers, seeds ranking (a, b), (a, b), (b, a): sums 4, 5; S = 0.5; W = 12 * 0.5 / (9 * 6) = 1/9
    assert w["FidIn"] == pytest.approx(1 / 9) and agree["FidIn"] == pytest.approx(1 / 3)
    assert "Kendall's W" in (tables / "seed_ranking" / "synthetic_mel_none.md").read_text()
    ranking = pd.read_csv(tables / "ranking" / "synthetic_mel_none.csv").set_index("explainer")
    assert ranking.loc["a", "deletion_auc"] == pytest.approx(0.2) and ranking.loc["b", "insertion_auc"] == pytest.approx(0.6)
    assert ranking.loc["a", "n"] == 3 * N_CLIPS
    results = pd.read_csv(tmp_path / "report" / "results.csv")
    assert {"deletion_auc", "insertion_auc"} <= set(results.columns)
    assert set(TABLE_METRICS) <= set(w.index)


def test_two_classifiers_get_a_side_by_side_table_of_every_explainer(tmp_path):
    """The architecture table puts each explainer on each model in a row of one table, with the
    seeds of a model pooled (hierarchically) and the models never pooled with each other."""
    for seed in (0, 1):
        write_run(tmp_path / "runs" / f"cnn_sal_{seed}", "saliency", seed, np.ones(N_CLIPS), model="cnn14",
                  deletion=np.full(N_CLIPS, 0.2))
        write_run(tmp_path / "runs" / f"ast_sal_{seed}", "saliency", seed, np.full(N_CLIPS, seed * 0.5), model="ast",
                  deletion=np.full(N_CLIPS, 0.6), **{"model._target_": "audiointerp.models.ast.AST"})
        write_run(tmp_path / "runs" / f"ast_rnd_{seed}", "random", seed, np.zeros(N_CLIPS), model="ast",
                  deletion=np.full(N_CLIPS, 0.9), **{"model._target_": "audiointerp.models.ast.AST"})
    report(tmp_path / "runs", out=tmp_path / "report")
    table = pd.read_csv(tmp_path / "report" / "tables" / "architecture" / "synthetic_none_bin.csv")
    table = table.set_index("explainer · model")
    assert table["FidIn"].to_dict() == {"random · ast": 0.0, "saliency · ast": 0.25, "saliency · cnn14": 1.0}
    assert (table["n"] == 2 * N_CLIPS).all()
    curves = pd.read_csv(tmp_path / "report" / "tables" / "architecture_localization" / "synthetic_none.csv")
    assert curves.set_index("explainer · model")["deletion_auc"].round(6).to_dict() == {
        "random · ast": 0.9, "saliency · ast": 0.6, "saliency · cnn14": 0.2}
    assert "Across classifiers" in (tmp_path / "report" / "index.html").read_text()
    # the figures average per model too: one heatmap and one trade-off plot each, none of both pooled
    figures = sorted(path.name for path in (tmp_path / "report" / "figures").iterdir())
    assert figures == [f"{kind}_synthetic_mel_{model}_none.png" for kind in ("heatmap", "tradeoff")
                       for model in ("ast", "cnn14")]


def test_the_sanity_checks_are_tabled_per_explainer_and_model(tmp_path):
    """The report's sanity table: per explainer, the mean rank correlation of the re-explained clips
    after the last cascade step (not the first) and for the random class, over those clips only; the
    architecture table carries the same columns per model."""
    for seed in (0, 1):
        write_run(tmp_path / "runs" / f"cnn_{seed}", "gradcam", seed, np.ones(N_CLIPS), model="cnn14",
                  sanity={"head": [0.9] * 4, "conv1": [0.1 * seed, 0.2, 0.3, 0.4], "random_logit": [0.5] * 4})
        write_run(tmp_path / "runs" / f"ast_{seed}", "gradcam", seed, np.ones(N_CLIPS), model="ast",
                  sanity={"classifier": [0.8] * 4, "layers.1": [0.6] * 4, "random_logit": [0.7] * 4},
                  **{"model._target_": "audiointerp.models.ast.AST"})
    report(tmp_path / "runs", out=tmp_path / "report")
    tables = tmp_path / "report" / "tables"
    sanity = {path.stem: pd.read_csv(path) for path in (tables / "sanity").glob("*.csv")}
    assert len(sanity) == 2  # one per model: two conditions
    cnn = next(t for name, t in sanity.items() if "cnn14" in name).set_index("explainer")
    # the mean of the seeds' means of the last cascade step: (0.225 + 0.25) / 2
    assert cnn.loc["gradcam", "sanity_cascade"] == pytest.approx(0.2375)
    assert cnn.loc["gradcam", "sanity_random_logit"] == pytest.approx(0.5)
    assert cnn.loc["gradcam", "n"] == 2 * 4  # the re-explained clips, not all N_CLIPS
    side_by_side = pd.read_csv(tables / "architecture_localization" / "synthetic_none.csv").set_index("explainer · model")
    assert side_by_side["sanity_cascade"].round(6).to_dict() == {"gradcam · ast": 0.6, "gradcam · cnn14": 0.2375}
    assert side_by_side["sanity_random_logit"].round(6).to_dict() == {"gradcam · ast": 0.7, "gradcam · cnn14": 0.5}
