"""--data-free: pair matching with reasons, the closed forms, float exactness of the rescaling, and the
command end to end without data and without running the model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import onnxbc
from models import test_graphs
from onnxbc import flow, model_io
from onnxbc.pairs import batchnorm_params, find_pairs, input_moments
from onnxbc.passes.dfmpc import PairEdit, RescalePairsPass
from onnxbc.passes.prepare import prepare, prepare_passes
from onnxbc.solvers import dfmpc
from onnxbc.solvers.quant import INT2, INT3, Granularity, dequantize, quantize, weight_scale
from onnxbc.targets import find_targets, weight_array

ROOT = Path(__file__).resolve().parent.parent
FASHION_BN = ROOT / "models" / "fashion_cnn_bn.onnx"
FASHION_FOLDED = ROOT / "models" / "fashion_cnn.onnx"
EVAL = ROOT / "models" / "data" / "fashion_eval.npz"


def chain_model(act: str = "Relu", next_group: int = 1, branch: bool = False) -> onnx.ModelProto:
    """Conv -> BN -> act -> MaxPool -> Conv(group) -> BN -> LeakyRelu -> GlobalAveragePool -> Flatten -> Gemm
    -> Relu -> Gemm; ``branch`` adds a second reader of the first activation."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def init(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def bn(x, c, name):
        params = [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.3, c), rng.normal(0, 0.2, c), rng.uniform(0.5, 2, c)]
        names = [init(f"{name}.{k}", v) for k, v in zip(("scale", "B", "mean", "var"), params)]
        nodes.append(helper.make_node("BatchNormalization", [x, *names], [f"{name}_out"], name=name))
        return f"{name}_out"

    w1 = init("c1.w", rng.normal(0, 0.4, (8, 3, 3, 3)))
    nodes.append(
        helper.make_node("Conv", ["x", w1, init("c1.b", rng.normal(0, 0.1, 8))], ["c1"], name="c1", pads=[1] * 4)
    )
    nodes.append(helper.make_node(act, [bn("c1", 8, "bn1")], ["a1"], name="act1"))
    nodes.append(helper.make_node("MaxPool", ["a1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]))
    w2 = init("c2.w", rng.normal(0, 0.3, (8, 8 // next_group, 3, 3)))
    nodes.append(helper.make_node("Conv", ["p1", w2], ["c2"], name="c2", pads=[1] * 4, group=next_group))
    nodes.append(helper.make_node("LeakyRelu", [bn("c2", 8, "bn2")], ["a2"], name="act2", alpha=0.1))
    nodes.append(helper.make_node("GlobalAveragePool", ["a2"], ["g"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["g"], ["f"], name="flatten", axis=1))
    fc1 = [init("fc1.w", rng.normal(0, 0.3, (16, 8))), init("fc1.b", rng.normal(0, 0.1, 16))]
    nodes.append(helper.make_node("Gemm", ["f", *fc1], ["h"], name="fc1", transB=1))
    nodes.append(helper.make_node("Relu", ["h"], ["r"], name="relu3"))
    fc2 = [init("fc2.w", rng.normal(0, 0.3, (16, 4))), init("fc2.b", rng.normal(0, 0.1, 4))]
    nodes.append(helper.make_node("Gemm", ["r", *fc2], ["y"], name="fc2"))
    outputs = [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])]
    if branch:
        nodes.append(helper.make_node("Identity", ["a1"], ["a1_copy"], name="tap"))
        outputs.append(helper.make_tensor_value_info("a1_copy", onnx.TensorProto.FLOAT, ["N", 8, 8, 8]))
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])], outputs, inits
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def prepared(proto_or_path, tmp_path=None):
    if isinstance(proto_or_path, onnx.ModelProto):
        path = tmp_path / "m.onnx"
        onnx.save(proto_or_path, path)
        proto_or_path = path
    return prepare_passes(13)(model_io.load(proto_or_path)).model


def run(model, feeds):
    proto = model_io.to_proto(model) if not isinstance(model, onnx.ModelProto) else model
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


# ---------------------------------------------------------------------------------------------- pair matching


def test_pairs_found_greedily_with_reasons():
    result = prepare(model_io.from_proto(chain_model()), 13)  # folds bn1 into c1, keeping its statistics
    model = result.model
    pairs, unused = find_pairs(model, find_targets(model), result.folds.batchnorms)
    assert [(p.low.name, p.next.name) for p in pairs] == [("c1", "c2"), ("fc1", "fc2")]
    first = pairs[0]
    assert first.batchnorm is None and first.batchnorm_name == "bn1"
    assert first.activation.op_type == "Relu" and first.repeat == 1
    assert [n.op_type for n in first.path] == ["MaxPool"]
    assert pairs[1].batchnorm_name is None  # folded bias: weights only
    reasons = {u.low: u.reason for u in unused}
    assert "high-precision layer of pair c1 -> c2" in reasons["c2"]
    assert "graph output" in reasons["fc2"]


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"act": "Sigmoid"}, "not a positively homogeneous activation"),
        ({"act": "Elu"}, "not a positively homogeneous activation"),
        ({"next_group": 8}, "depthwise next layer 'c2'"),
        ({"next_group": 2}, "grouped next layer 'c2'"),
        ({"branch": True}, "branch: 'a1' is read by 2 nodes"),
    ],
)
def test_unused_candidates_say_why(tmp_path, kwargs, reason):
    model = prepared(chain_model(**kwargs), tmp_path)
    pairs, unused = find_pairs(model, find_targets(model))
    assert "c1" not in [p.low.name for p in pairs]
    assert reason in {u.low: u.reason for u in unused}["c1"]


def test_flatten_maps_channels_to_feature_blocks():
    result = prepare(model_io.load(FASHION_BN), 13)
    model = result.model
    pairs, _ = find_pairs(model, find_targets(model))
    assert [(p.low.op, p.next.op) for p in pairs] == [("Conv", "Conv"), ("Gemm", "Gemm")]
    targets = find_targets(model)
    gemm = next(t for t in targets.targets if t.name == "/classifier/classifier.1/Gemm")
    model = input_moments(gemm, result.folds.batchnorms)  # Flatten of 64 x 7 x 7: each channel repeated 49 times
    assert model.batchnorms == ("/features/features.5/BatchNormalization",) and model.activations == ("Relu",)
    mean = model.mean
    assert mean.shape == model.var.shape == (3136,)
    assert np.all(mean[:49] == mean[0]) and mean[49] != mean[0]


# ---------------------------------------------------------------------------------------------- closed forms


def test_factors_closed_form_and_weight_error():
    w = np.array([[1.0, 2.0], [3.0, -1.0]])
    w_hat = np.array([[1.0, 1.0], [2.0, 0.0]])
    c = dfmpc.factors(w, w_hat)
    np.testing.assert_allclose(c, [3.0 / 2.0, 6.0 / 4.0])
    before, after = dfmpc.weight_error(w, w_hat), dfmpc.weight_error(w, w_hat, c)
    assert before == pytest.approx((0 + 1 + 1 + 1) / 15.0)
    assert after == pytest.approx(((1 - 1.5) ** 2 + (2 - 1.5) ** 2 + 0 + 1) / 15.0)
    assert dfmpc.factors(np.ones((1, 3)), np.zeros((1, 3))).tolist() == [1.0]  # all codes zero
    assert dfmpc.factors(np.ones((1, 3)), -np.ones((1, 3))).tolist() == [1.0]  # never negative


@pytest.mark.parametrize("fmt", [INT2, INT3])
@pytest.mark.parametrize("gran", [Granularity(None), Granularity(0)])
def test_factors_lower_weight_space_error(fmt, gran):
    spread = np.geomspace(0.05, 2.0, 16).reshape(-1, 1, 1, 1)  # channels of very different ranges
    w = (np.random.default_rng(1).standard_normal((16, 8, 3, 3)) * spread).astype(np.float32)
    w_hat = dequantize(quantize(w, s := weight_scale(w, fmt, gran, "mse"), fmt, gran), s, gran)
    before, after = dfmpc.weight_error(w, w_hat), dfmpc.weight_error(w, w_hat, dfmpc.factors(w, w_hat))
    assert after <= before
    if gran.axis is None:  # one scale per tensor cannot fit each channel: the factors must help clearly
        assert after < 0.95 * before


@pytest.mark.parametrize("group", [1, 2])
def test_conv_shift_is_the_interior_output_mean(group):
    rng = np.random.default_rng(0)
    dw, mean = rng.standard_normal((4, 6 // group, 3, 3)), rng.uniform(0, 1, 6)
    x = np.broadcast_to(mean[None, :, None, None], (1, 6, 5, 5)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=group)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 6, 5, 5])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(dw.astype(np.float32), "w")],
    )
    y = run(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), {"x": x})
    np.testing.assert_allclose(dfmpc.conv_shift(dw, mean, group), y[0, :, 1, 1], rtol=1e-5)


# ---------------------------------------------------------------------------------------------- the rewrite


@pytest.mark.parametrize("source", ["chain", "fashion"])
def test_rescaling_is_exact_in_float(tmp_path, source):
    """Fold BN, divide the low layer by any c > 0 and multiply the next layer's input channels by c: same outputs."""
    model = prepared(chain_model(), tmp_path) if source == "chain" else prepared(FASHION_BN)
    shape = (3, 8, 8) if source == "chain" else (1, 28, 28)
    x = np.random.default_rng(0).uniform(0, 1, (4, *shape))
    feeds = {model.graph.inputs[0].name: x.astype(np.float32)}
    before = run(model, feeds)
    targets = find_targets(model)
    pairs, _ = find_pairs(model, targets)
    edits = []
    rng = np.random.default_rng(1)
    for p in pairs:
        w, b = weight_array(p.low.weight), p.low.node.inputs[2].const_value.numpy()
        if p.low.weight.channel_axis:
            pytest.skip("layout covered elsewhere")
        if p.batchnorm is not None:
            w, b = dfmpc.fold_batchnorm(w, b, *batchnorm_params(p.batchnorm))
        c = rng.uniform(0.3, 3.0, len(w))
        nxt = weight_array(p.next.weight)
        axis = targets.weights[p.next.weight.source.name].input_axis
        shape = [1] * nxt.ndim
        shape[axis] = -1
        low_weight = w / c.reshape(-1, *[1] * (w.ndim - 1))
        next_weight = nxt * np.repeat(c, p.repeat).reshape(shape)
        edits.append(
            PairEdit(p.low.name, p.batchnorm and p.batchnorm.name, p.next.name, low_weight, b / c, next_weight)
        )
    RescalePairsPass(edits)(model)
    folded = {"bn1", "/features/features.1/BatchNormalization"}
    assert not [n for n in model.graph if n.op_type == "BatchNormalization" and n.name in folded]
    np.testing.assert_allclose(run(model, feeds), before, rtol=1e-4, atol=1e-5)
    onnx.checker.check_model(model_io.to_proto(model), full_check=True)


# ---------------------------------------------------------------------------------------------- end to end


@pytest.fixture
def no_runtime(monkeypatch):
    """Fail if anything creates an ONNX Runtime session (compress must never run the model)."""

    def refuse(*args, **kwargs):
        raise AssertionError("compress --data-free created an ONNX Runtime session")

    monkeypatch.setattr(ort, "InferenceSession", refuse)


def accuracy(path: Path, n: int = 300) -> float:
    with np.load(EVAL) as data:
        images, labels = data["input"][:n], data["labels"][:n]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return float(np.mean(session.run(None, {"input": images})[0].argmax(axis=1) == labels))


@pytest.mark.parametrize("bias_correction", [onnxbc.BiasCorrection.INDEPENDENT, onnxbc.BiasCorrection.NONE])
def test_api_never_runs_the_model(tmp_path, no_runtime, bias_correction):
    options = onnxbc.CompressOptions(weights=onnxbc.WeightType.INT2, data_free=True, bias_correction=bias_correction)
    result = onnxbc.compress(FASHION_BN, tmp_path / "m.onnx", options=options)
    comp = result.report.compensation
    assert len(comp["pairs"]) == 2 and result.report.passes_over_data == 0
    low_bits = {r.name: r.weight["bits"] for r in result.report.layers if r.weight}
    assert sorted(low_bits.values()) == [2, 2, 8, 8]
    if bias_correction is onnxbc.BiasCorrection.NONE:  # plain data-free rounding: nothing compensated
        assert all(p["factors"]["min"] == p["factors"]["max"] == 1.0 for p in comp["pairs"])
        assert comp["bias_correction"]["layers"] == []
    else:
        assert comp["bias_correction"]["layers"] == ["/features/features.4/Conv", "/classifier/classifier.1/Gemm"]
        assert all(p["weight_rel_error_after"] <= p["weight_rel_error_before"] for p in comp["pairs"])
    proto = onnx.load(tmp_path / "m.onnx")
    assert not [n for n in proto.graph.node if n.op_type == "BatchNormalization" and "features.1" in n.name]
    codes = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT4}
    low = codes["features.0.weight_quantized"].astype(np.int8)
    assert low.min() >= -2 and low.max() <= 1  # 2-bit codes in an int4 container


def test_cli_end_to_end(tmp_path):
    out = tmp_path / "fashion.df.onnx"
    r = subprocess.run(
        [sys.executable, "-m", "onnxbc", "compress", FASHION_BN, "--data-free", "--weights", "int4", "-o", out],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert r.returncode == 0, r.stderr
    assert "Pair /features/features.0/Conv (int4) -> /features/features.4/Conv" in r.stdout
    assert "the model was never run" in r.stdout
    onnx.checker.check_model(str(out), full_check=True)
    report = json.loads(out.with_name("fashion.df.report.json").read_text())
    assert report["data"]["source"] == "none (--data-free)"
    assert accuracy(out) > accuracy(FASHION_BN) - 0.03


def test_bn_already_folded_applies_no_factors(tmp_path, no_runtime):
    """Without statistics the factors cannot be checked: none is applied, and nothing is bias-corrected."""
    options = onnxbc.CompressOptions(weights=onnxbc.WeightType.INT3, data_free=True)
    result = onnxbc.compress(FASHION_FOLDED, tmp_path / "m.onnx", options=options)
    comp = result.report.compensation
    assert len(comp["pairs"]) == 2 and all(p["batchnorm"] is None for p in comp["pairs"])
    assert all(p["factors"]["min"] == p["factors"]["max"] == 1.0 for p in comp["pairs"])
    assert all(p["validation"]["decision"].startswith("not applied: no statistics") for p in comp["pairs"])
    assert all(p["validation"]["proposed"]["min"] != 1.0 for p in comp["pairs"])  # there were factors to check
    assert comp["bias_correction"]["layers"] == []
    assert any("no BatchNormalization statistics for any layer's input" in w for w in result.report.warnings)


def test_without_a_pair_every_layer_is_rounded(tmp_path):
    """A model with no pair at all (MatMul MLP) is quantized all the same; only nothing to quantize is refused."""
    path = test_graphs.save(test_graphs.build("gelu_mlp"), tmp_path / "hs.onnx")
    r = subprocess.run(
        [sys.executable, "-m", "onnxbc", "compress", path, "--data-free", "-o", tmp_path / "o.onnx"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "o.report.json").read_text())
    assert report["compensation"]["pairs"] == [] and len(report["compensation"]["fallback"]) == 2
    notes = [n for layer in report["layers"] for n in layer["notes"] if n.startswith("no DF-MPC pair")]
    assert len(notes) == 2 and all("pairs start at a Conv or Gemm, not MatMul" in n for n in notes)
    assert "warning: no DF-MPC pair" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "onnxbc", "compress", path, "--data-free", "--next-weights", "none"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]  # besides progress lines
    assert len(errors) == 1 and "--data-free found nothing to quantize" in errors[0] and "left float" in errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hs.onnx", "o.onnx", "o.report.json"]


@pytest.mark.parametrize(
    "flags", [["--samples", "8"], ["--batch-size", "4", "--seed", "3"], ["--holdout-fraction", "0"]]
)
def test_data_flags_are_refused(tmp_path, flags):
    r = subprocess.run(
        [sys.executable, "-m", "onnxbc", "compress", FASHION_BN, "--data-free", "-o", tmp_path / "o.onnx", *flags],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "--data-free uses no calibration data: drop " in r.stderr
    assert all(flag in r.stderr for flag in flags if flag.startswith("--"))
    assert not (tmp_path / "o.onnx").exists()


def test_next_weights_none_leaves_the_other_layers_float(tmp_path):
    """Only the compensated low-bit layers are quantized; the rest keep their float weights."""
    options = onnxbc.CompressOptions(
        weights=onnxbc.WeightType.INT4, next_weights=onnxbc.WeightType.NONE, data_free=True
    )
    result = onnxbc.compress(FASHION_BN, tmp_path / "o.onnx", options=options)
    roles = {r.name: (r.status, r.weight["role"] if r.weight else None) for r in result.report.layers}
    assert {status for status, role in roles.values() if role == "low"} == {"quantized"}
    assert all(status == "skipped" for status, role in roles.values() if role != "low")
    assert result.output.exists() and flow.default_output(FASHION_BN, options).name == "fashion_cnn_bn.df-w4wf.onnx"


@pytest.mark.parametrize("extra", [["--data", "calib.npz"], ["--random-data"]])
def test_data_free_excludes_data(tmp_path, extra):
    r = subprocess.run(
        [sys.executable, "-m", "onnxbc", "compress", FASHION_BN, "--data-free", *extra, "-o", tmp_path / "o.onnx"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "--data-free uses no calibration data" in r.stderr


def test_api_data_free_with_data_is_a_usage_error(tmp_path):
    with pytest.raises(onnxbc.UsageError, match="--data-free"):
        onnxbc.compress(
            FASHION_BN,
            tmp_path / "o.onnx",
            data=onnxbc.DataOptions(random=True),
            options=onnxbc.CompressOptions(data_free=True),
        )
