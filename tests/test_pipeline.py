"""compress end to end on the zoo: outputs run in ONNX Runtime, stay close to FP32, and are reported."""

import functools
import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

import onnxbc
from models import test_graphs
from onnxbc import model_io, pipeline, validate
from onnxbc.calibration.collector import calibration_graph, collect
from onnxbc.calibration.data import input_specs, open_data
from onnxbc.calibration.probes import (
    ChannelTrialProbe,
    LayerErrorProbe,
    MeanErrorProbe,
    RangeProbe,
    activation_after,
    by_channel,
)
from onnxbc.calibration.session import SessionFactory
from onnxbc.options import ActivationType, BiasCorrection, CompressOptions, DataOptions, Rounding, WeightType
from onnxbc.passes.prepare import prepare_passes
from onnxbc.plan import ActivationQuant, QuantPlan, WeightQuant
from onnxbc.solvers.quant import INT4, INT8, Granularity, dequantize, quantize, weight_scale
from onnxbc.targets import find_targets
from onnxbc.variants import Variant, VariantKind, trial_probes

FLOAT_GRAPHS = test_graphs.names(quantized=False)


def rel_mse(ref, out):
    return float(np.sum((ref.astype(np.float64) - out) ** 2) / np.sum(ref.astype(np.float64) ** 2))


def run(path, feeds, exact=False):
    """``exact``: ONNX Runtime computes what the graph says (its QDQ fusions into integer kernels off)."""
    options = ort.SessionOptions()
    if exact:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", FLOAT_GRAPHS)
def test_compress_every_float_graph(zoo, tmp_path, name):
    """W8A8 output stays within 0.2% relative MSE of FP32 on samples it was not calibrated on (seed 99),
    as the graph defines it; ONNX Runtime's default session (fused integer kernels, which saturate on
    x86 CPUs without VNNI) runs it within 3%. The input file is untouched."""
    path, data, graph = zoo(name)
    before = digest(path)
    result = onnxbc.compress(path, tmp_path / "out.onnx", data=DataOptions(path=data))
    assert digest(path) == before
    proto = onnx.load(result.output)
    ops = {n.op_type for n in proto.graph.node}
    assert "DequantizeLinear" in ops or any(n.op_type in ("If", "Loop") for n in proto.graph.node)
    feeds = graph.feeds(8, 99) if graph.batched else graph.feeds(1, 99)
    ref = run(path, feeds)
    for r, exact, fused in zip(ref, run(result.output, feeds, exact=True), run(result.output, feeds)):
        if np.issubdtype(r.dtype, np.floating):
            assert rel_mse(r, exact) < 2e-3, name
            assert rel_mse(r, fused) < 3e-2, name
    report = json.loads(result.report_path.read_text())
    assert report["schema"] == "onnxbc.report/1"
    assert report["output"]["bytes"] == model_io.file_bytes(result.output)
    for layer in report["layers"]:
        assert layer["status"] == "quantized" or layer["reason"], layer


@pytest.mark.parametrize(
    "options",
    [
        CompressOptions(weights=WeightType.INT4),
        CompressOptions(weights=WeightType.INT4, block_size=16, activations=ActivationType.NONE),
        CompressOptions(weights=WeightType.INT3, activations=ActivationType.NONE),
        CompressOptions(activations=ActivationType.NONE),
        CompressOptions(weights=WeightType.NONE),
        CompressOptions(per_tensor_weights=True, bias_correction=BiasCorrection.NONE),
        CompressOptions(reduce_range=True),
    ],
    ids=["w4a8", "w4-block16", "w3", "w8", "a8", "per-tensor", "reduce-range"],
)
@pytest.mark.parametrize("name", ["matmul_add", "conv", "tied_embedding"])
def test_compress_settings(zoo, tmp_path, name, options):
    path, data, graph = zoo(name, samples=40)
    result = onnxbc.compress(path, tmp_path / "out.onnx", data=DataOptions(path=data), options=options)
    feeds = graph.feeds(8, 99)
    for r, o in zip(run(path, feeds), run(result.output, feeds, exact=True)):
        if np.issubdtype(r.dtype, np.floating):
            assert rel_mse(r, o) < {WeightType.INT4: 0.05, WeightType.INT3: 0.15}.get(options.weights, 5e-3)
    quantized = [layer for layer in result.report.layers if layer.status == "quantized"]
    assert quantized
    for layer in quantized:
        if options.weights is WeightType.NONE:
            assert layer.weight is None
        else:
            expected = {WeightType.INT4: 4, WeightType.INT3: 3, WeightType.INT8: 7 if options.reduce_range else 8}
            assert layer.weight["bits"] == expected[options.weights]
            assert layer.weight["stored_bits"] == (8 if options.weights is WeightType.INT8 else 4)
    if options.weights in (WeightType.INT4, WeightType.INT3):
        assert onnx.load(result.output).opset_import[0].version >= 21


def test_layer_error_probe_matches_numpy_at_padded_borders(tmp_path):
    """Per-channel mean output error of a padded, strided conv with int4 weights, from in-graph
    reductions, against numpy computing the same convolution directly."""
    path = test_graphs.save(test_graphs.build("conv_nobias"), tmp_path / "m.onnx")
    model = prepare_passes(21)(model_io.load(path)).model
    targets = find_targets(model)
    target = next(t for t in targets.targets if t.name == "conv2")  # stride 2, pads 1
    first = next(t for t in targets.targets if t.name == "conv1")
    plan = QuantPlan()
    w = target.weight.source.const_value.numpy()
    gran = Granularity(0)
    s = weight_scale(w, INT4, gran, "minmax")
    plan.weights[target.weight.source.name] = WeightQuant(
        target.weight.source.name, quantize(w, s, INT4, gran), s, gran, 4, "minmax"
    )
    x = test_graphs.build("conv_nobias").feeds(6, 3)["x"]
    np.savez(tmp_path / "d.npz", x=x)
    data = open_data(DataOptions(path=tmp_path / "d.npz", holdout_fraction=0.0, batch_size=4), input_specs(model))
    probe = LayerErrorProbe(target, plan)
    collect(model, [probe], data, SessionFactory())

    def conv(inp, weight, stride, pad):
        inp = np.pad(inp, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        k = weight.shape[-1]
        out_hw = (inp.shape[-1] - k) // stride + 1
        out = np.zeros((inp.shape[0], weight.shape[0], out_hw, out_hw))
        for i in range(out_hw):
            for j in range(out_hw):
                patch = inp[:, :, i * stride : i * stride + k, j * stride : j * stride + k]
                out[:, :, i, j] = np.einsum("nchw,ochw->no", patch, weight)
        return out

    h = np.maximum(conv(x, first.weight.source.const_value.numpy(), 1, 1), 0)
    d = conv(h, w, 2, 1) - conv(h, dequantize(quantize(w, s, INT4, gran), s, gran), 2, 1)
    moments = probe.moments["fit"]
    np.testing.assert_allclose(moments.mean_error(), d.mean(axis=(0, 2, 3)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(moments.mse(), np.mean(d**2), rtol=1e-4)
    assert moments.mse(moments.mean_error()) <= moments.mse()


@pytest.mark.parametrize("graph, fitted", [("gelu_mlp", set()), ("gemm", {"fc1", "fc2"})])
def test_compensation_is_measured_and_reported(zoo, tmp_path, graph, fitted):
    path, data, _ = zoo(graph, samples=64)
    result = onnxbc.compress(
        path,
        tmp_path / "o.onnx",
        data=DataOptions(path=data),
        options=CompressOptions(weights=WeightType.INT4),
    )
    comp = result.report.compensation
    assert {"applied", "output_rel_mse_without", "output_rel_mse_with", "decided_on"} <= set(comp)
    assert comp["decided_on"] == "holdout"
    assert comp["applied"] == (comp["output_rel_mse_with"] < comp["output_rel_mse_without"])
    assert comp["output_rel_mse"] == min(comp["candidates"].values())
    # a layer no activation follows (gelu_mlp's: an Add comes first) gets its mean error alone from the fit samples
    assert {layer.name for layer in result.report.layers if "fit" in layer.error} == fitted
    for layer in result.report.layers:
        assert layer.error["holdout"]["rel_mse_before"] > 0
        if layer.name in fitted:
            fit = layer.error["fit"]
            assert fit["rel_mse_after"] <= fit["rel_mse_before"] * (1 + 1e-9)  # never worse on fitted data


def test_attention_key_projection_gets_no_bias(zoo, tmp_path):
    path, data, _ = zoo("attention", samples=40)
    result = onnxbc.compress(path, tmp_path / "o.onnx", data=DataOptions(path=data))
    layers = {r.name: r for r in result.report.layers}
    assert "softmax ignores" in layers["attn.k_proj/MatMul"].bias["reason"]
    q = layers["attn.q_proj/MatMul"].bias
    assert q["delta_norm"] > 0 and (q["site"] is not None) == q["applied"]  # a site only where the bias was folded


def test_random_data_warns_and_default_names(tmp_path):
    path = test_graphs.save(test_graphs.build("gemm"), tmp_path / "g.onnx")
    result = onnxbc.compress(path, data=DataOptions(random=True, samples=32))
    assert result.output == tmp_path / "g.int8.onnx" and result.report_path == tmp_path / "g.int8.report.json"
    assert any("random data" in w for w in result.report.warnings)
    result = onnxbc.compress(
        path,
        data=DataOptions(random=True, samples=32),
        options=CompressOptions(weights=WeightType.INT4, activations=ActivationType.NONE),
    )
    assert result.output.name == "g.w4.onnx"


def test_failures_leave_nothing_behind(zoo, tmp_path):
    path, _, graph = zoo("conv")
    feeds = graph.feeds(8, 0)
    feeds["x"][3, 0, 0, 0] = np.inf
    np.savez(tmp_path / "bad.npz", **feeds)
    with pytest.raises(onnxbc.UsageError, match="NaN or Inf"):
        onnxbc.compress(path, tmp_path / "out.onnx", data=DataOptions(path=tmp_path / "bad.npz"))
    assert not (tmp_path / "out.onnx").exists() and not (tmp_path / "out.report.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_device_cuda_without_cuda_is_an_error(zoo, tmp_path):
    from onnxbc.calibration.session import cuda_works

    if cuda_works():
        pytest.skip("CUDA works here")
    path, data, _ = zoo("conv")
    with pytest.raises(onnxbc.OnnxbcError, match="--device cuda") as e:
        onnxbc.compress(
            path,
            tmp_path / "o.onnx",
            data=DataOptions(path=data),
            options=CompressOptions(device=onnxbc.Device.CUDA),
        )
    assert e.value.exit_code == 1 and not (tmp_path / "o.onnx").exists()


@pytest.mark.gpu
def test_cuda_calibration_reports_cuda(zoo, tmp_path):
    path, data, _ = zoo("conv")
    result = onnxbc.compress(
        path,
        tmp_path / "o.onnx",
        data=DataOptions(path=data),
        options=CompressOptions(device=onnxbc.Device.CUDA),
    )
    assert result.report.device == "cuda"


@pytest.mark.parametrize("name", ["conv", "reshape_weight", "matmul_add", "gemm"])
def test_tensorrt_int4_only_where_tensorrt_runs_it(zoo, tmp_path, name):
    """TensorRT runs int4 weight-only MatMul/Gemm in blocks along one of the weight's last two axes; other
    weights stay float with a reason, and the output passes the TensorRT profile (compress checks it)."""
    path, data, _ = zoo(name)
    options = CompressOptions(
        weights=WeightType.INT4, block_size=64, activations=ActivationType.NONE, target=onnxbc.Target.TENSORRT
    )
    if name in ("conv", "reshape_weight"):  # no weight TensorRT can take in int4: nothing to do, and it says why
        with pytest.raises(onnxbc.OnnxbcError, match="nothing to quantize with these options .*TensorRT"):
            onnxbc.compress(path, tmp_path / "o.onnx", data=DataOptions(path=data), options=options)
        assert not (tmp_path / "o.onnx").exists()
        return
    result = onnxbc.compress(path, tmp_path / "o.onnx", data=DataOptions(path=data), options=options)
    for layer in result.report.layers:
        if layer.op in ("Conv", "ConvTranspose") or name == "reshape_weight":
            assert layer.status == "skipped" and "TensorRT" in layer.reason
        elif layer.kind == "weighted":
            assert layer.weight["granularity"] == "block64"


def test_tensorrt_refuses_int8_blocks():
    with pytest.raises(onnxbc.UsageError, match="blocks only for int4"):
        CompressOptions(block_size=64, target=onnxbc.Target.TENSORRT)


def test_range_probe_channel_power_and_error_after_activation(tmp_path):
    """Pass-1 per-channel input power equals numpy's; a layer feeding one ReLU gets its error moments after
    the ReLU too, equal to numpy's on the same data."""
    path = test_graphs.save(test_graphs.build("conv_nobias"), tmp_path / "m.onnx")
    model = prepare_passes(21)(model_io.load(path)).model
    targets = find_targets(model)
    first = next(t for t in targets.targets if t.name == "conv1")
    x = test_graphs.build("conv_nobias").feeds(6, 3)["x"]
    np.savez(tmp_path / "d.npz", x=x)
    data = open_data(DataOptions(path=tmp_path / "d.npz", holdout_fraction=0.0, batch_size=4), input_specs(model))
    w = first.weight.source.const_value.numpy()
    gran = Granularity(0)
    s = weight_scale(w, INT4, gran, "minmax")
    plan = QuantPlan(
        weights={
            first.weight.source.name: WeightQuant(
                first.weight.source.name, quantize(w, s, INT4, gran), s, gran, 4, "minmax"
            )
        }
    )
    ranges = RangeProbe("x", channel_axis=1)
    errors = LayerErrorProbe(first, plan)
    collect(model, [ranges, errors], data, SessionFactory())
    np.testing.assert_allclose(
        ranges.channel_power(), np.mean(np.square(x.astype(np.float64)), axis=(0, 2, 3)), rtol=1e-6
    )
    assert first.node.outputs[0].uses()[0].node.op_type == "Relu" and errors.after is not None

    quant_w = dequantize(quantize(w, s, INT4, gran), s, gran)
    after = np.maximum(_conv2d(x, w, pad=1), 0) - np.maximum(_conv2d(x, quant_w, pad=1), 0)
    np.testing.assert_allclose(errors.after["fit"].mean_error(), after.mean(axis=(0, 2, 3)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(errors.after["fit"].mse(), np.mean(after**2), rtol=1e-4)
    assert errors.after["fit"].mse() <= errors.moments["fit"].mse()  # the ReLU drops errors of negative outputs


def test_probes_reading_one_input_share_its_quantizer(tmp_path):
    """A layer's shadow and its trials read its input fake-quantized by one QuantizeLinear (pass 2 computes it
    once, not once per probe), and each probe's error moments are exactly those it gets measured alone."""
    path = test_graphs.save(test_graphs.build("conv_nobias"), tmp_path / "m.onnx")
    model = prepare_passes(21)(model_io.load(path)).model
    first = next(t for t in find_targets(model).targets if t.name == "conv1")
    np.savez(tmp_path / "d.npz", x=test_graphs.build("conv_nobias").feeds(6, 3)["x"])
    data = open_data(DataOptions(path=tmp_path / "d.npz", holdout_fraction=0.0, batch_size=4), input_specs(model))
    w, gran, source = first.weight.source.const_value.numpy(), Granularity(0), first.weight.source.name
    aq = ActivationQuant("x", 0.02, 0, np.dtype(np.int8), 2.54, "minmax")
    plans = []
    for method in ("minmax", "mse"):
        s = weight_scale(w, INT4, gran, method)
        wq = WeightQuant(source, quantize(w, s, INT4, gran), s, gran, 4, method)
        plans.append(QuantPlan(weights={source: wq}, activations={"x": aq}))
    together = [LayerErrorProbe(first, plan) for plan in plans]
    graph = calibration_graph(model, together).model.graph
    assert [n.inputs[0].name for n in graph if n.op_type == "QuantizeLinear"] == ["x"]
    collect(model, together, data, SessionFactory())
    for probe, plan in zip(together, plans, strict=True):
        alone = LayerErrorProbe(first, plan)
        collect(model, [alone], data, SessionFactory())
        for field in ("sum_d", "sum_d2", "sum_y2"):
            np.testing.assert_array_equal(getattr(probe.moments["fit"], field), getattr(alone.moments["fit"], field))
    assert together[0].moments["fit"].mse() != together[1].moments["fit"].mse()


def test_a_trial_quantizing_a_layer_as_its_shadow_does_is_that_shadow(tmp_path):
    """Pass 2 measures a layer once when a variant quantizes it exactly as the plan does (min-max scales equal to
    the search's, as separate arrays): the variant's probe is the shadow; other scales or another input quantizer
    get probes of their own."""
    path = test_graphs.save(test_graphs.build("conv_nobias"), tmp_path / "m.onnx")
    model = prepare_passes(21)(model_io.load(path)).model
    first = next(t for t in find_targets(model).targets if t.name == "conv1")
    w, gran, source = first.weight.source.const_value.numpy(), Granularity(0), first.weight.source.name

    def plan(scale, aq_scale=0.02):
        wq = WeightQuant(source, quantize(w, scale, INT4, gran), scale.copy(), gran, 4, "minmax")
        return QuantPlan(weights={source: wq}, activations={"x": ActivationQuant("x", aq_scale, 0, np.int8, 1.0, "m")})

    s = weight_scale(w, INT4, gran, "minmax")
    shadow = LayerErrorProbe(first, plan(s))
    alike, wider, other_input = plan(s), plan(s * 1.5), plan(s, aq_scale=0.03)
    variants = [Variant(VariantKind.WEIGHT_RANGE, source, "minmax", p, ("conv1",)) for p in (alike, wider, other_input)]
    trials = trial_probes(variants, {"conv1": first}, False, {"conv1": shadow})
    assert trials[0] == [shadow]
    assert all(trials[i][0] is not shadow and trials[i][0].plan is p for i, p in ((1, wider), (2, other_input)))
    assert trial_probes(variants, {"conv1": first}, False)[0][0] is not shadow  # no shadows given: its own


@pytest.mark.parametrize("graph", ["conv", "gemm", "matmul_add", "hardswish_cnn"])
def test_a_trial_changing_a_few_channels_measures_those_alone_with_the_whole_trials_sums(tmp_path, graph):
    """A variant whose weight scales differ from the plan's on a third of a layer's output channels gets a trial
    of those channels alone (``ChannelTrialProbe``); completed from the shadow, its sums on both splits are the
    whole trial's (also after the activation the layer feeds); half the channels or more: a whole trial."""
    g = test_graphs.build(graph)
    model = prepare_passes(21)(model_io.load(test_graphs.save(g, tmp_path / "m.onnx"))).model
    data = open_data(DataOptions(source=g.feeds(24, 0), batch_size=8, holdout_fraction=0.3), input_specs(model))
    checked = 0
    for t in find_targets(model).targets:
        if t.weight is None or not by_channel(t):
            continue
        w, gran, source = t.weight.source.const_value.numpy(), Granularity(t.weight.channel_axis), t.weight.source.name
        x = t.node.inputs[t.activation_inputs[0]].name

        def plan(scale, w=w, gran=gran, source=source, x=x):
            wq = WeightQuant(source, quantize(w, scale, INT8, gran), scale.copy(), gran, 8, "minmax")
            aq = ActivationQuant(x, 0.02, 0, np.dtype(np.int8), 2.54, "m")
            return QuantPlan(weights={source: wq}, activations={x: aq})

        s = weight_scale(w, INT8, gran, "minmax")
        few, most = s.copy(), s.copy()
        few[: len(s) // 3] *= 0.7
        most[: len(s) // 2 + 1] *= 0.7
        shadow = LayerErrorProbe(t, plan(s))
        variants = [Variant(VariantKind.WEIGHT_RANGE, source, "minmax", plan(v), (t.name,)) for v in (few, most)]
        trials = trial_probes(variants, {t.name: t}, False, {t.name: shadow})
        partial, whole_most = trials[0][0], trials[1][0]
        assert isinstance(partial, ChannelTrialProbe) and list(partial.channels) == list(range(len(s) // 3))
        assert type(whole_most) is LayerErrorProbe
        whole = LayerErrorProbe(t, variants[0].plan)
        collect(model, [shadow, partial, whole], data, SessionFactory(), splits=("fit", "holdout"))
        partial.complete()
        assert (partial.after is None) == (whole.after is None)
        for mine, theirs in ((partial.moments, whole.moments), (partial.after, whole.after)):
            for split in ("fit", "holdout") if mine is not None else ():
                a, b = mine[split], theirs[split]
                assert a.count == b.count > 0
                for x_, y_ in ((a.sum_d, b.sum_d), (a.sum_d2, b.sum_d2), (a.sum_y2, b.sum_y2)):
                    np.testing.assert_allclose(x_, y_, rtol=1e-5, atol=1e-6 * np.abs(y_).max())
        checked += 1
    assert checked


def _conv2d(inp, weight, pad):
    inp = np.pad(inp.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = weight.shape[-1]
    out_hw = inp.shape[-1] - k + 1
    out = np.zeros((inp.shape[0], weight.shape[0], out_hw, out_hw))
    for i in range(out_hw):
        for j in range(out_hw):
            out[:, :, i, j] = np.einsum("nchw,ochw->no", inp[:, :, i : i + k, j : j + k], weight)
    return out


def test_minmax_alternative_is_measured_end_to_end_and_records_follow_the_saved_model(tmp_path):
    """W4A8 on the bundled CNN with --weight-range auto: the model with every mse-scaled weight switched to
    min-max (compensated) is one more candidate; the least held-out error wins, and the report's layers and the
    saved scales agree with the winner. (Every weight at int4, rounded to nearest: the candidates without the
    weights kept at 8 bits and without GPTQ are tested in test_candidates.)"""
    data = DataOptions(path=Path("models/data/fashion_calib.npz"))
    strict = tmp_path / "strict.toml"
    strict.write_text('[[layer]]\npattern = ".*"\nbits = 4\n')
    options = CompressOptions(weights=WeightType.INT4, rounding=Rounding.NEAREST, policy=strict)
    result = onnxbc.compress("models/fashion_cnn.onnx", tmp_path / "o.onnx", data=data, options=options)
    comp = result.report.compensation
    errors = comp["candidates"]
    assert set(errors) == {"without_compensation", "with_compensation", "minmax_with_compensation"}
    assert comp["chosen"] == min(errors, key=errors.get)
    model = onnx.load(result.output)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    for layer in result.report.layers:
        weight = layer.weight
        chosen = result.report.weight_ranges[weight["name"]]["chosen"]
        assert weight["scale_method"] == chosen
        dq = next(
            n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0].startswith(weight["name"])
        )
        scale = inits[dq.input[1]]
        w = onnx.numpy_helper.to_array(
            next(i for i in onnx.load("models/fashion_cnn.onnx").graph.initializer if i.name == weight["name"])
        )
        minmax = np.abs(w.reshape(len(w), -1)).max(axis=1) / 7
        assert np.allclose(scale, minmax, rtol=1e-6) == (chosen == "minmax")


def test_blocks_end_in_a_partial_block_when_the_input_dim_is_not_a_multiple(tmp_path):
    """K = 200 in blocks of 128: two scales per output column (ONNX takes ceil(K / block) of them), the
    second block 72 wide and scaled by its own maximum; ONNX Runtime runs the graph as numpy dequantizes it."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(200, 24)).astype(np.float32)
    w[128:] *= 0.01  # the partial block: a per-column scale would round it to zero
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 200])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 24])],
        [onnx.numpy_helper.from_array(w, "w")],
    )
    path = tmp_path / "m.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), path)
    options = CompressOptions(
        weights=WeightType.INT4, block_size=128, activations=ActivationType.NONE, bias_correction=BiasCorrection.NONE
    )
    result = onnxbc.compress(path, tmp_path / "out.onnx", data=DataOptions(random=True), options=options)
    out = onnx.load(result.output)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in out.graph.initializer}
    (dq,) = [n for n in out.graph.node if n.op_type == "DequantizeLinear"]
    codes, scale = inits[dq.input[0]].astype(np.float32), inits[dq.input[1]]
    assert scale.shape == (2, 24) and {a.name: a.i for a in dq.attribute} == {"axis": 0, "block_size": 128}
    assert np.all(scale[1] < 0.05 * scale[0])  # the short block has its own, much smaller scale
    dequantized = codes * np.repeat(scale, 128, axis=0)[:200]
    assert np.abs(dequantized[128:] - w[128:]).max() < 0.2 * np.abs(w[128:]).max()
    x = rng.normal(size=(5, 200)).astype(np.float32)
    (y,) = run(result.output, {"x": x}, exact=True)
    np.testing.assert_allclose(y, x @ dequantized, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["if_conv", "constant_weights", "tied_embedding"])
def test_weights_read_on_demand_give_the_same_model(zoo, tmp_path, system_tmp, monkeypatch, name):
    """Weights moved to a temporary file (``pipeline.SPILL_SHARE`` of the budget or more), and the quantized
    weights parked in files while unused, change nothing in the saved model; the report says how many bytes
    moved, and the files are gone after the run."""
    from onnxbc.calibration import memory

    parked, real = [], memory.Parking.park
    monkeypatch.setattr(memory.Parking, "park", lambda self, array: parked.append(array.nbytes) or real(self, array))
    path, data, _ = zoo(name)
    plain = onnxbc.compress(path, tmp_path / "plain.onnx", data=DataOptions(path=data))
    assert "weights_read_on_demand" not in plain.report.input and not parked
    monkeypatch.setattr(onnxbc.pipeline, "SPILL_SHARE", 0.0)
    # as small as the moved weights may be for the checker to leave them out (and the initializer order alone)
    monkeypatch.setattr(model_io, "spill", functools.partial(model_io.spill, least=validate.CHECKER_LEAVES_OUT + 1))
    spilled = onnxbc.compress(path, tmp_path / "spilled.onnx", data=DataOptions(path=data))
    moved = spilled.report.input["weights_read_on_demand"]
    assert moved == 0 if name == "constant_weights" else moved > 0  # its weights are under 1 kB: copied out
    assert parked  # every quantized weight
    assert digest(spilled.output) == digest(plain.output)
    assert model_io.external_data_files(spilled.output) == []
    assert list(system_tmp.iterdir()) == []


def test_each_weight_read_from_external_data_is_unmapped_once_quantized(zoo, tmp_path, monkeypatch):
    """Quantizing the weights reads each in turn: the ones done are unmapped before the next is read, so that a
    model's weights are never all mapped at once (a 3 GB model's were). One tensor read before stays mapped."""
    from onnxbc import precision

    path, data, _ = zoo("external_data")
    mapped, real = [], precision._options

    def spy(group, *args):
        model = group.source.graph
        mapped.append(
            sum(
                isinstance(v.const_value, ir.ExternalTensor) and v.const_value.raw is not None
                for v in model.initializers.values()
            )
        )
        return real(group, *args)

    monkeypatch.setattr(precision, "_options", spy)
    options = CompressOptions(weights=WeightType.INT4, activations=ActivationType.NONE)
    onnxbc.compress(path, tmp_path / "out.onnx", data=DataOptions(path=data), options=options)
    assert len(mapped) >= 2 and mapped == [mapped[0]] * len(mapped) and mapped[0] <= 1  # without: 1, 2, 3


def test_smoothing_variants_are_parked_as_made_and_their_float_weights_unmapped(tmp_path, monkeypatch):
    """Each smoothable activation's variants (a quantized copy of its readers' weights per alpha) are parked
    before the next activation's are made, and the float weights read for them are unmapped: made all at once,
    then parked, they held every smoothed weight, float and quantized (the 3.14 GB Llama-shaped model at W8A8
    reached 3.7 GB there)."""
    from models.llama_shaped import Shape, write
    from onnxbc import variants

    path = write(tmp_path / "m.onnx", Shape(hidden=64, layers=2, mlp=128, vocab=256, heads=4))
    np.savez(tmp_path / "ids.npz", input_ids=np.random.default_rng(1).integers(0, 256, (8, 16)))
    events, real_plans, real_park = [], variants.candidate_plans, onnxbc.pipeline._Job.park

    def plans(name, axis, readers, *args):
        graph = readers[0][0].weight.source.graph
        mapped = sum(
            isinstance(v.const_value, ir.ExternalTensor) and v.const_value.raw is not None
            for v in graph.initializers.values()
        )
        events.append(("plans", mapped))
        return real_plans(name, axis, readers, *args)

    monkeypatch.setattr(variants, "candidate_plans", plans)
    monkeypatch.setattr(onnxbc.pipeline._Job, "park", lambda job, wq: events.append(("park", 0)) or real_park(job, wq))
    monkeypatch.setattr(onnxbc.pipeline, "SPILL_SHARE", 0.0)  # quantized weights parked in files
    onnxbc.compress(path, tmp_path / "out.onnx", data=DataOptions(path=tmp_path / "ids.npz"))
    calls = [i for i, (kind, _) in enumerate(events) if kind == "plans"]
    assert len(calls) >= 3
    for a, b in zip(calls, calls[1:]):  # the variants of one activation are parked before the next's are made
        assert any(kind == "park" for kind, _ in events[a + 1 : b])
    assert max(mapped for kind, mapped in events if kind == "plans") <= 1  # without: the readers read so far


@pytest.mark.parametrize(
    "graph", ["matmul_add", "gemm_nobias", "batchnorm_conv", "conv_depthwise", "transpose_weight", "tied_embedding"]
)
def test_a_linear_layers_mean_error_comes_from_its_input_sums(tmp_path, graph):
    """On the fit samples a MatMul, Gemm or 1x1 Conv that no activation follows is measured by its input's row sums
    times its weights (``LayerErrorProbe.means``): the summed error and count of the whole shadow, to float
    rounding, without the squares; a trial of a few channels completes from them. Layers with an activation after,
    or whose weight comes through a chain of nodes, get no such probe."""
    g = test_graphs.build(graph)
    model = prepare_passes(21)(model_io.load(test_graphs.save(g, tmp_path / "m.onnx"))).model
    data = open_data(DataOptions(source=g.feeds(24, 0), batch_size=8, holdout_fraction=0.3), input_specs(model))
    checked = 0
    for t in find_targets(model).targets:
        if t.weight is None:
            continue
        w, gran, source = t.weight.source.const_value.numpy(), Granularity(t.weight.channel_axis), t.weight.source.name
        s = weight_scale(w, INT4, gran, "minmax")
        x = t.node.inputs[0].name
        aq = ActivationQuant(x, 0.05, 0, np.dtype(np.int8), 6.35, "m")
        plan = QuantPlan(weights={source: WeightQuant(source, quantize(w, s, INT4, gran), s, gran, 4, "minmax")})
        plan.activations[x] = aq
        whole, shadow = LayerErrorProbe(t, plan), LayerErrorProbe(t, plan)
        means = shadow.means()
        # a weight through a chain (transpose_weight's Transpose) is measured whole: its sums need the graph's weight
        whole_only = activation_after(t) is not None or t.weight.chain or t.op == "Conv" and t.name != "pw"
        assert (means is None) == bool(whole_only), t.name
        if means is None:
            continue
        collect(model, [whole], data, SessionFactory(), splits=("fit",))
        collect(model, [means], data, SessionFactory(), splits=("fit",))
        a, b = shadow.moments["fit"], whole.moments["fit"]
        assert a.means_only and a.count == b.count > 0
        np.testing.assert_allclose(a.sum_d, b.sum_d, rtol=1e-4, atol=1e-5 * np.abs(b.sum_d).max())
        assert a.sum_d2 is None and a.sum_y2 is None
        with pytest.raises(ValueError, match="only the mean error"):
            a.mse()
        if by_channel(t):  # a trial of the first channels, completed from the shadow's sums
            few = s.copy()
            few[:1] *= 0.7
            trial = QuantPlan(weights={source: WeightQuant(source, quantize(w, few, INT4, gran), few, gran, 4, "m")})
            trial.activations[x] = aq
            partial, full = ChannelTrialProbe(t, trial, shadow, np.arange(1)), LayerErrorProbe(t, trial)
            collect(model, [partial.means(), full], data, SessionFactory(), splits=("fit",))
            partial.complete()
            np.testing.assert_allclose(
                partial.moments["fit"].sum_d, full.moments["fit"].sum_d, rtol=1e-4, atol=1e-5 * np.abs(b.sum_d).max()
            )
        checked += 1
    assert checked or graph == "transpose_weight"  # its one layer reads its weight through a Transpose


def test_pass_2_collected_split_by_split_keeps_every_probes_sums(tmp_path):
    """With held-out samples pass 2 runs them with every probe whole, then the fit samples apart (the linear layers'
    mean errors from their input sums, ``pipeline._error_passes``): a probe attached to both graphs keeps both
    splits' sums, also after the activation its layer feeds, as one run over both splits gathers them."""
    g = test_graphs.build("batchnorm_conv")
    model = prepare_passes(21)(model_io.load(test_graphs.save(g, tmp_path / "m.onnx"))).model
    data = open_data(DataOptions(source=g.feeds(24, 0), batch_size=8, holdout_fraction=0.3), input_specs(model))
    targets = [t for t in find_targets(model).targets if t.weight is not None]

    def probes():
        plan = QuantPlan()
        for t in targets:
            w, gran, source = (
                t.weight.source.const_value.numpy(),
                Granularity(t.weight.channel_axis),
                t.weight.source.name,
            )
            s = weight_scale(w, INT4, gran, "minmax")
            plan.weights[source] = WeightQuant(source, quantize(w, s, INT4, gran), s, gran, 4, "minmax")
        return [LayerErrorProbe(t, plan) for t in targets]

    apart, together = probes(), probes()
    passes = pipeline._error_passes(apart, held_out=True)
    assert [splits for _, splits in passes] == [("holdout",), ("fit",)]
    for some, splits in passes:
        collect(model, some, data, SessionFactory(), splits=splits)
    collect(model, together, data, SessionFactory(), splits=("fit", "holdout"))
    assert sum(p.after is not None for p in apart) == 2 and sum(p.means() is not None for p in apart) == 1
    means = [p for p in passes[1][0] if isinstance(p, MeanErrorProbe)]
    assert [list(m.floats) for m in means] == [[("fc", "fit")]]  # the float weight's product, shared by the pass
    for a, b in zip(apart, together):
        sums = [(a.moments, b.moments)] + ([(a.after, b.after)] if a.after is not None else [])
        for (mine, theirs), split in itertools.product(sums, ("fit", "holdout")):
            mine, theirs = mine[split], theirs[split]
            assert mine.count == theirs.count > 0
            np.testing.assert_allclose(mine.sum_d, theirs.sum_d, rtol=1e-4, atol=1e-5 * np.abs(theirs.sum_d).max())
            if not mine.means_only:
                np.testing.assert_allclose(mine.sum_d2, theirs.sum_d2, rtol=1e-5)
    assert pipeline._error_passes(apart, held_out=False) == [(apart, ("fit", "holdout"))]
