"""int32 QDQ biases: QuantizeBiasPass (codes, reasons, sharing) and FoldBiasPass folding into int32 codes.

Numbers run in an exact ONNX Runtime session (what the graph says, QDQ fusions off) and in onnx.reference.
An int32 bias ``DequantizeLinear(q, s_x * s_w)`` is within half a step of the float bias per output channel,
so the outputs are compared to that bound, channel by channel.
"""

import numpy as np
import onnx
import onnx.reference
import onnx_ir as ir
import pytest
from onnx import helper, numpy_helper

from onnxbc import model_io
from onnxbc.calibration.session import SessionFactory
from onnxbc.options import Device
from onnxbc.passes.bias_int32 import QuantizeBiasPass
from onnxbc.passes.fold_bias import FoldBiasPass
from onnxbc.passes.qdq import InsertQDQPass
from onnxbc.plan import ActivationQuant, BiasFold, QuantPlan, WeightQuant
from onnxbc.solvers.quant import INT4, INT8, Granularity, quantize, weight_scale

ACT_SCALE = 0.05
SESSIONS = SessionFactory(Device.CPU)


# --- graphs --------------------------------------------------------------------------------------------------


def conv_model(shared: str = "") -> ir.Model:
    """x[2,3,6,6] -> Conv 'c1' (3x3, pad 1, 4 channels, bias 'b'); ``shared``: a second Conv 'c2' reads 'b' too,
    on ``x`` ("input") or on its own graph input ``x2`` that stays float ("float_input")."""
    rng = np.random.default_rng(0)
    inits = {
        "w1": rng.standard_normal((4, 3, 3, 3)) * 0.3,
        "w2": rng.standard_normal((4, 3, 3, 3)) * 0.3,
        "b": rng.standard_normal(4) * 0.5,
    }
    nodes = [helper.make_node("Conv", ["x", "w1", "b"], ["y1"], name="c1", pads=[1] * 4)]
    inputs, outputs = ["x"], ["y1"]
    if shared:
        x2 = "x" if shared == "input" else "x2"
        nodes.append(helper.make_node("Conv", [x2, "w2", "b"], ["y2"], name="c2", pads=[1] * 4))
        inputs, outputs = sorted({"x", x2}), ["y1", "y2"]
    return _model(nodes, inputs, [2, 3, 6, 6], outputs, [2, 4, 6, 6], inits)


def gemm_model(trans_b: int = 1, alpha: float = 1.0, beta: float = 1.0, bias: bool = True) -> ir.Model:
    """x[3,8] -> Gemm 'fc' -> y[3,5], weight [5,8] (transB=1) or [8,5]."""
    rng = np.random.default_rng(1)
    inits = {"w": rng.standard_normal((5, 8) if trans_b else (8, 5)) * 0.3}
    if bias:
        inits["c"] = rng.standard_normal(5) * 0.5
    node = helper.make_node("Gemm", ["x", *inits], ["y"], name="fc", transB=trans_b, alpha=alpha, beta=beta)
    return _model([node], ["x"], [3, 8], ["y"], [3, 5], inits)


def _model(nodes, inputs, in_shape, outputs, out_shape, inits) -> ir.Model:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, in_shape) for n in inputs],
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, out_shape) for n in outputs],
        [numpy_helper.from_array(a.astype(np.float32), n) for n, a in inits.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    return ir.serde.deserialize_model(proto)


def feeds(model: ir.Model, seed: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {v.name: rng.standard_normal([d for d in v.shape]).astype(np.float32) for v in model.graph.inputs}


def quantize_model(model: ir.Model, per_channel: bool = True, block: int = 0, fmt=INT8, act: bool = True) -> ir.Model:
    """InsertQDQPass with a hand-made plan: min-max int8 weights, a fixed int8 scale for every layer input ``x``."""
    plan = QuantPlan()
    for node in model.graph:
        w = node.inputs[1].const_value.numpy()
        out_axis = 1 if node.op_type == "Gemm" and not node.attributes.get_int("transB", 0) else 0
        gran = Granularity(1 - out_axis, block) if block else Granularity(out_axis if per_channel else None)
        s = weight_scale(w, fmt, gran, "minmax")
        plan.weights[node.inputs[1].name] = WeightQuant(
            node.inputs[1].name, quantize(w, s, fmt, gran), s, gran, fmt.bits, "minmax"
        )
        x = node.inputs[0].name
        if act and x == "x":
            plan.activations[x] = ActivationQuant(x, ACT_SCALE, 0, np.dtype(np.int8), 127 * ACT_SCALE, "fixed")
            plan.activation_uses.setdefault(x, []).append((node.name, 0))
    InsertQDQPass(plan)(model)
    return model


def weight_scales(model: ir.Model, layer: str) -> np.ndarray:
    node = next(n for n in model.graph if n.name == layer)
    return node.inputs[1].producer().inputs[1].const_value.numpy().astype(np.float64)


# --- helpers -------------------------------------------------------------------------------------------------


def run(model, inputs):
    proto = model if isinstance(model, onnx.ModelProto) else model_io.to_proto(model)
    return SESSIONS.create_from(proto.SerializeToString()).run(None, inputs)


def assert_within_half_step(actual, expected, step):
    """``|actual - expected| <= step / 2`` per output channel (axis 1), plus float rounding."""
    step = np.broadcast_to(np.asarray(step, np.float64).reshape(-1), (expected.shape[1],))
    bound = 0.5 * step.reshape((-1,) + (1,) * (expected.ndim - 2)) + 1e-6 * (1 + np.abs(expected))
    excess = np.abs(actual.astype(np.float64) - expected) - bound
    assert excess.max() <= 0, f"off by {excess.max():.3g} more than half a bias step"


def bias_dequantize(model: ir.Model, layer: str) -> ir.Node:
    node = next(n for n in model.graph if n.name == layer)
    dq = node.inputs[2].producer()
    assert dq is not None and dq.op_type == "DequantizeLinear"
    assert dq.inputs[0].const_value.dtype == ir.DataType.INT32
    return dq


def add_after(proto: onnx.ModelProto, layer: str, delta: np.ndarray, shape) -> onnx.ModelProto:
    """Reference built at the protobuf level, independent of FoldBiasPass: ``Add(delta)`` on the layer output."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    node = next(n for n in proto.graph.node if n.name == layer)
    y = node.output[0]
    proto.graph.initializer.append(numpy_helper.from_array(delta.reshape(shape).astype(np.float32), "ref_delta"))
    for out in proto.graph.output:
        if out.name == y:
            out.name = "ref_biased"
    index = list(proto.graph.node).index(node)
    proto.graph.node.insert(index + 1, helper.make_node("Add", [y, "ref_delta"], ["ref_biased"]))
    return proto


# --- QuantizeBiasPass ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("per_channel", [True, False], ids=["channel", "tensor"])
@pytest.mark.parametrize("layer", ["conv", "gemm_transB", "gemm"])
def test_int32_bias_is_within_half_a_step_of_the_float_bias(layer, per_channel):
    model = conv_model() if layer == "conv" else gemm_model(trans_b=int(layer == "gemm_transB"))
    name, bias_name = ("c1", "b") if layer == "conv" else ("fc", "c")
    bias = model.graph.initializers[bias_name].const_value.numpy().astype(np.float64)
    reference = quantize_model(model, per_channel)
    reference_proto = model_io.to_proto(reference)
    s_b = ACT_SCALE * weight_scales(reference, name)
    ops_before = [n.op_type for n in reference.graph].count("DequantizeLinear")

    result = QuantizeBiasPass()(reference)
    assert result.modified and result.skipped == {}
    role, granularity = "Conv B" if layer == "conv" else "Gemm C", "channel" if per_channel else "tensor"
    assert result.sites == {name: f"{role} int32 (scale per {granularity})"}
    model = result.model
    assert [n.op_type for n in model.graph].count("DequantizeLinear") == ops_before + 1
    assert bias_name not in model.graph.initializers  # no reader left
    dq = bias_dequantize(model, name)
    scale = dq.inputs[1].const_value.numpy()
    assert scale.dtype == np.float32 and scale.shape == ((5 if layer != "conv" else 4,) if per_channel else ())
    assert dq.attributes.get_int("axis", None) == (0 if per_channel else None)
    np.testing.assert_allclose(scale, s_b, rtol=1e-6)
    np.testing.assert_array_equal(dq.inputs[0].const_value.numpy(), np.rint(bias / scale.astype(np.float64)))

    proto = model_io.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    inputs = feeds(model)
    out = run(proto, inputs)[0]
    assert_within_half_step(out, run(reference_proto, inputs)[0], s_b)
    np.testing.assert_allclose(out, onnx.reference.ReferenceEvaluator(proto).run(None, inputs)[0], atol=1e-5)
    again = QuantizeBiasPass()(model)
    assert not again.modified and "comes from DequantizeLinear" in again.skipped[name]


def test_codes_outside_int32_leave_the_bias_float():
    model = gemm_model()
    model.graph.initializers["c"].const_value = ir.tensor(np.full(5, 1e7, np.float32), name="c")
    model = quantize_model(model)
    result = QuantizeBiasPass()(model)
    assert not result.modified
    assert result.sites == {}
    assert "'c' needs codes up to" in result.skipped["fc"] and "outside int32" in result.skipped["fc"]
    fc = next(n for n in model.graph if n.name == "fc")
    assert fc.inputs[2] is model.graph.initializers["c"]


def test_shared_bias_is_copied():
    """'c1' and 'c2' read 'b': both get their own codes (their weight scales differ); 'b' is then unread."""
    reference = quantize_model(conv_model(shared="input"))
    reference_proto = model_io.to_proto(reference)
    result = QuantizeBiasPass()(reference)
    model = result.model
    assert set(result.sites) == {"c1", "c2"}
    dq1, dq2 = bias_dequantize(model, "c1"), bias_dequantize(model, "c2")
    assert dq1 is not dq2 and dq1.inputs[0] is not dq2.inputs[0]
    assert "b" not in model.graph.initializers
    inputs = feeds(model)
    for out, ref, layer in zip(run(model, inputs), run(reference_proto, inputs), ("c1", "c2")):
        assert_within_half_step(out, ref, ACT_SCALE * weight_scales(reference, layer))


def test_bias_shared_with_a_float_layer_stays_for_it():
    model = quantize_model(conv_model(shared="float_input"))
    b = model.graph.initializers["b"].const_value.numpy().copy()
    result = QuantizeBiasPass()(model)
    assert set(result.sites) == {"c1"}
    assert "'x2' is not dequantized" in result.skipped["c2"]
    c2 = next(n for n in model.graph if n.name == "c2")
    assert c2.inputs[2] is model.graph.initializers["b"]  # the float reader keeps the float bias, unchanged
    np.testing.assert_array_equal(model.graph.initializers["b"].const_value.numpy(), b)
    bias_dequantize(model, "c1")
    onnx.checker.check_model(model_io.to_proto(model), full_check=True)


@pytest.mark.parametrize(
    "build,reason",
    [
        (lambda: quantize_model(gemm_model(), act=False), "'x' is not dequantized"),
        (lambda: quantize_model(gemm_model(), block=4), "quantized in blocks of 4"),
        (lambda: quantize_model(gemm_model(), fmt=INT4), "are INT4, not INT8"),
        (lambda: quantize_model(gemm_model(beta=2.0)), "Gemm beta is 2, not 1"),
        (lambda: quantize_model(gemm_model(alpha=0.5)), "Gemm alpha is 0.5, not 1"),
        (lambda: quantize_model(gemm_model(bias=False)), "no bias"),
    ],
    ids=["float_input", "blocked", "int4", "beta", "alpha", "no_bias"],
)
def test_unmatched_layers_are_skipped_with_a_reason(build, reason):
    model = build()
    ops = [n.op_type for n in model.graph]
    result = QuantizeBiasPass()(model)
    assert not result.modified
    assert result.sites == {} and reason in result.skipped["fc"], result.skipped
    assert [n.op_type for n in model.graph] == ops


def test_one_pass_object_on_two_models_reports_each_alone():
    quant = QuantizeBiasPass()
    first = quant(quantize_model(conv_model()))
    second = quant(quantize_model(gemm_model(bias=False)))
    assert first.sites == {"c1": "Conv B int32 (scale per channel)"} and first.skipped == {}
    assert second.sites == {} and second.skipped == {"fc": "no bias"}


def test_a_float_bias_left_behind_breaks_the_postcondition():
    class Forgets(QuantizeBiasPass):
        def _try_quantize(self, node, namer, sites, skipped):
            sites[node.name] = "claimed"
            return True

    with pytest.raises(ir.passes.PostconditionError, match="'c1' still reads the float bias 'b'"):
        Forgets()(quantize_model(conv_model()))


# --- FoldBiasPass into int32 codes ---------------------------------------------------------------------------


def int32_model(layer: str) -> tuple[ir.Model, str, float]:
    """A QDQ layer with an int32 bias; its name and Gemm beta (set after quantizing: QuantizeBiasPass wants 1)."""
    if layer == "conv":
        model, name, beta = quantize_model(conv_model()), "c1", 1.0
    else:
        model, name, beta = quantize_model(gemm_model(trans_b=int(layer != "gemm"))), "fc", 1.0
    QuantizeBiasPass()(model)
    if layer == "gemm_beta":
        beta = 2.0
        next(n for n in model.graph if n.name == name).attributes["beta"] = ir.AttrFloat32("beta", beta)
    return model, name, beta


@pytest.mark.parametrize("layer", ["conv", "gemm", "gemm_transB", "gemm_beta"])
def test_fold_into_int32_codes_equals_an_add_after_the_layer(layer):
    model, name, beta = int32_model(layer)
    dq = bias_dequantize(model, name)
    codes, scale = dq.inputs[0].const_value.numpy().copy(), dq.inputs[1].const_value.numpy().astype(np.float64)
    channels = codes.size
    delta = np.random.default_rng(3).standard_normal(channels) * 0.1
    reference = add_after(model_io.to_proto(model), name, delta, (channels, 1, 1) if layer == "conv" else (channels,))
    ops = [n.op_type for n in model.graph]

    result = FoldBiasPass({name: BiasFold(name, delta, 1)})(model)
    assert result.sites == {name: "Conv B (int32)" if layer == "conv" else "Gemm C (int32)"}
    assert [n.op_type for n in model.graph] == ops  # no new node
    assert bias_dequantize(model, name) is dq
    np.testing.assert_array_equal(dq.inputs[0].const_value.numpy(), codes + np.rint(delta / (beta * scale)))
    proto = model_io.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    inputs = feeds(model)
    assert_within_half_step(run(proto, inputs)[0], run(reference, inputs)[0], beta * scale)
    np.testing.assert_allclose(
        run(proto, inputs)[0], onnx.reference.ReferenceEvaluator(proto).run(None, inputs)[0], atol=1e-5
    )


def test_delta_overflowing_int32_falls_back_to_an_add():
    model, name, _ = int32_model("conv")
    dq = bias_dequantize(model, name)
    codes = dq.inputs[0].const_value.numpy().copy()
    delta = np.array([0.1, -0.2, 1e7, 0.0])  # 1e7 / s_b leaves int32
    reference = add_after(model_io.to_proto(model), name, delta, (4, 1, 1))
    result = FoldBiasPass({name: BiasFold(name, delta, 1)})(model)
    assert result.sites == {name: "new Add (int32 Conv B would overflow)"}
    np.testing.assert_array_equal(dq.inputs[0].const_value.numpy(), codes)  # untouched
    assert [n.op_type for n in model.graph].count("Add") == 1
    assert [o.name for o in model.graph.outputs] == ["y1"]
    inputs = feeds(model)
    np.testing.assert_allclose(run(model, inputs)[0], run(reference, inputs)[0], rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("shared", ["dequantized", "codes"])
def test_shared_int32_bias_is_copied_before_folding(shared):
    """'c2' reads c1's dequantized bias, or its own DequantizeLinear of c1's codes: folding into 'c1' leaves
    'c2' as it was."""
    model = quantize_model(conv_model(shared="input"))
    QuantizeBiasPass()(model)
    c2 = next(n for n in model.graph if n.name == "c2")
    dq, unused = bias_dequantize(model, "c1"), bias_dequantize(model, "c2")
    if shared == "dequantized":
        c2.replace_input_with(2, dq.outputs[0])
    else:
        own = ir.node("DequantizeLinear", list(dq.inputs), attributes={"axis": 0}, name="c2_bias_dq")
        own.outputs[0].name = "c2_bias"
        model.graph.insert_before(c2, [own])
        c2.replace_input_with(2, own.outputs[0])
    unused_inputs = list(unused.inputs)
    model.graph.remove(unused, safe=True)
    for value in unused_inputs:
        model.graph.initializers.pop(value.name)
    shared_codes = dq.inputs[0]
    codes = shared_codes.const_value.numpy().copy()
    inputs = feeds(model)
    before = run(model, inputs)
    delta = np.array([0.3, -0.2, 0.1, 0.05])

    result = FoldBiasPass({"c1": BiasFold("c1", delta, 1)})(model)
    assert result.sites == {"c1": "Conv B (int32)"}
    np.testing.assert_array_equal(shared_codes.const_value.numpy(), codes)  # the shared codes are unchanged
    new_codes = bias_dequantize(model, "c1").inputs[0]
    assert new_codes is not shared_codes and new_codes.name.endswith("_compensated")
    scale = dq.inputs[1].const_value.numpy().astype(np.float64)
    np.testing.assert_array_equal(new_codes.const_value.numpy(), codes + np.rint(delta / scale))
    onnx.checker.check_model(model_io.to_proto(model), full_check=True)
    after = run(model, inputs)
    np.testing.assert_array_equal(after[1], before[1])  # the other reader is unchanged
    assert_within_half_step(after[0], before[0] + delta.reshape(1, 4, 1, 1), scale)
