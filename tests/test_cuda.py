"""The CUDA paths: the model's passes, bf16 autocast and channels-last on a GPU, deterministic
kernels (same inputs, same bytes), and explainers and scoring on the GPU against the CPU.

Every test is marked ``cuda``: it runs wherever torch sees a GPU (``python -m pytest -m cuda``,
``scripts/gpu_check.py``) and is skipped, with the reason shown, elsewhere. Each is a check of a
``device`` (``check_*``) called with ``cuda``, so the same checks can be run on the CPU to see
that they hold there (the GPU is compared with the CPU, which is then compared with itself).
"""

from __future__ import annotations

import pytest
import torch
from tiny_cnn14 import tiny_cnn14_on_real_clips

from audiointerp import models, pipeline, resume
from audiointerp.data import ClipSet
from audiointerp.explainers.captum_methods import IntegratedGradients
from audiointerp.explainers.lime import Lime
from audiointerp.explainers.saliency import Saliency
from audiointerp.explainers.shap import DeepShap
from audiointerp.features import LogMel

CPU = torch.device("cpu")
MASKS = ["bin", "minmax", "topK_30"]


def real_clips_and_model(sample_wavs, n_classes: int = 3):
    """The six shared clips (on the CPU), their log-mels and a tiny Cnn14 with their BatchNorm statistics."""
    return tiny_cnn14_on_real_clips(sample_wavs, n_classes)


def check_forward_passes(device: torch.device, log_db: torch.Tensor, model) -> None:
    """fp32 on ``device`` equals the CPU's to float rounding (cuDNN may use TF32, about 1e-3 relative),
    channels-last too; bf16 autocast gives float32 logits near them with the same classes."""
    with torch.no_grad():
        exact = model(log_db)
        on_device = model.to(device)(log_db.to(device))
        with models.channels_last(model):
            channels_last = model(log_db.to(device))
        model.set_precision(torch.bfloat16)
        try:
            fast = model(log_db.to(device))
        finally:
            model.set_precision(None)
            model.to(CPU)
    assert on_device.device.type == device.type and fast.dtype == torch.float32
    spread = (exact.max() - exact.min()).item()
    assert (on_device.cpu() - exact).abs().max() < 0.01 * spread
    assert (channels_last.cpu() - exact).abs().max() < 0.01 * spread
    assert (fast.cpu() - exact).abs().max() < 0.05 * spread
    assert torch.equal(fast.argmax(1).cpu(), exact.argmax(1))


def check_pipeline_is_deterministic_and_matches_the_cpu(device: torch.device, waveforms, model) -> None:
    """Saliency explained and scored twice on ``device`` with the run's deterministic kernels: the
    same bytes both times, and the CPU's numbers to float rounding."""
    labels = torch.arange(len(waveforms)) % 3
    clips = ClipSet(waveforms=waveforms, labels=labels, clip_ids=[f"clip{i}" for i in range(len(waveforms))],
                    class_names=["a", "b", "c"], sample_rate=32000)

    def explain(on: torch.device):
        results = pipeline.explain_and_score(model, Saliency(), LogMel().to(on), clips, mask_names=MASKS,
                                             silence_level=-100.0, batch_size=3, eval_batch_size=32, device=on,
                                             channels_last=True)
        model.to(CPU)
        return results

    if device.type == "cuda":
        resume.use_deterministic_cuda_kernels()
    first, second, cpu = explain(device), explain(device), explain(CPU)
    assert torch.equal(first.attributions, second.attributions)
    assert torch.equal(first.probabilities, second.probabilities)
    for name in MASKS:
        for column, values in first.metrics[name].items():
            assert torch.equal(values, second.metrics[name][column]), (name, column)
    torch.testing.assert_close(first.probabilities, cpu.probabilities, rtol=1e-2, atol=1e-3)
    assert torch.equal(first.predicted, cpu.predicted)


def check_explainers_match_the_cpu(device: torch.device, log_db: torch.Tensor, model) -> None:
    """DeepSHAP adds up on ``device`` (its own check, fp32) and gives the CPU's attributions; LIME
    and Integrated Gradients give the CPU's up to float rounding (within 2 % in norm)."""
    labels = torch.arange(len(log_db)) % 3
    with torch.no_grad():
        target = model(log_db[:2]).argmax(1)
    explainers = {"shap": lambda: DeepShap(per_class=1, seed=0),
                  "lime": lambda: Lime(num_samples=40, batch_size=20, random_state=0),
                  "integrated_gradients": lambda: IntegratedGradients(n_steps=16)}
    for name, make in explainers.items():
        maps = {}
        for on in (CPU, device):
            model.to(on)
            explainer = make()
            if explainer.needs_training_data:
                explainer.prepare(model, log_db.to(on), labels.to(on))
            maps[on.type] = explainer.attribute(model, log_db[:2].to(on), target.to(on)).cpu()
        model.to(CPU)
        error = ((maps[device.type] - maps["cpu"]).norm() / maps["cpu"].norm()).item()
        assert error < 0.02, (name, error)


@pytest.fixture(scope="module")
def real(sample_wavs):
    return real_clips_and_model(sample_wavs)


@pytest.mark.cuda
def test_cuda_forward_passes_fp32_channels_last_and_bf16(real):
    _, log_db, model = real
    check_forward_passes(torch.device("cuda"), log_db, model)


@pytest.mark.cuda
def test_cuda_explaining_and_scoring_is_deterministic_and_matches_the_cpu(real):
    waveforms, _, model = real
    check_pipeline_is_deterministic_and_matches_the_cpu(torch.device("cuda"), waveforms, model)


@pytest.mark.cuda
def test_cuda_explainers_match_the_cpu(real):
    _, log_db, model = real
    check_explainers_match_the_cpu(torch.device("cuda"), log_db, model)
