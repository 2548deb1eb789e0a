"""Loading PANNs' Cnn14 checkpoint: key mapping, kernel transposition, checksums, hostile files.

The real ``Cnn14_mAP=0.431.pth`` (320 MB) is not downloaded here. Instead a session fixture writes a
file in exactly its layout and shapes: a full-width Cnn14 state dict renamed/transposed back to
PANNs' (time, freq) kernels, plus the in-model feature extractor and the 527-way AudioSet head.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from audiointerp import train
from audiointerp.errors import AudioInterpError
from audiointerp.models import Cnn14
from audiointerp.models.panns import PANNS_FILENAME, fetch_panns_checkpoint, load_panns_weights

EXTRACTOR_KEYS = ("spectrogram_extractor.stft.conv_real.weight", "spectrogram_extractor.stft.conv_imag.weight",
                  "logmel_extractor.melW")
AUDIOSET_HEAD_KEYS = ("fc_audioset.bias", "fc_audioset.weight")
BN0_KEYS = ("bn0.bias", "bn0.num_batches_tracked", "bn0.running_mean", "bn0.running_var", "bn0.weight")
CLASSIFIER_KEYS = ("classifier.bias", "classifier.weight")


def panns_layout_state(model: Cnn14, generator: torch.Generator) -> dict[str, Tensor]:
    """PANNs' ``model`` state dict for the weights of our 64-bin ``model``, with random BN statistics.

    Conv kernels go back to PANNs' (time, freq) orientation; our classifier is replaced by
    ``fc_audioset`` (527, C) and the torchlibrosa extractor tensors of the 32 kHz model are added
    (STFT kernels (513, 1, 1024), mel filter bank (n_fft/2 + 1, 64) = (513, 64)).
    """
    state: dict[str, Tensor] = {}
    for key, tensor in model.state_dict().items():
        if key.startswith("classifier."):
            continue
        if key.endswith("num_batches_tracked"):
            tensor = torch.tensor(660000)
        elif key.endswith("running_var"):
            tensor = torch.rand(tensor.shape, generator=generator) + 0.5
        elif "bn" in key or key.endswith("bias"):
            # fresh BN is ones/zeros and fc1.bias zeros: make every tensor distinguishable.
            tensor = torch.randn(tensor.shape, generator=generator)
        elif tensor.ndim == 4:
            tensor = tensor.transpose(-1, -2).contiguous()
        state[key] = tensor.clone()
    width = state["fc1.weight"].shape[0]
    state["spectrogram_extractor.stft.conv_real.weight"] = torch.randn(513, 1, 1024, generator=generator)
    state["spectrogram_extractor.stft.conv_imag.weight"] = torch.randn(513, 1, 1024, generator=generator)
    state["logmel_extractor.melW"] = torch.rand(513, 64, generator=generator)
    state["fc_audioset.weight"] = torch.randn(527, width, generator=generator)
    state["fc_audioset.bias"] = torch.randn(527, generator=generator)
    return state


def write_panns_checkpoint(path: Path, width: float) -> str:
    """Write a PANNs-layout checkpoint of a ``width`` Cnn14 to ``path``; returns its md5."""
    torch.manual_seed(1234)
    state = panns_layout_state(Cnn14(n_bins=64, n_classes=527, width=width), torch.Generator().manual_seed(5678))
    torch.save({"iteration": 660000, "model": state}, path)
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def full_checkpoint(tmp_path_factory) -> tuple[Path, str]:
    """(path, md5) of a full-width PANNs-layout checkpoint; the only full-size file of the session."""
    path = tmp_path_factory.mktemp("panns_full") / PANNS_FILENAME
    return path, write_panns_checkpoint(path, width=1.0)


@pytest.fixture(scope="session")
def full_reference(full_checkpoint) -> dict[str, Tensor]:
    """The full checkpoint's tensors, memory-mapped rather than read into memory a second time."""
    return torch.load(full_checkpoint[0], map_location="cpu", weights_only=True, mmap=True)["model"]


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory) -> tuple[Path, str]:
    """(path, md5) of a width-1/16 PANNs-layout checkpoint, for the checks that fail before shapes matter."""
    path = tmp_path_factory.mktemp("panns_small") / PANNS_FILENAME
    return path, write_panns_checkpoint(path, width=1 / 16)


def expected_loaded_keys(reference: dict[str, Tensor], *, with_bn0: bool) -> list[str]:
    dropped = set(EXTRACTOR_KEYS) | set(AUDIOSET_HEAD_KEYS) | (set() if with_bn0 else set(BN0_KEYS))
    return sorted(k for k in reference if k not in dropped)


def panns_conv_block(x_time_freq: Tensor, reference: dict[str, Tensor], block: str) -> Tensor:
    """PANNs' ConvBlock (inference) on (B, C, T, F) with the checkpoint's own (time, freq) kernels."""
    for conv, bn in (("conv1", "bn1"), ("conv2", "bn2")):
        x_time_freq = F.conv2d(x_time_freq, reference[f"{block}.{conv}.weight"], padding=1)
        x_time_freq = F.batch_norm(x_time_freq, reference[f"{block}.{bn}.running_mean"],
                                   reference[f"{block}.{bn}.running_var"], reference[f"{block}.{bn}.weight"],
                                   reference[f"{block}.{bn}.bias"], training=False)
        x_time_freq = F.relu(x_time_freq)
    return F.avg_pool2d(x_time_freq, 2)


def test_mel_model_loads_everything_but_extractor_and_audioset_head(full_checkpoint, full_reference):
    path, md5 = full_checkpoint
    model = Cnn14(n_bins=64, n_classes=50, width=1.0).eval()
    classifier_before = model.classifier.weight.detach().clone()

    report = load_panns_weights(model, path, md5=md5)

    assert report["skipped"] == sorted(EXTRACTOR_KEYS + AUDIOSET_HEAD_KEYS)
    assert report["missing"] == list(CLASSIFIER_KEYS)
    assert report["loaded"] == expected_loaded_keys(full_reference, with_bn0=True)
    assert set(BN0_KEYS) <= set(report["loaded"])
    assert len([k for k in report["loaded"] if k.endswith("conv1.weight")]) == 6
    state = model.state_dict()
    for key in report["loaded"]:
        expected = full_reference[key]
        if expected.ndim == 4:
            expected = expected.transpose(-1, -2)
        assert torch.equal(state[key], expected), key
    assert torch.equal(model.classifier.weight, classifier_before), "the new head must keep its own initialisation"

    # The loaded block on a (F, T) input computes what PANNs' block computes on the (T, F) input.
    kernel = full_reference["conv_block1.conv1.weight"]
    assert not torch.allclose(kernel, kernel.transpose(-1, -2)), "symmetric kernels could not reveal a missing transpose"
    x_freq_time = torch.randn(2, 1, 64, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.conv_block1(x_freq_time)
        theirs = panns_conv_block(x_freq_time.transpose(-1, -2), full_reference, "conv_block1").transpose(-1, -2)
    assert ours.shape == (2, 64, 32, 24)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_stft_model_keeps_its_own_bn0_and_still_loads_the_convs(full_checkpoint, full_reference):
    path, md5 = full_checkpoint
    model = Cnn14(n_bins=257, n_classes=10, width=1.0).eval()
    bn0_before = {k: v.clone() for k, v in model.bn0.state_dict().items()}

    report = load_panns_weights(model, path, md5=md5)

    assert report["skipped"] == sorted(EXTRACTOR_KEYS + AUDIOSET_HEAD_KEYS + BN0_KEYS)
    assert report["missing"] == sorted(BN0_KEYS + CLASSIFIER_KEYS)
    assert report["loaded"] == expected_loaded_keys(full_reference, with_bn0=False)
    for key, value in model.bn0.state_dict().items():
        assert torch.equal(value, bn0_before[key]), f"bn0.{key} changed"
    assert model.bn0.weight.shape == (257,)
    assert torch.equal(model.conv_block6.conv2.weight, full_reference["conv_block6.conv2.weight"].transpose(-1, -2))
    assert torch.equal(model.fc1.bias, full_reference["fc1.bias"])


def test_narrow_model_is_refused_with_the_width_to_use(full_checkpoint):
    path, md5 = full_checkpoint
    model = Cnn14(n_bins=64, n_classes=10, width=1 / 16)
    before = model.conv_block1.conv1.weight.detach().clone()
    with pytest.raises(AudioInterpError, match=r"is for model\.width=1, the model has width 0\.0625") as error:
        load_panns_weights(model, path, md5=None)
    assert "\n" not in str(error.value)
    assert torch.equal(model.conv_block1.conv1.weight, before), "a refused checkpoint must not be half-loaded"


def test_small_checkpoint_loads_into_matching_width(small_checkpoint):
    path, md5 = small_checkpoint
    report = load_panns_weights(Cnn14(n_bins=64, n_classes=3, width=1 / 16), path, md5=md5)
    assert report["missing"] == list(CLASSIFIER_KEYS)


def test_corrupted_checkpoint_is_refused_by_md5(small_checkpoint, tmp_path):
    path, md5 = small_checkpoint
    corrupted = tmp_path / PANNS_FILENAME
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupted.write_bytes(bytes(data))
    model = Cnn14(n_bins=64, n_classes=3, width=1 / 16)
    with pytest.raises(AudioInterpError, match=re.escape(str(corrupted))) as error:
        load_panns_weights(model, corrupted, md5=md5)
    assert "\n" not in str(error.value)


def _leave_marker(marker: str) -> None:
    """Would run if the checkpoint were unpickled unsafely."""
    Path(marker).write_text("unpickling executed code")


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return _leave_marker, (self.marker,)


def _random_bytes(path: Path) -> None:
    path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(3),
                                   dtype=torch.uint8).numpy().tobytes())


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _pickle_that_runs_code(path: Path) -> None:
    torch.save({"model": {"conv_block1.conv1.weight": _RunsCodeWhenUnpickled(path.with_suffix(".marker"))}}, path)


def _our_own_checkpoint_format(path: Path) -> None:
    train.save_checkpoint(Cnn14(n_bins=64, n_classes=3, width=1 / 16), path, {"seed": 0})


@pytest.mark.parametrize("write", [_random_bytes, _empty, _pickle_that_runs_code, _our_own_checkpoint_format])
def test_file_that_is_not_a_panns_checkpoint_is_refused(write, tmp_path):
    path = tmp_path / "not_panns.pth"
    write(path)
    with pytest.raises(AudioInterpError, match=re.escape(str(path))) as error:
        load_panns_weights(Cnn14(n_bins=64, n_classes=3, width=1 / 16), path, md5=None)
    assert "\n" not in str(error.value)
    assert not path.with_suffix(".marker").exists(), "loading ran code from the file"


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(AudioInterpError, match="no such file"):
        load_panns_weights(Cnn14(n_bins=64, n_classes=3, width=1 / 16), tmp_path / PANNS_FILENAME)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails loudly, so a test proves no download happened."""

    def refuse(*args, **kwargs):
        raise OSError("network access attempted in a test that must not download")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_fetch_returns_cached_file_with_right_md5(small_checkpoint, tmp_path, no_network):
    path, md5 = small_checkpoint
    cached = tmp_path / PANNS_FILENAME
    shutil.copyfile(path, cached)
    assert fetch_panns_checkpoint(tmp_path, md5=md5) == cached
    assert cached.read_bytes() == path.read_bytes()


def test_fetch_refuses_cached_file_with_wrong_md5(small_checkpoint, tmp_path, no_network):
    path, _ = small_checkpoint
    cached = tmp_path / PANNS_FILENAME
    shutil.copyfile(path, cached)
    # Our stand-in file is not the real checkpoint, so the default (real) md5 must reject it.
    with pytest.raises(AudioInterpError, match=re.escape(str(cached))) as error:
        fetch_panns_checkpoint(tmp_path)
    assert "\n" not in str(error.value) and "network access attempted" not in str(error.value)
    assert cached.read_bytes() == path.read_bytes(), "the cached file was replaced"
