"""Divide smoothed activations by their per-channel factors, as a ``Smoothing`` in the plan says.

Rewrite rules, for an activation ``x`` read by the layers listed in the plan (their quantized weights already
carry the factors, see ``solvers.smooth``):

1. When every reader of ``x`` is one of those layers and ``x`` comes straight from a per-channel affine op
   whose parameters are constants, the division is folded into it, so the graph gains no work:
   ``BatchNormalization`` (scale and B, channel axis 1), ``LayerNormalization`` (Scale and B, last axis),
   or ``Add(Mul(n, gamma), beta)`` (a decomposed LayerNorm, last axis).
2. A smoothing whose division the plan moved into what computes ``x`` (``Smoothing.into``, a ``Fold``: a
   layer's quantized weight scales already carry it, see ``smoothing.fold_divisions``): the constants it lists
   (a layer's float bias, a bias Add, a constant factor) are edited, and nothing is inserted.
3. Otherwise ``x -> Mul(1/s)`` feeds those layers; other readers keep ``x``.

Folding divides constants: a constant shared with other nodes is copied first (``graph_utils.set_constant``).
The result's ``sites`` says where each division went, for the report.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from onnxbc.passes.graph_utils import (
    Namer,
    const,
    constant_tensor,
    find_value,
    insert_after_producer,
    nodes_by_name,
    set_constant,
)
from onnxbc.passes.results import SitesResult
from onnxbc.plan import Smoothing

logger = logging.getLogger(__name__)


class SmoothPass(ir.passes.InPlacePass):
    """Apply each ``Smoothing`` (rules in the module docstring).

    Returns a ``SitesResult`` whose ``sites`` maps each activation to where its division went. Requires every
    listed layer input to read its activation.

    Attributes:
        smoothing: activation name -> its smoothing.
        uses: activation name -> the (node name, input index) pairs of the layers that read it.
    """

    def __init__(self, smoothing: dict[str, Smoothing], uses: dict[str, list[tuple[str, int]]]) -> None:
        super().__init__()
        self.smoothing = smoothing
        self.uses = uses

    def requires(self, model: ir.Model) -> None:
        nodes = nodes_by_name(model)
        for name in self.smoothing:
            uses = self.uses.get(name, [])
            reads = [nodes[n].inputs[i] if n in nodes and i < len(nodes[n].inputs) else None for n, i in uses]
            if not reads or any(v is None or v.name != name for v in reads):
                raise ir.passes.PreconditionError(
                    f"cannot smooth '{name}': the layer inputs listed for it ({uses}) do not all read it "
                    "(the plan must be computed on this model, before quantization)"
                )

    def call(self, model: ir.Model) -> SitesResult:
        namer = Namer(model)
        nodes = nodes_by_name(model)
        sites: dict[str, str] = {}
        for name, sm in self.smoothing.items():
            x = find_value(model, name)
            readers = [(nodes[n], i) for n, i in self.uses[name]]
            if sm.into is not None:
                sites[name] = self._edit(nodes, sm, namer)
            else:
                sites[name] = self._fold(x, sm, readers, namer) or self._divide(x, sm, readers, namer)
            logger.debug("smoothed %s: %s", name, sites[name])
        return SitesResult(model, modified=bool(self.smoothing), sites=sites)

    def _fold(self, x: ir.Value, sm: Smoothing, readers: list, namer: Namer) -> str | None:
        site = fold_site(x, sm.channel_axis, len(sm.factors), len(readers))
        if site is None:
            return None
        inverse = 1.0 / sm.factors.astype(np.float64)
        for node, index in site[1]:
            old = constant_tensor(node.inputs[index]).numpy()
            set_constant(node, index, old.astype(np.float64) * inverse.reshape(old.shape), namer, "smoothed")
        return site[0]

    def _edit(self, nodes: dict[str, ir.Node], sm: Smoothing, namer: Namer) -> str:
        factors = sm.factors.astype(np.float64)
        for edit in sm.into.constants:
            node = nodes[edit.node]
            set_constant(
                node,
                edit.index,
                edit.apply(constant_tensor(node.inputs[edit.index]).numpy(), factors),
                namer,
                "smoothed",
            )
        return sm.into.describe()

    def _divide(self, x: ir.Value, sm: Smoothing, readers: list, namer: Namer) -> str:
        graph = readers[0][0].graph
        inverse = (1.0 / sm.factors.astype(np.float64)).reshape(sm.divisor_shape())
        dtype = x.dtype or ir.DataType.FLOAT
        factor = const(namer, f"{x.name}_smoothing", inverse.astype(dtype.numpy()))
        graph.register_initializer(factor)
        mul = ir.node("Mul", [x, factor], name=namer(f"{x.name}_smoothing_Mul"))
        out = mul.outputs[0]
        out.name, out.dtype, out.shape = namer(f"{x.name}_smoothed"), dtype, x.shape
        insert_after_producer(x, [mul])
        for node, index in readers:
            node.replace_input_with(index, out)
        return "Mul"


def fold_site(
    x: ir.Value, channel_axis: int, channels: int, readers: int
) -> tuple[str, list[tuple[ir.Node, int]]] | None:
    """Where a per-channel division of ``x`` can be folded (a description and the constant inputs to
    divide), or None when it needs a Mul (rule 1 of the module docstring)."""
    producer = x.producer()
    if producer is None or x.is_graph_output() or len(x.uses()) != readers:
        return None
    if producer.op_type == "BatchNormalization" and channel_axis == 1:
        params = [(producer, 1), (producer, 2)]
    elif producer.op_type == "LayerNormalization" and channel_axis == -1:
        params = [(producer, i) for i in (1, 2) if i < len(producer.inputs) and producer.inputs[i] is not None]
    elif producer.op_type == "Add" and channel_axis == -1:
        mul = next((v.producer() for v in producer.inputs if v is not None and v.producer() is not None), None)
        beta = next((i for i, v in enumerate(producer.inputs) if _is_per_channel_const(v, channels)), None)
        if mul is None or beta is None or mul.op_type != "Mul" or len(mul.outputs[0].uses()) != 1:
            return None
        gamma = next((i for i, v in enumerate(mul.inputs) if _is_per_channel_const(v, channels)), None)
        if gamma is None:
            return None
        return f"folded into Mul '{mul.name}' and Add '{producer.name}'", [(mul, gamma), (producer, beta)]
    else:
        return None
    if not all(_is_per_channel_const(node.inputs[i], channels) for node, i in params):
        return None
    return f"folded into {producer.op_type} '{producer.name}'", params


def _is_per_channel_const(value: ir.Value | None, channels: int) -> bool:
    tensor = constant_tensor(value)
    if tensor is None:
        return False
    shape = tuple(tensor.shape)
    return len(shape) >= 1 and shape[-1] == channels and all(d == 1 for d in shape[:-1]) or shape == (channels,)
