"""Solvers against hand-computed values and their defining properties."""

import ml_dtypes
import numpy as np
import pytest

from onnxbc.solvers.bias import ErrorMoments, solve_bias
from onnxbc.solvers.quant import (
    INT3,
    INT4,
    INT8,
    Granularity,
    _mse_clip,
    dequantize,
    expand_scale,
    mse_grid,
    quantize,
    weight_scale,
)
from onnxbc.solvers.ranges import AbsHistogram, choose_range


def test_minmax_per_channel_by_hand():
    w = np.array([[1.0, -2.0], [0.5, 0.25], [-4.0, 1.0]], np.float32)  # channels on axis 1
    s = weight_scale(w, INT8, Granularity(axis=1), "minmax")
    np.testing.assert_allclose(s, [4.0 / 127, 2.0 / 127])
    q = quantize(w, s, INT8, Granularity(axis=1))
    assert q.dtype == np.int8
    np.testing.assert_array_equal(q[:, 0], np.rint(np.array([1.0, 0.5, -4.0]) / (4.0 / 127)))
    assert q[2, 0] == -127 and q[0, 1] == -127


def test_int4_codes_stay_symmetric_and_in_container():
    w = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    s = weight_scale(w, INT4, Granularity(axis=0), "minmax")
    q = quantize(w, s, INT4, Granularity(axis=0))
    assert q.dtype == np.dtype(ml_dtypes.int4)
    codes = q.astype(np.int8)
    assert codes.min() >= -8 and codes.max() <= 7
    assert np.abs(codes).max(axis=1).min() >= 7  # each channel's largest weight maps to +-7 (or -8)


def test_three_bits_use_codes_minus4_to_3_in_an_int4_container():
    w = np.random.default_rng(7).standard_normal((64, 16)).astype(np.float32)
    gran = Granularity(1)
    s = weight_scale(w, INT3, gran, "mse")
    q = quantize(w, s, INT3, gran)
    assert q.dtype == np.dtype(ml_dtypes.int4)
    assert set(np.unique(q.astype(np.int8))) <= set(range(-4, 4)) and q.astype(np.int8).min() == -4
    err3 = np.square(dequantize(q, s, gran) - w).mean()
    s4 = weight_scale(w, INT4, gran, "mse")
    err4 = np.square(dequantize(quantize(w, s4, INT4, gran), s4, gran) - w).mean()
    assert err4 < err3 < 0.1 * np.square(w).mean()


@pytest.mark.parametrize("shape,axis,block", [((64, 10), 0, 16), ((70, 10), 0, 32), ((6, 48, 3, 3), 1, 16)])
def test_block_scale_layout_follows_onnx(shape, axis, block):
    w = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    gran = Granularity(axis, block)
    s = weight_scale(w, INT4, gran, "minmax")
    expected = list(shape)
    expected[axis] = -(-shape[axis] // block)
    assert s.shape == tuple(expected)
    # Each scale covers exactly its block: the block's max maps to qmax.
    full = expand_scale(s, w.shape, gran)
    first = np.take(w, range(min(block, shape[axis])), axis=axis)
    np.testing.assert_allclose(
        np.take(full, [0], axis=axis), np.abs(first).max(axis=axis, keepdims=True) / 7, rtol=1e-6
    )


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
@pytest.mark.parametrize(
    "shape,gran",
    [
        ((40, 24), Granularity(1)),
        ((40, 24), Granularity(0)),
        ((48, 24), Granularity(0, 16)),
        ((20, 48, 3), Granularity(1, 16)),
        ((96,), Granularity(0, 16)),
        ((40, 24), Granularity(None)),
    ],
    ids=["channel-last", "channel-first", "block-rows", "block-middle", "block-1d", "tensor"],
)
def test_chunked_results_equal_whole_tensor_results(monkeypatch, shape, gran, method):
    w = np.random.default_rng(8).standard_t(4, size=shape).astype(np.float32)
    whole_scale = weight_scale(w, INT4, gran, method)
    whole_codes = quantize(w, whole_scale, INT4, gran)
    monkeypatch.setattr("onnxbc.solvers.quant.CHUNK_ELEMENTS", 64)  # many chunks
    chunked_scale = weight_scale(w, INT4, gran, method)
    if method == "percentile" and gran.axis is None:  # histogram-based when chunked: equal within a bin
        np.testing.assert_allclose(chunked_scale, whole_scale, rtol=0.02)
        return
    np.testing.assert_array_equal(chunked_scale, whole_scale)
    np.testing.assert_array_equal(quantize(w, chunked_scale, INT4, gran), whole_codes)


def test_per_tensor_scale_is_scalar():
    w = np.array([[3.0, -1.0]], np.float32)
    s = weight_scale(w, INT8, Granularity(None), "minmax")
    assert s.shape == () and s == pytest.approx(3.0 / 127)


def test_mse_scale_never_worse_than_minmax():
    rng = np.random.default_rng(2)
    w = rng.standard_t(3, size=(32, 64)).astype(np.float32)  # heavy tails: clipping pays off
    for fmt in (INT8, INT4):
        errs = {}
        for method in ("minmax", "mse"):
            gran = Granularity(0)
            s = weight_scale(w, fmt, gran, method)
            errs[method] = np.square(dequantize(quantize(w, s, fmt, gran), s, gran) - w).sum(axis=1)
        assert np.all(errs["mse"] <= errs["minmax"] + 1e-9)
    assert errs["mse"].sum() < 0.9 * errs["minmax"].sum()  # and clearly better at 4 bits


def test_percentile_scale_clips():
    w = np.concatenate([np.linspace(-1, 1, 999), [50.0]]).astype(np.float32).reshape(1, -1)
    s = weight_scale(w, INT8, Granularity(None), "percentile", percentile=99.0)
    assert float(s) * 127 < 2.0


def test_histogram_growth_is_exact():
    rng = np.random.default_rng(3)
    batches = [rng.standard_normal(1000) * scale for scale in (0.1, 1.0, 10.0, 3.0)]
    hist = AbsHistogram(bins=256)
    for b in batches:
        hist.update(b)
    a = np.abs(np.concatenate(batches))
    assert hist.total == a.size and hist.max == pytest.approx(a.max())
    # Counts above the first batch's range were binned at the final resolution: compare coarsely.
    assert hist.top >= a.max()
    edges = hist.edges()
    coarse = np.histogram(a, bins=edges)[0]
    # Only the first batches (binned at a finer resolution, then merged) may straddle bin borders.
    assert np.abs(coarse - hist.counts).sum() <= 2 * len(batches[0]) + 2 * len(batches[1])


def test_histogram_tracks_sign_and_nonfinite():
    hist = AbsHistogram()
    hist.update(np.array([0.0, 1.0, 2.0, np.inf, np.nan], np.float32))
    assert hist.nonnegative and hist.nonfinite == 2 and hist.total == 3
    hist.update(np.array([-0.5], np.float32))
    assert not hist.nonnegative


def test_ranges_by_method():
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.standard_normal(100_000), [40.0]])  # one outlier
    hist = AbsHistogram()
    hist.update(x)
    assert choose_range(hist, "minmax", 127) == pytest.approx(40.0)
    p = choose_range(hist, "percentile", 127, percentile=99.0)
    assert 2.3 < p < 2.8  # |N(0,1)| 99th percentile is 2.576
    mse = choose_range(hist, "mse", 127)
    assert p < mse < 40.0  # trades the lone outlier's clipping error against rounding error of the body
    assert choose_range(AbsHistogram(), "mse", 127) == 1.0  # never observed: a harmless scale


def test_mse_range_matches_brute_force():
    rng = np.random.default_rng(5)
    x = rng.laplace(size=50_000).astype(np.float32)
    hist = AbsHistogram(bins=512)
    hist.update(x)
    c = choose_range(hist, "mse", 7)

    def err(clip):
        s = clip / 7
        return np.square(np.clip(np.rint(x / s), -7, 7) * s - x).mean()

    grid = np.linspace(0.5, np.abs(x).max(), 400)
    best = min(err(g) for g in grid)
    assert err(c) <= 1.05 * best


def test_bias_closed_form_by_hand():
    # d over 2 batches, 2 channels: channel 0 errors {1, 3, 2}, channel 1 errors {0, -2, 2}
    m = ErrorMoments()
    m.update(sum_d=[4.0, -2.0], sum_d2=[10.0, 4.0], sum_y2=[1.0, 1.0], count=2)
    m.update(sum_d=[2.0, 2.0], sum_d2=[4.0, 4.0], sum_y2=[1.0, 1.0], count=1)
    b = solve_bias(m)
    np.testing.assert_allclose(b, [2.0, 0.0])
    assert m.mse() == pytest.approx((14.0 + 8.0) / 6)
    # after: channel 0 residuals {-1, 1, 0} -> 2; channel 1 unchanged -> 8
    assert m.mse(b) == pytest.approx((2.0 + 8.0) / 6)
    assert m.rel_mse() == pytest.approx(m.mse() / (4.0 / 6))


def test_bias_never_raises_error_on_fitted_data():
    rng = np.random.default_rng(6)
    for _ in range(50):
        d = rng.standard_normal((rng.integers(1, 40), 5)) + rng.standard_normal(5)
        y = rng.standard_normal(d.shape)
        m = ErrorMoments()
        m.update(d.sum(0), (d * d).sum(0), (y * y).sum(0), len(d))
        b = solve_bias(m)
        assert m.mse(b) <= m.mse() + 1e-12
        np.testing.assert_allclose(m.mse(b), np.square(d - b).mean(), rtol=1e-9)


def test_input_weighted_mse_search_minimizes_the_weighted_error():
    """With the input power per weight column, the search prices errors by what they cost at the output:
    a large weight that only ever meets near-zero inputs is clipped, and the weighted error is lowest."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((16, 32)).astype(np.float32)
    w[:, 0] *= 8.0  # the widest column ...
    power = np.ones((1, 32), np.float32)
    power[0, 0] = 1e-4  # ... multiplies an input that is almost always ~0
    gran = Granularity(0)
    plain = weight_scale(w, INT4, gran, "mse")
    weighted = weight_scale(w, INT4, gran, "mse", importance=power)

    def cost(s, weights):
        return (np.square(dequantize(quantize(w, s, INT4, gran), s, gran) - w) * weights).sum()

    assert cost(weighted, power) < 0.5 * cost(plain, power)
    assert np.all(weighted <= plain) and np.any(weighted < 0.8 * plain)  # the wide column is clipped
    np.testing.assert_array_equal(weight_scale(w, INT4, gran, "mse", importance=np.ones_like(w)), plain)


@pytest.mark.parametrize("fmt", [INT8, INT4])
def test_mse_search_in_cache_blocks_chooses_as_the_search_over_whole_rows(fmt):
    """The MSE search runs a few rows at a time (``MSE_BLOCK``); its choices are those of trying every ratio on
    the whole weight at once, with and without input weights, for rows longer and shorter than a block."""
    rng = np.random.default_rng(11)

    def whole(groups, amax, weights):
        best, best_err = amax.copy(), np.full(len(groups), np.inf)
        safe = np.where(amax > 0, amax, 1.0)
        for ratio in mse_grid(fmt):
            s = (safe * ratio / fmt.qmax)[:, None]
            sq = np.square(np.clip(np.rint(groups / s), fmt.qmin, fmt.qmax) * s - groups)
            err = (sq if weights is None else sq * weights).sum(axis=1)
            better = err < best_err
            best_err[better], best[better] = err[better], amax[better] * ratio
        return best

    for shape in [(700, 96), (3, 50000), (257, 1)]:
        groups = (rng.standard_normal(shape) * rng.exponential(1.0, (shape[0], 1))).astype(np.float32)
        groups[1] = 0.0
        amax = np.abs(groups).max(axis=1)
        for weights in (None, rng.exponential(1.0, shape).astype(np.float32)):
            np.testing.assert_array_equal(_mse_clip(groups, amax, fmt, weights), whole(groups, amax, weights))


@pytest.mark.parametrize(
    "shape,gran,axis",
    [
        ((40, 24), Granularity(1), 1),
        ((40, 24), Granularity(0), 1),
        ((48, 24), Granularity(0, 16), 1),
        ((48, 24), Granularity(0, 16), 0),
        ((20, 48, 3), Granularity(1, 16), 0),
        ((40, 24), Granularity(None), 0),
        ((), Granularity(None), 0),
    ],
    ids=["channel-other", "channel", "block-rows", "along-blocks", "block-middle", "tensor", "scalar"],
)
@pytest.mark.parametrize("zero", [False, True], ids=["symmetric", "zero-point"])
def test_dequantized_parts_make_up_the_dequantized_weight(monkeypatch, shape, gran, axis, zero):
    """``WeightQuant.dequantized_parts`` (pricing's chunks) cover the weight once, each equal to its part of the
    dequantized weight, for every scale layout; ``dequantized()`` (assembled from them) equals it whole."""
    from onnxbc.plan import WeightQuant

    monkeypatch.setattr("onnxbc.solvers.quant.CHUNK_ELEMENTS", 64)  # many chunks
    w = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    scale = weight_scale(w, INT4, gran, "minmax")
    codes = quantize(w, scale, INT4, gran)
    zero_point = None
    if zero:
        codes = (codes.astype(np.int8) + 8).astype(ml_dtypes.uint4)
        zero_point = np.full(scale.shape, 8, ml_dtypes.uint4)
    wq = WeightQuant("w", codes, scale, gran, 4, "minmax", zero_point=zero_point)
    shift = 0 if zero_point is None else expand_scale(zero_point.astype(np.float32), shape, gran)
    whole = dequantize(codes.astype(np.float32) - shift, scale, gran)
    np.testing.assert_array_equal(wq.dequantized(), whole)
    covered = np.zeros(shape, int)
    parts = list(wq.dequantized_parts(axis))
    assert len(parts) > 1 or not shape
    for index, values in parts:
        np.testing.assert_array_equal(values, whole[index])
        covered[index] += 1
    assert (covered == 1).all()
