"""``model=torchscript model.path=FILE``: a classifier saved with ``torch.jit.save``, weights included.

A TorchScript module accepts no forward hooks, so the outputs of its layers (Grad-CAM's layer,
L-MAC's listened layers) are read from its graph instead: the forward's graph is inlined, the
value each named module computes last is made an extra output, and that graph is called as a
function of the module. This reaches into torch's private graph API (``torch._C``), so the torch
versions it runs on are bounded in ``pyproject.toml`` and tests/test_classifiers.py checks the
outputs against the same modules run eagerly.

DeepSHAP (``explainer=shap``) rewrites the gradients of the model's ReLU and max-pool modules,
which a TorchScript graph does not let it do: it is refused, naming ``explainer=shap_gradient``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from hydra.utils import to_absolute_path
from torch import Tensor

from audiointerp.errors import AudioInterpError
from audiointerp.hashing import file_sha256
from audiointerp.models.base import ModuleClassifier

#: Parts of a graph node's module hierarchy that are not module names: the module's own code, and
#: functions it calls (``F.batch_norm`` inside BatchNorm2d).
_NOT_A_MODULE = {"SELF", "UNKNOWN_INSTANCE"}
_HIERARCHY_PART = re.compile(r"(\w+)\(([^()]*)\)")


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    """``torch.jit.load(path)`` on the CPU, or an AudioInterpError naming ``model.path``."""
    path = Path(path)
    if not path.is_file():
        raise AudioInterpError(f"model.path: no such file {path}; expected a TorchScript file (torch.jit.save)")
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as error:  # noqa: BLE001 - torch raises several kinds for a file it did not write
        reason = " ".join(str(error).split())[:120]
        raise AudioInterpError(f"model.path: {path} is not a TorchScript file ({type(error).__name__}: {reason}); "
                               "expected a file written by torch.jit.save") from None


def _module_path(node) -> list[str]:
    """The dotted module name a graph node belongs to, as a list (``["features", "0", "conv"]``)."""
    return [name for name, _ in _HIERARCHY_PART.findall(node.getModuleHierarchy()) if name not in _NOT_A_MODULE]


class TorchScriptClassifier(ModuleClassifier):
    """A TorchScript classifier file: (B, 1, F, T) dB (or audio, with ``model.input=waveform``) -> (B, C).

    Args:
        path: the file (relative to the launch folder).
    """

    weights_included = True

    def __init__(self, path: str) -> None:
        self.path = Path(to_absolute_path(str(path)))
        super().__init__(load_torchscript(self.path))
        self._tapped: dict[tuple[str, ...], torch._C.ScriptFunction] = {}

    def _tap(self, names: tuple[str, ...]):
        """The forward as a function of (module, inputs) returning (logits, *outputs of ``names``)."""
        if names not in self._tapped:
            graph = self.wrapped.forward.inlined_graph
            values = []
            for name in names:
                wanted = name.split(".")
                last = None
                for node in graph.nodes():
                    if (_module_path(node)[:len(wanted)] == wanted and node.kind().startswith("aten::")
                            and node.outputsSize() == 1 and node.output().type().kind() == "TensorType"):
                        last = node
                if last is None:
                    self.submodule(name, "layer")  # names a missing module in one line
                    raise AudioInterpError(f"layer: the TorchScript model's module {name!r} computes no tensor "
                                           "in its forward")
                values.append(last.output())
            returned = graph.return_node()
            logits = returned.input()
            outputs = graph.create("prim::TupleConstruct", [logits, *values])
            outputs.insertBefore(returned)
            outputs.output().setType(torch._C.TupleType([v.type() for v in (logits, *values)]))
            returned.replaceInputWith(logits, outputs.output())
            self._tapped[names] = torch._C._create_function_from_graph("forward_with_layers", graph)
        return self._tapped[names]

    def source_sha256(self) -> str:
        return file_sha256(self.path)

    def layer_outputs(self, inputs: Tensor, names: Sequence[str]) -> tuple[Tensor, list[Tensor]]:
        function = self._tap(tuple(names))
        if self.autocast_dtype is None:
            logits, *outputs = function(self.wrapped._c, inputs)
        else:
            with torch.autocast(inputs.device.type, dtype=self.autocast_dtype):
                logits, *outputs = function(self.wrapped._c, inputs)
        return logits.float(), list(outputs)

    def __repr__(self) -> str:
        return f"TorchScriptClassifier({self.path.name})"
