"""L-MAC: the decoder's masks, its training, its cache and its determinism, on a real tiny Cnn14."""

from __future__ import annotations

import logging

import pytest
import torch

from audiointerp.errors import AudioInterpError
from audiointerp.explainers.lmac import OUT_LOSSES, UPSAMPLING, Lmac, MaskDecoder
from audiointerp.models import Cnn14

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def splits(trained):
    """(train inputs, labels, valid inputs, labels): a few test-split clips stand in for both."""
    model, feature, clips = trained
    log_db = feature(clips.waveforms).log_db
    return log_db[:24], clips.labels[:24], log_db[24:], clips.labels[24:]


@pytest.mark.parametrize("fine_channels", [None, 4])
@pytest.mark.parametrize("upsample", UPSAMPLING)
@pytest.mark.parametrize("layers", [["conv_block6"], None, ["bn0", "conv_block3", "conv_block4", "conv_block5", "conv_block6"],
                                    ["bn0", *(f"conv_block{i}" for i in range(1, 7))]])
@pytest.mark.parametrize("n_bins,n_frames", [(64, 501), (257, 313)])
def test_the_decoder_gives_a_mask_in_0_1_on_the_inputs_grid(n_bins, n_frames, layers, upsample, fine_channels):
    torch.manual_seed(0)
    model = Cnn14(n_bins=n_bins, n_classes=5, width=1 / 16).eval()
    explainer = Lmac(layers=layers)
    inputs = torch.randn(3, 1, n_bins, n_frames) * 20 - 50
    explainer.listened = layers or model.listened_layers(inputs)
    with torch.no_grad():
        _, activations = explainer._listen(model, inputs)
    decoder = MaskDecoder([a.shape[1] for a in activations], hidden=8, upsample=upsample, fine_channels=fine_channels)
    with torch.no_grad():
        mask = decoder(activations, inputs.shape[-2:])
    assert decoder.head[0].in_channels == (fine_channels or 8)
    assert mask.shape == inputs.shape
    assert float(mask.min()) >= 0 and float(mask.max()) <= 1  # a float32 sigmoid reaches 1 above a logit of ~17
    # each clip's mask is its own: the decoder mixes nothing across the batch
    with torch.no_grad():
        _, alone = explainer._listen(model, inputs[1:2])
        torch.testing.assert_close(decoder(alone, inputs.shape[-2:]), mask[1:2], rtol=1e-4, atol=1e-5)


def test_layer_0_is_the_spectrogram_as_the_classifier_normalised_it(trained, splits):
    model, _, _ = trained
    inputs = splits[2][:3]
    with torch.no_grad():
        explainer = Lmac(layers=["bn0", "conv_block6"])
        explainer.listened = explainer.layers
        logits, activations = explainer._listen(model, inputs)
        mean, var = model.bn0.running_mean, model.bn0.running_var  # (F,): one per frequency bin
        normalised = (inputs - mean[:, None]) / torch.sqrt(var[:, None] + model.bn0.eps) * model.bn0.weight[:, None] \
            + model.bn0.bias[:, None]
        assert torch.equal(logits, model(inputs)), "listening must not change the classifier's pass"
    assert len(activations) == 2 and activations[0].shape == inputs.shape
    torch.testing.assert_close(activations[0], normalised, rtol=1e-5, atol=1e-5)
    assert activations[1].shape[1] == model.conv_block6.conv2.out_channels


def test_the_removal_terms_are_minus_ce_and_minus_log_of_the_class_being_gone():
    logits = torch.tensor([[4.0, 1.0, 0.0], [0.0, 0.0, 9.0], [2.0, 2.0, 2.0]])
    predicted = torch.tensor([0, 0, 1])
    p = torch.softmax(logits, dim=1)[torch.arange(3), predicted]  # the predicted class's probability
    torch.testing.assert_close(OUT_LOSSES["ce"](logits, predicted), torch.log(p).mean())
    torch.testing.assert_close(OUT_LOSSES["bounded"](logits, predicted), -torch.log1p(-p).mean())
    # bounded: never below 0, and 0 once the complement has lost the class; ce keeps falling
    gone = torch.tensor([[-30.0, 0.0, 0.0]])
    assert 0 <= float(OUT_LOSSES["bounded"](gone, torch.tensor([0]))) < 1e-9
    assert float(OUT_LOSSES["ce"](gone, torch.tensor([0]))) < -29


@pytest.mark.parametrize("settings", [{}, {"layers": ["bn0", "conv_block3", "conv_block4", "conv_block5", "conv_block6"],
                                           "upsample": "bilinear", "out_loss": "bounded", "weight_area": 16.0,
                                           "fine_channels": 16, "select": "loss"}])  # lmac, lmac_sparse
def test_training_lowers_the_loss(trained, splits, settings):
    model, _, _ = trained
    train_inputs, train_labels, valid_inputs, valid_labels = splits
    explainer = Lmac(epochs=3, lr=1e-3, batch_size=8, cache=False, seed=0, **settings)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    model.zero_grad(set_to_none=True)  # training the model left its last gradients
    explainer.prepare(model, train_inputs, train_labels, valid_inputs, valid_labels)
    history = explainer.training["history"]
    assert len(history) == 3 and explainer.training["best_epoch"] in (1, 2, 3)
    assert history[-1]["loss"] < history[0]["loss"], history
    assert all(p.grad is None for p in model.parameters()), "no gradient may reach the classifier's weights"
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items()), \
        "the classifier must stay frozen"
    assert all(p.requires_grad for p in model.parameters()), "the classifier's parameters must be restored"
    if settings.get("select") == "loss":  # the best epoch has the lowest validation loss
        best = min(history, key=lambda h: h["valid_loss"])
    else:  # the one with the highest valid Fid-In, ties broken by FF
        best = max(history, key=lambda h: (h["FidIn"], h["FF"]))
    assert explainer.training["best_epoch"] == best["epoch"], history
    assert (explainer.training["valid_FidIn"], explainer.training["valid_FF"]) == (best["FidIn"], best["FF"])
    # the recorded validation loss is the training objective on the validation clips, with the kept decoder
    with torch.no_grad():
        masks, logits = explainer._masks(model, valid_inputs)
        valid_loss = float(explainer._objective(model, valid_inputs, masks, logits))
    assert explainer.training["valid_loss"] == pytest.approx(valid_loss, rel=1e-4)
    # training flushes subnormal floats to zero (speed); torch's default is back for what runs next
    assert float(torch.tensor([1e-40]) * 1.0) > 0


def test_same_seed_gives_identical_masks_and_the_cached_decoder_is_reused(trained, splits, tmp_path, caplog):
    model, _, _ = trained
    train_inputs, train_labels, valid_inputs, valid_labels = splits
    first = Lmac(epochs=1, lr=1e-3, batch_size=8, cache=True, cache_dir=str(tmp_path), seed=3)
    first.prepare(model, train_inputs, train_labels, valid_inputs, valid_labels)
    assert len(list(tmp_path.glob("lmac_*.pt"))) == 1
    target = torch.zeros(4, dtype=torch.long)
    masks = first.attribute(model, valid_inputs[:4], target)
    assert masks.shape == valid_inputs[:4].shape and masks.dtype == torch.float32

    again = Lmac(epochs=1, lr=1e-3, batch_size=8, cache=False, seed=3)  # trained afresh, same seed
    again.prepare(model, train_inputs, train_labels, valid_inputs, valid_labels)
    assert torch.equal(again.attribute(model, valid_inputs[:4], target), masks)

    cached = Lmac(epochs=1, lr=1e-3, batch_size=8, cache=True, cache_dir=str(tmp_path), seed=3)

    def no_training(*args):
        raise AssertionError("the cached decoder must be reused, not trained again")

    cached._fit = no_training
    cached.prepare(model, train_inputs, train_labels, valid_inputs, valid_labels)
    assert torch.equal(cached.attribute(model, valid_inputs[:4], target), masks)
    assert cached.training == first.training

    # a broken entry (a killed copy, a full disk) is deleted and made again by the model cache's protocol
    entry = next(tmp_path.glob("lmac_*.pt"))
    entry.write_bytes(b"not a decoder")
    with caplog.at_level(logging.WARNING, logger="audiointerp.train"):
        remade = Lmac(epochs=1, lr=1e-3, batch_size=8, cache=True, cache_dir=str(tmp_path), seed=3)
        remade.prepare(model, train_inputs, train_labels, valid_inputs, valid_labels)
    assert any(f"L-MAC decoder cache entry {entry} is unreadable" in r.getMessage() and "training the L-MAC decoder again"
               in r.getMessage() for r in caplog.records), caplog.text
    assert torch.equal(remade.attribute(model, valid_inputs[:4], target), masks)
    assert entry.stat().st_size > 1000

    other_seed = Lmac(epochs=1, lr=1e-3, batch_size=8, cache=True, cache_dir=str(tmp_path), seed=4)
    other_seed.prepare(model, train_inputs, train_labels, valid_inputs, valid_labels)
    assert len(list(tmp_path.glob("lmac_*.pt"))) == 2, "another seed is another decoder"
    assert not torch.equal(other_seed.attribute(model, valid_inputs[:4], target), masks)


def test_a_constant_mask_does_not_win_the_epoch_selection(trained, splits):
    """The best epoch is chosen by Fid-In of the mask's top 5 % by rank: a decoder that keeps every
    bin alike (one ESC-10 decoder did, all ones) keeps 5 % of the bins by position, not all of them."""
    model, _, _ = trained
    explainer = Lmac(cache=False)
    with torch.no_grad():
        _, activations = explainer._listen(model, splits[2][:2])
    explainer.decoder = MaskDecoder([a.shape[1] for a in activations], hidden=8)
    with torch.no_grad():
        explainer.decoder.head[-1].weight.zero_()
        explainer.decoder.head[-1].bias.fill_(30.0)  # sigmoid(30) == 1 in float32: every bin kept alike
    scores = explainer._validate(model, splits[2])
    assert scores["mask_mean"] == 1.0
    assert scores["FidIn"] < 0.5, scores


@pytest.mark.parametrize("option,value", [("layers", []), ("layers", ["conv_block3", "conv_block3"]), ("layers", [3]), ("epochs", 0),
                                          ("lr", -1.0), ("area", 1.5), ("batch_size", 1), ("squash", "relu"),
                                          ("out_loss", "mse"), ("upsample", "nearest"), ("select", "accuracy"),
                                          ("fine_channels", 0)])
def test_bad_settings_name_the_option(option, value):
    with pytest.raises(AudioInterpError, match=f"explainer.{option}"):
        Lmac(**{option: value})
