"""The ``device`` option's names, and float64 work kept off devices without float64 (Apple's MPS).

No MPS hardware is needed: torch's fake tensors carry a device (here ``mps``) and a dtype through
every operation without computing, and a dispatch mode records each operation's outputs, so a
test sees every tensor a function would make on the device.
"""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from audiointerp import devices, localization, metrics
from audiointerp.errors import AudioInterpError
from audiointerp.explainers.captum_methods import completeness_error
from audiointerp.explainers.lime import target_probabilities
from audiointerp.models import Cnn14

MPS = torch.device("mps")


# --- device names ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gpu", "meta", "xpu", "cpu:0", "cuda:", "cuda:x", "CUDA", "", "mps:0", 3])
def test_a_device_name_outside_the_list_is_refused_in_one_line_that_lists_the_accepted_ones(name):
    with pytest.raises(AudioInterpError) as refused:
        devices.resolve_device(name)
    assert str(refused.value) == f"device={name}: expected auto, cpu, cuda, cuda:N or mps"


def test_accepted_names_resolve_or_say_the_machine_lacks_the_device():
    assert devices.resolve_device("cpu") == torch.device("cpu")
    assert devices.resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for name, available in (("cuda", torch.cuda.is_available()), ("cuda:0", torch.cuda.is_available()),
                            ("mps", torch.backends.mps.is_available())):
        if available:
            assert devices.resolve_device(name).type == name.split(":")[0]
        else:
            with pytest.raises(AudioInterpError, match=rf"^device={name}: .* not available on this machine"):
                devices.resolve_device(name)
    with pytest.raises(AudioInterpError, match=r"^device=cuda:99: this machine has \d+ CUDA device|not available"):
        devices.resolve_device("cuda:99")


# --- float64 off MPS ---------------------------------------------------------------------------


def test_float64_runs_on_the_tensors_device_unless_that_device_has_none():
    assert devices.float64_device(MPS) == torch.device("cpu")
    assert devices.float64_device("cpu") == torch.device("cpu")
    assert devices.float64_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    values = torch.tensor([1.0, 2.0])
    assert devices.as_float64(values).dtype == torch.float64 and devices.as_float64(values).device.type == "cpu"


class _Recorder(TorchDispatchMode):
    """Records (operation, device type, dtype) of every tensor every operation returns."""

    def __init__(self) -> None:
        super().__init__()
        self.outputs: list[tuple[str, str, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for value in result if isinstance(result, (tuple, list)) else [result]:
            if isinstance(value, torch.Tensor):
                self.outputs.append((str(func), value.device.type, value.dtype))
        return result

    def float64_on(self, device_type: str) -> list[str]:
        return [op for op, kind, dtype in self.outputs if kind == device_type and dtype == torch.float64]


def test_metrics_localisation_and_ig_completeness_do_their_float64_work_off_mps():
    with FakeTensorMode(allow_non_fake_inputs=True):
        p, p_masked, p_unmasked = (torch.rand(3, 5, device=MPS).softmax(dim=1) for _ in range(3))
        mask = torch.rand(3, 1, 64, 501, device=MPS)
        evidence = torch.rand(3, 1, 64, 501, device=MPS) > 0.5
        delta, change = torch.rand(3, device=MPS), torch.rand(3, device=MPS)
        with _Recorder() as recorded:
            scores = metrics.score(p, p_masked, p_unmasked, mask)
            statistics = metrics.mask_statistics(mask)
            share = localization.evidence_share(evidence)
            error = completeness_error(delta, change)
    assert recorded.float64_on("mps") == []
    assert recorded.float64_on("cpu"), "the float64 work must have happened, on the CPU"
    for values in (*scores.values(), *statistics.values()):
        assert values.device.type == "mps" and values.dtype == torch.float32  # where the caller's tensors are
    assert share.dtype == error.dtype == torch.float32


def _on_fake(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` with every parameter and buffer replaced by a fake tensor of its shape on ``device``
    (``module.to`` would ask this torch build for the device's support); inside a FakeTensorMode only."""
    for module in model.modules():
        for name, parameter in list(module.named_parameters(recurse=False)):
            setattr(module, name, torch.nn.Parameter(torch.empty(parameter.shape, device=device)))
        for name, buffer in list(module.named_buffers(recurse=False)):
            module._buffers[name] = torch.empty(buffer.shape, dtype=buffer.dtype, device=device)
    return model


def test_lime_hands_float32_probabilities_from_the_models_device_to_the_cpu():
    """The model's device is the meta device here: fake MPS tensors cannot be indexed by a tensor
    (that needs MPS support in this torch build), fake meta ones can, and LIME's forwards are the
    same code whatever the device."""
    device = torch.device("meta")
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = _on_fake(Cnn14(n_bins=64, n_classes=4, width=1 / 16).eval(), device)
        on, off = torch.rand(64, 101, device=device), torch.rand(64, 101, device=device)
        segment_of_bin = torch.randint(0, 6, (64, 101), device=device)
        kept = torch.rand(5, 6, device=device) > 0.5
        with _Recorder() as recorded:
            probabilities = target_probabilities(model, on, off, segment_of_bin, kept, label=2, batch_size=2)
    assert recorded.float64_on("meta") == []
    assert any(kind == "meta" and "conv" in op for op, kind, _ in recorded.outputs), "the model ran there"
    assert probabilities.shape == (5,) and probabilities.device.type == "cpu" and probabilities.dtype == torch.float32
