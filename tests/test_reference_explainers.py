"""The reference explainers: ``random`` (the floor) and ``oracle`` (the ground truth)."""

from __future__ import annotations

import pytest
import torch

from audiointerp.data.synthetic import SyntheticClips
from audiointerp.errors import AudioInterpError
from audiointerp.explainers.oracle import Oracle
from audiointerp.explainers.random import RandomAttribution
from audiointerp.features import LogMel
from audiointerp.localization import evidence_mask


def test_random_is_seeded_independent_of_batching_and_leaves_the_global_rng_alone():
    inputs = torch.randn(5, 1, 8, 12, generator=torch.Generator().manual_seed(0))
    target = torch.zeros(5, dtype=torch.long)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    whole = RandomAttribution(seed=3).attribute(None, inputs, target)
    assert torch.equal(torch.get_rng_state(), before), "the global generator must not be consumed"
    explainer = RandomAttribution(seed=3)
    batched = torch.cat([explainer.attribute(None, inputs[:2], target[:2]),
                         explainer.attribute(None, inputs[2:], target[2:])])
    assert whole.shape == inputs.shape and whole.dtype == torch.float32
    assert torch.equal(whole, batched)
    assert not torch.equal(whole, RandomAttribution(seed=4).attribute(None, inputs, target))
    assert not torch.equal(whole[0], whole[1]), "each clip gets its own draw"
    again = RandomAttribution(seed=3).attribute(None, inputs[[3, 0]], target[:2])
    assert torch.equal(again, whole[[3, 0]]), "a clip's map depends on the clip and the seed only"
    assert abs(whole.mean().item()) < 0.2 and 0.8 < whole.std().item() < 1.2  # standard normal
    with pytest.raises(AudioInterpError, match="explainer.seed"):
        RandomAttribution(seed=-1)


def test_oracle_is_plus_one_on_the_evidence_and_minus_one_elsewhere():
    feature = LogMel()
    clips = SyntheticClips(clips_per_class={"test": 1}, n_classes=3).load_split("test")
    log_db = feature(clips.waveforms).log_db
    region = evidence_mask(clips.evidence, feature, log_db.shape[-1])
    attribution = Oracle().attribute(None, log_db, torch.zeros(3, dtype=torch.long), evidence=region)
    assert attribution.shape == log_db.shape
    assert torch.equal(attribution > 0, region)
    assert set(attribution.unique().tolist()) == {-1.0, 1.0}
    assert 0.01 < region.float().mean().item() < 0.25, "an event covers a small part of the clip"
    with pytest.raises(AudioInterpError, match="ground-truth evidence"):
        Oracle().attribute(None, log_db, torch.zeros(3, dtype=torch.long))


def test_the_event_box_holds_the_event_energy_on_the_mel_grid():
    """Clips with nothing but their class event: the region E holds nearly all its mel power."""
    feature = LogMel()
    clips = SyntheticClips(clips_per_class={"test": 2}, background=False, n_distractors=0,
                           padded_share=0.0).load_split("test")
    log_db = feature(clips.waveforms).log_db
    region = evidence_mask(clips.evidence, feature, log_db.shape[-1])
    power = 10 ** (log_db / 10)
    inside = (power * region).sum(dim=(1, 2, 3)) / power.sum(dim=(1, 2, 3))
    assert inside.min().item() > 0.99, inside
