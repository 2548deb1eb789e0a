"""``model=ast``: the Audio Spectrogram Transformer (Gong et al. 2021) of Hugging Face ``transformers``.

Needs the optional extra ``pip install -e ".[hf]"``. The network is ``transformers``'
``ASTForAudioClassification``; this class brings it to the classifier contract
(``audiointerp.models.base``):

- Input: the run's (B, 1, F, T) spectrogram, optionally normalised per bin (``input_norm``,
  Cnn14's ``bn0``), is cut or padded (with ``pad_value``, silence) to the network's ``max_length``
  frames and transposed to AST's (B, T, F) frames x bins. ``num_mel_bins`` is the feature's F,
  ``max_length`` the run's T (the feature's frames in ``data.duration_s``) unless set.
- Weights: a small AST (``hidden_size``, ``num_hidden_layers``, ... below) trained from scratch by
  the runner, or ``pretrained=<hub id or folder>``: a checkpoint in the hub's layout
  (``config.json`` and ``model.safetensors``, as ``save_pretrained`` writes them) loaded with
  ``from_pretrained``; when its head has another number of classes than the data, a new head is
  made (and said so in the log) and the runner fine-tunes the whole network.
- Layers by name: the network's ``named_modules()`` (``audio_spectrogram_transformer.layers.3``,
  ``...layers.3.layernorm_before``, ``classifier``). A module that outputs tokens (B, 2 + f·t, D) or
  (B, f·t, D) is put on the patch grid by :meth:`AST.as_map`: the CLS and distillation tokens are
  dropped and the patch tokens reshaped to (B, D, f, t), frequency patches by time patches, as the
  patch embedding flattened them; Grad-CAM and L-MAC then use it as a conv map.
- Grad-CAM's default layer is the last encoder layer's ``layernorm_before``: the last layer's own
  output reaches the logits only through its CLS and distillation tokens, so its patch tokens'
  gradients are zero; the tokens that layer's attention reads are the deepest that carry them.
- Sanity checks: the head, then the encoder layers from the top down, then the patch embedding.
- DeepSHAP is refused (attention multiplies activations, LayerNorm divides by them: no DeepLIFT
  rule covers them); channels-last is a no-op (no convolutional feature maps past the patch
  embedding); bf16 autocast runs as for any classifier.
"""

from __future__ import annotations

import hashlib
import json
import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiointerp.errors import AudioInterpError, expect_int
from audiointerp.masks import SILENCE_DB
from audiointerp.models.base import LISTENED_GRIDS, Classifier, module_kind
from audiointerp.models.cnn14 import BinNorm

log = logging.getLogger(__name__)

#: How to install what ``model=ast`` needs.
INSTALL_HINT = 'pip install -e ".[hf]"'
#: ``input_norm``: ``bins`` (each frequency bin normalised by batch statistics, as Cnn14's ``bn0``;
#: learnt by the runner's training) or ``none`` (the feature is already normalised as the
#: checkpoint expects, ``feature=ast_fbank``); null: ``bins`` from scratch, ``none`` with ``pretrained``.
INPUT_NORMS = ("bins", "none")
#: Tokens before the patch tokens in AST's sequence: CLS and distillation.
LEADING_TOKENS = 2


def _transformers():
    """The ``transformers`` module, or one line naming the extra that installs it."""
    try:
        import transformers
    except ImportError:
        raise AudioInterpError(f"model=ast: needs the Hugging Face transformers package, which is not installed; "
                               f"install the extra: {INSTALL_HINT}") from None
    return transformers


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:200]


class AST(Classifier):
    """The Audio Spectrogram Transformer: (B, 1, F, T) dB spectrogram -> (B, n_classes) logits.

    Args:
        n_bins: F, the feature's bins (AST's ``num_mel_bins``; null: ``feature``'s); given by the runner.
        n_classes: the head's size; given by the runner.
        feature: the run's feature (given by the runner): its bins, and its frames in ``duration_s``.
        duration_s: the clips' length (``${data.duration_s}``).
        max_length: frames the network reads (null: ``feature``'s frames in ``duration_s``, T); inputs
            are cut or padded to it.
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, patch_size,
            frequency_stride, time_stride, dropout: the ``ASTConfig`` of a network trained from
            scratch (``dropout`` is its hidden and attention dropout); ignored with ``pretrained``.
        pretrained: null, or a hub id or folder of a checkpoint in the hub's layout.
        input_norm: one of :data:`INPUT_NORMS`, or null (see there).
        pad_value: the level of the frames added to inputs shorter than ``max_length``, in the
            feature's units (null: the feature's silence level; ASTFeatureExtractor pads with 0.4670,
            the normalised log-fbank 0, which a checkpoint saw in training).
    """

    #: No convolutional feature maps past the patch embedding: ``channels_last`` leaves it be.
    channels_last_useful = False
    deeplift_refusal = ("the Audio Spectrogram Transformer multiplies activations in its attention and divides "
                        "by them in LayerNorm, which no DeepLIFT rule covers, so DeepSHAP's attributions would "
                        "not add up")

    def __init__(self, n_bins: int | None = None, n_classes: int = 527, feature=None, duration_s: float | None = None,
                 max_length: int | None = None, hidden_size: int = 64, num_hidden_layers: int = 2,
                 num_attention_heads: int = 4, intermediate_size: int = 128, patch_size: int = 16,
                 frequency_stride: int = 8, time_stride: int = 16, dropout: float = 0.0,
                 pretrained: str | None = None, input_norm: str | None = None, pad_value: float | None = None) -> None:
        super().__init__()
        transformers = _transformers()
        if input_norm is not None and input_norm not in INPUT_NORMS:
            raise AudioInterpError(f"model.input_norm: expected one of {', '.join(INPUT_NORMS)} or null, got {input_norm!r}")
        if pad_value is None:  # the feature's silence (-100 dB; feature=ast_fbank: -1.2776 in its units)
            pad_value = getattr(feature, "silence_level", SILENCE_DB)
        if isinstance(pad_value, bool) or not isinstance(pad_value, (int, float)):
            raise AudioInterpError(f"model.pad_value: expected a level in the feature's units or null, got {pad_value!r}")
        if n_bins is None and feature is None:
            raise AudioInterpError("model=ast: needs the feature's bins (n_bins, or the run's feature)")
        n_bins = n_bins if n_bins is not None else feature.n_bins
        self.n_bins = expect_int("n_bins", n_bins, 1)
        self.pad_value = float(pad_value)
        self.pretrained = pretrained
        if pretrained is None:
            length = max_length
            if length is None and feature is not None and duration_s is not None:
                if isinstance(duration_s, bool) or not isinstance(duration_s, (int, float)) or not duration_s > 0:
                    raise AudioInterpError(f"model.duration_s: expected the clips' length in seconds, got {duration_s!r}")
                length = feature.n_frames(int(round(duration_s * feature.sample_rate)))
            if length is None:
                raise AudioInterpError("model.max_length: the frames per clip are unknown here (no feature and "
                                       "model.duration_s); set model.max_length to the spectrogram's T")
            for option, value in (("max_length", length), ("hidden_size", hidden_size),
                                  ("num_hidden_layers", num_hidden_layers), ("num_attention_heads", num_attention_heads),
                                  ("intermediate_size", intermediate_size), ("patch_size", patch_size),
                                  ("frequency_stride", frequency_stride), ("time_stride", time_stride)):
                expect_int(f"model.{option}", value, 1)
            if hidden_size % num_attention_heads:
                raise AudioInterpError(f"model.hidden_size: expected a multiple of model.num_attention_heads="
                                       f"{num_attention_heads}, got {hidden_size}")
            if patch_size > min(n_bins, length):
                raise AudioInterpError(f"model.patch_size: expected at most the spectrogram's {n_bins} bins and "
                                       f"{length} frames, got {patch_size}")
            if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
                raise AudioInterpError(f"model.dropout: expected a probability in [0, 1), got {dropout!r}")
            config = transformers.ASTConfig(
                hidden_size=hidden_size, num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                intermediate_size=intermediate_size, patch_size=patch_size, frequency_stride=frequency_stride,
                time_stride=time_stride, max_length=length, num_mel_bins=n_bins, num_labels=n_classes,
                hidden_dropout_prob=float(dropout), attention_probs_dropout_prob=float(dropout))
            config._attn_implementation = "eager"
            self.hf = transformers.ASTForAudioClassification(config)
            self._pretrained_weights = None
        else:
            self.hf = _from_pretrained(transformers, pretrained, n_bins, n_classes)
            # what the runner starts from: part of the model cache key and the run's identity
            self._pretrained_weights = _state_sha256(self.hf)
        self.hf.eval()
        config = self.hf.config
        self.max_length = int(config.max_length)
        self.n_classes = int(config.num_labels)
        self.grid = (  # (f, t): patches along frequency and time, as ASTEmbeddings computes them
            (config.num_mel_bins - config.patch_size) // config.frequency_stride + 1,
            (config.max_length - config.patch_size) // config.time_stride + 1)
        self.time_stride = int(config.time_stride)
        self.input_norm = input_norm or ("none" if pretrained else "bins")
        self.bn0 = BinNorm(n_bins) if self.input_norm == "bins" else nn.Identity()
        self._warned_cut = False

    # --- the network ------------------------------------------------------------------------

    @property
    def network(self) -> nn.Module:
        return self.hf

    def logits(self, inputs: Tensor) -> Tensor:
        """inputs (B, 1, F, T) dB -> (B, C) logits."""
        if inputs.dim() != 4 or inputs.shape[1] != 1 or inputs.shape[2] != self.n_bins:
            raise ValueError(f"AST was built for (B, 1, {self.n_bins}, T) spectrograms, got input {tuple(inputs.shape)}")
        frames = inputs.shape[-1]
        if frames > self.max_length:
            if not self._warned_cut:
                log.warning("model=ast: inputs of %d frames are cut to the network's max_length=%d; the frames after "
                            "it are not heard", frames, self.max_length)
                self._warned_cut = True
            inputs = inputs[..., :self.max_length]
        elif frames < self.max_length:
            inputs = F.pad(inputs, (0, self.max_length - frames), value=self.pad_value)
        values = self.bn0(inputs)[:, 0].transpose(1, 2)  # (B, T, F): AST's frames x bins
        return self.hf(input_values=values).logits

    # --- layers -----------------------------------------------------------------------------

    def _named(self, kind: str) -> list[str]:
        return [name for name, module in self.hf.named_modules() if name and module_kind(module) == kind]

    def encoder_layers(self) -> list[str]:
        """The names of the encoder's transformer layers, first to last."""
        return self._named("ASTLayer")

    def as_map(self, name: str, output: Tensor, inputs: Tensor) -> Tensor:
        """Tokens (B, 2 + f·t, D) or patch tokens (B, f·t, D) -> the patch grid's (B, D, f, t) map
        (CLS and distillation tokens dropped, patch k at frequency patch k // t, time patch k % t),
        cut to the time patches that start within the (B, 1, F, T) ``inputs``' T frames (the rest
        read padding). Any other output comes back as it was. Linear: it maps gradients alike."""
        f, t = self.grid
        if output.dim() != 3 or output.shape[1] not in (f * t, f * t + LEADING_TOKENS):
            return output
        patches = output[:, -f * t:]  # (B, f·t, D)
        grid = patches.transpose(1, 2).reshape(len(output), output.shape[-1], f, t)
        heard = min(t, -(-inputs.shape[-1] // self.time_stride))  # patches starting before frame T
        return grid[..., :heard]

    def gradcam_layer(self) -> str:
        """The last encoder layer's ``layernorm_before`` (the module docstring says why)."""
        return f"{self.encoder_layers()[-1]}.layernorm_before"

    def listened_layers(self, inputs: Tensor | None = None) -> list[str]:
        """The embeddings' and the encoder layers' outputs, the last :data:`LISTENED_GRIDS` of them."""
        return (self._named("ASTEmbeddings") + self.encoder_layers())[-LISTENED_GRIDS:]

    def randomisation_cascade(self) -> list[tuple[str, list[nn.Module]]]:
        """The head, the encoder layers from the top down, then the patch embedding."""
        modules = dict(self.hf.named_modules())
        head = [name for name, module in modules.items() if name and module_kind(module) == "ASTMLPHead"]
        embeddings = self._named("ASTPatchEmbeddings")
        return [(name, [modules[name]]) for name in [*head, *self.encoder_layers()[::-1], *embeddings]]

    def source_sha256(self) -> str:
        """The ``transformers`` version (its code builds and initialises the network) and, with
        ``pretrained``, the sha256 of the checkpoint's weights."""
        transformers = _transformers()
        identity = {"transformers": transformers.__version__, "pretrained_weights": self._pretrained_weights}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    def __repr__(self) -> str:
        config = self.hf.config
        return (f"AST(layers={config.num_hidden_layers}, hidden={config.hidden_size}, grid={self.grid}, "
                f"max_length={self.max_length}, classes={self.n_classes})")


def _state_sha256(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, value in module.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _from_pretrained(transformers, source, n_bins: int, n_classes: int | None) -> nn.Module:
    """``ASTForAudioClassification`` from ``source`` (a hub id or a folder in the hub's layout), with a
    new head of ``n_classes`` when its own has another size; one line for anything that fails."""
    if not isinstance(source, str) or not source or source == "panns":
        raise AudioInterpError(f"model.pretrained: expected a Hugging Face hub id or a folder saved with "
                               f"save_pretrained (config.json and the weights), got {source!r}")
    try:
        config = transformers.AutoConfig.from_pretrained(source)
    except Exception as error:  # noqa: BLE001 - the hub client raises several kinds
        raise AudioInterpError(f"model.pretrained: cannot read the configuration of {source!r} ({type(error).__name__}: "
                               f"{_one_line(error)}); expected a hub id reachable from here (or in the Hugging Face "
                               "cache) or a folder saved with save_pretrained") from None
    if getattr(config, "model_type", None) != transformers.ASTConfig.model_type:
        raise AudioInterpError(f"model.pretrained: {source!r} is a {getattr(config, 'model_type', None)!r} model, not "
                               f"an Audio Spectrogram Transformer ({transformers.ASTConfig.model_type!r})")
    if config.num_mel_bins != n_bins:
        raise AudioInterpError(f"model.pretrained: {source!r} reads {config.num_mel_bins} mel bins, the feature gives "
                               f"{n_bins}; use the feature it was trained on (feature=ast_fbank for AST's 128-band fbank)")
    options = {"attn_implementation": "eager"}
    if n_classes is not None and config.num_labels != n_classes:
        log.info("model.pretrained=%s: its head has %d classes, the data %d: a new classification head (randomly "
                 "initialised; the runner trains the network)", source, config.num_labels, n_classes)
        options.update(num_labels=n_classes, id2label={i: str(i) for i in range(n_classes)},
                       label2id={str(i): i for i in range(n_classes)}, ignore_mismatched_sizes=True)
    try:
        return transformers.ASTForAudioClassification.from_pretrained(source, **options)
    except Exception as error:  # noqa: BLE001
        raise AudioInterpError(f"model.pretrained: cannot load the weights of {source!r} ({type(error).__name__}: "
                               f"{_one_line(error)})") from None
