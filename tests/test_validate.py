"""onnxbc check: every rule fails on a graph that breaks it and passes on one that does not; reports in
text, JSON (docs/check-schema.md) and JUnit XML; exit codes; the same rules gate compress."""

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import onnxbc
from models import test_graphs
from onnxbc import validate
from onnxbc.cli import app
from onnxbc.errors import OnnxbcError, UsageError
from onnxbc.options import CheckOptions, DataOptions, ErrorMetric, Target
from onnxbc.validate import Finding, Rule, Status

TRT, ORT = Target.TENSORRT, Target.ONNXRUNTIME


def onnxbc_cli(*args):
    """The command line, in this process (``exit_code``, ``stdout``, ``stderr``)."""
    return CliRunner().invoke(app, [str(a) for a in args])


class Graph:
    """A few nodes and initializers, named after their outputs, made into a model."""

    def __init__(self):
        self.nodes, self.inits, self.outputs = [], {}, []

    def init(self, name, array):
        self.inits[name] = np.asarray(array)
        return name

    def op(self, op_type, inputs, out, domain="", **attrs):
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, domain=domain, **attrs))
        return out

    def model(self, inputs, outputs, opset=21):
        inits = [numpy_helper.from_array(a, n) for n, a in self.inits.items()]
        graph = helper.make_graph(self.nodes, "g", inputs, outputs, inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def tensor(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def conv(
    x_zero_point=None,
    dq_scale=0.05,
    per_channel_activation=False,
    w_axis=0,
    w_scale=(0.01, 0.02, 0.01, 0.03),
    w_zero_point=None,
    bias_dq=False,
    y_shape=(1, 4, 4, 4),
    opset=21,
):
    """x -> Q -> DQ -> Conv(W: int8 per channel through DQ, float bias) -> y, with knobs that break one rule each."""
    g = Graph()
    rng = np.random.default_rng(0)
    if per_channel_activation:
        scale = g.init("x_scale", np.full(8, 0.05, np.float32))
        zero_point = g.init("x_zero_point", np.zeros(8, np.int8))
        q = g.op("QuantizeLinear", ["x", scale, zero_point], "x_q", axis=1)
        x = g.op("DequantizeLinear", [q, scale, zero_point], "x_dq", axis=1)
    else:
        zero_point = g.init("x_zero_point", np.int8(0) if x_zero_point is None else x_zero_point)
        q = g.op("QuantizeLinear", ["x", g.init("x_scale", np.float32(0.05)), zero_point], "x_q")
        x = g.op("DequantizeLinear", [q, g.init("x_dq_scale", np.float32(dq_scale)), zero_point], "x_dq")
    w_inputs = [g.init("w_codes", rng.integers(-127, 128, (4, 8, 3, 3)).astype(np.int8))]
    w_inputs.append(g.init("w_scale", np.array(w_scale, np.float32)))
    if w_zero_point is not None:
        w_inputs.append(g.init("w_zero_point", w_zero_point))
    w = g.op("DequantizeLinear", w_inputs, "w_dq", axis=w_axis)
    if bias_dq:
        codes, scale = g.init("b_codes", np.arange(4, dtype=np.int32)), g.init("b_scale", np.float32(1e-3))
        b = g.op("DequantizeLinear", [codes, scale], "b_dq")
    else:
        b = g.init("b", np.full(4, 0.1, np.float32))
    g.op("Conv", [x, w, b], "y", kernel_shape=[3, 3])
    return g.model([tensor("x", [1, 8, 6, 6])], [tensor("y", list(y_shape))], opset)


def matmul_int4(block_size=64, axis=0, scale_rows=2, quantize_input=False, codes=TensorProto.INT4, opset=21):
    """x[2, 128] @ DQ(W int4 [128, 16], blocks along ``axis``) -> y: TensorRT's int4 weight-only layout."""
    g = Graph()
    rng = np.random.default_rng(0)
    dtype = {TensorProto.INT4: ml_dtypes.int4, TensorProto.INT8: np.int8}[codes]
    weight = g.init("w_codes", rng.integers(-8, 8, (128, 16)).astype(dtype))
    scale_shape = (scale_rows, 16) if axis == 0 else (128, scale_rows)
    scale = g.init("w_scale", np.full(scale_shape if block_size else (16,), 0.01, np.float32))
    attrs = {"axis": axis if block_size else 1, "block_size": block_size} if opset >= 21 else {"axis": 1}
    w = g.op("DequantizeLinear", [weight, scale], "w_dq", **attrs)
    x = "x"
    if quantize_input:
        s, z = g.init("x_scale", np.float32(0.05)), g.init("x_zero_point", np.int8(0))
        x = g.op("DequantizeLinear", [g.op("QuantizeLinear", ["x", s, z], "x_q"), s, z], "x_dq")
    g.op("MatMul", [x, w], "y")
    return g.model([tensor("x", [2, 128])], [tensor("y", [2, 16])], opset)


# TensorRT Model Optimizer's int8 layout (modelopt.onnx.quantization.int8: ONNX Runtime's quantize_static in QDQ
# format with per_channel=True and the options AddQDQPairToWeight, ActivationSymmetric, QuantizeBias=False,
# QDQOpTypePerChannelSupportToAxis {Conv: 0, ConvTranspose: 1}): the weight stays a float initializer and is
# read through a QuantizeLinear -> DequantizeLinear pair with one scale per output channel; Q and DQ share their
# scale and zero point initializers; activations are int8 per tensor with zero point 0; biases stay float.
MODELOPT_LAYERS = {
    # layer: (x shape, float weight shape, per-channel axis of the weight, y shape)
    "Conv": ([1, 8, 6, 6], (4, 8, 3, 3), 0, [1, 4, 4, 4]),
    "Gemm": ([2, 16], (8, 16), 0, [2, 8]),  # transB=1 (torch's nn.Linear): W is [out, in]
    "MatMul": ([2, 16], (16, 8), 1, [2, 8]),  # W is [in, out]: one scale per column
    "Gemm/transposed": ([2, 16], (16, 8), 0, [2, 8]),  # transB=1 on Transpose(W [in, out]): a constant too
    "Conv/Constant": ([1, 8, 6, 6], (4, 8, 3, 3), 0, [1, 4, 4, 4]),  # W is a Constant node's output
}


def modelopt_int8(
    layer="Conv",
    w_axis=None,
    dq_w_axis=None,
    w_zero_point=0,
    w_codes=np.int8,
    per_channel_activation=False,
    w_scales=None,
):
    """x -> Q -> DQ -> layer(float W -> Q -> DQ, float bias) -> y, as TensorRT Model Optimizer writes int8."""
    x_shape, w_shape, axis, y_shape = MODELOPT_LAYERS[layer]
    w_axis = axis if w_axis is None else w_axis
    g = Graph()
    rng = np.random.default_rng(0)
    channels = x_shape[1]
    if per_channel_activation:  # one scale per input channel: not something TensorRT runs
        x_scale = g.init("x_scale", np.linspace(0.01, 0.05, channels).astype(np.float32))
        x_zero_point = g.init("x_zero_point", np.zeros(channels, np.int8))
        attrs = {"axis": 1}
    else:
        x_scale, x_zero_point, attrs = g.init("x_scale", np.float32(0.05)), g.init("x_zero_point", np.int8(0)), {}
    q = g.op("QuantizeLinear", ["x", x_scale, x_zero_point], "x_QuantizeLinear_Output", **attrs)
    x = g.op("DequantizeLinear", [q, x_scale, x_zero_point], "x_DequantizeLinear_Output", **attrs)
    w_array = rng.normal(0, 0.1, w_shape).astype(np.float32)
    if layer == "Conv/Constant":
        w = g.op("Constant", [], "W", value=numpy_helper.from_array(w_array))
    else:
        w = g.init("W", w_array)
    if layer == "Gemm/transposed":
        w, w_shape = g.op("Transpose", [w], "W_transposed", perm=[1, 0]), w_shape[::-1]
    w_scale = g.init("W_scale", np.full(w_scales or w_shape[w_axis], 0.002, np.float32))
    w_zp = g.init("W_zero_point", np.full(g.inits[w_scale].shape, w_zero_point, w_codes))
    q = g.op("QuantizeLinear", [w, w_scale, w_zp], "W_QuantizeLinear_Output", axis=w_axis)
    dq_axis = w_axis if dq_w_axis is None else dq_w_axis
    w = g.op("DequantizeLinear", [q, w_scale, w_zp], "W_DequantizeLinear_Output", axis=dq_axis)
    out_channels = y_shape[1]
    b = g.init("B", np.full(out_channels, 0.1, np.float32))
    if layer.startswith("Conv"):
        g.op("Conv", [x, w, b], "y", kernel_shape=[3, 3])
    elif layer.startswith("Gemm"):
        g.op("Gemm", [x, w, b], "y", transB=1)
    else:
        g.op("Add", [g.op("MatMul", [x, w], "xw"), b], "y")
    return g.model([tensor("x", x_shape)], [tensor("y", y_shape)], opset=13)


def q_dq_int4_weight(quantize_input):
    """x[2, 128] @ DQ(Q(float W [128, 16], int4, blocks of 64 along axis 0)): an int4 weight as a Q/DQ pair."""
    g = Graph()
    w = g.init("W", np.random.default_rng(0).normal(0, 0.1, (128, 16)).astype(np.float32))
    scale = g.init("W_scale", np.full((2, 16), 0.02, np.float32))
    zero_point = g.init("W_zero_point", np.zeros((2, 16), ml_dtypes.int4))
    q = g.op("QuantizeLinear", [w, scale, zero_point], "W_q", axis=0, block_size=64)
    w = g.op("DequantizeLinear", [q, scale, zero_point], "W_dq", axis=0, block_size=64)
    x = "x"
    if quantize_input:
        s, z = g.init("x_scale", np.float32(0.05)), g.init("x_zero_point", np.int8(0))
        x = g.op("DequantizeLinear", [g.op("QuantizeLinear", ["x", s, z], "x_q"), s, z], "x_dq")
    g.op("MatMul", [x, w], "y")
    return g.model([tensor("x", [2, 128])], [tensor("y", [2, 16])])


def float_model():
    g = Graph()
    g.op("Gemm", ["x", g.init("W", np.ones((8, 16), np.float32)), g.init("B", np.zeros(8, np.float32))], "y", transB=1)
    return g.model([tensor("x", [2, 16])], [tensor("y", [2, 8])], opset=13)


def concat(same_scale):
    """Two quantized branches -> Concat: TensorRT wants one scale for both."""
    g = Graph()
    z = g.init("zero_point", np.int8(0))
    inputs = []
    for name, scale in (("a", 0.05), ("b", 0.05 if same_scale else 0.2)):
        s = g.init(f"{name}_scale", np.float32(scale))
        inputs.append(g.op("DequantizeLinear", [g.op("QuantizeLinear", [name, s, z], f"{name}_q"), s, z], f"{name}_dq"))
    g.op("Concat", inputs, "y", axis=1)
    return g.model([tensor("a", [1, 4]), tensor("b", [1, 4])], [tensor("y", [1, 8])])


def recurrent(bad):
    """An LSTM reading W and R as float initializers, or (bad for TensorRT) through DequantizeLinear."""
    g = Graph()
    w, r = np.full((1, 8, 3), 0.1, np.float32), np.full((1, 8, 2), 0.1, np.float32)
    if bad:
        scale = g.init("scale", np.full(8, 0.01, np.float32))
        w = g.op("DequantizeLinear", [g.init("W_codes", np.full(w.shape, 10, np.int8)), scale], "W", axis=1)
        r = g.op("DequantizeLinear", [g.init("R_codes", np.full(r.shape, 10, np.int8)), scale], "R", axis=1)
    else:
        w, r = g.init("W", w), g.init("R", r)
    g.op("LSTM", ["x", w, r], "y", hidden_size=2)
    return g.model([tensor("x", [4, 1, 3])], [tensor("y", [4, 1, 1, 2])])


def unknown_op(bad):
    """onnx.checker skips custom domains; ONNX Runtime has no kernel for this one."""
    g = Graph()
    g.op("Frobnicate" if bad else "Relu", ["x"], "y", domain="example.custom" if bad else "")
    model = g.model([tensor("x", [1, 4])], [tensor("y", [1, 4])])
    model.opset_import.append(helper.make_opsetid("example.custom", 1))
    return model


def missing_input(bad):
    g = Graph()
    g.op("Relu", ["nowhere" if bad else "x"], "y")
    return g.model([tensor("x", [1, 4])], [tensor("y", [1, 4])])


def scale_input(bad):
    """The activation scale is a graph input (set at run time) instead of a constant."""
    model = conv()
    if bad:
        model.graph.input.append(tensor("x_run_time_scale", []))
        model.graph.node[0].input[1] = "x_run_time_scale"
    return model


# rule id -> (builder(bad) -> model (or the file's bytes), target, text the failure (or warning) names)
CASES = {
    "model.load": (lambda bad: b"\x08\x07garbage" if bad else conv(), ORT, "not a readable ONNX model"),
    "model.quantized": (lambda bad: float_model() if bad else conv(), TRT, "nothing is quantized"),
    "onnx.checker": (missing_input, ORT, "nowhere"),
    "onnx.shape-inference": (
        lambda bad: conv(y_shape=(1, 5, 4, 4) if bad else (1, 4, 4, 4)),
        ORT,
        "node name: y): [ShapeInferenceError] Inferred shape and existing shape differ",
    ),
    "onnx.opset": (lambda bad: matmul_int4(block_size=0, opset=19 if bad else 21), ORT, "'w_dq' uses int4"),
    "qdq.scale": (lambda bad: conv(w_scale=(0.01, 0.0, 0.01, 0.03) if bad else (0.01,) * 4), ORT, "w_scale"),
    "qdq.zero-point": (lambda bad: conv(w_zero_point=np.int8(0) if bad else np.zeros(4, np.int8)), ORT, "w_zero_point"),
    "qdq.axis": (lambda bad: conv(w_axis=2 if bad else 0), ORT, "'w_dq': 4 scales along axis 2"),
    "qdq.block-size": (lambda bad: matmul_int4(block_size=32 if bad else 64), ORT, "'w_dq': scale shape [2, 16]"),
    "qdq.pair": (lambda bad: conv(dq_scale=0.1 if bad else 0.05), ORT, "'x_q' and DequantizeLinear 'x_dq'"),
    "trt.quantized-ops": (
        lambda bad: test_graphs.build("quantized_convinteger" if bad else "quantized_qdq").model,
        TRT,
        "ConvInteger 'conv'",
    ),
    "trt.zero-point": (lambda bad: conv(x_zero_point=np.int8(3 if bad else 0)), TRT, "'x_zero_point'"),
    "trt.uint8": (lambda bad: conv(x_zero_point=np.uint8(0) if bad else np.int8(0)), TRT, "uint8 activation 'x_q'"),
    "trt.int4": (lambda bad: matmul_int4(block_size=64, quantize_input=bad), TRT, "read by MatMul 'y'"),
    "trt.scale": (lambda bad: conv(per_channel_activation=bad), TRT, "per-channel scale on activation 'x_q'"),
    "trt.channel-axis": (
        lambda bad: conv(w_axis=1 if bad else 0, w_scale=np.full(8 if bad else 4, 0.01)),
        TRT,
        "Conv 'y' on axis 1",
    ),
    "trt.float-bias": (lambda bad: conv(bias_dq=bad), TRT, "Conv 'y' reads its bias through DequantizeLinear 'b_dq'"),
    "trt.concat-scale": (lambda bad: concat(same_scale=not bad), TRT, "Concat 'y'"),
    "trt.recurrent": (recurrent, TRT, "LSTM 'y' reads W 'W' and R 'R' through DequantizeLinear"),
    "ort.session": (unknown_op, ORT, "Frobnicate"),
    "ort.fusion": (
        lambda bad: conv() if bad else test_graphs.build("quantized_qdq").model,  # no Q after the Conv: float
        ORT,
        "Conv 'y' runs as float Conv on dequantized 'x_dq', 'w_dq'",
    ),
    "qdq.scale/run-time": (scale_input, ORT, "'x_run_time_scale' of QuantizeLinear 'x_q' is computed at run time"),
    "trt.int4/per-channel": (lambda bad: matmul_int4(block_size=0 if bad else 128, scale_rows=1), TRT, "block_size 0"),
    # TensorRT Model Optimizer's layout (float weight -> Q -> DQ): the weight's Q/DQ pair is a weight quantizer
    "trt.scale/modelopt": (
        lambda bad: modelopt_int8(per_channel_activation=bad),
        TRT,
        "QuantizeLinear 'x_QuantizeLinear_Output': per-channel scale on activation 'x_QuantizeLinear_Output'",
    ),
    "trt.scale/modelopt-gemm": (
        lambda bad: modelopt_int8("Gemm", per_channel_activation=bad),
        TRT,
        "per-channel scale on activation 'x_QuantizeLinear_Output'",
    ),
    "trt.channel-axis/modelopt": (
        lambda bad: modelopt_int8(w_axis=1 if bad else 0),
        TRT,
        "QuantizeLinear 'W_QuantizeLinear_Output': per-channel weight of Conv 'y' on axis 1, needs axis 0",
    ),
    "trt.zero-point/modelopt": (
        lambda bad: modelopt_int8("MatMul", w_zero_point=1 if bad else 0),
        TRT,
        "zero point 'W_zero_point' of QuantizeLinear 'W_QuantizeLinear_Output' is [1, 1, 1, 1, ...], not 0",
    ),
    "trt.uint8/modelopt": (
        lambda bad: modelopt_int8(w_codes=np.uint8 if bad else np.int8),
        TRT,
        "QuantizeLinear 'W_QuantizeLinear_Output' makes uint8 weight 'W_QuantizeLinear_Output'",
    ),
    "qdq.pair/modelopt": (
        lambda bad: modelopt_int8("Gemm", dq_w_axis=1 if bad else 0),
        ORT,
        "QuantizeLinear 'W_QuantizeLinear_Output' and DequantizeLinear 'W_DequantizeLinear_Output'",
    ),
    "qdq.axis/modelopt": (
        lambda bad: modelopt_int8("Conv", w_scales=8 if bad else 4),
        ORT,
        "'W_QuantizeLinear_Output': 8 scales along axis 0, where the input has 4",
    ),
    "trt.int4/q-dq-weight": (q_dq_int4_weight, TRT, "int4 weight read by MatMul 'y'"),
}


def test_every_rule_has_a_case():
    assert {case.split("/")[0] for case in CASES} | {"numerics"} == set(validate.RULE_IDS)


def rule_result(report, rule_id):
    return next(r for r in report.results if r.rule.id == rule_id)


def save(model_or_bytes, path):
    if isinstance(model_or_bytes, bytes):
        path.write_bytes(model_or_bytes)
    else:
        onnx.save(model_or_bytes, path)
    return path


@pytest.mark.parametrize("bad", [False, True], ids=["passing", "failing"])
@pytest.mark.parametrize("case", CASES)
def test_rule(tmp_path, case, bad):
    build, target, named = CASES[case]
    path = save(build(bad), tmp_path / "model.onnx")
    result = rule_result(
        validate.check(path, CheckOptions(target=target, device=onnxbc.Device.CPU)), case.split("/")[0]
    )
    if bad:
        assert result.status is (Status.WARNED if result.rule.warns else Status.FAILED), result
        assert named in result.findings[0].message, result.findings
        assert all("\n" not in f.message for f in result.findings)
    else:
        assert result.status is Status.PASSED, result.findings


@pytest.mark.parametrize("layer", MODELOPT_LAYERS)
def test_modelopt_int8_layout_passes_tensorrt(tmp_path, layer):
    """TensorRT Model Optimizer's own int8 output passes --target tensorrt: its float weights quantized by a Q/DQ
    pair with per-channel scales are weights, not activations."""
    path = save(modelopt_int8(layer), tmp_path / "modelopt.onnx")
    report = validate.check(path, CheckOptions(target=TRT))
    assert report.passed, report.to_text()
    statuses = {r.rule.id: r.status for r in report.results}
    assert all(statuses[i] is Status.PASSED for i in validate.RULE_IDS if i.startswith(("model.", "qdq.", "trt."))), (
        report.to_text()
    )
    r = onnxbc_cli("check", path, "--target", "tensorrt")
    assert r.exit_code == 0 and "ok    trt.scale" in r.stdout, r.stdout


def test_modelopt_options_on_onnxruntime_quantize_static_pass_tensorrt(tmp_path):
    """The real thing: ONNX Runtime's quantize_static with the options TensorRT Model Optimizer passes it."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    for name in ("conv", "gemm", "matmul_add"):
        graph = test_graphs.build(name)
        float_path = test_graphs.save(graph, tmp_path / f"{name}.onnx")

        class Reader(CalibrationDataReader):
            def __init__(self, graph):
                self.feeds = iter([graph.feeds(4, seed) for seed in range(2)])

            def get_next(self):
                return next(self.feeds, None)

        out = tmp_path / f"{name}.modelopt.onnx"
        ort_quantize_static(
            str(float_path),
            str(out),
            Reader(graph),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            extra_options={
                "QuantizeBias": False,
                "ActivationSymmetric": True,
                "AddQDQPairToWeight": True,
                "QDQOpTypePerChannelSupportToAxis": {"Conv": 0, "ConvTranspose": 1},
                "DedicatedQDQPair": False,
                "ForceQuantizeNoInputCheck": True,
                "OpTypesToExcludeOutputQuantization": ["Conv", "Gemm", "MatMul", "Add", "Relu"],
            },
        )
        quantizers = [n for n in onnx.load(out).graph.node if n.op_type == "QuantizeLinear"]
        assert any(n.input[0].endswith("weight") for n in quantizers), name  # the layout: float weight -> Q -> DQ
        report = validate.check(out, CheckOptions(target=TRT))
        assert report.passed, report.to_text()


def test_shape_checks_read_inferred_ranks(tmp_path):
    """The axis check needs the activation's rank, which only shape inference knows here."""
    model = conv(per_channel_activation=True)
    model.graph.node[0].attribute[0].i = 4  # axis 4 of a rank-4 tensor
    onnx.save(model, tmp_path / "m.onnx")
    report = validate.check(tmp_path / "m.onnx")
    assert "axis 4 is out of range for its rank-4 input" in rule_result(report, "qdq.axis").failures[0].message


def quantize_static(path, out, activation_type=None):
    from onnxruntime.quantization import CalibrationDataReader, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    feeds = iter([test_graphs.build("concat_conv").feeds(4, seed) for seed in range(2)])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(feeds, None)

    kwargs = {} if activation_type is None else {"activation_type": getattr(QuantType, activation_type)}
    ort_quantize_static(str(path), str(out), Reader(), **kwargs)
    return out


@pytest.mark.parametrize(
    "activation_type, rules",
    [
        (None, {"trt.zero-point", "trt.float-bias", "trt.concat-scale"}),  # ORT 1.2x default: asymmetric int8
        ("QUInt8", {"trt.zero-point", "trt.uint8", "trt.float-bias", "trt.concat-scale"}),
    ],
)
def test_ort_quantize_static_fails_tensorrt_rules(tmp_path, activation_type, rules):
    float_path = test_graphs.save(test_graphs.build("concat_conv"), tmp_path / "float.onnx")
    path = quantize_static(float_path, tmp_path / "ort.qdq.onnx", activation_type)
    trt = validate.check(path, CheckOptions(target=TRT))
    assert {r.rule.id for r in trt.results if r.status is Status.FAILED} == rules
    if activation_type == "QUInt8":
        assert any("uint8 activation" in f.message for f in rule_result(trt, "trt.uint8").failures)
    assert validate.check(path, CheckOptions(target=ORT, device=onnxbc.Device.CPU)).passed  # fine for ORT
    r = onnxbc_cli("check", path, "--target", "tensorrt")
    assert r.exit_code == 1 and "FAIL  trt.float-bias" in r.stdout


@pytest.mark.parametrize(
    "name, options",
    [
        ("concat_conv", onnxbc.CompressOptions(target=TRT)),
        ("attention", onnxbc.CompressOptions(target=TRT)),
        ("conv_transpose", onnxbc.CompressOptions(target=TRT)),  # per-channel weights on axis 1
        (
            "gelu_mlp",
            onnxbc.CompressOptions(
                target=TRT,
                weights=onnxbc.WeightType.INT4,
                block_size=64,
                activations=onnxbc.ActivationType.NONE,
            ),
        ),
        ("concat_conv", onnxbc.CompressOptions(target=ORT)),
        ("hardswish_cnn", onnxbc.CompressOptions(target=ORT, weights=onnxbc.WeightType.INT4)),
        ("external_data", onnxbc.CompressOptions(target=TRT)),  # the checker reads the .data file beside it
    ],
    ids=["trt-concat", "trt-attention", "trt-convtranspose", "trt-w4-blocks", "ort-uint8", "ort-w4a8", "external"],
)
def test_onnxbc_outputs_pass_their_target(zoo, tmp_path, name, options):
    path, data, _ = zoo(name)
    result = onnxbc.compress(path, tmp_path / "out.onnx", data=DataOptions(path=data), options=options)
    check = CheckOptions(
        target=options.target, device=onnxbc.Device.CPU, reference=path, data=DataOptions(data), max_error=0.05
    )
    report = validate.check(result.output, check)
    assert report.passed, report.to_text()
    assert rule_result(report, "numerics").status is Status.PASSED


def test_compress_refuses_an_output_that_fails_a_rule(zoo, tmp_path, monkeypatch):
    path, data, _ = zoo("conv")
    broken = Rule("x.broken", "qdq", "always fails", lambda s: iter([Finding("node 'conv1' is wrong")]), False)
    monkeypatch.setattr(validate, "RULES", (*validate.RULES, broken))
    with pytest.raises(OnnxbcError, match="fails check rule x.broken: node 'conv1' is wrong"):
        onnxbc.compress(path, tmp_path / "out.onnx", data=DataOptions(path=data))
    assert not (tmp_path / "out.onnx").exists()


def test_require_names_the_first_failed_rule():
    model = ir.serde.deserialize_model(test_graphs.build("quantized_qdq").model)
    validate.require(model, ORT)
    with pytest.raises(OnnxbcError, match=r"fails check rule trt.zero-point: zero point 'x_zero_point' .* is 128"):
        validate.require(model, TRT)


def test_numerics_per_output(zoo, tmp_path):
    path, data, _ = zoo("multi_output")
    out = onnxbc.compress(path, tmp_path / "q.onnx", data=DataOptions(path=data)).output
    options = {"reference": path, "data": DataOptions(data, holdout_fraction=0.0), "device": onnxbc.Device.CPU}
    loose = validate.check(out, CheckOptions(max_error=0.05, metric=ErrorMetric.REL_MSE, exact=True, **options))
    findings = rule_result(loose, "numerics").findings
    assert {f.message.split("'")[1] for f in findings} == {"logits", "aux"}
    assert all(not f.failed and 0 < f.metrics["rel_mse"] < 0.05 for f in findings)
    tight = validate.check(out, CheckOptions(max_error=0.0, metric=ErrorMetric.MAX_ABS, **options))
    assert rule_result(tight, "numerics").status is Status.FAILED and not tight.passed
    same = validate.check(path, CheckOptions(max_error=1e-9, metric=ErrorMetric.COSINE, **options))
    assert rule_result(same, "numerics").status is Status.PASSED


# ------------------------------------------------------------------------------------------------------------
# Reports and the command line


@pytest.fixture
def failing(tmp_path):
    """A model that fails two TensorRT rules (four findings) and passes the rest."""
    path = tmp_path / "qdq.onnx"
    onnx.save(test_graphs.build("quantized_qdq").model, path)
    return path


def test_json_report_follows_the_documented_schema(failing, tmp_path):
    r = onnxbc_cli("check", failing, "--target", "tensorrt", "--format", "json")
    assert r.exit_code == 1, r.stderr
    report = json.loads(r.stdout)
    assert set(report) == {"schema", "tool_version", "model", "target", "options", "passed", "summary", "rules"}
    assert report["schema"] == "onnxbc.check/1" and report["passed"] is False and report["target"] == "tensorrt"
    assert [rule["id"] for rule in report["rules"]] == list(validate.RULE_IDS)
    assert report["summary"] == {"passed": 16, "warned": 0, "failed": 3, "skipped": 3}
    for rule in report["rules"]:
        assert set(rule) == {"id", "profile", "doc", "status", "reason", "seconds", "findings"}
        assert rule["status"] in ("passed", "warned", "failed", "skipped")
        assert (rule["reason"] is not None) == (rule["status"] == "skipped")
        for finding in rule["findings"]:
            assert set(finding) == {"message", "failed", "metrics"}
    failed = {rule["id"]: rule["findings"] for rule in report["rules"] if rule["status"] == "failed"}
    assert set(failed) == {"trt.zero-point", "trt.uint8", "trt.float-bias"}
    assert len(failed["trt.uint8"]) == 2
    documented = (Path(__file__).parents[1] / "docs" / "check-schema.md").read_text()
    for field in (*report, *report["summary"], *report["rules"][0], "message", "failed", "metrics"):
        assert f"`{field}`" in documented, field


def test_junit_report_is_junit_xml(failing, tmp_path):
    out = tmp_path / "check.xml"
    command = [sys.executable, "-m", "onnxbc", "check", failing, "--target", "tensorrt", "--format", "junit", "-o", out]
    r = subprocess.run(command, capture_output=True, text=True)  # as a CI job runs it
    assert r.returncode == 1 and "FAIL  trt.uint8" in r.stdout  # the text report goes to the log
    root = ET.parse(out).getroot()
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 1
    suite = suites[0]
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == list(validate.RULE_IDS)
    failures = [c for c in cases if c.find("failure") is not None]
    skipped = [c for c in cases if c.find("skipped") is not None]
    assert [c.get("name") for c in skipped] == ["ort.session", "ort.fusion", "numerics"]
    assert [c.get("name") for c in failures] == ["trt.zero-point", "trt.uint8", "trt.float-bias"]
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped"), suite.get("errors")) == (
        "22",
        "3",
        "3",
        "0",
    )
    assert root.get("tests") == "22" and root.get("failures") == "3"
    uint8 = failures[1].find("failure")
    assert uint8.get("type") == "trt.uint8" and "x_quantize" in uint8.get("message")
    assert len(uint8.text.splitlines()) == 2
    assert all(float(c.get("time")) >= 0 and c.get("classname") == "qdq.onnx" for c in cases)


def test_text_report_and_exit_codes(failing, tmp_path):
    ok = onnxbc_cli("check", failing, "--target", "onnxruntime", "--device", "cpu")
    assert ok.exit_code == 0, ok.stdout
    assert ok.stdout.strip().endswith("PASSED: 12 passed, 0 warned, 0 failed, 10 skipped")
    bad = onnxbc_cli("check", failing, "--target", "tensorrt")
    assert bad.exit_code == 1
    assert (
        "  FAIL  trt.zero-point\n        zero point 'x_zero_point' of QuantizeLinear 'x_quantize' is 128, not 0"
        in bad.stdout
    )
    assert "skip  numerics (no --reference)" in bad.stdout
    ignored = onnxbc_cli(
        "check", failing, "--target", "tensorrt", "--ignore", "trt.zero-point,trt.uint8", "--ignore", "trt.float-bias"
    )
    assert ignored.exit_code == 0 and "skip  trt.uint8 (ignored (--ignore))" in ignored.stdout
    for args, text in [
        (["--ignore", "trt.nope"], "no rule 'trt.nope'"),
        (["--reference", failing], "--reference needs --data PATH and --max-error X"),
        (["--max-error", "0.1"], "--max-error needs --reference"),
        (["--output", tmp_path / "missing" / "r.xml"], "does not exist"),
    ]:
        r = onnxbc_cli("check", failing, *args)
        assert r.exit_code == 2 and text in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    assert onnxbc_cli("check", tmp_path / "none.onnx").exit_code == 2
    assert onnxbc_cli("check").exit_code == 2


def test_unreadable_model_exits_2_and_checker_failure_is_a_rule(tmp_path):
    (tmp_path / "text.onnx").write_text("hello")
    assert onnxbc_cli("check", tmp_path / "text.onnx").exit_code == 2
    onnx.save(missing_input(True), tmp_path / "broken.onnx")
    r = onnxbc_cli("check", tmp_path / "broken.onnx", "--format", "json")
    report = json.loads(r.stdout)
    assert r.exit_code == 1
    statuses = {rule["id"]: (rule["status"], rule["reason"]) for rule in report["rules"]}
    assert statuses["onnx.checker"] == ("failed", None)
    assert statuses["qdq.scale"] == ("skipped", "onnx.checker failed")


def test_list_rules():
    r = onnxbc_cli("check", "--list-rules")
    assert r.exit_code == 0
    lines = r.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(validate.RULE_IDS)
    assert all(len(line.split(None, 2)) == 3 for line in lines)  # id, profile, doc


def test_ignore_validated_before_work():
    with pytest.raises(UsageError, match="no rule 'x'"):
        validate.check("does-not-matter.onnx", CheckOptions(ignore=frozenset({"x"})))
