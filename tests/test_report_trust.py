"""The report's "which metric to trust" table: per metric (and mask) and ground-truth score, Spearman
over explainers of the two rankings, per seed, then the mean over seeds. Run folders are written here
as runs write them (``.hydra/config.yaml``, run.json, summary.csv, metrics/<mask>.csv,
localization.csv, clip_scores.csv), with chosen values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from audiointerp.report import write_report
from audiointerp.report.trust import seed_interval, spearman

N_CLIPS = 6
EXPLAINERS = ("random", "saliency", "gradcam", "oracle")
MASKS = ("bin", "topK_30")
TRUST = Path("tables") / "metric_trust" / "synthetic_mel_none"


def write_run(folder: Path, explainer: str, seed: int, scores: dict[str, float], localization: bool = True) -> Path:
    """A complete run folder with constant per-clip values: ``scores`` holds FF, AI, AD, AG, FidIn
    (the same on every mask), deletion_auc, insertion_auc, relevance_mass and auroc."""
    (folder / ".hydra").mkdir(parents=True)
    saved = {"data": {"_target_": "audiointerp.data.synthetic.SyntheticClips", "seed": "${seed}"},
             "explainer": {"_target_": f"x.{explainer}"}, "mask": {"names": list(MASKS), "silence_level": -100.0},
             "noise": {"_target_": "audiointerp.data.noise.NoNoise"}, "seed": seed, "precision": "fp32"}
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(saved))
    identity = {"explainer": explainer, "feature": "mel", "data": "synthetic", "noise": "none", "mask_set": "binary",
                "silence_level": -100.0, "seed": seed}
    (folder / "run.json").write_text(json.dumps({"run": identity, "class_names": ["a", "b"]}))
    clips = pd.DataFrame({"sample": range(N_CLIPS), "clip_id": [f"clip{i}" for i in range(N_CLIPS)],
                          "label": 0, "predicted": 0, "is_correct": 1})
    (folder / "metrics").mkdir()
    noise = np.linspace(-0.01, 0.01, N_CLIPS)  # per-clip spread that changes no mean
    for mask in MASKS:
        clips.assign(**{m: scores[m] + noise for m in ("FF", "AI", "AD", "AG", "FidIn")}, SPS=0.5, COMP=1.0).to_csv(
            folder / "metrics" / f"{mask}.csv", index=False)
    clips.assign(deletion_auc=scores["deletion_auc"] + noise, insertion_auc=scores["insertion_auc"] + noise).to_csv(
        folder / "clip_scores.csv", index=False)
    if localization:
        clips.assign(evidence_share=0.2, relevance_mass=scores["relevance_mass"] + noise, relevance_rank=0.5,
                     pointing_game=1.0, auroc=scores["auroc"] + noise).to_csv(folder / "localization.csv", index=False)
    pd.DataFrame([{**identity, "mask": m, "FF": scores["FF"]} for m in MASKS]).to_csv(folder / "summary.csv", index=False)
    return folder


def scores_for(rank: int, seed: int) -> dict[str, float]:
    """The scores of the explainer ranked ``rank`` (0 worst .. 3 best) by relevance mass on ``seed``.

    FF, insertion_auc and auroc rank as relevance mass does; AD and deletion_auc exactly inversely
    (lower is better); FidIn's ranks (2, 4, 1, 3) are unrelated (Spearman 0 to relevance mass); AI
    ranks as relevance mass does on each seed, but on scales so far apart that the means pooled over
    seeds rank the explainers the other way (seed 1 reverses the explainers' order, see ``make_runs``,
    with AI 100 times larger and the ground truth's steps half as large); AG is the same for every
    explainer.
    """
    scale, step = (1.0, 1.0) if seed == 0 else (100.0, 0.5)
    return {"relevance_mass": 0.1 + 0.2 * step * rank, "auroc": 0.5 + 0.1 * step * rank, "FF": 0.1 * rank,
            "AD": 50.0 - 10.0 * rank, "deletion_auc": 0.9 - 0.2 * rank, "insertion_auc": 0.1 + 0.2 * rank,
            "FidIn": (0.2, 0.4, 0.1, 0.3)[rank], "AI": scale * (1 + rank), "AG": 0.3}


def make_runs(root: Path, seeds=(0, 1), localization: bool = True) -> Path:
    """Every explainer on every seed; seed 0 ranks them in ``EXPLAINERS`` order by the ground truth,
    seed 1 in reverse order (so per-seed rankings must not be pooled)."""
    for seed in seeds:
        for position, explainer in enumerate(EXPLAINERS):
            rank = position if seed % 2 == 0 else len(EXPLAINERS) - 1 - position
            write_run(root / f"{explainer}_s{seed}", explainer, seed, scores_for(rank, seed), localization)
    return root


def test_spearman_and_the_seed_interval_by_hand():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([2, 4, 1, 3], [1, 2, 3, 4]) == pytest.approx(0.0)
    # ranks (1, 2.5, 2.5) against (1, 2, 3): Pearson of the ranks = 1.5 / sqrt(1.5 * 2)
    assert spearman([0, 5, 5], [1, 2, 3]) == pytest.approx(1.5 / np.sqrt(3.0))
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert seed_interval([0.2, 0.6], 100, 0, "k") == pytest.approx((0.4, 0.2, 0.6)), "two seeds: min-max"
    mean, low, high = seed_interval([0.0, 0.5, 1.0, 0.25], 2000, 0, "k")
    assert mean == pytest.approx(0.4375) and 0.0 <= low < mean < high <= 1.0
    assert low > 0.0 or high < 1.0, "a bootstrap of the mean is narrower than min-max"
    single = seed_interval([0.3], 100, 0, "k")
    assert single[0] == 0.3 and np.isnan(single[1]) and np.isnan(single[2])


def test_the_trust_table_orients_metrics_and_ranks_per_seed(tmp_path):
    out = tmp_path / "report"
    write_report([make_runs(tmp_path / "runs")], out, resamples=200)
    files = sorted(p.name for p in (out / "tables" / "metric_trust").iterdir())
    assert files == ["synthetic_mel_none.csv", "synthetic_mel_none.md", "synthetic_mel_none.tex"]
    table = pd.read_csv(out / TRUST.with_suffix(".csv")).set_index("metric / mask")
    assert list(table.index) == [f"{m} / {k}" for m in ("FF", "AI", "AD", "AG", "FidIn") for k in MASKS] + \
        ["deletion_auc", "insertion_auc"]
    rho = table[["relevance_mass", "auroc"]]
    for mask in MASKS:
        assert list(rho.loc[f"FF / {mask}"]) == pytest.approx([1.0, 1.0])
        assert list(rho.loc[f"AD / {mask}"]) == pytest.approx([1.0, 1.0]), "AD is lower-is-better: flipped"
        assert list(rho.loc[f"FidIn / {mask}"]) == pytest.approx([0.0, 0.0])
        # per seed +1 on both seeds; the means pooled over seeds would rank the explainers inversely
        assert list(rho.loc[f"AI / {mask}"]) == pytest.approx([1.0, 1.0]), "seeds are ranked apart, not pooled"
        assert rho.loc[f"AG / {mask}"].isna().all(), "a metric that ties every explainer ranks nothing"
        assert table.loc[f"AG / {mask}", "n"] == 0
    assert list(rho.loc["deletion_auc"]) == pytest.approx([1.0, 1.0]), "deletion area is lower-is-better: flipped"
    assert list(rho.loc["insertion_auc"]) == pytest.approx([1.0, 1.0])
    # two seeds: the interval is min-max of the seeds' correlations
    assert table.loc["FF / bin", "relevance_mass_low"] == pytest.approx(1.0)
    assert table.loc["FF / bin", "n"] == 2 and str(table.loc["FF / bin", "explainers"]) == "4"
    assert table.loc["AD / topK_30", "mask"] == "topK_30" and table.loc["AD / topK_30", "metric"] == "AD"
    text = (out / TRUST.with_suffix(".md")).read_text()
    assert "Spearman" in text and "min-max over the seeds" in text and "2 seeds (0, 1)" in text
    assert "4 explainers (gradcam, oracle, random, saliency)" in text and "random and oracle" in text
    assert "| FF / bin | **1.000 [1.000, 1.000]** |" in text
    assert "metric_trust/synthetic_mel_none.csv" in (out / "index.html").read_text()
    assert "Which metric to trust" in (out / "index.html").read_text()


def test_three_seeds_give_a_bootstrap_interval_over_seeds(tmp_path):
    out = tmp_path / "report"
    runs = make_runs(tmp_path / "runs", seeds=(0, 1, 2))
    # seed 2: FidIn now agrees with the ground truth exactly, so the seeds disagree (0, 0, 1)
    for position, explainer in enumerate(EXPLAINERS):
        path = runs / f"{explainer}_s2" / "metrics" / "bin.csv"
        frame = pd.read_csv(path)
        frame["FidIn"] = float(position)
        frame.to_csv(path, index=False)
    write_report([runs], out, resamples=500)
    table = pd.read_csv(out / TRUST.with_suffix(".csv")).set_index("metric / mask")
    row = table.loc["FidIn / bin"]
    assert row["relevance_mass"] == pytest.approx(1 / 3) and row["n"] == 3
    # a bootstrap of the mean of (0, 0, 1): its quantiles lie on the resampled means 0, 1/3, 2/3, 1
    low, high = row["relevance_mass_low"], row["relevance_mass_high"]
    assert low == pytest.approx(0.0) and min(abs(high - v) for v in (2 / 3, 1.0)) < 1e-9
    assert table.loc["FF / bin", "relevance_mass_low"] == pytest.approx(1.0), "seeds that agree: no spread"
    assert table.loc["FidIn / topK_30", "relevance_mass"] == pytest.approx(0.0)
    assert "percentile bootstrap over seeds" in (out / TRUST.with_suffix(".md")).read_text()


def test_no_ground_truth_no_trust_table(tmp_path):
    out = tmp_path / "report"
    write_report([make_runs(tmp_path / "runs", localization=False)], out, resamples=50)
    assert (out / "tables" / "condition").is_dir(), "the other tables are written"
    assert not (out / "tables" / "metric_trust").exists()
    assert "Which metric to trust" not in (out / "index.html").read_text()


def test_two_explainers_are_too_few_to_rank(tmp_path):
    runs = make_runs(tmp_path / "runs")
    for folder in runs.iterdir():
        if folder.name.startswith(("random", "oracle")):
            (folder / "run.json").unlink()  # left incomplete: not gathered
    write_report([runs], tmp_path / "report", resamples=50)
    assert (tmp_path / "report" / "tables" / "localization").is_dir()
    assert not (tmp_path / "report" / "tables" / "metric_trust").exists()
