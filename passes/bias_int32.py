"""Quantize the float biases of QDQ ``Conv`` and ``Gemm`` layers to int32, as ONNX Runtime's ``quantize_static`` does,
and those of QDQ ``MatMul`` layers whose bias is a separate ``Add`` (rule 3).

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
3. A ``MatMul`` ``y = A @ W`` of a weight ``[K, N]`` (per tensor, or per column: axis 1; with a zero point, which
   ONNX Runtime's QGemm fusion needs) whose output goes only
   to an ``Add`` of a constant ``[N]`` bias (how exporters write a linear layer) becomes
   ``Gemm(A2, W, DequantizeLinear(codes))`` with rule 1's int32 codes of ``B`` (where rule 2 refuses them, the
   MatMul and the Add stay). ONNX Runtime fuses ``DQ -> MatMul`` without an
   output Q into MatMulIntegerToFloat, which takes no bias, and then runs the Add in float over the whole
   output; ``DQ -> Gemm`` with an int32 ``C`` becomes QGemm, which adds the codes to its accumulator (on the
   char-GPT benchmark the float Adds were 6 % of the quantized model's time). For an input ``A`` of rank
   ``r != 2`` (or unknown), ``A2 = DequantizeLinear(Reshape(A_q, [-1, K]))`` (the codes are reshaped, with the
   same scale and zero point; one per dequantized tensor, shared by the layers reading it), and a ``Reshape``
   after the Gemm restores ``[d_0, ..., d_{r-2}, N]``: constants from ``A``'s shape with at most one dynamic dimension
   (``-1``), else (several, or an unknown rank) ``Shape(A_q)[:-1]`` at run time. Exact:
   ``Reshape`` moves codes, and Gemm computes ``A2 @ W + B`` as MatMul and Add do. The Gemm keeps the
   MatMul's name, the last node the Add's output.

A bias initializer read by other nodes too stays for them (this layer gets its own codes); one that only
this layer read is removed.

Known limits: ``Gemm`` with ``alpha != 1`` is refused (ONNX Runtime's QGemm reads an int32 ``C`` in units of
``alpha * s_x * s_w``; ``quantize_static`` writes ``s_x * s_w``), ``beta != 1`` too (it would have to be
folded into the scale); blocked weights have no single scale per output channel. Rule 3 leaves a MatMul whose
weight is read through a Transpose or the like, or whose output is a graph output.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from onnxbc.passes.graph_utils import Namer, const, constant_tensor, drop_if_unused
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


@dataclasses.dataclass(frozen=True)
class _Linear:
    """A MatMul and its bias Add that rule 3 turns into a Gemm."""

    add: ir.Node
    x_dq: ir.Node  # the DequantizeLinear of the MatMul's input
    rows: int  # K
    columns: int  # N
    out_shape: list[int] | None  # after the Gemm: [] none (rank 2), constants, or None: read at run time
    site: _Site  # the bias codes


class QuantizeBiasPass(ir.passes.InPlacePass):
    """Replace the float biases of QDQ Conv/Gemm layers, and of QDQ MatMul layers followed by a bias Add, by int32
    codes (rules in the module docstring).

    Returns a ``SitesResult``: ``sites`` maps each layer whose bias became int32 to where it went, ``skipped``
    each other Conv/Gemm/MatMul to why its bias stays float (for the report).

    Ensures no layer is left whose float bias rule 1 would quantize, nor a MatMul and Add that rule 3 would merge.
    """

    def call(self, model: ir.Model) -> SitesResult:
        namer = Namer(model)
        sites: dict[str, str] = {}
        skipped: dict[str, str] = {}
        layers = _layers(model)  # before rule 3 adds Gemms with int32 biases
        count = 0
        flat: dict[ir.Node, ir.Value] = {}  # input DequantizeLinear -> its 2-D copy, shared by the layers reading it
        for node in _matmuls(model):
            count += self._try_gemm(node, namer, flat, sites, skipped)
        for node in layers:
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
        for node in _matmuls(model):
            if isinstance(_match_linear(node), _Linear):
                raise ir.passes.PostconditionError(
                    f"MatMul '{node.name}' still has a float bias Add, which rule 3 merges into a Gemm"
                )

    def _try_gemm(
        self,
        node: ir.Node,
        namer: Namer,
        flat: dict[ir.Node, ir.Value],
        sites: dict[str, str],
        skipped: dict[str, str],
    ) -> bool:
        """Rule 3 on one MatMul: a Gemm with the int32 bias in place of it and its Add."""
        linear = _match_linear(node)
        if isinstance(linear, str):
            skipped[node.name] = linear
            logger.debug("kept the float bias Add of %s: %s", node.name, linear)
            return False
        graph, x_dq = node.graph, linear.x_dq
        a = node.inputs[0]
        if linear.out_shape != []:
            if x_dq not in flat:
                flat[x_dq] = _flatten(x_dq, linear.rows, namer)
            a = flat[x_dq]
        bias = _bias_dequantize(linear.site, namer, graph)
        gemm = ir.node("Gemm", [a, node.inputs[1], bias.outputs[0]], name=node.name)
        new_nodes, out = [bias, gemm], gemm.outputs[0]
        out.dtype = linear.add.outputs[0].dtype
        if linear.out_shape != []:
            out.name = namer(f"{node.name}_2d")
            shape = _leading_shape(linear, namer, graph, new_nodes)
            reshape = ir.node("Reshape", [out, shape], name=namer(f"{node.name}_Reshape"))
            new_nodes.append(reshape)
            out = reshape.outputs[0]
        old = linear.add.outputs[0]
        ir.convenience.replace_nodes_and_values(graph, linear.add, [node, linear.add], new_nodes, [old], [out])
        if not x_dq.outputs[0].uses() and not x_dq.outputs[0].is_graph_output():
            x_dq.graph.remove(x_dq, safe=True)
        drop_if_unused(linear.site.bias)
        per = "channel" if linear.site.scale.ndim == 1 else "tensor"
        sites[node.name] = f"MatMul + Add '{linear.add.name}' as a Gemm, C int32 (scale per {per})"
        logger.debug("merged MatMul %s and its bias Add %s into a Gemm", node.name, linear.add.name)
        return True

    def _try_quantize(self, node: ir.Node, namer: Namer, sites: dict[str, str], skipped: dict[str, str]) -> bool:
        site = _match(node)
        if isinstance(site, str):
            skipped[node.name] = site
            logger.debug("kept the float bias of %s: %s", node.name, site)
            return False
        dq = _bias_dequantize(site, namer, node.graph)
        node.graph.insert_before(node, [dq])
        node.replace_input_with(2, dq.outputs[0])
        drop_if_unused(site.bias)
        role = "Conv B" if node.op_type == "Conv" else "Gemm C"
        sites[node.name] = f"{role} int32 (scale per {'channel' if site.scale.ndim == 1 else 'tensor'})"
        logger.debug("quantized the bias of %s to int32", node.name)
        return True


def _bias_dequantize(site: _Site, namer: Namer, graph: ir.Graph) -> ir.Node:
    """``DequantizeLinear(codes, s_x * s_w)`` for ``site`` (its initializers registered in ``graph``)."""
    bias = site.bias
    codes = const(namer, f"{bias.name}_quantized", site.codes)
    scale = const(namer, f"{bias.name}_scale", site.scale)
    graph.register_initializer(codes)
    graph.register_initializer(scale)
    dq = ir.node(
        "DequantizeLinear",
        [codes, scale],
        attributes={"axis": 0} if site.scale.ndim == 1 else None,
        name=namer(f"{bias.name}_DequantizeLinear"),
    )
    out = dq.outputs[0]
    out.name = namer(f"{bias.name}_dequantized")
    out.dtype, out.shape = ir.DataType.from_numpy(site.scale.dtype), ir.Shape(site.codes.shape)
    return dq


def _flatten(x_dq: ir.Node, k: int, namer: Namer) -> ir.Value:
    """``DequantizeLinear(Reshape(codes, [-1, k]))`` with ``x_dq``'s scale and zero point, right after ``x_dq``."""
    codes = x_dq.inputs[0]
    shape = const(namer, f"{codes.name}_2d_shape", np.array([-1, k], np.int64))
    x_dq.graph.register_initializer(shape)
    reshape = ir.node("Reshape", [codes, shape], name=namer(f"{codes.name}_Reshape"))
    reshape.outputs[0].name = namer(f"{codes.name}_2d")
    reshape.outputs[0].dtype = codes.dtype
    inputs = [reshape.outputs[0], *x_dq.inputs[1:]]
    dq = ir.node("DequantizeLinear", inputs, attributes=x_dq.attributes, name=namer(f"{x_dq.name}_2d"))
    dq.outputs[0].name = namer(f"{x_dq.outputs[0].name}_2d")
    dq.outputs[0].dtype = x_dq.outputs[0].dtype
    dq.outputs[0].shape = ir.Shape([None, k])
    x_dq.graph.insert_after(x_dq, [reshape, dq])
    return dq.outputs[0]


def _leading_shape(linear: _Linear, namer: Namer, graph: ir.Graph, new_nodes: list[ir.Node]) -> ir.Value:
    """The shape the Gemm output goes back to: a constant, or ``Concat(Shape(A_q)[:-1], [N])`` (prepended to
    ``new_nodes``)."""
    name = linear.add.name
    if linear.out_shape is not None:
        shape = const(namer, f"{name}_shape", np.array(linear.out_shape, np.int64))
        graph.register_initializer(shape)
        return shape
    columns = const(namer, f"{name}_columns", np.array([linear.columns], np.int64))
    starts = const(namer, f"{name}_starts", np.array([0], np.int64))
    ends = const(namer, f"{name}_ends", np.array([-1], np.int64))
    for value in (columns, starts, ends):
        graph.register_initializer(value)
    shape = ir.node("Shape", [linear.x_dq.inputs[0]], name=namer(f"{name}_Shape"))
    leading = ir.node("Slice", [shape.outputs[0], starts, ends], name=namer(f"{name}_leading"))
    concat = ir.node("Concat", [leading.outputs[0], columns], attributes={"axis": 0}, name=namer(f"{name}_shape"))
    new_nodes[:0] = [shape, leading, concat]
    return concat.outputs[0]


def _matmuls(model: ir.Model) -> list[ir.Node]:
    """The standard-domain MatMul nodes of every graph."""
    return [
        node
        for node in ir.traversal.RecursiveGraphIterator(model.graph)
        if node.op_type == "MatMul" and node.domain in ("", "ai.onnx")
    ]


def _match_linear(node: ir.Node) -> _Linear | str:
    """The MatMul ``node`` and its bias Add as rule 3 merges them, or why it leaves them (``"no bias"``: its output
    does not go to an Add of a constant alone)."""
    y = node.outputs[0]
    readers = y.uses()
    if len(readers) != 1 or readers[0].node.op_type != "Add" or readers[0].node.domain not in ("", "ai.onnx"):
        return "no bias"
    w_dq = dequantize_node(node.inputs[1])
    w_codes = constant_tensor(w_dq.inputs[0]) if w_dq is not None else None
    if w_codes is None or len(w_codes.shape) != 2:
        return "no bias"  # activation x activation (attention: its Add is a mask), or a weight read through ops
    add = readers[0].node
    bias = add.inputs[1 - readers[0].idx]
    values = constant_tensor(bias) if bias is not None else None
    if values is None:
        return "no bias"
    if y.is_graph_output():
        return f"its output '{y.name}' is a graph output, read before the bias Add"
    if values.dtype not in _FLOATS:
        return f"bias '{bias.name}' is {values.dtype.name}, not float"
    if len(w_dq.inputs) < 3 or w_dq.inputs[2] is None:
        # Without one ONNX Runtime runs a float Gemm, where it fuses the MatMul (MatMulIntegerToFloat).
        return f"weight '{node.inputs[1].name}' has no zero point, which ONNX Runtime's QGemm fusion needs"
    rows, columns = (int(d) for d in w_codes.shape)
    if tuple(values.shape) != (columns,):
        return f"bias '{bias.name}' has shape {list(values.shape)}, not [{columns}]"
    x = node.inputs[0]
    site = _codes(bias, values, x, node.inputs[1], channel_axis=1)
    if isinstance(site, str):
        return site
    x_dq = dequantize_node(x)
    if x.shape is not None and len(x.shape) == 2:
        return _Linear(add, x_dq, rows, columns, [], site)
    if x.shape is not None:
        leading = [d if isinstance(d, int) else -1 for d in x.shape[:-1]]
        if leading.count(-1) <= 1:
            return _Linear(add, x_dq, rows, columns, [*leading, columns], site)
    return _Linear(add, x_dq, rows, columns, None, site)


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

    channel_axis = 0 if node.op_type == "Conv" or node.attributes.get_int("transB", 0) else 1
    return _codes(bias, values, node.inputs[0], node.inputs[1], channel_axis)


def _codes(bias: ir.Value, values: ir.TensorProtocol, x: ir.Value, w: ir.Value, channel_axis: int) -> _Site | str:
    """The int32 codes of ``bias`` for a layer reading ``x`` and ``w`` through DequantizeLinear, or why there are
    none: ``s_x`` per tensor, int8 weight codes per tensor or along ``channel_axis``."""
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
