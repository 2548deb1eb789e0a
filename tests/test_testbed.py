"""The embedded testbed measures explanations: on a tiny Cnn14 trained on real generated clips,
keeping the class event keeps the prediction and removing it loses it, and random masks do less.

A swap of masked and complementary inputs anywhere in the pipeline fails these tests: the oracle's
masked input would then lose the prediction and its complement keep it."""

from __future__ import annotations

import pytest
import torch

from audiointerp import pipeline, train
from audiointerp.data.synthetic import SyntheticClips
from audiointerp.explainers.oracle import Oracle
from audiointerp.explainers.random import RandomAttribution
from audiointerp.features import LogMel
from audiointerp.models import Cnn14

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    feature = LogMel()
    dataset = SyntheticClips(clips_per_class={"train": 30, "valid": 6, "test": 4}, seed=0)
    splits = {split: dataset.load_split(split) for split in ("train", "valid", "test")}
    inputs = {split: pipeline.log_spectrograms(feature, clips.waveforms, 64, CPU) for split, clips in splits.items()}
    model = Cnn14(n_bins=64, n_classes=dataset.n_classes, width=1 / 16, dropout=0.0, mask_dropout=0.2)
    result = train.fit(model, inputs["train"], splits["train"].labels, inputs["valid"], splits["valid"].labels,
                       epochs=40, lr=1e-3, batch_size=32, device=CPU, seed=0)
    assert result.best_valid_accuracy >= 0.75, result.history
    return model.eval(), feature, splits["test"]


def _score(trained, explainer, masks=("bin",)):
    model, feature, clips = trained
    return pipeline.explain_and_score(model, explainer, feature, clips, mask_names=list(masks), silence_level=-100.0,
                                      batch_size=8, eval_batch_size=64, device=CPU)


def test_keeping_the_event_keeps_the_prediction_and_removing_it_loses_it(trained):
    results = _score(trained, Oracle())
    bin_mask = results.metrics["bin"]
    kept_prediction = (bin_mask["predicted_masked"] == results.predicted).float().mean().item()
    lost_prediction = (bin_mask["predicted_unmasked"] != results.predicted).float().mean().item()
    print(f"oracle bin: kept prediction {kept_prediction:.3f}, lost prediction {lost_prediction:.3f}, "
          f"FF {bin_mask['FF'].mean().item():.3f}")
    assert kept_prediction >= 0.6, bin_mask["predicted_masked"]
    assert lost_prediction >= 0.6, bin_mask["predicted_unmasked"]
    assert bin_mask["FidIn"].mean().item() == pytest.approx(kept_prediction)
    assert bin_mask["FF"].mean().item() >= 0.45
    assert 0.01 < bin_mask["kept"].mean().item() < 0.2  # the event is a small part of the clip


def test_the_oracle_beats_random_masks_of_the_same_kind(trained):
    oracle = _score(trained, Oracle()).metrics["bin"]
    random = _score(trained, RandomAttribution(seed=0)).metrics["bin"]
    assert 0.45 < random["kept"].mean().item() < 0.55
    print(f"FF: oracle {oracle['FF'].mean().item():.3f}, random {random['FF'].mean().item():.3f}; "
          f"Fid-In: oracle {oracle['FidIn'].mean().item():.3f}, random {random['FidIn'].mean().item():.3f}")
    assert oracle["FF"].mean().item() >= random["FF"].mean().item() + 0.2
    assert oracle["FidIn"].mean().item() >= random["FidIn"].mean().item() + 0.15
