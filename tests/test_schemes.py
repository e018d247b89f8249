"""Quantizing schemes against their formulas on hand-computed arrays, and their defining properties."""

import math

import numpy as np
import pytest

from onnxbc.solvers.quant import Granularity, IntFormat, dequantize, expand_scale, quantize, weight_scale
from onnxbc.solvers.schemes import (
    Scheme,
    best_scheme,
    gaussian_mse,
    gaussian_step,
    quantize_scheme,
    squared_error,
)

W = np.array([0.6, -1.2, 0.2, 2.0], np.float32)  # mean|w| = 1.0, max|w| = 2.0, mean = 0.4, var = 1.3

GRANULARITIES = [Granularity(), Granularity(0), Granularity(1), Granularity(1, 16), Granularity(0, 4)]


def _weight(seed: int = 0, shape=(10, 37)) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * 0.1).astype(np.float32)


# --- each scheme against its formula, by hand ----------------------------------------------------------


def test_uniform_by_hand():
    r = quantize_scheme(W, "uniform", 3)  # s = 2 / 3; w / s = [0.9, -1.8, 0.3, 3]
    np.testing.assert_allclose(r.scale, 2 / 3, rtol=1e-6)
    np.testing.assert_array_equal(r.codes, [1, -2, 0, 3])
    np.testing.assert_allclose(r.dequantized, [2 / 3, -4 / 3, 0, 2], rtol=1e-6)
    assert r.qdq and r.fmt.qmin == -4 and r.fmt.qmax == 3


def test_affine_by_hand():
    r = quantize_scheme(W, "affine", 2)  # s = 3.2 / 3, z = round(1.2 / s) = 1, round(w / s) = [1, -1, 0, 2]
    s = 3.2 / 3
    np.testing.assert_allclose(r.scale, s, rtol=1e-6)
    assert int(r.zero_point) == 1
    np.testing.assert_array_equal(r.codes, [2, 0, 1, 3])
    np.testing.assert_allclose(r.dequantized, [s, -s, 0, 2 * s], rtol=1e-6)


def test_clipped_is_uniform_with_the_gaussian_step_times_rms():
    r = quantize_scheme(W, "clipped", 3)
    s = gaussian_step(3, midrise=False) * math.sqrt(np.mean(W.astype(np.float64) ** 2))
    np.testing.assert_allclose(r.scale, s, rtol=1e-6)
    np.testing.assert_array_equal(r.codes, np.clip(np.rint(W / np.float32(s)), -4, 3))
    np.testing.assert_allclose(r.dequantized, r.codes * np.float32(s), rtol=1e-6)


def test_pow2_by_hand():
    r = quantize_scheme(W, "pow2", 3)  # levels {0, 1, 2, 4}, s = 2 / 4; |w| / s = [1.2, 2.4, 0.4, 4]
    np.testing.assert_allclose(r.scale, 0.5)
    np.testing.assert_array_equal(r.codes, [1, -2, 0, 4])
    np.testing.assert_allclose(r.dequantized, [0.5, -1.0, 0.0, 2.0])
    assert r.fmt.qmax >= 4  # +4 needs the full int4 range, not 3-bit codes


def test_ternary_by_hand():
    r = quantize_scheme(W, "ternary", 2)  # t = 0.7; kept |w| = {1.2, 2.0}, a = 1.6
    np.testing.assert_allclose(r.scale, 1.6, rtol=1e-6)
    np.testing.assert_array_equal(r.codes, [0, -1, 0, 1])
    np.testing.assert_allclose(r.dequantized, [0, -1.6, 0, 1.6], rtol=1e-6)


def test_binary_by_hand():
    r = quantize_scheme(np.array([0.6, -1.2, 0.0, 2.2], np.float32), "binary", 1)  # a = 1.0, sign(0) = +1
    np.testing.assert_allclose(r.scale, 1.0, rtol=1e-6)
    np.testing.assert_array_equal(r.codes, [1, -1, 1, 1])
    np.testing.assert_allclose(r.dequantized, [1, -1, 1, 1], rtol=1e-6)


def test_fixed_point_by_hand():
    r = quantize_scheme(W, "fixed", 3)  # max / qmax = 2 / 3 -> s = 2^ceil(log2(0.667)) = 1
    assert float(r.scale) == 1.0
    np.testing.assert_array_equal(r.codes, [1, -1, 0, 2])
    r = quantize_scheme(W * 10, "fixed", 4)  # 20 / 7 = 2.86 -> s = 4; w / 4 = [1.5, -3, 0.5, 5]
    assert float(r.scale) == 4.0
    np.testing.assert_array_equal(r.codes, [2, -3, 0, 5])  # round half to even


def test_mul2q_by_hand():
    r = quantize_scheme(W, "mul2q", 1)  # mu = 0.4, sigma = sqrt(1.3), D = 1.5958 sigma
    d = 1.5957691 * math.sqrt(1.3)
    np.testing.assert_allclose(r.scale, d, rtol=1e-5)
    np.testing.assert_allclose(r.offset, 0.4, rtol=1e-6)
    np.testing.assert_array_equal(r.codes, [0, -1, -1, 0])  # floor((w - mu) / D), deviations [.2, -1.6, -.2, 1.6]
    np.testing.assert_allclose(r.dequantized, 0.4 + d * np.array([0.5, -0.5, -0.5, 0.5]), rtol=1e-5)
    assert not r.qdq


def test_residual_binarization_by_hand():
    r = quantize_scheme(W, "residual", 2)  # a1 = 1, r1 = [-.4, -.2, -.8, 1], a2 = 0.6
    np.testing.assert_allclose(r.scale, [1.0, 0.6], rtol=1e-6)
    np.testing.assert_array_equal(r.codes, [[1, -1, 1, 1], [-1, -1, -1, 1]])
    np.testing.assert_allclose(r.dequantized, [0.4, -1.6, 0.4, 1.6], rtol=1e-6)
    assert not r.qdq


# --- Gaussian constants -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bits, step", [(1, 1.596), (2, 0.9957), (3, 0.5860), (4, 0.3352)])
def test_midrise_step_reproduces_max_1960_table(bits, step):
    assert gaussian_step(bits, midrise=True) == pytest.approx(step, abs=6e-4)


def test_gaussian_mse_closed_form_matches_sampling():
    x = np.random.default_rng(1).standard_normal(400_000)
    levels = np.array([-1.5, -0.5, 0.5, 1.5]) * 0.9957
    nearest = levels[np.abs(x[:, None] - levels).argmin(axis=1)]
    assert gaussian_mse(levels) == pytest.approx(np.mean((x - nearest) ** 2), rel=0.02)
    assert gaussian_mse(levels) == pytest.approx(0.1188, abs=5e-4)  # Max's minimum distortion, 4 levels


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_midtread_step_is_the_minimum(bits):
    fmt = IntFormat(bits, np.dtype(np.int8))
    unit = np.arange(fmt.qmin, fmt.qmax + 1)
    d = gaussian_step(bits, midrise=False)
    best = gaussian_mse(d * unit)
    assert best < gaussian_mse(0.97 * d * unit) and best < gaussian_mse(1.03 * d * unit)


# --- properties on random weights ------------------------------------------------------------------------

SYMMETRIC_QDQ = [
    (s, b) for s in Scheme if s.qdq and s is not Scheme.AFFINE for b in s.bit_widths if b in (1, 2, 3, 4, 8)
]


@pytest.mark.parametrize("gran", GRANULARITIES, ids=lambda g: g.describe() + str(g.axis))
@pytest.mark.parametrize("scheme, bits", SYMMETRIC_QDQ, ids=str)
def test_qdq_schemes_are_codes_in_range_times_one_scale(scheme, bits, gran):
    w = _weight(2)
    r = quantize_scheme(w, scheme, bits, gran)
    assert r.codes.shape == w.shape and r.dequantized.shape == w.shape and r.dequantized.dtype == np.float32
    assert r.codes.min() >= r.fmt.qmin and r.codes.max() <= r.fmt.qmax
    assert np.all(r.scale > 0)
    np.testing.assert_allclose(dequantize(r.codes, r.scale, gran), r.dequantized, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("gran", GRANULARITIES, ids=lambda g: g.describe() + str(g.axis))
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_uniform_matches_quant_minmax(bits, gran):
    """Same scales and codes as ``quant.weight_scale(minmax)`` + ``quant.quantize``: the group layout agrees."""
    w = _weight(3)
    r = quantize_scheme(w, "uniform", bits, gran)
    fmt = IntFormat(bits, np.dtype(np.int8))
    s = weight_scale(w, fmt, gran, "minmax")
    np.testing.assert_allclose(r.scale, s, rtol=1e-6)
    np.testing.assert_array_equal(r.codes, quantize(w, s, fmt, gran).astype(np.int16))


@pytest.mark.parametrize("gran", GRANULARITIES, ids=lambda g: g.describe() + str(g.axis))
@pytest.mark.parametrize("scheme", ["uniform", "fixed", "affine"])
@pytest.mark.parametrize("bits", [3, 4, 8])
def test_unclipped_uniform_schemes_err_by_at_most_half_a_step(scheme, bits, gran):
    w = _weight(4)
    r = quantize_scheme(w, scheme, bits, gran)
    half = expand_scale(r.scale, w.shape, gran) / 2
    assert np.all(np.abs(w - r.dequantized) <= half * (1 + 1e-5) + 1e-12)


def test_affine_codes_and_zero_points_in_range():
    w = _weight(5) + 0.05  # off-centre, so zero points differ per channel
    r = quantize_scheme(w, "affine", 4, Granularity(1))
    assert r.codes.min() >= 0 and r.codes.max() <= 15
    assert r.zero_point.min() >= 0 and r.zero_point.max() <= 15
    expected = (r.codes - expand_scale(r.zero_point, w.shape, Granularity(1))) * expand_scale(
        r.scale, w.shape, Granularity(1)
    )
    np.testing.assert_allclose(r.dequantized, expected, rtol=1e-6)


def test_clipped_saturates_only_beyond_the_clip():
    w = _weight(6, (4096,))
    r = quantize_scheme(w, "clipped", 4)
    s = float(r.scale)
    inside = np.abs(w) <= 7 * s
    assert np.all(np.abs(w - r.dequantized)[inside] <= s / 2 * (1 + 1e-5))
    assert np.any(~inside)  # a Gaussian sample of 4096 reaches beyond the clip (2.4 sigma at 4 bits)
    assert quantize_scheme(w, "clipped", 4).dequantized.std() > 0


def test_clipped_beats_minmax_on_gaussian_weights_at_low_bits():
    w = _weight(7, (64, 256))
    for bits in (2, 3):
        clipped = squared_error(w, quantize_scheme(w, "clipped", bits, Granularity(0)).dequantized)
        minmax = squared_error(w, quantize_scheme(w, "uniform", bits, Granularity(0)).dequantized)
        assert clipped < 0.8 * minmax


@pytest.mark.parametrize("gran", GRANULARITIES, ids=lambda g: g.describe() + str(g.axis))
def test_ternary_and_binary_take_two_values_per_group(gran):
    w = _weight(8)
    t = quantize_scheme(w, "ternary", 2, gran)
    a = np.broadcast_to(expand_scale(t.scale, w.shape, gran), w.shape)
    assert set(np.unique(t.codes)) <= {-1, 0, 1}
    np.testing.assert_allclose(np.abs(t.dequantized)[t.codes != 0], a[t.codes != 0], rtol=1e-6)
    b = quantize_scheme(w, "binary", 1, gran)
    assert set(np.unique(b.codes)) == {-1, 1}
    np.testing.assert_array_equal(b.codes, np.where(w >= 0, 1, -1))


def test_ternary_threshold_and_scale_per_channel():
    w = _weight(9, (8, 50))
    r = quantize_scheme(w, "ternary", 2, Granularity(0))
    for c in range(8):
        row = np.abs(w[c].astype(np.float64))
        kept = row > 0.7 * row.mean()
        np.testing.assert_array_equal(r.codes[c] != 0, kept)
        assert r.scale[c] == pytest.approx(row[kept].mean(), rel=1e-6)


def test_pow2_codes_are_zero_or_signed_powers_of_two():
    w = _weight(10)
    for bits, top in [(2, 1), (3, 4), (4, 64)]:
        r = quantize_scheme(w, "pow2", bits, Granularity(0))
        mags = np.abs(r.codes[r.codes != 0]).astype(np.int64)
        assert np.all(mags & (mags - 1) == 0) and mags.max() == top
        assert r.fmt.qmin <= -top and r.fmt.qmax >= top


def test_fixed_point_scale_is_the_smallest_power_of_two_that_holds_max():
    w = _weight(11)
    r = quantize_scheme(w, "fixed", 4, Granularity(0))
    amax = np.abs(w).max(axis=1)
    log = np.log2(r.scale)
    np.testing.assert_array_equal(log, np.round(log))
    assert np.all(r.scale >= amax / 7) and np.all(r.scale / 2 < amax / 7)


def test_residual_error_falls_by_n_a_squared_per_term():
    """Greedy residual binarization: ||r_i||^2 = ||r_(i-1)||^2 - n a_i^2 exactly (a_i = mean|r_(i-1)|)."""
    w = _weight(12, (300,)).astype(np.float64)
    previous = float(np.sum(w**2))
    for bits in (1, 2, 3, 4):
        r = quantize_scheme(w, "residual", bits)
        err = squared_error(w, r.dequantized)
        assert err == pytest.approx(previous - w.size * float(r.scale[-1]) ** 2, rel=1e-4)
        assert err < previous
        previous = err


def test_mul2q_unclipped_values_within_half_a_step():
    w = _weight(13, (2000,)) + 0.3
    r = quantize_scheme(w, "mul2q", 3)
    d, mu = float(r.scale), float(r.offset)
    inside = np.abs(w - mu) <= 4 * d
    assert np.all(np.abs(w - r.dequantized)[inside] <= d / 2 * (1 + 1e-5))


@pytest.mark.parametrize("scheme", list(Scheme))
def test_all_zero_weight_gives_zero_and_positive_scales(scheme):
    w = np.zeros((3, 8), np.float32)
    r = quantize_scheme(w, scheme, scheme.bit_widths[0], Granularity(0))
    np.testing.assert_array_equal(r.dequantized, 0)
    assert np.all(r.scale > 0) if scheme.qdq else np.all(r.scale >= 0)


def test_qdq_flags():
    assert {s for s in Scheme if not s.qdq} == {Scheme.MUL2Q, Scheme.RESIDUAL}


def test_bits_outside_the_scheme_are_refused():
    with pytest.raises(ValueError, match="ternary"):
        quantize_scheme(W, "ternary", 4)
    with pytest.raises(ValueError):
        quantize_scheme(W, "nope", 4)


# --- best_scheme ------------------------------------------------------------------------------------------


def test_best_scheme_returns_the_least_error_and_every_error():
    w = _weight(14, (16, 64))
    best, errors = best_scheme(w, 2, gran=Granularity(0))
    assert set(errors) == {s for s in Scheme if 2 in s.bit_widths}
    assert errors[best.scheme] == min(errors.values())
    for scheme, err in errors.items():
        assert err == pytest.approx(squared_error(w, quantize_scheme(w, scheme, 2, Granularity(0)).dequantized))


def test_best_scheme_skips_candidates_not_defined_at_bits_and_refuses_none():
    best, errors = best_scheme(W, 1, ["binary", "ternary", "uniform", "residual"])
    assert set(errors) == {Scheme.BINARY, Scheme.RESIDUAL}
    with pytest.raises(ValueError, match="no candidate"):
        best_scheme(W, 8, ["binary", "ternary"])


def test_best_scheme_input_weights_change_the_choice():
    """A zero weight on an element makes its error free: the choice follows the weighted error only."""
    w = np.append(np.random.default_rng(15).standard_normal(255) * 0.1, 3.0).astype(np.float32)  # one outlier
    _, plain = best_scheme(w, 2, ["uniform", "ternary"])
    assert plain[Scheme.UNIFORM] < plain[Scheme.TERNARY]  # ternary's scale misses the outlier by ~2.8
    ignore_outlier = np.append(np.ones(255), 0.0)
    best, weighted = best_scheme(w, 2, ["uniform", "ternary"], weights=ignore_outlier)
    assert best.scheme is Scheme.TERNARY and weighted[Scheme.TERNARY] < weighted[Scheme.UNIFORM]
    _, ones = best_scheme(w, 2, ["uniform", "ternary"], weights=np.ones(256))
    assert ones == pytest.approx(plain)


def test_stored_size_counts_the_container_not_the_logical_bits():
    w = _weight(16, (10, 37))  # 370 weights, 37 channels on axis 1
    gran = Granularity(1)
    size = {(s, b): quantize_scheme(w, s, b, gran) for s, b in [("uniform", 4), ("uniform", 3), ("uniform", 8)]}
    assert size["uniform", 4].stored_bytes() == 185 + 37 * 4
    assert size["uniform", 3].stored_bits == 4 and size["uniform", 3].stored_bytes() == 185 + 37 * 4
    assert size["uniform", 8].stored_bytes(scale_bytes=2) == 370 + 37 * 2
    assert quantize_scheme(w, "ternary", 2, gran).stored_bits == 4
    assert quantize_scheme(w, "pow2", 4, gran).stored_bits == 8  # codes up to +-64
    assert quantize_scheme(w, "affine", 4, gran).stored_bytes() == 185 + 37 * 4 + 19  # 37 uint4 zero points
    assert quantize_scheme(w, "residual", 2, gran).stored_bytes() == 370 * 4  # emulated: float32 weights
