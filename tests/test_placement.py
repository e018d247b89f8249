"""The ONNX Runtime placement (onnxbc.placement): after ONNX Runtime's own optimizer, every layer onnxbc
quantized for --target onnxruntime runs as an integer kernel, unless the report says why it cannot; the
TensorRT target keeps quantizing layer inputs only."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_ir as ir
import pytest

import onnxbc
from models import test_graphs
from onnxbc import fusion
from onnxbc.options import CompressOptions, DataOptions, Target
from onnxbc.quantizers import activation_quant
from onnxbc.solvers.ranges import AbsHistogram

LAYERS = ("Conv", "Gemm", "MatMul")
# Float test graphs whose layers are all in the main graph (If/Loop bodies are quantized, not placed).
GRAPHS = [
    n
    for n in test_graphs.names(quantized=False)
    if n not in ("if_conv", "loop_matmul") and test_graphs.build(n).batched
]


def _compress(name: str, tmp_path, **options):
    graph = test_graphs.build(name)
    path = test_graphs.save(graph, tmp_path / f"{name}.onnx")
    data = graph.feeds(24, 0)
    opts = CompressOptions(device="cpu", **options)
    return onnxbc.compress(path, tmp_path / f"{name}.q.onnx", data=data, options=opts)


@pytest.mark.parametrize("name", GRAPHS)
def test_every_placed_layer_runs_as_an_integer_kernel(name, tmp_path):
    result = _compress(name, tmp_path)
    audit = fusion.audit(ir.load(result.output)).by_layer()
    records = {r["name"]: r for r in result.report.to_dict()["layers"]}
    placed = [
        n for n, r in records.items() if any("so that ONNX Runtime runs an integer kernel" in x for x in r["notes"])
    ]
    for layer in placed:
        assert audit[layer]["status"] == "fused", (layer, audit[layer])
    # Every quantized Conv/Gemm/MatMul is either placed or says why not (or is a MatMul that fuses without
    # an output quantizer).
    for layer, entry in audit.items():
        if entry["op"] not in LAYERS or layer not in records:
            continue
        notes = records[layer]["notes"]
        explained = any("not an ONNX Runtime integer kernel" in x for x in notes)
        assert entry["status"] == "fused" or explained, (layer, entry, notes)


def test_cnn_layers_all_fuse_and_placement_costs_little_accuracy(tmp_path):
    """The bundled CNN: both Convs become QLinearConv, both Gemms QGemm; the output error stays within 1.2x of
    the inputs-only placement's."""
    data = DataOptions(path="models/data/fashion_calib.npz")
    ort_run = onnxbc.compress("models/fashion_cnn.onnx", tmp_path / "ort.onnx", data=data)
    statuses = {e["op"]: e["status"] for e in fusion.audit(ir.load(ort_run.output)).by_layer().values()}
    assert statuses == {"Conv": "fused", "Gemm": "fused"}
    inputs_only = onnxbc.compress(
        "models/fashion_cnn.onnx",
        tmp_path / "trt.onnx",
        data=data,
        options=CompressOptions(target=Target.TENSORRT),
    )
    assert ort_run.report.compensation["output_rel_mse"] <= 1.2 * inputs_only.report.compensation["output_rel_mse"]


def test_placement_writes_output_quantizers_zero_points_and_int32_biases(tmp_path):
    result = _compress("conv", tmp_path)
    model = ir.load(result.output)
    qs = [n for n in model.graph if n.op_type == "QuantizeLinear"]
    relu_outputs = {n.outputs[0].name for n in model.graph if n.op_type == "Relu"}
    quantized = {q.inputs[0].name for q in qs}
    assert relu_outputs and relu_outputs <= quantized  # the first Conv's Relu output, read quantized by all
    assert "y" not in quantized  # the last Conv's output is the graph output: kept float, and said so
    notes = {r["name"]: r["notes"] for r in result.report.to_dict()["layers"]}
    assert "not an ONNX Runtime integer kernel: its output 'y' is a graph output, kept float" in notes["conv2"]
    for n in model.graph:
        if n.op_type == "DequantizeLinear" and n.inputs[0].const_value is not None:
            codes = n.inputs[0].const_value.dtype
            if codes == ir.DataType.INT8:  # an int8 weight: an explicit zero point of 0
                assert len(n.inputs) == 3 and not n.inputs[2].const_value.numpy().any()
    assert any(n.op_type == "DequantizeLinear" and n.inputs[0].dtype == ir.DataType.INT32 for n in model.graph)


def test_tensorrt_target_quantizes_layer_inputs_only(tmp_path):
    result = _compress("conv", tmp_path, target=Target.TENSORRT)
    model = ir.load(result.output)
    conv_outputs = {n.outputs[0].name for n in model.graph if n.op_type == "Conv"}
    assert not any(n.op_type == "QuantizeLinear" and n.inputs[0].name in conv_outputs for n in model.graph)
    weight_dqs = [n for n in model.graph if n.op_type == "DequantizeLinear" and n.inputs[0].const_value is not None]
    assert weight_dqs and all(len(n.inputs) == 2 for n in weight_dqs)  # no zero point, float biases
    notes = [x for r in result.report.to_dict()["layers"] for x in r["notes"]]
    assert not any("ONNX Runtime" in x for x in notes)


@pytest.mark.parametrize("nonnegative", [False, True])
def test_onnxruntime_activation_codes_are_uint8_with_the_same_values(nonnegative):
    """Signed tensors get uint8 codes with zero point 128 for --target onnxruntime: the same dequantized values
    as TensorRT's int8 codes with zero point 0."""
    x = np.random.default_rng(0).normal(size=4096).astype(np.float32)
    x = np.abs(x) if nonnegative else x
    hist = AbsHistogram()
    hist.update(x)
    ort_q = activation_quant("x", hist, np.float32, CompressOptions(target=Target.ONNXRUNTIME))
    assert ort_q.dtype == np.uint8 and ort_q.zero_point == (0 if nonnegative else 128)
    if nonnegative:
        return
    trt_q = activation_quant("x", hist, np.float32, CompressOptions(target=Target.TENSORRT))
    assert trt_q.dtype == np.int8 and trt_q.zero_point == 0 and trt_q.scale == ort_q.scale

    def fake(q, lo, hi):
        return (np.clip(np.round(x / q.scale) + q.zero_point, lo, hi) - q.zero_point) * q.scale

    np.testing.assert_array_equal(fake(ort_q, 0, 255), fake(trt_q, -128, 127))


@pytest.mark.parametrize("kind", ["gelu", "shifted_gelu", "symmetric"])
def test_lopsided_activations_get_an_offset_range_for_onnxruntime(kind):
    """A GELU output (at least -0.17) gets uint8 codes from its smallest value up, with a zero point, at about
    half the symmetric step and a lower quantization error; a symmetric tensor keeps zero point 128; TensorRT
    stays symmetric int8."""
    z = np.random.default_rng(0).normal(size=20000) * 3
    gelu = z * 0.5 * (1 + np.vectorize(math.erf)(z / np.sqrt(2)))
    x = {"gelu": gelu, "shifted_gelu": gelu - 0.3, "symmetric": z}[kind].astype(np.float32)
    hist = AbsHistogram()
    hist.update(x)
    q = activation_quant("x", hist, np.float32, CompressOptions(target=Target.ONNXRUNTIME))
    symmetric = activation_quant("x", hist, np.float32, CompressOptions(target=Target.TENSORRT))
    assert q.dtype == np.uint8 and symmetric.zero_point == 0

    def error(quant, lo, hi):
        codes = np.clip(np.round(x / quant.scale) + quant.zero_point, lo, hi)
        return float(np.mean(((codes - quant.zero_point) * quant.scale - x) ** 2))

    if kind == "symmetric":
        assert q.zero_point == 128 and q.scale == symmetric.scale
        return
    assert q.zero_point < 128 and q.scale < 0.75 * symmetric.scale
    assert -q.zero_point * q.scale <= x.min()  # the smallest value is represented
    assert error(q, 0, 255) < 0.5 * error(symmetric, -128, 127)


def _residual_model(path):
    """x -> Conv -> Relu (r) -> Conv -> Add(., r) -> Relu -> Conv -> y: a ResNet block."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def conv(name, x, cin, cout):
        w = numpy_helper.from_array(rng.normal(0, 0.3, (cout, cin, 3, 3)).astype(np.float32), f"{name}.w")
        b = numpy_helper.from_array(rng.normal(0, 0.1, cout).astype(np.float32), f"{name}.b")
        node = helper.make_node("Conv", [x, w.name, b.name], [f"{name}_out"], name=name, pads=[1, 1, 1, 1])
        return node, [w, b]

    c1, i1 = conv("c1", "x", 3, 8)
    c2, i2 = conv("c2", "r", 8, 8)
    c3, i3 = conv("c3", "s", 8, 4)
    nodes = [
        c1,
        helper.make_node("Relu", ["c1_out"], ["r"], name="relu1"),
        c2,
        helper.make_node("Add", ["c2_out", "r"], ["sum"], name="residual"),
        helper.make_node("Relu", ["sum"], ["s"], name="relu2"),
        c3,
    ]
    graph = helper.make_graph(
        nodes,
        "residual",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("c3_out", TensorProto.FLOAT, ["N", 4, 8, 8])],
        initializer=i1 + i2 + i3,
    )
    import onnx

    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return {"x": rng.normal(size=(32, 3, 8, 8)).astype(np.float32)}


def test_tensorrt_residual_add_reads_its_skip_input_quantized(tmp_path):
    """TensorRT fuses the Add into c2 when the skip input is quantized too: the Add reads 'r' through the same
    DequantizeLinear as c2 (TensorRT's rules still pass: compress checks them before writing)."""
    data = _residual_model(tmp_path / "res.onnx")
    options = CompressOptions(target=Target.TENSORRT, device="cpu", smoothing=False)
    result = onnxbc.compress(tmp_path / "res.onnx", tmp_path / "res.q.onnx", data=data, options=options)
    model = ir.load(result.output)
    nodes = {n.name: n for n in model.graph}
    skip, conv_input = nodes["residual"].inputs[1], nodes["c2"].inputs[0]
    assert skip.producer().op_type == "DequantizeLinear" and skip is conv_input
    assert nodes["residual"].inputs[0].producer().op_type == "Conv"  # the layer's output stays float
    ort_run = onnxbc.compress(
        tmp_path / "res.onnx",
        tmp_path / "ort.q.onnx",
        data=data,
        options=dataclasses.replace(options, target=Target.ONNXRUNTIME),
    )
    audit = fusion.audit(ir.load(ort_run.output)).by_layer()
    # ONNX Runtime: both Convs and the residual Add (QLinearAdd) run on integer codes; c3's output is the graph's
    assert {audit[n]["status"] for n in ("c1", "c2", "residual")} == {"fused"}


def test_tensorrt_leaves_a_residual_stream_no_layer_reads_float(tmp_path):
    """A pre-norm block, y = x + (LayerNorm(x) @ W): the skip input x reaches no layer, so there is no layer input
    quantizer to share and the Add reads it float. A quantizer of its own, whose range a few huge channels of a
    residual stream set, made SmolLM2's output noise."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.2, (16, 16)).astype(np.float32), "w"),
        numpy_helper.from_array(np.ones(16, np.float32), "gamma"),
    ]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma"], ["n"], name="norm", axis=-1),
        helper.make_node("MatMul", ["n", "w"], ["h"], name="mm"),
        helper.make_node("Add", ["h", "x"], ["y"], name="residual"),
    ]
    graph = helper.make_graph(
        nodes,
        "prenorm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
        initializer=inits,
    )
    import onnx

    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "pre.onnx")
    x = rng.normal(size=(32, 16)).astype(np.float32)
    x[:, 3] *= 100  # a huge channel, as residual streams have
    options = CompressOptions(target=Target.TENSORRT, device="cpu", smoothing=False)
    result = onnxbc.compress(tmp_path / "pre.onnx", tmp_path / "pre.q.onnx", data={"x": x}, options=options)
    nodes = {n.name: n for n in ir.load(result.output).graph}
    assert nodes["mm"].inputs[0].producer().op_type == "DequantizeLinear"  # the layer input is quantized
    assert nodes["residual"].inputs[1].name == "x" and nodes["residual"].inputs[1].producer() is None


def test_sequential_compensation_refits_layers_whose_output_carries_a_folded_smoothing(tmp_path):
    """A smoothing folded into the Conv before it divides that Conv's output: the sequential refit compares
    layer outputs with the float model's, so it must run without the fold (it measured 16x the independent
    candidate's error when it did not)."""
    result = onnxbc.compress(
        "models/fashion_cnn.onnx",
        tmp_path / "seq.onnx",
        data=DataOptions(path="models/data/fashion_calib.npz"),
        options=CompressOptions(bias_correction="sequential", device="cpu"),
    )
    assert any("folded into Conv" in (s["site"] or "") for s in result.report.smoothing.values())
    errors = result.report.compensation["candidates"]
    sequential = next(v for k, v in errors.items() if "sequential" in k)
    assert sequential <= 1.5 * errors["with_compensation"]


def test_compress_prints_how_many_layers_onnx_runtime_fuses(tmp_path):
    import subprocess
    import sys

    command = [sys.executable, "-m", "onnxbc", "compress", "models/fashion_cnn.onnx", "-o", str(tmp_path / "q.onnx")]
    command += ["--data", "models/data/fashion_calib.npz", "--device", "cpu"]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert "ONNX Runtime (CPU) runs 4 of 4 quantized layers as integer kernels" in out
    tensorrt = subprocess.run([*command, "--target", "tensorrt", "--force"], capture_output=True, text=True, check=True)
    assert "integer kernels" not in tensorrt.stdout  # no audit for TensorRT


# --- MatMul + bias Add as a Gemm with an int32 bias (passes.bias_int32, rule 3) --------------------------------


def _linear_qdq(x_shape: list | None, bias_first: bool, shared: bool) -> ir.Model:
    """x -> MatMul 'fc' (W [8, 5]) -> Add(bias) -> y, as exporters write a Linear layer, quantized with a
    hand-made plan (per-column int8 W, uint8 x with zero point 128); ``shared``: a second one, 'fc2', reads
    the same dequantized x (Q/K/V projections); ``x_shape`` None: x is [N, T, 8] but no value inside the graph has
    a known shape (shape inference gave up, as on PP-OCR's recognizer)."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxbc.passes.qdq import InsertQDQPass
    from onnxbc.plan import ActivationQuant, QuantPlan, WeightQuant
    from onnxbc.solvers.quant import INT8, Granularity, quantize, weight_scale

    rng = np.random.default_rng(3)
    unknown, x_shape = x_shape is None, x_shape or ["N", "T", 8]
    layers = ["fc", "fc2"] if shared else ["fc"]
    nodes, inits, outputs = [], [], []
    for name in layers:
        inits += [
            numpy_helper.from_array((rng.standard_normal((8, 5)) * 0.3).astype(np.float32), f"{name}.w"),
            numpy_helper.from_array((rng.standard_normal(5) * 0.5).astype(np.float32), f"{name}.b"),
        ]
        bias = [f"{name}.b", f"{name}_mm"] if bias_first else [f"{name}_mm", f"{name}.b"]
        nodes += [
            helper.make_node("MatMul", ["x", f"{name}.w"], [f"{name}_mm"], name=name),
            helper.make_node("Add", bias, [f"{name}_y"], name=f"{name}_bias"),
        ]
        outputs.append(helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, [*x_shape[:-1], 5]))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)
    graph = helper.make_graph(nodes, "linear", [x], outputs, inits)
    # Opset 19: onnx.reference's lowest DequantizeLinear.
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=10)
    model = ir.serde.deserialize_model(proto)
    plan = QuantPlan(weight_zero_points=True)
    for name in layers:
        w = inits[layers.index(name) * 2]
        values, gran = numpy_helper.to_array(w), Granularity(1)
        s = weight_scale(values, INT8, gran, "minmax")
        plan.weights[w.name] = WeightQuant(w.name, quantize(values, s, INT8, gran), s, gran, 8, "minmax")
        plan.activation_uses.setdefault("x", []).append((name, 0))
    plan.activations["x"] = ActivationQuant("x", 0.02, 128, np.dtype(np.uint8), 2.54, "fixed")
    InsertQDQPass(plan)(model)
    for value in (v for node in model.graph for v in node.outputs if unknown and not v.is_graph_output()):
        value.shape = None
    return model


def _run_exact(model: ir.Model, feeds: dict) -> list[np.ndarray]:
    """ONNX Runtime with every graph optimization off (the graph as written), and onnx.reference."""
    import onnx
    import onnx.reference
    import onnxruntime as ort

    from onnxbc import model_io

    proto = model_io.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    runtime = session.run(None, feeds)
    reference = onnx.reference.ReferenceEvaluator(proto).run(None, feeds)
    for a, b in zip(runtime, reference):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    return runtime


@pytest.mark.parametrize(
    "x_shape",
    [["N", 8], ["N", 6, 8], ["N", "T", 8], [2, 3, 6, 8], None],
    ids=["rank2", "one_dynamic", "two_dynamic", "rank4_static", "unknown_rank"],
)
@pytest.mark.parametrize("bias_first", [False, True])
@pytest.mark.parametrize("shared", [False, True])
def test_matmul_and_bias_add_become_a_gemm_with_int32_bias(x_shape, bias_first, shared):
    """Rule 3: exact up to half an int32 bias step, and ONNX Runtime runs QGemm (bias in the kernel) with no float
    Add left, where it ran MatMulIntegerToFloat and a float Add over the whole output (a float Gemm on 2-D input)."""
    from onnxbc.passes.bias_int32 import QuantizeBiasPass

    before = _linear_qdq(x_shape, bias_first, shared)
    after = _linear_qdq(x_shape, bias_first, shared)
    result = QuantizeBiasPass()(after)
    layers = ["fc", "fc2"] if shared else ["fc"]
    assert set(result.sites) == set(layers)
    assert all(result.sites[n].startswith(f"MatMul + Add '{n}_bias' as a Gemm, C int32") for n in layers)
    ops = [n.op_type for n in after.graph]
    assert ops.count("MatMul") == 0 and ops.count("Add") == 0 and ops.count("Gemm") == len(layers)
    # Rank other than 2: one Reshape of the codes (shared by the layers) and one back per layer.
    rank2 = x_shape is not None and len(x_shape) == 2
    assert ops.count("Reshape") == (0 if rank2 else 1 + len(layers))
    runtime_shape = x_shape is None or x_shape[1] == "T"  # the leading dimensions read by Shape, Slice
    assert ops.count("Shape") == ops.count("Slice") == (len(layers) if runtime_shape else 0)
    assert ops.count("QuantizeLinear") == 1  # the layers still share one quantizer

    dims = [d if isinstance(d, int) else 3 for d in x_shape or [2, 3, 8]]
    feeds = {"x": np.random.default_rng(0).standard_normal(dims).astype(np.float32)}
    for name, want, got in zip(layers, _run_exact(before, feeds), _run_exact(after, feeds)):
        gemm = next(n for n in after.graph if n.name == name)
        step = gemm.inputs[2].producer().inputs[1].const_value.numpy().astype(np.float64)
        assert got.shape == want.shape
        assert np.all(np.abs(got - want) <= 0.5 * step + 1e-5 * (1 + np.abs(want))), name

    audit = fusion.audit(after).by_layer()
    assert {audit[n]["ort_op"] for n in layers} == {"QGemm"} and {audit[n]["status"] for n in layers} == {"fused"}
    # Before: MatMulIntegerToFloat and a float Add; where ONNX Runtime could merge them (2-D or static input: its
    # MatMulAddFusion), a float Gemm on the dequantized weight.
    static = rank2 or (x_shape is not None and all(isinstance(d, int) for d in x_shape))
    expected = "Gemm" if static else "MatMulIntegerToFloat"
    assert {fusion.audit(before).by_layer()[n]["ort_op"] for n in layers} == {expected}


@pytest.mark.parametrize("case", ["float_input", "graph_output", "bias_shape", "no_weight_zero_point"])
def test_matmul_bias_add_left_alone_says_why(case):
    """Rule 3 leaves the MatMul and its Add where it cannot merge them exactly, with the reason."""
    from onnxbc.passes.bias_int32 import QuantizeBiasPass

    model = _linear_qdq(["N", "T", 8], False, False)
    nodes = {n.name: n for n in model.graph}
    fc, add = nodes["fc"], nodes["fc_bias"]
    if case == "float_input":
        fc.replace_input_with(0, model.graph.inputs[0])
    elif case == "graph_output":
        model.graph.outputs.append(fc.outputs[0])
    elif case == "bias_shape":
        bias = add.inputs[1]
        bias.const_value = ir.tensor(np.ones((1, 5), np.float32), name=bias.name)
    elif case == "no_weight_zero_point":  # ONNX Runtime would run a float Gemm on it
        fc.inputs[1].producer().resize_inputs(2)
    result = QuantizeBiasPass()(model)
    assert "fc" not in result.sites and [n.op_type for n in model.graph].count("Gemm") == 0
    expected = {
        "float_input": "is not dequantized with a constant scale",
        "graph_output": "is a graph output",
        "bias_shape": "has shape [1, 5], not [5]",
        "no_weight_zero_point": "has no zero point, which ONNX Runtime's QGemm fusion needs",
    }[case]
    assert expected in result.skipped["fc"], result.skipped["fc"]


@pytest.mark.parametrize("name", ["matmul_add", "gelu_mlp", "attention"])
def test_transformer_linear_layers_run_as_qgemm_with_their_bias(name, tmp_path):
    """compress for --target onnxruntime: every Linear layer (MatMul + bias Add) is a QGemm that adds its int32 bias
    in ONNX Runtime's optimized graph (no MatMulIntegerToFloat and float bias Add left)."""
    import onnx
    import onnxruntime as ort

    result = _compress(name, tmp_path)
    records = {r["name"]: r for r in result.report.to_dict()["layers"]}
    audit = fusion.audit(ir.load(result.output)).by_layer()
    linear = [n for n, r in records.items() if any("MatMul + Add" in x for x in r["notes"])]
    assert linear and all(audit[n]["ort_op"] == "QGemm" for n in linear), {n: audit[n] for n in linear}
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(result.output), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(options.optimized_model_filepath).graph.node
    qgemms = [n for n in optimized if n.op_type == "QGemm"]
    assert len(qgemms) == len(linear) and all(len(n.input) > 6 and n.input[6] for n in qgemms)  # C: the bias
    assert not any(n.op_type == "MatMulIntegerToFloat" for n in optimized)
