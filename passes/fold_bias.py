"""Fold compensation biases into the layers they correct, so the graph gains no work where it can.

Rewrite rules, for a layer ``y = f(x)`` and a bias ``delta`` to add to ``y``:

1. ``Conv``/``ConvTranspose`` with a constant ``B``: ``B += delta``. Without ``B``: a new ``B = delta``.
2. ``Gemm`` (``y = alpha A B + beta C``) with a constant ``C``: ``C += delta / beta`` (``C`` broadcast to
   ``[N]`` first when it is a scalar). Without ``C`` (or with ``beta = 0``): ``C = delta``, ``beta = 1``.
3. An int32 QDQ bias (``B`` or ``C`` ``= DequantizeLinear(q, s)`` of constant int32 codes ``q`` of shape
   ``[C]`` and a constant ``s`` per tensor or per channel, see ``passes.bias_int32``): ``q += round(delta / s)``
   (``Gemm``: ``delta / (beta s)``), so the layer output is within ``s / 2`` (``beta s / 2``) of ``y + delta``.
   When a code would leave int32, rule 5 instead, and the site says so.
4. ``MatMul`` whose only reader is an ``Add`` of a constant that broadcasts along the output: that
   constant ``+= delta`` (exporters write Linear layers this way).
5. Anything else (a bias-less MatMul, a per-position bias, a computed bias): a new ``Add(y, delta)``
   right after the layer, which takes over the layer output's name when it is a graph output.

A bias constant (or int32 codes, or their DequantizeLinear) read by other nodes too is copied before it
changes (``graph_utils.set_constant``). ``delta`` is laid out along the layer's output channel axis (or over
all axes but the batch, per position). The result's ``sites`` says, per layer, which rule took its bias.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from onnxbc.passes.bias_int32 import INT32, dequantize_node
from onnxbc.passes.graph_utils import Namer, const, constant_tensor, set_constant
from onnxbc.passes.results import SitesResult
from onnxbc.plan import BiasFold

logger = logging.getLogger(__name__)


class FoldBiasPass(ir.passes.InPlacePass):
    """Add each ``BiasFold`` of the plan to its layer (rules in the module docstring).

    Returns a ``SitesResult`` whose ``sites`` maps each layer to where its bias went. Requires every layer
    named in ``biases`` to be a node of the main graph.

    Attributes:
        biases: layer name -> bias to fold.
    """

    def __init__(self, biases: dict[str, BiasFold]) -> None:
        super().__init__()
        self.biases = biases

    def requires(self, model: ir.Model) -> None:
        missing = self.biases.keys() - {node.name for node in model.graph}
        if missing:
            raise ir.passes.PreconditionError(
                f"cannot fold biases into {sorted(missing)}: no such node in the main graph "
                "(the plan must be computed on this model)"
            )

    def call(self, model: ir.Model) -> SitesResult:
        namer = Namer(model)
        nodes = {node.name: node for node in model.graph}
        sites: dict[str, str] = {}
        for name, fold in self.biases.items():
            sites[name] = self._fold(nodes[name], fold, namer)
            logger.debug("folded bias of %s into %s", name, sites[name])
        return SitesResult(model, modified=bool(self.biases), sites=sites)

    def _fold(self, node: ir.Node, fold: BiasFold, namer: Namer) -> str:
        dtype = node.outputs[0].dtype or _const_dtype(node)
        delta = np.asarray(fold.delta, np.float64)
        if not fold.per_position:
            if node.op_type in ("Conv", "ConvTranspose"):
                return self._fold_conv(node, delta, dtype, namer)
            if node.op_type == "Gemm":
                return self._fold_gemm(node, delta, dtype, namer)
            if node.op_type == "MatMul" and fold.output_channel_axis == -1:
                add = _single_bias_add(node)
                if add is not None:
                    index = 1 if add.inputs[0] is node.outputs[0] else 0
                    _add_into(add, index, delta, namer)
                    return f"Add '{add.name}' constant"
            shape = [1] * (-fold.output_channel_axis)
            shape[0] = delta.size
            delta = delta.reshape(shape)
        return self._append_add(node, delta, dtype, namer)

    def _fold_conv(self, node: ir.Node, delta: np.ndarray, dtype: ir.DataType, namer: Namer) -> str:
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            channel_delta = delta.reshape(-1, *[1] * _spatial_rank(node))
            if _int32_dequantize(node.inputs[2], delta.size) is not None:
                if _add_into_codes(node, 2, delta, namer):
                    return f"{node.op_type} B (int32)"
                return self._append_add(node, channel_delta, dtype, namer) + f" (int32 {node.op_type} B would overflow)"
            if constant_tensor(node.inputs[2]) is None:
                return self._append_add(node, channel_delta, dtype, namer)
            _add_into(node, 2, delta, namer)
            return "Conv B" if node.op_type == "Conv" else "ConvTranspose B"
        bias = const(namer, f"{node.name}_bias", delta.astype(dtype.numpy()))
        node.graph.register_initializer(bias)
        if len(node.inputs) < 3:
            node.resize_inputs(3)
        node.replace_input_with(2, bias)
        return "new Conv B" if node.op_type == "Conv" else "new ConvTranspose B"

    def _fold_gemm(self, node: ir.Node, delta: np.ndarray, dtype: ir.DataType, namer: Namer) -> str:
        beta = node.attributes.get_float("beta", 1.0)
        has_c = len(node.inputs) > 2 and node.inputs[2] is not None
        if has_c and beta != 0.0 and _int32_dequantize(node.inputs[2], delta.size) is not None:
            if _add_into_codes(node, 2, delta / beta, namer):
                return "Gemm C (int32)"
            return self._append_add(node, delta, dtype, namer) + " (int32 Gemm C would overflow)"
        if has_c and beta != 0.0 and constant_tensor(node.inputs[2]) is not None:
            _add_into(node, 2, delta / beta, namer)
            return "Gemm C"
        if has_c and beta != 0.0:
            return self._append_add(node, delta, dtype, namer)
        bias = const(namer, f"{node.name}_bias", delta.astype(dtype.numpy()))
        node.graph.register_initializer(bias)
        if len(node.inputs) < 3:
            node.resize_inputs(3)
        node.replace_input_with(2, bias)
        node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
        return "new Gemm C"

    def _append_add(self, node: ir.Node, delta: np.ndarray, dtype: ir.DataType, namer: Namer) -> str:
        y = node.outputs[0]
        bias = const(namer, f"{node.name}_bias", delta.astype(dtype.numpy()))
        node.graph.register_initializer(bias)
        add = ir.node("Add", [y, bias], name=namer(f"{node.name}_bias_Add"))
        out = add.outputs[0]
        out.name = namer(f"{y.name}_biased")
        out.dtype, out.shape = y.dtype, y.shape
        node.graph.insert_after(node, [add])
        was_output = y.is_graph_output()
        y.replace_all_uses_with(out, replace_graph_outputs=True)
        add.replace_input_with(0, y)
        if was_output:  # keep the model's output names
            out_name, y.name = y.name, namer(f"{y.name}_unbiased")
            out.name = out_name
        return "new Add"


def _single_bias_add(node: ir.Node) -> ir.Node | None:
    """The Add of a constant right after a MatMul, when the MatMul output has no other reader."""
    y = node.outputs[0]
    uses = y.uses()
    if len(uses) != 1 or y.is_graph_output():
        return None
    add = uses[0].node
    if add.op_type != "Add" or len(add.inputs) != 2:
        return None
    other = constant_tensor(add.inputs[1 - uses[0].idx])
    if other is None:
        return None
    # A per-channel bias: a scalar, [C], or [1, ..., 1, C].
    shape = tuple(other.shape)
    return add if all(d == 1 for d in shape[:-1]) else None


def _add_into(node: ir.Node, index: int, delta: np.ndarray, namer: Namer) -> None:
    """``node.inputs[index] += delta`` for a constant input (a shared one is copied first)."""
    old = constant_tensor(node.inputs[index]).numpy()
    new = old.astype(np.float64) + delta.reshape(_broadcast_shape(old.shape, delta.size))
    set_constant(node, index, new, namer, "compensated")


def _int32_dequantize(value: ir.Value, channels: int) -> ir.Node | None:
    """The DequantizeLinear of constant int32 codes ``[channels]`` (scale constant, per tensor or channel)
    that computes ``value``, if it does."""
    dq = dequantize_node(value)
    if dq is None:
        return None
    codes, scale = constant_tensor(dq.inputs[0]), constant_tensor(dq.inputs[1])
    if codes is None or codes.dtype != ir.DataType.INT32 or scale is None:
        return None
    if tuple(codes.shape) != (channels,) or scale.size not in (1, channels):
        return None
    return None if dq.attributes.get_int("block_size", 0) else dq


def _add_into_codes(node: ir.Node, index: int, delta: np.ndarray, namer: Namer) -> bool:
    """``codes += round(delta / scale)`` for the int32 QDQ bias ``node.inputs[index]``; False (and no change)
    when a code would leave int32. Shared codes, or a shared DequantizeLinear, are copied first."""
    dq = node.inputs[index].producer()
    codes, scale = dq.inputs[0], constant_tensor(dq.inputs[1]).numpy().astype(np.float64).reshape(-1)
    new = constant_tensor(codes).numpy().astype(np.float64) + np.rint(delta.reshape(-1) / scale)
    if not np.all((new >= INT32.min) & (new <= INT32.max)):
        return False
    new = new.astype(np.int32)
    if len(dq.outputs[0].uses()) > 1 or dq.outputs[0].is_graph_output():  # other readers keep the old bias
        copy = const(namer, f"{codes.name}_compensated", new)
        own = ir.node("DequantizeLinear", [copy, *dq.inputs[1:]], name=namer(f"{dq.name}_compensated"))
        for attr in dq.attributes.values():
            own.attributes[attr.name] = attr
        out = own.outputs[0]
        out.name, out.dtype, out.shape = namer(f"{dq.outputs[0].name}_compensated"), dq.outputs[0].dtype, copy.shape
        node.graph.register_initializer(copy)
        node.graph.insert_before(node, [own])
        node.replace_input_with(index, out)
    else:
        set_constant(dq, 0, new, namer, "compensated")
    return True


def _broadcast_shape(shape: tuple[int, ...], channels: int) -> tuple[int, ...]:
    """Shape of a per-channel delta added to a last-axis bias of ``shape`` (scalars grow to [C])."""
    if len(shape) == 0 or shape == (1,):
        return (channels,)
    return (1,) * (len(shape) - 1) + (channels,)


def _spatial_rank(node: ir.Node) -> int:
    return len(node.inputs[1].shape) - 2 if node.inputs[1].shape is not None else 2


def _const_dtype(node: ir.Node) -> ir.DataType:
    for v in node.inputs:
        if v is not None and v.dtype in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16):
            return v.dtype
    return ir.DataType.FLOAT
