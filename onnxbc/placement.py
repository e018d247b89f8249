"""Where quantizers go besides the layer inputs, so that the target runtime runs the layers as integer kernels
(int8 activations; int16/int4 activations and weight-only runs quantize layer inputs only).

``--target onnxruntime``. ONNX Runtime's QDQ transformers turn
``DQ(x), DQ(W)[, DQ(int32 bias)] -> Conv/Gemm/MatMul -> Q`` into QLinearConv / QGemm / QLinearMatMul only
when the layer's output goes to a QuantizeLinear and nowhere else. Quantizing layer *inputs* only (TensorRT's
placement) leaves that Q out, and ONNX Runtime then dequantizes the weights and runs the float op: slower than
the float model. So for this target:

1. Each quantized Conv/Gemm (and a MatMul whose output flows into a quantized layer) gets an
   *output site*: its output, or the output of the Relu/Clip it alone feeds (ONNX Runtime removes that
   activation when the Q's range implies it: unsigned codes with zero point 0 after a Relu, which
   ``quantizers.activation_quant`` gives every non-negative tensor).
2. From the site, data-movement ops (MaxPool, Reshape, Flatten, Transpose, ...) each read by one node lead to
   the tensor a later layer reads quantized: the site shares that quantizer (ONNX Runtime drops equal Q/DQ
   pairs around those ops and runs them on the codes). A site that is itself a layer input is read quantized
   by every reader. Elsewhere the site gets a quantizer of its own from its pass-1 histogram, with a
   min-max range (``Placement._own``), except after a MatMul: ONNX Runtime fuses ``DQ -> MatMul`` without an output Q
   (MatMulIntegerToFloat) and an extra rounding would only cost accuracy. A MatMul followed by a bias Add is
   written as a Gemm with int32 bias codes (``passes.bias_int32`` rule 3, ``--int32-bias``): QGemm with a float
   output adds the bias in its kernel, where MatMulIntegerToFloat leaves a float Add over the whole output.
3. Every reader of a site reads the dequantized tensor (a graph output stays float); weight quantizers carry
   an explicit zero point of 0 (ONNX Runtime's QGemm fusion needs it); biases become int32 codes
   (``--int32-bias``, on by default for this target).

A layer is left as it was (and the report says why) when its weight is not 8-bit codes, its activations are
not int8/uint8, or its output is a graph output. Whether ONNX Runtime really fused each layer is checked on
the written model (``onnxbc.fusion``).

``--target tensorrt``. TensorRT wants Q/DQ on layer inputs only (its explicit-quantization guide); it fuses a
residual Add into the Conv/Gemm computing one of its inputs when the other input is quantized too, so that
input of an Add that alone reads a quantized layer's output is read by the Add through the layer input
quantizer of the same tensor, when there is one and it is not smoothed (a ResNet block's input). Otherwise
the Add stays float: a quantizer of its own on a pre-norm transformer's residual stream, whose few huge
channels set its range, made SmolLM2's output noise (held-out rel. MSE 1.7-2.3 for every candidate, 59
residual Adds quantized; the ONNX Runtime target, which quantizes none: 0.028).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
import onnx_ir as ir

from onnxbc.options import ActivationType, CompressOptions, RangeMethod, Target
from onnxbc.plan import ActivationQuant, QuantPlan
from onnxbc.quantizers import activation_quant
from onnxbc.smoothing import fold_divisions
from onnxbc.solvers.ranges import AbsHistogram
from onnxbc.targets import Target as Layer
from onnxbc.targets import Targets

# ONNX Runtime folds these into the Q after them when the Q's range implies them (ReluQuantFusion,
# ClipQuantFusion).
IMPLIED_BY_Q = frozenset({"Relu", "Clip"})
# Ops that move values without computing new ones: ONNX Runtime runs them on the codes when the Q/DQ around
# them share one scale and zero point (its DropQDQNodes rules, and QDQ propagation).
DATA_MOVEMENT = frozenset(
    {
        "Reshape",
        "Flatten",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Identity",
        "MaxPool",
        "GlobalMaxPool",
        "Slice",
        "Gather",
        "Expand",
        "Tile",
        "Resize",
        "DepthToSpace",
        "SpaceToDepth",
    }
)
# ConvTranspose is left out: ONNX Runtime 1.31 has no CPU integer kernel it fuses to (an output Q would only
# cost accuracy).
LAYERS = frozenset({"Conv", "Gemm", "MatMul"})
_FUSABLE_CODES = (np.dtype(np.int8), np.dtype(np.uint8))


@dataclasses.dataclass(frozen=True)
class OutputSite:
    """Where a layer's output quantizer goes."""

    layer: str
    value: str | None  # the layer's output, or the Relu/Clip output after it (None: no site, see ``reason``)
    reaches: str | None = None  # a layer input the value flows into through data-movement ops only (or itself)
    reason: str | None = None  # why ONNX Runtime cannot run the layer as an integer kernel, whatever the plan


@dataclasses.dataclass(frozen=True)
class ResidualSite:
    """A residual Add reading a quantized layer's output: TensorRT fuses the Add into that layer when its
    other input is quantized too (its explicit-quantization guide: quantize the residual input)."""

    add: ir.Node
    index: int  # the Add input read quantized
    value: str  # the tensor at that input
    layer: str  # the quantized layer computing the other input


@dataclasses.dataclass(frozen=True)
class Sites:
    """Where the target's placement may put quantizers, found before anything is decided."""

    outputs: dict[str, OutputSite]  # ONNX Runtime: by layer
    residuals: list[ResidualSite]  # TensorRT

    def own_ranges(self, smoothable: Iterable[str]) -> list[str]:
        """The values whose quantizer may have to come from their own histogram (pass 1 collects them): those
        that reach no layer input, or reach one that may be smoothed (a smoothed quantizer cannot be shared)."""
        smoothable = set(smoothable)
        values = [s.value for s in self.outputs.values() if s.value and (s.reaches is None or s.reaches in smoothable)]
        return sorted(set(values))


def find_sites(targets: Targets, uses: dict[str, list[tuple[Layer, int]]], options: CompressOptions) -> Sites | None:
    """The sites of the target's placement (None: layer inputs only, as int16/int4 activations or weight-only)."""
    if options.activations is not ActivationType.INT8:
        return None
    if options.target is Target.ONNXRUNTIME:
        return Sites(output_sites(targets, uses, int32_bias=bool(options.int32_bias)), [])
    return Sites({}, residual_sites(targets))


def residual_sites(targets: Targets) -> list[ResidualSite]:
    """Each Add that alone reads a weighted layer's output, with its other input (not a constant)."""
    sites = []
    for t in targets.targets:
        if t.in_subgraph or t.op not in LAYERS or t.weight is None:
            continue
        readers = t.node.outputs[0].uses()
        if len(readers) != 1 or readers[0].node.op_type != "Add" or len(readers[0].node.inputs) != 2:
            continue
        add, index = readers[0].node, 1 - readers[0].idx
        other = add.inputs[index]
        if other is not None and other.name and not other.is_initializer() and other.const_value is None:
            sites.append(ResidualSite(add, index, other.name, t.name))
    return sites


def output_sites(
    targets: Targets, uses: dict[str, list[tuple[Layer, int]]], *, int32_bias: bool = True
) -> dict[str, OutputSite]:
    """Each layer's output site (rules 1 and 2 of the module docstring), before anything is decided; a layer
    that cannot be an integer kernel whatever is decided gets a site with only the reason. ``int32_bias``: a
    MatMul and its bias Add will be written as a Gemm with int32 bias codes (``passes.bias_int32``)."""
    sites = {}
    for t in targets.targets:
        if t.in_subgraph or t.op not in LAYERS:
            continue
        value = t.node.outputs[0]
        readers = value.uses()
        if len(readers) == 1 and readers[0].node.op_type in IMPLIED_BY_Q and readers[0].idx == 0:
            if not value.is_graph_output():
                value = readers[0].node.outputs[0]
        reaches = _reach(value, uses)
        reason = _never_fused(t, value, reaches, int32_bias)
        if reason is not None:
            sites[t.name] = OutputSite(t.name, None, reason=reason)
        elif t.op != "MatMul" or reaches is not None:
            sites[t.name] = OutputSite(t.name, value.name, reaches)
    return sites


def _never_fused(t: Layer, value: ir.Value, reaches: str | None, int32_bias: bool) -> str | None:
    """Why ONNX Runtime cannot run ``t`` as an integer kernel whatever the plan (None: it may)."""
    if value.is_graph_output() or value.name is None:
        return f"its output '{value.name}' is a graph output, kept float"
    if t.node.outputs[0].dtype not in (None, ir.DataType.FLOAT):
        return "ONNX Runtime's CPU integer kernels take float32 layers (it runs float16 through casts)"
    if t.weight is not None and t.weight.chain:
        ops = ", ".join(n.op_type for n in t.weight.chain)
        return f"its weight is read through {ops}, which ONNX Runtime does not fold into the kernel"
    if t.op == "Gemm" and len(t.node.inputs) > 2 and t.node.inputs[2] is not None:
        alpha, beta = (t.node.attributes.get_float(a, 1.0) for a in ("alpha", "beta"))
        if (alpha, beta) != (1.0, 1.0):
            return f"Gemm alpha {alpha:g}, beta {beta:g}: its bias cannot be the int32 codes the kernel adds"
    if t.op == "MatMul" and reaches is None and _merged_into_gemm(t.node.inputs[0]) and not int32_bias:
        readers = t.node.outputs[0].uses()
        if len(readers) == 1 and readers[0].node.op_type == "Add":
            return "ONNX Runtime merges this MatMul and its bias Add into a Gemm with a float bias (--no-int32-bias)"
    return None


def _merged_into_gemm(x: ir.Value | None) -> bool:
    """ONNX Runtime's MatMulAddFusion turns a MatMul reading ``x`` and its bias Add into a Gemm: ``x`` is 2-D, or
    of a static shape (it reshapes to 2-D)."""
    if x is None or x.shape is None:
        return False
    return len(x.shape) == 2 or all(isinstance(d, int) for d in x.shape)


@dataclasses.dataclass(frozen=True)
class Placement:
    """The sites of a model and the pass-1 histograms their own quantizers come from; ``apply`` adds the
    target's placement to any candidate's plan (after its smoothing is chosen)."""

    sites: Sites
    layers: dict[str, Layer]
    histograms: dict[str, tuple[AbsHistogram, np.dtype | None]]  # value -> |x| histogram, dtype
    options: CompressOptions

    def apply(self, plan: QuantPlan, *, fold: bool = True) -> QuantPlan:
        """``plan`` with the placement: smoothing divisions folded into what computes the smoothed activations
        (``fold``, see ``smoothing.fold_divisions``); ONNX Runtime: ``outputs``, ``every_reader`` and
        ``weight_zero_points``; TensorRT: the residual inputs added to the activations, read quantized by their
        Add only."""
        if fold:
            sites = {s.value: s.reaches for s in self.sites.outputs.values() if s.value is not None}
            plan = fold_divisions(plan, self.layers, sites)
        if self.options.target is Target.TENSORRT:
            return self._residuals(plan)
        outputs, every_reader = {}, set()
        for site in self.sites.outputs.values():
            how = self._quantizer(site, plan)
            if how.every_reader:
                every_reader.add(site.value)
            elif how.quant is not None:
                outputs[site.value] = how.quant
        return dataclasses.replace(plan, outputs=outputs, every_reader=every_reader, weight_zero_points=True)

    def _residuals(self, plan: QuantPlan) -> QuantPlan:
        activations, uses = dict(plan.activations), {k: list(v) for k, v in plan.activation_uses.items()}
        for site in self.sites.residuals:
            layer = self.layers[site.layer]
            if layer.weight is None or layer.weight.source.name not in plan.weights or _by_mul(plan, site.value):
                continue
            if site.value not in activations:  # no layer input quantizer to share (a pre-norm residual stream)
                continue
            uses.setdefault(site.value, []).append((site.add.name, site.index))
        return dataclasses.replace(plan, activations=activations, activation_uses=uses)

    def describe(self, plan: QuantPlan) -> tuple[dict[str, str], frozenset[str]]:
        """For the report, per layer with a site: in words, its output quantized or why ONNX Runtime cannot fuse
        it; and the layers whose output ``apply`` quantizes (ONNX Runtime should run them as integer kernels)."""
        notes, placed = {}, set()
        for site in self.sites.outputs.values():
            reason = self._quantizer(site, plan).reason
            if reason is None:
                notes[site.layer] = f"output '{site.value}' quantized, so that ONNX Runtime runs an integer kernel"
                placed.add(site.layer)
            else:
                notes[site.layer] = f"not an ONNX Runtime integer kernel: {reason}"
        return notes, frozenset(placed)

    def _quantizer(self, site: OutputSite, plan: QuantPlan) -> _Quantizer:
        reason = site.reason or _unfusable(self.layers[site.layer], plan)
        if reason is not None:
            return _Quantizer(reason=reason)
        shared = site.reaches if site.reaches in plan.activations and not _by_mul(plan, site.reaches) else None
        if shared == site.value:
            return _Quantizer(every_reader=True)
        if shared is not None:
            return _Quantizer(dataclasses.replace(plan.activations[shared], value=site.value))
        own = self._own(site.value)
        if own is None:
            return _Quantizer(reason="its output is not a float tensor seen in calibration")
        return _Quantizer(own)

    def _own(self, name: str) -> ActivationQuant | None:
        """A site's quantizer of its own from its pass-1 histogram (None: not a float tensor seen there), with a
        min-max range. Unlike a layer input's, what it clips reaches every reader (residual streams, activations,
        pooling): on PP-OCR's recognizer, mse ranges at these sites took line accuracy from 0.915 to 0.795,
        min-max ranges give 0.99 (``python -m benchmarks.latency``)."""
        hist, dtype = self.histograms.get(name, (None, None))
        if hist is None or dtype is None or not np.issubdtype(dtype, np.floating):
            return None
        options = dataclasses.replace(self.options, activation_range=RangeMethod.MINMAX)
        return activation_quant(name, hist, dtype, options)


@dataclasses.dataclass(frozen=True)
class _Quantizer:
    """A site's quantizer of its own or shared; or the layer input quantizer at the site read by every reader;
    or why there is none."""

    quant: ActivationQuant | None = None
    every_reader: bool = False
    reason: str | None = None


def _by_mul(plan: QuantPlan, name: str) -> bool:
    """Activation ``name`` is smoothed by a Mul before its quantizer (not folded into the layer computing it)."""
    return name in plan.smoothing and plan.smoothing[name].into is None


def _unfusable(t: Layer, plan: QuantPlan) -> str | None:
    """Why ONNX Runtime cannot run ``t`` as an integer kernel under ``plan`` (None: it can)."""
    if t.weight is not None:
        wq = plan.weights.get(t.weight.source.name)
        if wq is None:
            return "its weight stays float"
        if wq.emulated is not None or wq.codes.dtype not in _FUSABLE_CODES or wq.granularity.block_size:
            return f"{wq.bits}-bit weight codes (integer kernels take 8-bit codes per tensor or channel)"
    for i in t.activation_inputs:
        aq = plan.activations.get(t.node.inputs[i].name)
        if aq is None:
            return f"input {i} stays float"
        if np.dtype(aq.dtype) not in _FUSABLE_CODES:
            return f"input {i} has {np.dtype(aq.dtype).name} codes"
    return None


def _reach(value: ir.Value, uses: dict[str, list], depth: int = 16) -> str | None:
    """The layer input ``value`` flows into through single-reader data-movement ops (None: none)."""
    for _ in range(depth):
        if value.name in uses:
            return value.name
        readers = value.uses()
        if len(readers) != 1 or readers[0].node.op_type not in DATA_MOVEMENT or readers[0].idx != 0:
            return None
        value = readers[0].node.outputs[0]
        if value.is_graph_output():
            return None
    return None
