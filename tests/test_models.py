"""Cnn14 structure, the training step's augmentations, training and checkpoints on real tensors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from audiointerp import train
from audiointerp.augment import SpecAugment, TrainingAugment
from audiointerp.errors import AudioInterpError
from audiointerp.models import Cnn14


def test_cnn14_full_width_has_panns_shapes():
    model = Cnn14(n_bins=64, n_classes=50, width=1.0)
    state = model.state_dict()
    assert state["conv_block1.conv1.weight"].shape == (64, 1, 3, 3)
    assert state["conv_block6.conv2.weight"].shape == (2048, 2048, 3, 3)
    assert state["fc1.weight"].shape == (2048, 2048)
    assert state["bn0.weight"].shape == (64,)
    assert state["classifier.weight"].shape == (50, 2048)
    # about 80 M parameters, as PANNs' Cnn14 less its 527-way head
    n_parameters = sum(p.numel() for p in model.parameters())
    assert 79e6 < n_parameters < 81e6


def test_nonlinearities_and_pools_are_distinct_modules():
    model = Cnn14(n_bins=64, n_classes=4, width=1 / 16)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    pools = [m for m in model.modules() if isinstance(m, nn.AvgPool2d)]
    assert len(relus) == 13 and len({id(r) for r in relus}) == 13  # 2 per block + fc1
    assert len(pools) == 5


@pytest.mark.parametrize("n_bins,n_frames", [(64, 501), (257, 313)])
def test_forward_shapes_for_both_features(n_bins, n_frames):
    model = Cnn14(n_bins=n_bins, n_classes=7, width=1 / 16).eval()
    logits = model(torch.randn(3, 1, n_bins, n_frames))
    assert logits.shape == (3, 7) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="64 frequency bins"):
        Cnn14(n_bins=64, n_classes=2, width=1 / 16)(torch.randn(1, 1, 257, 313))


def test_spec_augment_sets_whole_stripes_to_each_bins_mean():
    x = torch.randn(4, 1, 64, 200)
    torch.manual_seed(0)
    augmented = SpecAugment(freq_mask_width=10, time_mask_width=20)(x)
    changed = augmented != x
    assert changed.any(), "SpecAugment changed nothing"
    bin_mean = x.mean(dim=(0, 3), keepdim=True).expand_as(x)
    assert torch.equal(augmented[changed], bin_mean[changed])
    # stripes: a changed bin is in a frequency row or a time column changed as a whole
    for clip in changed[:, 0]:
        rows, columns = clip.all(dim=1), clip.all(dim=0)
        assert torch.equal(clip, rows[:, None] | columns[None, :])


def test_the_training_step_augments_any_classifier_but_evaluation_never(tmp_path):
    """Augmentation is the training step's: a model of the user's gets it; predictions are untouched."""
    torch.manual_seed(0)
    inputs = torch.randn(8, 1, 16, 20) * 3 - 60
    labels = torch.arange(8) % 2
    seen = []

    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(16 * 20, 2)

        def forward(self, x):
            if self.training:
                seen.append(x.detach().clone())
            return self.linear(x.flatten(1))

    model = Recorder()
    removed = TrainingAugment(mask_dropout={"probability": 1.0, "max_removed": 0.75, "level": -100.0})
    train.fit(model, inputs, labels, inputs, labels, epochs=1, lr=1e-3, batch_size=8,
              device=torch.device("cpu"), seed=0, augment=removed)
    assert len(seen) == 1 and (seen[0] == -100.0).any(), "the training batch was not masked"
    kept = seen[0] != -100.0
    order = torch.randperm(8, generator=torch.Generator().manual_seed(0))  # fit's order of the epoch
    assert torch.equal(seen[0][kept], inputs[order][kept])
    model.eval()
    assert torch.equal(train.predict(model, inputs, 8, torch.device("cpu")),
                       torch.softmax(model(inputs), dim=1))


def test_fit_learns_and_keeps_best_epoch(tmp_path):
    torch.manual_seed(0)
    # two classes told apart by where the energy is: low versus high frequency bins
    inputs = torch.randn(64, 1, 64, 40) * 3 - 60
    labels = torch.arange(64) % 2
    inputs[labels == 0, :, :16] += 40
    inputs[labels == 1, :, 48:] += 40
    model = Cnn14(n_bins=64, n_classes=2, width=1 / 16)
    result = train.fit(model, inputs[:48], labels[:48], inputs[48:], labels[48:], epochs=5, lr=1e-3,
                       batch_size=4, device=torch.device("cpu"), seed=0)
    assert len(result.history) == 5
    assert result.best_valid_accuracy == max(h["valid_accuracy"] for h in result.history)
    assert result.best_valid_accuracy >= 0.9
    # the weights left in the model are those of the best epoch
    assert train.accuracy(model, inputs[48:], labels[48:], 8, torch.device("cpu")) == result.best_valid_accuracy

    path = tmp_path / "model.pt"
    train.save_checkpoint(model, path, {"note": "test"})
    reloaded = Cnn14(n_bins=64, n_classes=2, width=1 / 16)
    assert train.load_checkpoint(reloaded, path) == {"note": "test"}
    model.eval(), reloaded.eval()
    assert torch.equal(model(inputs[:4]), reloaded(inputs[:4]))


def test_checkpoint_errors_name_the_file(tmp_path):
    model = Cnn14(n_bins=64, n_classes=2, width=1 / 16)
    with pytest.raises(AudioInterpError, match="no such file"):
        train.load_checkpoint(model, tmp_path / "missing.pt")
    other = tmp_path / "other.pt"
    train.save_checkpoint(Cnn14(n_bins=257, n_classes=2, width=1 / 16), other, {})
    with pytest.raises(AudioInterpError, match="other.pt"):
        train.load_checkpoint(model, other)
