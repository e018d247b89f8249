"""The static estimate of one sample's intermediate tensors (``calibration.footprint``), and the collector's runs
bounded by it."""

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from onnxbc.calibration import collector
from onnxbc.calibration.collector import collect
from onnxbc.calibration.data import input_specs, open_data
from onnxbc.calibration.footprint import peak_bytes
from onnxbc.calibration.session import SessionFactory
from onnxbc.options import DataOptions, Device

D = 100  # features: a float tensor [1, D] is 400 bytes


def _model(nodes, outputs, inits=(), x_shape=("batch", D)):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))
    graph = helper.make_graph(nodes, "g", [x], outputs, list(inits))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    return ir.serde.deserialize_model(proto)


def _out(name, shape=None):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _one(n=1):
    return {"x": np.ones((n, D), np.float32)}


def test_a_tensor_lives_from_its_node_to_its_last_reader():
    """a = Relu(x), b = Relu(a), c = Add(a, b), d = Relu(c) (the output): at c, a, b and c are alive (1200
    bytes); at d, a and b are freed. The graph input is the caller's, not counted."""
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["c"]),
        helper.make_node("Relu", ["c"], ["d"]),
    ]
    assert peak_bytes(_model(nodes, [_out("d")]), _one()) == 3 * 4 * D
    assert peak_bytes(_model(nodes, [_out("d")]), _one(5)) == 5 * 3 * 4 * D  # per sample given
    # the held-out check holds a run's outputs beside copies of them: d counted three more times
    assert peak_bytes(_model(nodes, [_out("d")]), _one(), outputs_held=4) == 3 * 4 * D + 3 * 4 * D


def test_an_output_lives_to_the_end_and_weights_count_nothing():
    """The transposed weight is computed from a weight alone (ONNX Runtime folds it): not an activation. The
    graph output ``y`` [1, 8 D] lives to the end, beside the last Relu's input and output."""
    w = numpy_helper.from_array(np.ones((8 * D, D), np.float32), "w")
    nodes = [
        helper.make_node("Transpose", ["w"], ["wt"]),
        helper.make_node("MatMul", ["x", "wt"], ["y"]),
        helper.make_node("Relu", ["y"], ["r"]),
        helper.make_node("Relu", ["r"], ["s"]),
    ]
    model = _model(nodes, [_out("y"), _out("s")], [w])
    assert peak_bytes(model, _one()) == 3 * 8 * 4 * D  # y, r, s (r until s is computed)


def test_declared_shapes_size_what_inference_cannot():
    """A shape that is data (the maximum of x): onnx infers none after it. A value declared [batch, 8 D]
    is sized with the batch axis the sample gives (1); undeclared, it counts nothing, nor does y."""
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["m"], keepdims=1),
        helper.make_node("Cast", ["m"], ["n"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["n", "flat"], ["n1"]),
        helper.make_node("Concat", ["flat", "n1"], ["shape"], axis=0),  # [1, max(x)]
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
        helper.make_node("Tile", ["y", "reps"], ["big"]),
        helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0),
    ]
    reps = numpy_helper.from_array(np.array([1, 8], np.int64), "reps")
    flat = numpy_helper.from_array(np.array([1], np.int64), "flat")
    model = _model(nodes, [_out("s")], [reps, flat])
    undeclared = peak_bytes(model, _one())
    big = next(v for n in model.graph for v in n.outputs if v.name == "big")
    declared_type = ir.TensorType(ir.DataType.FLOAT)
    big.type, big.shape = declared_type, ir.Shape([ir.SymbolicDim("batch"), 8 * D])
    declared = peak_bytes(model, _one())
    assert undeclared < 4 * D <= 8 * 4 * D <= declared < 8 * 4 * D + 4 * D  # only the shape's small tensors
    assert big.shape == ir.Shape([ir.SymbolicDim("batch"), 8 * D])  # the model's own shapes are left as they were


def test_runs_are_split_by_the_intermediate_tensors(tmp_path, monkeypatch):
    """A probe fetching one number a sample from a 64x larger intermediate: with room for the intermediates of
    3 samples a run, 10 samples run as 3 + 3 + 3 + 1, and the sum is the same as in one run."""
    reps = numpy_helper.from_array(np.array([1, 64], np.int64), "reps")
    nodes = [
        helper.make_node("Tile", ["x", "reps"], ["big"]),
        helper.make_node("ReduceSum", ["big", "axis"], ["s"], keepdims=0),
    ]
    axis = numpy_helper.from_array(np.array([1], np.int64), "axis")
    model = _model(nodes, [_out("s")], [reps, axis])
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).standard_normal((10, D)).astype(np.float32))
    data = open_data(DataOptions(path=tmp_path / "d.npz", holdout_fraction=0.0, batch_size=10), input_specs(model))

    class Rows:
        def __init__(self):
            self.rows, self.total = [], 0.0

        def attach(self, b):
            return [b.values["s"]]

        def update(self, arrays, split):
            self.rows.append(len(arrays[0]))
            self.total += float(arrays[0].astype(np.float64).sum())

    whole = Rows()
    collect(model, [whole], data, SessionFactory(Device.CPU))
    assert whole.rows == [10]
    per_sample = peak_bytes(model, _one())
    assert per_sample >= 64 * 4 * D
    monkeypatch.setattr(collector, "RUN_BUDGET_BYTES", 3 * per_sample + 1)
    split = Rows()
    collect(model, [split], data, SessionFactory(Device.CPU))
    assert split.rows == [3, 3, 3, 1]
    np.testing.assert_allclose(split.total, whole.total, rtol=1e-6)
