"""Layer pairs for data-free compensation (DF-MPC), and input statistics modelled from BatchNormalization.

A pair is matched on the prepared graph (``find_pairs``):

1. a low-bit layer: ``Conv`` or ``Gemm`` (``transA = 0``, ``alpha = 1``, ``beta = 1`` or no ``C``) in the
   main graph, reading its own, unshared initializer weight with a constant bias or none;
2. optionally ``BatchNormalization`` (inference mode, constant parameters); without it the layer's bias
   is the folded BN: the prepare passes fold it (``passes.fold_bn``) and hand its statistics on in
   ``folded``; when nothing did, the weights alone decide the factors and no statistics are known;
3. a positively homogeneous activation: ``Relu``, ``LeakyRelu`` or ``PRelu``;
4. any number of per-channel, positively homogeneous ops: ``MaxPool``, ``AveragePool``, the global pools,
   ``Identity``, ``Dropout``, ``Flatten`` (axis 1: channel ``i`` becomes a block of input features);
5. the next layer: a non-grouped ``Conv``, or a ``Gemm``/``MatMul`` whose input features are those channels,
   reading its own, unshared initializer weight.

Every value on the way has exactly one reader and is not a graph output. Pairs are taken greedily in graph
order: a layer that is the next layer of a taken pair is not also the low layer of another. Every candidate
not taken gets a reason naming the node.

``input_moments`` models the mean and variance of a layer's input per feature, data-free: back from the
input to a BatchNormalization (in the graph, or folded into a layer, its statistics in ``folded``), whose
output is modelled per channel as ``N(beta, gamma^2)``, then forward through what lies between:

- elementwise activations (``ACTIVATIONS``; ``Mul(v, Sigmoid(b v))`` is SiLU / swish): the moments of the activation of
  a normal variable with the moments so far (exact for one activation after a BatchNormalization; a normal
  approximation of its input for a second one);
- the ops of rule 4: unchanged moments (``MaxPool`` is treated like ``AveragePool``, whose mean is the same:
  a known underestimate; pools lower the variance: ignored), ``Flatten`` repeats each channel's moments;
- ``Add`` of two modelled values (a residual): means and variances add (independent branches).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import numpy as np
import onnx_ir as ir

from onnxbc.passes.fold_bn import FoldedBatchNorm
from onnxbc.passes.graph_utils import constant_tensor
from onnxbc.solvers.dfmpc import clipped_moments, gaussian_moments
from onnxbc.targets import Target, Targets

HOMOGENEOUS = ("Relu", "LeakyRelu", "PRelu")
LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
CHANNELWISE = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Identity", "Dropout", "Flatten")


@dataclasses.dataclass(frozen=True)
class Pair:
    low: Target
    next: Target
    batchnorm: ir.Node | None
    activation: ir.Node
    path: tuple[ir.Node, ...]
    repeat: int  # input features of ``next`` per output channel of ``low`` (Flatten of C x H x W: H * W)
    folded: FoldedBatchNorm | None = None  # the BatchNormalization the prepare passes folded into ``low``

    @property
    def name(self) -> str:
        return f"{self.low.name} -> {self.next.name}"

    @property
    def batchnorm_name(self) -> str | None:
        """The pair's BatchNormalization, in the graph or folded into ``low`` by the prepare passes."""
        if self.batchnorm is not None:
            return self.batchnorm.name
        return self.folded.name if self.folded is not None else None


@dataclasses.dataclass(frozen=True)
class Unused:
    """A candidate low-bit layer that is not compensated, and why."""

    low: str
    next: str | None
    reason: str


def find_pairs(
    model: ir.Model, targets: Targets, folded: Mapping[str, FoldedBatchNorm] | None = None
) -> tuple[list[Pair], list[Unused]]:
    """``folded``: the statistics of the BatchNormalizations the prepare passes folded (``FoldResult.batchnorms``)."""
    by_node = {id(t.node): t for t in targets.targets}
    pairs: list[Pair] = []
    unused: list[Unused] = []
    taken_next: dict[str, Pair] = {}
    for t in targets.targets:
        found = _match(t, by_node, targets, folded or {})
        if isinstance(found, Unused):
            unused.append(found)
        elif t.name in taken_next:
            unused.append(
                Unused(
                    t.name, found.next.name, f"'{t.name}' is the high-precision layer of pair {taken_next[t.name].name}"
                )
            )
        else:
            pairs.append(found)
            taken_next[found.next.name] = found
    return pairs, unused


def _match(t: Target, by_node: dict[int, Target], targets: Targets, folded: Mapping) -> Pair | Unused:
    reason = _low_reason(t, targets)
    if reason:
        return Unused(t.name, None, reason)
    value = t.node.outputs[0]
    node = _single_reader(value)
    if isinstance(node, str):
        return Unused(t.name, None, node)
    bn = None
    if node.op_type == "BatchNormalization":
        reason = batchnorm_reason(node)
        if reason:
            return Unused(t.name, None, reason)
        bn, value = node, node.outputs[0]
        node = _single_reader(value)
        if isinstance(node, str):
            return Unused(t.name, None, node)
    if node.op_type not in HOMOGENEOUS:
        return Unused(
            t.name,
            None,
            f"'{node.name}' ({node.op_type}) after it is not a positively homogeneous activation "
            "(the rescaling needs act(c u) = c act(u), as ReLU has)",
        )
    activation, value = node, node.outputs[0]
    path: list[ir.Node] = []
    while True:
        node = _single_reader(value)
        if isinstance(node, str):
            return Unused(t.name, None, node)
        if id(node) in by_node:
            break
        if node.op_type not in CHANNELWISE:
            return Unused(
                t.name, None, f"'{node.name}' ({node.op_type}) before the next layer mixes or shifts channels"
            )
        if node.op_type == "Flatten" and node.attributes.get_int("axis", 1) != 1:
            return Unused(t.name, None, f"Flatten '{node.name}' has axis != 1")
        path.append(node)
        value = node.outputs[0]
    nxt = by_node[id(node)]
    reason = _next_reason(nxt, value, targets)
    if reason:
        return Unused(t.name, nxt.name, reason)
    repeat = _repeat(path)
    if repeat is None:
        return Unused(t.name, nxt.name, f"the shape before Flatten on the way to '{nxt.name}' is not static")
    channels = t.weight.source.const_value.shape[t.weight.channel_axis]
    group = targets.weights[nxt.weight.source.name]
    features = nxt.weight.source.const_value.shape[group.input_axis]
    if features != channels * repeat:
        return Unused(
            t.name, nxt.name, f"'{nxt.name}' reads {features} input features, not {channels} channels x {repeat}"
        )
    return Pair(t, nxt, bn, activation, tuple(path), repeat, folded.get(t.node.outputs[0].name))


def _low_reason(t: Target, targets: Targets) -> str | None:
    if t.op not in ("Conv", "Gemm"):
        return f"DF-MPC pairs start at a Conv or Gemm, not {t.op}"
    reason = _weight_reason(t, targets)
    if reason:
        return reason
    node = t.node
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if t.op == "Gemm":
        if node.attributes.get_int("transA", 0) or node.attributes.get_float("alpha", 1.0) != 1.0:
            return f"Gemm '{node.name}' has transA or alpha != 1"
        if bias is not None and node.attributes.get_float("beta", 1.0) != 1.0:
            return f"Gemm '{node.name}' has beta != 1"
    if bias is not None:
        values = constant_tensor(bias)
        if values is None:
            return f"bias '{bias.name}' of '{node.name}' is not a constant"
        channels = t.weight.source.const_value.shape[t.weight.channel_axis]
        if values.size != channels:
            return f"bias '{bias.name}' of '{node.name}' is not one value per output channel"
    return None


def _weight_reason(t: Target, targets: Targets) -> str | None:
    if t.in_subgraph:
        return "inside a subgraph"
    if t.weight.chain:
        return f"weight '{t.weight.source.name}' is reached through {[n.op_type for n in t.weight.chain]}"
    group = targets.weights.get(t.weight.source.name)
    if group is None or len(group.targets) > 1 or group.gathers:
        return f"weight '{t.weight.source.name}' is shared with other nodes"
    return None


def _next_reason(nxt: Target, value: ir.Value, targets: Targets) -> str | None:
    node = nxt.node
    if nxt.weight is None or not any(node.inputs[i] is value for i in nxt.activation_inputs):
        return f"'{node.name}' does not read the activation as its data input"
    if nxt.op == "ConvTranspose":
        return f"next layer '{node.name}' is a ConvTranspose (not supported)"
    if nxt.op == "Conv" and node.attributes.get_int("group", 1) != 1:
        weight = constant_tensor(node.inputs[1])  # None when reached through a Transpose/Reshape/...
        kind = "depthwise" if weight is not None and weight.shape[1] == 1 else "grouped"
        return f"{kind} next layer '{node.name}': not supported"
    if nxt.op == "Gemm" and node.attributes.get_int("transA", 0):
        return f"next layer '{node.name}' has transA"
    if nxt.op == "MatMul" and (node.inputs[0] is not value or len(nxt.weight.source.const_value.shape) != 2):
        return f"next layer '{node.name}' is not x @ W with a 2-D W"
    return _weight_reason(nxt, targets)


def batchnorm_reason(node: ir.Node) -> str | None:
    if node.attributes.get_int("training_mode", 0):
        return f"BatchNormalization '{node.name}' is in training mode"
    if len(node.inputs) < 5 or any(constant_tensor(v) is None for v in node.inputs[1:5]):
        return f"BatchNormalization '{node.name}' has parameters computed at run time"
    return None


def batchnorm_params(node: ir.Node) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """(scale, B, mean, var, epsilon) of an inference BatchNormalization, float64."""
    gamma, beta, mean, var = (np.asarray(constant_tensor(v).numpy(), np.float64) for v in node.inputs[1:5])
    return gamma, beta, mean, var, node.attributes.get_float("epsilon", 1e-5)


def _single_reader(value: ir.Value) -> ir.Node | str:
    if value.is_graph_output():
        return f"'{value.name}' is a graph output"
    uses = value.uses()
    if len(uses) != 1:
        return f"branch: '{value.name}' is read by {len(uses)} nodes"
    return uses[0].node


def _repeat(path: list[ir.Node]) -> int | None:
    flatten = [n for n in path if n.op_type == "Flatten"]
    if not flatten:
        return 1
    shape = flatten[0].inputs[0].shape
    if shape is None or any(not isinstance(d, int) for d in shape.dims[2:]):
        return None
    return math.prod(shape.dims[2:])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _function(node: ir.Node) -> Callable[[np.ndarray], np.ndarray] | None:
    """A smooth or piecewise elementwise activation as a numpy function (ReLU and Clip: ``_activation``)."""
    op, attrs = node.op_type, node.attributes
    if op == "LeakyRelu":
        alpha = attrs.get_float("alpha", 0.01)
        return lambda z: np.where(z > 0, z, alpha * z)
    if op == "HardSigmoid":
        alpha, beta = attrs.get_float("alpha", 0.2), attrs.get_float("beta", 0.5)
        return lambda z: np.clip(alpha * z + beta, 0.0, 1.0)
    functions = {"HardSwish": lambda z: z * np.clip(z + 3.0, 0.0, 6.0) / 6.0, "Sigmoid": _sigmoid, "Tanh": np.tanh}
    return functions.get(op)


ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "HardSigmoid", "HardSwish", "Sigmoid", "Tanh", "Mul(x, Sigmoid(b x))")


@dataclasses.dataclass(frozen=True)
class InputModel:
    """Modelled mean and variance of a layer's input per feature, and where they come from."""

    mean: np.ndarray
    var: np.ndarray
    batchnorms: tuple[str, ...]
    activations: tuple[str, ...]  # op types between the BatchNormalization(s) and the layer

    def describe(self) -> str:
        names = ", ".join(f"'{n}'" for n in self.batchnorms[:3])
        names += f" and {len(self.batchnorms) - 3} more" if len(self.batchnorms) > 3 else ""
        through = f" through {', '.join(dict.fromkeys(self.activations))}" if self.activations else ""
        return f"BatchNormalization {names}{through}"


def input_moments(t: Target, folded: Mapping[str, FoldedBatchNorm] | None = None) -> InputModel | str:
    """The modelled moments of ``t``'s input (see the module docstring), or why there are none (``folded`` as
    for ``find_pairs``)."""
    if not t.activation_inputs:
        return "no activation input is modelled (a recurrent layer, or a layer inside a subgraph)"
    return _moments(t.node.inputs[t.activation_inputs[0]], folded or {})


def _moments(value: ir.Value, folded: Mapping[str, FoldedBatchNorm]) -> InputModel | str:
    stats = folded.get(value.name)
    if stats is not None:
        return InputModel(stats.shift, np.square(stats.scale), (stats.name,), ())
    node = value.producer()
    if node is None:
        return f"'{value.name}' is a graph input: no statistics without data"
    if node.op_type == "BatchNormalization" and not batchnorm_reason(node):
        gamma, beta, *_ = batchnorm_params(node)
        return InputModel(beta, np.square(gamma), (node.name,), ())
    if node.op_type in CHANNELWISE:
        found = _moments(node.inputs[0], folded)
        if isinstance(found, str) or node.op_type != "Flatten":
            return found
        repeat = _repeat([node])
        if repeat is None or node.attributes.get_int("axis", 1) != 1:
            return f"Flatten '{node.name}': cannot map features to channels"
        return dataclasses.replace(found, mean=np.repeat(found.mean, repeat), var=np.repeat(found.var, repeat))
    if node.op_type == "Add" and len(node.inputs) == 2:
        a, b = (_moments(v, folded) for v in node.inputs)
        if isinstance(a, str) or isinstance(b, str):
            return a if isinstance(a, str) else b
        if a.mean.shape != b.mean.shape:
            return f"Add '{node.name}': its inputs have different channel counts"
        return InputModel(a.mean + b.mean, a.var + b.var, a.batchnorms + b.batchnorms, a.activations + b.activations)
    found = _activation(node)
    if isinstance(found, str):
        return found
    f, source = found
    inner = _moments(source, folded)
    if isinstance(inner, str):
        return inner
    mean, var = (
        clipped_moments(inner.mean, inner.var, *f)
        if isinstance(f, tuple)
        else gaussian_moments(f, inner.mean, inner.var)
    )
    op = "SiLU" if node.op_type == "Mul" else node.op_type
    return InputModel(mean, var, inner.batchnorms, (*inner.activations, op))


def _swish_beta(x: ir.Value | None, gate: ir.Value | None) -> float | None:
    """``b`` when ``gate`` is ``Sigmoid(x)`` (1) or ``Sigmoid(x * b)`` with a scalar constant ``b`` (Paddle's swish)."""
    producer = gate.producer() if gate is not None else None
    if x is None or producer is None or producer.op_type != "Sigmoid":
        return None
    inner = producer.inputs[0]
    if inner is x:
        return 1.0
    scaled = inner.producer()
    if scaled is None or scaled.op_type != "Mul" or x not in scaled.inputs:
        return None
    tensor = constant_tensor(scaled.inputs[1] if scaled.inputs[0] is x else scaled.inputs[0])
    values = None if tensor is None else tensor.numpy().reshape(-1)
    return float(values[0]) if values is not None and values.size == 1 else None


def _activation(
    node: ir.Node,
) -> tuple[tuple[float, float] | Callable[[np.ndarray], np.ndarray], ir.Value] | str:
    """An elementwise activation as clip bounds or a numpy function, and the value it reads; or why not."""
    op = node.op_type
    if op == "Relu":
        return (0.0, math.inf), node.inputs[0]
    if op == "Clip":
        bounds = []
        for i, key, default in ((1, "min", -math.inf), (2, "max", math.inf)):
            value = node.inputs[i] if len(node.inputs) > i else None
            if value is None:  # opset 6: attributes; opset 11+: optional inputs
                bounds.append(node.attributes.get_float(key, default))
                continue
            tensor = constant_tensor(value)
            if tensor is None:
                return f"Clip '{node.name}' has a bound computed at run time"
            bounds.append(float(tensor.numpy().reshape(-1)[0]))
        return tuple(bounds), node.inputs[0]
    f = _function(node)
    if f is not None:
        return f, node.inputs[0]
    if op == "Mul" and len(node.inputs) == 2:
        for x, gate in (node.inputs, node.inputs[::-1]):
            beta = _swish_beta(x, gate)
            if beta is not None:
                return (lambda z, b=beta: z * _sigmoid(b * z)), x
    if op in LAYER_OPS:
        return f"'{node.name}' ({op}) has no BatchNormalization statistics"
    return f"input comes from {op} '{node.name}': no data-free model for it"
