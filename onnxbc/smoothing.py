"""Per-activation choice of smoothing (the math is in ``solvers.smooth``).

An activation can be smoothed when every layer reading it is a weighted layer in the main graph whose weight
input axis is traceable and whose weight is read only by layers reading this same activation (no tied
embedding). For each such activation, pass 1 keeps per-channel histograms; each candidate alpha gives factors
``s``, the histogram of ``x / s`` (rescaled channel histograms, no extra pass), a range for it, and the readers'
weights ``W * s`` quantized. Pass 2 measures every reader's output error under each candidate and under no
smoothing, and the activation keeps whichever gives the least held-out error summed over its readers (see
``variants``). So smoothing is used only where it measurably helps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from onnxbc.calibration.probes import RangeProbe
from onnxbc.channel_trace import trace
from onnxbc.options import CompressOptions
from onnxbc.plan import ConstantEdit, QuantPlan, Smoothing, WeightQuant
from onnxbc.quantizers import activation_quant, like, weight_quant
from onnxbc.solvers.smooth import (
    ALPHAS,
    input_channel_max,
    per_input_channel,
    scale_input_channels,
    smoothing_factors,
)
from onnxbc.targets import Target, Targets, weight_array


def channel_axis(t: Target) -> int:
    """Axis of the layer's activation input that meets the weight's input axis."""
    if t.op in ("Conv", "ConvTranspose"):
        return 1
    if t.op == "Gemm":
        return 0 if t.node.attributes.get_int("transA", 0) else 1
    return -1 if t.weight.input_index == 1 else -2  # MatMul: x @ W, or W @ x


def input_rank(t: Target) -> int | None:
    """Rank of the layer's activation input, where the channel axis is counted from the front."""
    if t.op in ("Conv", "ConvTranspose"):
        return len(t.node.inputs[1].shape) if t.node.inputs[1].shape is not None else None
    return 2 if t.op == "Gemm" else None


def groups(t: Target) -> int:
    return t.node.attributes.get_int("group", 1) if t.op == "Conv" else 1


def smoothable(targets: Targets, uses: dict[str, list[tuple[Target, int]]]) -> dict[str, int]:
    """Activation name -> channel axis, for the activations that can be smoothed (module docstring)."""
    result = {}
    for name, readers in uses.items():
        layers = [t for t, _ in readers]
        if any(t.weight is None or t.weight.input_axis is None or t.in_subgraph for t in layers):
            continue
        axes = {channel_axis(t) for t in layers}
        if len(axes) != 1 or (axes != {-1} and axes != {-2} and input_rank(layers[0]) is None):
            continue
        shared = False
        for t in layers:
            group = targets.weights.get(t.weight.source.name)
            if group is None or group.gathers:
                shared = True
                break
            reads = {m.node.inputs[i].name for m in group.targets for i in m.activation_inputs}
            shared = shared or reads != {name}
        if not shared:
            result[name] = axes.pop()
    return result


def candidate_plans(
    name: str,
    axis: int,
    readers: list[tuple[Target, int]],
    probe: RangeProbe,
    targets: Targets,
    base: QuantPlan,
    options: CompressOptions,
) -> dict[float, QuantPlan]:
    """alpha -> the readers quantized with ``name`` smoothed (empty when the statistics do not fit)."""
    hists, power = probe.channels, probe.channel_power()
    if hists is None or hists.max is None:
        return {}
    sources = {t.weight.source.name: t for t, _ in readers}
    bases = [base.weights.get(source) for source in sources]
    if any(b is None or (b.scheme, b.rounding) != ("uniform", "nearest") for b in bases):
        return {}  # smoothing re-scales uniform, nearest-rounded weights only
    weight_max = np.zeros_like(hists.max)
    for source, t in sources.items():
        per_channel = input_channel_max(weight_array(targets.weights[source]), t.weight.input_axis, groups(t))
        if per_channel.shape != weight_max.shape:
            return {}
        weight_max = np.maximum(weight_max, per_channel)
    plans = {}
    for alpha in ALPHAS:
        s = smoothing_factors(hists.max, weight_max, alpha)
        plan = QuantPlan(
            activations={name: activation_quant(name, hists.rescaled(s), probe.dtype, options)},
            activation_uses={name: base.activation_uses[name]},
            smoothing={name: Smoothing(name, s, axis, alpha, input_rank(readers[0][0]))},
        )
        for source, t in sources.items():
            group = targets.weights[source]
            w = weight_array(group)
            importance = (
                None if power is None else per_input_channel(power / s**2, w.shape, t.weight.input_axis, groups(t))
            )
            plan.weights[source] = weight_quant(
                group,
                scale_input_channels(w, s, t.weight.input_axis, groups(t)),
                like(base.weights[source], options),
                importance,
                bits=base.weights[source].bits,
            )
        plans[alpha] = plan
    return plans


LAYERS = frozenset({"Conv", "Gemm", "MatMul"})


def fold_divisions(plan: QuantPlan, layers: dict[str, Target], sites: Mapping[str, str | None] = {}) -> QuantPlan:
    """``plan`` with each smoothing division moved, where ``channel_trace`` finds a way, into what computes the
    smoothed activation instead of a Mul, which runtimes would run in float between the integer kernels: a
    Conv/Gemm/MatMul's per-output-channel weight scales, compensation and float bias (the codes stay; exact), and
    constants on the way (a bias Add, GELU's 0.5, ...). ``Smoothing.into`` records the fold for the rewrite.
    ``sites``: tensors quantized besides the plan's activations (the placement's output sites), each with the
    layer input whose quantizer it shares, if any (a division may pass a site only when that is its own)."""
    by_output = {t.node.outputs[0]: t for t in layers.values() if t.op in LAYERS and not t.in_subgraph}
    smoothing, weights, biases = dict(plan.smoothing), dict(plan.weights), dict(plan.biases)

    def layer_of(value: ir.Value, axis: int) -> str | None:
        t = by_output.get(value)
        wq = weights.get(t.weight.source.name) if t is not None and t.weight is not None else None
        return t.name if wq is not None and _carries(t, wq, biases.get(t.name), axis) else None

    for name, sm in plan.smoothing.items():
        uses = plan.activation_uses[name]
        x = layers[uses[0][0]].node.inputs[uses[0][1]]
        if len(x.uses()) != len(uses):
            continue  # a reader that does not divide its weight by the factors would see x / s
        blocked = {*plan.activations, *(v for v, shared in sites.items() if shared != name)} - {name}
        fold = trace(x, sm.channel_axis, len(sm.factors), layer_of, blocked)
        if fold is None:
            continue
        if fold.layer is not None:
            t = layers[fold.layer]
            fold = dataclasses.replace(fold, layer_op=t.op)
            wq = weights[t.weight.source.name]
            weights[wq.source] = dataclasses.replace(wq, scale=_divided(wq.scale, fold.positions, sm.factors))
            if t.name in biases:
                delta = _divided(biases[t.name].delta, fold.positions, sm.factors)
                biases[t.name] = dataclasses.replace(biases[t.name], delta=delta)
            if t.op != "MatMul" and len(t.node.inputs) > 2 and t.node.inputs[2] is not None:
                bias = ConstantEdit(t.node.name, 2, -1, len(wq.scale), fold.positions)
                fold = dataclasses.replace(fold, constants=(*fold.constants, bias))
        smoothing[name] = dataclasses.replace(sm, into=fold)
    return dataclasses.replace(plan, smoothing=smoothing, weights=weights, biases=biases)


def _divided(array: np.ndarray, positions: np.ndarray, factors: np.ndarray) -> np.ndarray:
    result = array.astype(np.float64)
    result[positions] /= factors
    return result.astype(array.dtype)


def _carries(t: Target, wq: WeightQuant, bias, axis: int) -> bool:
    """``t``'s weight scales can carry a division of its output along ``axis`` (counted from the last): float32,
    one scale per output channel of an unshared weight, a compensation and a bias (if any) per channel."""
    weight = t.weight
    output = t.node.outputs[0]
    if output.dtype not in (None, ir.DataType.FLOAT) or weight.chain or len(weight.source.uses()) != 1:
        return False
    if wq.emulated is not None or wq.zero_point is not None or wq.granularity.block_size or wq.scale.ndim != 1:
        return False
    if wq.granularity.axis != weight.channel_axis or (bias is not None and bias.per_position):
        return False
    b = t.node.inputs[2] if t.op != "MatMul" and len(t.node.inputs) > 2 else None
    if b is not None and (b.const_value is None or b.const_value.size != wq.scale.size):
        return False
    out_axis = t.output_channel_axis
    if out_axis >= 0:  # Conv, Gemm: the output has the rank of the weight (2 for Gemm)
        out_axis -= len(output.shape) if output.shape is not None else len(weight.source.const_value.shape)
    return out_axis == axis
