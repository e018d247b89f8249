"""Folding BatchNormalization and per-channel Mul/Add into the layer before them: exact in float for every
layer kind, a reason for every site left, and compress's output free of BatchNormalization."""

import json
from pathlib import Path

import numpy as np
import onnx
import onnx.reference
import onnx_ir as ir
import onnxruntime as ort
import pytest

import onnxbc
from models import test_graphs
from onnxbc import model_io
from onnxbc.passes.fold_bn import FoldBatchNormPass
from onnxbc.passes.prepare import prepare, prepare_passes

H = onnx.helper
ROOT = Path(__file__).resolve().parent.parent
FASHION_BN = ROOT / "models" / "fashion_cnn_bn.onnx"
CALIB = ROOT / "models" / "data" / "fashion_calib.npz"
FLOAT, HALF = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
RNG = np.random.default_rng(0)


def arr(*shape, scale=1.0, low=None, dtype=np.float32):
    """Normal values, or uniform in [low, 1] (scales and variances)."""
    values = RNG.uniform(low, 1.0, shape) if low is not None else RNG.standard_normal(shape) * scale
    return np.asarray(values, dtype)


def init(name, values):
    return onnx.numpy_helper.from_array(np.asarray(values), name)


def vi(name, shape, elem=FLOAT):
    return H.make_tensor_value_info(name, elem, shape)


def out(name, rank, elem=FLOAT):
    """A graph output of known rank and unknown sizes (onnx.checker's full check needs a shape)."""
    return vi(name, [f"{name}_{i}" for i in range(rank)], elem)


def batchnorm(x, y, channels, name="bn", dtype=np.float32, **attrs):
    """A BatchNormalization node and its parameters ``name.scale``, ``.B``, ``.mean``, ``.var``."""
    params = {
        "scale": arr(channels, low=0.5, dtype=dtype) * 2,
        "B": arr(channels, scale=0.3, dtype=dtype),
        "mean": arr(channels, scale=0.3, dtype=dtype),
        "var": arr(channels, low=0.2, dtype=dtype),
    }
    names = [f"{name}.{k}" for k in params]
    node = H.make_node("BatchNormalization", [x, *names], [y], name=name, epsilon=1e-3, **attrs)
    return node, [init(n, v) for n, v in zip(names, params.values())]


def make(nodes, inputs, outputs, inits, opset=17):
    graph = H.make_graph(nodes, "g", inputs, outputs, inits)
    return H.make_model(graph, opset_imports=[H.make_opsetid("", opset)], ir_version=8)


def fold(proto):
    model = ir.serde.deserialize_model(proto)
    return model, FoldBatchNormPass()(model)


def run(proto, feeds):
    """ONNX Runtime computing the graph as written (no fusions of its own)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_same_function(before, after: ir.Model, feeds, rtol=1e-5):
    """The folded model computes what the original does, in ONNX Runtime and in onnx.reference; it passes
    onnx.checker."""
    proto = model_io.to_proto(after)
    onnx.checker.check_model(proto, full_check=True)
    expected = run(before, feeds)
    grouped_transpose = any(n.op_type == "ConvTranspose" and n.attributes.get_int("group", 1) > 1 for n in after.graph)
    oracles = [run(proto, feeds)]
    if not grouped_transpose:  # onnx 1.23's reference ConvTranspose cannot run group > 1, even before folding
        oracles.append(onnx.reference.ReferenceEvaluator(proto).run(None, feeds))
    for got in oracles:
        for e, g in zip(expected, got):
            assert g.dtype == e.dtype and g.shape == e.shape
            np.testing.assert_allclose(g, e, rtol=rtol, atol=rtol * float(np.abs(e).max()))


# ---------------------------------------------------------------------------------------------- rule 1: exact


# kind: (op, attributes, weight shape, bias shape or None, x shape, output channels)
LAYERS = {
    "conv": ("Conv", {"pads": [1] * 4}, (8, 4, 3, 3), (8,), [2, 4, 6, 6], 8),
    "conv_no_bias": ("Conv", {}, (8, 4, 3, 3), None, [2, 4, 6, 6], 8),
    "conv_groups": ("Conv", {"group": 2}, (6, 2, 3, 3), (6,), [2, 4, 5, 5], 6),
    "depthwise": ("Conv", {"group": 4, "pads": [1] * 4}, (4, 1, 3, 3), None, [2, 4, 5, 5], 4),
    "conv1d": ("Conv", {}, (5, 3, 3), (5,), [2, 3, 9], 5),
    "conv_transpose": ("ConvTranspose", {"strides": [2, 2]}, (4, 6, 3, 3), (6,), [2, 4, 4, 4], 6),
    # weight [C_in, C_out / group, k, k]: the output channels are split by group
    "conv_transpose_groups": ("ConvTranspose", {"group": 2}, (4, 3, 2, 2), None, [2, 4, 4, 4], 6),
    "gemm": ("Gemm", {"alpha": 1.5, "beta": 0.5}, (5, 6), (6,), [3, 5], 6),
    "gemm_trans_b": ("Gemm", {"transB": 1}, (6, 5), None, [3, 5], 6),
    "gemm_row_bias": ("Gemm", {"transB": 1, "beta": 2.0}, (6, 5), (3, 1), [3, 5], 6),  # C [M, 1]
    "matmul": ("MatMul", {}, (5, 6), None, [3, 5], 6),  # no bias: a new Add takes it
    "matmul_add": ("MatMul", {}, (5, 6), (1, 6), [3, 5], 6),  # an exporter's Linear: an Add holds the bias
}
KINDS = list(LAYERS)


def layer(kind):
    """(nodes computing ``h`` from ``x``, initializers, x shape, output channels, ops left after folding)."""
    op, attributes, w_shape, b_shape, x_shape, channels = LAYERS[kind]
    inits = [init("w", arr(*w_shape))] + ([init("b", arr(*b_shape, scale=0.3))] if b_shape else [])
    if op == "MatMul" and b_shape:
        nodes = [
            H.make_node("MatMul", ["x", "w"], ["mm"], name="layer"),
            H.make_node("Add", ["mm", "b"], ["h"], name="bias"),
        ]
        return nodes, inits, x_shape, channels, ["MatMul", "Add"]
    if op == "MatMul":
        return [H.make_node("MatMul", ["x", "w"], ["h"], name="layer")], inits, x_shape, channels, ["MatMul", "Add"]
    inputs = ["x", "w", "b"] if b_shape else ["x", "w"]
    return [H.make_node(op, inputs, ["h"], name="layer", **attributes)], inits, x_shape, channels, [op]


@pytest.mark.parametrize("kind", KINDS)
def test_batchnorm_folds_exactly(kind):
    nodes, inits, x_shape, channels, ops = layer(kind)
    bn, params = batchnorm("h", "y", channels)
    before = make([*nodes, bn], [vi("x", x_shape)], [out("y", len(x_shape))], inits + params)
    model, result = fold(before)
    assert [n.op_type for n in model.graph] == ops
    assert result.sites == {"bn": "layer"} and result.skipped == {} and result.modified
    assert [v.name for v in model.graph.outputs] == ["y"]  # the output keeps its name
    assert not {p.name for p in params} & set(model.graph.initializers)  # parameters dropped
    stats = result.batchnorms["y"]
    assert stats.name == "bn" and stats.layer == "layer"
    np.testing.assert_array_equal(stats.scale, onnx.numpy_helper.to_array(params[0]).astype(np.float64))
    np.testing.assert_array_equal(stats.shift, onnx.numpy_helper.to_array(params[1]).astype(np.float64))
    assert_same_function(before, model, {"x": arr(*x_shape)})


def test_float16_stays_float16():
    nodes, inits, x_shape, channels, _ = layer("conv")
    inits = [init(t.name, onnx.numpy_helper.to_array(t).astype(np.float16)) for t in inits]
    bn, params = batchnorm("h", "y", channels, dtype=np.float16)
    before = make([*nodes, bn], [vi("x", x_shape, HALF)], [out("y", 4, HALF)], inits + params)
    model, result = fold(before)
    assert [n.op_type for n in model.graph] == ["Conv"] and result.sites == {"bn": "layer"}
    assert {v.dtype for v in model.graph.initializers.values()} == {ir.DataType.FLOAT16}
    feeds = {"x": arr(*x_shape, dtype=np.float16)}
    expected, got = run(before, feeds)[0], run(model_io.to_proto(model), feeds)[0]
    assert got.dtype == np.float16
    assert np.abs(got.astype(np.float32) - expected).max() <= 5e-3 * np.abs(expected).max()


# ---------------------------------------------------------------------------------------------- rules 2 and 3


def test_mul_and_add_fold_into_conv_and_carry_the_statistics():
    """Conv -> BN -> Mul -> Add -> Relu folds whole; the statistics follow the Mul and the Add."""
    nodes, inits, x_shape, channels, _ = layer("conv")
    bn, params = batchnorm("h", "n", channels)
    s, t = arr(channels, 1, 1, low=0.5), arr(1, channels, 1, 1)
    nodes += [
        bn,
        H.make_node("Mul", ["s", "n"], ["m"], name="mul"),  # the constant first: either order
        H.make_node("Add", ["m", "t"], ["a"], name="add"),
        H.make_node("Relu", ["a"], ["y"], name="relu"),
    ]
    before = make(nodes, [vi("x", x_shape)], [out("y", len(x_shape))], [*inits, *params, init("s", s), init("t", t)])
    model, result = fold(before)
    assert [n.op_type for n in model.graph] == ["Conv", "Relu"]
    assert result.sites == {"bn": "layer", "mul": "layer", "add": "layer"}
    stats = result.batchnorms["h"]
    gamma, beta = (onnx.numpy_helper.to_array(p).astype(np.float64) for p in params[:2])
    np.testing.assert_allclose(stats.scale, gamma * s.reshape(-1))
    np.testing.assert_allclose(stats.shift, beta * s.reshape(-1) + t.reshape(-1))
    assert_same_function(before, model, {"x": arr(*x_shape)})


@pytest.mark.parametrize("kind", ["conv_transpose_groups", "gemm", "gemm_trans_b", "matmul", "matmul_add"])
def test_mul_then_add_fold_into_each_layer(kind):
    nodes, inits, x_shape, channels, ops = layer(kind)
    rank = len(x_shape)
    s = arr(channels, *[1] * (rank - 2), low=0.5) if rank > 2 else arr(channels, low=0.5)
    nodes += [H.make_node("Mul", ["h", "s"], ["m"], name="mul"), H.make_node("Add", ["m", "t"], ["y"], name="add")]
    t = arr(1, channels) if rank == 2 else s.copy()
    before = make(nodes, [vi("x", x_shape)], [out("y", len(x_shape))], [*inits, init("s", s), init("t", t)])
    model, result = fold(before)
    if kind == "matmul":  # the Add after the MatMul is its bias now
        assert [n.op_type for n in model.graph] == ["MatMul", "Add"] and result.sites == {"mul": "layer"}
    else:
        assert [n.op_type for n in model.graph] == ops and result.sites == {"mul": "layer", "add": "layer"}
    assert result.batchnorms == {} and result.skipped == {}
    assert_same_function(before, model, {"x": arr(*x_shape)})


def test_scalar_mul_folds_and_other_constants_stay_unreported():
    """A scalar is per channel; a constant along a spatial axis is no site (nothing to fold, nothing to say)."""
    nodes, inits, x_shape, _, _ = layer("conv")
    nodes += [
        H.make_node("Mul", ["h", "half"], ["m"], name="scalar"),
        H.make_node("Mul", ["m", "rows"], ["y"], name="rows"),
    ]
    consts = [init("half", np.float32(0.5)), init("rows", arr(6, 1, low=0.5))]
    before = make(nodes, [vi("x", x_shape)], [out("y", len(x_shape))], [*inits, *consts])
    model, result = fold(before)
    assert [n.op_type for n in model.graph] == ["Conv", "Mul"]
    assert result.sites == {"scalar": "layer"} and result.skipped == {}
    assert_same_function(before, model, {"x": arr(*x_shape)})


def test_add_after_a_shared_weight_folds_but_mul_does_not():
    """An Add changes only the bias (copied when shared); a Mul would need a copy of the shared weight."""
    w, b = init("w", arr(8, 4, 3, 3)), init("b", arr(8))
    nodes = [
        H.make_node("Conv", ["x", "w", "b"], ["h1"], name="conv1"),
        H.make_node("Conv", ["x", "w", "b"], ["h2"], name="conv2"),
        H.make_node("Add", ["h1", "t"], ["y1"], name="add"),
        H.make_node("Mul", ["h2", "s"], ["y2"], name="mul"),
    ]
    consts = [init("t", arr(8, 1, 1)), init("s", arr(8, 1, 1, low=0.5))]
    before = make(nodes, [vi("x", [1, 4, 5, 5])], [out("y1", 4), out("y2", 4)], [w, b, *consts])
    model, result = fold(before)
    assert [n.op_type for n in model.graph] == ["Conv", "Conv", "Mul"]
    assert result.sites == {"add": "conv1"}
    assert result.skipped == {"mul": "weight 'w' of 'conv2' is shared with Conv 'conv1'"}
    assert model.graph.node("conv2").inputs[2].name == "b"  # conv2 keeps the shared bias, conv1 has a copy
    assert_same_function(before, model, {"x": arr(1, 4, 5, 5)})


# ---------------------------------------------------------------------------------------------- the reasons


def skip_case(case):
    """(model, node expected to stay, words of its reason)."""
    conv = H.make_node("Conv", ["x", "w", "b"], ["h"], name="conv")
    weights = [init("w", arr(4, 3, 3, 3)), init("b", arr(4))]
    x = vi("x", [1, 3, 5, 5])
    bn, params = batchnorm("h", "y", 4)
    if case == "other_reader":
        relu = H.make_node("Relu", ["h"], ["r"], name="relu")
        return (
            make([conv, bn, relu], [x], [vi("y", None), vi("r", None)], weights + params),
            "bn",
            "'h' of Conv 'conv' is also read by Relu 'relu'",
        )
    if case == "graph_output":
        return (
            make([conv, bn], [x], [vi("y", None), vi("h", None)], weights + params),
            "bn",
            "'h' of Conv 'conv' is a graph output",
        )
    if case == "shared_weight":
        other = H.make_node("Conv", ["x", "w"], ["h2"], name="conv2")
        return (
            make([conv, other, bn], [x], [vi("y", None), vi("h2", None)], weights + params),
            "bn",
            "weight 'w' of 'conv' is shared with Conv 'conv2'",
        )
    if case == "runtime_parameter":
        return (
            make([conv, bn], [x, vi("bn.var", [4])], [vi("y", None)], weights + params[:3]),
            "bn",
            "parameter 'bn.var' is computed at run time",
        )
    if case == "training_mode":
        bn, params = batchnorm("h", "y", 4, training_mode=1)
        bn.output.extend(["running_mean", "running_var"])
        return make([conv, bn], [x], [vi("y", None)], weights + params), "bn", "training mode"
    if case == "after_relu":
        relu = H.make_node("Relu", ["x"], ["h"], name="relu")
        bn, params = batchnorm("h", "y", 3)
        return make([relu, bn], [x], [vi("y", None)], params), "bn", "comes from Relu 'relu'"
    if case == "graph_input":
        bn, params = batchnorm("x", "y", 3)
        return make([bn], [x], [vi("y", None)], params), "bn", "its input 'x' is a graph input, not from a Conv"
    if case == "runtime_weight":
        return (
            make([conv, bn], [x, vi("w", [4, 3, 3, 3])], [vi("y", None)], weights[1:] + params),
            "bn",
            "the weight 'w' of Conv 'conv' is a graph input",
        )
    if case == "runtime_bias":
        return (
            make([conv, bn], [x, vi("b", [4])], [vi("y", None)], weights[:1] + params),
            "bn",
            "bias 'b' of 'conv' is computed at run time",
        )
    if case == "negative_variance":
        params[3] = init("bn.var", np.array([1.0, 1.0, -1.0, 1.0], np.float32))
        return (
            make([conv, bn], [x], [vi("y", None)], weights + params),
            "bn",
            "var + epsilon is not positive in channel 2",
        )
    if case == "float16_overflow":
        bn, params = batchnorm("h", "y", 4, dtype=np.float16)
        params[0] = init("bn.scale", np.full(4, 1000, np.float16))
        weights = [init("w", np.full((4, 3, 3, 3), 3000, np.float16)), init("b", np.zeros(4, np.float16))]
        return (
            make([conv, bn], [vi("x", [1, 3, 5, 5], HALF)], [out("y", 4, HALF)], weights + params),
            "bn",
            "the folded weight 'w' overflows FLOAT16",
        )
    matmul = H.make_node("MatMul", ["x", "w"], ["h"], name="mm")
    bn, params = batchnorm("h", "y", 6)
    if case == "matmul_3d":
        return (
            make([matmul, bn], [vi("x", [2, 3, 5])], [vi("y", None)], [init("w", arr(5, 6)), *params]),
            "bn",
            "the output of MatMul 'mm' is 3-D: BatchNormalization would normalize axis 1",
        )
    assert case == "matmul_unknown_rank"
    return (
        make([matmul, bn], [vi("x", None)], [vi("y", None)], [init("w", arr(5, 6)), *params]),
        "bn",
        "the output of MatMul 'mm' is of unknown rank",
    )


SKIPS = [
    "other_reader",
    "graph_output",
    "shared_weight",
    "runtime_parameter",
    "training_mode",
    "after_relu",
    "graph_input",
    "runtime_weight",
    "runtime_bias",
    "negative_variance",
    "float16_overflow",
    "matmul_3d",
    "matmul_unknown_rank",
]


@pytest.mark.parametrize("case", SKIPS)
def test_every_site_left_has_a_reason(case):
    before, node, reason = skip_case(case)
    model, result = fold(before)
    assert result.sites == {} and not result.modified
    assert [n.op_type for n in model.graph] == [n.op_type for n in before.graph.node]
    assert reason in result.skipped[node]


# ---------------------------------------------------------------------------------------------- as found in the wild


def test_constant_nodes_fold_without_lifting():
    """Weights and parameters in Constant nodes (Paddle, some exporters) fold; the dead Constants go."""
    nodes, inits, x_shape, channels, _ = layer("conv")
    bn, params = batchnorm("h", "y", channels)
    constants = [H.make_node("Constant", [], [t.name], name=f"const_{t.name}", value=t) for t in inits + params]
    before = make([*constants, *nodes, bn], [vi("x", x_shape)], [out("y", len(x_shape))], [])
    model, result = fold(before)
    assert [n.op_type for n in model.graph] == ["Conv"] and result.sites == {"bn": "layer"}
    assert_same_function(before, model, {"x": arr(*x_shape)})


def test_inside_a_subgraph():
    """A layer in an If branch, reading an outer initializer, takes its BatchNormalization."""
    nodes, inits, x_shape, channels, _ = layer("conv")
    bn, params = batchnorm("h", "y", channels)
    then = H.make_graph([*nodes, bn], "then", [], [out("y", len(x_shape))], params)
    other = H.make_graph(
        [H.make_node("Conv", ["x", "w2", "b"], ["z"], name="conv_else")], "else", [], [out("z", len(x_shape))]
    )
    node = H.make_node("If", ["cond"], ["out"], name="if", then_branch=then, else_branch=other)
    inits.append(init("w2", arr(8, 4, 3, 3)))
    before = make([node], [vi("x", x_shape), vi("cond", [], onnx.TensorProto.BOOL)], [out("out", len(x_shape))], inits)
    model, result = fold(before)
    branch = model.graph.node("if").attributes["then_branch"].value
    assert result.sites == {"bn": "layer"} and [n.op_type for n in branch] == ["Conv"]
    assert not {p.name for p in params} & set(branch.initializers)  # the parameters dropped
    for cond in (True, False):
        assert_same_function(before, model, {"x": arr(*x_shape), "cond": np.array(cond)})


def test_prepare_lifts_then_folds():
    """In the prepare sequence: Constant weights lifted, names given, then folded; ``prepare`` keeps the result."""
    nodes, inits, x_shape, channels, _ = layer("conv")
    bn, params = batchnorm("h", "y", channels)
    bn.name = ""  # unnamed: the name the prepare passes give it is the one reported
    constants = [H.make_node("Constant", [], [t.name], value=t) for t in inits]
    proto = make([*constants, *nodes, bn], [vi("x", x_shape)], [out("y", len(x_shape))], params)
    prepared = prepare(ir.serde.deserialize_model(proto), 13)
    assert [n.op_type for n in prepared.model.graph] == ["Conv"]
    assert prepared.folds.sites == {"BatchNormalization": "layer"}
    again = prepare_passes(13)(ir.serde.deserialize_model(proto)).model
    assert [n.op_type for n in again.graph] == ["Conv"]
    assert_same_function(proto, prepared.model, {"x": arr(*x_shape)})


@pytest.mark.parametrize("name", test_graphs.names(quantized=False))
def test_prepare_keeps_every_test_graph_function(name):
    """Whatever it folds (or leaves), the prepared model computes what the original does."""
    graph = test_graphs.build(name)
    prepared = prepare(ir.serde.deserialize_model(graph.model), 13)
    assert sorted(prepared.folds.sites) == (["bn1", "bn2"] if name == "batchnorm_conv" else [])
    proto = model_io.to_proto(prepared.model)
    for seed in (0, 1):  # both branches of if_conv
        feeds = graph.feeds(3, seed)
        for e, g in zip(run(graph.model, feeds), run(proto, feeds)):
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5 * float(np.abs(e).max()))


# ---------------------------------------------------------------------------------------------- compress


def conv_bn_classifier():
    """Conv -> BatchNormalization -> Relu -> GlobalAveragePool -> Flatten -> Gemm, as an unfused export."""
    nodes, inits, _, channels, _ = layer("conv")
    bn, params = batchnorm("h", "n", channels)
    nodes += [
        bn,
        H.make_node("Relu", ["n"], ["r"], name="relu"),
        H.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        H.make_node("Flatten", ["p"], ["f"], name="flatten"),
        H.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], name="fc", transB=1),
    ]
    inits += [*params, init("fc.w", arr(3, channels)), init("fc.b", arr(3))]
    return make(nodes, [vi("x", ["N", 4, 6, 6])], [vi("y", ["N", 3])], inits, opset=13)


@pytest.mark.parametrize("target", [onnxbc.Target.TENSORRT, onnxbc.Target.ONNXRUNTIME])
def test_compress_output_has_no_batchnorm(tmp_path, target):
    path = tmp_path / "m.onnx"
    onnx.save(conv_bn_classifier(), path)
    options = onnxbc.CompressOptions(target=target, device=onnxbc.Device.CPU)
    result = onnxbc.compress(
        path, tmp_path / "q.onnx", data=onnxbc.DataOptions(random=True, samples=16), options=options
    )
    ops = [n.op_type for n in onnx.load(tmp_path / "q.onnx").graph.node]
    assert "BatchNormalization" not in ops and ops.count("Conv") == 1
    expected = {"folded": 1, "fold_sites": [{"node": "bn", "into": "layer"}], "fold_skipped": []}
    assert result.report.prepare == expected
    assert json.loads((tmp_path / "q.report.json").read_text())["prepare"] == expected


def test_fashion_cnn_bn_compresses_with_the_count(tmp_path):
    options = onnxbc.CompressOptions(device=onnxbc.Device.CPU)
    data = onnxbc.DataOptions(CALIB, samples=32, batch_size=16)
    result = onnxbc.compress(FASHION_BN, tmp_path / "q.onnx", data=data, options=options)
    assert result.report.prepare["folded"] == 2 and result.report.prepare["fold_skipped"] == []
    assert [s["into"] for s in result.report.prepare["fold_sites"]] == [
        "/features/features.0/Conv",
        "/features/features.4/Conv",
    ]
    assert "BatchNormalization" not in {n.op_type for n in onnx.load(tmp_path / "q.onnx").graph.node}


def test_data_free_reads_the_statistics_folded_away(tmp_path):
    """DF-MPC pairs name the folded BatchNormalization and bias-correct from its statistics."""
    options = onnxbc.CompressOptions(weights=onnxbc.WeightType.INT4, data_free=True)
    result = onnxbc.compress(FASHION_BN, tmp_path / "q.onnx", options=options)
    pairs = result.report.compensation["pairs"]
    assert pairs[0]["batchnorm"] == "/features/features.1/BatchNormalization" and pairs[1]["batchnorm"] is None
    assert result.report.compensation["bias_correction"]["layers"] == [
        "/features/features.4/Conv",
        "/classifier/classifier.1/Gemm",
    ]
    assert result.report.prepare["folded"] == 2
    assert not [w for w in result.report.warnings if "BatchNormalization" in w]
