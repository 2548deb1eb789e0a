"""Where a run computes: the ``device`` option's names, and where float64 arithmetic may run.

- :func:`resolve_device`: the ``device`` option -> a ``torch.device``, or one line naming what is
  accepted (:data:`DEVICE_NAMES`). Only these names: ``torch.device`` also takes ``meta``, ``xpu``
  and more, on which the runner has never run.
- :func:`float64_device` / :func:`as_float64`: the one home of float64 work on a model's outputs
  (metrics, LIME's probabilities, IG's completeness): on the tensor's own device where that device
  has float64, else on the CPU. Apple's MPS has no float64; asking it for a float64 tensor raises.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from audiointerp import resume
from audiointerp.errors import AudioInterpError

#: What ``device=`` accepts, as its error message lists it.
DEVICE_NAMES = "auto, cpu, cuda, cuda:N or mps"
_DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")

#: Device types without float64 arithmetic: float64 work on their tensors runs on the CPU.
NO_FLOAT64: tuple[str, ...] = ("mps",)


def resolve_device(name) -> torch.device:
    """The ``device`` option -> a torch.device; ``auto`` is the first CUDA device if there is one,
    else the CPU. Raises AudioInterpError (one line) for another name or a device this machine lacks.
    On CUDA, turns on deterministic kernels (``audiointerp.resume.use_deterministic_cuda_kernels``)."""
    text = str(name)
    if not _DEVICE_PATTERN.fullmatch(text):
        raise AudioInterpError(f"device={text}: expected {DEVICE_NAMES}")
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(text)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AudioInterpError(f"device={text}: CUDA is not available on this machine (use device=cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise AudioInterpError(f"device={text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        resume.use_deterministic_cuda_kernels()
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise AudioInterpError(f"device={text}: Apple's MPS is not available on this machine (use device=cpu or auto)")
    return device


def float64_device(device: torch.device | str) -> torch.device:
    """Where float64 work on tensors of ``device`` runs: ``device`` itself, or the CPU for a device
    type in :data:`NO_FLOAT64`."""
    device = torch.device(device)
    return torch.device("cpu") if device.type in NO_FLOAT64 else device


def as_float64(values: Tensor) -> Tensor:
    """``values`` detached as float64, on :func:`float64_device` of their device."""
    return values.detach().to(device=float64_device(values.device), dtype=torch.float64)
