"""passes.gelu_form: erf GELUs rewritten into the op order ONNX Runtime fuses into one Gelu kernel."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxbc
from models import test_graphs
from onnxbc.options import CompressOptions
from onnxbc.passes.gelu_form import GeluFormPass

SQRT2, ROOT_HALF = np.float32(np.sqrt(2.0)), np.float32(1 / np.sqrt(2.0))
K = np.linspace(0.2, 0.9, 8).astype(np.float32)  # a per-channel "0.5 / s", as smoothing leaves it

# x -> [scaled] -> Erf -> Add 1 = a, then the product with k: each as an exporter may write it
SCALED = {
    "div": [helper.make_node("Div", ["x", "sqrt2"], ["u"], name="div")],
    "mul": [helper.make_node("Mul", ["root_half", "x"], ["u"], name="mul_root")],
}
PRODUCTS = {
    "torch": [  # x * (k * a)
        helper.make_node("Mul", ["k", "a"], ["ka"], name="mul_k"),
        helper.make_node("Mul", ["x", "ka"], ["y"], name="mul_x"),
    ],
    "x_a_then_k": [
        helper.make_node("Mul", ["a", "x"], ["xa"], name="mul_x"),
        helper.make_node("Mul", ["k", "xa"], ["y"], name="mul_k"),
    ],
    "x_k_then_a": [
        helper.make_node("Mul", ["x", "k"], ["xk"], name="mul_k"),
        helper.make_node("Mul", ["xk", "a"], ["y"], name="mul_x"),
    ],
}


def _model(scaled: str, product: str, k: np.ndarray, extra_outputs: tuple[str, ...] = ()) -> onnx.ModelProto:
    nodes = [
        *SCALED[scaled],
        helper.make_node("Erf", ["u"], ["e"], name="erf"),
        helper.make_node("Add", ["e", "one"], ["a"], name="plus_one"),
        *PRODUCTS[product],
    ]
    inits = {"sqrt2": SQRT2, "root_half": ROOT_HALF, "one": np.float32(1), "k": k}
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4, 8]) for n in ("y", *extra_outputs)]
    graph = helper.make_graph(
        nodes,
        "gelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
        outputs,
        [numpy_helper.from_array(np.asarray(v), n) for n, v in inits.items() if any(n in x.input for x in nodes)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _run(model: onnx.ModelProto, x: np.ndarray, optimize: bool, tmp_path) -> tuple[np.ndarray, list[str]]:
    """Its output, and the op types ONNX Runtime runs (all optimizations, or none)."""
    options = ort.SessionOptions()
    if optimize:
        options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    else:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    y = session.run(["y"], {"x": x})[0]
    ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node] if optimize else []
    return y, ops


def _rewritten(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str]]:
    model_ir = ir.from_proto(model)
    result = GeluFormPass()(model_ir)
    return ir.to_proto(model_ir), result.sites


@pytest.mark.parametrize("scaled", SCALED)
@pytest.mark.parametrize("product", PRODUCTS)
@pytest.mark.parametrize("k", ["half", "per_channel"])
def test_every_spelling_becomes_one_gelu_kernel(scaled, product, k, tmp_path):
    """After the pass ONNX Runtime's optimizer leaves one Gelu (and, for a per-channel k, one Mul); the values
    are the same: bit for bit with k = 0.5, to one rounding otherwise."""
    k_array = np.float32(0.5) if k == "half" else K
    model = _model(scaled, product, k_array)
    x = np.random.default_rng(0).normal(0, 3, (4, 8)).astype(np.float32)
    before, _ = _run(model, x, optimize=False, tmp_path=tmp_path)
    new, sites = _rewritten(model)
    onnx.checker.check_model(new, full_check=True)
    read = {name for node in new.graph.node for name in node.input}
    assert all(init.name in read for init in new.graph.initializer)  # no constant left behind
    after, _ = _run(new, x, optimize=False, tmp_path=tmp_path)
    _, ops = _run(new, x, optimize=True, tmp_path=tmp_path)
    fused_already = scaled == "div" and product != "torch" and k == "half"
    assert bool(sites) == (not fused_already) and list(sites) in ([], ["erf"])
    assert sorted(ops) == (["Gelu"] if k == "half" else ["Gelu", "Mul"]), ops
    if k == "half":
        np.testing.assert_array_equal(after, before)
    else:
        np.testing.assert_allclose(after, before, rtol=3e-7, atol=0)


@pytest.mark.parametrize("shared", ["u", "e", "a", "ka"])
def test_intermediates_with_other_readers_are_left_alone(shared, tmp_path):
    """An intermediate value that is also a graph output keeps the graph as it is (its readers need it)."""
    model = _model("div", "torch", np.float32(0.5), extra_outputs=(shared,))
    new, sites = _rewritten(model)
    assert sites == {}
    assert [n.op_type for n in new.graph.node] == [n.op_type for n in model.graph.node]


def test_erf_that_is_not_a_gelu_is_left_alone():
    """x / 2 (not sqrt 2) before the Erf, or an Add of 2 after it: not GELU, not rewritten."""
    for old, new_value in (("sqrt2", np.float32(2.0)), ("one", np.float32(2.0))):
        model = _model("div", "torch", np.float32(0.5))
        for init in model.graph.initializer:
            if init.name == old:
                init.CopyFrom(numpy_helper.from_array(new_value, old))
        assert _rewritten(model)[1] == {}


def _exported_gelu_mlp() -> test_graphs.TestGraph:
    """The zoo's gelu_mlp with its GELU as torch's exporter writes it: x * (0.5 * (1 + erf(x / sqrt 2)))."""
    graph = test_graphs.build("gelu_mlp")
    nodes = {n.name: n for n in graph.model.graph.node}
    times_x, times_half = nodes["gelu/Mul"], nodes["gelu/Mul_half"]
    h, plus_one = times_x.input
    half = times_half.input[1]
    times_x.input[:] = [half, plus_one]  # now 0.5 * a
    times_half.input[:] = [h, times_x.output[0]]  # then x * (0.5 * a)
    return graph


@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
def test_compress_writes_gelus_onnx_runtime_fuses(target, tmp_path):
    """compress --target onnxruntime: the saved model's GELU runs as ONNX Runtime's Gelu kernel (the report's
    ``fusion.gelu_form`` names it); --target tensorrt keeps the graph's own spelling."""
    graph = _exported_gelu_mlp()
    path = test_graphs.save(graph, tmp_path / "gelu_mlp.onnx")
    out = tmp_path / "q.onnx"
    result = onnxbc.compress(path, out, data=graph.feeds(24, 0), options=CompressOptions(device="cpu", target=target))
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    report = result.report.to_dict()
    if target == "onnxruntime":
        assert list(report["fusion"]["gelu_form"]) == ["gelu/Erf"]
        assert "Gelu" in ops and "Erf" not in ops, ops
    else:
        assert "gelu_form" not in report["fusion"]
        assert "Erf" in ops, ops


def test_data_free_output_gets_the_fused_form_too(tmp_path):
    """--data-free --target onnxruntime writes its model through the same rewrite."""
    graph = _exported_gelu_mlp()
    path = test_graphs.save(graph, tmp_path / "gelu_mlp.onnx")
    result = onnxbc.compress(path, tmp_path / "q.onnx", options=CompressOptions(data_free=True))
    assert list(result.report.to_dict()["fusion"]["gelu_form"]) == ["gelu/Erf"]
