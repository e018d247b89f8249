"""Apply DF-MPC rescaling to layer pairs (see ``onnxbc.solvers.dfmpc`` for the algebra).

Rewrite rules, for each ``PairEdit`` (low layer -> [BatchNormalization] -> ReLU-like -> ... -> next layer):

1. The low layer's weight initializer takes the given values (BatchNormalization folded in).
2. The low layer's bias (Conv ``B``, Gemm ``C``) takes the given values (folded, divided by the factors);
   it is created when absent.
3. The BatchNormalization, if any, is removed: its reader reads the low layer's output; its parameter
   initializers are dropped when nothing else reads them.
4. The next layer's weight initializer takes the given values (input channels multiplied by the factors).

The pass requires every named node to exist and both weights to be initializers, shaped like the edit's
values, that only their layer reads (as ``onnxbc.pairs`` ensures): the quantization plan names them. A bias
read by other nodes too is copied before it changes (``graph_utils.set_constant``).

With the factors computed from float weights only, the rewritten graph computes the same function as
before, up to float rounding (ReLU is positively homogeneous). The pass decides nothing.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from onnxbc.passes.graph_utils import Namer, const, constant_tensor, nodes_by_name, set_constant

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PairEdit:
    low: str  # node names
    batchnorm: str | None
    next: str
    low_weight: np.ndarray  # layout of the low layer's weight initializer
    low_bias: np.ndarray  # one value per output channel
    next_weight: np.ndarray  # layout of the next layer's weight initializer


class RescalePairsPass(ir.passes.InPlacePass):
    """Fold BatchNormalization into each pair's low layer and move the factors (rules in the module docstring).

    Attributes:
        edits: one edit per pair.
    """

    def __init__(self, edits: list[PairEdit]) -> None:
        super().__init__()
        self.edits = edits

    def requires(self, model: ir.Model) -> None:
        nodes = nodes_by_name(model)
        for edit in self.edits:
            missing = [n for n in (edit.low, edit.batchnorm, edit.next) if n is not None and n not in nodes]
            if missing:
                raise ir.passes.PreconditionError(f"pair {edit.low} -> {edit.next}: no node named {missing}")
            for layer, values in ((edit.low, edit.low_weight), (edit.next, edit.next_weight)):
                weight = nodes[layer].inputs[1]
                tensor = constant_tensor(weight)
                own = weight.is_initializer() and len(weight.uses()) == 1 and not weight.is_graph_output()
                if tensor is None or not own or tuple(tensor.shape) != np.shape(values):
                    raise ir.passes.PreconditionError(
                        f"pair {edit.low} -> {edit.next}: the weight '{weight.name}' of '{layer}' is not an "
                        f"initializer of shape {list(np.shape(values))} that only '{layer}' reads"
                    )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        namer = Namer(model)
        nodes = nodes_by_name(model)
        for edit in self.edits:
            self._apply(nodes, edit, namer)
            logger.debug("rescaled pair %s -> %s", edit.low, edit.next)
        return ir.passes.PassResult(model, modified=bool(self.edits))

    def _apply(self, nodes: dict[str, ir.Node], edit: PairEdit, namer: Namer) -> None:
        low, nxt = nodes[edit.low], nodes[edit.next]
        set_constant(low, 1, edit.low_weight, namer, "rescaled")
        _set_bias(low, edit.low_bias, namer)
        if edit.batchnorm is not None:
            _remove_batchnorm(nodes[edit.batchnorm], low)
        set_constant(nxt, 1, edit.next_weight, namer, "rescaled")


def _set_bias(node: ir.Node, bias: np.ndarray, namer: Namer) -> None:
    current = constant_tensor(node.inputs[2]) if len(node.inputs) > 2 else None
    if current is not None:
        set_constant(node, 2, np.asarray(bias).reshape(current.shape.numpy()), namer, "rescaled")
        return
    dtype = constant_tensor(node.inputs[1]).dtype.numpy()
    value = const(namer, f"{node.name}_bias", np.asarray(bias).astype(dtype))
    node.graph.register_initializer(value)
    if len(node.inputs) < 3:
        node.resize_inputs(3)
    node.replace_input_with(2, value)


def _remove_batchnorm(bn: ir.Node, low: ir.Node) -> None:
    graph = bn.graph
    params = [v for v in bn.inputs[1:] if v is not None]
    bn.outputs[0].replace_all_uses_with(low.outputs[0])
    graph.remove(bn, safe=True)
    for v in params:
        if not v.uses() and v.is_initializer() and not v.is_graph_output():
            graph.initializers.pop(v.name)
