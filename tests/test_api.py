"""The Python API (audiointerp.api): the README's example as written, explain() on a classifier that is
not Cnn14 for every cheap explainer, explicit targets, the audio/plot/save of an Explanation,
evaluate()'s tables, one-line errors, and importing the package leaving global state alone.

Real clips (the shared ESC-50 samples), a model.pt written by a real smoke run, a real small CNN."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.io import wavfile
from torch import nn

import audiointerp
from audiointerp.data.audio import load_audio
from audiointerp.errors import AudioInterpError
from audiointerp.masks import MASK_NAMES
from audiointerp.metrics import METRIC_NAMES
from audiointerp.outputs import RUN_COLUMNS, SCORE_COLUMNS, SUMMARY_COLUMNS

REPO_ROOT = Path(__file__).resolve().parents[1]
N_CLASSES = 5
COLUMNS = [*METRIC_NAMES, "kept", "degenerate"]
#: For tests about the attribution: two masks (explain() inverts every mask's audio for every clip).
FEW_MASKS = ["device=cpu", "mask.names=[bin,topK_30]"]


def small_cnn(seed: int = 0) -> nn.Module:
    """Not Cnn14: Conv2d-ReLU-Conv2d-ReLU-global pool-Linear on (B, 1, F, T) dB, random weights, eval."""
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(1, 8, 3, padding=1), relu1=nn.ReLU(), conv2=nn.Conv2d(8, 8, 3, padding=1), relu2=nn.ReLU(),
        pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), head=nn.Linear(8, N_CLASSES))).eval()


@pytest.fixture(scope="module")
def smoke_model(tmp_path_factory) -> Path:
    """model.pt of a real smoke run (tiny Cnn14, log-mel, trained two epochs on the synthetic clips)."""
    run_dir = tmp_path_factory.mktemp("api_smoke")
    result = subprocess.run([sys.executable, "-m", "audiointerp.run", "experiment=smoke", "explainer=random",
                             "n_examples=0", "device=cpu", f"hydra.run.dir={run_dir}"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir / "model.pt"


@pytest.fixture(scope="module")
def explained(sample_wavs) -> audiointerp.Explanation:
    """One clip explained by saliency on the small CNN (shared by the audio/plot/save tests)."""
    return audiointerp.explain(sample_wavs[0], small_cnn(), explainer="saliency", overrides=["device=cpu"])


def readme_example() -> str:
    """The python block under the README's "## Python API" heading."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "expected one python block in the README's Python API section"
    return blocks[0]


def test_readme_example_runs_as_written(smoke_model, sample_wavs, tmp_path, monkeypatch):
    code = readme_example()
    # the two file names are the only change: a real clip and the model.pt a real run wrote
    for placeholder in ('"dog.wav"', '"outputs/runs/<run>/model.pt"'):
        assert code.count(placeholder) == 1, placeholder
    code = code.replace('"dog.wav"', repr(str(sample_wavs[1]))).replace('"outputs/runs/<run>/model.pt"',
                                                                        repr(str(smoke_model)))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert list(result.metrics.index) == list(MASK_NAMES)
    assert list(result.metrics.columns) == COLUMNS
    assert np.isfinite(result.metrics.to_numpy(dtype=float)).all()
    assert result.explainer == "gradcam" and result.attribution.shape == (1, 64, 501)
    assert (tmp_path / "gradcam.png").stat().st_size > 10_000
    clip_folder = tmp_path / "explained" / "examples" / sample_wavs[1].stem
    assert (clip_folder / "original.wav").is_file() and (clip_folder / "minmax.png").is_file()


@pytest.mark.parametrize("explainer, overrides", [
    ("saliency", []),
    ("gradcam", []),  # the classifier's own choice of layer: the small CNN's last Conv2d
    ("integrated_gradients", ["explainer.n_steps=8"]),
    ("lime", ["explainer.num_samples=40"]),
    ("occlusion", []),
    ("random", []),
])
def test_explain_any_module_gives_14_masks_and_finite_metrics(sample_wavs, explainer, overrides):
    result = audiointerp.explain(sample_wavs[2], small_cnn(), explainer=explainer, overrides=["device=cpu", *overrides])
    assert list(result.masks) == list(MASK_NAMES)
    assert all(mask.shape == (1, 64, 501) for mask in result.masks.values())
    assert result.attribution.shape == (1, 64, 501) and torch.isfinite(result.attribution).all()
    assert float(result.attribution.abs().max()) > 0, "an all-zero attribution explains nothing"
    assert list(result.metrics.index) == list(MASK_NAMES) and list(result.metrics.columns) == COLUMNS
    assert np.isfinite(result.metrics.to_numpy(dtype=float)).all()


def test_explain_a_classifier_of_raw_audio_through_the_stft(sample_wavs):
    """A waveform network, wrapped by as_classifier, is explained on the STFT's grid; what it scores for
    the unmasked spectrogram is the clip itself (the inverse is exact)."""
    from user_models import WaveCnn

    torch.manual_seed(0)
    network = WaveCnn(n_classes=3).eval()
    classifier = audiointerp.as_classifier(network, feature=audiointerp.LogStft(), input_kind="waveform")
    clip = load_audio(sample_wavs[2], 16000, 5.0, True)
    result = audiointerp.explain(clip, classifier, explainer="saliency", feature="stft", overrides=FEW_MASKS)
    assert result.attribution.shape == (1, 257, 313) and torch.isfinite(result.attribution).all()
    assert np.isfinite(result.metrics.to_numpy(dtype=float)).all()
    with torch.no_grad():
        expected = int(network(clip[None]).argmax())
    assert int(result.predicted[0]) == expected


def test_explainer_overrides_reach_the_explainer(sample_wavs):
    """Grad-CAM on conv1 and on conv2 (the automatic choice) are different maps."""
    clip = load_audio(sample_wavs[2], 32000, None, False)
    automatic = audiointerp.explain(clip, small_cnn(), explainer="gradcam", overrides=FEW_MASKS)
    first = audiointerp.explain(clip, small_cnn(), explainer="gradcam", overrides=[*FEW_MASKS, "explainer.layer=conv1"])
    named = audiointerp.explain(clip, small_cnn(), explainer="gradcam", overrides=[*FEW_MASKS, "explainer.layer=conv2"])
    torch.testing.assert_close(automatic.attribution, named.attribution)
    assert not torch.allclose(automatic.attribution, first.attribution)


def test_an_explicit_target_changes_the_attribution(sample_wavs):
    clip = load_audio(sample_wavs[3], 32000, None, False)
    model = small_cnn()
    predicted = audiointerp.explain(clip, model, overrides=FEW_MASKS)
    other = (int(predicted.predicted[0]) + 1) % N_CLASSES
    targeted = audiointerp.explain(clip, model, target=other, overrides=FEW_MASKS)
    assert int(predicted.target[0]) == int(predicted.predicted[0])
    assert int(targeted.target[0]) == other and int(targeted.predicted[0]) == int(predicted.predicted[0])
    assert not torch.allclose(predicted.attribution, targeted.attribution)
    # the same as asking for the predicted class by number
    again = audiointerp.explain(clip, model, target=int(predicted.predicted[0]), overrides=FEW_MASKS)
    torch.testing.assert_close(again.attribution, predicted.attribution)
    # one target per clip
    both = audiointerp.explain(torch.stack([clip, clip]), model, target=[other, int(predicted.predicted[0])],
                               overrides=FEW_MASKS)
    assert both.attribution.shape == (2, 1, 64, 501)
    torch.testing.assert_close(both.attribution[0], targeted.attribution, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(both.attribution[1], predicted.attribution, rtol=1e-4, atol=1e-6)
    with pytest.raises(AudioInterpError, match=rf"^target: the model has {N_CLASSES} classes"):
        audiointerp.explain(clip, model, target=N_CLASSES, overrides=FEW_MASKS)


def test_audio_of_the_masks_has_the_clips_length_and_differs(explained, sample_wavs):
    length = len(load_audio(sample_wavs[0], 32000, None, False))
    masked, unmasked = explained.audio("topK_30"), explained.audio("topK_30", "unmasked")
    assert masked.shape == unmasked.shape == (length,)
    assert torch.isfinite(masked).all() and torch.isfinite(unmasked).all()
    assert float((masked - unmasked).abs().max()) > 1e-3
    # the two parts of the spectrogram add back up to the clip's energy, roughly: neither is silent
    assert float(masked.pow(2).sum()) > 0 and float(unmasked.pow(2).sum()) > 0
    torch.testing.assert_close(explained.audio("original"), load_audio(sample_wavs[0], 32000, None, False))
    with pytest.raises(AudioInterpError, match="^which: expected masked or unmasked"):
        explained.audio("bin", "both")
    with pytest.raises(AudioInterpError, match="^mask: expected one of minmax"):
        explained.audio("top5")


def test_plot_is_a_figure_of_input_attribution_and_masked_input(explained):
    from matplotlib.figure import Figure

    figure = explained.plot("bin")
    assert isinstance(figure, Figure)
    titles = [axis.get_title() for axis in figure.axes if axis.get_title()]
    assert titles == ["input (dB)", "attribution (saliency)", "masked input, bin (dB)"]
    shown = figure.axes[1].images[0].get_array()
    np.testing.assert_allclose(shown, explained.attribution[0].numpy())


def test_plot_labels_the_features_unit_not_always_db(sample_wavs):
    """feature=ast_fbank is AST's normalised log energy: a colour bar labelled dB would misread it."""
    explained = audiointerp.explain(sample_wavs[0], small_cnn(), explainer="saliency", feature="ast_fbank",
                                    overrides=["device=cpu"])
    titles = [axis.get_title() for axis in explained.plot("bin").axes if axis.get_title()]
    assert titles == ["input (AST-normalised log energy)", "attribution (saliency)",
                      "masked input, bin (AST-normalised log energy)"]


def test_save_writes_what_a_run_writes_per_example(explained, sample_wavs, tmp_path):
    folder = explained.save(tmp_path / "out")
    clip = folder / "examples" / sample_wavs[0].stem
    wavs = sorted(p.name for p in clip.glob("*.wav"))
    assert wavs == sorted(["original.wav", *(f"{m}_{w}.wav" for m in MASK_NAMES for w in ("masked", "unmasked"))])
    assert sorted(p.stem for p in clip.glob("*.png")) == sorted(MASK_NAMES)
    rate, samples = wavfile.read(clip / "bin_unmasked.wav")
    assert rate == 32000
    np.testing.assert_allclose(samples, explained.audio("bin", "unmasked").numpy())
    table = pd.read_csv(folder / "metrics.csv")
    assert len(table) == len(MASK_NAMES)
    np.testing.assert_allclose(table.set_index("mask").loc[list(MASK_NAMES), "FF"], explained.metrics["FF"], rtol=1e-6)


def test_evaluate_tables_are_a_runs_and_the_summary_is_the_mean(sample_wavs):
    model, labels = small_cnn(), [0, 1, 2]
    per_clip, summary = audiointerp.evaluate(sample_wavs[:3], model, explainer="saliency", labels=labels,
                                             overrides=["device=cpu"], batch_size=2)
    assert list(per_clip.columns) == ["mask", "sample", "clip_id", "label", "predicted", "is_correct",
                                      *[c for c in SCORE_COLUMNS if c in per_clip.columns]]
    assert set(per_clip.columns) >= {*METRIC_NAMES, "kept", "degenerate", "predicted_masked", "predicted_unmasked"}
    assert list(summary.columns) == [*RUN_COLUMNS, "mask", *[c for c in SUMMARY_COLUMNS[1:] if c in summary.columns]]
    assert set(summary.columns) >= {*METRIC_NAMES, "kept", "degenerate", "collapse_masked", "collapse_unmasked"}
    assert list(summary["mask"]) == list(MASK_NAMES) and len(per_clip) == 3 * len(MASK_NAMES)
    assert (per_clip["is_correct"] == (per_clip["label"] == per_clip["predicted"]).astype(int)).all()
    assert list(per_clip.groupby("mask", sort=False)["clip_id"].apply(list).iloc[0]) == [p.stem for p in sample_wavs[:3]]
    means = per_clip.groupby("mask")[[*METRIC_NAMES, "kept", "degenerate"]].mean()
    for metric in [*METRIC_NAMES, "kept", "degenerate"]:
        np.testing.assert_allclose(summary.set_index("mask")[metric], means.loc[list(MASK_NAMES), metric],
                                   rtol=1e-6, atol=1e-9, err_msg=metric)
    # explain() of the same clips has the same per-clip metrics: one pipeline behind both
    one = audiointerp.explain(sample_wavs[1], model, overrides=FEW_MASKS)
    rows = per_clip[per_clip["clip_id"] == sample_wavs[1].stem].set_index("mask")
    assert list(one.metrics.index) == ["bin", "topK_30"]
    np.testing.assert_allclose(rows.loc[["bin", "topK_30"], "FF"], one.metrics["FF"], rtol=1e-5, atol=1e-6)


def test_evaluate_on_a_waveform_tensor_matches_the_files(sample_wavs):
    waveforms = torch.stack([load_audio(p, 32000, None, False) for p in sample_wavs[:2]])
    from_files, _ = audiointerp.evaluate(sample_wavs[:2], small_cnn(), explainer="random", overrides=FEW_MASKS)
    from_tensor, summary = audiointerp.evaluate(waveforms, small_cnn(), explainer="random", overrides=FEW_MASKS)
    assert list(from_tensor["clip_id"].unique()) == ["clip0", "clip1"]
    assert from_tensor["label"].isna().all() and from_tensor["is_correct"].isna().all()
    np.testing.assert_allclose(from_tensor[list(METRIC_NAMES)].to_numpy(), from_files[list(METRIC_NAMES)].to_numpy())
    assert summary["explainer"].eq("random").all() and summary["feature"].eq("mel").all()


def test_get_explainer_by_name_without_hydra():
    from hydra.core.global_hydra import GlobalHydra

    lime = audiointerp.get_explainer("lime", num_samples=7)
    assert type(lime).__name__ == "Lime" and lime.num_samples == 7 and lime.random_state == 0  # ${seed}
    assert audiointerp.get_explainer("integrated_gradients").silence_level == -100.0  # ${mask.silence_level}
    assert not GlobalHydra.instance().is_initialized()
    with pytest.raises(AudioInterpError, match="^get_explainer\\('lime'\\): no option samples"):
        audiointerp.get_explainer("lime", samples=7)
    with pytest.raises(AudioInterpError, match="^explainer: expected one of .*saliency"):
        audiointerp.get_explainer("grad-cam")


def test_building_blocks_compose_by_hand(sample_wavs):
    """The top-level blocks make what explain() makes: the same masks and metrics for a saliency map."""
    feature = audiointerp.LogMel()
    model = small_cnn()
    log_db = feature(load_audio(sample_wavs[4], 32000, None, False)[None]).log_db
    p = torch.softmax(model(log_db), dim=1)
    attribution = audiointerp.get_explainer("saliency").attribute(model, log_db, p.argmax(dim=1))
    masks = audiointerp.make_masks(attribution, ["bin"])
    masked, unmasked = audiointerp.apply_mask(log_db, masks["bin"], -100.0)
    with torch.no_grad():
        scores = audiointerp.score(p, torch.softmax(model(masked), 1), torch.softmax(model(unmasked), 1), masks["bin"])
    result = audiointerp.explain(sample_wavs[4], model, overrides=FEW_MASKS)
    torch.testing.assert_close(result.masks["bin"], masks["bin"][0])
    for metric in METRIC_NAMES:
        assert result.metrics.loc["bin", metric] == pytest.approx(float(scores[metric][0]), rel=1e-4, abs=1e-5), metric
    assert audiointerp.LogStft().n_bins == 257


@pytest.mark.parametrize("call, message", [
    (lambda w, m: audiointerp.explain(w.parent / "missing.wav", m), r"^audio: no such file .*missing\.wav$"),
    (lambda w, m: audiointerp.explain(42, m), r"^audio: expected a WAV/FLAC path"),
    (lambda w, m: audiointerp.explain(torch.zeros(2, 3, 100), m), r"^audio: expected a float waveform tensor"),
    (lambda w, m: audiointerp.explain(w, "no/such/model.pt"), r"^model: no such file no/such/model\.pt"),
    (lambda w, m: audiointerp.explain(w, 3.0), r"^model: expected an nn.Module"),
    (lambda w, m: audiointerp.explain(w, m, explainer="gradcamm"), r"^explainer: expected one of .*gradcam"),
    (lambda w, m: audiointerp.explain(w, m, feature="cqt"), r"^feature: expected one of ast_fbank, mel, stft, got .cqt.$"),
    (lambda w, m: audiointerp.explain(w, m, overrides=["mask=every"]), r"^overrides: .*mask/every.*expected mask= one of all"),
    (lambda w, m: audiointerp.explain(w, m, overrides=["explainer.stepz=3"]), r"^overrides: .*stepz"),
    (lambda w, m: audiointerp.explain(w, m, target="dog"), r"^target: expected a class index"),
    (lambda w, m: audiointerp.explain(w, m, explainer="shap"), r"^explainer=shap: learns from training clips"),
    (lambda w, m: audiointerp.explain(w, m, explainer="oracle"), r"^explainer=oracle: reads each clip's ground-truth"),
    (lambda w, m: audiointerp.evaluate([w, w], m, labels=[1]), r"^labels: expected one per clip \(2\), got 1$"),
    (lambda w, m: audiointerp.evaluate([w], m, batch_size=0), r"^batch_size: expected a positive integer, got 0$"),
])
def test_bad_arguments_are_one_line_before_any_work(sample_wavs, call, message):
    with pytest.raises(AudioInterpError, match=message) as error:
        call(sample_wavs[0], small_cnn())
    assert "\n" not in str(error.value)


def test_a_model_pt_of_another_feature_is_refused_naming_it(smoke_model, sample_wavs):
    with pytest.raises(AudioInterpError, match=r"^feature: .*model\.pt was trained on other feature settings: "
                                               r"_target_='audiointerp.features.LogMel'"):
        audiointerp.explain(sample_wavs[0], smoke_model, feature="stft")


GLOBAL_STATE = r"""
import json, os, sys
import matplotlib, torch

def state():
    tiny = torch.tensor([1e-42], dtype=torch.float32)  # subnormal: flushed to 0 when flush-denormal is on
    status = open("/proc/self/status").read()
    return {"backend": dict.__getitem__(matplotlib.rcParams, "backend").__class__.__name__
                       + ":" + str(dict.__getitem__(matplotlib.rcParams, "backend")),
            "umask": [l.split()[1] for l in status.splitlines() if l.startswith("Umask:")][0],
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "rng": torch.random.get_rng_state().sum().item(),
            "flush_denormal": float(tiny * 1.0) == 0.0}

os.umask(0o027)
torch.manual_seed(1234)
noise = torch.randn(32000) * 0.1
model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                            torch.nn.Linear(2, 3))
before = state()
import audiointerp
after_import = state()
from hydra.core.global_hydra import GlobalHydra
result = audiointerp.explain(noise, model, overrides=["mask.names=[bin]", "device=cpu"])
result.plot("bin")
result.save(sys.argv[1])
after_use = state()
print(json.dumps({"before": before, "after_import": after_import, "after_use": after_use,
                  "hydra": GlobalHydra.instance().is_initialized()}))
"""


def test_importing_and_using_the_package_changes_no_global_state(tmp_path):
    result = subprocess.run([sys.executable, "-c", GLOBAL_STATE, str(tmp_path / "saved")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    states = json.loads(result.stdout.strip().splitlines()[-1])
    assert states["before"]["umask"] == "0027" and not states["before"]["flush_denormal"]
    assert states["after_import"] == states["before"], states
    assert states["after_use"] == states["before"], states
    assert not states["hydra"], "GlobalHydra left initialised"
    assert (tmp_path / "saved" / "examples" / "clip0" / "bin.png").is_file()
    assert oct((tmp_path / "saved" / "examples" / "clip0" / "bin.png").stat().st_mode & 0o777) == oct(0o640)
