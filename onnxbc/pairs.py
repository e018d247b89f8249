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

``input_mean`` models ``E[x]`` of a layer's input data-free: back through the ops of rule 4 to
``Relu(BatchNormalization(.))``, or to ``Relu(layer)`` with a BatchNormalization folded into the layer (its
statistics in ``folded``), whose pre-activation is modelled as ``N(beta, gamma^2)``. ``MaxPool`` is
treated like ``AveragePool`` (its mean is higher: a known underestimate).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from onnxbc.passes.fold_bn import FoldedBatchNorm
from onnxbc.passes.graph_utils import constant_tensor
from onnxbc.solvers.dfmpc import relu_mean
from onnxbc.targets import Target, Targets

HOMOGENEOUS = ("Relu", "LeakyRelu", "PRelu")
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


def input_mean(t: Target, folded: Mapping[str, FoldedBatchNorm] | None = None) -> tuple[np.ndarray, str] | str:
    """Modelled ``E[x]`` per input feature of ``t`` and the BatchNormalization it comes from, or why not
    (``folded`` as for ``find_pairs``)."""
    value = t.node.inputs[t.activation_inputs[0]]
    repeat = 1
    while True:
        producer = value.producer()
        if producer is None:
            return f"input '{value.name}' is a graph input: no statistics without data"
        if producer.op_type in CHANNELWISE:
            if producer.op_type == "Flatten":
                found = _repeat([producer])
                if found is None or producer.attributes.get_int("axis", 1) != 1:
                    return f"Flatten '{producer.name}': cannot map features to channels"
                repeat *= found
            value = producer.inputs[0]
            continue
        if producer.op_type != "Relu":
            return f"input comes from {producer.op_type} '{producer.name}', not Relu(BatchNormalization)"
        before = (folded or {}).get(producer.inputs[0].name)
        if before is not None:
            return np.repeat(relu_mean(before.shift, before.scale), repeat), before.name
        bn = producer.inputs[0].producer()
        if bn is None or bn.op_type != "BatchNormalization" or batchnorm_reason(bn):
            return f"input comes from Relu '{producer.name}' without a BatchNormalization before it"
        gamma, beta, *_ = batchnorm_params(bn)
        return np.repeat(relu_mean(beta, gamma), repeat), bn.name
