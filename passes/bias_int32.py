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
   bias of every layer rule 1 does not match; the result's ``skipped`` says why, per layer.

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

from onnxbc.passes.graph_utils import Namer, const, constant_tensor
from onnxbc.passes.results import SitesResult

logger = logging.getLogger(__name__)

INT32 = np.iinfo(np.int32)
_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


@dataclasses.dataclass(frozen=True)
class _Site:
    """A layer whose bias rule 1 quantizes."""

    bias: ir.Value  # input 2 of the layer
    codes: np.ndarray  # int32, one per output channel
    scale: np.ndarray  # s_x * s_w in the bias's float type: a scalar, or one per output channel


class QuantizeBiasPass(ir.passes.InPlacePass):
    """Replace the float biases of QDQ Conv/Gemm layers by int32 codes (rules in the module docstring).

    Returns a ``SitesResult``: ``sites`` maps each layer whose bias became int32 to where it went, ``skipped``
    each other Conv/Gemm to why its bias stays float (for the report).

    Ensures no layer is left whose float bias rule 1 would quantize.
    """

    def call(self, model: ir.Model) -> SitesResult:
        namer = Namer(model)
        sites: dict[str, str] = {}
        skipped: dict[str, str] = {}
        count = 0
        for node in _layers(model):
            count += self._try_quantize(node, namer, sites, skipped)
        logger.debug("quantized %d biases to int32", count)
        return SitesResult(model, modified=count > 0, sites=sites, skipped=skipped)

    def ensures(self, model: ir.Model) -> None:
        for node in _layers(model):
            site = _match(node)
            if isinstance(site, _Site):
                raise ir.passes.PostconditionError(
                    f"layer '{node.name}' still reads the float bias '{site.bias.name}', which rule 1 quantizes"
                )

    def _try_quantize(self, node: ir.Node, namer: Namer, sites: dict[str, str], skipped: dict[str, str]) -> bool:
        site = _match(node)
        if isinstance(site, str):
            skipped[node.name] = site
            logger.debug("kept the float bias of %s: %s", node.name, site)
            return False
        bias = site.bias
        per_channel = site.scale.ndim == 1
        codes_value = const(namer, f"{bias.name}_quantized", site.codes)
        scale_value = const(namer, f"{bias.name}_scale", site.scale)
        dq = ir.node(
            "DequantizeLinear",
            [codes_value, scale_value],
            attributes={"axis": 0} if per_channel else None,
            name=namer(f"{bias.name}_DequantizeLinear"),
        )
        out = dq.outputs[0]
        out.name = namer(f"{bias.name}_dequantized")
        out.dtype, out.shape = ir.DataType.from_numpy(site.scale.dtype), ir.Shape(site.codes.shape)
        node.graph.register_initializer(codes_value)
        node.graph.register_initializer(scale_value)
        node.graph.insert_before(node, [dq])
        node.replace_input_with(2, out)
        if not bias.uses() and bias.is_initializer() and not bias.is_graph_output():
            bias.graph.initializers.pop(bias.name)
        role = "Conv B" if node.op_type == "Conv" else "Gemm C"
        sites[node.name] = f"{role} int32 (scale per {'channel' if per_channel else 'tensor'})"
        logger.debug("quantized the bias of %s to int32", node.name)
        return True


def _layers(model: ir.Model) -> list[ir.Node]:
    """The standard-domain Conv and Gemm nodes of every graph."""
    return [
        node
        for node in ir.traversal.RecursiveGraphIterator(model.graph)
        if node.op_type in ("Conv", "Gemm") and node.domain in ("", "ai.onnx")
    ]


def _match(node: ir.Node) -> _Site | str:
    """The bias of ``node``, its codes and scale ``s_x * s_w``, or why rules 1 and 2 leave it float."""
    if len(node.inputs) < 3 or node.inputs[2] is None:
        return "no bias"
    bias = node.inputs[2]
    if node.op_type == "Gemm":
        for attr in ("alpha", "beta"):
            if (value := node.attributes.get_float(attr, 1.0)) != 1.0:
                return f"Gemm {attr} is {value:g}, not 1"
    values = constant_tensor(bias)
    if values is None:
        producer = bias.producer()
        origin = f" (it comes from {producer.op_type} '{producer.name}')" if producer is not None else ""
        return f"bias '{bias.name}' is not a constant{origin}"
    if values.dtype not in _FLOATS:
        return f"bias '{bias.name}' is {values.dtype.name}, not float"

    x, w = node.inputs[0], node.inputs[1]
    x_dq, w_dq = dequantize_node(x), dequantize_node(w)
    s_x = constant_tensor(x_dq.inputs[1]) if x_dq is not None else None
    if s_x is None:
        return f"input '{x.name}' is not dequantized with a constant scale (activation not quantized)"
    if s_x.size != 1:
        return f"input scale '{x_dq.inputs[1].name}' is per channel, not per tensor"
    w_codes = constant_tensor(w_dq.inputs[0]) if w_dq is not None else None
    s_w = constant_tensor(w_dq.inputs[1]) if w_dq is not None else None
    if w_codes is None or s_w is None:
        return f"weight '{w.name}' is not dequantized from constant codes and scale"
    if w_codes.dtype != ir.DataType.INT8:
        return f"weight codes '{w_dq.inputs[0].name}' are {w_codes.dtype.name}, not INT8"
    if block := w_dq.attributes.get_int("block_size", 0):
        return f"weight '{w.name}' is quantized in blocks of {block}, not per channel"

    channel_axis = 0 if node.op_type == "Conv" or node.attributes.get_int("transB", 0) else 1
    channels = w_codes.shape[channel_axis]
    if tuple(values.shape) != (channels,):
        return f"bias '{bias.name}' has shape {list(values.shape)}, not [{channels}]"
    s_x, s_w = s_x.numpy().astype(np.float64).reshape(()), s_w.numpy().astype(np.float64)
    if s_w.size == 1:
        s_w = s_w.reshape(())
    else:
        axis = w_dq.attributes.get_int("axis", 1) % len(w_codes.shape)
        if s_w.ndim != 1 or axis != channel_axis or s_w.size != channels:
            shape = list(s_w.shape)
            return f"weight scale '{w_dq.inputs[1].name}' is not per output channel (axis {axis}, shape {shape})"
    return _quantized(bias, values, s_x * s_w)


def _quantized(bias: ir.Value, values: ir.TensorProtocol, scale: np.ndarray) -> _Site | str:
    """The int32 codes of ``bias`` for the scale ``s_x * s_w`` (float64), or why they do not exist (rule 2)."""
    scale = np.asarray(scale).astype(values.dtype.numpy())  # as DequantizeLinear will read it
    if not np.all(np.isfinite(scale) & (scale > 0)):
        return f"bias scale s_x * s_w is not a positive {values.dtype.name} ({scale.min():.3g})"
    codes = np.rint(values.numpy().astype(np.float64) / scale.astype(np.float64))
    if not np.all((codes >= INT32.min) & (codes <= INT32.max)):
        return f"bias '{bias.name}' needs codes up to {float(np.max(np.abs(codes))):.3g}, outside int32"
    return _Site(bias, codes.astype(np.int32), scale)


def dequantize_node(value: ir.Value) -> ir.Node | None:
    """The standard-domain DequantizeLinear that computes ``value``, if one does."""
    node = value.producer()
    if node is None or node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
        return None
    return node
