"""LSTM, GRU and RNN: W and R quantized weight-only per gate-channel (axis 1) behind DequantizeLinear; input, states
and bias stay float, no compensation; the quantized model computes exactly the float model with the dequantized
weights (ONNX Runtime and onnx.reference), the file shrinks, and report, inspect and check say what was done."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from typer.testing import CliRunner

import onnxbc
from onnxbc import validate
from onnxbc.check_report import Status
from onnxbc.cli import app
from onnxbc.inspection import inspect_model, inspect_report
from onnxbc.options import ActivationType, CheckOptions, CompressOptions, Target, WeightType

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
T, N, F, H = 5, 3, 24, 32  # sequence, batch, input features, hidden units
SAMPLES = 16


def recurrent_model(op, direction="forward", bias=True, seq_lens=False, initial=False, head=False, constants=False):
    """One ``op`` layer on x [T, N, F], outputs Y and Y_h; with ``head`` a Gemm on Y_h. Layout 0 only: ONNX Runtime
    refuses ``layout=1`` ("Batchwise recurrent operations are not supported"). Fixed shapes: calibration feeds
    are whole (an extra leading sample axis), as the states are batched on axis 1."""
    dirs = 2 if direction == "bidirectional" else 1
    gates = GATES[op]
    rng = np.random.default_rng(0)
    w = rng.uniform(-0.3, 0.3, (dirs, gates * H, F)).astype(np.float32)
    r = rng.uniform(-0.3, 0.3, (dirs, gates * H, H)).astype(np.float32)
    inits = [numpy_helper.from_array(rng.uniform(-0.3, 0.3, (dirs, 2 * gates * H)).astype(np.float32), "B")]
    nodes = []
    if constants:
        nodes += [
            helper.make_node("Constant", [], [n], value=numpy_helper.from_array(a)) for n, a in (("W", w), ("R", r))
        ]
    else:
        inits += [numpy_helper.from_array(w, "W"), numpy_helper.from_array(r, "R")]

    def value(name, dims, dtype=TensorProto.FLOAT):
        return helper.make_tensor_value_info(name, dtype, dims)

    state = [dirs, N, H]
    inputs = [value("x", [T, N, F])]
    names = ["x", "W", "R", "B" if bias else "", "seq" if seq_lens else "", "h0" if initial else ""]
    if seq_lens:
        inputs.append(value("seq", [N], TensorProto.INT32))
    if initial:
        inputs.append(value("h0", state))
    if op == "LSTM" and initial:
        names.append("c0")
        inputs.append(value("c0", state))
    while not names[-1]:
        names.pop()
    attrs = {"hidden_size": H, "direction": direction}
    if op == "GRU":
        attrs["linear_before_reset"] = 1
    nodes.append(helper.make_node(op, names, ["y", "y_h"], name="rnn", **attrs))
    outputs = [value("y", [T, dirs, N, H])]
    if head:
        inits += [
            numpy_helper.from_array(np.array([N, dirs * H], np.int64), "flat_shape"),
            numpy_helper.from_array(rng.uniform(-0.2, 0.2, (dirs * H, 5)).astype(np.float32), "head.W"),
            numpy_helper.from_array(rng.uniform(-0.1, 0.1, 5).astype(np.float32), "head.B"),
        ]
        nodes += [
            helper.make_node("Transpose", ["y_h"], ["y_h_t"], perm=[1, 0, 2]),
            helper.make_node("Reshape", ["y_h_t", "flat_shape"], ["flat"]),
            helper.make_node("Gemm", ["flat", "head.W", "head.B"], ["logits"], name="head"),
        ]
        outputs.append(value("logits", [N, 5]))
    else:
        outputs.append(value("y_h", state))
    graph = helper.make_graph(nodes, "recurrent", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


def feeds(model, samples, seed):
    """``samples`` whole feeds, stacked on a leading axis; sequence lengths 1..T."""
    rng = np.random.default_rng(seed)
    out = {}
    for v in model.graph.input:
        dims = [d.dim_value for d in v.type.tensor_type.shape.dim]
        if v.type.tensor_type.elem_type == TensorProto.INT32:
            out[v.name] = rng.integers(1, T + 1, (samples, *dims)).astype(np.int32)
        else:
            out[v.name] = rng.standard_normal((samples, *dims)).astype(np.float32)
    return out


def compress(model, tmp_path, **options):
    src = tmp_path / "rnn.onnx"
    onnx.save(model, src)
    result = onnxbc.compress(
        src, tmp_path / "rnn.q.onnx", data=feeds(model, SAMPLES, 0), options=CompressOptions(device="cpu", **options)
    )
    return src, result


def producer(graph, name):
    return next((n for n in graph.node if name in n.output), None)


def dequantized_float_model(original, quantized):
    """``original`` with W and R replaced by the values the quantized model's DequantizeLinear nodes compute."""
    layer = next(n for n in quantized.graph.node if n.op_type in GATES)
    inits = {i.name: i for i in quantized.graph.initializer}
    values = {}
    for index, name in ((1, "W"), (2, "R")):
        dq = producer(quantized.graph, layer.input[index])
        codes, scale = (numpy_helper.to_array(inits[v]) for v in dq.input[:2])
        values[name] = codes.astype(np.float32) * scale.reshape(1, -1, 1)
    model = onnx.ModelProto()
    model.CopyFrom(original)
    for tensor in model.graph.initializer:
        if tensor.name in values:
            tensor.CopyFrom(numpy_helper.from_array(values[tensor.name], tensor.name))
    return model


def run_both(model, feed):
    """The outputs in ONNX Runtime and in onnx.reference."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed), ReferenceEvaluator(model).run(None, feed)


def rel_mse(ref, out):
    return float(np.sum((ref.astype(np.float64) - out) ** 2) / np.sum(ref.astype(np.float64) ** 2))


CASES = {
    "lstm-forward": dict(op="LSTM"),
    "lstm-reverse-seq-initial": dict(op="LSTM", direction="reverse", seq_lens=True, initial=True),
    "lstm-bidirectional-nobias": dict(op="LSTM", direction="bidirectional", bias=False),
    "lstm-bidirectional-initial": dict(op="LSTM", direction="bidirectional", initial=True),
    "gru-forward": dict(op="GRU"),
    "gru-bidirectional-seq": dict(op="GRU", direction="bidirectional", seq_lens=True),
    "rnn-forward-nobias": dict(op="RNN", bias=False),
    "rnn-reverse-initial": dict(op="RNN", direction="reverse", initial=True),
}


@pytest.mark.parametrize("case", CASES)
def test_weights_quantized_weight_only_per_gate_channel(tmp_path, case):
    spec = CASES[case]
    model = recurrent_model(**spec)
    src, result = compress(model, tmp_path)  # --activations int8 (the default): the layer stays weight-only
    quantized = onnx.load(result.output)
    onnx.checker.check_model(quantized, full_check=True)
    graph = quantized.graph
    layer = next(n for n in graph.node if n.op_type == spec["op"])
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    # structure: W and R are int8 codes behind a DequantizeLinear with one scale per row (axis 1)
    assert "W" not in inits and "R" not in inits
    dirs, gates = (2 if spec.get("direction") == "bidirectional" else 1), GATES[spec["op"]]
    for index, cols in ((1, F), (2, H)):
        dq = producer(graph, layer.input[index])
        assert dq.op_type == "DequantizeLinear" and {a.name: a.i for a in dq.attribute} == {"axis": 1}
        assert inits[dq.input[0]].dtype == np.int8 and inits[dq.input[0]].shape == (dirs, gates * H, cols)
        assert inits[dq.input[1]].shape == (gates * H,)
    assert producer(graph, layer.input[0]) is None  # x read float
    assert [n.op_type for n in graph.node].count("QuantizeLinear") == 0
    if spec.get("bias", True):
        assert layer.input[3] == "B" and inits["B"].dtype == np.float32  # bias left float
    # numbers: exactly the float model with the dequantized weights, in both runtimes; close to FP32
    expected = dequantized_float_model(model, quantized)
    test = {k: v[0] for k, v in feeds(model, 1, 99).items()}
    for got, want in zip(run_both(quantized, test), run_both(expected, test)):
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    for ref, out in zip(run_both(model, test)[0], run_both(quantized, test)[0]):
        assert rel_mse(ref, out) < 1e-3, case
    # the file: W and R shrink to a quarter, plus a scale per row
    float_bytes = sum(numpy_helper.to_array(i).nbytes for i in model.graph.initializer if i.name in ("W", "R"))
    assert result.report.output["bytes"] < src.stat().st_size - 0.6 * float_bytes
    # the report: weight-only and why, no compensation
    (rec,) = [r for r in result.report.layers if r.name == "rnn"]
    assert rec.status == "quantized" and rec.activations == []
    assert (rec.weight["name"], rec.weight["axis"], rec.weight["bits"]) == ("W", 1, 8)
    assert (rec.recurrence["name"], rec.recurrence["axis"], rec.recurrence["granularity"]) == ("R", 1, "channel")
    assert any("weight-only" in n and "states stay float" in n for n in rec.notes)
    assert rec.bias["applied"] is False and "no compensation for recurrent layers" in rec.bias["reason"]
    assert rec.error is None


def test_int4_weights_and_constant_nodes(tmp_path):
    """--weights int4: int4 codes per row (opset 21 per-axis int4); W and R given as Constant nodes are lifted."""
    model = recurrent_model("LSTM", direction="bidirectional", constants=True)
    _, result = compress(model, tmp_path, weights=WeightType.INT4, activations=ActivationType.NONE)
    quantized = onnx.load(result.output)
    layer = next(n for n in quantized.graph.node if n.op_type == "LSTM")
    inits = {i.name: i for i in quantized.graph.initializer}
    for index in (1, 2):
        dq = producer(quantized.graph, layer.input[index])
        assert dq.op_type == "DequantizeLinear" and inits[dq.input[0]].data_type == TensorProto.INT4
    assert not [n for n in quantized.graph.node if n.op_type == "Constant"]
    test = {k: v[0] for k, v in feeds(model, 1, 99).items()}
    ref, out = run_both(model, test)[0][0], run_both(quantized, test)[0][0]
    assert rel_mse(ref, out) < 0.05
    (rec,) = [r for r in result.report.layers if r.name == "rnn"]
    assert rec.weight["bits"] == rec.recurrence["bits"] == 4


def test_gemm_after_the_lstm_gets_int8_activations_through_the_cli(tmp_path):
    """End to end through the CLI with --activations int8: the LSTM reads float x and float states with int8
    W and R; the Gemm after it reads a quantized input. Report, inspect (report and model) and check agree."""
    model = recurrent_model("LSTM", head=True)
    src, data = tmp_path / "lstm.onnx", tmp_path / "calib.npz"
    onnx.save(model, src)
    np.savez(data, **feeds(model, SAMPLES, 0))
    out = tmp_path / "lstm.q.onnx"
    r = CliRunner().invoke(app, ["compress", str(src), "--data", str(data), "--activations", "int8", "-o", str(out)])
    assert r.exit_code == 0, r.output
    graph = onnx.load(out).graph
    lstm, gemm = (next(n for n in graph.node if n.op_type == op) for op in ("LSTM", "Gemm"))
    assert producer(graph, lstm.input[0]) is None
    assert [producer(graph, v).op_type for v in lstm.input[1:3]] == ["DequantizeLinear"] * 2
    assert [producer(graph, v).op_type for v in gemm.input[:2]] == ["DequantizeLinear"] * 2
    assert producer(graph, producer(graph, gemm.input[0]).input[0]).op_type == "QuantizeLinear"
    report = json.loads((tmp_path / "lstm.q.report.json").read_text())
    records = {rec["name"]: rec for rec in report["layers"]}
    assert records["rnn"]["activations"] == [] and records["rnn"]["recurrence"]["name"] == "R"
    assert [a["dtype"] for a in records["head"]["activations"]] == ["uint8"]
    # the fusion audit (--target onnxruntime, the default) judges the Gemm, not the LSTM, and warns of nothing
    assert records["rnn"]["fusion"] is None and records["head"]["fusion"]["status"] == "fused"
    assert not [w for w in report["warnings"] if "rnn" in w]
    rows = {row.name: row for row in inspect_report(tmp_path / "lstm.q.report.json").rows}
    assert rows["rnn"].weight == "int8 channel (W, R)" and rows["rnn"].inputs == ("float",)
    rows = {row.name: row for row in inspect_model(out).rows}
    assert rows["rnn"].weight == "int8 channel axis 1 (W, R)" and rows["rnn"].bits == 8
    shown = CliRunner().invoke(app, ["inspect", str(out)])
    assert shown.exit_code == 0 and "LSTM" in shown.output
    checked = CliRunner().invoke(
        app, ["check", str(out), "--reference", str(src), "--data", str(data), "--max-error", "1e-3"]
    )
    assert checked.exit_code == 0, checked.output


def test_size_budgets_count_the_recurrent_weights(tmp_path):
    """--avg-bits and --max-size allocate W and R like any weight, and the report's tradeoff reads them back."""
    model = recurrent_model("GRU", direction="bidirectional", head=True)
    _, result = compress(model, tmp_path, avg_bits=6.0, candidates=(4, 8))
    precision = result.report.precision
    assert {"W", "R", "head.W"} <= set(precision["options"]) and {"W", "R"} <= set(precision["layers"])
    report = tmp_path / "rnn.q.report.json"
    result.report.write(report)
    assert inspect_report(report).tradeoff is not None  # every priced weight has a layer record
    for folder in ("int8", "sized"):
        (tmp_path / folder).mkdir()
    _, int8 = compress(model, tmp_path / "int8")
    budget = int(int8.report.output["bytes"] * 0.8)
    _, sized = compress(model, tmp_path / "sized", max_size=budget, candidates=(4, 8))
    assert sized.report.output["bytes"] <= budget
    bits = {sized.report.precision["layers"][name]["bits"] for name in ("W", "R")}
    assert 4 in bits  # the recurrent weights carry most of the bytes: the budget takes some of them to 4 bits


def test_tensorrt_leaves_recurrent_weights_float_and_check_warns(tmp_path):
    """--target tensorrt: no DequantizeLinear into a recurrent layer (with the reason in the report); ``onnxbc
    check --target tensorrt`` warns (trt.recurrent) on a model that has one."""
    model = recurrent_model("LSTM", head=True)
    _, result = compress(model, tmp_path, target=Target.TENSORRT)
    graph = onnx.load(result.output).graph
    lstm = next(n for n in graph.node if n.op_type == "LSTM")
    assert lstm.input[1:3] == ["W", "R"]
    (rec,) = [r for r in result.report.layers if r.name == "rnn"]
    assert rec.status == "skipped" and "TensorRT: recurrent weights stay float" in rec.reason
    report = validate.check(result.output, CheckOptions(target=Target.TENSORRT, device="cpu"))
    assert next(r for r in report.results if r.rule.id == "trt.recurrent").status is Status.PASSED
    (tmp_path / "ort").mkdir()
    _, ort_result = compress(model, tmp_path / "ort", activations=ActivationType.NONE)  # int8 W and R
    report = validate.check(ort_result.output, CheckOptions(target=Target.TENSORRT, device="cpu"))
    (rule,) = [r for r in report.results if r.rule.id == "trt.recurrent"]
    assert rule.status is Status.WARNED and "LSTM 'rnn' reads W 'W' and R 'R'" in rule.findings[0].message
    assert report.passed  # a warning: TensorRT may still build it


def test_recurrent_layer_in_an_if_branch_is_quantized_as_a_conv_there_is(tmp_path):
    """Inside an If branch: W and R quantized, input float, as for a Conv in a subgraph; the Gemm outside is
    calibrated as usual."""
    inner = recurrent_model("GRU")
    branch = helper.make_graph(
        list(inner.graph.node), "then", [], [inner.graph.output[0]], list(inner.graph.initializer)
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["zeros"], ["y_else"])],
        "else",
        [],
        [helper.make_tensor_value_info("y_else", TensorProto.FLOAT, [T, 1, N, H])],
        [numpy_helper.from_array(np.zeros((T, 1, N, H), np.float32), "zeros")],
    )
    inits = [
        numpy_helper.from_array(np.array(True), "flag"),
        numpy_helper.from_array(np.random.default_rng(1).uniform(-0.2, 0.2, (H, 4)).astype(np.float32), "proj"),
    ]
    nodes = [
        helper.make_node("If", ["flag"], ["y"], then_branch=branch, else_branch=other, name="if"),
        helper.make_node("MatMul", ["y", "proj"], ["out"], name="proj"),
    ]
    graph = helper.make_graph(
        nodes,
        "if_gru",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [T, N, F])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [T, 1, N, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    src, result = compress(model, tmp_path)
    records = {r.name: r for r in result.report.layers}
    assert records["rnn"].status == "quantized" and records["rnn"].recurrence["axis"] == 1
    assert records["proj"].activations  # the main graph's MatMul reads a quantized input
    branches = next(n for n in onnx.load(result.output).graph.node if n.op_type == "If").attribute
    then = next(a.g for a in branches if a.name == "then_branch")
    gru = next(n for n in then.node if n.op_type == "GRU")
    assert [producer(then, v).op_type for v in gru.input[1:3]] == ["DequantizeLinear"] * 2
    test = {"x": feeds(model, 1, 99)["x"][0]}
    ref, out = run_both(model, test)[0][0], run_both(onnx.load(result.output), test)[0][0]
    assert rel_mse(ref, out) < 1e-3


@pytest.mark.parametrize("op", GATES)
def test_data_free_quantizes_w_and_r(tmp_path, op):
    """--data-free (no pair, no statistics) rounds W and R at --next-weights; the layer's record has both."""
    model = recurrent_model(op, "bidirectional")
    onnx.save(model, tmp_path / "rnn.onnx")
    options = CompressOptions(data_free=True)
    result = onnxbc.compress(tmp_path / "rnn.onnx", tmp_path / "rnn.q.onnx", options=options)
    quantized = onnx.load(result.output)
    layer = next(n for n in quantized.graph.node if n.op_type == op)
    assert [producer(quantized.graph, layer.input[i]).op_type for i in (1, 2)] == ["DequantizeLinear"] * 2
    [record] = [r for r in result.report.layers if r.op == op]
    assert record.weight["bits"] == record.recurrence["bits"] == 8
    feed = {k: v[0] for k, v in feeds(model, 1, 1).items()}
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    out, _ = run_both(dequantized_float_model(model, quantized), feed)
    assert rel_mse(ref, out[0]) < 1e-3
