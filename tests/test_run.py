"""End-to-end runs through the real CLI (`python -m audiointerp.run`), on real files on disk."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiointerp.localization import ATTRIBUTION_SCORE_NAMES
from audiointerp.masks import BINARY_MASK_NAMES, MASK_NAMES
from audiointerp.metrics import AUDIO_METRIC_NAMES, METRIC_NAMES

REPO_ROOT = Path(__file__).resolve().parents[1]
RANGES = {"FF": (-1, 1), "AI": (0, 100), "AD": (0, 100), "AG": (0, 100), "FidIn": (0, 1), "SPS": (0, 1),
          "COMP": (0, math.log(64 * 501))}  # COMP of a uniform mask over a 64x501 map is ln(64*501)


def assert_in_range(metric: str, value: float, context, n_bins: int = 64 * 501) -> None:
    """Finite and inside the metric's range, up to the CSVs' 6 significant digits."""
    low, high = (0, math.log(n_bins)) if metric == "COMP" else RANGES[metric]
    slack = 1e-6 + 1e-5 * abs(high)
    assert math.isfinite(value) and low - slack <= value <= high + slack, (*context, metric, value)


def run_cli(*overrides: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "audiointerp.run", *overrides], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("smoke")
    result = run_cli("experiment=smoke", "sanity=true", "sanity_clips=4", "audio_metrics=true", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(run_dir) in result.stdout, "the run must print where its results are"
    assert "sanity (Saliency): Spearman of |A|" in result.stdout
    return run_dir


def test_smoke_run_writes_every_metric_csv_in_range(smoke_run):
    n_clips = None
    for mask_name in MASK_NAMES:
        rows = read_csv(smoke_run / "metrics" / f"{mask_name}.csv")
        evidence = ["iou", "precision", "recall"] if mask_name in BINARY_MASK_NAMES else []
        assert list(rows[0]) == ["sample", "clip_id", "label", "predicted", "is_correct", *METRIC_NAMES,
                                 "kept", "degenerate", *evidence, *AUDIO_METRIC_NAMES,
                                 "predicted_masked", "predicted_unmasked"]
        n_clips = n_clips or len(rows)
        assert len(rows) == n_clips == 16  # 8 classes x 2 test clips
        for row in rows:
            assert int(row["is_correct"]) == int(row["label"] == row["predicted"])
            for metric in RANGES:
                assert_in_range(metric, float(row[metric]), (mask_name,))
                if f"{metric}_audio" in row:
                    assert_in_range(metric, float(row[f"{metric}_audio"]), (mask_name, "audio"))
            for column in evidence:  # NaN only for 0 / 0: precision of an empty mask
                assert 0 <= float(row[column]) <= 1 or (column == "precision" and float(row["kept"]) == 0), row
        # binary masks: SPS and COMP are defined, and AI/FidIn are indicators
        assert {float(r["AI"]) for r in rows} <= {0.0, 100.0}
        assert {float(r["FidIn"]) for r in rows} <= {0.0, 1.0}
        assert {float(r["degenerate"]) for r in rows} <= {0.0, 1.0}
        for row in rows:
            assert 0.0 <= float(row["kept"]) <= 1.0
            # Fid-In is whether the masked input keeps the clip's prediction
            assert int(row["FidIn"] == "1") == int(row["predicted_masked"] == row["predicted"]), row


def test_smoke_run_summary_is_the_mean_of_the_csvs(smoke_run):
    summary = {row["mask"]: row for row in read_csv(smoke_run / "summary.csv")}
    assert list(summary) == list(MASK_NAMES)
    report = json.loads((smoke_run / "run.json").read_text())
    for mask_name in ("topK_30", "sigmoid_pos"):
        rows = read_csv(smoke_run / "metrics" / f"{mask_name}.csv")
        for metric in (*METRIC_NAMES, "kept", "degenerate"):
            mean = np.mean([float(r[metric]) for r in rows])
            assert float(summary[mask_name][metric]) == pytest.approx(mean, rel=1e-4, abs=1e-6)
        for kind in ("masked", "unmasked"):
            classes = [r[f"predicted_{kind}"] for r in rows]
            share = max(classes.count(c) for c in set(classes)) / len(classes)
            assert float(summary[mask_name][f"collapse_{kind}"]) == pytest.approx(share)
            assert report["masks"][mask_name][f"collapse_{kind}"] == pytest.approx(share)


def test_smoke_run_says_what_it_is(smoke_run):
    expected = {"explainer": "saliency", "model": "cnn14", "feature": "mel", "data": "synthetic", "noise": "none", "mask_set": "all",
                "silence_level": -100.0, "seed": 0}
    assert json.loads((smoke_run / "run.json").read_text())["run"] == expected
    rows = read_csv(smoke_run / "summary.csv")
    assert list(rows[0])[:9] == [*expected, "mask"]
    assert all({k: r[k] for k in expected} == {k: str(v) for k, v in expected.items()} for r in rows)


def test_sweep_jobs_are_named_after_their_overrides(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("-m", "experiment=smoke", "explainer=random,gradcam", "n_examples=0", "train.cache=true",
                     f"train.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if (p / "run.json").is_file())
    # train.cache and train.cache_dir change no result: not in the names
    assert jobs == ["experiment=smoke,explainer=gradcam,n_examples=0",
                    "experiment=smoke,explainer=random,n_examples=0"], jobs
    for job in jobs:
        assert json.loads((sweep / job / "run.json").read_text())["run"]["explainer"] in job


def test_smoke_run_scores_localisation_per_clip_with_means_in_the_summary(smoke_run):
    rows = read_csv(smoke_run / "localization.csv")
    assert list(rows[0]) == ["sample", "clip_id", "label", "predicted", "is_correct", *ATTRIBUTION_SCORE_NAMES]
    assert [r["clip_id"] for r in rows] == [r["clip_id"] for r in read_csv(smoke_run / "metrics" / "bin.csv")]
    summary = {row["mask"]: row for row in read_csv(smoke_run / "summary.csv")}
    report = json.loads((smoke_run / "run.json").read_text())
    for name in ATTRIBUTION_SCORE_NAMES:
        values = [float(r[name]) for r in rows]
        assert all(0 <= v <= 1 for v in values if not math.isnan(v)), (name, values)
        assert float(summary["topK_30"][name]) == pytest.approx(np.nanmean(values), rel=1e-4, abs=1e-6)
        assert report["localization"][name] == pytest.approx(np.nanmean(values), rel=1e-4, abs=1e-6)
    bin_rows = read_csv(smoke_run / "metrics" / "bin.csv")
    assert float(summary["bin"]["iou"]) == pytest.approx(np.nanmean([float(r["iou"]) for r in bin_rows]), rel=1e-4)
    assert summary["sigmoid"]["iou"] == "", "soft masks have no IoU: blank, not 0"
    assert float(summary["bin"]["FF_audio"]) == pytest.approx(np.mean([float(r["FF_audio"]) for r in bin_rows]), rel=1e-4, abs=1e-6)
    assert json.loads((smoke_run / "provenance.json").read_text())["audio_seconds_per_clip"] > 0


def test_smoke_run_sanity_checks_leave_the_model_as_trained(smoke_run):
    from audiointerp import train
    from audiointerp.models import Cnn14

    rows = read_csv(smoke_run / "sanity.csv")
    steps = ["head"] + [f"conv_block{i}" for i in range(6, 0, -1)] + ["random_logit"]
    assert [r["step"] for r in rows] == [s for s in steps for _ in range(4)]
    assert all(-1 <= float(r["spearman"]) <= 1 for r in rows if r["spearman"] != "nan")
    report = json.loads((smoke_run / "run.json").read_text())
    assert list(report["sanity"]) == steps
    # model.pt is saved right after training; the fingerprint is taken at the end of the run
    model = Cnn14(n_bins=64, n_classes=8, width=0.0625)
    train.load_checkpoint(model, smoke_run / "model.pt")
    assert train.fingerprint(model) == report["model_sha256"]
    model.classifier.weight.data[0, 0] += 1e-6
    assert train.fingerprint(model) != report["model_sha256"]


def test_smoke_run_writes_attributions_model_config_and_examples(smoke_run):
    with np.load(smoke_run / "attributions.npz") as saved:
        assert saved["attributions"].shape == (16, 1, 64, 501)
        assert np.isfinite(saved["attributions"]).all()
        assert len(saved["clip_ids"]) == 16
    assert (smoke_run / "model.pt").stat().st_size > 0
    assert (smoke_run / ".hydra" / "config.yaml").is_file()
    report = json.loads((smoke_run / "run.json").read_text())
    assert report["n_clips"] == 16 and report["best_epoch"] in (1, 2)
    assert json.loads((smoke_run / "provenance.json").read_text())["model_source"] == "trained"
    examples = [p for p in (smoke_run / "examples").iterdir() if p.is_dir()]
    assert len(examples) == 1  # n_examples=1 in the smoke preset
    for mask_name in MASK_NAMES:
        for kind in ("masked", "unmasked"):
            audio, rate = sf.read(examples[0] / f"{mask_name}_{kind}.wav")
            assert rate == 32000 and audio.shape == (160000,) and np.isfinite(audio).all()
        assert (examples[0] / f"{mask_name}.png").stat().st_size > 1000
    original, _ = sf.read(examples[0] / "original.wav")
    assert np.abs(original).max() > 0.1
    assert not list(smoke_run.rglob("*.tmp*")), "temporary files left behind"


def test_a_bf16_run_writes_the_same_files_and_columns_as_fp32(tmp_path, smoke_run):
    run_dir = tmp_path / "bf16"
    result = run_cli("experiment=smoke", "sanity=true", "sanity_clips=4", "audio_metrics=true", "precision=bf16",
                     f"model.checkpoint={smoke_run / 'model.pt'}", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    csvs = sorted(p.relative_to(smoke_run) for p in smoke_run.rglob("*.csv"))
    assert csvs == sorted(p.relative_to(run_dir) for p in run_dir.rglob("*.csv"))
    for name in csvs:
        assert list(read_csv(run_dir / name)[0]) == list(read_csv(smoke_run / name)[0]), name
    assert json.loads((run_dir / "run.json").read_text())["precision"] == "bf16"
    assert json.loads((smoke_run / "run.json").read_text())["precision"] == "fp32"
    with np.load(smoke_run / "attributions.npz") as exact, np.load(run_dir / "attributions.npz") as fast:
        assert fast["attributions"].dtype == np.float32
        assert not np.array_equal(fast["attributions"], exact["attributions"]), "bf16 must have been used"
        # a two-epoch model's gradients are less stable than a trained one's (test_precision holds
        # that one to a Spearman of 0.98): here 0.89 to 0.995 per clip
        r = [np.corrcoef(got.ravel(), want.ravel())[0, 1] for got, want in zip(fast["attributions"], exact["attributions"])]
        assert np.mean(r) > 0.95 and min(r) > 0.85, r


def test_second_run_reuses_the_cached_model(tmp_path):
    cache = tmp_path / "cache"
    common = ["experiment=smoke", "train.cache=true", f"train.cache_dir={cache}", "n_examples=0",
              "mask=soft", "feature=stft"]
    first = run_cli(*common, f"hydra.run.dir={tmp_path / 'first'}")
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_cli(*common, "explainer=gradcam", f"hydra.run.dir={tmp_path / 'second'}")
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads((tmp_path / "first" / "provenance.json").read_text())["model_source"] == "trained"
    assert json.loads((tmp_path / "second" / "provenance.json").read_text())["model_source"] == "cache"
    assert "epoch 1/" not in second.stderr
    rows = read_csv(tmp_path / "second" / "metrics" / "minmax.csv")
    assert len(rows) == 16
    with np.load(tmp_path / "second" / "attributions.npz") as saved:
        assert saved["attributions"].shape == (16, 1, 257, 313)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> Path:
    """Files that are not what an option expects: a text file as noise and as checkpoint."""
    folder = tmp_path_factory.mktemp("bad_files")
    (folder / "notes.txt").write_text("not audio, not a checkpoint\n")
    return folder


#: Every bad value is refused before training: exit 2, one line naming the option or file.
@pytest.mark.parametrize("override,expected", [
    ("data=esc50 data.root={tmp}/no_such_dataset", "error: data.root="),
    ("data=esc10 data.root={tmp} data.valid_folds=[5]", "error: data.test_folds: fold(s) [5] are also in data.valid_folds"),
    ("data=esc10 data.root={tmp} data.limit=0", "error: data.limit"),
    ("data=esc50 data.root={tmp} data.clips_per_class={{holdout:2}}", "error: data.clips_per_class"),
    ("noise=white_gen noise.alpha=1.5", "error: noise.alpha"),
    ("noise=white noise.path={files}/no_such.wav", "error: noise.path="),
    ("noise=horse noise.path={files}/notes.txt", "error: {files}/notes.txt: cannot read audio"),
    ("model.checkpoint={files}/no_such.pt", "error: model.checkpoint: no such file"),
    ("model.checkpoint={files}/notes.txt", "error: model.checkpoint: {files}/notes.txt"),
    ("model.width=0", "error: model.width"),
    ("mask.ties=random", "error: mask.ties"),
    ("mask.names=[bin,foo]", "error: mask.names"),
    ("explainer=gradcam explainer.layer=conv_block9", "error: explainer.layer"),
    ("explainer=lmac explainer.layers=[conv_block9]", "error: explainer.layers"),
    ("explainer=lmac explainer.area=2", "error: explainer.area"),
    ("batch_size=0", "error: batch_size: expected a positive integer, got 0"),
    ("eval_batch_size=-3", "error: eval_batch_size"),
    ("n_examples=-1", "error: n_examples: expected an integer >= 0"),
    ("seed=abc", "error: seed: expected an integer >= 0, got 'abc'"),
    ("mask.silence_level=abc", "error: mask.silence_level"),
    ("split=holdout", "error: split: expected one of train, valid, test, got 'holdout'"),
    ("~data.clips_per_class.test", "error: split=test: data=synthetic has no clips in it"),
    ("sanity=maybe", "error: sanity:"),
    ("sanity_clips=0", "error: sanity_clips"),
    ("audio_metrics=3", "error: audio_metrics"),
    ("channels_last=maybe", "error: channels_last: expected true or false, got 'maybe'"),
    ("shard.count=2 shard.index=2", "error: shard.index: expected 0 to 1"),
    ("device=cuda:7", "error: device=cuda:7"),
    ("device=gpu", "error: device=gpu: expected auto, cpu, cuda, cuda:N or mps"),
    ("train.epochs=0", "error: train.epochs: expected a positive integer, got 0"),
    ("train.batch_size=1", "error: train.batch_size: expected an integer >= 2, got 1"),
    ("train.lr=abc", "error: train.lr: expected a positive number, got 'abc'"),
    ("precision=fp16", "error: precision: expected one of fp32, bf16, got 'fp16'"),
    ("train.precision=half", "error: train.precision: expected one of fp32, bf16, got 'half'"),
])
def test_bad_config_values_give_one_line_errors(tmp_path, bad_files, override, expected):
    run_dir = tmp_path / "run"
    started = time.perf_counter()
    result = run_cli(*override.format(tmp=tmp_path, files=bad_files).split(), f"hydra.run.dir={run_dir}")
    seconds = time.perf_counter() - started
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected.format(files=bad_files)), lines
    assert seconds < 60, f"{seconds:.0f} s: the value must be checked before any training"
    assert "epoch 1/" not in result.stdout + result.stderr
    # nothing but Hydra's record of the launch and the log, which has the error too
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "run.log"]
    assert lines[0].removeprefix("error: ") in (run_dir / "run.log").read_text()


def test_oracle_on_data_without_evidence_is_refused_before_training(tmp_path, esc50_root):
    run_dir = tmp_path / "run"
    result = run_cli("data=esc10", f"data.root={esc50_root}", "explainer=oracle", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: explainer=oracle: needs clips with ground-truth evidence (data=synthetic); data=esc10 has none")
    assert "Traceback" not in result.stderr and "epoch 1/" not in result.stderr
    assert not (run_dir / "model.pt").exists() and not (run_dir / "summary.csv").exists()


def test_bad_input_gives_one_line_error(tmp_path):
    result = run_cli("experiment=smoke", f"model.checkpoint={tmp_path / 'nope.pt'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: model.checkpoint") and "nope.pt" in lines[-1]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "summary.csv").exists()


@pytest.mark.parametrize("data,feature,explainer", [("esc10", "mel", "gradcam"), ("esc50", "stft", "saliency"),
                                                    ("esc10", "stft", "lmac_sparse")])
def test_real_clips_with_room_noise_write_the_same_outputs(tmp_path, esc50_root, shared_data, data, feature, explainer):
    """The README's real-data command on the shared ESC-50 copy: same files as the synthetic run.

    The noise cache is seeded with the shared copy of the room tone, so the run goes through the
    same sha256-checked cache a downloaded file would (no network here)."""
    noise_cache = tmp_path / "noises"
    noise_cache.mkdir()
    room = shared_data / "noises" / "203297__mzui__room-tone-office-industrial-ambience-01.wav"
    (noise_cache / room.name).write_bytes(room.read_bytes())
    run_dir = tmp_path / "run"
    result = run_cli(f"data={data}", f"data.root={esc50_root}", "data.limit=2", f"feature={feature}",
                     f"explainer={explainer}", "noise=room", f"noise.cache_dir={noise_cache}", "train.epochs=1",
                     "train.cache=false", "n_examples=1", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    shape = (1, 64, 501) if feature == "mel" else (1, 257, 313)
    rate = 32000 if feature == "mel" else 16000
    for mask_name in MASK_NAMES:
        rows = read_csv(run_dir / "metrics" / f"{mask_name}.csv")
        assert len(rows) == 2
        assert all((esc50_root / "audio" / f"{row['clip_id']}.flac").is_file() for row in rows), rows
        for row in rows:
            for metric in RANGES:
                assert_in_range(metric, float(row[metric]), (mask_name,), n_bins=shape[1] * shape[2])
    summary = read_csv(run_dir / "summary.csv")
    assert len(summary) == len(MASK_NAMES)
    # no ground truth on real clips: the localisation scores are absent, not zero
    assert not (run_dir / "localization.csv").exists()
    assert not {"iou", "auroc", "relevance_mass"} & set(summary[0]) and "iou" not in rows[0]
    with np.load(run_dir / "attributions.npz") as saved:
        assert saved["attributions"].shape == (2, *shape)
    report = json.loads((run_dir / "run.json").read_text())
    assert report["n_clips"] == 2 and report["best_epoch"] >= 1 and report["localization"] is None
    assert "noise=room" in result.stdout
    (example,) = [p for p in (run_dir / "examples").iterdir() if p.is_dir()]
    audio, audio_rate = sf.read(example / "original.wav")
    assert audio_rate == rate and audio.shape == (5 * rate,)
    assert (example / "topK_30.png").is_file() and (example / "topK_30_masked.wav").is_file()


@pytest.fixture
def tiny_filesystem(tmp_path):
    """Mounts a tmpfs (needs root and mount rights, as on CI): ``make(size, read_only)`` -> its folder."""
    mounts = []

    def make(size: str, read_only: bool = False) -> Path:
        folder = tmp_path / f"mount{len(mounts)}"
        folder.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here (not root, or no mount rights)")
        mounts.append(folder)
        return folder

    yield make
    for folder in mounts:
        subprocess.run(["umount", str(folder)], check=False)


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_no_temporary(tiny_filesystem):
    folder = tiny_filesystem("400k")  # room for .hydra/ and run.log, not for the 1.2 MB model.pt
    result = run_cli("experiment=smoke", f"hydra.run.dir={folder / 'run'}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == f"error: cannot write {folder / 'run' / 'model.pt'}: no space left on device"
    assert "Traceback" not in result.stderr and "Logging error" not in result.stderr
    # no temporary file, no half-written model; the run folder's (empty) lock file stays
    assert sorted(p.name for p in (folder / "run").iterdir()) == [".hydra", ".run.lock", "run.log"]


def test_a_read_only_output_folder_is_refused_before_anything_runs(tiny_filesystem):
    folder = tiny_filesystem("100k", read_only=True)
    result = run_cli("experiment=smoke", f"hydra.run.dir={folder / 'run'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: cannot write {folder / 'run'}: read-only file system"]
