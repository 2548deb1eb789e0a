"""model=ast: the Audio Spectrogram Transformer of transformers, a real tiny one on real clips.

Grad-CAM on tokens against a hand computation, a checkpoint saved locally in the hub's layout
(and in the published one's key names) loaded with identical outputs, the sanity cascade from the
head down and restored bit for bit, every explainer's shape, bf16, channels-last, DeepSHAP's refusal,
and the CPU smoke preset end to end. Skipped, saying why, without the hf extra; under CI it must be
installed."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from scipy.io import wavfile

from audiointerp.data.audio import load_audio
from audiointerp.errors import AudioInterpError
from audiointerp.explainers.captum_methods import IntegratedGradients, Occlusion
from audiointerp.explainers.gradcam import GradCam
from audiointerp.explainers.lime import Lime
from audiointerp.explainers.lmac import Lmac
from audiointerp.explainers.oracle import Oracle
from audiointerp.explainers.random import RandomAttribution
from audiointerp.explainers.saliency import Saliency
from audiointerp.explainers.shap import DeepShap, GradientShap
from audiointerp.features import LogMel
from audiointerp.models import AST, build_model, channels_last
from audiointerp.sanity import randomisation_checks, randomise, restored

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKENS = "audio_spectrogram_transformer.layers"
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None


@pytest.fixture(autouse=True)
def transformers_installed(request):
    """Every test but the one about its absence needs the hf extra: skipped, saying why, without it;
    under CI, which installs it, failed."""
    if HAS_TRANSFORMERS or "without_transformers" in request.node.name:
        return
    message = 'model=ast needs the hf extra (pip install -e ".[hf]"), which is not installed'
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI installs it)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def spectrograms(sample_wavs):
    """Four real clips as the default log-mel: (4, 1, 64, 501) dB."""
    clips = torch.stack([load_audio(path, 32000, 5.0, peak_normalise=True) for path in sample_wavs[:4]])
    return LogMel()(clips).log_db


def configured(**overrides):
    """conf/model/ast.yaml for 5 s clips, with ``overrides``."""
    return OmegaConf.merge(OmegaConf.load(REPO_ROOT / "conf" / "model" / "ast.yaml"), {"duration_s": 5.0, **overrides})


def tiny_ast(n_classes: int = 3, seed: int = 0, **options) -> AST:
    """A two-layer AST on the default log-mel, its weights drawn from ``seed`` (position embeddings,
    CLS tokens and biases too, which transformers starts at zero), in eval mode."""
    torch.manual_seed(seed)
    model = AST(feature=LogMel(), duration_s=5.0, n_classes=n_classes, **options)
    with torch.no_grad():
        embeddings = model.network.audio_spectrogram_transformer.embeddings
        for parameter in (embeddings.position_embeddings, embeddings.cls_token, embeddings.distillation_token):
            parameter.normal_(0, 0.5)
        for name, parameter in model.network.named_parameters():
            if name.endswith("bias"):  # as after training: not the zeros transformers starts from
                parameter.normal_(0, 0.1)
        if model.input_norm == "bins":
            model.bn0.running_mean.fill_(-40.0)
            model.bn0.running_var.fill_(400.0)
    return model.eval()


def test_the_configured_ast_reads_the_features_shape(spectrograms):
    model = build_model(configured(), feature=LogMel(), n_classes=8)
    config = model.network.config
    assert (config.num_mel_bins, config.max_length, config.num_labels) == (64, 501, 8)
    assert model.grid == (7, 31)  # (64 - 16) // 8 + 1 patch rows, (501 - 16) // 16 + 1 columns
    assert model(spectrograms).shape == (4, 8)
    assert model.gradcam_layer() == f"{TOKENS}.1.layernorm_before"
    assert model.listened_layers() == ["audio_spectrogram_transformer.embeddings", f"{TOKENS}.0", f"{TOKENS}.1"]


def test_gradcam_on_tokens_is_the_hand_computation_on_the_patch_grid(spectrograms):
    model = tiny_ast()
    target = torch.tensor([0, 1, 2, 0])
    attribution = GradCam().attribute(model, spectrograms, target)
    assert attribution.shape == spectrograms.shape

    # by hand: the tokens the last layer's attention reads, and their gradient
    captured = {}
    layer = model.network.audio_spectrogram_transformer.layers[1].layernorm_before
    handle = layer.register_forward_hook(lambda module, args, output: captured.setdefault("tokens", output))
    try:
        logits = model(spectrograms)
    finally:
        handle.remove()
    tokens = captured["tokens"]  # (B, 2 + f·t, D)
    (gradient,) = torch.autograd.grad(logits[torch.arange(4), target].sum(), tokens)
    f, t = model.grid
    assert tokens.shape[1] == 2 + f * t
    activation = torch.zeros(4, tokens.shape[2], f, t)
    weight_grid = torch.zeros(4, tokens.shape[2], f, t)
    for k in range(f * t):  # patch k sits at frequency row k // t, time column k % t
        activation[:, :, k // t, k % t] = tokens[:, 2 + k].detach()
        weight_grid[:, :, k // t, k % t] = gradient[:, 2 + k]
    weights = weight_grid.mean(dim=(2, 3), keepdim=True)
    cam = (weights * activation).sum(dim=1, keepdim=True)
    expected = F.interpolate(cam, size=(64, 501), mode="bilinear", align_corners=False)
    torch.testing.assert_close(attribution, expected, rtol=1e-5, atol=1e-7)
    assert attribution.abs().amax() > 0

    # the last layer's own output reaches the logits through the CLS tokens only: its patch tokens
    # have no gradient, and a Grad-CAM there is zero (why the default is the layer's input)
    assert GradCam(layer=f"{TOKENS}.1").attribute(model, spectrograms, target).abs().amax() == 0
    # any layer's tokens work; a module without a grid is one line
    assert GradCam(layer=f"{TOKENS}.0").attribute(model, spectrograms, target).abs().amax() > 0
    with pytest.raises(AudioInterpError, match=r"explainer.layer=classifier.dense: its output has shape \(4, 3\)"):
        GradCam(layer="classifier.dense").attribute(model, spectrograms, target)


def test_the_patch_grid_keeps_the_time_patches_of_the_input_not_the_padding(spectrograms):
    model = tiny_ast(max_length=600)  # 501 frames padded to 600: 37 time patches, 32 start within the clip
    assert model.grid == (7, 37)
    tokens = torch.arange(2 * (2 + 7 * 37) * 5, dtype=torch.float32).reshape(2, 2 + 7 * 37, 5)
    grid = model.as_map("any", tokens, spectrograms[:2])
    assert grid.shape == (2, 5, 7, 32)
    torch.testing.assert_close(grid[:, :, 3, 4], tokens[:, 2 + 3 * 37 + 4])
    assert GradCam().attribute(model, spectrograms, torch.zeros(4, dtype=torch.long)).shape == spectrograms.shape


def save_hub_checkpoint(model: AST, folder: Path, published_names: bool = False) -> Path:
    """``model``'s network as a hub checkpoint (config.json, model.safetensors); with
    ``published_names`` its tensors carry the key names of the published AST checkpoints
    (transformers 4's ``encoder.layer.<i>.attention.attention.query``...)."""
    model.network.save_pretrained(folder)
    if published_names:
        from safetensors.torch import load_file, save_file

        renames = [("audio_spectrogram_transformer.layers.", "audio_spectrogram_transformer.encoder.layer."),
                   ("attention.q_proj", "attention.attention.query"), ("attention.k_proj", "attention.attention.key"),
                   ("attention.v_proj", "attention.attention.value"), ("attention.o_proj", "attention.output.dense"),
                   ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense")]
        tensors = load_file(folder / "model.safetensors")
        renamed = {}
        for key, value in tensors.items():
            for old, new in renames:
                key = key.replace(old, new)
            renamed[key] = value
        assert any(".encoder.layer.0.attention.attention.query.weight" in key for key in renamed)
        save_file(renamed, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("published_names", [False, True])
def test_a_local_checkpoint_in_the_hubs_layout_loads_with_identical_outputs(spectrograms, tmp_path, published_names):
    original = tiny_ast(input_norm="none")
    folder = save_hub_checkpoint(original, tmp_path / "ast", published_names)
    # the runner's path: model.pretrained reaches the constructor through build_model
    loaded = build_model(configured(pretrained=str(folder)), feature=LogMel(), n_classes=3).eval()
    assert loaded.input_norm == "none"  # a checkpoint reads the feature as it is (feature=ast_fbank)
    assert torch.equal(loaded(spectrograms), original(spectrograms))
    assert all(torch.equal(value, original.network.state_dict()[key])
               for key, value in loaded.network.state_dict().items())
    # its weights are part of what the model cache and the run are keyed on
    assert loaded.source_sha256() != tiny_ast().source_sha256()


def test_a_checkpoint_with_other_classes_gets_a_new_head_and_says_so(spectrograms, tmp_path, caplog):
    original = tiny_ast(input_norm="none")
    folder = save_hub_checkpoint(original, tmp_path / "ast")
    with caplog.at_level(logging.INFO, logger="audiointerp.models.ast"):
        loaded = AST(feature=LogMel(), n_classes=5, pretrained=str(folder)).eval()
    assert "its head has 3 classes, the data 5: a new classification head" in caplog.text
    assert loaded.network.classifier.dense.weight.shape[0] == 5 and loaded(spectrograms).shape == (4, 5)
    body = {k: v for k, v in original.network.state_dict().items() if not k.startswith("classifier.dense")}
    assert all(torch.equal(loaded.network.state_dict()[key], value) for key, value in body.items())


def test_bad_pretrained_values_are_one_line(tmp_path):
    original = tiny_ast(input_norm="none")
    folder = save_hub_checkpoint(original, tmp_path / "ast")
    with pytest.raises(AudioInterpError, match=r"model.pretrained: .* reads 64 mel bins, the feature gives 257; "
                                               r"use the feature it was trained on"):
        AST(n_bins=257, n_classes=3, pretrained=str(folder))
    with pytest.raises(AudioInterpError, match="model.pretrained: cannot read the configuration of"):
        AST(feature=LogMel(), n_classes=3, pretrained=str(tmp_path / "empty"))
    with pytest.raises(AudioInterpError, match="model.pretrained: expected a Hugging Face hub id"):
        AST(feature=LogMel(), n_classes=3, pretrained="panns")


def test_without_transformers_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers raises ImportError
    with pytest.raises(AudioInterpError, match=r'model=ast: needs the Hugging Face transformers package.*'
                                               r'pip install -e "\.\[hf\]"'):
        AST(feature=LogMel(), duration_s=5.0, n_classes=3)


def test_sanity_cascade_randomises_the_head_then_the_encoder_from_the_top_and_restores(spectrograms):
    model = tiny_ast()
    cascade = model.randomisation_cascade()
    assert [name for name, _ in cascade] == ["classifier", f"{TOKENS}.1", f"{TOKENS}.0",
                                             "audio_spectrogram_transformer.embeddings.patch_embeddings"]
    before = {key: value.clone() for key, value in model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    changed_after = []
    with restored(model):
        for _, modules in cascade:
            randomise(modules, generator)
            changed_after.append({key for key, value in model.state_dict().items() if not torch.equal(value, before[key])})
    assert changed_after[0] == {"hf.classifier.dense.weight", "hf.classifier.dense.bias"}
    top = changed_after[1] - changed_after[0]
    assert top and all(key.startswith(f"hf.{TOKENS}.1.") for key in top)  # the top layer, and nothing below it
    assert all(key.startswith(f"hf.{TOKENS}.0.") for key in changed_after[2] - changed_after[1])
    assert changed_after[3] - changed_after[2] == {"hf.audio_spectrogram_transformer.embeddings.patch_embeddings."
                                                   "projection.weight", "hf.audio_spectrogram_transformer.embeddings."
                                                   "patch_embeddings.projection.bias"}
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())

    # the checks themselves, with saliency: every step explained, the model put back bit for bit
    rows = randomisation_checks(model, Saliency(), spectrograms[:2], ["a", "b"], n_classes=3, seed=0, batch_size=2)
    assert [row.step for row in rows[::2]] == [name for name, _ in cascade] + ["random_logit"]
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())
    assert rows[-4].spearman < 0.9  # saliency moves once every layer is re-drawn


def test_every_explainer_gives_the_inputs_shape_and_deepshap_is_refused(spectrograms):
    model = tiny_ast()
    target = model(spectrograms).argmax(dim=1)
    evidence = torch.zeros_like(spectrograms, dtype=torch.bool)
    evidence[..., 10:20, 100:200] = True
    labels = torch.tensor([0, 1, 2, 0])
    explainers = {"saliency": Saliency(), "gradcam": GradCam(), "integrated_gradients": IntegratedGradients(n_steps=4),
                  "lime": Lime(num_samples=20, batch_size=10), "occlusion": Occlusion(patch=[16, 50], stride=[16, 50]),
                  "random": RandomAttribution(), "oracle": Oracle(), "shap_gradient": GradientShap(per_class=1, n_samples=4),
                  "lmac": Lmac(epochs=1, batch_size=2, hidden=8, cache=False)}
    for name, explainer in explainers.items():
        explainer.check(model)
        if explainer.needs_training_data:
            valid = (spectrograms, labels) if explainer.needs_validation_data else ()
            explainer.prepare(model, spectrograms, labels, *valid)
        context = {"evidence": evidence} if explainer.needs_evidence else {}
        attribution = explainer.attribute(model, spectrograms, target, **context)
        assert attribution.shape == spectrograms.shape, name
        assert torch.isfinite(attribution).all() and attribution.abs().amax() > 0, name
    # L-MAC listened to the embeddings' and both layers' tokens, on the patch grid
    _, activations = explainers["lmac"]._listen(model, spectrograms)
    assert [tuple(a.shape) for a in activations] == [(4, 64, 7, 31)] * 3
    with pytest.raises(AudioInterpError, match="explainer=shap: .*Audio Spectrogram Transformer.*use explainer=shap_gradient"):
        DeepShap().check(model)


def test_bf16_autocast_runs_and_channels_last_is_a_no_op(spectrograms):
    model = tiny_ast()
    reference = model(spectrograms)
    projection = model.network.audio_spectrogram_transformer.embeddings.patch_embeddings.projection
    with channels_last(model, True):
        assert projection.weight.is_contiguous()  # not converted
        assert torch.equal(model(spectrograms), reference)
    model.set_precision(torch.bfloat16)
    try:
        logits = model(spectrograms)
        saliency = Saliency().attribute(model, spectrograms, reference.argmax(dim=1))
    finally:
        model.set_precision(None)
    assert logits.dtype == torch.float32 and torch.allclose(logits, reference, atol=0.1)
    assert saliency.shape == spectrograms.shape and torch.isfinite(saliency).all()


@pytest.mark.parametrize("feature", ["mel", "ast_fbank"])
def test_the_smoke_preset_runs_end_to_end(tmp_path, feature):
    """experiment=smoke_ast, as CI runs it, on the log-mel and on AST's own fbank: trained from
    scratch, explained with Grad-CAM on tokens, sanity-checked, every output written (the example's
    masked audio at the feature's rate)."""
    run_dir = tmp_path / "run"
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "audiointerp.run", "experiment=smoke_ast", "explainer=gradcam",
                             f"feature={feature}", "sanity=true", "sanity_clips=2", f"hydra.run.dir={run_dir}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run_dir / "run.json").read_text())
    assert report["run"]["explainer"] == "gradcam"
    summary = (run_dir / "summary.csv").read_text().splitlines()
    assert len(summary) == 15  # a header and the 14 masks
    for name in ("attributions.npz", "localization.csv", "clip_scores.csv", "sanity.csv", "model.pt"):
        assert (run_dir / name).is_file(), name
    steps = [line.split(",")[0] for line in (run_dir / "sanity.csv").read_text().splitlines()[1::2]]
    assert steps == ["classifier", f"{TOKENS}.1", f"{TOKENS}.0",
                     "audio_spectrogram_transformer.embeddings.patch_embeddings", "random_logit"]
    assert report["run"]["feature"] == feature
    (example,) = (run_dir / "examples").iterdir()
    rate, masked = wavfile.read(example / "bin_masked.wav")
    assert rate == (16000 if feature == "ast_fbank" else 32000) and len(masked) == 5 * rate
    print(f"smoke_ast, feature={feature}: {elapsed:.1f} s")
    shutil.rmtree(run_dir)
