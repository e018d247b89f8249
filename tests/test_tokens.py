"""Padded token inputs (``onnxbc.calibration.tokens``): statistics and output comparisons count real tokens only."""

import json

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_segments import _assert_same as assert_same  # every number two runs of the same probes gathered

from onnxbc import compress
from onnxbc.calibration import tokens
from onnxbc.calibration.collector import collect
from onnxbc.calibration.data import input_specs, open_data
from onnxbc.calibration.probes import ChannelTrialProbe, LayerErrorProbe, MomentsProbe, OutputPowerProbe, RangeProbe
from onnxbc.calibration.session import SessionFactory
from onnxbc.compare import compare_sessions
from onnxbc.options import CompressOptions, DataOptions, Device
from onnxbc.plan import QuantPlan, Smoothing, WeightQuant
from onnxbc.quantizers import activation_quant
from onnxbc.solvers.quant import INT4, Granularity, quantize, weight_scale
from onnxbc.targets import find_targets

N, T, D = 12, 10, 16
RNG = np.random.default_rng(0)


@pytest.mark.parametrize(
    ("name", "dtype", "shape", "found"),
    [
        ("attention_mask", "int64", ("batch", 64), True),
        ("input_mask", "int32", (1, 128), True),
        ("padding_mask", "bool", ("b", "t"), True),
        ("AttentionMask", "uint8", (None, None), True),
        ("attention_mask", "float32", ("batch", 64), False),  # additive masks: 0 is where tokens count
        ("attention_mask", "int64", ("batch", 1, 1, 64), False),
        ("mask", "int64", ("batch", 64), False),
        ("input_ids", "int64", ("batch", 64), False),
    ],
)
def test_what_counts_as_a_padding_mask(name, dtype, shape, found):
    assert tokens.is_mask(name, dtype, shape) is found


def test_tensors_indexed_like_the_mask():
    mask = ("batch", 64)
    assert tokens.covers(mask, ("batch", 64, 384))
    assert tokens.covers(mask, ("batch", 64, 12, 32))
    assert not tokens.covers(mask, ("batch", 12, 64, 64))  # attention scores: heads second
    assert not tokens.covers(mask, ("batch", 64))  # no axis after the tokens
    assert not tokens.covers(mask, ("n", 64, 384))
    assert not tokens.covers((None, 64), (None, 64, 384))  # unknown sizes are not known to agree
    assert not tokens.covers(mask, None)


def _model(mask_name="attention_mask", mask_type=TensorProto.INT64):
    """y = (x @ W1) @ W2 over x[N, T, D]; the output is the masked mean over tokens (as a sentence encoder)."""
    inits = [
        numpy_helper.from_array((RNG.standard_normal((D, D)) / 4).astype(np.float32), "w1"),
        numpy_helper.from_array((RNG.standard_normal((D, D)) / 4).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("MatMul", ["h", "w2"], ["y"], name="mm2"),
        helper.make_node("Cast", [mask_name], ["m"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "minus"], ["m3"], name="unsq"),
        helper.make_node("Mul", ["y", "m3"], ["ym"], name="mul"),
        helper.make_node("ReduceSum", ["ym", "one"], ["s"], name="sum", keepdims=0),
        helper.make_node("ReduceSum", ["m3", "one"], ["c"], name="count", keepdims=0),
        helper.make_node("Div", ["s", "c"], ["pooled"], name="div"),
    ]
    inits.append(numpy_helper.from_array(np.array([-1], np.int64), "minus"))
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", T, D]),
            helper.make_tensor_value_info(mask_name, mask_type, ["batch", T]),
        ],
        [
            helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", D]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", T, D]),
        ],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    return onnx.shape_inference.infer_shapes(proto)


def _feeds(padding, mask_name="attention_mask"):
    """Real tokens first (1 to T of them per sample), then ``padding`` (a number or 'noise') at the rest."""
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, T + 1, N)
    real = np.arange(T)[None, :] < lengths[:, None]
    x = rng.standard_normal((N, T, D)).astype(np.float32)
    pad = 50 * rng.standard_normal((N, T, D)) if padding == "noise" else np.full((N, T, D), padding)
    return {"x": np.where(real[..., None], x, pad).astype(np.float32), mask_name: real.astype(np.int64)}, real


def _data(tmp_path, model, feeds, tag):
    np.savez(tmp_path / f"{tag}.npz", **feeds)
    options = DataOptions(path=tmp_path / f"{tag}.npz", holdout_fraction=0.25, batch_size=4)
    return open_data(options, input_specs(model))


def _probes(model, ranges=None):
    targets = find_targets(model).targets
    if ranges is None:
        return [RangeProbe(n, -1, channel_histograms=True) for n in ("x", "h")] + [
            MomentsProbe("x", D),
            *(OutputPowerProbe(t) for t in targets),
        ]
    plan = QuantPlan()
    for t in targets:
        w = t.weight.source.const_value.numpy()
        gran = Granularity(t.weight.channel_axis)
        s = weight_scale(w, INT4, gran, "minmax")
        plan.weights[t.weight.source.name] = WeightQuant(
            t.weight.source.name, quantize(w, s, INT4, gran), s, gran, 4, "minmax"
        )
        name = t.node.inputs[0].name
        plan.activations[name] = activation_quant(name, ranges[name].hist, ranges[name].dtype, CompressOptions())
    return [LayerErrorProbe(t, plan) for t in targets]


@pytest.mark.parametrize("segments", [None, 2])
def test_statistics_do_not_see_what_is_at_padded_positions(tmp_path, segments):
    """The same real tokens with zeros or loud noise at the padding: every statistic of both passes is the same,
    and counts only the real tokens."""
    model = ir.serde.deserialize_model(_model())
    runs = {}
    for padding in (0.0, "noise"):
        feeds, real = _feeds(padding)
        data = _data(tmp_path, model, feeds, str(padding))
        first = _probes(model)
        collect(model, first, data, SessionFactory(Device.CPU), segments=segments)
        second = _probes(model, {p.value: p for p in first if isinstance(p, RangeProbe)})
        collect(model, second, data, SessionFactory(Device.CPU), splits=("fit", "holdout"), segments=segments)
        runs[padding] = first + second
    assert_same(*runs.values())
    fit = 9  # 75 % of 12 samples
    x_real = feeds["x"][:fit][real[:fit]]
    ranges = runs["noise"][0]
    assert ranges.hist.max == pytest.approx(float(np.abs(x_real).max()))
    np.testing.assert_allclose(ranges.channel_power(), (x_real.astype(np.float64) ** 2).mean(axis=0), rtol=1e-5)
    moments = runs["noise"][2]
    assert moments.moments.count == int(real[:fit].sum())
    errors = runs["noise"][-1].moments
    assert errors["fit"].count == int(real[:fit].sum())
    assert errors["holdout"].count == int(real[fit:].sum())


def _shadows_at_noisy_padding(tmp_path):
    """The model, its data with loud noise at the padding, the padding mask, and a shadow of each layer quantized
    with ranges from the first pass."""
    model = ir.serde.deserialize_model(_model())
    feeds, real = _feeds("noise")
    data = _data(tmp_path, model, feeds, "noise")
    first = _probes(model)
    collect(model, first, data, SessionFactory(Device.CPU))
    return model, data, real, _probes(model, {p.value: p for p in first if isinstance(p, RangeProbe)})


def test_a_trial_of_a_few_channels_counts_the_real_tokens_only(tmp_path):
    """A trial measuring a third of a layer's output channels alone (``ChannelTrialProbe``) masks the padding as the
    whole trial does: the same sums once completed from the shadow, counted at the real tokens."""
    model, data, real, shadows = _shadows_at_noisy_padding(tmp_path)
    shadow = next(p for p in shadows if p.target.name == "mm1")
    wq = shadow.plan.weights["w1"]
    scale = wq.scale.copy()
    scale[: D // 3] *= 0.7
    w = shadow.target.weight.source.const_value.numpy()
    trial = QuantPlan(
        weights={"w1": WeightQuant("w1", quantize(w, scale, INT4, wq.granularity), scale, wq.granularity, 4, "minmax")},
        activations=shadow.plan.activations,
    )
    partial = ChannelTrialProbe(shadow.target, trial, shadow, np.arange(D // 3))
    whole = LayerErrorProbe(shadow.target, trial)
    collect(model, [shadow, partial, whole], data, SessionFactory(Device.CPU), splits=("fit", "holdout"))
    partial.complete()
    for split in ("fit", "holdout"):
        a, b = partial.moments[split], whole.moments[split]
        assert a.count == b.count == int(real[:9].sum() if split == "fit" else real[9:].sum())
        for x, y in ((a.sum_d, b.sum_d), (a.sum_d2, b.sum_d2), (a.sum_y2, b.sum_y2)):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6 * np.abs(y).max())


def test_mean_errors_from_input_sums_leave_out_the_padding_of_a_smoothed_input_too(tmp_path):
    """A linear layer's fit-split error from its inputs' row sums (``LayerErrorProbe.means``) counts the real tokens of
    the quantized input too when that input, divided by smoothing factors, has no known shape: the whole shadow's
    summed error, with loud noise at the padding."""
    model, data, real, plain = _shadows_at_noisy_padding(tmp_path)
    target = plain[0].target
    factors = np.linspace(0.5, 2.0, D).astype(np.float32)
    w = target.weight.source.const_value.numpy() * factors[:, None]
    gran = Granularity(target.weight.channel_axis)
    scale = weight_scale(w, INT4, gran, "minmax")
    smoothed = QuantPlan(
        weights={"w1": WeightQuant("w1", quantize(w, scale, INT4, gran), scale, gran, 4, "minmax")},
        activations=plain[0].plan.activations,
        smoothing={"x": Smoothing("x", factors, -1, 0.5)},
    )
    for plan in (plain[0].plan, smoothed):
        shadow, whole = LayerErrorProbe(target, plan), LayerErrorProbe(target, plan)
        collect(model, [shadow.means(), whole], data, SessionFactory(Device.CPU), splits=("fit",))
        a, b = shadow.moments["fit"], whole.moments["fit"]
        assert a.means_only and a.count == b.count == int(real[:9].sum())
        np.testing.assert_allclose(a.sum_d, b.sum_d, rtol=1e-4, atol=1e-5 * np.abs(b.sum_d).max())


def test_without_a_recognized_mask_every_position_counts(tmp_path):
    proto = _model(mask_name="mask")
    model = ir.serde.deserialize_model(proto)
    feeds, real = _feeds("noise", mask_name="mask")
    probe = RangeProbe("x", -1)
    collect(model, [probe], _data(tmp_path, model, feeds, "m"), SessionFactory(Device.CPU))
    assert probe.hist.max > 10 * float(np.abs(feeds["x"][real]).max())


def _with_noise_at_padding(proto):
    """The model whose output ``y`` differs from ``proto``'s only at padded positions."""
    changed = onnx.ModelProto()
    changed.CopyFrom(proto)
    g = changed.graph
    for node in g.node:
        node.output[:] = ["y_inner" if o == "y" else o for o in node.output]
        node.input[:] = ["y_inner" if i == "y" else i for i in node.input]
    g.initializer.append(numpy_helper.from_array(np.float32(7.0), "seven"))
    g.node.extend(
        [
            helper.make_node("Sub", ["one_f", "m3"], ["pad"], name="pad"),
            helper.make_node("Mul", ["pad", "seven"], ["noise"], name="noise"),
            helper.make_node("Add", ["y_inner", "noise"], ["y"], name="y"),
        ]
    )
    g.initializer.append(numpy_helper.from_array(np.float32(1.0), "one_f"))
    return changed


def test_outputs_are_compared_at_real_tokens(tmp_path):
    proto = _model()
    feeds, _ = _feeds(0.0)
    ref = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    test = ort.InferenceSession(_with_noise_at_padding(proto).SerializeToString(), providers=["CPUExecutionProvider"])
    stats = compare_sessions(ref, test, [feeds])
    assert stats["y"].err2 == 0.0  # the only difference is at padding
    assert stats["pooled"].err2 == 0.0
    y = ref.run(["y"], feeds)[0]
    assert stats["y"].ref2 == pytest.approx(float((y[feeds["attention_mask"].astype(bool)] ** 2).sum()), rel=1e-6)


def test_compress_reports_the_mask_and_keeps_padding_out_of_the_ranges(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_model(), path)
    feeds, real = _feeds("noise")
    np.savez(tmp_path / "d.npz", **feeds)
    out = tmp_path / "q.onnx"
    compress(path, out, data=DataOptions(path=tmp_path / "d.npz"), options=CompressOptions(device=Device.CPU))
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["data"]["token_mask"] == "attention_mask"
    (x,) = [a for layer in report["layers"] if layer["name"] == "mm1" for a in layer["activations"]]
    assert x["amax"] <= float(np.abs(feeds["x"][real]).max()) + 1e-6  # the noise at padding reaches ~200
