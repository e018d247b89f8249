"""The statistics compress collects, as probes for the collector.

- ``RangeProbe``: a streaming ``|x|`` histogram of one activation (pass 1: activation ranges).
- ``LayerErrorProbe``: beside each layer, a *shadow* copy that reads the quantized input and the
  dequantized weight; in-graph reductions give per-channel sums of ``d = y_float - y_shadow``, of ``d^2``
  and of ``y_float^2`` (pass 2). The shadow sees the float model's input, fake-quantized, as in the Bias
  Compensation paper's code ("independent" mode). Only vectors leave the device. Zero padding, strides,
  groups and Gemm's alpha/beta are handled exactly because the shadow is the same op with the same
  attributes.
- ``MeanErrorProbe``: a ``LayerErrorProbe`` on samples that only fit the compensation bias (pass 2's fit split,
  when there are held-out samples), for a MatMul, Gemm or 1x1 Conv that no activation follows: the row sums of
  its float and quantized input, whose products with the float and quantized weight (in numpy, float64) give the
  summed output error, the bias, without computing the layer again.
- ``PairedErrorProbe``: the same moments for a graph holding the float model beside the current
  quantized model ("sequential" mode: the layer reads the already compensated quantized upstream).

Every probe is mergeable (sharded calibration, ``calibration.shards``): ``blank()`` is a copy that folds batches
as the probe does, with no statistics yet (histograms on the probe's grids) and no reference to the model, so
it can be pickled to a worker; ``merge(other)`` folds in what such a copy gathered. Exactness is the statistics'
own (``solvers.ranges``): counts and extremes exact, sums to float rounding.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np
import onnx_ir as ir

from onnxbc import model_io
from onnxbc.calibration import tokens
from onnxbc.calibration.stash import Stash
from onnxbc.errors import OnnxbcError
from onnxbc.passes.graph_utils import GraphBuilder
from onnxbc.passes.qdq import activation_qdq, weight_dequantize
from onnxbc.plan import ActivationQuant, QuantPlan, Smoothing
from onnxbc.solvers.bias import ErrorMoments
from onnxbc.solvers.gptq import SecondMoments
from onnxbc.solvers.quant import Granularity, chunks
from onnxbc.solvers.ranges import AbsHistogram, ChannelHistograms, ChannelMoments, observe
from onnxbc.targets import Target


class RangeProbe:
    """Statistics of one layer input: the histogram of ``|x|`` and the dtype it was seen with; along
    ``channel_axis``, the mean square per channel (to weigh weight errors by the input they multiply) and,
    with ``channel_histograms``, per-channel histograms (to price smoothing). All are folded in one blocked
    pass over each batch (``ranges.observe``)."""

    def __init__(self, value: str, channel_axis: int | None = None, *, channel_histograms: bool = False) -> None:
        self.value = value
        self.channel_axis = channel_axis
        self.hist = AbsHistogram()
        self.channels = ChannelHistograms(channel_axis) if channel_histograms else None
        self.moments = ChannelMoments() if channel_axis is not None else None
        self.dtype: np.dtype | None = None
        self._axis = channel_axis  # the channel axis of what ``observe`` sees (real tokens only: one less)

    def attach(self, builder: GraphBuilder) -> list[ir.Value]:
        x = builder.values[self.value]
        real, axis = _real_tokens(builder, x), self.channel_axis
        if real is None or (axis is not None and axis % len(x.shape) < 2):  # channels on the batch or token axis
            return [x]
        if axis is not None and axis >= 0:
            self._axis = axis - 1
        return [x, real.selector]

    def update(self, arrays: Sequence[np.ndarray], split: str) -> None:
        if split != "fit":
            return
        x = arrays[0]
        self.dtype = x.dtype
        if not np.issubdtype(self.dtype, np.floating):
            return
        if len(arrays) > 1:  # [real tokens, features...]
            x = x[arrays[1]]
        try:
            observe(x, self._axis, hist=self.hist, channels=self.channels, moments=self.moments)
        except ValueError as e:
            raise OnnxbcError(f"activation '{self.value}': {e}") from e

    def blank(self) -> RangeProbe:
        return _detached(
            self,
            hist=self.hist.blank(),
            channels=self.channels and self.channels.blank(),
            moments=self.moments and ChannelMoments(),
            dtype=None,
        )

    def merge(self, other: RangeProbe) -> None:
        try:
            self.hist.merge(other.hist)
            if self.channels is not None:
                self.channels.merge(other.channels)
        except ValueError as e:
            raise ValueError(f"activation '{self.value}': {e}") from e
        if self.moments is not None:
            self.moments.merge(other.moments)
        if other.dtype is not None:  # (a dtype's truth value is its number of fields)
            self.dtype = other.dtype

    def channel_power(self) -> np.ndarray | None:
        """Mean of ``x^2`` per channel (None when not collected)."""
        return None if self.moments is None else self.moments.mean_square()

    def channel_mean(self) -> np.ndarray | None:
        """Mean of ``x`` per channel (None when not collected)."""
        return None if self.moments is None else self.moments.mean()


class OutputPowerProbe:
    """The mean square of a layer's output (one number: in-graph ``ReduceSumSquare`` and ``Size``), which
    turns a priced output error into a relative one."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._sum = 0.0
        self._count = 0

    def attach(self, b: GraphBuilder) -> list[ir.Value]:
        y = b.nodes[self.target.name].outputs[0]
        real = _real_tokens(b, y)
        if y.dtype not in (None, ir.DataType.FLOAT):
            y = b.op("Cast", [y], {"to": ir.DataType.FLOAT})
        y, count = _masked(b, y, real)
        return [b.op("ReduceSumSquare", [y], {"keepdims": 0}), count]

    def update(self, arrays: Sequence[np.ndarray], split: str) -> None:
        if split != "fit":
            return
        self._sum += float(arrays[0])
        self._count += int(arrays[1])

    def blank(self) -> OutputPowerProbe:
        return _detached(self, _sum=0.0, _count=0)

    def merge(self, other: OutputPowerProbe) -> None:
        self._sum += other._sum
        self._count += other._count

    def mean_square(self) -> float:
        return self._sum / max(self._count, 1)


class MomentsProbe:
    """``E[x x^T]`` and ``E[x]`` of a layer input whose features are on the last axis (GPTQ): in-graph
    ``X^T X`` over the rows of the flattened input, so only a ``[d, d]`` matrix leaves the device."""

    def __init__(self, value: str, features: int) -> None:
        self.value = value
        self.features = features
        self.moments = SecondMoments()
        self.holdout = SecondMoments()

    def attach(self, b: GraphBuilder) -> list[ir.Value]:
        x = b.values[self.value]
        real = _real_tokens(b, x)
        if x.dtype not in (None, ir.DataType.FLOAT):
            x = b.op("Cast", [x], {"to": ir.DataType.FLOAT})
        x, count = _masked(b, x, real)  # padded tokens: zero rows, not counted
        rows = b.op("Reshape", [x, b.const(np.array([-1, self.features], np.int64), "shape")])
        gram = b.op("MatMul", [b.op("Transpose", [rows], {"perm": [1, 0]}), rows])
        total = b.op("ReduceSum", [rows, b.const(np.array([0], np.int64), "axes")], {"keepdims": 0})
        return [gram, total, count]

    def update(self, arrays: Sequence[np.ndarray], split: str) -> None:
        gram, total, size = arrays
        (self.moments if split == "fit" else self.holdout).add(gram, total, int(size) // self.features)

    def held_bytes(self) -> int:
        """What the statistic holds while it is gathered: ``[d, d]`` float64 sums for the fit and held-out samples
        (the collector cuts segments so that they fit the memory budget with the weights)."""
        return 2 * 8 * self.features * (self.features + 1)

    def finished(self) -> None:
        """The ``[d, d]`` sums go to temporary files (``SecondMoments.park``), read back when a layer needs them."""
        stash = Stash(0, "onnxbc-moments-")
        self.moments.park(stash)
        self.holdout.park(stash)

    def blank(self) -> MomentsProbe:
        return _detached(self, moments=SecondMoments(), holdout=SecondMoments())

    def merge(self, other: MomentsProbe) -> None:
        for mine, theirs in ((self.moments, other.moments), (self.holdout, other.holdout)):
            if theirs.sum_xx is not None:
                mine.add(theirs.sum_xx, theirs.sum_x, theirs.count)


# Pointwise activations a layer's output may flow into: its error after them is what the next layer sees.
POINTWISE = frozenset(
    {"Relu", "LeakyRelu", "Elu", "Selu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Softplus", "Clip", "Gelu"}
)


class ErrorProbe:
    """Per-channel (or per-position) error moments of one layer, kept apart per data split.

    ``moments`` are of the layer output, where a compensation bias is folded. When the output flows into
    exactly one pointwise activation (ReLU, Clip, HardSwish, ...), ``after`` holds the moments after it too:
    errors that a ReLU discards do not reach the next layer, so choices are scored on those.
    """

    def __init__(self, target: Target, *, per_position: bool = False) -> None:
        self.target = target
        self.layer = target.name
        self.per_position = per_position
        self.moments = {"fit": ErrorMoments(), "holdout": ErrorMoments()}
        self.after: dict[str, ErrorMoments] | None = None

    def update(self, arrays: Sequence[np.ndarray], split: str) -> None:
        self._fold(self.moments[split], arrays[:4])
        if self.after is not None:
            self._fold(self.after[split], arrays[4:])

    def blank(self) -> ErrorProbe:
        fresh = lambda moments: moments and {split: ErrorMoments() for split in moments}  # noqa: E731
        return _detached(self, moments=fresh(self.moments), after=fresh(self.after))

    def merge(self, other: ErrorProbe) -> None:
        for mine, theirs in ((self.moments, other.moments), (self.after or {}, other.after or {})):
            for split, moments in theirs.items():
                if moments.sum_d is not None:
                    self._check_shape(mine[split], moments.sum_d)
                mine[split].merge(moments)

    def _fold(self, moments: ErrorMoments, arrays: Sequence[np.ndarray]) -> None:
        sum_d, sum_d2, sum_y2, size = arrays
        self._check_shape(moments, sum_d)
        moments.update(sum_d, sum_d2, sum_y2, int(size) // max(sum_d.size, 1))

    def _check_shape(self, moments: ErrorMoments, sum_d: np.ndarray) -> None:
        if moments.sum_d is not None and moments.sum_d.shape != sum_d.shape:
            raise OnnxbcError(
                f"layer '{self.layer}': its output shape changes between batches "
                f"({moments.sum_d.shape} vs {sum_d.shape}); --bias-shape position needs fixed shapes"
            )

    def _error_outputs(self, b: GraphBuilder, y: ir.Value, y_quant: ir.Value) -> list[ir.Value]:
        """In-graph sums of d = y - y_quant, d^2 and y^2 (in float32) and the element count; again after
        the pointwise activation ``y`` flows into, if it flows into exactly one. The float model's own tensors
        (``y``, its activation's output) and their sums are shared by every probe of the layer."""
        axis = self.target.output_channel_axis
        outputs = self._sums(b, self._own_channels(b, y, axis), y_quant)
        act = activation_after(self.target)
        if act is not None:
            act = b.nodes[act.name]
            with b.after(b.last(act, y_quant.producer())):
                node = ir.Node(act.domain, act.op_type, [y_quant, *act.inputs[1:]], act.attributes.values())
                if self.after is None:  # attached once per collect: pass 2 collects its splits apart
                    self.after = {"fit": ErrorMoments(), "holdout": ErrorMoments()}
                outputs += self._sums(b, self._own_channels(b, act.outputs[0], axis), b.add(node, "act"))
        return outputs

    def _own_channels(self, b: GraphBuilder, x: ir.Value, axis: int) -> ir.Value:
        """``x`` (a float output, a weight or a bias) on the output channels this probe measures: all of them."""
        return x

    def _channel_count(self) -> int:
        t = self.target
        return t.weight.source.const_value.shape[t.weight.channel_axis]

    def _sums(self, b: GraphBuilder, y: ir.Value, y_quant: ir.Value) -> list[ir.Value]:
        # per position, each position has its own sums: padding only adds to its own positions'
        real = None if self.per_position else _real_tokens(b, y)
        if y.dtype not in (None, ir.DataType.FLOAT):
            y = b.once(("float", y.name), lambda: b.op("Cast", [y], {"to": ir.DataType.FLOAT}))
            y_quant = b.op("Cast", [y_quant], {"to": ir.DataType.FLOAT})
        d, count = _masked(b, b.op("Sub", [y, y_quant], hint=f"{self.target.name}_error"), real)
        key = (y.name, self.per_position)  # the reduction axes follow from the target and the mode
        y_real = y if real is None else b.once(("real", y.name), lambda: b.op("Mul", [y, real.weights]))
        return [
            self._reduce(b, d),
            self._reduce(b, b.op("Mul", [d, d])),
            b.once(("sum_y2", *key), lambda: self._reduce(b, b.op("Mul", [y_real, y_real]))),
            count,
        ]

    def _reduce(self, b: GraphBuilder, x: ir.Value) -> ir.Value:
        """Sum over every axis but the output channel (or only over the batch axis, per position)."""
        if self.per_position:
            return b.op("ReduceSum", [x, b.const(np.array([0], np.int64), "axes")], {"keepdims": 0})
        t = self.target
        if t.weight is None:  # activation x activation: one total
            return b.op("ReduceSum", [x], {"keepdims": 0})
        axis = t.output_channel_axis
        rank = _rank(b.nodes[t.name].outputs[0])
        if rank is None and t.op == "Gemm":
            rank = 2
        elif rank is None and t.op in ("Conv", "ConvTranspose") and not t.weight.chain:
            rank = len(t.weight.source.const_value.shape)
        channels = self._channel_count()
        if rank is not None:
            axes = [i for i in range(rank) if i != axis % rank]
            return b.op("ReduceSum", [x, b.const(np.array(axes, np.int64), "axes")], {"keepdims": 0})
        if axis not in (-1, -2):
            raise ValueError(f"layer '{t.name}': unknown output rank for channel axis {axis}")
        if axis == -2:  # y = W @ x with unknown rank: fold the last axis first
            x = b.op("ReduceSum", [x, b.const(np.array([-1], np.int64), "axes")], {"keepdims": 0})
        flat = b.op("Reshape", [x, b.const(np.array([-1, channels], np.int64), "shape")])
        return b.op("ReduceSum", [flat, b.const(np.array([0], np.int64), "axes")], {"keepdims": 0})


class LayerErrorProbe(ErrorProbe):
    """Independent mode: a shadow of the layer reads the float model's input, fake-quantized."""

    def __init__(self, target: Target, plan: QuantPlan, *, per_position: bool = False) -> None:
        super().__init__(target, per_position=per_position)
        self.plan = plan

    def attach(self, b: GraphBuilder) -> list[ir.Value]:
        with b.after(b.nodes[self.target.name]):
            return self._attach(b)

    def _attach(self, b: GraphBuilder) -> list[ir.Value]:
        t = self.target
        node = b.nodes[t.name]
        shadow = b.add(
            ir.Node(node.domain, node.op_type, self._shadow_inputs(b), node.attributes.values(), num_outputs=1),
            f"{t.name}_shadow",
        )
        return self._error_outputs(b, node.outputs[0], shadow)

    def means(self, floats: dict | None = None) -> MeanErrorProbe | None:
        """This probe's statistic on the fit split where only its mean error counts there (held-out samples
        give the squared errors; ``score`` and the compensation bias take nothing else from the fit split),
        for a layer whose output summed over rows is its weight times its input's row sums: a MatMul or Gemm
        with its weight on the right, a 1x1 Conv of stride 1 and no padding, reading an initializer directly,
        whose output reaches no pointwise activation (``after``). None for any other layer, and per position.
        ``floats``: the float weight's products, shared by the probes of one pass (a layer's shadow and trials
        read the same float input: its product is made once)."""
        if self.per_position or _features(self.target) is None:
            return None
        return MeanErrorProbe(self, {} if floats is None else floats)

    def _attach_means(self, b: GraphBuilder) -> list[ir.Value]:
        """The row sums of the layer's float input and of its input as the shadow reads it (padded tokens left
        out), in float64; and how many rows they sum."""
        t = self.target
        node = b.nodes[t.name]
        with b.after(node):
            x = node.inputs[0]
            real = _real_tokens(b, x)  # the quantized input's shape may be unknown: the same rows
            (sum_x, rows), (sum_q, _) = (_row_sums(b, t, v, real) for v in (x, self._quantized_inputs(b)[0]))
            return [sum_x, sum_q, rows]

    def _fold_means(self, split: str, sum_x: np.ndarray, sum_q: np.ndarray, rows: int, floats: dict) -> None:
        """The summed output error from the summed inputs: the float weight times ``sum_x`` (from ``floats``, keyed
        by layer and split, when another probe of the layer made it) less the shadow's weight times ``sum_q`` (the
        float64 products of a chunk of output channels at a time)."""
        w = self.target.weight
        weight = w.source.const_value.numpy()
        channels = w.channel_axis % weight.ndim
        wq = self.plan.weights.get(w.source.name)
        key = (self.target.name, split)
        if key not in floats:
            floats[key] = _product(sum_x, _parts(weight, channels), w.input_axis, channels)
        quantized = _parts(weight, channels) if wq is None else wq.dequantized_parts(channels)
        sum_d = floats[key] - _product(sum_q, quantized, w.input_axis, channels)
        del weight, quantized
        model_io.release_value(w.source)  # a mapped weight goes out of memory again
        sum_d = self._own_sums(sum_d)
        self._check_shape(self.moments[split], sum_d)
        self.moments[split].update(sum_d, None, None, rows)

    def _own_sums(self, sums: np.ndarray) -> np.ndarray:
        """Per-channel sums of every output channel on the channels this probe measures: all of them."""
        return sums

    def _shadow_inputs(self, b: GraphBuilder) -> list[ir.Value]:
        """The layer's inputs as its shadow reads them: the input quantized (and smoothed) as ``plan`` says, the
        weight dequantized (on this probe's channels, with the bias)."""
        t = self.target
        inputs = self._quantized_inputs(b)
        if t.weight is not None and t.weight.source.name in self.plan.weights:
            wq = self.plan.weights[t.weight.source.name]
            initializers, dq = weight_dequantize(b.namer, wq, t.weight.source.const_value.dtype)
            _append(b, initializers, [dq])
            w = dq.outputs[0]
            for original in t.weight.chain:  # replay Transpose/Reshape/... on the dequantized weight
                step = b.nodes[original.name]
                w = b.add(ir.Node(step.domain, step.op_type, [w, *step.inputs[1:]], step.attributes.values()), "w")
            inputs[t.weight.input_index] = self._own_channels(b, w, t.weight.channel_axis)
            if t.op in ("Conv", "Gemm") and len(inputs) > 2 and inputs[2] is not None:
                inputs[2] = self._own_channels(b, inputs[2], 0)  # the bias
        return inputs

    def _quantized_inputs(self, b: GraphBuilder) -> list[ir.Value]:
        """The layer's inputs, its activation inputs quantized (and smoothed) as ``plan`` says."""
        t = self.target
        inputs = list(b.nodes[t.name].inputs)
        for i in t.activation_inputs:
            x = inputs[i]
            smoothing, aq = self.plan.smoothing.get(x.name), self.plan.activations.get(x.name)
            if smoothing is not None or aq is not None:
                # one per input and quantizer: the shadows of all its readers and their trials read it
                key = ("quantized input", x.name, id(smoothing), aq)
                inputs[i] = b.once(key, lambda x=x, sm=smoothing, aq=aq: _quantized_input(b, x, sm, aq))
        return inputs


class MeanErrorProbe:
    """A ``LayerErrorProbe`` in a pass over the fit split alone (``LayerErrorProbe.means``): the row sums of the
    layer's float and quantized input, per split; once all batches are in (``finished``), the layer's summed
    output error from them, with no squared sums, in that probe's moments."""

    def __init__(self, probe: LayerErrorProbe, floats: dict) -> None:
        self.probe = probe
        self.floats = floats  # (layer, split) -> the float weight's product, shared (``LayerErrorProbe.means``)
        self.sums: dict[str, list[np.ndarray]] = {}  # split -> [float input's, quantized input's]
        self.rows: dict[str, int] = {}

    def attach(self, b: GraphBuilder) -> list[ir.Value]:
        return self.probe._attach_means(b)

    def update(self, arrays: Sequence[np.ndarray], split: str) -> None:
        self._add(split, [np.asarray(a, np.float64) for a in arrays[:2]], int(arrays[2]))

    def _add(self, split: str, sums: list[np.ndarray], rows: int) -> None:
        mine = self.sums.get(split)
        self.sums[split] = sums if mine is None else [a + b for a, b in zip(mine, sums)]
        self.rows[split] = self.rows.get(split, 0) + rows

    def finished(self) -> None:
        for split, (sum_x, sum_q) in self.sums.items():
            self.probe._fold_means(split, sum_x, sum_q, self.rows[split], self.floats)
        self.sums, self.rows = {}, {}

    def blank(self) -> MeanErrorProbe:
        return MeanErrorProbe(self.probe.blank(), {})

    def merge(self, other: MeanErrorProbe) -> None:
        for split, sums in other.sums.items():
            self._add(split, sums, other.rows[split])


def _parts(weight: np.ndarray, axis: int) -> Iterator[tuple[tuple[slice, ...], np.ndarray]]:
    """``weight`` in chunks along ``axis``, each with its index (as ``WeightQuant.dequantized_parts``)."""
    return ((index, weight[index]) for index, _, _ in chunks(weight.shape, axis, Granularity(axis)))


def _product(sums: np.ndarray, parts, input_axis: int, channels: int) -> np.ndarray:
    """``sums`` (over a weight's input features) times the weight given as ``parts`` (index, values) that each
    hold some output channels (along axis ``channels``), in float64: one value per output channel."""
    products = (np.tensordot(sums, part.astype(np.float64), axes=([0], [input_axis])).reshape(-1) for _, part in parts)
    return np.concatenate(list(products))  # the parts come in channel order


def _features(t: Target) -> int | None:
    """The input features of a layer whose output summed over its rows (tokens, positions) is its weight times its
    input summed over them, plus its bias once a row (``LayerErrorProbe.means``); None for any other layer."""
    w = t.weight
    if w is None or not t.observable or w.chain or w.input_axis is None or activation_after(t) is not None:
        return None
    if t.activation_inputs != (0,) or w.input_index != 1:
        return None
    dims, attributes = w.source.const_value.shape, t.node.attributes
    if t.op == "MatMul" and len(dims) == 2:
        return dims[w.input_axis]
    if t.op == "Gemm" and len(dims) == 2 and not attributes.get_int("transA", 0):
        return dims[w.input_axis] if attributes.get_float("alpha", 1.0) == 1.0 else None
    pointwise = (
        len(dims) > 2
        and all(d == 1 for d in dims[2:])
        and attributes.get_int("group", 1) == 1
        and all(s == 1 for s in attributes.get_ints("strides", []))
        and not any(attributes.get_ints("pads", []))
        and attributes.get_string("auto_pad", "NOTSET") in ("NOTSET", "VALID")
    )
    return dims[w.input_axis] if t.op == "Conv" and pointwise else None


def _row_sums(b: GraphBuilder, t: Target, x: ir.Value, real: _RealTokens | None) -> tuple[ir.Value, ir.Value]:
    """``x`` (an input of ``t``) summed over its rows but the padded tokens ``real`` leaves out, in float64, one
    value per feature; and how many rows it summed. Once per input, right after it is made (every reader of it
    shares them)."""
    features = _features(t)
    rank = len(t.weight.source.const_value.shape) if t.op == "Conv" else None

    def make() -> tuple[ir.Value, ir.Value]:
        with b.after_producer(x):
            x32 = x if x.dtype in (None, ir.DataType.FLOAT) else b.op("Cast", [x], {"to": ir.DataType.FLOAT})
            masked, size = _masked(b, x32, real)
            x64 = b.op("Cast", [masked], {"to": ir.DataType.DOUBLE})
            if rank is not None:  # [N, C, spatial...]: every axis but the channels
                axes = [0, *range(2, rank)]
            else:
                x64, axes = b.op("Reshape", [x64, b.const(np.array([-1, features], np.int64), "shape")]), [0]
            total = b.op("ReduceSum", [x64, b.const(np.array(axes, np.int64), "axes")], {"keepdims": 0})
            return total, b.op("Div", [size, b.const(np.array(features, np.int64), "features")])

    return b.once(("row sums", x.name, features, rank, real is None), make)


class ChannelTrialProbe(LayerErrorProbe):
    """A trial that quantizes its layer's weight otherwise on some output ``channels`` only (min-max scales where
    the search moved them: ``variants.trial_probes``; ``by_channel`` says which layers), and the rest of the layer
    as ``base`` (its shadow) does: its shadow computes those channels alone (the weight, the bias and the float
    output gathered), and ``complete`` takes the other channels' sums from ``base`` once both are collected. The
    sums of the whole trial, to float rounding, for the share of the layer's work those channels are."""

    def __init__(self, target: Target, plan: QuantPlan, base: LayerErrorProbe, channels: np.ndarray) -> None:
        super().__init__(target, plan)
        self.base, self.channels = base, channels

    def _own_channels(self, b: GraphBuilder, x: ir.Value, axis: int) -> ir.Value:
        index = b.once(("channels", id(self)), lambda: b.const(self.channels.astype(np.int64), "channels"))
        out = b.op("Gather", [x, index], {"axis": axis})
        out.dtype = x.dtype  # typed and shaped like ``x`` (the padding mask and the float32 casts go by them)
        if x.shape is not None:
            dims = list(x.shape)
            dims[axis] = len(self.channels)
            out.shape = ir.Shape(dims)
        return out

    def _channel_count(self) -> int:
        return len(self.channels)

    def _own_sums(self, sums: np.ndarray) -> np.ndarray:
        return sums[self.channels]

    def complete(self) -> None:
        """Every channel's sums: ``base``'s, with this trial's on its channels (after the collector ran both)."""
        for mine, theirs in ((self.moments, self.base.moments), (self.after or {}, self.base.after or {})):
            for split, own in mine.items():
                whole = theirs[split]
                if own.empty or whole.empty:
                    continue
                sums = [None if a is None else a.copy() for a in (whole.sum_d, whole.sum_d2, whole.sum_y2)]
                for full, part in zip(sums, (own.sum_d, own.sum_d2, own.sum_y2)):
                    if full is not None:
                        full[self.channels] = part
                mine[split] = ErrorMoments()
                mine[split].update(*sums, whole.count)


def by_channel(t: Target) -> bool:
    """Whether ``t`` can be measured on some of its output channels alone (``ChannelTrialProbe``): a Conv of one
    group, a Gemm or a MatMul reading its weight directly, with a bias (if any) of one value per channel, and no
    per-channel constant in the activation its output flows into."""
    w = t.weight
    if w is None or w.chain or t.in_subgraph or t.op not in ("Conv", "Gemm", "MatMul"):
        return False
    if t.op == "Conv" and t.node.attributes.get_int("group", 1) != 1:
        return False
    bias = t.node.inputs[2] if t.op != "MatMul" and len(t.node.inputs) > 2 else None
    if bias is not None and (bias.shape is None or list(bias.shape) != [w.source.const_value.shape[w.channel_axis]]):
        return False
    act = activation_after(t)
    return act is None or all(v is None or _one_value(v) for v in act.inputs[1:])


def _one_value(v: ir.Value) -> bool:
    return v.shape is not None and v.shape.is_static() and int(np.prod(v.shape.numpy())) == 1


def activation_after(t: Target) -> ir.Node | None:
    """The pointwise activation (ReLU, Clip, ...) that alone reads ``t``'s output in the model, if any."""
    uses = t.node.outputs[0].uses()  # in the model itself: probes add readers to the copy
    if len(uses) == 1 and uses[0].node.op_type in POINTWISE and uses[0].idx == 0:
        return uses[0].node
    return None


def _quantized_input(b: GraphBuilder, x: ir.Value, smoothing: Smoothing | None, aq: ActivationQuant | None) -> ir.Value:
    """``x`` divided by its smoothing factors and fake-quantized, computed right after ``x`` (before any reader)."""
    with b.after_producer(x):
        if smoothing is not None:
            inverse = (1.0 / smoothing.factors).reshape(smoothing.divisor_shape())
            dtype = x.dtype or ir.DataType.FLOAT
            x = b.op("Mul", [x, b.const(inverse.astype(dtype.numpy()), "smoothing")])
        if aq is not None:
            initializers, nodes, x = activation_qdq(b.namer, x, aq, _float_type(aq.float_dtype))
            _append(b, initializers, nodes)
    return x


class PairedErrorProbe(ErrorProbe):
    """Sequential mode: in a graph holding the float model beside the current quantized one (whose
    values carry ``prefix``), the error of the quantized copy's layer output against the float one."""

    def __init__(self, target: Target, prefix: str, *, per_position: bool = False) -> None:
        super().__init__(target, per_position=per_position)
        self.prefix = prefix

    def attach(self, b: GraphBuilder) -> list[ir.Value]:
        y = b.nodes[self.target.name].outputs[0]
        y_quant = b.values[self.prefix + y.name]
        with b.after(y_quant.producer()):  # both outputs exist once the quantized copy's layer has run
            return self._error_outputs(b, y, y_quant)


def _detached(probe, **statistics):
    """A shallow copy of ``probe`` with ``statistics`` in place of its own and without the model objects it
    attaches from (``target``, ``plan``): what a worker folds batches into (``blank``)."""
    out = copy.copy(probe)
    vars(out).update(statistics)
    for name in ("target", "plan", "base"):
        if name in vars(out):
            setattr(out, name, None)
    return out


@dataclasses.dataclass(frozen=True)
class _RealTokens:
    """The padding mask as graph values."""

    selector: ir.Value  # bool [batch, tokens], fetched to pick rows in numpy
    weights: ir.Value  # float 0/1, shaped to broadcast against a tensor of one rank
    count: ir.Value  # int64: how many real tokens the run has
    size: ir.Value  # int64: batch x tokens


def _real_tokens(b: GraphBuilder, x: ir.Value) -> _RealTokens | None:
    """The padding mask's values for ``x``, when ``x`` is indexed like the model's padding mask
    (``calibration.tokens``); None otherwise. Made once per graph (and rank), before every node."""
    mask = tokens.mask_input(b.graph)
    if mask is None or not tokens.covers(tokens.dims(mask), tokens.dims(x)):
        return None
    rank = len(x.shape)
    with b.after_producer(mask):  # a graph input: before every node
        selector = b.once(("tokens", "bool"), lambda: b.op("Cast", [mask], {"to": ir.DataType.BOOL}, hint="real"))
        weights = b.once(
            ("tokens", "weights", rank),
            lambda: b.op(
                "Unsqueeze",
                [
                    b.op("Cast", [selector], {"to": ir.DataType.FLOAT}),
                    b.const(np.arange(2, rank, dtype=np.int64), "axes"),
                ],
                hint="real_weights",
            ),
        )
        count = b.once(
            ("tokens", "count"),
            lambda: b.op("ReduceSum", [b.op("Cast", [selector], {"to": ir.DataType.INT64})], {"keepdims": 0}),
        )
        size = b.once(("tokens", "size"), lambda: b.op("Size", [mask]))
    return _RealTokens(selector, weights, count, size)


def _masked(b: GraphBuilder, x: ir.Value, real: _RealTokens | None) -> tuple[ir.Value, ir.Value]:
    """``x`` with its padded positions zeroed and the number of its elements at real tokens (int64); without
    ``real`` (``x`` is not indexed by tokens), ``x`` and its size."""
    size = b.op("Size", [x])
    if real is None:
        return x, size
    return b.op("Mul", [x, real.weights]), b.op("Div", [b.op("Mul", [size, real.count]), real.size])


def _append(b: GraphBuilder, initializers: list[ir.Value], nodes: list[ir.Node]) -> None:
    for init in initializers:
        b.graph.register_initializer(init)
    b.insert(nodes)


def _rank(value: ir.Value) -> int | None:
    return len(value.shape) if value.shape is not None else None


def _float_type(dtype: np.dtype) -> ir.DataType:
    return ir.DataType.from_numpy(np.dtype(dtype))
