"""The classifier contract on a user's own modules, TorchScript files and classifiers of audio, with real clips."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from user_models import SmallCnn, WaveCnn

from audiointerp import pipeline
from audiointerp.data.audio import load_audio
from audiointerp.errors import AudioInterpError
from audiointerp.explainers.captum_methods import IntegratedGradients
from audiointerp.explainers.gradcam import GradCam
from audiointerp.explainers.lmac import Lmac
from audiointerp.explainers.saliency import Saliency
from audiointerp.explainers.shap import DeepShap
from audiointerp.features import LogMel, LogStft
from audiointerp.models import (
    Cnn14,
    ModuleClassifier,
    TorchScriptClassifier,
    WaveformClassifier,
    as_classifier,
    load_model_file,
)
from audiointerp.sanity import randomise, restored

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def clips(sample_wavs):
    """Four real clips at 16 kHz, 5 s: (4, 80000)."""
    return torch.stack([load_audio(path, 16000, 5.0, peak_normalise=True) for path in sample_wavs[:4]])


@pytest.fixture(scope="module")
def spectrograms(clips):
    return LogStft()(clips).log_db


@pytest.fixture()
def network():
    torch.manual_seed(0)
    return SmallCnn(n_classes=3).eval()


def scripted(module: nn.Module, folder) -> TorchScriptClassifier:
    path = folder / "model.ts"
    torch.jit.save(torch.jit.script(copy.deepcopy(module)), str(path))
    return TorchScriptClassifier(str(path))


def test_a_users_module_gets_layer_choices_from_its_own_modules(network, spectrograms):
    model = as_classifier(network)
    assert isinstance(model, ModuleClassifier) and model.input_kind == "spectrogram"
    assert model.gradcam_layer() == "features.8"  # the last Conv2d
    # the last module on each of its grids (three: the input's, then two pooled), shallow to deep
    assert model.listened_layers(spectrograms[:2]) == ["features.2", "features.6", "features.10"]
    cascade = [name for name, _ in model.randomisation_cascade()]
    assert cascade == ["head", "features.8", "features.4", "features.0"]
    # its state dict is the user's: a checkpoint of the class loads into it and back
    assert list(model.state_dict()) == list(network.state_dict())
    with pytest.raises(AudioInterpError, match="explainer.layer: the model .SmallCnn. has no module 'conv9'"):
        model.submodule("conv9", "explainer.layer")


def test_torchscript_layer_outputs_equal_the_eager_modules(network, spectrograms, tmp_path):
    """The behaviour read from torch's private graph API: the tapped values are the modules' outputs."""
    model = scripted(network, tmp_path)
    names = ["norm", "features.0", "features.2", "features", "head"]
    logits, outputs = model.layer_outputs(spectrograms, names)
    with torch.no_grad():
        normalised = network.norm(spectrograms)
        stage = network.features[0](normalised)
        expected = [normalised, stage, network.features[2](network.features[1](stage)), network.features(normalised)]
        expected.append(network(spectrograms))
    torch.testing.assert_close(logits, network(spectrograms).detach())
    for name, value, reference in zip(names, outputs, expected):
        torch.testing.assert_close(value.detach(), reference, msg=name)
    assert model.gradcam_layer() == "features.8" and model.weights_included
    with pytest.raises(AudioInterpError, match="has no module 'nope'"):
        model.layer_outputs(spectrograms, ["nope"])


@pytest.mark.parametrize("explainer", [GradCam(), Saliency(), IntegratedGradients(n_steps=8)], ids=repr)
def test_explainers_give_the_same_maps_for_a_module_and_its_torchscript_file(network, spectrograms, tmp_path,
                                                                           explainer):
    eager, script = as_classifier(network), scripted(network, tmp_path)
    target = torch.tensor([0, 1, 2, 0])
    torch.testing.assert_close(explainer.attribute(script, spectrograms, target),
                               explainer.attribute(eager, spectrograms, target), rtol=1e-4, atol=1e-5)


def test_lmac_listens_to_a_torchscript_model_like_to_its_module(network, spectrograms, tmp_path):
    eager, script = as_classifier(network), scripted(network, tmp_path)
    listened = eager.listened_layers(spectrograms[:2])
    assert script.listened_layers(spectrograms[:2]) == listened
    explainer = Lmac()
    explainer.listened = listened
    (_, eager_maps), (_, script_maps) = explainer._listen(eager, spectrograms), explainer._listen(script, spectrograms)
    for a, b in zip(eager_maps, script_maps):
        torch.testing.assert_close(a, b)


def test_deepshap_is_refused_for_torchscript_naming_the_alternative(network, tmp_path):
    with pytest.raises(AudioInterpError, match="explainer=shap_gradient"):
        DeepShap().check(scripted(network, tmp_path))


def test_randomising_a_torchscript_model_redraws_its_weights_and_is_restored(network, spectrograms, tmp_path):
    model = scripted(network, tmp_path)
    before = model(spectrograms).detach()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with restored(model):
        for _, modules in model.randomisation_cascade():
            randomise(modules, torch.Generator().manual_seed(0))
        assert not torch.equal(model(spectrograms).detach(), before)
        assert not torch.equal(model.state_dict()["head.weight"], saved["head.weight"])
        assert torch.equal(model.state_dict()["norm.weight"], saved["norm.weight"]), "BatchNorm stays as trained"
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def test_a_run_s_model_file_and_a_torchscript_file_load_by_path(network, tmp_path):
    from audiointerp import train

    cnn = Cnn14(n_bins=64, n_classes=4, width=1 / 16).eval()
    path = tmp_path / "model.pt"
    train.save_checkpoint(cnn, path, {"settings": {"model": {"_target_": "audiointerp.models.Cnn14", "width": 1 / 16,
                                                             "dropout": 0.0},
                                                   "feature": {"_target_": "audiointerp.features.LogMel"},
                                                   "data": {"n_classes": 4}}})
    loaded = load_model_file(path)
    x = torch.randn(2, 1, 64, 50)
    assert isinstance(loaded, Cnn14) and torch.equal(loaded(x), cnn(x))
    assert isinstance(load_model_file(scripted(network, tmp_path).path), TorchScriptClassifier)
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(AudioInterpError, match="notes.txt"):
        load_model_file(tmp_path / "notes.txt")


# --- classifiers of audio -------------------------------------------------------------------------

@pytest.fixture()
def wave_net():
    torch.manual_seed(0)
    return WaveCnn(n_classes=3).eval()


def test_a_waveform_classifier_hears_exactly_the_inverted_audio(wave_net, clips):
    """Through the STFT's exact inverse, the unmasked spectrogram gives the clip itself back; a mask
    gives the masked audio the listener hears."""
    feature = LogStft()
    model = as_classifier(wave_net, feature=feature, input_kind="waveform", sample_rate=16000)
    assert isinstance(model, WaveformClassifier) and model.input_kind == "waveform"
    spectrogram = feature(clips)
    with torch.no_grad(), model.listening(spectrogram):
        torch.testing.assert_close(model(spectrogram.log_db), wave_net(clips), rtol=1e-4, atol=1e-4)
        masked = spectrogram.log_db.clone()
        masked[..., 100:] = -100.0
        heard = feature.inverse(masked, spectrogram)
        torch.testing.assert_close(model(masked), wave_net(heard), rtol=1e-5, atol=1e-5)
    with pytest.raises(AudioInterpError, match="phase"):
        model(spectrogram.log_db)  # outside listening: no phase to invert with
    with pytest.raises(AudioInterpError, match="feature.sample_rate=32000"):
        as_classifier(wave_net, feature=LogStft(), input_kind="waveform", sample_rate=32000)


@pytest.mark.parametrize("feature", [LogStft(), LogMel(sample_rate=16000, n_fft=512, win_length=512, hop_length=160, f_max=8000.0)],
                         ids=["stft", "mel"])
def test_gradients_through_the_inverse_are_finite_and_reach_the_bins(wave_net, clips, feature):
    model = as_classifier(wave_net, feature=feature, input_kind="waveform")
    spectrogram = feature(clips[:1])
    with model.listening(spectrogram):
        saliency = Saliency().attribute(model, spectrogram.log_db, torch.tensor([1]))
    assert torch.isfinite(saliency).all()
    assert (saliency != 0).float().mean() > 0.5, "most bins of a real clip must move the logit"


class WaveCnnClassifier(ModuleClassifier):
    """A Classifier of audio that says how its 1-D feature maps are read: (B, C, L) as a (B, C, 1, L)
    time map, no DeepSHAP, no channels-last."""

    channels_last_useful = False
    deeplift_refusal = "a test's reason"

    def as_map(self, name, output, inputs):
        return output.unsqueeze(2) if output.dim() == 3 else output

    def gradcam_layer(self) -> str:
        return "features.7"

    def listened_layers(self, inputs=None) -> list[str]:
        return ["features.4", "features.7"]


def test_a_waveform_classifier_passes_its_networks_own_choices_through(wave_net, clips):
    """What the wrapped network says of itself (how a layer's output is a map, which layers L-MAC
    listens to, DeepSHAP's refusal, channels-last) holds through model.input=waveform: Grad-CAM on a
    1-D time map gives a map constant along frequency."""
    feature = LogStft()
    model = as_classifier(WaveCnnClassifier(wave_net), feature=feature, input_kind="waveform")
    assert isinstance(model, WaveformClassifier)
    assert model.deeplift_refusal == "a test's reason" and model.channels_last_useful is False
    spectrogram = feature(clips[:1])
    assert model.listened_layers(spectrogram.log_db) == ["features.4", "features.7"]
    with model.listening(spectrogram):
        gradcam = GradCam().attribute(model, spectrogram.log_db, torch.tensor([1]))
    assert gradcam.shape == spectrogram.log_db.shape and float(gradcam.abs().sum()) > 0
    torch.testing.assert_close(gradcam, gradcam[:, :, :1].expand_as(gradcam))


def test_explainers_that_run_other_clips_are_refused_for_waveform_classifiers(wave_net):
    model = as_classifier(wave_net, feature=LogStft(), input_kind="waveform")
    for explainer in (DeepShap(), Lmac()):
        with pytest.raises(AudioInterpError, match="phase"):
            explainer.check(model)


def test_audio_metrics_of_a_waveform_classifier_agree_with_the_spectrogram_ones_under_the_stft(wave_net, clips):
    from audiointerp.data import ClipSet
    from audiointerp.masks import MASK_NAMES
    from audiointerp.metrics import FAITHFULNESS_NAMES

    feature = LogStft()
    model = as_classifier(wave_net, feature=feature, input_kind="waveform")
    clip_set = ClipSet(waveforms=clips[:2], labels=torch.tensor([0, 1]), clip_ids=["a", "b"],
                       class_names=["x", "y", "z"], sample_rate=16000)
    results = pipeline.explain_and_score(model, Saliency(), feature, clip_set, mask_names=list(MASK_NAMES),
                                         silence_level=-100.0, batch_size=pipeline.clips_per_batch(model, 16),
                                         eval_batch_size=32, device=CPU, audio_metrics=True)
    for mask, columns in results.metrics.items():
        for name in FAITHFULNESS_NAMES:
            scale = 100.0 if name in ("AI", "AD", "AG") else 1.0
            torch.testing.assert_close(columns[f"{name}_audio"] / scale, columns[name] / scale, rtol=0, atol=2e-4,
                                       msg=lambda m: f"{mask} {name}: {m}")


def test_a_model_target_that_does_not_import_is_one_line_naming_the_option():
    from omegaconf import OmegaConf

    from audiointerp.models import build_model

    with pytest.raises(AudioInterpError, match=r"^model._target_: cannot import 'nope.Net' .*importable nn.Module"):
        build_model(OmegaConf.create({"_target_": "nope.Net"}), feature=LogStft(), n_classes=3)
    with pytest.raises(AudioInterpError, match=r"^model._target_=user_models.SmallCnn: building it failed"):
        build_model(OmegaConf.create({"_target_": "user_models.SmallCnn", "width": 3}), feature=LogStft(), n_classes=3)
    built = build_model(OmegaConf.create({"_target_": "user_models.SmallCnn", "channels": 4}), feature=LogStft(),
                        n_classes=3)
    assert isinstance(built, ModuleClassifier) and built.network.head.out_features == 3  # n_classes passed in
