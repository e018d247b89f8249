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
