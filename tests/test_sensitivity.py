"""Measured output sensitivity (``onnxbc.sensitivity``) and the allocation it steers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxbc
from onnxbc import sensitivity
from onnxbc.calibration.data import input_specs, open_data
from onnxbc.calibration.session import SessionFactory
from onnxbc.options import ActivationType, CompressOptions, DataOptions, Rounding

ROOT = Path(__file__).resolve().parents[1]
FASHION = ROOT / "models" / "fashion_cnn.onnx"
FASHION_DATA = ROOT / "models" / "data" / "fashion_calib.npz"


def two_branches(path: Path, loud: float = 30.0) -> Path:
    """out = loud * (x @ A) + x @ B: A and B alike, but A's error reaches the output ``loud`` times larger."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((32, 32)).astype(np.float32) for _ in range(2))
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "A"], ["ya"], name="matmul_a"),
            helper.make_node("Mul", ["ya", "loud"], ["la"], name="loud"),
            helper.make_node("MatMul", ["x", "B"], ["yb"], name="matmul_b"),
            helper.make_node("Add", ["la", "yb"], ["out"], name="sum"),
        ],
        "branches",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 32])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 32])],
        [
            numpy_helper.from_array(a, "A"),
            numpy_helper.from_array(b, "B"),
            numpy_helper.from_array(np.array(loud, np.float32), "loud"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), path)
    return path


def data(path: Path, n: int = 128) -> Path:
    np.savez(path, x=np.random.default_rng(1).standard_normal((n, 32)).astype(np.float32))
    return path


def calibration(model_path: Path, data_path: Path):
    model = ir.load(model_path)
    return model, open_data(DataOptions(data_path, samples=128), input_specs(model))


def rel_mse(model_path: Path, data_path: Path, replace: dict[str, np.ndarray]) -> float:
    """The held-out output rel. MSE of the model with some initializers replaced, computed separately."""
    proto = onnx.load(model_path)
    changed = onnx.load(model_path)
    for t in changed.graph.initializer:
        if t.name in replace:
            t.CopyFrom(numpy_helper.from_array(replace[t.name], t.name))
    x = np.load(data_path)["x"]
    holdout = x[len(x) - int(round(len(x) * DataOptions(data_path).holdout_fraction)) :][: sensitivity.SAMPLES]
    run = [ort.InferenceSession(m.SerializeToString()).run(None, {"x": holdout})[0] for m in (proto, changed)]
    return float(np.sum((run[0] - run[1]) ** 2) / np.sum(run[0] ** 2))


def test_output_errors_are_the_model_error_with_one_weight_replaced(tmp_path):
    path, xs = two_branches(tmp_path / "m.onnx"), data(tmp_path / "x.npz")
    model, calib = calibration(path, xs)
    a = numpy_helper.to_array(onnx.load(path).graph.initializer[0])
    noisy = a + np.random.default_rng(2).standard_normal(a.shape).astype(np.float32) * 0.05
    errors = sensitivity.output_errors(model, {"A": [lambda: a, lambda: noisy]}, calib, SessionFactory())
    assert errors["A"][0] == 0.0
    assert errors["A"][1] == pytest.approx(rel_mse(path, xs, {"A": noisy}), rel=1e-5)
    assert errors["A"][1] > 0
    assert not model.graph.initializers["A"].is_graph_input()  # the caller's model is left alone


def test_weights_that_cannot_be_fed_are_left_out(tmp_path):
    path, xs = two_branches(tmp_path / "m.onnx"), data(tmp_path / "x.npz")
    model, calib = calibration(path, xs)
    errors = sensitivity.output_errors(model, {"no such weight": [lambda: np.zeros(1)]}, calib, SessionFactory())
    assert errors == {}


def test_measured_prices_give_the_bits_to_the_weight_the_output_feels(tmp_path):
    """A and B have the same layer errors (closed form), but A's reach the output 30x larger: with one 8-bit and
    one 2-bit weight in the budget, the measured prices give A the 8 bits, and that model is the better one."""
    path, xs = two_branches(tmp_path / "m.onnx"), data(tmp_path / "x.npz")

    def compress(name: str, **options):
        options = CompressOptions(activations=ActivationType.NONE, candidates=(2, 8), bias_correction="none", **options)
        return onnxbc.compress(path, tmp_path / name, data=DataOptions(xs, samples=128), options=options).report

    measured = compress("measured.onnx", avg_bits=5.0)
    bits = {r.weight["name"]: r.weight["bits"] for r in measured.layers if r.weight}
    assert bits == {"A": 8, "B": 2}
    assert measured.precision["measured"]["runs"] == 4
    errors = {o["bits"]: o["error"] for o in measured.precision["options"]["A"]}
    errors_b = {o["bits"]: o["error"] for o in measured.precision["options"]["B"]}
    assert errors[2] > 100 * errors_b[2]  # 30^2 x, the closed form's ratio aside
    policy = tmp_path / "swapped.toml"
    policy.write_text('[[layer]]\nname = "matmul_a"\nbits = 2\n[[layer]]\nname = "matmul_b"\nbits = 8\n')
    swapped = compress("swapped.onnx", avg_bits=5.0, policy=policy)
    out = lambda rep: rep.outputs["without_compensation"]["out"]["rel_mse"]  # noqa: E731
    assert out(measured) < out(swapped) / 10


def test_summed_measured_prices_predict_the_output_error(tmp_path):
    """The allocation's summed measured prices against the written model's held-out output error (weight-only,
    no compensation, rounding to nearest): within 30 %. And the model they choose has less error than the
    closed-form choice. (With GPTQ tried, the classifier is priced on its full input covariance, and there the
    closed form chooses as well.)"""
    reports = {}
    for measured in (True, False):
        options = CompressOptions(
            activations=ActivationType.NONE,
            avg_bits=4.0,
            bias_correction="none",
            price_compensated=False,
            price_measured=measured,
            rounding=Rounding.NEAREST,
        )
        path = tmp_path / f"{measured}.onnx"
        reports[measured] = onnxbc.compress(FASHION, path, data=DataOptions(FASHION_DATA, samples=256), options=options)
    actual = {k: r.report.outputs["without_compensation"]["logits"]["rel_mse"] for k, r in reports.items()}
    assert reports[True].report.precision["chosen"]["error"] == pytest.approx(actual[True], rel=0.3)
    assert reports[False].report.precision["measured"] is None
    assert actual[True] < actual[False]


@pytest.mark.parametrize("bias_correction", ["independent", "none"])
def test_uniform_bits_are_saved_when_the_mixed_model_measures_worse(tmp_path, monkeypatch, bias_correction):
    """The held-out check guards the allocation: with prices that mislead it (here: measured errors swapped
    between A and B), the mixed model A=2/B=8 loses end to end to uniform int4, which fits the same budget
    and is saved, with the report's bits and a note saying so."""
    path, xs = two_branches(tmp_path / "m.onnx"), data(tmp_path / "x.npz")
    real = sensitivity.output_errors

    def swapped(model, trials, *args, **kwargs):
        errors = real(model, trials, *args, **kwargs)
        return {"A": errors["B"], "B": errors["A"]}

    monkeypatch.setattr(sensitivity, "output_errors", swapped)
    options = CompressOptions(
        activations=ActivationType.NONE, candidates=(2, 4, 8), avg_bits=5.0, bias_correction=bias_correction
    )
    rep = onnxbc.compress(path, tmp_path / "o.onnx", data=DataOptions(xs, samples=128), options=options).report
    assert rep.precision["saved"] == "uniform int4"
    assert {r.weight["name"]: r.weight["bits"] for r in rep.layers if r.weight} == {"A": 4, "B": 4}
    assert {k["bits"] for k in rep.precision["layers"].values()} == {4}
    assert rep.compensation["chosen"].startswith("uniform_int4")
    outputs = {k: v["out"]["rel_mse"] for k, v in rep.outputs.items() if isinstance(v, dict) and "out" in v}
    assert outputs[rep.compensation["chosen"]] < outputs["without_compensation"] / 10
    # uniform bits are measured as the mixed model is: without compensation and, when it runs, with it
    assert "uniform_int4" in outputs
    assert ("uniform_int4_with_compensation" in outputs) == (bias_correction != "none")
    # and with min-max scales, compensated, as --weights int4 alone measures its min-max alternative
    assert ("uniform_int4_minmax_with_compensation" in outputs) == (bias_correction != "none")
    assert any("uniform int4" in n for r in rep.layers for n in r.notes)
