"""Quantize the float biases of QDQ ``Conv`` and ``Gemm`` layers to int32, as ONNX Runtime's ``quantize_static`` does.

Rewrite rules, for a layer whose input is ``DequantizeLinear(x_q, s_x)`` with a constant per-tensor ``s_x``
and whose weight is ``DequantizeLinear(W_q, s_w)`` of constant int8 codes with a constant ``s_w`` per tensor
or per output channel (``Gemm``: the channel axis follows ``transB``):

1. A constant float bias ``B`` (``Conv`` input 2; ``Gemm`` input ``C`` of shape ``[N]`` with ``alpha = beta
   = 1``) becomes ``DequantizeLinear(round(B / s_b), s_b)``: int32 codes, no zero point, and the scale
   ``s_b = s_x * s_w`` stored in the bias's float type (``axis = 0`` when ``s_w`` is per channel). The codes
   are computed from the stored ``s_b``, so the dequantized bias is within ``s_b / 2`` of ``B`` per channel.
   An integer kernel adds the codes to its int32 accumulator as they are.
2. A bias whose codes would leave int32 (``|B| / s_b >= 2**31``: a tiny scale) stays float, and so does the
   bias of every layer rule 1 does not match; ``skipped`` says why, per layer.

A bias initializer read by other nodes too stays for them (this layer gets its own codes); one that only
this layer read is removed.

Known limits: ``Gemm`` with ``alpha != 1`` is refused (ONNX Runtime's QGemm reads an int32 ``C`` in units of
``alpha * s_x * s_w``; ``quantize_static`` writes ``s_x * s_w``), ``beta != 1`` too (it would have to be
folded into the scale); blocked weights have no single scale per output channel.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from onnxbc.passes.graph_utils import Namer, const

logger = logging.getLogger(__name__)

INT32 = np.iinfo(np.int32)
_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


@dataclasses.dataclass(frozen=True)
class _Site:
    """A layer whose bias rule 1 can quantize."""

    bias: ir.Value  # input 2 of the layer
    scale: np.ndarray  # s_x * s_w in float64: a scalar, or one per output channel


class QuantizeBiasPass(ir.passes.InPlacePass):
    """Replace the float biases of QDQ Conv/Gemm layers by int32 codes (rules in the module docstring).

    Attributes:
        sites: layer name -> where its bias went (for the report).
        skipped: layer name -> why its bias stays float (for the report).
    """

    def __init__(self) -> None:
        super().__init__()
        self.sites: dict[str, str] = {}
        self.skipped: dict[str, str] = {}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        namer = Namer(model)
        count = 0
        for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
            if node.op_type in ("Conv", "Gemm") and node.domain in ("", "ai.onnx"):
                count += self._try_quantize(node, namer)
        logger.debug("quantized %d biases to int32", count)
        return ir.passes.PassResult(model, modified=count > 0)

    def _try_quantize(self, node: ir.Node, namer: Namer) -> bool:
        site = _match(node)
        if isinstance(site, str):
            return self._skip(node, site)
        bias = site.bias
        dtype = bias.const_value.dtype
        scale = site.scale.astype(dtype.numpy())  # as DequantizeLinear will read it
        if not np.all(np.isfinite(scale) & (scale > 0)):
            return self._skip(node, f"bias scale s_x * s_w is not a positive {dtype.name} ({scale.min():.3g})")
        codes = np.rint(bias.const_value.numpy().astype(np.float64) / scale.astype(np.float64))
        if not np.all((codes >= INT32.min) & (codes <= INT32.max)):
            worst = float(np.max(np.abs(codes)))
            return self._skip(node, f"bias '{bias.name}' needs codes up to {worst:.3g}, outside int32")

        per_channel = scale.ndim == 1
        codes_value = const(namer, f"{bias.name}_quantized", codes.astype(np.int32))
        scale_value = const(namer, f"{bias.name}_scale", scale)
        dq = ir.node(
            "DequantizeLinear",
            [codes_value, scale_value],
            attributes={"axis": 0} if per_channel else None,
            name=namer(f"{bias.name}_DequantizeLinear"),
        )
        out = dq.outputs[0]
        out.name, out.dtype, out.shape = namer(f"{bias.name}_dequantized"), dtype, ir.Shape(codes.shape)
        node.graph.register_initializer(codes_value)
        node.graph.register_initializer(scale_value)
        node.graph.insert_before(node, [dq])
        node.replace_input_with(2, out)
        if not bias.uses() and not bias.is_graph_output():
            bias.graph.initializers.pop(bias.name)
        role = "Conv B" if node.op_type == "Conv" else "Gemm C"
        self.sites[node.name] = f"{role} int32 (scale per {'channel' if per_channel else 'tensor'})"
        logger.debug("quantized the bias of %s to int32", node.name)
        return True

    def _skip(self, node: ir.Node, reason: str) -> bool:
        self.skipped[node.name] = reason
        logger.debug("kept the float bias of %s: %s", node.name, reason)
        return False


def _match(node: ir.Node) -> _Site | str:
    """The bias of ``node`` and its scale ``s_x * s_w``, or why rule 1 does not apply."""
    if len(node.inputs) < 3 or node.inputs[2] is None:
        return "no bias"
    bias = node.inputs[2]
    if node.op_type == "Gemm":
        for attr in ("alpha", "beta"):
            if (value := node.attributes.get_float(attr, 1.0)) != 1.0:
                return f"Gemm {attr} is {value:g}, not 1"
    if not (bias.is_initializer() and bias.const_value is not None) or bias.is_graph_input():
        producer = bias.producer()
        origin = f" (it comes from {producer.op_type} '{producer.name}')" if producer is not None else ""
        return f"bias '{bias.name}' is not a constant initializer{origin}"
    if bias.const_value.dtype not in _FLOATS:
        return f"bias '{bias.name}' is {bias.const_value.dtype.name}, not float"

    x, w = node.inputs[0], node.inputs[1]
    x_dq, w_dq = dequantize_node(x), dequantize_node(w)
    s_x = _constant(x_dq.inputs[1]) if x_dq is not None else None
    if s_x is None:
        return f"input '{x.name}' is not dequantized with a constant scale (activation not quantized)"
    if s_x.size != 1:
        return f"input scale '{x_dq.inputs[1].name}' is per channel, not per tensor"
    if w_dq is None or _constant(w_dq.inputs[0]) is None or _constant(w_dq.inputs[1]) is None:
        return f"weight '{w.name}' is not dequantized from constant codes and scale"
    codes, s_w = w_dq.inputs[0].const_value, _constant(w_dq.inputs[1])
    if codes.dtype != ir.DataType.INT8:
        return f"weight codes '{w_dq.inputs[0].name}' are {codes.dtype.name}, not INT8"
    if block := w_dq.attributes.get_int("block_size", 0):
        return f"weight '{w.name}' is quantized in blocks of {block}, not per channel"

    channel_axis = 0 if node.op_type == "Conv" or node.attributes.get_int("transB", 0) else 1
    channels = codes.shape[channel_axis]
    if tuple(bias.const_value.shape) != (channels,):
        return f"bias '{bias.name}' has shape {list(bias.const_value.shape)}, not [{channels}]"
    if s_w.size == 1:
        return _Site(bias, np.float64(s_x.item()) * np.float64(s_w.item()))
    axis = w_dq.attributes.get_int("axis", 1) % len(codes.shape)
    if s_w.ndim != 1 or axis != channel_axis or s_w.size != channels:
        return f"weight scale '{w_dq.inputs[1].name}' is not per output channel (axis {axis}, shape {list(s_w.shape)})"
    return _Site(bias, np.float64(s_x.item()) * s_w.astype(np.float64))


def dequantize_node(value: ir.Value) -> ir.Node | None:
    """The standard-domain DequantizeLinear that computes ``value``, if one does."""
    node = value.producer()
    if node is None or node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
        return None
    return node


def _constant(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None or value.is_graph_input():
        return None
    return value.const_value.numpy()
