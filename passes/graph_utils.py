"""Small graph helpers shared by the rewrite passes, the target finder and the calibration probes.

- ``constant_tensor``: the tensor a value always holds, or None (the one definition of "constant").
- ``set_constant``: give a node's constant input new values, copying the constant first when others see it.
- ``insert_after_producer``: place new nodes right after the node that computes a value.
- ``drop_if_unused``: remove a constant that a rewrite left unread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir


class Namer:
    """Fresh value and node names that collide with nothing already in the model."""

    def __init__(self, model: ir.Model) -> None:
        self.used: set[str] = set()
        for graph in model.graphs():
            self.used.update(v.name for v in graph.inputs)
            self.used.update(graph.initializers)
            for node in graph:
                self.used.add(node.name)
                self.used.update(v.name for v in node.outputs)

    def __call__(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name


def const(namer: Namer, base: str, array: np.ndarray) -> ir.Value:
    """A new initializer value (not yet registered in a graph)."""
    tensor = ir.tensor(np.asarray(array), name=namer(base))
    return ir.Value(name=tensor.name, shape=tensor.shape, type=ir.TensorType(tensor.dtype), const_value=tensor)


def constant_tensor(value: ir.Value | None) -> ir.TensorProtocol | None:
    """The tensor ``value`` holds whatever the graph is fed, or None when it can change at run time.

    A value is constant when it is

    1. an initializer with a tensor (or a value built by ``const`` and not registered yet), unless it is
       also a graph input: then the tensor is only a default that the caller may replace;
    2. the output of a standard-domain ``Constant`` node, any attribute form (``value``, ``value_floats``,
       ``value_ints``, ...), read through ``ir.convenience.get_const_tensor``.

    Graph inputs are not constants, and neither are values computed by any other node, even when constant
    folding attached a ``const_value`` to them: the graph still computes them, so a pass cannot edit them.
    A caller that rewrites or removes the tensor itself must also ask ``value.is_initializer()`` (or edit it
    with ``set_constant``, which copies a ``Constant`` node's tensor into an initializer).
    """
    if value is None or value.is_graph_input():
        return None
    producer = value.producer()
    if producer is None:
        return value.const_value
    if producer.op_type == "Constant" and producer.domain in ("", "ai.onnx"):
        return ir.convenience.get_const_tensor(value)
    return None


def set_constant(node: ir.Node, index: int, array: np.ndarray, namer: Namer, suffix: str) -> ir.Value:
    """Make the constant ``node.inputs[index]`` hold ``array`` (cast to the constant's data type) for
    ``node``, and return the value ``node`` now reads there.

    An initializer that only this input reads is changed in place. Anything else (an initializer shared with
    other readers, read twice by ``node``, or a graph output; the output of a ``Constant`` node) is left as it
    is for its other readers: ``node`` reads a new initializer named ``<name>_<suffix>`` instead.
    """
    value = node.inputs[index]
    old = constant_tensor(value)
    if old is None:
        raise ValueError(f"input {index} of node '{node.name}' is not a constant")
    new = np.asarray(array).astype(old.dtype.numpy())
    if value.is_initializer() and len(value.uses()) == 1 and not value.is_graph_output():
        value.const_value = ir.tensor(new, name=value.name)
        value.shape = ir.Shape(new.shape)
        return value
    copy = const(namer, f"{value.name}_{suffix}", new)
    node.graph.register_initializer(copy)
    node.replace_input_with(index, copy)
    return copy


def drop_if_unused(value: ir.Value | None) -> None:
    """Drop a constant (initializer or Constant node) that nothing reads any more."""
    if value is None or value.uses() or value.is_graph_output() or value.is_graph_input():
        return
    producer = value.producer()
    if value.is_initializer():
        value.graph.initializers.pop(value.name)
    elif producer is not None and producer.op_type == "Constant" and producer.graph is not None:
        producer.graph.remove(producer, safe=True)


def insert_after_producer(value: ir.Value, nodes: Sequence[ir.Node]) -> None:
    """Insert ``nodes`` (in order) right after the node that computes ``value``, or at the start of
    ``value``'s graph when no node does (a graph input, an initializer), so they may read ``value``."""
    producer = value.producer()
    if producer is not None:
        producer.graph.insert_after(producer, nodes)
        return
    graph = value.graph
    if graph is None:
        raise ValueError(f"value '{value.name}' belongs to no graph")
    if len(graph) == 0:
        graph.extend(nodes)
    else:
        graph.insert_before(graph[0], nodes)


def main_values(graph: ir.Graph) -> Iterator[ir.Value]:
    """Graph inputs, initializers and node outputs of one graph (not its subgraphs)."""
    yield from graph.inputs
    yield from graph.initializers.values()
    for node in graph:
        yield from node.outputs


def nodes_by_name(model: ir.Model) -> dict[str, ir.Node]:
    return {node.name: node for node in ir.traversal.RecursiveGraphIterator(model.graph)}


def values_by_name(model: ir.Model) -> dict[str, ir.Value]:
    """Graph inputs, initializers and node outputs of every graph, by name."""
    return {v.name: v for graph in model.graphs() for v in main_values(graph)}


def find_value(model: ir.Model, name: str) -> ir.Value:
    for graph in model.graphs():
        for v in main_values(graph):
            if v.name == name:
                return v
    raise KeyError(f"no value named '{name}' in the model")


class GraphBuilder:
    """Adds nodes and initializers to a model's main graph, with fresh names.

    Nodes go to the end of the graph, or, inside ``with builder.after(node):``, right after ``node`` (in
    the order they are added). Placing the nodes that read a layer's tensors right after that layer lets
    ONNX Runtime free those tensors early instead of keeping them all alive until the end of the graph.
    """

    def __init__(self, model: ir.Model) -> None:
        self.model = model
        self.graph = model.graph
        self.namer = Namer(model)
        self.values = {v.name: v for v in main_values(model.graph)}
        self.nodes = nodes_by_name(model)
        self._cursor: ir.Node | None = None
        self._once: dict[Hashable, ir.Value] = {}
        self._anchor: ir.Value | None = None  # inside after_producer(): the first insertion goes after its producer

    @contextlib.contextmanager
    def after(self, node: ir.Node) -> Iterator[None]:
        previous, self._cursor = self._cursor, node
        try:
            yield
        finally:
            self._cursor = previous

    @contextlib.contextmanager
    def after_producer(self, value: ir.Value) -> Iterator[None]:
        """Nodes added inside go right after the node computing ``value``, or at the start of the graph when
        none does (``insert_after_producer``): for nodes shared by readers anywhere in the graph."""
        previous, self._cursor, self._anchor = self._cursor, None, value
        try:
            yield
        finally:
            self._cursor, self._anchor = previous, None

    def once(self, key: Hashable, make: Callable[[], ir.Value]) -> ir.Value:
        """The value ``make`` built the first time ``key`` was asked for (probes of one tensor share it)."""
        if key not in self._once:
            self._once[key] = make()
        return self._once[key]

    def last(self, *nodes: ir.Node) -> ir.Node:
        """Whichever of ``nodes`` (of the main graph) comes last in it: nodes reading all their outputs go
        after it."""
        wanted = set(nodes)
        found = [node for node in self.graph if node in wanted]
        return found[-1]

    def const(self, array: np.ndarray, hint: str = "const") -> ir.Value:
        value = const(self.namer, hint, array)
        self.graph.register_initializer(value)
        return value

    def op(
        self,
        op_type: str,
        inputs: Sequence[ir.Value | None],
        attributes: Mapping[str, Any] | Sequence[ir.Attr] | None = None,
        *,
        hint: str = "",
        domain: str = "",
    ) -> ir.Value:
        return self.add(ir.node(op_type, inputs, attributes=attributes, domain=domain), hint or op_type)

    def add(self, node: ir.Node, hint: str) -> ir.Value:
        node.name = self.namer(f"{hint}_{node.op_type}")
        for out in node.outputs:
            out.name = self.namer(hint)
        self.insert([node])
        return node.outputs[0]

    def insert(self, nodes: Sequence[ir.Node]) -> None:
        """Place already named nodes (at the cursor, after the anchor's producer, or at the end of the graph)."""
        if self._anchor is not None:
            insert_after_producer(self._anchor, nodes)
            self._anchor, self._cursor = None, nodes[-1]
        elif self._cursor is None:
            self.graph.extend(nodes)
        else:
            self.graph.insert_after(self._cursor, nodes)
            self._cursor = nodes[-1]


def pair_models(reference: ir.Model, other: ir.Model, prefix: str) -> ir.Model:
    """One model computing ``reference`` and ``other`` side by side on the same inputs.

    Both are cloned (weights are shared, not copied). Every value, initializer and node of ``other``
    gets ``prefix`` before its name; its graph inputs are replaced by the reference's inputs of the same
    name. The paired model's outputs are the reference's. Both models must use the same opsets.
    """
    if reference.opset_imports != other.opset_imports:
        raise ValueError(f"opsets differ: {reference.opset_imports} vs {other.opset_imports}")
    paired, copy = reference.clone(), other.clone()
    inputs = {v.name: v for v in paired.graph.inputs}
    for graph in copy.graphs():
        for v in list(main_values(graph)):  # renaming an initializer re-keys graph.initializers
            if graph is copy.graph and v in copy.graph.inputs:
                continue
            v.name = prefix + v.name
        for node in graph:
            node.name = prefix + node.name
    for v in list(copy.graph.inputs):
        v.replace_all_uses_with(inputs[v.name])
    copy.graph.outputs.clear()
    nodes = list(copy.graph)
    copy.graph.remove(nodes)
    paired.graph.extend(nodes)
    for name in list(copy.graph.initializers):
        paired.graph.register_initializer(copy.graph.initializers.pop(name))
    return paired
