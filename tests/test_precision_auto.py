"""The choices ``compress`` makes by measurement at low bit widths without being asked: weights kept at 8 bits
under ``--weights int4`` (``precision.keep_at_8``) and GPTQ or nearest rounding per weight (``--rounding auto``),
each checked end to end against the model without it, on small graphs built here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxbc
from onnxbc.options import ActivationType, CompressOptions, DataOptions, Rounding, WeightType
from onnxbc.precision import KEEP_BYTES, KEEP_RATIO

WEIGHT_ONLY = {"activations": ActivationType.NONE}


def save(path: Path, nodes: list, inputs: list, output: tuple[str, list], weights: dict[str, np.ndarray]) -> Path:
    graph = helper.make_graph(
        nodes,
        path.stem,
        inputs,
        [helper.make_tensor_value_info(output[0], TensorProto.FLOAT, output[1])],
        [numpy_helper.from_array(w.astype(np.float32), name) for name, w in weights.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), path)
    return path


def pointwise_cnn(path: Path, depthwise: np.ndarray | None) -> Path:
    """x [n, 64, 8, 8] -> 1x1 Conv to 128 -> Relu -> [3x3 depthwise Conv ->] 1x1 Conv to 128: the depthwise
    weights are 4.5 % of the model's (as in MobileNets)."""
    rng = np.random.default_rng(0)
    weights = {
        "expand": rng.standard_normal((128, 64, 1, 1)) / 8,
        "project": rng.standard_normal((128, 128, 1, 1)) / 11,
    }
    nodes = [
        helper.make_node("Conv", ["x", "expand"], ["e"], name="expand"),
        helper.make_node("Relu", ["e"], ["r"], name="relu"),
    ]
    last = "r"
    if depthwise is not None:
        weights["dw"] = depthwise
        nodes.append(helper.make_node("Conv", ["r", "dw"], ["d"], name="dw", group=128, pads=[1, 1, 1, 1]))
        last = "d"
    nodes.append(helper.make_node("Conv", [last, "project"], ["out"], name="project"))
    return save(
        path,
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64, 8, 8])],
        ("out", ["n", 128, 8, 8]),
        weights,
    )


def smooth_images(path: Path, n: int = 64) -> Path:
    """Per sample and channel a level and a gentle slope: neighbouring pixels nearly agree."""
    rng = np.random.default_rng(1)
    ramp = np.linspace(-1, 1, 8, dtype=np.float32)
    x = rng.standard_normal((n, 64, 1, 1)) + 0.1 * rng.standard_normal((n, 64, 1, 1)) * (ramp[:, None] + ramp)
    np.savez(path, x=x.astype(np.float32))
    return path


def compress(model: Path, data: Path, tmp_path: Path, **options):
    out = tmp_path / f"{model.stem}.int.onnx"
    return onnxbc.compress(
        model, out, data=DataOptions(data, samples=64), options=CompressOptions(**options), force=True
    ).report


def bits_of(report) -> dict[str, int]:
    return {r.name: r.weight["bits"] for r in report.layers if r.weight}


def cancelling_depthwise() -> np.ndarray:
    """Each channel's kernel: a centre of 1 and eight neighbours of 0.06, which 4 bits (step 1/7) round to 0:
    on smooth inputs a third of the output goes, as a layer error that compensation cannot remove."""
    kernel = np.full((128, 1, 3, 3), 0.06)
    kernel[:, :, 1, 1] = 1.0
    return kernel * np.random.default_rng(2).uniform(0.5, 1.5, (128, 1, 1, 1))


def test_a_depthwise_conv_that_dominates_at_4_bits_stays_at_8(tmp_path):
    model = pointwise_cnn(tmp_path / "dw.onnx", cancelling_depthwise())
    rep = compress(model, smooth_images(tmp_path / "x.npz"), tmp_path, weights=WeightType.INT4, **WEIGHT_ONLY)
    kept = rep.precision["keep_at_8"]
    assert set(kept["layers"]) == {"dw"}
    assert kept["layers"]["dw"]["ratio"] >= KEEP_RATIO and kept["extra_bytes"] <= KEEP_BYTES * kept["weights_bytes"]
    assert kept["ratios"]["expand"] < 2 and kept["ratios"]["project"] < 2
    assert kept["measured"]["runs"] == 3  # each weight's int4 values run alone in the float model
    assert bits_of(rep) == {"expand": 4, "dw": 8, "project": 4}
    dw = next(r for r in rep.layers if r.name == "dw")
    assert any(n.startswith("int8 in the per-layer plan: at int4") for n in dw.notes)
    # strict int4 was measured beside it and lost
    assert rep.precision["saved"] == "mixed"
    strict = [v for k, v in rep.compensation["candidates"].items() if k.startswith("uniform_int4")]
    assert strict and min(strict) > rep.compensation["output_rel_mse"]
    assert "(int4 weights, 1 at int8)" in rep.compensation["description"]


def test_a_policy_forces_strict_int4(tmp_path):
    model = pointwise_cnn(tmp_path / "dw.onnx", cancelling_depthwise())
    policy = tmp_path / "strict.toml"
    policy.write_text('[[layer]]\npattern = ".*"\nbits = 4\n')
    rep = compress(
        model, smooth_images(tmp_path / "x.npz"), tmp_path, weights=WeightType.INT4, policy=policy, **WEIGHT_ONLY
    )
    assert set(bits_of(rep).values()) == {4}
    assert "keep_at_8" not in rep.precision and "saved" not in rep.precision


def test_a_model_where_nothing_dominates_stays_uniform(tmp_path):
    model = pointwise_cnn(tmp_path / "plain.onnx", None)
    rep = compress(model, smooth_images(tmp_path / "x.npz"), tmp_path, weights=WeightType.INT4, **WEIGHT_ONLY)
    assert rep.precision["keep_at_8"]["layers"] == {}
    assert set(bits_of(rep).values()) == {4}
    assert not any(k.startswith("uniform") for k in rep.compensation["candidates"])


def matmul(path: Path, features: int, outputs: int = 32) -> Path:
    w = np.random.default_rng(3).standard_normal((features, outputs)) / np.sqrt(features)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "t", features])
    return save(
        path,
        [helper.make_node("MatMul", ["x", "W"], ["out"], name="proj")],
        [x],
        ("out", ["n", "t", outputs]),
        {"W": w},
    )


def correlated(path: Path, n: int, tokens: int, features: int) -> Path:
    """Strongly correlated features of unequal power (as real activations): GPTQ's case."""
    rng = np.random.default_rng(4)
    shared = rng.standard_normal((n, tokens, 8)) @ rng.standard_normal((8, features))
    x = shared + 0.3 * rng.standard_normal((n, tokens, features)) + 0.2
    np.savez(path, x=x.astype(np.float32))
    return path


def test_gptq_rounds_where_it_lowers_the_held_out_error(tmp_path):
    model, data = matmul(tmp_path / "m.onnx", 64), correlated(tmp_path / "x.npz", 64, 16, 64)
    rep = compress(model, data, tmp_path, weights=WeightType.INT4, **WEIGHT_ONLY)
    entry = rep.precision["rounding"]["layers"]["W"]
    assert entry["chosen"] == "gptq"
    assert entry["layer_error"]["gptq"] < 0.5 * entry["layer_error"]["nearest"]
    record = next(r for r in rep.layers if r.name == "proj")
    assert record.weight["rounding"] == "gptq"
    assert any(n.startswith("GPTQ rounding in the per-layer plan: held-out layer error") for n in record.notes)
    # the model with nearest rounding was measured end to end and lost
    nearest = [v for k, v in rep.compensation["candidates"].items() if k.startswith("nearest")]
    assert nearest and nearest[0] > rep.compensation["output_rel_mse"]


def test_gptq_is_not_chosen_where_it_overfits(tmp_path):
    """256 features, one row per sample and 51 fit samples: GPTQ fits a rank-51 second moment, and its
    rounding errors, pushed into the directions those samples do not span, show on held-out samples."""
    model = matmul(tmp_path / "m.onnx", 256)
    x = np.random.default_rng(5).standard_normal((64, 1, 256)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    rep = compress(model, tmp_path / "x.npz", tmp_path, weights=WeightType.INT4, **WEIGHT_ONLY)
    entry = rep.precision["rounding"]["layers"]["W"]
    assert entry["chosen"] == "nearest"
    assert entry["layer_error"]["gptq"] > entry["layer_error"]["nearest"]
    record = next(r for r in rep.layers if r.name == "proj")
    assert record.weight["rounding"] == "nearest"
    assert any(n.startswith("rounding to nearest in the per-layer plan: held-out") for n in record.notes)
    assert not any(k.startswith("nearest") for k in rep.compensation["candidates"])


@pytest.mark.parametrize(
    ("weights", "rounding"), [(WeightType.INT8, Rounding.AUTO), (WeightType.INT4, Rounding.NEAREST)]
)
def test_gptq_is_not_tried_at_8_bits_or_when_nearest_is_asked(tmp_path, weights, rounding):
    model, data = matmul(tmp_path / "m.onnx", 64), correlated(tmp_path / "x.npz", 64, 16, 64)
    rep = compress(model, data, tmp_path, weights=weights, rounding=rounding, **WEIGHT_ONLY)
    assert "rounding" not in rep.precision
    assert {r.weight["rounding"] for r in rep.layers if r.weight} == {"nearest"}


@pytest.mark.parametrize("kind", ["moments", "diagonal", "grouped", "plain"])
@pytest.mark.parametrize("compensated", [False, True])
def test_prices_summed_over_output_chunks_equal_the_whole_weight_formulas(monkeypatch, kind, compensated):
    """``precision.price`` works through the weight a few output channels at a time (an embedding table is
    hundreds of MB); its value is the module's formula on the whole weight: with full second moments
    ``tr(dW Cov dW^T)`` (+ the mean error without compensation), with per-channel statistics the diagonal form,
    without statistics the weight's own relative error."""
    from onnx import TensorProto, helper

    from onnxbc import model_io
    from onnxbc.plan import WeightQuant
    from onnxbc.precision import InputStats, price
    from onnxbc.solvers.gptq import SecondMoments
    from onnxbc.solvers.quant import INT4, Granularity, quantize, weight_scale
    from onnxbc.solvers.smooth import per_input_channel
    from onnxbc.targets import find_targets, weight_array

    rng = np.random.default_rng(5)
    if kind == "grouped":  # Conv [out 8, in 3 per group, 3, 3], 2 groups: statistics vary along the out axis
        w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
        node = helper.make_node("Conv", ["x", "w"], ["y"], group=2, pads=[1, 1, 1, 1])
        x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 5, 5])
        gran, in_channels, y_shape = Granularity(0), 6, [1, 8, 5, 5]
    else:  # MatMul [in 48, out 40] in blocks of 16 along the input axis
        w = rng.standard_normal((48, 40)).astype(np.float32)
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 48])
        gran, in_channels, y_shape = Granularity(0, 16), 48, ["N", 40]
    graph = helper.make_graph(
        [node],
        "g",
        [x_info],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [onnx.numpy_helper.from_array(w, "w")],
    )
    model = model_io.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    group = find_targets(model).weights["w"]
    t = group.targets[0]
    scale = weight_scale(w, INT4, gran, "minmax")
    wq = WeightQuant("w", quantize(w, scale, INT4, gran), scale, gran, 4, "minmax")
    dw = weight_array(group).astype(np.float64) - wq.dequantized()
    x = rng.standard_normal((64, in_channels)) * rng.uniform(0.5, 2, in_channels) + rng.standard_normal(in_channels)
    mean, variance = x.mean(0), x.var(0)
    stats = InputStats(output_power=3.0)
    others = tuple(i for i in range(w.ndim) if i != t.weight.channel_axis)
    if kind == "moments":
        stats.moments = SecondMoments()
        stats.moments.update(x)
        d2 = np.moveaxis(dw, t.weight.input_axis, -1).reshape(-1, in_channels)
        spread, mean_error = np.sum((d2 @ np.cov(x.T, bias=True)) * d2), d2 @ mean
    elif kind in ("diagonal", "grouped"):
        groups = 2 if kind == "grouped" else 1
        stats.mean = per_input_channel(mean, w.shape, t.weight.input_axis, groups)
        stats.variance = per_input_channel(variance, w.shape, t.weight.input_axis, groups)
        spread, mean_error = np.sum(dw**2 * stats.variance), np.sum(dw * stats.mean, axis=others)
    if kind == "plain":
        stats = InputStats()
        expected = np.sum(dw**2) / np.sum(weight_array(group).astype(np.float64) ** 2)
    else:
        expected = (spread if compensated else spread + np.sum(mean_error**2)) / 3.0
    monkeypatch.setattr("onnxbc.solvers.quant.CHUNK_ELEMENTS", 100)  # many chunks
    assert price(group, wq, stats, compensated) == pytest.approx(float(expected), rel=1e-9)
