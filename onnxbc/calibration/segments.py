"""Cutting a calibration graph into consecutive segments that run one after another, each in its own session.

One ONNX Runtime session of a whole instrumented graph holds every weight (and every shadow) at once. Cut into
segments, only one segment's weights are loaded at a time; what flows from one segment to later ones (the
*boundary* tensors) is kept per batch by the collector.

1. ``order``: the nodes in the order to cut, with each node a probe added placed right after the last node it
   reads (a probe may append its reductions at the end of the graph; left there, the tensor it reduces would
   cross every later cut), and each node that computes from constants alone right before its first reader.
2. ``find_cuts``: the fewest segments that each read at most the room a memory budget leaves (or, for N
   segments asked for, at most ``1 + SLACK`` times an even share of the weight bytes), the heaviest node in a
   segment of its own where it reads more (a 47 MB embedding table in a 90 MB model makes two segments), and
   among those the cuts crossed by the fewest bytes (a dynamic program over cut positions, linear in the number of
   nodes). Weights are initializer bytes as a session holds them (``held_bytes``: a quantized weight at the
   size of the float weight ONNX Runtime folds it into), each counted at its first reader (node counts when
   there are no weights). A tensor crosses a cut when a node before it produces the tensor and a node after
   it reads it; graph inputs and initializers never cross (every segment reads them directly). So a chain of
   blocks is cut between blocks and a residual block is not cut along its branch, where its skip tensor
   crosses too. Values one probe fetches together count as read by the last of their producers: a probe split
   across a cut makes its earlier values wait for the later ones.
3. ``split``: one model per segment, holding its own nodes and the initializers they read (the tensors are
   shared, not copied). Its inputs are the graph inputs and the boundary tensors it reads; its outputs are the
   fetched values it produces and the boundary tensors later segments read. A value made from constants alone
   (a dequantized weight) never crosses: a later segment that reads it gets a copy of the nodes that make it,
   which ONNX Runtime folds there (a W4 tied LM head reads the dequantized embedding table the first segment's
   Gather read; passed on, it was computed and kept on every run).

Limits: sizes are estimated from the value shapes the model declares, each symbolic dimension taken as
``SYMBOLIC_DIM``; a crossing value of unknown shape counts as the largest known one. An initializer read by
several segments is loaded by each.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence

import onnx_ir as ir

SYMBOLIC_DIM = 64  # the size a dimension named at run time (batch, sequence) is guessed to have
SLACK = 0.25  # how much more than an even share of the weights a segment may read


@dataclasses.dataclass
class Segment:
    """One segment's model, the names its session fetches, and its first and last node (for messages)."""

    model: ir.Model
    outputs: list[str]
    first: str
    last: str

    @property
    def inputs(self) -> list[str]:
        return [v.name for v in self.model.graph.inputs]


def order(nodes: Sequence[ir.Node], added: Sequence[ir.Node]) -> list[ir.Node]:
    """``nodes`` (in topological order) with each node of ``added`` moved up to right after the last node it
    reads from; one that reads no node stays after the node of the model before it."""
    added_set = set(added)
    anchor: dict[ir.Node, int] = {}
    keys = {}
    model_position = -1
    for i, node in enumerate(nodes):
        if node not in added_set:
            model_position = anchor[node] = i
            keys[node] = (i, 0, i)
            continue
        producers = [anchor[p] for v in _reads(node) if (p := v.producer()) in anchor]
        anchor[node] = max(producers, default=model_position)
        keys[node] = (anchor[node], 1, i)
    return _constants_beside_readers(sorted(nodes, key=keys.__getitem__))


def _constants_beside_readers(nodes: Sequence[ir.Node]) -> list[ir.Node]:
    """``nodes`` with each node that computes from constants alone (a weight's DequantizeLinear, Transpose or
    Cast, a ``Constant``) moved down to right before the first node that reads it. A QDQ pass or an exporter may
    put them all first, and every cut after them would carry the weights they make (a W4 Llama's dequantized
    weights: 3 GB on each run)."""
    constant = constant_nodes(nodes)
    index = {node: i for i, node in enumerate(nodes)}
    placed: set[ir.Node] = set()
    result: list[ir.Node] = []
    for node in nodes:
        if node in constant:
            continue
        ahead, stack = [], [node]  # the constant nodes it needs that are not placed yet, in their order
        while stack:
            for v in _reads(stack.pop()):
                if (p := v.producer()) in constant and p not in placed:
                    placed.add(p)
                    ahead.append(p)
                    stack.append(p)
        result.extend(sorted(ahead, key=index.__getitem__))
        result.append(node)
    result.extend(node for node in nodes if node in constant and node not in placed)  # read by no node: last
    return result


RANDOM = {"RandomNormal", "RandomUniform"}  # nodes that read no tensor and still differ from run to run


def constant_nodes(nodes: Sequence[ir.Node]) -> set[ir.Node]:
    """The nodes of ``nodes`` (topological order) that compute from constants alone (weights that are not graph
    inputs, and what such nodes make, also read inside subgraphs): ONNX Runtime folds them into weights."""
    constant: set[ir.Node] = set()
    for node in nodes:
        if node.op_type not in RANDOM and all(
            (v.is_initializer() and not v.is_graph_input()) or v.producer() in constant for v in _reads(node)
        ):
            constant.add(node)
    return constant


def _copied(nodes: Sequence[ir.Node]) -> set[ir.Node]:
    """The nodes of ``constant_nodes`` that ``split`` copies into each later segment reading them, so that what
    they make never crosses a cut (a W4 model's tied LM head: the dequantized embedding table, 262 MB, passed on
    from the first segment to the last on every run); not those with subgraphs."""
    return {
        node
        for node in constant_nodes(nodes)
        if not any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values())
    }


def find_cuts(
    nodes: Sequence[ir.Node],
    count: int,
    groups: Sequence[Sequence[ir.Value]] = (),
    extra: Mapping[ir.Node, int] | None = None,
    *,
    room: int | None = None,
) -> list[int]:
    """Positions in ``nodes`` (topological order) where segments 2, 3, ... start, cut where the fewest bytes
    cross: the fewest segments that each read at most ``room`` bytes (what a memory budget leaves; a node that
    reads more gets a segment of its own), or, without ``room``, the fewest (at most ``count``) that each read at most
    ``1 + SLACK`` times an even share of the weight bytes (or of the heaviest node). ``groups`` are the values
    each probe fetches together; ``extra``: bytes held with a node's weights while its segment runs
    (``held_bytes``)."""
    weights = _at_readers(nodes, held_bytes(nodes, extra))
    if sum(weights) == 0:
        weights = [1] * len(nodes)
    done = [0]
    for w in weights:
        done.append(done[-1] + w)
    crossing = crossing_bytes(nodes, groups)
    if room is not None:
        return _cover(done, crossing, room)
    limit = (1 + SLACK) * max(done[-1] / count, *weights)
    while len(cuts := _cover(done, crossing, limit)) >= count:
        limit *= 1 + SLACK
    return cuts


def _at_readers(nodes: Sequence[ir.Node], weights: list[int]) -> list[int]:
    """``weights`` with each copied constant node's (``_copied``) moved to the first node that reads what it
    makes: wherever a cut falls, that reader's segment holds it (``split`` copies it there), so a constant node
    heavier than the room does not get a segment of its own beside its reader's."""
    copied = _copied(nodes)
    first: dict[ir.Value, int] = {}  # value -> the position of its first reader
    for i, node in enumerate(nodes):
        for v in _reads(node):
            first.setdefault(v, i)
    moved = list(weights)
    for i, node in enumerate(nodes):  # in order: a chain (DequantizeLinear, Transpose) ends at its last's reader
        readers = [first[v] for v in node.outputs if v in first]
        if node in copied and readers:
            moved[min(readers)] += moved[i]
            moved[i] = 0
    return moved


def _cover(done: list[float], crossing: list[float], limit: float) -> list[int]:
    """The cuts of the fewest segments reading at most ``limit`` each, or holding one node that reads more
    (``done``: weight before each position), the fewest bytes crossing them among those.

    ``best[p]`` is (segments, bytes crossed, previous cut) of the best cover of the first ``p`` nodes. Its last
    segment starts at some ``q`` with ``done[p] - done[q] <= limit``: a window of ``q`` that only moves right,
    so a deque of the window's candidates in increasing score gives each minimum in constant time."""

    def score(q: int) -> tuple[int, float]:
        return best[q][0] + 1, best[q][1] + (crossing[q] if q else 0.0)

    best: list[tuple[int, float, int]] = [(0, 0.0, 0)]
    window: collections.deque[int] = collections.deque()
    lo = 0
    for p in range(1, len(done)):
        while window and score(window[-1]) >= score(p - 1):
            window.pop()
        window.append(p - 1)
        while lo < p - 1 and done[p] - done[lo] > limit:  # one node alone may read more
            lo += 1
        while window[0] < lo:
            window.popleft()
        best.append((*score(window[0]), window[0]))
    cuts, p = [], len(done) - 1
    while best[p][2] > 0:
        p = best[p][2]
        cuts.append(p)
    return cuts[::-1]


def crossing_bytes(nodes: Sequence[ir.Node], groups: Sequence[Sequence[ir.Value]] = ()) -> list[float]:
    """Estimated bytes per run of the tensors crossing a cut before ``nodes[p]``, for each ``p`` (0..len)."""
    position = {node: i for i, node in enumerate(nodes)}
    copied = _copied(nodes)
    needed: dict[ir.Value, int] = {}  # value -> position of the last node that needs it
    for i, node in enumerate(nodes):
        for v in _reads(node):
            # what ``split`` copies to later readers crosses only until its first
            if v.producer() in position and (v.producer() not in copied or v not in needed):
                needed[v] = i
    for group in groups:
        made = [v for v in group if v.producer() in position]
        end = max((position[v.producer()] for v in made), default=0)
        for v in made:
            needed[v] = max(needed.get(v, 0), end)
    sizes = {v: _size(v) for v in needed}
    unknown = max((s for s in sizes.values() if s is not None), default=1)
    delta = [0.0] * (len(nodes) + 2)
    for v, end in needed.items():
        start = position[v.producer()] + 1
        if end >= start:
            size = unknown if sizes[v] is None else sizes[v]
            delta[start] += size
            delta[end + 1] -= size
    crossing, running = [], 0.0
    for d in delta[:-1]:
        running += d
        crossing.append(running)
    return crossing


def split(model: ir.Model, nodes: Sequence[ir.Node], cuts: Sequence[int], fetched: Sequence[ir.Value]) -> list[Segment]:
    """One model per segment of ``nodes`` (all of ``model``'s main graph, in topological order), none for a
    segment of copied constant nodes alone (``_read_here``). The nodes move into the segments' graphs: ``model``
    is left empty and must not be used afterwards."""
    main = model.graph
    bounds = [0, *cuts, len(nodes)]
    segment_of = {node: k for k in range(len(bounds) - 1) for node in nodes[bounds[k] : bounds[k + 1]]}
    outer = set(main.inputs) | set(main.initializers.values())
    copied = _copied(nodes)
    later: dict[ir.Value, int] = {}  # value -> the last segment that reads it
    for node in nodes:
        for v in _reads(node):
            if v.producer() not in copied:
                later[v] = max(later.get(v, 0), segment_of[node])
    wanted = set(fetched)
    main.outputs.clear()
    main.remove(nodes)
    segments = []
    for k in range(len(bounds) - 1):
        own = _read_here(nodes[bounds[k] : bounds[k + 1]], copied, wanted)
        if not own:
            continue
        outside = _Outside(copied)
        for node in own:
            for inner in _inner(node):
                for i, v in enumerate(inner.inputs):
                    producer = None if v is None else v.producer()
                    if v is not None and (v in outer if producer is None else segment_of.get(producer, k) != k):
                        inner.replace_input_with(i, outside.local(v))
        outputs = [v for node in own for v in node.outputs if v in wanted or later.get(v, k) > k]
        graph = ir.Graph(
            outside.inputs,
            outputs,
            nodes=[*outside.copies, *own],
            initializers=outside.initializers,
            opset_imports=dict(main.opset_imports),
            name=f"{main.name or 'main'}_segment{k + 1}",
        )
        sub = ir.Model(graph, ir_version=model.ir_version, functions=list(model.functions.values()))
        segments.append(Segment(sub, [v.name for v in outputs], own[0].name, own[-1].name))
    return segments


def _read_here(own: Sequence[ir.Node], copied: set[ir.Node], wanted: set[ir.Value]) -> list[ir.Node]:
    """``own`` less its nodes of ``copied`` that none of its nodes reads and no probe fetches: the segments that
    read them have copies."""
    read: set[ir.Value] = set()
    kept = []
    for node in reversed(own):
        if node not in copied or any(v in wanted or v in read for v in node.outputs):
            kept.append(node)
            read.update(_reads(node))
    return kept[::-1]


class _Outside:
    """What one segment reads from outside it, as its own values: the graph inputs and boundary tensors
    (``inputs``), the initializers, and copies of the nodes of ``copied`` (``copies``, in order) and of what
    they read."""

    def __init__(self, copied: set[ir.Node]) -> None:
        self.copied = copied
        self.inputs: list[ir.Value] = []
        self.initializers: list[ir.Value] = []
        self.copies: list[ir.Node] = []
        self._local: dict[ir.Value, ir.Value] = {}  # a value made outside the segment -> its copy

    def local(self, v: ir.Value) -> ir.Value:
        if v in self._local:
            return self._local[v]
        made = v.producer()
        if made in self.copied:
            clone = ir.Node(
                made.domain,
                made.op_type,
                [None if u is None else self.local(u) for u in made.inputs],
                attributes=[ir.Attr(a.name, a.type, a.value) for a in made.attributes.values()],
                overload=made.overload,
                num_outputs=len(made.outputs),
                version=made.version,
                name=made.name,
            )
            for out, new in zip(made.outputs, clone.outputs):
                new.name, new.type, new.shape = out.name, out.type, out.shape
                self._local[out] = new
            self.copies.append(clone)
        else:
            constant = v.const_value if v.is_initializer() else None
            shape = None if v.shape is None else v.shape.copy()
            self._local[v] = ir.Value(name=v.name, shape=shape, type=v.type, const_value=constant)
            (self.inputs if constant is None else self.initializers).append(self._local[v])
        return self._local[v]


def _inner(node: ir.Node) -> Iterator[ir.Node]:
    """``node`` and every node of its subgraphs (which may read the main graph's values)."""
    yield node
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.GRAPH:
            yield from ir.traversal.RecursiveGraphIterator(attr.value)
        elif attr.type == ir.AttributeType.GRAPHS:
            for graph in attr.value:
                yield from ir.traversal.RecursiveGraphIterator(graph)


def _reads(node: ir.Node) -> list[ir.Value]:
    """The values of ``node``'s graph that it reads, itself or inside its subgraphs."""
    found = {v: None for inner in _inner(node) for v in inner.inputs if v is not None and v.graph is node.graph}
    return list(found)


def held_bytes(nodes: Sequence[ir.Node], extra: Mapping[ir.Node, int] | None = None) -> list[int]:
    """The bytes of initializers (and ``Constant`` values) each node reads, as a session holds them: a constant
    DequantizeLinear input at the size of its output, into which ONNX Runtime folds it. A shared initializer
    counts at its first reader, and again at each node that computes from constants alone and reads it. Such a
    node (a tied LM head's Transpose of the embedding, a Transpose or Reshape of a dequantized weight) is folded
    into a weight of its own, which ONNX Runtime holds twice while it makes the session: it counts twice its
    output's bytes (measured: an int4 weight's DequantizeLinear then Transpose peaks at 3x the float weight while
    the session is made, 1x after). A value made from constants that such a node reads after another node did
    (the dequantized embedding table a tied head's Transpose reads after the Gather) counts again at it, with
    all it is made from: ``split`` copies what makes it into a later segment (``_copied``). ``extra``: more
    bytes held while a node's segment runs (a probe's statistic that leaves memory when its segment is done:
    ``MomentsProbe``)."""
    seen: set[ir.Value] = set()
    constant = constant_nodes(nodes)
    folded = _folded_bytes(nodes, constant)
    chain: dict[ir.Value, int] = {}  # a value made from constants -> what a session holds to make it alone
    weights = []
    for node in nodes:
        own = _constant_bytes(node)
        if own is None:
            folds = node in constant and not _dequantizes_a_weight(node)  # that one: at its input (``_held``)
            own = 2 * sum(folded[v] for v in node.outputs) if folds else 0
        w = (extra or {}).get(node, 0) + own
        for v in _reads(node):
            if _is_weight(v):
                # a node computing from constants alone is folded into a weight of its own: it holds a shared one again
                if v not in seen or node in constant:
                    w += _held(v)
            elif v in seen and node in constant:
                w += chain.get(v, 0)  # made from constants and read before: ``split`` copies it to a later segment
            seen.add(v)
        if node in constant:
            made = own + sum(_held(v) if _is_weight(v) else chain.get(v, 0) for v in _reads(node))
            chain.update((v, made) for v in node.outputs)
        weights.append(w)
    return weights


def _folded_bytes(nodes: Sequence[ir.Node], constant: set[ir.Node]) -> dict[ir.Value, int]:
    """The bytes of each value a node of ``constant`` makes: by its declared shape, else as its largest input (a
    Transpose, Reshape or DequantizeLinear of a weight) or its ``value``."""
    size: dict[ir.Value, int] = {}
    for node in nodes:
        if node in constant:
            read = _constant_bytes(node)
            if read is None:
                read = max((size.get(v, _held(v) if v.const_value is not None else 0) for v in _reads(node)), default=0)
            for out in node.outputs:
                declared = _size(out) if out.shape is not None and out.shape.is_static() else None
                size[out] = int(declared) if declared is not None else read
    return size


def _constant_bytes(node: ir.Node) -> int | None:
    """A ``Constant`` node's ``value`` bytes; None for any other node (or value attribute)."""
    if node.op_type == "Constant" and "value" in node.attributes:
        return node.attributes["value"].value.nbytes
    return None


def _is_weight(value: ir.Value) -> bool:
    return value.is_initializer() and value.const_value is not None


def _dequantizes_a_weight(node: ir.Node) -> bool:
    weight = node.inputs[0] if node.inputs else None
    return node.op_type == "DequantizeLinear" and weight is not None and weight.is_initializer()


def _held(weight: ir.Value) -> int:
    """``weight``'s bytes, or those of the DequantizeLinear output it is folded into (the scale's type); a 4-bit
    weight, a byte an element more: ONNX Runtime keeps it beside the float weight folded from it (measured, CPU,
    blocked and per-channel int4 of 32 M elements: 128 MiB folded, 161 MiB held after the session is made; an
    int8 weight, 128 MiB)."""
    for node, i in weight.uses():
        scale = node.inputs[1] if node.op_type == "DequantizeLinear" and i == 0 and len(node.inputs) > 1 else None
        if scale is not None and scale.dtype is not None:
            size = weight.const_value.size
            return size * scale.dtype.itemsize + (size if weight.const_value.dtype.bitwidth == 4 else 0)
    return weight.const_value.nbytes


def _size(value: ir.Value) -> float | None:
    if value.shape is None or value.dtype is None:
        return None
    dims = [d if isinstance(d, int) else SYMBOLIC_DIM for d in value.shape]
    return math.prod(dims) * value.dtype.itemsize
