"""The fusion audit (onnxbc.fusion, rule ort.fusion): small QDQ graphs that ONNX Runtime's CPU session fuses into
integer kernels, the same graphs with the fusion broken on purpose (the audit names the layer and what the
optimized graph shows is missing), a float model (nothing to audit), and the rule in ``onnxbc check``."""

import json
import tempfile

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import onnxbc
from models import test_graphs
from onnxbc import fusion, model_io, validate
from onnxbc.cli import app
from onnxbc.errors import OnnxbcError
from onnxbc.fusion import Verdict
from onnxbc.options import CheckOptions, Target
from onnxbc.validate import Status

INT8_ZERO = np.int8(0)


class Graph:
    """A few nodes, each named after its output, and their initializers, made into a model."""

    def __init__(self):
        self.nodes, self.inits = [], []
        self.rng = np.random.default_rng(0)

    def init(self, name, array):
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type, inputs, out, **attrs):
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def qdq(self, x, name, zero_point=INT8_ZERO, scale=0.05):
        """An activation's QuantizeLinear -> DequantizeLinear pair."""
        s, z = self.init(f"{name}_scale", np.float32(scale)), self.init(f"{name}_zero_point", zero_point)
        return self.op("DequantizeLinear", [self.op("QuantizeLinear", [x, s, z], f"{name}_q"), s, z], f"{name}_dq")

    def weight(self, name, shape, dtype=np.int8, axis=None, block_size=None, scales=()):
        """DequantizeLinear of constant codes with a zero point of 0 (per tensor, per ``axis`` or in blocks)."""
        codes = self.init(name, self.rng.integers(-7, 8, shape).astype(dtype))
        inputs = [codes, self.init(f"{name}_scale", np.full(scales, 0.01, np.float32))]
        inputs.append(self.init(f"{name}_zero_point", np.zeros(scales, dtype)))
        attrs = {} if axis is None else {"axis": axis}
        attrs.update({} if block_size is None else {"block_size": block_size})
        return self.op("DequantizeLinear", inputs, f"{name}_dq", **attrs)

    def model(self, x_shape, y_shape, opset=21):
        self.nodes[-1].output[0] = "y"
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)
        graph = helper.make_graph(self.nodes, "g", [x], [y], self.inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def conv(bias="int32", after=None, output_q=True, x_zero_point=INT8_ZERO, weight=np.int8, op="Conv", opset=21):
    """x -> Q -> DQ -> Conv 'conv' (W int8 per channel through DQ) [-> ``after``] [-> Q -> DQ] -> y."""
    g = Graph()
    x = g.qdq("x", "x", x_zero_point) if x_zero_point is not None else "x"
    shape, axis = ((4, 8, 3, 3), 0) if op == "Conv" else ((8, 4, 3, 3), 1)
    inputs = [x, g.weight("w", shape, weight, axis=axis, scales=(4,))]
    if bias == "int32":
        b_scale = g.init("b_scale", np.full(4, 0.05 * 0.01, np.float32))
        inputs.append(g.op("DequantizeLinear", [g.init("b", np.arange(4, dtype=np.int32)), b_scale], "b_dq", axis=0))
    elif bias == "float":
        inputs.append(g.init("b", np.full(4, 0.1, np.float32)))
    y = g.op(op, inputs, "conv", kernel_shape=[3, 3])
    if after is not None:
        y = g.op(after, [y], after.lower())
    if output_q:
        zero_point = np.uint8(0) if after == "Relu" else np.int8(0)
        g.qdq(y, "y", zero_point, scale=0.1)
    y_shape = [1, 4, 4, 4] if op == "Conv" else [1, 4, 8, 8]
    return g.model([1, 8, 6, 6], y_shape, opset)


def matmul(output_q=True, weight_via=None, quantize_x=True):
    """x -> Q -> DQ -> MatMul 'mm' (W int8 per tensor through DQ) [-> Q -> DQ] -> y."""
    g = Graph()
    x = g.qdq("x", "x") if quantize_x else "x"
    if weight_via == "Constant":  # the codes in a Constant node, as some exporters write weights
        codes = numpy_helper.from_array(g.rng.integers(-7, 8, (8, 4)).astype(np.int8))
        g.nodes.append(helper.make_node("Constant", [], ["w"], name="w_constant", value=codes))
        scale, zero_point = g.init("w_scale", np.float32(0.01)), g.init("w_zero_point", np.int8(0))
        w = g.op("DequantizeLinear", ["w", scale, zero_point], "w_dq")
    elif weight_via == "Reshape":
        w = g.op("Reshape", [g.weight("w", (32,)), g.init("w_shape", np.array([8, 4], np.int64))], "w_reshaped")
    else:
        w = g.weight("w", (8, 4))
    y = g.op("MatMul", [x, w], "mm")
    if output_q:
        g.qdq(y, "y", scale=0.1)
    return g.model([2, 8], [2, 4])


def weight_only(dtype=np.int8, block_size=None):
    """x (float) -> MatMul 'mm' (W through DQ: int8 per output channel, or in blocks along K)."""
    g = Graph()
    if block_size is None:
        w = g.weight("w", (64, 16), dtype, axis=1, scales=(16,))
    else:
        w = g.weight("w", (64, 16), dtype, axis=0, block_size=block_size, scales=(64 // block_size, 16))
    g.op("MatMul", ["x", w], "mm")
    return g.model([2, 64], [2, 16])


def gemm(output_q=True):
    """x -> Q -> DQ -> Gemm 'gemm' (W int8 per channel, transB, float bias) [-> Q -> DQ] -> y."""
    g = Graph()
    w = g.weight("w", (4, 8), axis=0, scales=(4,))
    y = g.op("Gemm", [g.qdq("x", "x"), w, g.init("b", np.zeros(4, np.float32))], "gemm", transB=1)
    if output_q:
        g.qdq(y, "y", scale=0.1)
    return g.model([2, 8], [2, 4])


def add():
    """Two quantized tensors -> Add 'add' -> Q -> DQ -> y."""
    g = Graph()
    y = g.op("Add", [g.qdq("x", "a"), g.qdq("x", "b", scale=0.1)], "add")
    g.qdq(y, "y", scale=0.2)
    return g.model([2, 8], [2, 8])


def audit(proto):
    return fusion.audit(ir.serde.deserialize_model(proto))


def only(result):
    (layer,) = result.layers
    return layer


FUSED = {
    "conv-int32-bias": (conv, "QLinearConv"),
    "conv-float-bias": (lambda: conv(bias="float"), "QLinearConv"),
    "conv-no-bias": (lambda: conv(bias=None), "QLinearConv"),
    "conv-uint8-weight": (lambda: conv(weight=np.uint8), "QLinearConv"),
    "conv-relu-dropped-by-q": (lambda: conv(after="Relu"), "QLinearConv"),  # uint8 Q with zero point 0
    "conv-opset-13": (lambda: conv(opset=13), "QLinearConv"),
    "matmul": (matmul, "QLinearMatMul"),
    "matmul-no-output-q": (lambda: matmul(output_q=False), "MatMulIntegerToFloat"),
    "matmul-constant-node-weight": (lambda: matmul(weight_via="Constant"), "QLinearMatMul"),
    "gemm": (gemm, "QGemm"),
    "weight-only-int8": (weight_only, "MatMulNBits"),
    "weight-only-int4-blocks": (lambda: weight_only(ml_dtypes.int4, block_size=32), "MatMulNBits"),
    "add": (add, "QLinearAdd"),
}


@pytest.mark.parametrize("case", FUSED)
def test_fused_layer(case):
    build, kernel = FUSED[case]
    proto = build()
    onnx.checker.check_model(proto, full_check=True)
    model = ir.serde.deserialize_model(proto)
    names = [n.name for n in model.graph]
    layer = only(fusion.audit(model))
    assert (layer.verdict, layer.ort_op, layer.missing) == (Verdict.FUSED, kernel, ()), layer.message()
    assert layer.name == layer.ort_node == proto.graph.node[[n.name for n in proto.graph.node].index(layer.name)].name
    assert [n.name for n in model.graph] == names  # the audit renames layers in a copy only


# case -> (model, layer name, text of what is missing)
BROKEN = {
    "activation-before-q": (lambda: conv(after="Sigmoid"), "conv", "merged the activation between it and"),
    "float-op-before-q": (lambda: conv(after="Abs"), "conv", "goes to Abs 'abs', not to a QuantizeLinear"),
    "no-output-q": (lambda: conv(output_q=False), "conv", "its output 'y' is a graph output"),
    "gemm-output-is-graph-output": (lambda: gemm(output_q=False), "gemm", "its output 'y' is a graph output"),
    "float-activation": (lambda: conv(x_zero_point=None), "conv", "input 'x' is not dequantized"),
    "weight-through-reshape": (
        lambda: matmul(weight_via="Reshape"),
        "mm",
        "input 'w_reshaped' comes from a DequantizeLinear through Reshape 'w_reshaped'",
    ),
    "int16-activations": (lambda: conv(x_zero_point=np.int16(0)), "conv", "the graph shows no reason"),
    "conv-transpose": (lambda: conv(op="ConvTranspose", bias=None), "conv", "the graph shows no reason"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_broken_fusion_is_reported(case, tmp_path):
    build, name, missing = BROKEN[case]
    proto = build()
    onnx.checker.check_model(proto, full_check=True)
    layer = only(audit(proto))
    assert layer.verdict is Verdict.FLOAT and layer.name == name, layer
    assert layer.message().startswith(f"{layer.op} '{name}' runs as float {layer.ort_op}"), layer.message()
    assert missing in layer.message() and "\n" not in layer.message()
    onnx.save(proto, tmp_path / "m.onnx")
    report = validate.check(tmp_path / "m.onnx", CheckOptions(target=Target.ONNXRUNTIME, device=onnxbc.Device.CPU))
    result = next(r for r in report.results if r.rule.id == "ort.fusion")
    assert result.status is Status.WARNED and report.passed, report.to_text()
    assert [f.message for f in result.findings] == [layer.message()] and not result.findings[0].failed


def test_a_float_conv_between_fused_layers():
    """Three layers, the middle one broken: only it is reported, by name, and the others stay fused."""
    g = Graph()
    x = g.qdq("x", "x")
    for i, output_q in enumerate([True, False, True]):
        y = g.op("Conv", [x, g.weight(f"w{i}", (8, 8, 1, 1), axis=0, scales=(8,))], f"conv{i}")
        x = g.qdq(y, f"y{i}", scale=0.1) if output_q else g.qdq(g.op("Abs", [y], f"abs{i}"), f"y{i}", scale=0.1)
    result = audit(g.model([1, 8, 6, 6], [1, 8, 6, 6]))
    assert [(layer.name, layer.verdict) for layer in result.layers] == [
        ("conv0", Verdict.FUSED),
        ("conv1", Verdict.FLOAT),
        ("conv2", Verdict.FUSED),
    ]
    assert [layer.name for layer in result.unfused] == ["conv1"]
    assert result.as_dict()["summary"] == {"fused": 2, "float": 1, "unknown": 0}
    entry = result.by_layer()["conv1"]
    assert entry["status"] == "float" and entry["dequantized_inputs"] == ["y0_dq", "w1_dq"]
    assert entry["missing"] == ["its output goes to Abs 'abs1', not to a QuantizeLinear"]
    json.dumps(result.as_dict())  # JSON-ready


def test_the_default_level_runs_as_many_integer_kernels():
    """The audit reads ORT_ENABLE_EXTENDED, where every QDQ fusion happens; the default session (ALL) only changes
    the layout after it, so it runs the same number of integer kernels."""
    g = Graph()
    x = g.qdq("x", "x")
    for i, output_q in enumerate([True, False, True, True]):
        y = g.op("Conv", [x, g.weight(f"w{i}", (16, 16, 3, 3), axis=0, scales=(16,))], f"conv{i}", pads=[1] * 4)
        x = g.qdq(y, f"y{i}", scale=0.1) if output_q else g.qdq(g.op("Abs", [y], f"abs{i}"), f"y{i}", scale=0.1)
    proto = g.model([1, 16, 8, 8], [1, 16, 8, 8])
    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = f"{folder}/all.onnx"
        ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        kernels = [n.op_type for n in onnx.load(f"{folder}/all.onnx").graph.node if n.op_type.startswith("QLinear")]
    assert audit(proto).count(Verdict.FUSED) == len(kernels) == 3


def test_unnamed_layers_and_names_that_prefix_others():
    g = Graph()
    x = g.qdq("x", "x")
    for name, output_q in [("conv", True), ("conv_1", False), ("", True)]:
        y = g.op("Conv", [x, g.weight(f"w{name}", (8, 8, 1, 1), axis=0, scales=(8,))], f"out{name}")
        g.nodes[-1].name = name
        x = g.qdq(y, f"y{name}", scale=0.1) if output_q else g.qdq(g.op("Abs", [y], "abs"), f"y{name}", scale=0.1)
    result = audit(g.model([1, 8, 6, 6], [1, 8, 6, 6]))
    assert [(layer.label, layer.verdict) for layer in result.layers] == [
        ("Conv 'conv'", Verdict.FUSED),
        ("Conv 'conv_1'", Verdict.FLOAT),
        ("Conv (unnamed, output 'out')", Verdict.FUSED),
    ]
    assert result.layers[2].ort_node == ""  # ONNX Runtime's node carries the name the layer has: none


def test_layer_in_a_subgraph():
    """An If branch holding a weight-only MatMul: ONNX Runtime optimizes subgraphs too."""
    g = Graph()
    w = g.weight("w", (64, 16), axis=1, scales=(16,))
    g.op("MatMul", ["x", w], "mm")
    g.nodes[-1].output[0] = "branch_y"
    then_out = helper.make_tensor_value_info("branch_y", TensorProto.FLOAT, [2, 16])
    then_branch = helper.make_graph(g.nodes, "then", [], [then_out], g.inits)
    else_branch = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w_float"], ["else_y"], name="else_mm")],
        "else",
        [],
        [helper.make_tensor_value_info("else_y", TensorProto.FLOAT, [2, 16])],
        [numpy_helper.from_array(np.ones((64, 16), np.float32), "w_float")],
    )
    node = helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then_branch, else_branch=else_branch)
    inputs = [
        helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64]),
    ]
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16])])
    layer = only(audit(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)))
    assert (layer.name, layer.verdict, layer.ort_op) == ("mm", Verdict.FUSED, "MatMulNBits")


def test_external_data_and_nothing_left_behind(tmp_path, system_tmp):
    """Weights in external data: ONNX Runtime reads a temporary copy and writes the optimized weights to a file
    of their own (what a model over 2 GB needs); both go with the temporary folder."""
    model_io.save(ir.serde.deserialize_model(conv()), tmp_path / "m.onnx", external_data=True)
    model = model_io.load(tmp_path / "m.onnx")
    assert model_io.has_external_tensors(model)
    assert only(fusion.audit(model)).verdict is Verdict.FUSED
    assert list(system_tmp.iterdir()) == []


def test_an_error_is_one_line_with_the_layer_names(system_tmp):
    proto = conv()
    layer = next(n for n in proto.graph.node if n.name == "conv")
    layer.attribute.append(helper.make_attribute("strides", [1]))  # a 2-D Conv needs two
    with pytest.raises(OnnxbcError) as e:
        audit(proto)
    message = str(e.value)
    assert message.startswith("ONNX Runtime cannot build its CPU session for the fusion audit: ")
    assert "\n" not in message and "onnxbc-layer" not in message and "Node (conv)" in message, message
    assert list(system_tmp.iterdir()) == []


def test_float_model_has_nothing_to_audit(tmp_path):
    graph = test_graphs.build("conv")
    assert fusion.quantized_layers(ir.serde.deserialize_model(graph.model)) == []
    assert audit(graph.model).layers == ()
    path = test_graphs.save(graph, tmp_path / "float.onnx")
    report = validate.check(path, CheckOptions(target=Target.ONNXRUNTIME, device=onnxbc.Device.CPU))
    result = next(r for r in report.results if r.rule.id == "ort.fusion")
    assert result.status is Status.SKIPPED and "no quantized layer" in result.reason


def test_check_command_shows_the_rule(tmp_path):
    onnx.save(conv(after="Abs"), tmp_path / "m.onnx")
    text = CliRunner().invoke(app, ["check", str(tmp_path / "m.onnx"), "--target", "onnxruntime", "--device", "cpu"])
    assert text.exit_code == 0, text.stdout
    assert "  WARN  ort.fusion\n        Conv 'conv' runs as float Conv on dequantized 'x_dq', 'w_dq'" in text.stdout
    js = CliRunner().invoke(app, ["check", str(tmp_path / "m.onnx"), "--device", "cpu", "--format", "json"])
    assert js.exit_code == 0
    (rule,) = [r for r in json.loads(js.stdout)["rules"] if r["id"] == "ort.fusion"]
    assert rule["status"] == "warned" and rule["profile"] == "onnxruntime"
    (finding,) = rule["findings"]
    assert finding["failed"] is False and finding["message"].startswith("Conv 'conv' runs as float Conv")
    assert "warning: ort.fusion: Conv 'conv'" in js.stderr
    listed = CliRunner().invoke(app, ["check", "--list-rules"]).stdout
    assert any(line.split()[:2] == ["ort.fusion", "onnxruntime"] for line in listed.splitlines())
    trt = CliRunner().invoke(app, ["check", str(tmp_path / "m.onnx"), "--target", "tensorrt"])
    assert "skip  ort.fusion (target is tensorrt)" in trt.stdout


@pytest.mark.slow
def test_model_over_2gb(tmp_path):
    """Two weight-only int8 MatMuls of 1.2 GB each: external data in, external weights in ONNX Runtime's optimized
    model out. (One 2.3 GB matrix fails in ONNX Runtime itself: its MatMulNBits fusion indexes with int32.)"""
    k = n = 34_000
    rng = np.random.default_rng(0)
    x = ir.val("x", ir.DataType.FLOAT, ir.Shape([1, k]))
    nodes, initializers, h = [], [], x
    for i in range(2):
        codes = rng.integers(-7, 8, (k, n), dtype=np.int8)
        weight = ir.Value(name=f"w{i}", shape=ir.Shape([k, n]), const_value=ir.tensor(codes))
        scale = ir.Value(name=f"w{i}_scale", shape=ir.Shape([n]), const_value=ir.tensor(np.full(n, 0.01, np.float32)))
        initializers += [weight, scale]
        dq = ir.node("DequantizeLinear", [weight, scale], attributes={"axis": 1}, name=f"w{i}_dq")
        layer = ir.node("MatMul", [h, dq.outputs[0]], name=f"big{i}")
        nodes += [dq, layer]
        h = layer.outputs[0]
        h.name, h.dtype, h.shape = f"h{i}", ir.DataType.FLOAT, ir.Shape([1, n])
    graph = ir.Graph([x], [h], nodes=nodes, initializers=initializers, opset_imports={"": 21})
    path = tmp_path / "big.onnx"
    ir.save(ir.Model(graph, ir_version=10), path, external_data="big.onnx.data")
    del graph, nodes, initializers, codes, weight
    model = model_io.load(path, check=False)
    assert model_io.initializer_bytes(model) > 2**31
    result = fusion.audit(model)
    assert [(layer.name, layer.verdict, layer.ort_op) for layer in result.layers] == [
        ("big0", Verdict.FUSED, "MatMulNBits"),
        ("big1", Verdict.FUSED, "MatMulNBits"),
    ]
