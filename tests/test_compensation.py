"""Sequential compensation: waves, the paired float/quantized graph, and what the mode reports."""

import dataclasses

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

import onnxbc
from models import test_graphs
from onnxbc import model_io
from onnxbc.compensation import QUANTIZED_PREFIX, waves
from onnxbc.options import BiasCorrection, CompressOptions, DataOptions, RangeMethod, Rounding, WeightType
from onnxbc.passes.graph_utils import pair_models
from onnxbc.passes.prepare import prepare_passes
from onnxbc.targets import find_targets


def prepared(tmp_path, name):
    path = test_graphs.save(test_graphs.build(name), tmp_path / f"{name}.onnx")
    return prepare_passes(13)(model_io.load(path)).model


def test_waves_follow_the_longest_path(tmp_path):
    model = prepared(tmp_path, "concat_conv")  # two parallel convs -> concat -> conv
    groups = waves(model, find_targets(model).targets)
    assert [len(g) for g in groups] == [2, 1]
    model = prepared(tmp_path, "gelu_mlp")  # a chain
    groups = waves(model, find_targets(model).targets)
    assert [len(g) for g in groups] == [1, 1]
    model = prepared(tmp_path, "attention")  # q, k, v in parallel; then qk, pv, out-proj
    groups = waves(model, [t for t in find_targets(model).targets if t.weight is not None])
    assert [sorted(t.name for t in g) for g in groups][0] == [
        "attn.k_proj/MatMul",
        "attn.q_proj/MatMul",
        "attn.v_proj/MatMul",
    ]
    assert [t.name for t in groups[1]] == ["attn.out_proj/MatMul"]


def test_paired_model_computes_both_models(tmp_path):
    a = prepared(tmp_path, "gemm")
    b = a.clone()
    for v in b.graph.initializers.values():  # make the second copy different
        if v.const_value.dtype.name == "FLOAT":
            v.const_value = ir.tensor(v.const_value.numpy() * 2.0, name=v.name)
    paired = pair_models(a, b, QUANTIZED_PREFIX)
    out_name = a.graph.outputs[0].name
    paired.graph.outputs.append(
        next(n.outputs[0] for n in paired.graph if n.outputs[0].name == QUANTIZED_PREFIX + out_name)
    )
    feeds = test_graphs.build("gemm").feeds(4, 0)
    run = lambda m: ort.InferenceSession(model_io.to_proto(m).SerializeToString()).run(None, feeds)  # noqa: E731
    ref, other = run(a)[0], run(b)[0]
    both = run(paired)
    np.testing.assert_allclose(both[0], ref, rtol=1e-6)
    np.testing.assert_allclose(both[1], other, rtol=1e-6)


def test_sequential_mode_end_to_end(zoo, tmp_path):
    path, data, _ = zoo("gelu_mlp", samples=64)
    options = CompressOptions(
        weights=WeightType.INT4,
        bias_correction=BiasCorrection.SEQUENTIAL,
        smoothing=False,
        weight_range=RangeMethod.MSE,  # nothing to choose between: no pass for choices
        rounding=Rounding.NEAREST,  # every weight gets min-max scale candidates below (GPTQ's keep their own)
    )
    result = onnxbc.compress(path, tmp_path / "o.onnx", data=DataOptions(path=data), options=options)
    rep = result.report
    # ranges, the independent layer errors (the start, and a candidate), then one pass per wave (two chained layers)
    assert rep.passes_over_data == 1 + 1 + 2
    assert {"layer_errors", "sequential_compensation"} <= set(rep.timings_s)
    assert "sequential_with_compensation" in rep.compensation["candidates"]
    with_smoothing = dataclasses.replace(options, smoothing=True)
    rep = onnxbc.compress(
        path, tmp_path / "o.onnx", data=DataOptions(path=data), options=with_smoothing, force=True
    ).report
    assert rep.passes_over_data == 1 + 1 + 2  # smoothing candidates are measured in the same pass
    auto = dataclasses.replace(options, weight_range=RangeMethod.AUTO)
    rep_auto = onnxbc.compress(path, tmp_path / "o.onnx", data=DataOptions(path=data), options=auto, force=True).report
    assert rep_auto.passes_over_data == 1 + 1 + 2  # so are the min-max weight scale candidates
    assert set(rep_auto.weight_ranges) == {r.weight["name"] for r in rep_auto.layers if r.weight}
    if rep_auto.compensation["weights"] == "plan":  # the per-layer choices were saved
        for record in rep_auto.weight_ranges.values():  # the least held-out error wins; ties keep the mse scales
            assert record["chosen"] == min(record["rel_mse"], key=record["rel_mse"].get)
    layers = [r for r in rep.layers if r.status == "quantized"]
    assert all(r.bias["site"] for r in layers if r.bias["applied"])
    for r in layers:  # never worse on the data it was fitted on
        assert r.error["fit"]["rel_mse_after"] <= r.error["fit"]["rel_mse_before"] * (1 + 1e-9)
    assert rep.compensation["decided_on"] == "holdout"
