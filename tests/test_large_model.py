"""A model over the 2 GiB protobuf limit (slow: run with `pytest -m slow`)."""

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

import onnxbc


@pytest.mark.slow
def test_model_over_2gb_round_trips_with_external_data(tmp_path):
    k = n = 24576  # one 2.4 GB float32 weight: over protobuf's 2 GiB limit, so it lives in external data
    rng = np.random.default_rng(0)
    w = rng.standard_normal((k, n), dtype=np.float32)
    w *= 0.01
    x_in = ir.val("x", ir.DataType.FLOAT, ir.Shape(["N", k]))
    weight = ir.Value(name="w", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([k, n]), const_value=ir.tensor(w))
    node = ir.node("Gemm", [x_in, weight], name="big")
    node.outputs[0].name, node.outputs[0].dtype, node.outputs[0].shape = "y", ir.DataType.FLOAT, ir.Shape(["N", n])
    graph = ir.Graph([x_in], node.outputs, nodes=[node], initializers=[weight], opset_imports={"": 17}, name="big")
    path = tmp_path / "big.onnx"
    ir.save(ir.Model(graph, ir_version=8), path, external_data="big.onnx.data")
    del graph, node, weight
    x = rng.standard_normal((8, k), dtype=np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    options = onnxbc.CompressOptions(weight_range=onnxbc.RangeMethod.MINMAX)
    result = onnxbc.compress(
        path, tmp_path / "big.int8.onnx", data=onnxbc.DataOptions(path=tmp_path / "calib.npz"), options=options
    )
    assert [p.name for p in map(type(path), result.report.output["files"])] == ["big.int8.onnx", "big.int8.onnx.data"]
    assert result.report.output["bytes"] < result.report.input["bytes"] / 3.5
    session = ort.InferenceSession(str(result.output), providers=["CPUExecutionProvider"])
    ref = x[:2] @ w
    out = session.run(None, {"x": x[:2]})[0]
    assert np.sum((out - ref) ** 2) / np.sum(ref**2) < 1e-3
