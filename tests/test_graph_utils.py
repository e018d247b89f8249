"""graph_utils helpers: what counts as a constant, editing a constant (copied when shared), and placing nodes
after the producer of a value. Every rewritten graph is checked with onnx.checker and run with onnx.reference."""

import numpy as np
import onnx
import onnx.parser
import onnx.reference
import onnx_ir as ir
import pytest

from onnxbc import model_io
from onnxbc.passes.graph_utils import Namer, constant_tensor, insert_after_producer, set_constant

# 'w' and 'b' are initializers ('b' read twice and a graph output too), 'w_in' a graph input with a default,
# 'c' and 't' Constant nodes (attribute forms value_floats and value), 'w2' an initializer read twice by one node.
TEXT = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[2] x, float[2] w_in) => (float[2] y, float[2] b)
<float[2] w = {1, 2}, float[2] b = {3, 4}, float[2] w_in = {5, 6}, float[2] w2 = {0.5, 0.25}>
{
  c = Constant <value_floats = [7.0, 8.0]> ()
  t = Constant <value = float[2] {9, 10}> ()
  s = Add(x, w)
  u = Mul(s, c)
  v = Add(u, t)
  p = Add(v, b)
  q = Mul(p, b)
  r = Add(q, w_in)
  z = Mul(w2, w2)
  y = Add(r, z)
}
"""
X = np.array([0.5, -1.5], np.float32)


def model() -> ir.Model:
    return ir.serde.deserialize_model(onnx.parser.parse_model(TEXT))


def node(m: ir.Model, output: str) -> ir.Node:
    return next(n for n in m.graph if n.outputs[0].name == output)


def value(m: ir.Model, name: str) -> ir.Value:
    return next(v for n in m.graph for v in (*n.inputs, *n.outputs) if v is not None and v.name == name)


def run(m: ir.Model) -> list[np.ndarray]:
    proto = model_io.to_proto(m)
    onnx.checker.check_model(proto, full_check=True)
    return onnx.reference.ReferenceEvaluator(proto).run(None, {"x": X})


def expected(w=(1, 2), c=(7, 8), b_add=(3, 4), b_mul=(3, 4), z=(0.25, 0.0625)) -> np.ndarray:
    """Output 'y' computed in numpy, with the tensors each node reads (``z = w2 * w2``)."""
    w, c, b_add, b_mul, z = (np.array(a, np.float32) for a in (w, c, b_add, b_mul, z))
    return ((X + w) * c + np.float32([9, 10]) + b_add) * b_mul + np.float32([5, 6]) + z


# --- constant_tensor ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,values",
    [
        ("w", [1, 2]),  # initializer
        ("c", [7, 8]),  # Constant node, value_floats
        ("t", [9, 10]),  # Constant node, value
        ("x", None),  # graph input
        ("w_in", None),  # graph input whose initializer is only a default
        ("s", None),  # computed
    ],
)
def test_constant_tensor(name, values):
    tensor = constant_tensor(value(model(), name))
    if values is None:
        assert tensor is None
    else:
        np.testing.assert_array_equal(tensor.numpy(), np.array(values, np.float32))


def test_a_computed_value_with_a_folded_tensor_is_not_a_constant():
    s = value(m := model(), "s")
    s.const_value = ir.tensor(np.array([1.5, 0.5], np.float32))  # as constant folding annotates values
    assert constant_tensor(s) is None and constant_tensor(None) is None
    assert constant_tensor(m.graph.initializers["w"]) is not None


# --- set_constant ------------------------------------------------------------------------------------------


def test_set_constant_edits_an_unshared_initializer_in_place():
    m = model()
    add, w = node(m, "s"), m.graph.initializers["w"]
    new = np.array([-1.0, 4.0])  # float64: stored in w's type
    assert set_constant(add, 1, new, Namer(m), "edited") is w
    assert add.inputs[1] is w and w.const_value.dtype == ir.DataType.FLOAT
    assert sorted(m.graph.initializers) == ["b", "w", "w2", "w_in"]
    np.testing.assert_allclose(run(m)[0], expected(w=new), rtol=1e-6)


@pytest.mark.parametrize(
    "output,index,name,why",
    [
        ("p", 1, "b", "shared with another node and a graph output"),
        ("u", 1, "c", "the output of a Constant node"),
        ("z", 0, "w2", "read twice by the same node"),
    ],
)
def test_set_constant_copies_what_others_see(output, index, name, why):
    m = model()
    edited, old = node(m, output), value(m, name)
    old_values = constant_tensor(old).numpy().copy()
    new = np.array([2.0, -3.0], np.float32)
    copy = set_constant(edited, index, new, Namer(m), "edited")
    assert copy is not old and copy.name == f"{name}_edited", why
    assert edited.inputs[index] is copy and m.graph.initializers[copy.name] is copy
    np.testing.assert_array_equal(constant_tensor(old).numpy(), old_values)  # the others' tensor is unchanged
    outputs = run(m)
    reference = {
        "b": expected(b_add=new),  # Mul(p, b) and the graph output 'b' keep the old values
        "c": expected(c=new),
        "w2": expected(z=new * old_values),  # Mul(w2_edited, w2): only the first input changed
    }[name]
    np.testing.assert_allclose(outputs[0], reference, rtol=1e-6)
    np.testing.assert_array_equal(outputs[1], [3, 4])


def test_set_constant_refuses_a_value_that_is_not_constant():
    m = model()
    with pytest.raises(ValueError, match="input 1 of node .* is not a constant"):
        set_constant(node(m, "r"), 1, np.zeros(2), Namer(m), "edited")  # 'w_in' is a graph input


# --- insert_after_producer ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,position,values",
    [  # node outputs: right after the producer; a graph input or an initializer: first
        ("s", 3, X + [1, 2]),
        ("v", 5, (X + [1, 2]) * [7, 8] + [9, 10]),
        ("x", 0, X),
        ("w", 0, [1, 2]),
    ],
    ids=["node_output", "later_node_output", "graph_input", "initializer"],
)
def test_insert_after_producer(name, position, values):
    m = model()
    x = value(m, name)
    neg = ir.node("Neg", [x], name="neg")
    neg.outputs[0].name, neg.outputs[0].dtype, neg.outputs[0].shape = "negated", ir.DataType.FLOAT, ir.Shape([2])
    insert_after_producer(x, [neg])
    nodes = list(m.graph)
    assert nodes.index(neg) == position
    if position:
        assert nodes[position - 1] is x.producer()
    m.graph.outputs.append(neg.outputs[0])
    outputs = run(m)  # onnx.checker: every node comes after the nodes it reads
    np.testing.assert_allclose(outputs[0], expected())
    np.testing.assert_allclose(outputs[-1], -np.asarray(values, np.float32))


def test_insert_after_producer_in_an_empty_graph():
    x = ir.Value(name="x", shape=ir.Shape([2]), type=ir.TensorType(ir.DataType.FLOAT))
    graph = ir.Graph([x], [], nodes=[], opset_imports={"": 13}, name="empty")
    neg = ir.node("Neg", [x], name="neg")
    insert_after_producer(x, [neg])
    assert list(graph) == [neg]
