"""A smoothing division moved back up the graph (``onnxbc.channel_trace``) computes what the Mul would.

Each case builds a small graph, smooths one MatMul input with random factors (the reader's weight multiplied by
them, as ``solvers.smooth`` does), then compares the model with the division folded against the same plan with
a Mul, in ONNX Runtime, and checks where the division went. The refusals leave the Mul.
"""

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from models import test_graphs
from onnxbc import model_io
from onnxbc.calibration.session import SessionFactory
from onnxbc.candidates import quantize
from onnxbc.passes.prepare import prepare_passes
from onnxbc.plan import QuantPlan, Smoothing, WeightQuant
from onnxbc.smoothing import fold_divisions
from onnxbc.solvers.quant import Granularity
from onnxbc.targets import find_targets

RNG = np.random.default_rng(3)
D = 8  # model width in the hand-built graphs


def _int8(name: str, w: np.ndarray, axis: int) -> WeightQuant:
    """Per-output-channel min-max int8 codes of ``w`` (channels on ``axis``)."""
    moved = np.moveaxis(w, axis, 0)
    scale = (np.abs(moved).reshape(len(moved), -1).max(axis=1) / 127).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    codes = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return WeightQuant(name, codes, scale, Granularity(axis), 8, "minmax")


def _smoothed(proto: onnx.ModelProto, reader: str, seed: int = 0):
    """The prepared model, its layers, the input of ``reader`` (a MatMul), and a plan quantizing every weight
    with that input smoothed by random factors."""
    model = prepare_passes(17)(model_io.from_proto(proto)).model
    layers = {t.name: t for t in find_targets(model).targets}
    x = layers[reader].node.inputs[0].name
    weights = {}
    for t in layers.values():
        if t.weight is None:
            continue
        w = t.weight.source.const_value.numpy()
        if t.name == reader:
            s = np.random.default_rng(seed).uniform(0.25, 4.0, w.shape[0]).astype(np.float32)
            w = w * s.reshape(-1, 1)  # MatMul weight [in, out]: the input channels on axis 0
        weights[t.weight.source.name] = _int8(t.weight.source.name, w, t.weight.channel_axis)
    plan = QuantPlan(weights=weights, activation_uses={x: [(reader, 0)]}, smoothing={x: Smoothing(x, s, -1, 0.5)})
    return model, layers, x, plan


def _outputs(model, plan, feeds):
    quantized, rewrite = quantize(model.clone(), plan)
    ops = [n.op_type for n in quantized.graph]
    return SessionFactory().create(quantized).run(None, feeds)[0], ops, rewrite


def _check_folded(proto, reader, feeds, *, layer=None):
    model, layers, x, plan = _smoothed(proto, reader)
    folded = fold_divisions(plan, layers)
    fold = folded.smoothing[x].into
    assert fold is not None, "the division should fold"
    assert fold.layer == layer
    with_mul, ops_mul, _ = _outputs(model, plan, feeds)
    without, ops, rewrite = _outputs(model, folded, feeds)
    assert ops.count("Mul") == ops_mul.count("Mul") - 1  # the smoothing Mul is gone
    assert rewrite.smoothing[x] == fold.describe()
    np.testing.assert_allclose(without, with_mul, rtol=1e-4, atol=1e-5)
    return fold


def _linear(nodes, inits, x, name, fin, fout, *, bias=True):
    inits.append(helper.make_tensor(f"{name}.w", TensorProto.FLOAT, [fin, fout], RNG.normal(size=(fin, fout)).ravel()))
    nodes.append(helper.make_node("MatMul", [x, f"{name}.w"], [f"{name}.mm"], name=name))
    if not bias:
        return f"{name}.mm"
    inits.append(helper.make_tensor(f"{name}.b", TensorProto.FLOAT, [fout], RNG.normal(size=fout)))
    nodes.append(helper.make_node("Add", [f"{name}.mm", f"{name}.b"], [f"{name}.out"], name=f"{name}.add"))
    return f"{name}.out"


def _model(nodes, inits, out_dim=D):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, out_dim])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _feeds(n=3):
    return {"x": RNG.normal(size=(n, 4, D)).astype(np.float32)}


def _int64(name, values):
    return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)


def _fused_qkv(*, k_slice=(D, 2 * D), read_whole=False):
    """One head of attention over a fused QKV projection sliced into Q, K, V (as nanoGPT exports it); the
    output projection 'out' reads the context. ``k_slice``: the channels the K Slice takes; ``read_whole``: the
    projection's output also feeds a ReduceMean added to the model's output."""
    nodes, inits = [], []
    qkv = _linear(nodes, inits, "x", "qkv", D, 3 * D)
    inits += [_int64("axis", [2]), _int64("q0", [0]), _int64("q1", [D]), _int64("k0", [k_slice[0]])]
    inits += [_int64("k1", [k_slice[1]]), _int64("v0", [2 * D]), _int64("v1", [3 * D])]
    for name, (a, b) in {"q": ("q0", "q1"), "k": ("k0", "k1"), "v": ("v0", "v1")}.items():
        nodes.append(helper.make_node("Slice", [qkv, a, b, "axis"], [name], name=f"slice_{name}"))
    nodes.append(helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]))
    nodes.append(helper.make_node("MatMul", ["q", "kt"], ["scores"], name="qk"))
    nodes.append(helper.make_node("Softmax", ["scores"], ["p"], name="softmax", axis=-1))
    nodes.append(helper.make_node("MatMul", ["p", "v"], ["context"], name="pv"))
    out = _linear(nodes, inits, "context", "out", D, D, bias=False)
    if read_whole:
        nodes.append(helper.make_node("ReduceMean", [qkv], ["mean"], name="mean", keepdims=1, axes=[-1]))
        nodes.append(helper.make_node("Add", [out, "mean"], ["y"], name="add_mean"))
    else:
        nodes[-1].output[0] = "y"
    return _model(nodes, inits)


def test_attention_context_folds_into_the_v_projection_through_heads():
    """test_graphs' 2-head attention: the context's division reaches the V projection through the head merge,
    P.V and the head split (its bias Add divided too); positions are the channels themselves."""
    graph = test_graphs.build("attention")
    fold = _check_folded(graph.model, "attn.out_proj/MatMul", graph.feeds(3, 0), layer="attn.v_proj/MatMul")
    assert fold.path == ("Reshape", "Transpose", "MatMul", "Transpose", "Reshape", "Add")
    np.testing.assert_array_equal(fold.positions, np.arange(32))


def test_fused_qkv_folds_into_the_v_columns_only():
    """Q and K read other columns of the fused projection: only the V columns (and their bias) are divided."""
    fold = _check_folded(_fused_qkv(), "out", _feeds(), layer="qkv")
    np.testing.assert_array_equal(fold.positions, np.arange(2 * D, 3 * D))
    assert [c.node for c in fold.constants] == ["qkv.add"]


def test_gelu_output_folds_into_its_half_constant():
    """GELU spelled out: the division becomes a per-channel 0.5 / s in its constant Mul."""
    graph = test_graphs.build("gelu_mlp")
    fold = _check_folded(graph.model, "fc2/MatMul", graph.feeds(3, 0))
    assert fold.layer is None and [c.node for c in fold.constants] == ["gelu/Mul_half"]


def test_swiglu_folds_into_the_up_projection():
    """SwiGLU: silu(gate) * up; the division goes into the up projection's weight scales."""
    nodes, inits = [], []
    gate = _linear(nodes, inits, "x", "gate", D, D, bias=False)
    up = _linear(nodes, inits, "x", "up", D, D, bias=False)
    nodes.append(helper.make_node("Sigmoid", [gate], ["sig"], name="sig"))
    nodes.append(helper.make_node("Mul", [gate, "sig"], ["silu"], name="silu"))
    nodes.append(helper.make_node("Mul", ["silu", up], ["h"], name="glu"))
    _linear(nodes, inits, "h", "down", D, D, bias=False)
    nodes[-1].output[0] = "y"
    fold = _check_folded(_model(nodes, inits), "down", _feeds(), layer="up")
    assert fold.path == ("Mul",)


def test_division_by_a_constant_takes_the_factors():
    """h / c: the division by s becomes a division by c * s (the constant multiplied)."""
    nodes, inits = [], []
    h = _linear(nodes, inits, "x", "fc", D, D)
    inits.append(helper.make_tensor("c", TensorProto.FLOAT, [], [2.0]))
    nodes.append(helper.make_node("Div", [h, "c"], ["h2"], name="div"))
    _linear(nodes, inits, "h2", "out", D, D, bias=False)
    nodes[-1].output[0] = "y"
    fold = _check_folded(_model(nodes, inits), "out", _feeds())
    assert fold.constants[0].multiply and fold.constants[0].node == "div"


@pytest.mark.parametrize(
    "case, why",
    [
        ("overlap", "the K Slice takes channels of the V columns"),
        ("read_whole", "the projection's output is also read whole"),
        ("quantized", "a tensor on the way is quantized (per tensor: it cannot follow the division)"),
        ("broadcast", "V broadcast over heads (grouped-query attention)"),
    ],
)
def test_refusals_keep_the_mul(case, why):
    if case == "broadcast":
        proto = _broadcast_v()
    else:
        k_slice = (D + 4, 2 * D + 4) if case == "overlap" else (D, 2 * D)
        proto = _fused_qkv(k_slice=k_slice, read_whole=case == "read_whole")
    model, layers, x, plan = _smoothed(proto, "out")
    if case == "quantized":
        plan = dataclasses.replace(plan, activations={"v": None})
    folded = fold_divisions(plan, layers)
    assert folded.smoothing[x].into is None, why
    assert all(folded.weights[k] is plan.weights[k] for k in plan.weights)


def _broadcast_v():
    """P.V where V [N, 1, 4, D] is shared by 2 heads of P [N, 2, 4, 4] (the context's channels repeat)."""
    nodes, inits = [], []
    v = _linear(nodes, inits, "x", "v", D, D)
    inits += [_int64("one", [1]), _int64("heads", [1, 2, 1, 1]), _int64("merge", [0, 4, 2 * D])]
    nodes.append(helper.make_node("Transpose", ["x"], ["xt"], name="xt", perm=[0, 2, 1]))
    nodes.append(helper.make_node("MatMul", ["x", "xt"], ["scores"], name="qk"))
    nodes.append(helper.make_node("Softmax", ["scores"], ["p3"], name="softmax", axis=-1))
    nodes.append(helper.make_node("Unsqueeze", ["p3", "one"], ["p1"], name="p1"))
    nodes.append(helper.make_node("Expand", ["p1", "heads"], ["p"], name="p"))
    nodes.append(helper.make_node("Unsqueeze", [v, "one"], ["v4"], name="v4"))
    nodes.append(helper.make_node("MatMul", ["p", "v4"], ["ctx"], name="pv"))
    nodes.append(helper.make_node("Transpose", ["ctx"], ["ctx_t"], name="ctx_t", perm=[0, 2, 1, 3]))
    nodes.append(helper.make_node("Reshape", ["ctx_t", "merge"], ["context"], name="merge"))
    _linear(nodes, inits, "context", "out", 2 * D, D, bias=False)
    nodes[-1].output[0] = "y"
    return _model(nodes, inits)
