"""L-MAC: a decoder trained once on the frozen classifier's own activations to output a listenable mask.

After Paissan, Ravanelli and Subakan, "Listenable Maps for Audio Classifiers" (ICML 2024); our own
code. The decoder listens to the outputs of some of the classifier's layers (``explainer.layers``;
null: the classifier's choice, Cnn14's conv blocks 3-6 as published, or for any other network the
last module on each of its deepest four grids; Cnn14's ``bn0`` is the normalised input on its own
grid), goes from the deepest up with
additive skips, U-Net-like (transposed convolutions as published, or bilinear upsampling), and
ends in a sigmoid (or, ``squash=hard``, a hardsigmoid) mask M on the input's (F, T) grid. It is
trained for the metrics it is judged by: the masked and complementary inputs of its loss are built
by ``audiointerp.masks.apply_mask`` exactly as the evaluation builds them, ``(X - s)·M + s`` and
``(X - s)·(1 - M) + s``, and its loss is

    w_in · CE(f(masked), ŷ) + w_out · R(f(complement), ŷ) + w_area · mean(M)

with ŷ the classifier's prediction on X, R = -CE as published (``out_loss=ce``) or the bounded
-log(1 - p_ŷ) (:data:`OUT_LOSSES`), and weights 4, 0.2, 0.4 as published. With ``area`` set, the
last term becomes ``w_area · |mean(M) - area|`` per clip, so masks keep about that share of the
bins and can be compared with other explainers at equal sparsity. The best epoch is chosen on the
validation split (``select``): by Fid-In (ties by FF) of the evaluation's ``topK_5`` mask (by rank)
of the decoder's mask (:data:`SELECTION_MASK`), or by the loss above; the learning rate is halved
when that score has not improved for two epochs. Explaining a clip is then one forward of the classifier and one of the decoder.

``conf/explainer/lmac.yaml`` holds the published settings; ``lmac_sparse.yaml`` the ones that
localise the evidence on the embedded default (the README's table).

A trained decoder is cached beside the model cache (``audiointerp.train.reuse_or_make``, the same
lock and repair rules), keyed on the classifier's weights and precision, the train and valid
inputs, the decoder's settings and this file's code.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import to_absolute_path
from torch import Tensor, nn

from audiointerp import hashing, train
from audiointerp.atomic import save_torch
from audiointerp.errors import AudioInterpError, expect_int
from audiointerp.explainers.base import Explainer, model_device
from audiointerp.masks import SILENCE_DB, apply_mask, make_masks
from audiointerp.metrics import score
from audiointerp.progress import progress

log = logging.getLogger(__name__)

#: The decoder's masks start near 1 (sigmoid(3) = 0.95): keeping everything, where the class is
#: kept, and the loss then removes what the class does not need. From masks near 0.5, every masked
#: input is half as loud as silence pulls it and the tiny Cnn14 calls all of them one class; on the
#: embedded default (lr 1e-3) Fid-In stayed at the collapsed 0.19 for two epochs, against 1.0 from
#: the first epoch when starting near 1.
INITIAL_KEEP_LOGIT = 3.0
#: The decoder's last non-linearity (``explainer.squash``) and the logit at which it gives 0.95.
#: ``hard`` (hardsigmoid, z/6 + 1/2 clipped to [0, 1]) reaches exactly 0 and 1.
SQUASHES = {"sigmoid": (torch.sigmoid, INITIAL_KEEP_LOGIT), "hard": (F.hardsigmoid, 2.7)}
#: The loss's removal term (``explainer.out_loss``), on the classifier's (B, C) logits of the
#: complementary inputs and the (B,) predicted classes. ``ce`` (published): -CE, which has no floor:
#: once the complement has lost the class, the loss still falls as the complement becomes ever more
#: confidently another class, which silencing background around the event also buys. ``bounded``:
#: -log(1 - p_class(complement)), zero once the class is gone. On the embedded default (blocks 0
#: and 3-6, bilinear, weight_area 8) the later epochs' test relevance mass was 0.66-0.69 with ``ce``
#: and 0.69-0.74 with ``bounded``, at the same Fid-In.
OUT_LOSSES = {
    "ce": lambda logits, predicted: -F.cross_entropy(logits, predicted),
    "bounded": lambda logits, predicted: -(
        torch.logsumexp(logits.masked_fill(F.one_hot(predicted, logits.shape[1]).bool(), float("-inf")), dim=1)
        - torch.logsumexp(logits, dim=1)).mean(),
}
#: The evaluation's mask the best epoch is chosen by: the top 5 % of the decoder's mask, so an
#: epoch wins by where its mask puts the evidence, not by how much it keeps. Masks start near 1 and
#: shrink, and the dense early epochs keep the class trivially: scored on the raw mask, the first
#: epoch won with Fid-In 1.0 (mean 0.97); min-max scaled (``minmax``), epoch 2's masks (mean 0.32,
#: test relevance mass 0.34) still won with valid Fid-In 0.988 against 0.938 for the sparse later
#: epochs (mean 0.04-0.06, relevance mass 0.66-0.78, test Fid-In of ``minmax`` 0.96-0.975 as
#: high as epoch 2's). On ``topK_5`` the dense epochs scored 0.75-0.80 and the sparse ones
#: 0.84-0.88 (embedded default, seed 0, ``explainer=lmac_sparse`` with ``weight_area=8``). Exactly
#: 5 % of the bins, by rank (``mask.ties=rank``): with the reference's tie rule a constant mask keeps
#: every bin and keeps the class, and on ESC-10 (width-0.125 Cnn14, published settings) an all-ones
#: decoder was chosen with valid Fid-In 1.0.
SELECTION_MASK = "topK_5"
#: How the best epoch is chosen (``explainer.select``): the validation scores of an epoch -> a tuple
#: compared as greater-is-better. ``fidin``: Fid-In of :data:`SELECTION_MASK`, ties by its FF.
#: ``loss``: the training objective on the validation clips, lowest first: with a strong area weight
#: it prefers sparse masks that still keep the class, where ``fidin`` can prefer a dense early epoch
#: that keeps the class by keeping most bins (README, "L-MAC").
SELECTIONS = {
    "fidin": lambda scores: (scores["FidIn"], scores["FF"]),
    "loss": lambda scores: (-scores["valid_loss"], scores["FidIn"]),
}
#: How the decoder brings a deeper map to a finer grid (``explainer.upsample``, :class:`MaskDecoder`).
UPSAMPLING = ("transposed", "bilinear")


class MaskDecoder(nn.Module):
    """Activations of the listened layers (shallow to deep) -> (B, 1, F, T) mask in (0, 1).

    Each level brings the deeper map to the next skip's grid, adds the skip and refines with a 3x3
    convolution; a head on the input's grid gives the mask. ``upsample``: ``transposed`` (the
    published decoder's stride-2 transposed convolutions) or ``bilinear`` (interpolation, the
    refining convolution after it doing the learning). Transposed convolutions left a stripe every
    8 frames on the embedded default's masks, across background frames far from the event (their
    checkerboard, Odena et al. 2016); bilinear upsampling leaves none. Convolutions pad by
    replicating the edge: with zero padding the masks lit up a frame along the spectrogram's borders.

    Args:
        channels: channel count of each listened layer's output, shallow to deep.
        hidden: channels of the decoder's own feature maps.
        squash: a key of :data:`SQUASHES`, the non-linearity that makes logits a mask.
        upsample: one of :data:`UPSAMPLING`.
        fine_channels: channels of the finest level's maps and the head's (None: ``hidden``). On the
            input's grid a 3x3 convolution costs F·T·9·c², and explaining is mostly those.
    """

    def __init__(self, channels: Sequence[int], hidden: int, squash: str = "sigmoid",
                 upsample: str = "transposed", fine_channels: int | None = None) -> None:
        super().__init__()
        self.squash, initial_logit = SQUASHES[squash]
        fine = fine_channels or hidden
        width = [fine] + [hidden] * (len(channels) - 1)  # of each level's maps, shallow to deep
        self.lateral = nn.ModuleList(nn.Conv2d(c, w, 1) for c, w in zip(channels, width))
        # before the last, finest step: from ``hidden`` channels to ``fine`` ones, on the coarser grid
        self.narrow = nn.Conv2d(hidden, fine, 1) if fine != hidden and len(channels) > 1 else nn.Identity()
        self.up = nn.ModuleList(nn.ConvTranspose2d(w, w, 2, stride=2) if upsample == "transposed"
                                else nn.Identity() for w in width[:-1])
        self.interpolation = "nearest" if upsample == "transposed" else "bilinear"
        self.refine = nn.ModuleList(nn.Sequential(_conv3x3(w, w), nn.ReLU()) for w in width[:-1])
        self.head = nn.Sequential(_conv3x3(fine, fine), nn.ReLU(), _conv3x3(fine, 1))
        nn.init.constant_(self.head[-1].bias, initial_logit)

    def forward(self, activations: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        x = self.lateral[-1](activations[-1])
        for level in range(len(activations) - 2, -1, -1):
            skip = self.lateral[level](activations[level])
            if level == 0:
                x = self.narrow(x)
            # to the skip's own size: pooling floors odd sizes, and a skip may be several levels finer
            x = _resize(self.up[level](x), skip.shape[-2:], self.interpolation)
            x = self.refine[level](torch.relu(x + skip))
        x = _resize(x, size, "bilinear")  # the input's grid (already there when layer 0 is listened to)
        return self.squash(self.head(x))


def _resize(x: Tensor, size: Sequence[int], mode: str) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode=mode, **({} if mode == "nearest" else {"align_corners": False}))


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, padding_mode="replicate")


class Lmac(Explainer):
    """``explainer=lmac``: the trained decoder's mask is the attribution.

    Args:
        layers: names of the classifier's modules whose (B, C, f, t) outputs the decoder listens to,
            shallow to deep (Cnn14: ``bn0``, the spectrogram as the classifier normalised it, on the
            input's own grid, where the masks follow the event's edges; ``conv_block1`` ...
            ``conv_block6``), or None for the classifier's ``listened_layers()``.
        hidden: the decoder's channels.
        fine_channels: its channels on the finest grid (None: ``hidden``; :class:`MaskDecoder`).
        epochs, lr, batch_size: Adam on the training split.
        weight_in, weight_out, weight_area: the loss's weights (see the module's docstring).
        area: None for the published mean-mask term, else the share of bins each mask should keep.
        squash: ``sigmoid`` (published) or ``hard``, the decoder's last non-linearity (:data:`SQUASHES`).
        out_loss: ``ce`` (published) or ``bounded``, the loss's removal term (:data:`OUT_LOSSES`).
        select: how the best epoch is chosen on the validation split (:data:`SELECTIONS`).
        upsample: ``transposed`` (published) or ``bilinear`` (:class:`MaskDecoder`).
        silence_level: s of the masked and complementary inputs, dB (the run's ``mask.silence_level``).
        seed: the decoder's initial weights and the order of training clips.
        cache: reuse a decoder trained with the same classifier, data and settings.
        cache_dir: where decoders are kept (relative to the launch folder).
    """

    needs_training_data = True
    needs_validation_data = True

    def __init__(self, layers: Sequence[str] | None = None, hidden: int = 32, epochs: int = 10, lr: float = 1e-3,
                 batch_size: int = 16, weight_in: float = 4.0, weight_out: float = 0.2, weight_area: float = 0.4,
                 area: float | None = None, squash: str = "sigmoid", out_loss: str = "ce",
                 upsample: str = "transposed", fine_channels: int | None = None, select: str = "fidin",
                 silence_level: float | None = SILENCE_DB, seed: int = 0, cache: bool = True,
                 cache_dir: str = "data/model_cache") -> None:
        if layers is not None:
            layers = list(layers)
            if not layers or not all(isinstance(name, str) and name for name in layers) \
                    or len(set(layers)) != len(layers):
                raise AudioInterpError("explainer.layers: expected distinct module names, shallow to deep (e.g. "
                                       f"[conv_block3, conv_block4]), or null for the model's choice, got {layers!r}")
        for option, value, minimum in (("hidden", hidden, 1), ("epochs", epochs, 1), ("batch_size", batch_size, 2)):
            expect_int(f"explainer.{option}", value, minimum)
        if fine_channels is not None:
            expect_int("explainer.fine_channels", fine_channels, 1)
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise AudioInterpError(f"explainer.lr: expected a positive number, got {lr!r}")
        if area is not None and (isinstance(area, bool) or not isinstance(area, (int, float)) or not 0 < area < 1):
            raise AudioInterpError(f"explainer.area: expected null or a share of bins in (0, 1), got {area!r}")
        if squash not in SQUASHES:
            raise AudioInterpError(f"explainer.squash: expected one of {', '.join(SQUASHES)}, got {squash!r}")
        if upsample not in UPSAMPLING:
            raise AudioInterpError(f"explainer.upsample: expected one of {', '.join(UPSAMPLING)}, got {upsample!r}")
        if select not in SELECTIONS:
            raise AudioInterpError(f"explainer.select: expected one of {', '.join(SELECTIONS)}, got {select!r}")
        if out_loss not in OUT_LOSSES:
            raise AudioInterpError(f"explainer.out_loss: expected one of {', '.join(OUT_LOSSES)}, got {out_loss!r}")
        self.layers = layers
        self.hidden = hidden
        self.squash = squash
        self.out_loss = out_loss
        self.select = select
        self.upsample = upsample
        self.fine_channels = fine_channels
        self.epochs = epochs
        self.lr = float(lr)
        self.batch_size = batch_size
        self.weights = (float(weight_in), float(weight_out), float(weight_area))
        self.area = None if area is None else float(area)
        self.silence_level = silence_level
        self.seed = seed
        self.cache = cache
        self.cache_dir = cache_dir
        self.listened: list[str] = list(layers or ())
        self.decoder: MaskDecoder | None = None
        #: What training found: best_epoch, its valid FidIn and FF, loss and scores per epoch.
        self.training: dict = {}

    def settings(self) -> dict:
        """Everything besides the classifier and the data that determines the trained decoder."""
        return {"layers": self.layers, "hidden": self.hidden, "epochs": self.epochs, "lr": self.lr,
                "batch_size": self.batch_size, "weights": list(self.weights), "area": self.area,
                "squash": self.squash, "out_loss": self.out_loss, "select": self.select, "upsample": self.upsample,
                "fine_channels": self.fine_channels, "silence_level": self.silence_level, "seed": self.seed,
                "code": hashing.file_sha256(__file__)}

    def check(self, model: nn.Module) -> None:
        super().check(model)
        for name in self.layers or ():
            model.submodule(name, "explainer.layers")

    def _listen(self, model: nn.Module, inputs: Tensor) -> tuple[Tensor, list[Tensor]]:
        """One classifier forward: (B, C) logits and the listened layers' (B, C_b, F_b, T_b) outputs."""
        if not self.listened:  # before prepare(): the configured layers, or the model's choice
            self.listened = self.layers or model.listened_layers(inputs)
        logits, outputs = model.layer_outputs(inputs, self.listened)
        # a conv map as it is; a transformer's patch tokens on the patch grid (Classifier.as_map)
        activations = [model.as_map(name, output, inputs) for name, output in zip(self.listened, outputs)]
        for name, activation in zip(self.listened, activations):
            if activation.dim() != 4:
                raise AudioInterpError(f"explainer.layers: {name} outputs shape {tuple(activation.shape)}, not a "
                                       "(B, C, f, t) map; set explainer.layers to modules that do")
        return logits, [activation.float() for activation in activations]

    def _masks(self, model: nn.Module, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 1, F, T) masks of ``inputs`` and the classifier's (B, C) logits on them, from one forward."""
        with torch.no_grad():
            logits, activations = self._listen(model, inputs)
        return self.decoder(activations, inputs.shape[-2:]), logits

    def prepare(self, model: nn.Module, train_inputs: Tensor, train_labels: Tensor,
                valid_inputs: Tensor | None = None, valid_labels: Tensor | None = None) -> None:
        if valid_inputs is None:
            raise AudioInterpError(f"{self!r}: needs the validation split to choose its best epoch")
        model.eval()
        device = model_device(model)
        #: The modules listened to: ``layers``, or the classifier's choice.
        self.listened = self.layers or model.listened_layers(train_inputs[:2].to(device))
        with torch.no_grad():
            _, activations = self._listen(model, train_inputs[:2].to(device))

        def new_decoder() -> None:
            with torch.random.fork_rng(devices=[]):  # initial weights from the seed, not the global generator
                torch.manual_seed(self.seed)
                self.decoder = MaskDecoder([a.shape[1] for a in activations], self.hidden, self.squash,
                                           self.upsample, self.fine_channels).to(device)

        def fit() -> None:
            new_decoder()
            self._fit(model, train_inputs, valid_inputs)

        if not self.cache:
            fit()
            return
        key = self._cache_key(model, train_inputs, train_labels, valid_inputs, valid_labels)
        folder = Path(to_absolute_path(str(self.cache_dir)))
        folder.mkdir(parents=True, exist_ok=True)

        def reuse(entry: Path) -> None:
            try:
                saved = torch.load(entry, map_location=device, weights_only=True)
                new_decoder()
                self.decoder.load_state_dict(saved["state_dict"])
                self.training = json.loads(saved["training"])
            except Exception as error:  # noqa: BLE001 - any unreadable entry is made again
                raise train.Unusable(f"is unreadable ({type(error).__name__})") from None
            log.info("lmac: decoder from the cache (%s)", entry)

        def make(entry: Path) -> None:
            fit()  # from the seed's initial weights, whatever a broken entry left in the decoder
            save_torch({"state_dict": self.decoder.state_dict(), "training": json.dumps(self.training)}, entry)

        # jobs of a sweep train it once; the others wait for it (the model cache's protocol)
        train.reuse_or_make(folder / f"lmac_{key}.pt", reuse, make, what="L-MAC decoder")

    def _cache_key(self, model: nn.Module, *tensors: Tensor | None) -> str:
        # the classifier's passes while training: a decoder trained under bf16 is another decoder
        precision = str(getattr(model, "autocast_dtype", None))
        digest = hashlib.sha256(json.dumps({**self.settings(), "listened": self.listened, "precision": precision,
                                            "classifier": train.fingerprint(model)}, sort_keys=True).encode())
        for tensor in tensors:
            if tensor is not None:
                digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]

    def _loss(self, model: nn.Module, inputs: Tensor) -> Tensor:
        masks, logits = self._masks(model, inputs)
        return self._objective(model, inputs, masks, logits)

    def _objective(self, model: nn.Module, inputs: Tensor, masks: Tensor, logits: Tensor) -> Tensor:
        """The loss (the module docstring's) of (B, 1, F, T) ``masks`` of ``inputs``, whose (B, C)
        classifier ``logits`` give the predicted classes; a scalar, the batch's mean."""
        predicted = logits.argmax(dim=1)
        masked, complement = apply_mask(inputs, masks, self.silence_level)
        logits = model(torch.cat([masked, complement]))
        kept, removed = logits[:len(inputs)], logits[len(inputs):]
        w_in, w_out, w_area = self.weights
        share = masks.mean(dim=(1, 2, 3))
        area = share.mean() if self.area is None else (share - self.area).abs().mean()
        return w_in * F.cross_entropy(kept, predicted) + w_out * OUT_LOSSES[self.out_loss](removed, predicted) \
            + w_area * area

    @torch.no_grad()
    def _validate(self, model: nn.Module, inputs: Tensor) -> dict[str, float]:
        """Mean Fid-In and FF over (N, 1, F, T) ``inputs`` of the :data:`SELECTION_MASK` made of the
        decoder's masks, as the evaluation scores it, the decoder's masks' mean value, and the
        training loss on them (``valid_loss``)."""
        device = model_device(model)
        totals = {"FidIn": 0.0, "FF": 0.0, "mask_mean": 0.0, "valid_loss": 0.0}
        for start in range(0, len(inputs), self.batch_size):
            clips = inputs[start:start + self.batch_size].to(device)
            masks, logits = self._masks(model, clips)  # the clips' one forward: their masks and p
            judged = make_masks(masks, [SELECTION_MASK], ties="rank")[SELECTION_MASK]
            masked, complement = apply_mask(clips, judged, self.silence_level)
            p = torch.softmax(logits, dim=1)
            p_masked, p_unmasked = torch.softmax(model(torch.cat([masked, complement])), dim=1).chunk(2)
            scores = {**score(p, p_masked, p_unmasked, judged), "mask_mean": masks.mean(dim=(1, 2, 3)),
                      "valid_loss": self._objective(model, clips, masks, logits).expand(len(clips))}
            for name in totals:
                totals[name] += float(scores[name].sum())
        return {name: total / len(inputs) for name, total in totals.items()}

    def _fit(self, model: nn.Module, train_inputs: Tensor, valid_inputs: Tensor) -> None:
        device = model_device(model)
        generator = torch.Generator().manual_seed(self.seed)
        optimizer = torch.optim.Adam(self.decoder.parameters(), lr=self.lr)
        # as published: the step halves when the selection score has not risen for two epochs
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=2)
        rank = SELECTIONS[self.select]
        frozen = [p for p in model.parameters() if p.requires_grad]
        for parameter in frozen:  # gradients reach the masks through the classifier, never its weights
            parameter.requires_grad_(False)
        best, history = None, []
        # Once masks are sparse, gradients through the sigmoid's far tail reach the classifier as
        # subnormal floats, which CPUs compute on slowly: on the embedded default (one thread) an
        # epoch went from 41 s to 85 s as the masks emptied; with them flushed to zero it stayed at 46 s.
        torch.set_flush_denormal(True)
        try:
            epoch_bar = progress(range(1, self.epochs + 1), desc="training L-MAC decoder", unit="epoch")
            for epoch in epoch_bar:
                self.decoder.train()
                order = torch.randperm(len(train_inputs), generator=generator)
                losses = []
                for start in range(0, len(order) - 1, self.batch_size):
                    batch = order[start:start + self.batch_size]
                    if len(batch) < 2:
                        continue
                    loss = self._loss(model, train_inputs[batch].to(device))
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    losses.append(float(loss.detach()))
                self.decoder.eval()
                scores = self._validate(model, valid_inputs)
                plateau.step(rank(scores)[0])
                history.append({"epoch": epoch, "loss": sum(losses) / max(1, len(losses)), **scores})
                epoch_bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", FidIn=f"{scores['FidIn']:.3f}",
                                     FF=f"{scores['FF']:.3f}", mask=f"{scores['mask_mean']:.2f}")
                if best is None or rank(scores) > rank(best[0]):
                    best = (history[-1], copy.deepcopy(self.decoder.state_dict()))
        finally:
            torch.set_flush_denormal(False)  # torch's default, for whatever runs next
            for parameter in frozen:
                parameter.requires_grad_(True)
        self.decoder.load_state_dict(best[1])
        self.decoder.eval()
        self.training = {"best_epoch": best[0]["epoch"], "valid_FidIn": best[0]["FidIn"], "valid_FF": best[0]["FF"],
                         "valid_loss": best[0]["valid_loss"], "select": self.select, "history": history}
        log.info("lmac: best epoch %d of %d by %s (valid Fid-In %.3f, FF %.3f, loss %.3f, mask mean %.3f)",
                 best[0]["epoch"], self.epochs, self.select, best[0]["FidIn"], best[0]["FF"], best[0]["valid_loss"],
                 best[0]["mask_mean"])

    def attribute(self, model: nn.Module, inputs: Tensor, target: Tensor) -> Tensor:
        """The decoder's (B, 1, F, T) mask in (0, 1); ``target`` is the predicted class the
        decoder was trained to explain (L-MAC explains the classifier's decision)."""
        if self.decoder is None:
            raise AudioInterpError(f"{self!r}: call prepare(model, train and valid inputs) first")
        with torch.no_grad():
            masks, _ = self._masks(model, inputs.detach())
        return masks.float()
