"""Explaining clip after clip must not grow memory (the pipeline explains hundreds in one run).

Each explainer explains 50 clips one at a time with one prepared explainer, as the pipeline
does. After 10 warm-up clips, two things must stay flat up to clip 50:

- Python-level allocations still alive (tracemalloc, started after the warm-up; it sees NumPy
  arrays, hook lists, explanation objects, not torch's own buffers), and
- the process's resident memory (psutil), which also sees torch tensors and autograd graphs.

Thresholds come from measurement (tiny Cnn14 on 32 x 64 inputs, RSS read after malloc_trim):
without a leak RSS moved by < 0.4 MB between clips 10 and 50 and tracemalloc kept < 0.2 MB.
Deliberate leaks, per clip: keeping a 1 MB tensor grew RSS by 40 MB; keeping a small autograd
graph (a conv + ReLU on 20 inputs, ~0.8 MB) by 32 MB; keeping one clip's perturbed LIME images
(2.4 MB of NumPy) grew both measures by 94 MB.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import tracemalloc
from collections.abc import Callable

import psutil
import pytest
import torch
from torch import Tensor

from audiointerp.explainers.base import Explainer
from audiointerp.explainers.captum_methods import IntegratedGradients, Occlusion
from audiointerp.explainers.lime import Lime
from audiointerp.explainers.shap import DeepShap, GradientShap
from audiointerp.models import Cnn14

N_BINS, N_FRAMES, N_CLASSES = 32, 64, 5
WARM_UP_CLIPS, TOTAL_CLIPS = 10, 50
MAX_RSS_GROWTH_MB = 8.0
MAX_PYTHON_GROWTH_MB = 1.0

EXPLAINERS: dict[str, Callable[[], Explainer]] = {
    "lime": lambda: Lime(num_samples=50, batch_size=50, random_state=0),
    "shap": lambda: DeepShap(per_class=2, seed=0),
    "shap_gradient": lambda: GradientShap(per_class=2, seed=0, n_samples=20, batch_size=20),
    "integrated_gradients": lambda: IntegratedGradients(n_steps=8),
    "occlusion": lambda: Occlusion(patch=(8, 16), stride=(8, 16)),
}


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


_LIBC = _glibc()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """See tests/test_explainers_more.py: a second thread only spin-waits on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _resident_mb() -> float:
    """RSS after a garbage collection and, on glibc, after returning free heap pages to the system:
    without that, freed blocks of the warm-up would hide the first tens of MB of a leak."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    return psutil.Process().memory_info().rss / 2**20


def memory_growth_mb(explain_clip: Callable[[int], object]) -> tuple[float, float]:
    """Call ``explain_clip(i)`` for i < TOTAL_CLIPS -> (RSS growth, Python allocation growth) in MB
    between the end of the warm-up and the last clip."""
    for index in range(WARM_UP_CLIPS):
        explain_clip(index)
    rss_after_warm_up = _resident_mb()
    tracemalloc.start()
    try:
        for index in range(WARM_UP_CLIPS, TOTAL_CLIPS):
            explain_clip(index)
        gc.collect()
        python_growth = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return _resident_mb() - rss_after_warm_up, python_growth / 2**20


def clip_explainer(name: str) -> Callable[[int], object]:
    """A function explaining clip i (a fresh random spectrogram) with one prepared explainer."""
    torch.manual_seed(0)
    model = Cnn14(n_bins=N_BINS, n_classes=N_CLASSES, width=1 / 16).eval()
    explainer = EXPLAINERS[name]()
    if explainer.needs_training_data:
        explainer.prepare(model, torch.randn(20, 1, N_BINS, N_FRAMES) * 10 - 40, torch.arange(20) % N_CLASSES)
    generator = torch.Generator().manual_seed(1)

    def explain_clip(index: int) -> Tensor:
        clip = torch.randn(1, 1, N_BINS, N_FRAMES, generator=generator) * 10 - 40
        return explainer.attribute(model, clip, torch.tensor([index % N_CLASSES]))

    return explain_clip


@pytest.mark.parametrize("name", list(EXPLAINERS))
def test_explaining_clip_after_clip_does_not_grow_memory(name):
    rss_growth, python_growth = memory_growth_mb(clip_explainer(name))
    assert python_growth < MAX_PYTHON_GROWTH_MB, f"{name}: Python allocations grew {python_growth:.2f} MB over 40 clips"
    assert rss_growth < MAX_RSS_GROWTH_MB, f"{name}: RSS grew {rss_growth:.1f} MB over 40 clips"
