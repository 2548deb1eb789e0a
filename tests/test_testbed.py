"""The embedded testbed measures explanations: on a tiny Cnn14 trained on real generated clips,
keeping the class event keeps the prediction and removing it loses it, and random masks do less.

A swap of masked and complementary inputs anywhere in the pipeline fails these tests: the oracle's
masked input would then lose the prediction and its complement keep it."""

from __future__ import annotations

import pytest
import torch

from audiointerp import pipeline
from audiointerp.explainers import Explainer
from audiointerp.explainers.oracle import Oracle
from audiointerp.explainers.random import RandomAttribution
from audiointerp.explainers.saliency import Saliency
from audiointerp.masks import apply_mask, make_masks
from audiointerp.metrics import FAITHFULNESS_NAMES, score

CPU = torch.device("cpu")


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


# --- localisation against the evidence --------------------------------------------------------

def test_the_oracle_localises_perfectly_and_random_at_chance(trained):
    oracle = _score(trained, Oracle())
    for name in ("relevance_mass", "relevance_rank", "pointing_game", "auroc"):
        assert torch.equal(oracle.localization[name], torch.ones(len(oracle.predicted))), name
    assert torch.equal(oracle.metrics["bin"]["iou"], torch.ones(len(oracle.predicted)))
    random = _score(trained, RandomAttribution(seed=0))
    share = random.localization["evidence_share"]
    assert 0.01 < share.mean().item() < 0.3
    assert (random.localization["auroc"] - 0.5).abs().max().item() < 0.05
    assert (random.localization["relevance_mass"] - share).abs().max().item() < 0.05
    # the bin mask keeps the positive half, at random: recall about 1/2, precision about the share of E
    assert 0.4 < random.metrics["bin"]["recall"].mean().item() < 0.6
    assert random.metrics["bin"]["precision"].mean().item() == pytest.approx(share.mean().item(), abs=0.02)


# --- faithfulness as heard: masked inputs turned into audio and analysed again -------------------

class Everything(Explainer):
    """Attributes +1 to every bin, so ``bin`` keeps the whole clip and its complement is silence."""

    def attribute(self, model, inputs, target):
        return torch.ones_like(inputs)


def test_audio_domain_of_a_mask_of_all_ones_reproduces_the_spectrogram_domain(trained):
    model, feature, clips = trained
    results = pipeline.explain_and_score(model, Everything(), feature, clips.subset(slice(0, 6)), mask_names=["bin"],
                                         silence_level=-100.0, batch_size=4, eval_batch_size=64, device=CPU,
                                         audio_metrics=True)
    scores = results.metrics["bin"]
    assert torch.equal(scores["kept"], torch.ones(6))
    # the inverse re-uses each clip's phase: an unmodified input comes back up to float rounding, so
    # the masked input's probability of the class moves by less than 1e-4. AD and AG divide that by
    # p and 1 - p (in percent), and AI is an indicator of a tie here, so those are compared as the
    # probability they come from.
    p = results.probabilities.max(dim=1).values.double()
    assert torch.allclose(scores["FF_audio"], scores["FF"], atol=1e-4)
    assert torch.equal(scores["FidIn_audio"], scores["FidIn"])
    assert ((scores["AD_audio"] - scores["AD"]).double().abs() * (p + 1e-6) / 100 < 1e-4).all()
    assert ((scores["AG_audio"] - scores["AG"]).double().abs() * (1 - p + 1e-6) / 100 < 1e-4).all()
    flipped = scores["AI_audio"] != scores["AI"]
    assert (scores["AD_audio"][flipped] * p[flipped] < 1e-2).all() and (scores["AG_audio"][flipped] * (1 - p[flipped]) < 1e-2).all()
    assert (scores["FF"] > 0.2).float().mean() > 0.5, "the complement (silence) must lose the prediction"
    assert results.audio_seconds_per_clip > 0


def test_audio_domain_columns_are_each_clips_own_masks_heard(trained):
    """Batched (uneven batches, all masks at once) equals inverting one clip's masked inputs alone."""
    model, feature, clips = trained
    clips = clips.subset(slice(0, 5))
    names = ["bin", "topK_5", "sigmoid"]
    results = pipeline.explain_and_score(model, Saliency(), feature, clips, mask_names=names, silence_level=-100.0,
                                         batch_size=3, eval_batch_size=64, device=CPU, audio_metrics=True)
    differs = 0
    for clip in (1, 4):
        spectrogram = feature(clips.waveforms[clip:clip + 1])
        masks = make_masks(results.attributions[clip:clip + 1], names)
        with torch.no_grad():
            p = torch.softmax(model(spectrogram.log_db), dim=1)
            for name in names:
                masked, unmasked = apply_mask(spectrogram.log_db, masks[name], -100.0)
                heard = [torch.softmax(model(feature(feature.inverse(x, spectrogram)).log_db), dim=1) for x in (masked, unmasked)]
                expected = score(p, heard[0], heard[1], masks[name])
                # batched and single inverses differ in float rounding; AD and AG divide the
                # probability they come from by p and 1 - p (in percent), so they are compared as it
                scale = {"AD": float(p.max()) / 100, "AG": (1 - float(p.max())) / 100}
                for metric in FAITHFULNESS_NAMES:
                    got = results.metrics[name][f"{metric}_audio"][clip].item()
                    assert abs(got - expected[metric].item()) * scale.get(metric, 1.0) < 1e-4, (clip, name, metric)
                    differs += abs(got - results.metrics[name][metric][clip].item()) > 1e-6
    assert differs, "a masked spectrogram heard is not the spectrogram itself"
