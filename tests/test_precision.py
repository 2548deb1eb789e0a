"""``precision=bf16``: the model's passes under bf16 autocast (channels-last), everything around them float32;
and the pipeline's one forward of each clip as it is."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from tiny_cnn14 import tiny_cnn14_on_real_clips

from audiointerp import models, pipeline
from audiointerp.curves import CURVE_STEPS
from audiointerp.explainers.random import RandomAttribution
from audiointerp.explainers.saliency import Saliency
from audiointerp.models import cnn14

CPU = torch.device("cpu")


def test_bf16_passes_give_float32_logits_and_gradients_near_fp32_and_fp32_comes_back_exactly(trained):
    model, feature, clips = trained
    log_db = feature(clips.waveforms[:6]).log_db
    with torch.no_grad():
        exact = model(log_db)
    model.set_precision(torch.bfloat16)
    try:
        with torch.no_grad():
            fast = model(log_db)
        gradient = Saliency().attribute(model, log_db, exact.argmax(1))
    finally:
        model.set_precision(None)
    assert fast.dtype == torch.float32 and gradient.dtype == torch.float32
    assert not torch.equal(fast, exact), "bf16 must have been used"
    # bf16 keeps about three significant digits: the logits move by well under their spread
    assert (fast - exact).abs().max() < 0.05 * (exact.max() - exact.min())
    assert torch.equal(fast.argmax(1), exact.argmax(1))
    exact_gradient = Saliency().attribute(model, log_db, exact.argmax(1))
    # the input-side blocks of a gradient pass stay float32 (cnn14.GRADIENT_FLOAT32_BLOCKS): every
    # block in bf16 ranks the bins of these clips' gradients at 0.94 to fp32's
    rho = [scipy.stats.spearmanr(got.flatten().numpy(), want.flatten().numpy())[0]
           for got, want in zip(gradient, exact_gradient)]
    assert np.mean(rho) >= 0.98 and min(rho) > 0.95, rho
    with torch.no_grad():
        assert torch.equal(model(log_db), exact), "fp32 after bf16 must give the same bits as before"


def test_under_bf16_a_pass_differentiated_by_its_input_keeps_the_input_side_blocks_float32(trained):
    model, feature, clips = trained
    log_db = feature(clips.waveforms[:2]).log_db
    dtypes: dict[str, torch.dtype] = {}
    hooks = [getattr(model, f"conv_block{b}").register_forward_hook(
        lambda module, inputs, output, b=b: dtypes.__setitem__(f"block{b}", output.dtype)) for b in range(1, 7)]
    model.set_precision(torch.bfloat16)
    try:
        with torch.no_grad():
            model(log_db)
        forward_only = dict(dtypes)
        model(log_db.clone().requires_grad_(True))
        gradient_pass = dict(dtypes)
        model(log_db)  # grad enabled, but nothing asks for the input's gradient (training passes)
        parameters_only = dict(dtypes)
    finally:
        model.set_precision(None)
        for hook in hooks:
            hook.remove()
    exact = cnn14.GRADIENT_FLOAT32_BLOCKS
    assert set(forward_only.values()) == {torch.bfloat16}, forward_only
    assert set(parameters_only.values()) == {torch.bfloat16}, parameters_only
    assert [gradient_pass[f"block{b}"] for b in range(1, 7)] == [torch.float32] * exact + [torch.bfloat16] * (6 - exact)


def test_channels_last_passes_agree_with_the_default_layout_and_the_layout_comes_back(trained):
    model, feature, clips = trained
    log_db = feature(clips.waveforms[:6]).log_db
    with torch.no_grad():
        exact = model(log_db)
        with models.channels_last(model):
            assert model.conv_block2.conv1.weight.is_contiguous(memory_format=torch.channels_last)
            fast = model(log_db)
        with models.channels_last(model, enabled=False):
            assert model.conv_block2.conv1.weight.is_contiguous()
    assert torch.allclose(fast, exact, rtol=1e-4, atol=1e-4)
    assert all(p.is_contiguous() for p in model.parameters())
    with torch.inference_mode(), models.channels_last(model):  # as a scoring pass may enter it
        model(log_db)
    assert not any(p.is_inference() for p in model.parameters()), "a later backward pass must still work"


def test_each_clip_is_classified_once_as_it_is_and_once_per_masked_and_complementary_input(trained):
    model, feature, clips = trained
    rows: list[int] = []
    hook = model.register_forward_hook(lambda module, inputs, output: rows.append(len(inputs[0])))
    try:
        results = pipeline.explain_and_score(model, RandomAttribution(), feature, clips.subset(slice(0, 6)),
                                             mask_names=["bin", "minmax", "topK_30"], silence_level=-100.0,
                                             batch_size=4, eval_batch_size=64, device=CPU)
    finally:
        hook.remove()
    # 6 originals, then 3 masked and 3 complementary copies of each (the random explainer runs no
    # pass), then the inner points of each clip's deletion and insertion curves (audiointerp.curves)
    assert sum(rows) == 6 + 2 * 3 * 6 + (2 * CURVE_STEPS - 1) * 6, rows
    with torch.no_grad():
        expected = torch.softmax(model(feature(clips.waveforms[:6]).log_db), dim=1)
    assert torch.allclose(results.probabilities, expected, atol=1e-6)


# --- DeepSHAP under bf16: one layout on both sides, and refused while its sums are checked ---------


def _real_clips_and_tiny_cnn14(sample_wavs, n_classes: int = 3):
    """(log-mels (6, 1, 64, 501) of the six real shared clips; a tiny Cnn14 with their BatchNorm statistics)."""
    _, log_db, model = tiny_cnn14_on_real_clips(sample_wavs, n_classes)
    return log_db, model


def _block_dtypes_per_forward(model):
    """Hooks that record, for each forward of ``model``, the dtype of each conv block's output."""
    passes: list[list[torch.dtype]] = []
    handles = [model.register_forward_pre_hook(lambda module, inputs: passes.append([]))]
    handles += [block.register_forward_hook(lambda module, inputs, output: passes[-1].append(output.dtype))
                for block in model.conv_blocks]
    return passes, handles


def test_deep_shap_under_bf16_runs_the_clips_in_the_backgrounds_layout_and_adds_up_on_real_audio(sample_wavs):
    """The background goes forward as a pass differentiated by its input (bn0 and blocks 1-3 float32
    under bf16); the explained clips must too, or each multiplier compares a float32 activation with
    a bf16 one and the sums miss f(x) - E[f(background)] by more than the 0.01 tolerance even where
    the logits are small."""
    from audiointerp.explainers.shap import ADDITIVITY_TOLERANCE, DeepShap

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bf16 is emulated on an AVX2 CPU; a second thread only spins
    log_db, model = _real_clips_and_tiny_cnn14(sample_wavs)
    labels = torch.arange(6) % 3
    explainer = DeepShap(per_class=1, seed=0, check_additivity=False)  # its check refuses bf16 (next test)
    explainer.prepare(model, log_db, labels)
    passes, handles = _block_dtypes_per_forward(model)
    model.set_precision(torch.bfloat16)
    try:
        with torch.no_grad():
            target = model(log_db).argmax(1)
        passes.clear()
        attribution = explainer.attribute(model, log_db, target)
        # what the sums must equal, in the layout of a pass differentiated by its input
        logits = model(log_db.clone().requires_grad_()).detach()
        background_logits = model(explainer.background.clone().requires_grad_()).detach()
    finally:
        model.set_precision(None)
        torch.set_num_threads(threads)
        for handle in handles:
            handle.remove()
    exact = cnn14.GRADIENT_FLOAT32_BLOCKS
    layout = [torch.float32] * exact + [torch.bfloat16] * (6 - exact)
    assert passes[:2] == [layout, layout], "the clips' forward, then the background's, in one layout"
    rise = logits[torch.arange(6), target] - background_logits[:, target].mean(0)
    error = (attribution.sum(dim=(1, 2, 3)) - rise).abs()
    assert error.max() < ADDITIVITY_TOLERANCE, (error, rise)


def test_deep_shap_checking_its_sums_is_refused_under_bf16_in_one_line(sample_wavs):
    """bf16 rounds every feature map and logit to 8 bits: even in one layout, a classifier with
    logits of ordinary size (a trained one's: a few units) gets sums that miss by more than the 0.01
    tolerance, so the check could only fail mid-run; it is refused before anything runs."""
    from audiointerp.errors import AudioInterpError
    from audiointerp.explainers.shap import ADDITIVITY_TOLERANCE, DeepShap, _deeplift

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    log_db, model = _real_clips_and_tiny_cnn14(sample_wavs)
    with torch.no_grad():
        model.classifier.weight.mul_(20)  # logits of a few units, as after training
    labels = torch.arange(6) % 3
    checked = DeepShap(per_class=1, seed=0)
    checked.check(model)  # fp32: fine
    checked.prepare(model, log_db, labels)
    model.set_precision(torch.bfloat16)
    try:
        for call in (lambda: checked.check(model), lambda: checked.attribute(model, log_db[:1], labels[:1])):
            with pytest.raises(AudioInterpError) as refused:
                call()
            message = str(refused.value)
            assert "\n" not in message and "precision=bf16" in message and "precision=fp32" in message
            assert "explainer.check_additivity=false" in message
        DeepShap(per_class=1, seed=0, check_additivity=False).check(model)  # unchecked: allowed
        with torch.no_grad():
            target = model(log_db).argmax(1)
        attribution, clip_logit, background_logit = _deeplift(model, log_db, target.tolist(), checked.background, 3)
    finally:
        model.set_precision(None)
        torch.set_num_threads(threads)
    rise = clip_logit - background_logit
    assert rise.abs().max() > 2, rise
    assert (attribution.sum(dim=(1, 2, 3)) - rise).abs().max() > ADDITIVITY_TOLERANCE


def test_a_run_of_deep_shap_under_bf16_with_its_check_is_refused_before_training(tmp_path):
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "audiointerp.run", "experiment=smoke", "explainer=shap",
                             "precision=bf16", f"hydra.run.dir={run_dir}"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: explainer=shap: under precision=bf16") and "check_additivity=false" in last
    assert "Traceback" not in result.stderr and "epoch 1/" not in result.stderr
    assert not (run_dir / "model.pt").exists()
