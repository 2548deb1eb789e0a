"""``precision=bf16``: the model's passes under bf16 autocast (channels-last), everything around them float32;
and the pipeline's one forward of each clip as it is."""

from __future__ import annotations

import numpy as np
import scipy.stats
import torch

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
