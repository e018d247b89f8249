"""Activation smoothing: exact in float at every fold site, priced without another pass, chosen by error."""

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

import onnxbc
from onnxbc import model_io
from onnxbc.passes.smooth import SmoothPass
from onnxbc.plan import Smoothing
from onnxbc.solvers.ranges import AbsHistogram, ChannelHistograms, choose_range
from onnxbc.solvers.smooth import input_channel_max, scale_input_channels, smoothing_factors

H = onnx.helper
RNG = np.random.default_rng(0)


def tensor(name, *shape, scale=1.0):
    return onnx.numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)


def model(nodes, inputs, outputs, inits, opset=17):
    graph = H.make_graph(nodes, "g", inputs, outputs, inits)
    return ir.serde.deserialize_model(H.make_model(graph, opset_imports=[H.make_opsetid("", opset)], ir_version=8))


def vi(name, *shape):
    return H.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(shape))


def graphs():
    """(name, model, activation, layer, input index, channel axis, rank, groups, expected site prefix)."""
    bn = model(
        [
            H.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["n"], name="bn"),
            H.make_node("Conv", ["n", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
        ],
        [vi("x", 2, 4, 6, 6)],
        [vi("y", 2, 3, 6, 6)],
        [
            tensor("g", 4),
            tensor("b", 4),
            tensor("m", 4),
            onnx.numpy_helper.from_array(np.full(4, 2.0, np.float32), "v"),
            tensor("w", 3, 4, 3, 3),
        ],
    )
    ln = model(
        [
            H.make_node("LayerNormalization", ["x", "g", "b"], ["n"], name="ln", axis=-1),
            H.make_node("MatMul", ["n", "w"], ["y"], name="mm"),
        ],
        [vi("x", 2, 5, 8)],
        [vi("y", 2, 5, 6)],
        [tensor("g", 8), tensor("b", 8), tensor("w", 8, 6)],
    )
    decomposed = model(
        [
            H.make_node("Mul", ["x", "g"], ["s"], name="mul"),
            H.make_node("Add", ["s", "b"], ["n"], name="add"),
            H.make_node("MatMul", ["n", "w"], ["y"], name="mm"),
        ],
        [vi("x", 2, 5, 8)],
        [vi("y", 2, 5, 6)],
        [tensor("g", 8), tensor("b", 8), tensor("w", 8, 6)],
    )
    grouped = model(
        [
            H.make_node("Relu", ["x"], ["r"], name="relu"),
            H.make_node("Conv", ["r", "w"], ["y"], name="conv", group=2, pads=[1, 1, 1, 1]),
            H.make_node("Add", ["r", "r"], ["other"], name="other_reader"),  # keeps the Mul from folding anywhere
        ],
        [vi("x", 2, 4, 6, 6)],
        [vi("y", 2, 6, 6, 6), vi("other", 2, 4, 6, 6)],
        [tensor("w", 6, 2, 3, 3)],
    )
    return [
        ("batchnorm", bn, "n", "conv", 0, 1, 4, 1, "folded into BatchNormalization"),
        ("layernorm", ln, "n", "mm", 0, -1, None, 1, "folded into LayerNormalization"),
        ("decomposed", decomposed, "n", "mm", 0, -1, None, 1, "folded into Mul 'mul' and Add 'add'"),
        ("grouped-mul", grouped, "r", "conv", 0, 1, 4, 2, "Mul"),
    ]


def run(m, feeds):
    return ort.InferenceSession(model_io.to_proto(m).SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, feeds
    )


@pytest.mark.parametrize("case", graphs(), ids=lambda c: c[0])
def test_smoothing_is_exact_in_float(case):
    name, m, act, layer, index, axis, rank, groups, site = case
    feeds = {
        "x": RNG.standard_normal(
            m.graph.inputs[0].shape.numpy() if False else [int(d) for d in m.graph.inputs[0].shape]
        ).astype(np.float32)
    }
    before = run(m, feeds)
    w = m.graph.initializers["w"]
    input_axis = 1 if layer == "conv" else 0
    channels = len(input_channel_max(w.const_value.numpy(), input_axis, groups))
    s = RNG.uniform(0.2, 5.0, channels).astype(np.float32)
    w.const_value = ir.tensor(scale_input_channels(w.const_value.numpy(), s, input_axis, groups), name="w")
    result = SmoothPass({act: Smoothing(act, s, axis, 1.0, rank)}, {act: [(layer, index)]})(m)
    assert result.sites[act].startswith(site)
    for a, b in zip(before, run(m, feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_factors_equalize_channels_at_alpha_one():
    act = np.array([0.01, 1.0, 100.0, 0.0])
    weights = np.array([1.0, 2.0, 0.5, 3.0])
    s = smoothing_factors(act, weights, 1.0)
    ranges = (act / s)[:3]
    np.testing.assert_allclose(ranges, ranges[0], rtol=1e-6)  # every live channel ends at one range
    assert s[3] == 1.0  # a channel that never fires is left alone
    s = smoothing_factors(act, weights, 0.5)
    np.testing.assert_allclose((act / s)[:3] / (weights * s)[:3], 1.0 / 1.0, rtol=1e-5)  # alpha 0.5 balances


def test_rescaled_channel_histograms_match_a_direct_histogram():
    scales = np.array([0.01, 0.1, 1.0, 10.0, 100.0])
    x = RNG.standard_normal((4000, 5)) * scales
    channels = ChannelHistograms(channel_axis=1)
    for part in np.array_split(x, 9):
        channels.update(part)
    s = smoothing_factors(np.abs(x).max(0), np.ones(5), 1.0)
    rescaled = channels.rescaled(s)
    direct = AbsHistogram()
    direct.update(x / s)
    assert rescaled.total == direct.total and not rescaled.nonnegative
    assert rescaled.max == pytest.approx(direct.max, rel=1e-6)
    assert rescaled.min_value == pytest.approx(float((x / s).min()), rel=1e-6)  # exact, not a bound
    for method in ("minmax", "mse", "percentile"):
        assert choose_range(rescaled, method, 127) == pytest.approx(choose_range(direct, method, 127), rel=0.03)


def outlier_model(tmp_path):
    """y = x @ W where the calibration data has channels spanning four orders of magnitude."""
    w = RNG.standard_normal((16, 8)).astype(np.float32) * 0.2
    graph = H.make_graph(
        [H.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "outliers",
        [vi("x", "N", 16)],
        [vi("y", "N", 8)],
        [onnx.numpy_helper.from_array(w, "w")],
    )
    path = tmp_path / "outliers.onnx"
    onnx.save(H.make_model(graph, opset_imports=[H.make_opsetid("", 17)], ir_version=8), path)
    scales = np.logspace(-2, 2, 16).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=(RNG.standard_normal((200, 16)) * scales).astype(np.float32))
    return path, tmp_path / "calib.npz"


def test_smoothing_is_chosen_where_it_helps_and_reported(tmp_path):
    path, calib = outlier_model(tmp_path)
    data = onnxbc.DataOptions(path=calib)
    plain = onnxbc.compress(path, tmp_path / "a.onnx", data=data, options=onnxbc.CompressOptions(smoothing=False))
    smoothed = onnxbc.compress(path, tmp_path / "b.onnx", data=data)
    assert plain.report.smoothing == {}
    [(name, record)] = smoothed.report.smoothing.items()
    assert name == "x" and record["chosen"] in ("0.5", "1.0") and record["site"] == "Mul"
    assert record["rel_mse"][record["chosen"]] < 0.9 * record["rel_mse"]["none"]
    err = lambda r: r.report.outputs["without_compensation"]["y"]["rel_mse"]  # noqa: E731
    assert err(smoothed) < 0.5 * err(plain)
    assert any("smoothed" in note for note in smoothed.report.layers[0].notes)
    assert [n.op_type for n in onnx.load(smoothed.output).graph.node].count("Mul") == 1


def test_smoothing_folded_into_the_layer_before_equals_the_mul():
    """fold_divisions moves the division of 'relu1_out' into conv1 (weight scales and bias, through the ReLU):
    the model computes what the Mul would, and has no Mul."""
    from models import test_graphs
    from onnxbc import model_io
    from onnxbc.calibration.session import SessionFactory
    from onnxbc.candidates import quantize
    from onnxbc.passes.prepare import prepare_passes
    from onnxbc.plan import QuantPlan, Smoothing, WeightQuant
    from onnxbc.smoothing import fold_divisions
    from onnxbc.solvers.quant import Granularity
    from onnxbc.targets import find_targets

    graph = test_graphs.build("conv")
    model = prepare_passes(13)(model_io.from_proto(graph.model)).model
    layers = {t.name: t for t in find_targets(model).targets}
    conv1, conv2 = layers["conv1"], layers["conv2"]
    w1, w2 = (t.weight.source.const_value.numpy() for t in (conv1, conv2))
    s = np.random.default_rng(0).uniform(0.5, 2.0, w1.shape[0]).astype(np.float32)

    def int8(name, w):
        scale = np.abs(w).reshape(len(w), -1).max(axis=1) / 127
        codes = np.round(w / scale.reshape(-1, 1, 1, 1)).astype(np.int8)
        return WeightQuant(name, codes, scale.astype(np.float32), Granularity(0), 8, "minmax")

    x = conv2.node.inputs[0].name
    plan = QuantPlan(
        weights={
            conv1.weight.source.name: int8(conv1.weight.source.name, w1),
            conv2.weight.source.name: int8(conv2.weight.source.name, w2 * s.reshape(1, -1, 1, 1)),
        },
        activation_uses={x: [("conv2", 0)]},
        smoothing={x: Smoothing(x, s, 1, 0.5, 4)},
    )
    folded = fold_divisions(plan, layers)
    assert folded.smoothing[x].into.layer == "conv1"
    assert folded.smoothing[x].into.path == ("Relu",)
    feeds = graph.feeds(4, 0)
    sessions = SessionFactory()
    outputs = []
    for p in (plan, folded):
        quantized, rewrite = quantize(model.clone(), p)
        assert ("Mul" in {n.op_type for n in quantized.graph}) is (p is plan)
        outputs.append(sessions.create(quantized).run(None, feeds)[0])
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)
