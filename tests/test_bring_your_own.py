"""Your classifier and your audio through the real CLI: a folder of real ESC-10 clips at two rates and
lengths, a user's nn.Module class given by ``_target_`` (trained by the runner), the same network as a
TorchScript file, and a scripted classifier of raw audio."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from audiointerp.masks import MASK_NAMES

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
FAITHFULNESS = ("FF", "AI", "AD", "AG", "FidIn")


def run_cli(*overrides: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "audiointerp.run", *overrides], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=900, env=environment)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def assert_complete(run_dir: Path, result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "run.json").is_file(), result.stdout[-2000:]
    for mask in MASK_NAMES:
        rows = read_csv(run_dir / "metrics" / f"{mask}.csv")
        assert rows, mask
        for row in rows:
            for metric in (*FAITHFULNESS, "SPS", "COMP"):
                assert np.isfinite(float(row[metric])), (run_dir.name, mask, metric, row[metric])


@pytest.fixture(scope="module")
def setup(tmp_path_factory, esc10_folder):
    """The clip folder, a model cache, and the common overrides of a user's class on it (STFT, 16 kHz)."""
    root = tmp_path_factory.mktemp("byo")
    clips = esc10_folder(root / "clips", classes=3, per_class=8)
    common = ("data=folder", f"data.root={clips}", "feature=stft", "n_examples=1", "train.epochs=4",
              f"train.cache_dir={root / 'cache'}")
    return root, common


@pytest.fixture(scope="module")
def module_runs(setup):
    """One run per explainer of ``user_models.SmallCnn`` built from ``_target_`` and trained by the runner
    (once: the others reuse it from the cache); saliency also runs the sanity checks."""
    root, common = setup
    user_class = ("model=module", "model._target_=user_models.SmallCnn", "+model.channels=6")
    runs = {}
    for explainer, extra in (("saliency", ("sanity=true", "sanity_clips=2")), ("gradcam", ()),
                             ("lime", ("explainer.num_samples=40",)), ("shap", ("explainer.per_class=1",)),
                             ("lmac", ("explainer.epochs=2",))):
        run_dir = root / f"module_{explainer}"
        result = run_cli(*common, *user_class, f"explainer={explainer}", *extra, f"hydra.run.dir={run_dir}")
        assert_complete(run_dir, result)
        runs[explainer] = (run_dir, result)
    return runs


def test_a_users_class_trained_by_the_runner_runs_every_explainer_on_a_folder(module_runs):
    trained = [json_of(run_dir)["model_sha256"] for run_dir, _ in module_runs.values()]
    assert len(set(trained)) == 1, "the model is trained once and reused from the cache"
    sources = [json_of(run_dir, "provenance.json")["model_source"] for run_dir, _ in module_runs.values()]
    assert sources[0] == "trained" and set(sources[1:]) == {"cache"}
    run = json_of(module_runs["saliency"][0])
    assert run["class_names"] == ["dog", "rain", "rooster"] and run["clean_accuracy"] is not None
    # Grad-CAM's layer and L-MAC's layers came from the network itself (its last conv; its grids)
    gradcam = np.load(module_runs["gradcam"][0] / "attributions.npz")["attributions"]
    assert gradcam.shape[1:] == (1, 257, 313) and np.isfinite(gradcam).all() and gradcam.std() > 0


def test_sanity_checks_randomise_a_users_class_layer_by_layer(module_runs):
    run_dir, result = module_runs["saliency"]
    steps = [row["step"] for row in read_csv(run_dir / "sanity.csv")]
    # the network's weight layers from the output back (SmallCnn: head, then its three convolutions)
    assert list(dict.fromkeys(steps)) == ["head", "features.8", "features.4", "features.0", "random_logit"]
    assert "sanity (Saliency): Spearman of |A|" in result.stdout


def json_of(run_dir: Path, name: str = "run.json") -> dict:
    import json

    return json.loads((run_dir / name).read_text())


@pytest.fixture(scope="module")
def torchscript_file(setup, module_runs):
    """The trained SmallCnn of the module runs, scripted and saved as a user would."""
    from user_models import SmallCnn

    root, _ = setup
    network = SmallCnn(n_classes=3, channels=6)
    saved = torch.load(module_runs["saliency"][0] / "model.pt", weights_only=True)
    network.load_state_dict(saved["state_dict"])  # a run's model.pt holds the user's own state dict
    path = root / "small_cnn.ts"
    torch.jit.save(torch.jit.script(network.eval()), str(path))
    return path


@pytest.mark.parametrize("explainer,extra", [("saliency", ()), ("gradcam", ()), ("lime", ("explainer.num_samples=40",)),
                                             ("shap_gradient", ("explainer.per_class=1", "explainer.n_samples=20")),
                                             ("lmac", ("explainer.epochs=2",))])
def test_the_same_network_from_a_torchscript_file_explains_as_its_class(setup, module_runs, torchscript_file,
                                                                        explainer, extra):
    root, common = setup
    run_dir = root / f"torchscript_{explainer}"
    result = run_cli(*common, "model=torchscript", f"model.path={torchscript_file}", f"explainer={explainer}", *extra,
                     f"hydra.run.dir={run_dir}")
    assert_complete(run_dir, result)
    assert json_of(run_dir, "provenance.json")["model_source"] == "file"
    if explainer in module_runs:  # the same weights, the same clips: the same maps and scores
        script = np.load(run_dir / "attributions.npz")
        eager = np.load(module_runs[explainer][0] / "attributions.npz")
        np.testing.assert_allclose(script["probabilities"], eager["probabilities"], rtol=1e-4, atol=1e-6)
        if explainer != "lmac":  # (a decoder trained on either is another decoder: its own random draws)
            np.testing.assert_allclose(script["attributions"], eager["attributions"], rtol=1e-3,
                                       atol=1e-5 * np.abs(eager["attributions"]).max())


def test_deepshap_on_a_torchscript_file_is_one_line_naming_what_to_use(setup, torchscript_file):
    root, common = setup
    result = run_cli(*common, "model=torchscript", f"model.path={torchscript_file}", "explainer=shap",
                     f"hydra.run.dir={root / 'torchscript_shap'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: explainer=shap:")
    assert "explainer=shap_gradient" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def waveform_file(setup):
    """``user_models.WaveCnn`` trained briefly on the folder's training clips (raw 16 kHz audio), scripted."""
    from user_models import WaveCnn

    from audiointerp.data.folder import AudioFolder

    root, common = setup
    clips_root = next(o.split("=", 1)[1] for o in common if o.startswith("data.root="))
    train = AudioFolder(root=clips_root, sample_rate=16000, seed=0).load_split("train")
    torch.manual_seed(0)
    network = WaveCnn(n_classes=3)
    optimiser = torch.optim.Adam(network.parameters(), lr=3e-3)
    for _ in range(15):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(network(train.waveforms), train.labels)
        loss.backward()
        optimiser.step()
    path = root / "wave_cnn.ts"
    torch.jit.save(torch.jit.script(network.eval()), str(path))
    return path


@pytest.mark.parametrize("explainer,extra", [("saliency", ()), ("integrated_gradients", ("explainer.n_steps=8",)),
                                             ("lime", ("explainer.num_samples=30",)),
                                             ("occlusion", ("explainer.patch=[64,80]", "explainer.stride=[64,80]"))])
def test_a_scripted_classifier_of_audio_is_explained_through_the_inverse_and_heard_alike(setup, waveform_file,
                                                                                         explainer, extra):
    root, common = setup
    run_dir = root / f"waveform_{explainer}"
    result = run_cli(*common, "model=torchscript", f"model.path={waveform_file}", "model.input=waveform",
                     "model.sample_rate=16000", "audio_metrics=true", "n_examples=0", f"explainer={explainer}", *extra,
                     f"hydra.run.dir={run_dir}")
    assert_complete(run_dir, result)
    # the STFT inverts exactly, and the network hears that audio either way: the scores agree
    for mask in MASK_NAMES:
        for row in read_csv(run_dir / "metrics" / f"{mask}.csv"):
            for metric in FAITHFULNESS:
                scale = 100.0 if metric in ("AI", "AD", "AG") else 1.0
                assert abs(float(row[f"{metric}_audio"]) - float(row[metric])) / scale < 2e-4, (mask, metric, row)


def test_a_classifier_of_audio_refuses_what_needs_other_clips_phase(setup, waveform_file):
    root, common = setup
    result = run_cli(*common, "model=torchscript", f"model.path={waveform_file}", "model.input=waveform",
                     "explainer=shap", f"hydra.run.dir={root / 'waveform_shap'}")
    assert result.returncode == 2 and "phase" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr
