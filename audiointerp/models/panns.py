"""Start Cnn14 from the PANNs AudioSet checkpoint (Kong et al. 2020, ``Cnn14_mAP=0.431.pth``).

PANNs' checkpoint is ``{"model": state_dict, ...}`` for a network that computes its own log-mel
spectrogram (``spectrogram_extractor``, ``logmel_extractor``) and ends in a 527-way AudioSet head
(``fc_audioset``). We compute features outside the model and train our own ``classifier`` head, so
those tensors are dropped. Every other tensor has our name; only the 3x3 conv kernels differ:
PANNs' act on (time, freq) inputs, ours on (freq, time), so they are transposed on their last two
axes. ``bn0`` normalises PANNs' 64 mel bins and is only usable by a 64-bin model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor

from audiointerp.errors import AudioInterpError
from audiointerp.models.cnn14 import CNN14_CHANNELS, Cnn14

log = logging.getLogger(__name__)

#: The 32 kHz, 64-mel AudioSet Cnn14 (mAP 0.431), Zenodo record 3987831.
PANNS_FILENAME = "Cnn14_mAP=0.431.pth"
PANNS_URL = "https://zenodo.org/record/3987831/files/Cnn14_mAP%3D0.431.pth?download=1"
PANNS_MD5 = "541141fa2ee191a88f24a3219fff024e"
PANNS_SAMPLE_RATE = 32000
PANNS_N_MELS = 64

#: Checkpoint tensors we never load: the in-model feature extractor and the AudioSet head.
PANNS_DROPPED_PREFIXES = ("spectrogram_extractor.", "logmel_extractor.", "fc_audioset.")


def fetch_panns_checkpoint(cache_dir: Path, *, url: str = PANNS_URL, md5: str = PANNS_MD5) -> Path:
    """``cache_dir/Cnn14_mAP=0.431.pth``, downloaded on first use and checked against ``md5``.

    A file already in the cache is verified, never silently trusted: a wrong checksum raises
    AudioInterpError instead of downloading over it, so a truncated or foreign file is noticed.
    """
    from audiointerp.data.download import fetch, verify_file

    target = Path(cache_dir) / PANNS_FILENAME
    if target.is_file():
        try:
            verify_file(target, md5=md5)
        except AudioInterpError as error:
            raise AudioInterpError(f"{_one_line(error)} (delete {target} to download the PANNs checkpoint again)") from None
        log.info("using the cached PANNs checkpoint %s", target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(fetch(url, target, md5=md5, what="PANNs Cnn14 AudioSet checkpoint"))


def load_panns_weights(model: Cnn14, path: Path, *, md5: str | None = PANNS_MD5) -> dict[str, list[str]]:
    """Copy a PANNs Cnn14 checkpoint's weights into ``model`` (in place).

    Args:
        model: a width-1.0 :class:`Cnn14`; with 64 bins it also gets PANNs' ``bn0``.
        path: the ``Cnn14_mAP=0.431.pth`` file (or any file in its layout when ``md5`` is None).
        md5: expected checksum of ``path``; None skips the check.

    Returns:
        ``{"loaded": [...], "skipped": [...], "missing": [...]}``: our keys that were filled, the
        checkpoint keys dropped on purpose, and our keys the checkpoint does not provide (the
        ``classifier`` head, plus ``bn0.*`` for a model not on 64 mel bins), each sorted.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioInterpError(f"PANNs checkpoint: no such file {path}")
    if md5 is not None:
        _verify_md5(path, md5)
    panns_state = _read_panns_state(path)

    model_state = model.state_dict()
    bn0_usable = model.n_bins == _bn0_size(panns_state, path)
    loaded: dict[str, Tensor] = {}
    skipped: list[str] = []
    for key, tensor in panns_state.items():
        if key.startswith(PANNS_DROPPED_PREFIXES) or (key.startswith("bn0.") and not bn0_usable):
            skipped.append(key)
            continue
        if key not in model_state:
            raise AudioInterpError(f"PANNs checkpoint {path}: unexpected tensor {key!r}; expected the Cnn14 (not Cnn10/Cnn6) checkpoint")
        if _is_conv_kernel(key, tensor):
            # PANNs' kernel[o, i, t, f] meets our input at [f, t]: swap the two spatial axes.
            tensor = tensor.transpose(-1, -2)
        expected = model_state[key]
        if tensor.shape != expected.shape:
            raise AudioInterpError(_shape_message(path, key, tensor, expected, panns_state, model))
        loaded[key] = tensor.to(expected.dtype).contiguous()

    missing = sorted(set(model_state) - set(loaded))
    allowed_missing = {k for k in model_state if k.startswith("classifier.") or (k.startswith("bn0.") and not bn0_usable)}
    unexpected_missing = [k for k in missing if k not in allowed_missing]
    if unexpected_missing:
        raise AudioInterpError(f"PANNs checkpoint {path} lacks {len(unexpected_missing)} Cnn14 tensors "
                               f"(first: {unexpected_missing[0]}); expected the complete {PANNS_FILENAME}")
    # strict=False: the classifier (and maybe bn0) keep their fresh initialisation by design.
    model.load_state_dict(loaded, strict=False)

    report = {"loaded": sorted(loaded), "skipped": sorted(skipped), "missing": missing}
    log.info("PANNs weights from %s: loaded %d tensors; skipped %d (%s); missing %d, newly initialised (%s)",
             path, len(report["loaded"]), len(skipped), ", ".join(report["skipped"]), len(missing), ", ".join(missing))
    return report


def _verify_md5(path: Path, md5: str) -> None:
    from audiointerp.data.download import verify_file

    try:
        verify_file(path, md5=md5)
    except AudioInterpError as error:
        message = _one_line(error)
        if str(path) not in message:
            message = f"PANNs checkpoint {path}: {message}"
        raise AudioInterpError(f"{message} (corrupted or not {PANNS_FILENAME}; delete it and download again)") from None


def _read_panns_state(path: Path) -> dict[str, Tensor]:
    """The ``model`` state dict of a PANNs checkpoint, loaded without executing pickled code."""
    try:
        # weights_only: the unpickler only builds tensors and plain containers, so a hostile or
        # foreign file fails here instead of running code.
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure to parse means "not a checkpoint"
        raise AudioInterpError(f"PANNs checkpoint {path} is not a readable PyTorch checkpoint "
                               f"({_load_failure_reason(error)[:200]})") from None
    state = payload.get("model") if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not state:
        keys = f" with keys {[str(k) for k in payload][:5]}" if isinstance(payload, dict) else ""
        raise AudioInterpError(f"PANNs checkpoint {path}: expected a dict with a 'model' state dict, "
                               f"got {type(payload).__name__}{keys}")
    bad = next((k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)), None)
    if bad is not None:
        raise AudioInterpError(f"PANNs checkpoint {path}: entry {bad!r} of 'model' is not a tensor")
    return state


def _bn0_size(panns_state: dict[str, Tensor], path: Path) -> int:
    weight = panns_state.get("bn0.weight")
    if weight is None or weight.ndim != 1:
        raise AudioInterpError(f"PANNs checkpoint {path}: no 1-d 'bn0.weight'; expected the Cnn14 checkpoint {PANNS_FILENAME}")
    return int(weight.shape[0])


def _is_conv_kernel(key: str, tensor: Tensor) -> bool:
    return key.startswith("conv_block") and key.endswith(".weight") and tensor.ndim == 4


def _shape_message(path: Path, key: str, tensor: Tensor, expected: Tensor, panns_state: dict[str, Tensor],
                   model: Cnn14) -> str:
    checkpoint_width = panns_state["conv_block1.conv1.weight"].shape[0] / CNN14_CHANNELS[0] \
        if "conv_block1.conv1.weight" in panns_state else 1.0
    model_width = model.conv_block1.conv1.out_channels / CNN14_CHANNELS[0]
    return (f"PANNs checkpoint {path} is for model.width={checkpoint_width:g}, the model has width {model_width:g} "
            f"({key}: checkpoint {tuple(tensor.shape)} vs model {tuple(expected.shape)}); set model.width={checkpoint_width:g}")


def _load_failure_reason(error: BaseException) -> str:
    """The informative line of a torch.load failure: for a refused pickle, the global it refused."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    refused = [line for line in lines if "WeightsUnpickler error" in line]
    if refused:  # drop torch's advice to allow-list the global: this loader never does
        return refused[0].split(" Please use")[0]
    kind = type(error).__name__
    return f"{kind}: {lines[0]}" if lines and lines[0] != kind else kind


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
