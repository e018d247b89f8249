"""Rules a quantized ONNX model must pass: ``onnxbc check``, and the gate ``compress`` runs before saving.

Every rule has a stable ID, a profile and a one-line doc (``onnxbc check --list-rules``); it yields one
finding per node or tensor that breaks it, a single line naming that node or tensor. Profiles:

- ``model``: always run. The file can be read (else every other rule is skipped and ``onnxbc check`` exits
  with 2, an unreadable file), and the model is quantized at all (a warning, not a failure, on a float model).
- ``onnx``, ``qdq``: always run. onnx.checker, strict shape inference, the opset the Q/DQ types need, and
  well-formed QuantizeLinear/DequantizeLinear nodes (constant positive scales, matching zero points, axis and
  blocks consistent with the input, a Q and the DQ reading it agreeing).
- ``tensorrt`` (``--target tensorrt``): TensorRT explicit quantization, algorithms.md §5; ``trt.recurrent``
  warns on LSTM/GRU/RNN weights read through a DequantizeLinear (``compress`` leaves them float for TensorRT).
- ``onnxruntime`` (``--target onnxruntime``): the model loads (and runs a batch) in ONNX Runtime's default
  session on the chosen execution provider; ``ort.fusion`` lists every quantized layer that ONNX Runtime's
  CPU session still runs as a float op on dequantized inputs (``onnxbc.fusion``). It *warns*, one finding per
  layer, and does not fail: such a model computes the right result, only slower, and which layers fuse
  depends on the ONNX Runtime version and the CPU; a gate that must fail on it counts the rule's findings in
  the JSON report.
- ``numerics`` (with ``--reference``): every float output within ``--max-error`` of the float model on data.

Rules that read Q/DQ nodes run only when onnx.checker passes (a malformed node has no parts to read).
A quantizer is a *weight* quantizer when its input is a build-time constant (possibly through Transpose,
Reshape and the like): a DequantizeLinear of constant codes, or a QuantizeLinear of a constant float tensor
and the DequantizeLinear reading it (the layout of TensorRT Model Optimizer and of ONNX Runtime's
``AddQDQPairToWeight``); anything else quantizes an activation.
Limits: Q/DQ nodes are found in the main graph, its subgraphs and model-local functions; TensorRT rules look
at the Q/DQ nodes and the nodes reading their dequantized tensor, not at what TensorRT fuses later; shapes
come from the model's value info and ONNX shape inference, so checks that need an unknown dimension are left
out for that node.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import CheckerPass, ShapeInferencePass

from onnxbc import fusion, held, model_io
from onnxbc.calibration.data import CalibrationData, input_specs, open_data
from onnxbc.calibration.session import SessionFactory
from onnxbc.check_report import CheckReport, Finding, Rule, RuleResult, Status
from onnxbc.compare import compare_sessions
from onnxbc.errors import OnnxbcError, UsageError, one_line
from onnxbc.held import ModelLike
from onnxbc.options import CheckOptions, Target
from onnxbc.passes.graph_utils import constant_tensor
from onnxbc.passes.prepare import QUANTIZED_OPS, quantized_nodes
from onnxbc.progress import Stages
from onnxbc.targets import CHAIN_OPS, RECURRENT_OPS

Q, DQ = "QuantizeLinear", "DequantizeLinear"
INT4_TYPES = (ir.DataType.INT4, ir.DataType.UINT4)
# The lowest ai.onnx opset whose QuantizeLinear/DequantizeLinear take each quantized type (10 otherwise).
_T = ir.DataType
TYPE_OPSET = {
    **dict.fromkeys((_T.FLOAT8E4M3FN, _T.FLOAT8E4M3FNUZ, _T.FLOAT8E5M2, _T.FLOAT8E5M2FNUZ), 19),
    **dict.fromkeys((_T.INT4, _T.UINT4, _T.INT16, _T.UINT16), 21),
    _T.FLOAT4E2M1: 23,
    **dict.fromkeys((_T.INT2, _T.UINT2), 25),
    **dict.fromkeys((_T.FLOAT6E2M3, _T.FLOAT6E3M2), 28),
}
HALF_SCALES = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)  # scale types from opset 19
# onnx_ir's CheckerPass serializes the initializers of this many bytes or fewer (external ones by reference) and
# leaves the larger out (it also registers them again, last: the saved initializer order follows from it)
CHECKER_LEAVES_OUT = 1000


# ------------------------------------------------------------------------------------------------------------
# What the rules read: the model, and every Q/DQ node with its constant parts.


def _const(value: ir.Value | None) -> np.ndarray | None:
    """The value's array when it is a build-time constant (``graph_utils.constant_tensor``); None otherwise."""
    tensor = constant_tensor(value)
    return None if tensor is None else tensor.numpy()


def _is_constant(value: ir.Value | None) -> bool:
    """A build-time constant, directly or through Transpose/Reshape/Squeeze/... of one (a weight's layout change)."""
    while _const(value) is None:
        producer = value.producer() if value is not None else None
        if producer is None or producer.op_type not in CHAIN_OPS or not producer.inputs:
            return False
        value = producer.inputs[0]
    return True


@dataclasses.dataclass(frozen=True)
class QDQNode:
    """A QuantizeLinear or DequantizeLinear node and its parts, read once for all rules."""

    node: ir.Node
    opset: int
    x: ir.Value  # Q: the float input; DQ: the quantized input
    scale_value: ir.Value
    zero_point_value: ir.Value | None
    axis: int
    block_size: int

    @property
    def is_q(self) -> bool:
        return self.node.op_type == Q

    @property
    def label(self) -> str:
        return f"{self.node.op_type} '{self.node.name}'"

    @property
    def quantized(self) -> ir.Value:
        """The tensor of integer (or float8) codes: Q's output, DQ's input."""
        return self.node.outputs[0] if self.is_q else self.x

    @functools.cached_property
    def qtype(self) -> ir.DataType:
        """The type of the codes (UNDEFINED when the model does not say)."""
        zero_point_type = self.zero_point_value.dtype if self.zero_point_value is not None else None
        if self.is_q:
            output_dtype = self.node.attributes.get_int("output_dtype", 0)
            if output_dtype:
                return ir.DataType(output_dtype)
            return zero_point_type or ir.DataType.UINT8  # ONNX's default without a zero point
        return self.x.dtype or zero_point_type or ir.DataType.UNDEFINED

    @functools.cached_property
    def scale(self) -> np.ndarray | None:
        return _const(self.scale_value)

    @functools.cached_property
    def zero_point(self) -> np.ndarray | None:
        return _const(self.zero_point_value)

    @functools.cached_property
    def weight(self) -> bool:
        """Quantizes a weight rather than an activation: a DequantizeLinear of constant codes, a QuantizeLinear of
        a constant float tensor, or the DequantizeLinear reading such a QuantizeLinear (float weight -> Q -> DQ)."""
        producer = None if self.is_q else self.x.producer()
        if producer is not None and producer.op_type == Q and producer.domain in ("", "ai.onnx") and producer.inputs:
            return _is_constant(producer.inputs[0])
        return _is_constant(self.x)

    @property
    def shape(self) -> tuple[int | None, ...] | None:
        """The input's dims (None for a dynamic one), or None when the rank is unknown."""
        if self.x.shape is None:
            return None
        return tuple(d if isinstance(d, int) else None for d in self.x.shape.dims)

    @property
    def per_axis(self) -> bool:
        return self.scale is not None and self.scale.ndim == 1 and self.scale.size > 1 and not self.block_size

    def normalized_axis(self) -> int | None:
        """The axis in [0, rank), or None when the rank is unknown or the axis out of range."""
        shape = self.shape
        if shape is None or not -len(shape) <= self.axis < len(shape):
            return None
        return self.axis % len(shape)


def _qdq_nodes(model: ir.Model) -> list[QDQNode]:
    found = []
    graphs = [(model.graph, model.opset_imports), *((f, f.opset_imports) for f in model.functions.values())]
    for graph_like, opsets in graphs:
        opset = opsets.get("", opsets.get("ai.onnx", 0))
        for node in ir.traversal.RecursiveGraphIterator(graph_like):
            if node.op_type in (Q, DQ) and node.domain in ("", "ai.onnx"):
                x, scale, zero_point = [*node.inputs, None][:3]
                axis, block_size = node.attributes.get_int("axis", 1), node.attributes.get_int("block_size", 0)
                found.append(QDQNode(node, opset, x, scale, zero_point, axis, block_size))
    return found


@dataclasses.dataclass
class Subject:
    """The model under check and what the runtime rules need."""

    model: ir.Model | None  # None when the file could not be read (load_error says why)
    options: CheckOptions
    path: Path | None = None  # the file the model was read from, if any
    load_error: str | None = None
    data: CalibrationData | None = None
    reference: ir.Model | None = None
    stages: Stages = dataclasses.field(default_factory=lambda: Stages(enabled=False))

    @functools.cached_property
    def sessions(self) -> SessionFactory:
        """One factory for every runtime rule, so a CUDA provider that fails to start is tried once."""
        return SessionFactory(self.options.device)

    @functools.cached_property
    def qdq(self) -> list[QDQNode]:
        return _qdq_nodes(self.model)

    @functools.cached_property
    def by_node(self) -> dict[ir.Node, QDQNode]:
        return {q.node: q for q in self.qdq}

    @functools.cached_property
    def sites(self) -> list[QDQNode]:
        """One node per quantized tensor: every Q, and every DQ not reading a Q (a pair is its Q)."""
        return [q for q in self.qdq if q.is_q or _producer_op(q.x) != Q]

    def dequantized(self, value: ir.Value | None) -> QDQNode | None:
        """The DequantizeLinear producing ``value``, if any."""
        producer = value.producer() if value is not None else None
        return self.by_node.get(producer) if producer is not None and producer.op_type == DQ else None

    def readers(self, q: QDQNode) -> Iterator[tuple[ir.Node, int]]:
        """The nodes (and input indices) reading the float tensor a quantized site comes back as: a DQ's readers;
        for a Q, the readers of every DQ that reads it."""
        dequantizers = [q] if not q.is_q else [d for n, _ in q.node.outputs[0].uses() if (d := self.by_node.get(n))]
        for dq in dequantizers:
            if not dq.is_q:
                yield from dq.node.outputs[0].uses()  # (node, input index) pairs


def _producer_op(value: ir.Value | None) -> str | None:
    producer = value.producer() if value is not None else None
    return producer.op_type if producer is not None else None


def _all_nodes(model: ir.Model) -> Iterator[ir.Node]:
    yield from ir.traversal.RecursiveGraphIterator(model.graph)
    for function in model.functions.values():
        yield from ir.traversal.RecursiveGraphIterator(function)


def _show(array: np.ndarray) -> str:
    values = [f"{v:g}" for v in array.astype(np.float64).ravel()[:5]]
    if array.size == 1:
        return values[0]
    return f"[{', '.join(values[:4])}{', ...' if array.size > 4 else ''}]"


# ------------------------------------------------------------------------------------------------------------
# model rules


def _loaded(s: Subject) -> Iterator[Finding]:
    if s.load_error is not None:
        yield Finding(s.load_error)


def _quantized(s: Subject) -> Iterator[Finding]:
    if not quantized_nodes(s.model):
        yield Finding(
            "no QuantizeLinear/DequantizeLinear nor other quantized op (QLinear*, *Integer, MatMulNBits, ...) in "
            "the model: it is a float model, nothing is quantized",
            failed=False,
        )


# ------------------------------------------------------------------------------------------------------------
# onnx and qdq rules


def _checker(s: Subject) -> Iterator[Finding]:
    yield from _onnx_checker(s, full_check=False)


def _shape_inference(s: Subject) -> Iterator[Finding]:
    yield from _onnx_checker(s, full_check=True)  # the checker plus strict, type-checking shape inference


def _onnx_checker(s: Subject, full_check: bool) -> Iterator[Finding]:
    try:
        if s.path is not None:  # the file itself: external data next to it, any size, any path
            model_io.check_model_file(s.path, full_check=full_check)
        elif any(t.nbytes <= CHECKER_LEAVES_OUT for t in model_io.external_tensors(s.model)):
            # the checker would open these tensors' files: the model is written out with them
            with model_io.ort_source(s.model) as source:
                onnx.checker.check_model(source, full_check=full_check)
        else:  # weights over 1 kB are left out (made inputs of their type and shape): fast for big models
            CheckerPass(full_check=full_check)(s.model)
    except Exception as e:  # ValidationError, InferenceError, and others for unreadable parts
        yield Finding(one_line(e))


def _opset(s: Subject) -> Iterator[Finding]:
    for q in s.qdq:
        needs = [(10, q.node.op_type)]
        if q.qtype in TYPE_OPSET:
            needs.append((TYPE_OPSET[q.qtype], f"{q.qtype.name.lower()} codes"))
        if q.scale_value.dtype in HALF_SCALES:
            needs.append((19, f"a {q.scale_value.dtype.name.lower()} scale"))
        need, what = max(needs)
        if q.opset < need:
            yield Finding(f"{q.label} uses {what}, which needs opset {need}; the model has opset {q.opset}")


def _scale(s: Subject) -> Iterator[Finding]:
    for q in s.qdq:
        name = f"scale '{q.scale_value.name}' of {q.label}"
        if q.scale is None:
            yield Finding(f"{name} is computed at run time; it must be a constant")
        elif not np.isfinite(q.scale.astype(np.float32)).all():
            yield Finding(f"{name} is not finite: {_show(q.scale)}")
        elif (q.scale.astype(np.float32) <= 0).any():
            yield Finding(f"{name} is not > 0: {_show(q.scale[q.scale.astype(np.float32) <= 0])}")


def _zero_point(s: Subject) -> Iterator[Finding]:
    for q in s.qdq:
        if q.zero_point_value is None:
            continue
        name = f"zero point '{q.zero_point_value.name}' of {q.label}"
        zp_type = q.zero_point_value.dtype
        if q.zero_point is None:
            yield Finding(f"{name} is computed at run time; it must be a constant")
        elif zp_type != q.qtype and q.qtype is not ir.DataType.UNDEFINED:
            yield Finding(f"{name} is {zp_type.name.lower()}, the quantized tensor is {q.qtype.name.lower()}")
        elif q.scale is not None and not _same_layout(q.zero_point, q.scale):
            yield Finding(f"{name} has shape {list(q.zero_point.shape)}, its scale {list(q.scale.shape)}")


def _axis(s: Subject) -> Iterator[Finding]:
    for q in s.qdq:
        if not q.per_axis:
            continue
        if q.opset < 13:
            yield Finding(f"{q.label} has per-axis scales, which need opset 13; the model has opset {q.opset}")
        elif q.shape is not None and q.normalized_axis() is None:
            yield Finding(f"{q.label}: axis {q.axis} is out of range for its rank-{len(q.shape)} input")
        elif q.shape is not None and q.shape[q.normalized_axis()] not in (None, q.scale.size):
            dim = q.shape[q.normalized_axis()]
            yield Finding(f"{q.label}: {q.scale.size} scales along axis {q.axis}, where the input has {dim}")


def _block_size(s: Subject) -> Iterator[Finding]:
    for q in s.qdq:
        if q.scale is None:
            continue
        if q.block_size < 0:
            yield Finding(f"{q.label}: block_size {q.block_size} is negative")
        elif q.block_size and q.opset < 21:
            yield Finding(f"{q.label}: block_size needs opset 21; the model has opset {q.opset}")
        elif q.block_size and q.shape is not None and q.scale.ndim != len(q.shape):
            yield Finding(f"{q.label}: blocked scales must have the input's rank {len(q.shape)}, not {q.scale.ndim}")
        elif q.block_size and q.shape is not None and q.normalized_axis() is not None:
            axis = q.normalized_axis()
            want = tuple(
                None if d is None else -(-d // q.block_size) if i == axis else d for i, d in enumerate(q.shape)
            )
            if any(w is not None and w != h for w, h in zip(want, q.scale.shape)):
                shown = ["?" if w is None else w for w in want]
                yield Finding(
                    f"{q.label}: scale shape {list(q.scale.shape)} does not match blocks of {q.block_size} "
                    f"along axis {q.axis} (expected {shown})"
                )
        elif not q.block_size and q.scale.ndim > 1:
            yield Finding(f"{q.label}: a rank-{q.scale.ndim} scale needs block_size (blocked quantization)")


def _pair(s: Subject) -> Iterator[Finding]:
    for q in s.qdq:
        if not q.is_q:
            continue
        for reader, _ in q.node.outputs[0].uses():
            dq = s.by_node.get(reader)
            if dq is None or dq.is_q:
                continue
            pair = f"{q.label} and {dq.label} (tensor '{q.quantized.name}')"
            if not _same(q.scale, dq.scale):
                yield Finding(f"{pair} use different scales")
            elif not _same(q.zero_point, dq.zero_point) or q.qtype != dq.qtype:
                yield Finding(f"{pair} use different zero points")
            elif (q.axis != dq.axis and q.per_axis) or q.block_size != dq.block_size:
                yield Finding(f"{pair} use a different axis or block size")


def _same_layout(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape or a.size == b.size == 1  # a scalar and a one-element vector: per tensor


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return _same_layout(a, b) and np.array_equal(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())


# ------------------------------------------------------------------------------------------------------------
# TensorRT rules (algorithms.md §5)


def _trt_quantized_ops(s: Subject) -> Iterator[Finding]:
    for node in _all_nodes(s.model):
        if node.op_type in QUANTIZED_OPS - {Q, DQ} or node.op_type.startswith("QLinear"):
            yield Finding(f"{node.op_type} '{node.name}' is not Q/DQ; TensorRT reads quantization from Q/DQ only")


def _trt_zero_point(s: Subject) -> Iterator[Finding]:
    for q in s.sites:
        if q.zero_point_value is None:
            continue
        if q.zero_point is None or (q.zero_point.astype(np.float32) != 0).any():
            value = "not a constant" if q.zero_point is None else _show(q.zero_point)
            yield Finding(f"zero point '{q.zero_point_value.name}' of {q.label} is {value}, not 0")


def _trt_uint8(s: Subject) -> Iterator[Finding]:
    for q in s.sites:
        t = q.quantized
        if q.qtype == ir.DataType.UINT8 and not (t.is_graph_input() or t.is_graph_output()):
            kind = "weight" if q.weight else "activation"
            yield Finding(f"{q.label} {'makes' if q.is_q else 'reads'} uint8 {kind} '{t.name}'; use int8")


def _trt_int4(s: Subject) -> Iterator[Finding]:
    for q in s.sites:
        if q.qtype not in INT4_TYPES:
            continue
        if not q.weight:
            yield Finding(f"{q.label}: {q.qtype.name.lower()} activation '{q.quantized.name}' (int4 is for weights)")
        elif q.block_size not in (64, 128):
            yield Finding(
                f"{q.label}: int4 weight '{q.x.name}' needs blocks of 64 or 128, has block_size {q.block_size}"
            )
        elif q.shape is not None and q.normalized_axis() not in (len(q.shape) - 2, len(q.shape) - 1):
            yield Finding(f"{q.label}: int4 blocks along axis {q.axis}, not one of the last two of {list(q.shape)}")
        else:
            for reader, _ in s.readers(q):
                quantized_inputs = [s.dequantized(v) for v in reader.inputs]
                if any(d is not None and not d.weight for d in quantized_inputs):
                    yield Finding(
                        f"{q.label}: int4 weight read by {reader.op_type} '{reader.name}', whose activation "
                        "is quantized too (int4 runs weight-only)"
                    )


def _trt_scale(s: Subject) -> Iterator[Finding]:
    for q in s.sites:
        if q.scale is None:
            yield Finding(f"scale '{q.scale_value.name}' of {q.label} is not a build-time constant")
        elif q.scale.ndim == 1 and q.scale.size > 1 and not q.weight:
            yield Finding(f"{q.label}: per-channel scale on activation '{q.quantized.name}' (activations: one scale)")
        elif q.scale.ndim > 1 and not (q.weight and q.qtype in INT4_TYPES):
            yield Finding(
                f"{q.label}: blocked scale {list(q.scale.shape)} on {q.qtype.name.lower()} (int4 weights only)"
            )


def _trt_channel_axis(s: Subject) -> Iterator[Finding]:
    want = {"Conv": 0, "ConvTranspose": 1}
    for q in s.sites:
        if not (q.weight and q.per_axis):
            continue
        for reader, index in s.readers(q):
            if reader.op_type in want and index == 1 and q.normalized_axis() != want[reader.op_type]:
                yield Finding(
                    f"{q.label}: per-channel weight of {reader.op_type} '{reader.name}' on axis {q.axis}, "
                    f"needs axis {want[reader.op_type]}"
                )


def _trt_float_bias(s: Subject) -> Iterator[Finding]:
    for node in _all_nodes(s.model):
        if node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(node.inputs) > 2:
            dq = s.dequantized(node.inputs[2])
            if dq is not None:
                yield Finding(
                    f"{node.op_type} '{node.name}' reads its bias through {dq.label} "
                    f"({dq.qtype.name.lower()}); keep the bias float"
                )


def _trt_concat(s: Subject) -> Iterator[Finding]:
    for node in _all_nodes(s.model):
        if node.op_type != "Concat":
            continue
        quantized = [dq for dq in map(s.dequantized, node.inputs) if dq is not None]
        first = quantized[0] if quantized else None
        if any(not (_same(q.scale, first.scale) and _same(q.zero_point, first.zero_point)) for q in quantized):
            scales = ", ".join(
                f"'{q.node.outputs[0].name}' {'?' if q.scale is None else _show(q.scale)}" for q in quantized
            )
            yield Finding(f"Concat '{node.name}' has inputs quantized with different scales: {scales}")


def _trt_recurrent(s: Subject) -> Iterator[Finding]:
    for node in _all_nodes(s.model):
        if node.op_type not in RECURRENT_OPS or node.domain not in ("", "ai.onnx"):
            continue
        read = [f"{role} '{v.name}'" for role, v in zip("WR", node.inputs[1:3]) if s.dequantized(v) is not None]
        if read:
            yield Finding(
                f"{node.op_type} '{node.name}' reads {' and '.join(read)} through DequantizeLinear: TensorRT's ONNX "
                "parser runs it as a loop whose MatMuls read the weights, and its explicit quantization is documented "
                "for weights dequantized right before a Conv/MatMul/Gemm only (compress leaves them float for "
                "--target tensorrt)",
                failed=False,
            )


# ------------------------------------------------------------------------------------------------------------
# Runtime rules


def _ort_session(s: Subject) -> Iterator[Finding]:
    try:
        session = s.sessions.create(s.model, exact=False)
        if s.data is not None:
            session.run(None, next(iter(s.data.batches("all"))))
    except Exception as e:  # the factory's OnnxbcError, or ONNX Runtime's own errors when running
        yield Finding(one_line(e))


def _ort_fusion(s: Subject) -> Iterator[Finding]:
    try:
        audit = fusion.audit(s.model, s.sessions.apart_up_to)
    except OnnxbcError as e:  # ort.session, when not ignored, fails for the same reason
        yield Finding(f"cannot audit the fusions: {one_line(e)}", failed=False)
        return
    for layer in audit.unfused:
        yield Finding(layer.message(), failed=False)


def _numerics(s: Subject) -> Iterator[Finding]:
    options = s.options
    try:
        reference = s.sessions.create(s.reference)
        candidate = s.sessions.create(s.model, exact=options.exact)
        with s.stages.step("Comparing with the reference", s.data.count_batches("all")) as advance:
            agreements = compare_sessions(reference, candidate, s.data.batches("all"), advance)
    except Exception as e:  # ONNX Runtime errors (missing outputs, inputs that differ)
        yield Finding(f"cannot compare with the reference: {one_line(e)}")
        return
    if not agreements:
        yield Finding("the models have no float outputs in common to compare")
    metric = options.metric.value
    for name, agreement in agreements.items():
        error = agreement.error(options.metric)
        failed = not error <= options.max_error
        sign = ">" if failed else "<="
        yield Finding(
            f"output '{name}': {metric} error {error:.3g} {sign} {options.max_error:g}",
            failed=failed,
            metrics=agreement.as_dict(),
        )


# ------------------------------------------------------------------------------------------------------------
# The rules, in the order they run and are listed


RULES: tuple[Rule, ...] = (
    Rule(
        "model.load",
        "model",
        "the model file can be read: it exists and parses as ONNX, with its external data files",
        _loaded,
        needs_checker=False,
        exit_code=2,
    ),
    Rule(
        "model.quantized",
        "model",
        "the model has Q/DQ or other quantized ops (warns on a float model: nothing is quantized)",
        _quantized,
        needs_checker=False,
        warns=True,
    ),
    Rule("onnx.checker", "onnx", "onnx.checker accepts the model", _checker, needs_checker=False),
    Rule("onnx.shape-inference", "onnx", "strict ONNX shape inference with type checks succeeds", _shape_inference),
    Rule(
        "onnx.opset",
        "onnx",
        "the opset supports the Q/DQ types: float8 and fp16 scales 19, int4/int16 21, fp4 23, int2 25",
        _opset,
    ),
    Rule("qdq.scale", "qdq", "Q/DQ scales are constants, finite and > 0", _scale),
    Rule(
        "qdq.zero-point", "qdq", "zero points are constants of the quantized type, shaped like the scale", _zero_point
    ),
    Rule("qdq.axis", "qdq", "per-axis scales: opset 13, axis within the input's rank, one scale per index", _axis),
    Rule(
        "qdq.block-size",
        "qdq",
        "blocked scales: opset 21, block_size > 0, the input's rank, ceil(dim / block_size) along axis",
        _block_size,
    ),
    Rule("qdq.pair", "qdq", "a QuantizeLinear and the DequantizeLinear reading it use the same parameters", _pair),
    Rule(
        "trt.quantized-ops",
        "tensorrt",
        "quantization is expressed by Q/DQ only (no QLinear*, *Integer, DynamicQuantizeLinear, MatMulNBits)",
        _trt_quantized_ops,
    ),
    Rule("trt.zero-point", "tensorrt", "zero points are 0 (TensorRT quantization is symmetric)", _trt_zero_point),
    Rule("trt.uint8", "tensorrt", "no uint8 quantized tensors except network inputs and outputs", _trt_uint8),
    Rule(
        "trt.int4",
        "tensorrt",
        "int4 only for constant weights, in blocks of 64 or 128 along one of the last two axes, weight-only",
        _trt_int4,
    ),
    Rule(
        "trt.scale",
        "tensorrt",
        "scales are build-time constants: scalar, 1-D per channel for weights, same-rank blocks for int4 weights",
        _trt_scale,
    ),
    Rule(
        "trt.channel-axis",
        "tensorrt",
        "per-channel weight scales on axis 0 for Conv, 1 for ConvTranspose",
        _trt_channel_axis,
    ),
    Rule("trt.float-bias", "tensorrt", "Conv/ConvTranspose/Gemm biases are float, not dequantized", _trt_float_bias),
    Rule(
        "trt.concat-scale", "tensorrt", "the quantized inputs of a Concat share one scale and zero point", _trt_concat
    ),
    Rule(
        "trt.recurrent",
        "tensorrt",
        "LSTM/GRU/RNN weights are float (warns: TensorRT documents no dequantized weight into its recurrent loop)",
        _trt_recurrent,
        warns=True,
    ),
    Rule(
        "ort.session",
        "onnxruntime",
        "ONNX Runtime's default session loads the model on the chosen device (and runs one batch of --data)",
        _ort_session,
        needs_checker=False,
    ),
    Rule(
        "ort.fusion",
        "onnxruntime",
        "ONNX Runtime's CPU session runs every quantized layer as an integer kernel (warns per float layer)",
        _ort_fusion,
        warns=True,
    ),
    Rule(
        "numerics",
        "numerics",
        "every float output is within --max-error of --reference on --data, by --metric",
        _numerics,
        needs_checker=False,
    ),
)
RULE_IDS = tuple(r.id for r in RULES)


def list_rules() -> str:
    width = max(map(len, RULE_IDS))
    return "\n".join(f"{r.id:<{width}}  {r.profile:<11}  {r.doc}" for r in RULES)


# ------------------------------------------------------------------------------------------------------------
# Running the rules


def run_rules(subject: Subject, *, runtime: bool = True) -> tuple[RuleResult, ...]:
    """Run every rule that applies to ``subject`` (``runtime=False``: only the static ones)."""
    results: list[RuleResult] = []
    failed: set[str] = set()
    for rule in RULES:
        reason = _skip_reason(rule, subject, runtime, failed)
        if reason:
            results.append(RuleResult(rule, Status.SKIPPED, reason=reason))
            continue
        start = time.perf_counter()
        findings = tuple(rule.check(subject))
        if any(f.failed for f in findings):
            status = Status.FAILED
        else:
            status = Status.WARNED if rule.warns and findings else Status.PASSED
        results.append(RuleResult(rule, status, findings, seconds=time.perf_counter() - start))
        if status is Status.FAILED:
            failed.add(rule.id)
    return tuple(results)


def _skip_reason(rule: Rule, subject: Subject, runtime: bool, failed: set[str]) -> str | None:
    options = subject.options
    if rule.id in options.ignore:
        return "ignored (--ignore)"
    if rule.profile == "tensorrt" and options.target is not Target.TENSORRT:
        return f"target is {options.target.value}"
    if rule.profile == "onnxruntime" and options.target is not Target.ONNXRUNTIME:
        return f"target is {options.target.value}"
    if rule.profile in ("onnxruntime", "numerics") and not runtime:
        return "runtime rule: compress ran the model in ONNX Runtime already"
    if rule.profile == "numerics" and options.reference is None:
        return "no --reference"
    if "model.load" in failed:
        return "model.load failed"
    if rule.needs_checker and "onnx.checker" in failed:
        return "onnx.checker failed"
    if rule.id == "ort.fusion" and "ort.session" in failed:
        return "ort.session failed"
    if rule.id == "ort.fusion" and not fusion.quantized_layers(subject.model):
        return "no quantized layer (a layer reading a DequantizeLinear) to audit"
    return None


def check(model: ModelLike, options: CheckOptions | None = None, *, stages: Stages | None = None) -> CheckReport:
    """Check a model (a file, or held in memory: ``onnxbc.held``) against every rule that applies (``onnxbc check``).

    A model file that cannot be read is a report too (rule ``model.load`` failed, every other rule skipped, exit
    code 2), so that CI finds one; bad options, and a --reference or --data that cannot be read, raise UsageError.
    """
    options = options or CheckOptions()
    unknown = sorted(options.ignore - set(RULE_IDS))
    if unknown:
        raise UsageError(f"--ignore: no rule '{unknown[0]}' (onnxbc check --list-rules lists them)")
    if "model.load" in options.ignore:
        raise UsageError("--ignore: model.load cannot be ignored (no rule can run on a model that cannot be read)")
    path = Path(model) if held.is_path(model) else None
    stages = stages or Stages(enabled=False)
    try:  # the onnx.checker rule says what the checker finds
        loaded = held.read(model, check=False)
    except OnnxbcError as e:  # missing, not a file, not ONNX, truncated, external data missing
        subject = Subject(None, options, path, load_error=one_line(e), stages=stages)
        return CheckReport(held.describe(model), options, run_rules(subject))
    subject = Subject(loaded, options, path, stages=stages)
    if options.reference is not None:
        subject.reference = held.read(options.reference)
    if options.data is not None:
        subject.data = open_data(options.data, input_specs(loaded))
    ShapeInferencePass(strict_mode=False)(loaded)  # ranks for the axis and block checks, where onnx can infer them
    return CheckReport(held.describe(model), options, run_rules(subject))


def require(model: ir.Model, target: Target) -> None:
    """The gate ``compress`` runs before saving: raise naming the first failed static rule of ``target``."""
    results = run_rules(Subject(model, CheckOptions(target=target)), runtime=False)
    failed = [r for r in results if r.status is Status.FAILED]
    if failed:
        first = failed[0].failures
        more = f" (and {len(first) - 1} more)" if len(first) > 1 else ""
        others = f"; rules also failed: {', '.join(r.rule.id for r in failed[1:])}" if len(failed) > 1 else ""
        raise OnnxbcError(
            f"internal error: the quantized model fails check rule {failed[0].rule.id}: {first[0].message}{more}"
            f"{others}; nothing was written"
        )
