"""The layers onnxbc quantizes, and a reason for every candidate it leaves alone.

Targets:

1. ``Conv``, ``ConvTranspose``, ``Gemm`` and ``MatMul`` whose weight is a constant initializer (see
   ``graph_utils.constant_tensor``; the prepare passes lift ``Constant`` nodes), possibly reached through
   ``Transpose``/``Reshape``/``Squeeze``/``Unsqueeze``/``Flatten``/``Identity``/``Cast``
   (tied embeddings read the table through a Transpose). The activation input is quantized per tensor,
   the weight per output channel (or per block / per tensor).
2. ``MatMul`` of two activations (attention scores and context): both inputs are quantized; no weight.
3. ``LSTM``, ``GRU`` and ``RNN`` whose ``W`` [directions, gates x hidden, input] and ``R`` [directions,
   gates x hidden, hidden] are constants: both are quantized per row (axis 1: one channel per gate and hidden
   unit), weight-only. ``weight`` is the W site, ``recurrence`` the R site. The input and the states stay
   float whatever ``--activations`` says (ONNX has no integer recurrent op: the recurrence runs in float), and
   the layer gets no compensation bias (``compensation.bias_skip_reason``).

Weights are grouped by initializer. An initializer shared by several layers is quantized once, along one
channel axis; a ``Gather`` on axis 0 may share it when that axis is the channel axis (an embedding table
tied to the output projection). Layers inside ``If``/``Loop`` bodies get their weights quantized but
their activations stay float: calibration cannot observe values inside subgraphs.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict

import numpy as np
import onnx_ir as ir

from onnxbc.passes.graph_utils import constant_tensor

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
RECURRENT_OPS = ("LSTM", "GRU", "RNN")
CHAIN_OPS = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast")
FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE)
UNSUPPORTED_WEIGHT_OPS = {
    "Einsum": "Einsum is not quantized (rewrite it as MatMul to quantize it)",
}
RECURRENT_NOTE = (
    "recurrent layer: weight-only, W and R per gate-channel; its input and states stay float "
    "(ONNX has no integer LSTM/GRU/RNN: the recurrence runs in float on the dequantized weights; ONNX Runtime's "
    "CPU kernel pre-packs only initializer weights, so it may run slower: 1.5x on a bidirectional LSTM measured; "
    "a policy rule 'skip = true' keeps a layer float)"
)
SUBGRAPH_NOTE = "inside a subgraph: weights quantized, input left float (no calibration statistics there)"


@dataclasses.dataclass(frozen=True)
class WeightSite:
    """Where a layer reads its weight: an initializer and the nodes between it and the layer."""

    source: ir.Value
    chain: tuple[ir.Node, ...]
    input_index: int  # which input of the layer reads the weight
    channel_axis: int  # output-channel axis, on the source tensor
    input_axis: int | None  # input-feature axis on the source (for blocks); None when not traceable


@dataclasses.dataclass
class Target:
    node: ir.Node
    activation_inputs: tuple[int, ...]  # node input indices quantized as activations
    weight: WeightSite | None  # None for activation x activation MatMul; W for a recurrent layer
    output_channel_axis: int  # channel axis of the node output (may be negative)
    in_subgraph: bool = False
    notes: list[str] = dataclasses.field(default_factory=list)
    recurrence: WeightSite | None = None  # LSTM/GRU/RNN: the recurrence weight R

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def sites(self) -> tuple[WeightSite, ...]:
        """Every weight the layer reads: W, and R for a recurrent layer."""
        return tuple(s for s in (self.weight, self.recurrence) if s is not None)

    @property
    def observable(self) -> bool:
        """Calibration sees the layer's input and output, so its error is measured and compensated: a layer of
        the main graph that is not recurrent (a recurrent layer is weight-only and feeds its error back)."""
        return not self.in_subgraph and self.recurrence is None

    @property
    def op(self) -> str:
        return self.node.op_type

    @property
    def kind(self) -> str:
        return "weighted" if self.weight is not None else "activation_matmul"


@dataclasses.dataclass(frozen=True)
class Skipped:
    name: str
    op: str
    reason: str


@dataclasses.dataclass
class WeightGroup:
    """One initializer, quantized once, and the layers (and embedding lookups) that read it."""

    source: ir.Value
    channel_axis: int
    input_axis: int | None
    targets: list[Target]
    gathers: list[ir.Node]

    @property
    def name(self) -> str:
        return self.source.name


@dataclasses.dataclass
class Targets:
    targets: list[Target]
    skipped: list[Skipped]
    weights: dict[str, WeightGroup]

    def activation_uses(self) -> dict[str, list[tuple[Target, int]]]:
        """Activation value name -> the (target, input index) pairs that read it quantized."""
        uses: dict[str, list[tuple[Target, int]]] = defaultdict(list)
        for t in self.targets:
            for i in t.activation_inputs:
                uses[t.node.inputs[i].name].append((t, i))
        return dict(uses)


def find_targets(model: ir.Model, *, quantize_attention: bool = True) -> Targets:
    targets: list[Target] = []
    skipped: list[Skipped] = []
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in UNSUPPORTED_WEIGHT_OPS and any(constant_tensor(v) is not None for v in node.inputs[1:]):
            skipped.append(Skipped(node.name, node.op_type, UNSUPPORTED_WEIGHT_OPS[node.op_type]))
            continue
        if node.op_type not in WEIGHTED_OPS + RECURRENT_OPS:
            continue
        result = _match(node, model.graph, quantize_attention)
        if isinstance(result, str):
            skipped.append(Skipped(node.name, node.op_type, result))
        else:
            targets.append(result)
    targets, weights, refused = _group_weights(targets)
    skipped.extend(refused)
    return Targets(targets, skipped, weights)


def _match(node: ir.Node, main: ir.Graph, quantize_attention: bool) -> Target | str:
    """A Target for ``node``, or the reason it is not one."""
    op = node.op_type
    in_subgraph = node.graph is not main
    inputs = node.inputs
    if len(inputs) < 2 or inputs[0] is None or inputs[1] is None:
        return "missing input"
    if op in RECURRENT_OPS:
        return _recurrent(node, in_subgraph)
    if op == "MatMul":
        a, b = inputs[0], inputs[1]
        if _dtype(a) not in FLOAT_TYPES + (None,) or _dtype(b) not in FLOAT_TYPES + (None,):
            return "integer MatMul"
        a_const, b_const = _traces_to_constant(a), _traces_to_constant(b)
        if a_const and b_const:
            return "both inputs are constant (fold it first)"
        if b_const or a_const:
            w_index, x_index = (1, 0) if b_const else (0, 1)
            rank = _rank(inputs[w_index])
            if rank is not None and rank < 2:
                return "1-D weight (a vector product)"
            # y = x @ W: channels are W's last axis; y = W @ x: channels are W's rows (axis -2).
            axes = (-1, -2) if b_const else (-2, -1)
            out_axis = -1 if b_const else -2
            return _weighted(node, x_index, w_index, axes, out_axis, in_subgraph)
        if not quantize_attention:
            return "activation x activation MatMul left float (--no-quantize-attention)"
        if in_subgraph:
            return "activation x activation MatMul inside a subgraph: no calibration statistics there"
        return Target(node, (0, 1), None, -1)
    if op == "Gemm":
        if _traces_to_constant(inputs[0]) and not _traces_to_constant(inputs[1]):
            return "Gemm with a constant A and an activation B is not supported"
        trans_b = node.attributes.get_int("transB", 0)
        axes = (0, 1) if trans_b else (1, 0)
        return _weighted(node, 0, 1, axes, 1, in_subgraph)
    # Conv weight [O, I/g, k...]; ConvTranspose weight [I, O/g, k...].
    axes = (0, 1) if op == "Conv" else (1, 0)
    return _weighted(node, 0, 1, axes, 1, in_subgraph)


def _weighted(
    node: ir.Node, x_index: int, w_index: int, axes: tuple[int, int], out_axis: int, in_subgraph: bool
) -> Target | str:
    """A weighted target; ``axes`` = (channel axis, input-feature axis) of the weight as the node sees it."""
    site = _trace_weight(node.inputs[w_index], w_index, axes)
    if isinstance(site, str):
        return site
    if _dtype(site.source) not in FLOAT_TYPES:
        return f"weight '{site.source.name}' has type {_dtype(site.source)}, not a float type"
    x = node.inputs[x_index]
    notes = []
    if _dtype(x) not in FLOAT_TYPES + (None,):
        return f"input '{x.name}' is {_dtype(x)}, not a float tensor"
    activations: tuple[int, ...] = (x_index,)
    if in_subgraph:
        activations = ()
        notes.append(SUBGRAPH_NOTE)
    return Target(node, activations, site, out_axis, in_subgraph, notes)


def _recurrent(node: ir.Node, in_subgraph: bool) -> Target | str:
    """A weight-only target for an LSTM/GRU/RNN: W (input 1) and R (input 2), channels on axis 1 (gates x
    hidden), input features on axis 2; its output's channel axis is Y's last (hidden)."""
    if len(node.inputs) < 3 or node.inputs[2] is None:
        return "missing input"
    sites = []
    for index in (1, 2):
        site = _trace_weight(node.inputs[index], index, (1, 2))
        if isinstance(site, str):
            return site
        if _dtype(site.source) not in FLOAT_TYPES:
            return f"weight '{site.source.name}' has type {_dtype(site.source)}, not a float type"
        sites.append(site)
    notes = [RECURRENT_NOTE] + ([SUBGRAPH_NOTE] if in_subgraph else [])
    return Target(node, (), sites[0], -1, in_subgraph, notes, recurrence=sites[1])


def _trace_weight(value: ir.Value, input_index: int, axes: tuple[int, int]) -> WeightSite | str:
    """Follow ``value`` back through shape-only nodes to an initializer, mapping the two axes."""
    chain: list[ir.Node] = []
    while constant_tensor(value) is None:
        producer = value.producer()
        if producer is None:
            if value.is_graph_input() and value.is_initializer():
                return f"weight '{value.name}' is also a graph input, so it can be replaced at run time"
            if value.is_graph_input():
                return f"weight '{value.name}' is a graph input (supplied at run time)"
            return "weight is computed at run time"
        if producer.op_type not in CHAIN_OPS or not _is_float_cast(producer):
            return "weight is computed at run time"
        if len(value.uses()) != 1:
            return f"weight path '{value.name}' is shared with other nodes"
        chain.append(producer)
        value = producer.inputs[0]
    if not value.is_initializer():
        return f"weight '{value.name}' comes from a Constant node, not an initializer (the prepare passes lift it)"
    chain.reverse()
    shapes = _chain_shapes(tuple(value.const_value.shape), chain)
    if shapes is None:
        return f"cannot follow the shape of weight '{value.name}' through {[n.op_type for n in chain]}"
    rank = len(shapes[-1])
    mapped = []
    for axis in axes:
        axis %= rank
        for node, shape_in in zip(reversed(chain), reversed(shapes[:-1])):
            axis = _axis_before(node, axis, shape_in)
            if axis is None:
                break
        mapped.append(axis)
    if mapped[0] is None:
        return f"the channel axis of weight '{value.name}' is merged or split by a Reshape"
    return WeightSite(value, tuple(chain), input_index, mapped[0], mapped[1])


def _is_float_cast(node: ir.Node) -> bool:
    if node.op_type != "Cast":
        return True
    return ir.DataType(node.attributes.get_int("to", 0)) in FLOAT_TYPES


def _chain_shapes(source: tuple[int, ...], chain: list[ir.Node]) -> list[tuple[int, ...]] | None:
    """Static shapes from the source through each chain node (None if one cannot be computed)."""
    shapes = [source]
    for node in chain:
        s = shapes[-1]
        op = node.op_type
        if op in ("Identity", "Cast"):
            out = s
        elif op == "Transpose":
            perm = node.attributes.get_ints("perm", list(reversed(range(len(s)))))
            out = tuple(s[p] for p in perm)
        elif op == "Flatten":
            axis = node.attributes.get_int("axis", 1) % (len(s) + 1)
            out = (math.prod(s[:axis]), math.prod(s[axis:]))
        elif op in ("Reshape", "Squeeze", "Unsqueeze"):
            out = _reshape_like(node, s)
            if out is None:
                return None
        else:
            return None
        shapes.append(tuple(int(d) for d in out))
    return shapes


def _reshape_like(node: ir.Node, s: tuple[int, ...]) -> tuple[int, ...] | None:
    second = node.inputs[1] if len(node.inputs) > 1 else None
    if second is not None:
        tensor = ir.convenience.get_const_tensor(second)
        if tensor is None:
            return None
        arg = [int(v) for v in tensor.numpy().reshape(-1)]
    else:  # opset < 13 Squeeze/Unsqueeze keep axes in an attribute
        arg = list(node.attributes.get_ints("axes", []))
    if node.op_type == "Reshape":
        shape = [s[i] if d == 0 and i < len(s) else d for i, d in enumerate(arg)]
        if -1 in shape:
            known = math.prod(d for d in shape if d != -1)
            shape[shape.index(-1)] = math.prod(s) // known if known else 0
        return tuple(shape) if math.prod(shape) == math.prod(s) else None
    if node.op_type == "Squeeze":
        axes = {a % len(s) for a in arg} if arg else {i for i, d in enumerate(s) if d == 1}
        return tuple(d for i, d in enumerate(s) if i not in axes)
    out_rank = len(s) + len(arg)
    axes = {a % out_rank for a in arg}
    it = iter(s)
    return tuple(1 if i in axes else next(it) for i in range(out_rank))


def _axis_before(node: ir.Node, axis: int, shape_in: tuple[int, ...]) -> int | None:
    """The input axis of a shape-only node that becomes output ``axis``, or None if it is not one axis."""
    op = node.op_type
    if op in ("Identity", "Cast"):
        return axis
    if op == "Transpose":
        perm = node.attributes.get_ints("perm", list(reversed(range(len(shape_in)))))
        return perm[axis]
    out_shape = _chain_shapes(shape_in, [node])[-1]
    # A reshape keeps axis `axis` whole if some input axis has the same size and the same number of
    # elements before it.
    before = math.prod(out_shape[:axis])
    for j, dim in enumerate(shape_in):
        if dim == out_shape[axis] and math.prod(shape_in[:j]) == before:
            return j
    return None


def _group_weights(targets: list[Target]) -> tuple[list[Target], dict[str, WeightGroup], list[Skipped]]:
    """Group targets by weight initializer; refuse groups that cannot share one quantized tensor (and a
    recurrent layer whole when one of its two weights is refused)."""
    by_source: dict[str, list[tuple[Target, WeightSite]]] = defaultdict(list)
    for t in targets:
        for site in t.sites:
            by_source[site.source.name].append((t, site))
    refused: dict[int, str] = {}  # id(target) -> reason
    gathers: dict[str, list[ir.Node]] = {}
    for name, members in by_source.items():
        reason, gathers[name] = _sharing(name, members)
        if reason:
            refused.update((id(t), reason) for t, _ in members if id(t) not in refused)
    spread = True
    while spread:  # a layer refused for one weight leaves its other weight float for every layer sharing it
        spread = False
        for name, members in by_source.items():
            why = next((refused[id(t)] for t, _ in members if id(t) in refused), None)
            for t, _ in members:
                if why and id(t) not in refused:
                    refused[id(t)], spread = f"weight '{name}' is shared with a layer left float: {why}", True
    groups: dict[str, WeightGroup] = {}
    for name, members in by_source.items():
        if any(id(t) in refused for t, _ in members):
            continue
        source = members[0][1].source
        input_axes = {site.input_axis for _, site in members}
        input_axis = input_axes.pop() if len(input_axes) == 1 else None
        layers = list({id(t): t for t, _ in members}.values())
        groups[name] = WeightGroup(source, members[0][1].channel_axis, input_axis, layers, gathers[name])
    kept = [t for t in targets if id(t) not in refused]
    skipped = [Skipped(t.name, t.op, refused[id(t)]) for t in targets if id(t) in refused]
    return kept, groups, skipped


def _sharing(name: str, members: list[tuple[Target, WeightSite]]) -> tuple[str | None, list[ir.Node]]:
    """Why the layers reading initializer ``name`` cannot share one quantized tensor (None: they can), and the
    embedding lookups that read it too."""
    source = members[0][1].source
    reason = None
    axes = {site.channel_axis for _, site in members}
    if len(axes) > 1:
        reason = f"weight '{name}' is shared by layers that need different channel axes"
    entries = {id(site.chain[0] if site.chain else t.node) for t, site in members}
    gathers = []
    for use in source.uses():
        if id(use.node) in entries:
            continue
        if use.node.op_type == "Gather" and use.idx == 0 and use.node.attributes.get_int("axis", 0) == 0:
            gathers.append(use.node)
            continue
        reason = (
            reason or f"weight '{name}' is also read by '{use.node.name}' ({use.node.op_type}), which is not quantized"
        )
    if gathers and axes != {0}:
        reason = reason or f"weight '{name}' is shared with an embedding lookup along another axis"
    return reason, gathers


def _traces_to_constant(value: ir.Value) -> bool:
    """Whether ``value`` is a weight: a constant or an initializer (an initializer that is also a graph input
    counts, so that ``_trace_weight`` refuses it with a reason), possibly through shape-only ops."""
    while constant_tensor(value) is None and not value.is_initializer():
        producer = value.producer()
        if producer is None or producer.op_type not in CHAIN_OPS:
            return False
        value = producer.inputs[0]
    return True


def _dtype(value: ir.Value) -> ir.DataType | None:
    if value.const_value is not None:
        return value.const_value.dtype
    return value.dtype


def _rank(value: ir.Value) -> int | None:
    if value.const_value is not None:
        return len(value.const_value.shape)
    return len(value.shape) if value.shape is not None else None


def weight_array(site_or_group: WeightSite | WeightGroup) -> np.ndarray:
    """The source initializer's values as a float32 numpy array."""
    return np.asarray(site_or_group.source.const_value.numpy(), dtype=np.float32)
