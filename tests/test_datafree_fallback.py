"""--data-free on any CNN: layers in no DF-MPC pair get plain data-free rounding and bias correction from the
BatchNormalization statistics where they exist (ReLU6, HardSwish, SiLU, residual Adds), the DF-MPC factors are
checked before they are applied, and only a model with nothing to quantize is refused. The CNN is
models/dw_cnn.py (MobileNetV2-like, random weights, BN statistics calibrated on the inputs the tests draw)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import onnxbc
from models import dw_cnn
from onnxbc import model_io
from onnxbc.pairs import input_moments
from onnxbc.passes.prepare import prepare
from onnxbc.solvers import dfmpc
from onnxbc.targets import find_targets

FALLBACK = ("stem", "block0.expand", "block0.dw", "block0.project")


def images(n: int, seed: int) -> np.ndarray:
    """The inputs the BN statistics describe (``dw_cnn.calibrate`` sees seed 0)."""
    return np.random.default_rng(seed).uniform(0.0, 1.0, (n, 3, 16, 16)).astype(np.float32)


def cnn(act: str = "relu6", head: str = "relu", folded: bool = False) -> onnx.ModelProto:
    model = dw_cnn.calibrate(dw_cnn.build(act, head), images(64, 0))
    return dw_cnn.fold(model) if folded else model


def run(model, x: np.ndarray) -> np.ndarray:
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def compress(tmp_path, model: onnx.ModelProto, bias_correction=onnxbc.BiasCorrection.INDEPENDENT, bits=4):
    path = tmp_path / "cnn.onnx"
    onnx.save(model, path)
    weights = {4: onnxbc.WeightType.INT4, 8: onnxbc.WeightType.INT8}[bits]
    options = onnxbc.CompressOptions(
        weights=weights, next_weights=weights, data_free=True, bias_correction=bias_correction
    )
    out = tmp_path / f"cnn.{bias_correction.value}.onnx"
    return out, onnxbc.compress(path, out, options=options, force=True).report


def batchnorm(model: onnx.ModelProto, conv: str) -> tuple[np.ndarray, ...]:
    """(B, scale, mean, var) of the BatchNormalization after ``conv``; its output is modelled as N(B, scale^2)."""
    node = next(n for n in model.graph.node if n.op_type == "BatchNormalization" and n.input[0] == conv)
    inits = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    return tuple(inits[node.input[i]] for i in (2, 1, 3, 4))


def sampled(f, mu: np.ndarray, sigma: np.ndarray, n: int = 1_000_000) -> tuple[np.ndarray, np.ndarray]:
    """Monte-Carlo mean of f(z), z ~ N(mu, sigma^2), and 5 standard errors of it."""
    z = np.random.default_rng(7).standard_normal((n, 1)) * sigma + mu
    fz = f(z)
    return fz.mean(axis=0), 5 * fz.std(axis=0) / math.sqrt(n) + 1e-6


RELU6 = (0.0, 6.0)
ACTIVATIONS = {
    "relu6": lambda z: np.clip(z, 0.0, 6.0),
    "hardswish": lambda z: z * np.clip(z + 3.0, 0.0, 6.0) / 6.0,
    "silu": lambda z: z / (1.0 + np.exp(-z)),
}


# ---------------------------------------------------------------------------------------------- the moments


@pytest.mark.parametrize("bounds", [(0.0, math.inf), RELU6, (-1.0, 1.0), (-math.inf, 0.5)])
def test_clipped_moments_match_sampling(bounds):
    """ReLU (rectified normal), ReLU6 and Clip (clipped normal) in closed form against 1e6 samples, and
    against the numerical grid to 5e-5."""
    mu, sigma = np.array([-1.0, 0.0, 0.5, 3.0, 6.5]), np.array([1.0, 1.0, 2.0, 0.5, 3.0])
    mean, var = dfmpc.clipped_moments(mu, sigma**2, *bounds)
    expected, tolerance = sampled(lambda z: np.clip(z, *bounds), mu, sigma)
    assert np.all(np.abs(mean - expected) < tolerance)
    z = np.random.default_rng(7).standard_normal((1_000_000, 1)) * sigma + mu
    np.testing.assert_allclose(var, np.clip(z, *bounds).var(axis=0), rtol=1e-2, atol=1e-4)
    grid_mean, grid_var = dfmpc.gaussian_moments(lambda z: np.clip(z, *bounds), mu, sigma**2)
    np.testing.assert_allclose(mean, grid_mean, atol=5e-5)
    np.testing.assert_allclose(var, grid_var, atol=1e-4)
    assert dfmpc.clipped_moments(np.array([0.0]), np.array([1.0]))[0][0] == pytest.approx(1 / math.sqrt(2 * math.pi))
    assert dfmpc.clipped_moments(np.array([7.0]), np.array([0.0]), *RELU6)[0][0] == 6.0  # no spread: clip(mu)


@pytest.mark.parametrize("act", ["relu6", "hardswish", "silu"])
def test_input_moments_follow_the_graph(act):
    """The modelled mean of a layer input (BN -> activation, and a residual Add of two modelled values) is the
    Monte-Carlo mean of the activation of N(B, scale^2)."""
    proto = cnn(act)
    prepared = prepare(model_io.from_proto(proto), 13)  # folds every BN, keeping its statistics
    layers = {t.name: t for t in find_targets(prepared.model).targets}
    model = input_moments(layers["block0.dw"], prepared.folds.batchnorms)
    expected, tolerance = sampled(ACTIVATIONS[act], *batchnorm(proto, "block0.expand")[:2])
    assert model.activations == ({"relu6": "Clip", "hardswish": "HardSwish", "silu": "SiLU"}[act],)
    assert np.all(np.abs(model.mean - expected) < tolerance)
    residual = input_moments(layers["last"], prepared.folds.batchnorms)  # stem activation + project BN
    stem, stem_tolerance = sampled(ACTIVATIONS[act], *batchnorm(proto, "stem")[:2])
    beta = batchnorm(proto, "block0.project")[0]
    assert len(residual.batchnorms) == 2
    assert np.all(np.abs(residual.mean - (stem + beta)) < stem_tolerance)
    assert "graph input" in input_moments(layers["stem"], prepared.folds.batchnorms)


def test_bias_correction_is_the_weight_error_times_the_modelled_mean(tmp_path):
    """Depthwise layer after ReLU6: new bias = folded bias - sum_k (W_hat - W) E[ReLU6(z)], E by sampling."""
    proto = cnn()
    out, report = compress(tmp_path, proto)
    quantized = onnx.load(out)
    inits = {i.name: numpy_helper.to_array(i) for i in quantized.graph.initializer}
    conv = next(n for n in quantized.graph.node if n.name == "block0.dw")
    dq = next(n for n in quantized.graph.node if n.output[0] == conv.input[1])
    codes, scale = inits[dq.input[0]].astype(np.float64), inits[dq.input[1]].astype(np.float64)
    w_hat = codes * scale.reshape(-1, 1, 1, 1)
    w = numpy_helper.to_array(next(i for i in proto.graph.initializer if i.name == "block0.dw.w"))
    beta, gamma, mean, var = batchnorm(proto, "block0.dw")
    k = gamma / np.sqrt(var + 1e-5)
    folded_w, folded_b = w * k.reshape(-1, 1, 1, 1), beta - mean * k
    x_mean, tolerance = sampled(ACTIVATIONS["relu6"], *batchnorm(proto, "block0.expand")[:2])
    shift = (w_hat - folded_w).reshape(len(w), -1).sum(axis=1) * x_mean
    bound = np.abs((w_hat - folded_w).reshape(len(w), -1).sum(axis=1)) * tolerance + 1e-5
    assert np.all(np.abs(inits[conv.input[2]] - (folded_b - shift)) < bound)
    assert np.abs(shift).max() > 10 * bound.max()  # the correction is not negligible
    record = next(r for r in report.layers if r.name == "block0.dw")
    assert record.bias["applied"] and "BatchNormalization statistics" in record.bias["source"]


# ---------------------------------------------------------------------------------------------- the validation


def test_check_factors_closed_form_and_rejection():
    """Input channel 1 carries no variance: the isotropic least-squares factor fits an error that does not
    matter and raises the one that does, so it is rejected; with equal variances it is kept."""
    w, w_hat = np.array([[1.0, 1.0], [2.0, 1.0]]), np.array([[1.0, 0.5], [1.0, 1.0]])
    c = dfmpc.factors(w, w_hat)
    np.testing.assert_allclose(c, [1.5 / 1.25, 3.0 / 2.0])
    kept, plain, scaled = dfmpc.check_factors(w, w_hat, c, np.array([1.0, 0.0]))
    np.testing.assert_allclose(plain, [0.0, 1.0])  # sum_j Var(x_j) (w_ij - w_hat_ij)^2
    np.testing.assert_allclose(scaled, [(1 - 1.2) ** 2, (2 - 1.5) ** 2])
    np.testing.assert_allclose(kept, [1.0, 1.5])  # channel 0 rejected, channel 1 kept
    kept, plain, scaled = dfmpc.check_factors(w, w_hat, c, np.array([1.0, 1.0]))
    np.testing.assert_allclose(kept, c)
    np.testing.assert_array_less(scaled, plain)
    # grouped conv: output channel o reads input channels of its group only
    w4, w4_hat = np.ones((4, 1, 3, 3)), np.full((4, 1, 3, 3), 0.5)
    plain = dfmpc.expected_error(w4, w4_hat, np.ones(4), np.array([1.0, 2.0, 3.0, 4.0]), group=4)
    np.testing.assert_allclose(plain, 9 * 0.25 * np.array([1.0, 2.0, 3.0, 4.0]))


@pytest.mark.parametrize(
    ("folded", "decision"), [(False, "expected output error"), (True, "not applied: no statistics to check them")]
)
def test_pair_factors_are_checked_and_reported(tmp_path, folded, decision):
    _, report = compress(tmp_path, cnn(folded=folded))
    (pair,) = report.compensation["pairs"]
    assert (pair["low"], pair["next"]) == ("last", "fc")
    check = pair["validation"]
    assert decision in check["decision"]
    if folded:
        assert pair["factors"]["min"] == pair["factors"]["max"] == 1.0
    else:
        assert 0 < check["kept"] < check["channels"] == 16  # some factors kept, some rejected
        best = min(check["expected_rel_error_plain"], check["expected_rel_error_factors"])
        assert check["expected_rel_error_chosen"] < best  # the choice per channel beats all or none


# ---------------------------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("act", ["relu6", "hardswish", "silu"])
@pytest.mark.parametrize("folded", [False, True])
def test_fallback_layers_and_their_notes(tmp_path, act, folded):
    _, report = compress(tmp_path, cnn(act, folded=folded))
    comp = report.compensation
    assert [(p["low"], p["next"]) for p in comp["pairs"]] == [("last", "fc")]
    assert sorted(comp["fallback"]) == sorted(FALLBACK)
    notes = {r.name: [n for n in r.notes if n.startswith("no DF-MPC pair")] for r in report.layers}
    assert all(len(notes[name]) == 1 for name in FALLBACK) and not notes["last"] and not notes["fc"]
    assert "rounding (int4, mse scale) only (no BatchNormalization statistics: 'x' is a graph input" in notes["stem"][0]
    for name in FALLBACK[1:]:
        if folded:
            assert "only (no BatchNormalization statistics" in notes[name][0]
        else:
            assert "(int4, mse scale) + bias correction from BatchNormalization statistics" in notes[name][0]
    why = "is read by 2 nodes" if act == "silu" else "not a positively homogeneous activation"  # Sigmoid and Mul
    assert why in notes["block0.dw"][0]
    corrected = set(comp["bias_correction"]["layers"])
    assert corrected == (set() if folded else {"block0.expand", "block0.dw", "block0.project", "last", "fc"})


@pytest.mark.parametrize("act", ["relu6", "hardswish", "silu"])
@pytest.mark.parametrize("folded", [False, True])
def test_output_error_not_above_plain_rounding(tmp_path, act, folded):
    """On inputs from the distribution the BN statistics describe, the data-free default (validated factors +
    bias correction) has no more output error than plain data-free rounding, and clearly less with BN kept."""
    proto = cnn(act, folded=folded)
    x = images(256, 1)
    reference = run(proto, x)
    errors = {}
    for mode in (onnxbc.BiasCorrection.NONE, onnxbc.BiasCorrection.INDEPENDENT):
        out, _ = compress(tmp_path, proto, mode)
        onnx.checker.check_model(str(out), full_check=True)
        errors[mode] = np.square(run(out, x) - reference).sum() / np.square(reference).sum()
    plain, default = errors[onnxbc.BiasCorrection.NONE], errors[onnxbc.BiasCorrection.INDEPENDENT]
    if folded:  # nothing to correct or check with: the same model
        assert default == plain
    else:
        assert default < 0.5 * plain


def test_cli_writes_a_model_for_a_cnn_with_no_pair_and_no_statistics(tmp_path):
    """ReLU6 everywhere and BN folded at export: refused before ("no layer pair"); now rounded, with the reasons."""
    path = tmp_path / "mobile.onnx"
    proto = cnn(head="relu6", folded=True)
    onnx.save(proto, path)
    r = subprocess.run(
        [sys.executable, "-m", "onnxbc", "compress", path, "--data-free", "--weights", "int4"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert r.returncode == 0, r.stderr
    assert "0 pairs, 6 layers in no pair (plain data-free rounding), bias correction on 0 layers" in r.stdout
    assert "warning: no DF-MPC pair" in r.stderr and "--weights (int4) applies to no layer" in r.stderr
    assert "warning: no BatchNormalization statistics for any layer's input" in r.stderr
    out = tmp_path / "mobile.df-w4w8.onnx"
    onnx.checker.check_model(str(out), full_check=True)
    report = json.loads(out.with_name("mobile.df-w4w8.report.json").read_text())
    assert {r["name"]: r["weight"]["bits"] for r in report["layers"]} == dict.fromkeys([*FALLBACK, "last", "fc"], 8)
    x = images(32, 1)
    reference = run(proto, x)
    assert np.square(run(out, x) - reference).sum() / np.square(reference).sum() < 1e-3
