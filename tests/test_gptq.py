"""GPTQ rounding: equals round-to-nearest when inputs are white, beats it on correlated inputs, codes in range."""

import ml_dtypes
import numpy as np
import pytest

from onnxbc.calibration.stash import Stash
from onnxbc.solvers.gptq import (
    SecondMoments,
    _damped_cholesky,
    _lower_inverse,
    _upper_inverse,
    gptq_quantize,
    output_error,
)
from onnxbc.solvers.quant import INT3, INT4, INT8, Granularity, dequantize, quantize, weight_scale


def _correlated_inputs(rng: np.random.Generator, n: int, features: int) -> np.ndarray:
    """Rows with strongly correlated features and unequal power (like real activations), nonzero mean."""
    mixing = rng.standard_normal((features, features)) / np.sqrt(features)
    mixing += 0.9 * np.ones((features, features)) / features  # a shared component
    return rng.standard_normal((n, 16)) @ rng.standard_normal((16, features)) * 0.7 + (
        rng.standard_normal((n, features)) @ mixing + 0.2
    )


def _layer(seed: int, n_in: int = 128, n_out: int = 48, n: int = 4096, held_out: int = 0):
    """A MatMul weight ``[in, out]`` and ``n`` calibration rows (plus ``held_out`` rows of the same law)."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n_in, n_out)) * 0.05).astype(np.float32)
    x = _correlated_inputs(rng, n + held_out, n_in)
    return (w, x) if not held_out else (w, x[:n], x[n:])


@pytest.mark.parametrize(
    "gran", [Granularity(1), Granularity(0, 32), Granularity()], ids=["channel", "block", "tensor"]
)
@pytest.mark.parametrize("fmt", [INT8, INT4, INT3], ids=lambda f: f"int{f.bits}")
def test_identity_second_moments_give_round_to_nearest(fmt, gran):
    w, _ = _layer(0)
    s = weight_scale(w, fmt, gran, "mse")
    codes = gptq_quantize(w, np.eye(w.shape[0]), s, fmt, gran, input_axis=0)
    np.testing.assert_array_equal(codes.astype(np.int8), quantize(w, s, fmt, gran).astype(np.int8))


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("fmt", [INT4, INT3], ids=lambda f: f"int{f.bits}")
@pytest.mark.parametrize("gran", [Granularity(1), Granularity(0, 32)], ids=["channel", "block"])
def test_gptq_beats_round_to_nearest_on_correlated_inputs(fmt, gran, act_order):
    """Same scales; error on the calibration rows and on held-out rows from the same distribution."""
    w, x, held_out = _layer(1, held_out=4096)
    moments = SecondMoments()
    moments.update(x)
    s = weight_scale(w, fmt, gran, "mse")
    rtn = dequantize(quantize(w, s, fmt, gran), s, gran)
    gptq = dequantize(gptq_quantize(w, moments.matrix(), s, fmt, gran, input_axis=0, act_order=act_order), s, gran)
    for rows in (x, held_out):
        err_rtn = np.square(rows @ (w - rtn)).sum()
        err_gptq = np.square(rows @ (w - gptq)).sum()
        assert err_gptq < 0.35 * err_rtn, (err_gptq / err_rtn, fmt.bits)  # measured 0.15-0.22


@pytest.mark.parametrize("fmt", [INT8, INT4, INT3], ids=lambda f: f"int{f.bits}")
def test_codes_in_range_and_container(fmt):
    w, x = _layer(2, n_in=40, n_out=16, n=512)
    s = weight_scale(w, fmt, Granularity(1), "mse") * 0.5  # tight scales: many codes saturate
    codes = gptq_quantize(w, x.T @ x / len(x), s, fmt, Granularity(1), input_axis=0, block_size=16)
    assert codes.dtype == fmt.storage and codes.shape == w.shape
    values = codes.astype(np.int16)
    assert values.min() >= fmt.qmin and values.max() <= fmt.qmax
    assert values.min() == fmt.qmin or values.max() == fmt.qmax
    if fmt is not INT8:
        assert codes.dtype == np.dtype(ml_dtypes.int4)


def test_input_axis_and_block_size_do_not_change_the_result():
    """[in, out] vs [out, in] orientation give transposed codes; lazy block updates equal block size 1."""
    w, x = _layer(3, n_in=64, n_out=24, n=1024)
    h = x.T @ x / len(x)
    s = weight_scale(w, INT4, Granularity(1), "minmax")
    a = gptq_quantize(w, h, s, INT4, Granularity(1), input_axis=0, block_size=128).astype(np.int8)
    b = gptq_quantize(w.T, h, s, INT4, Granularity(0), input_axis=1, block_size=128).astype(np.int8)
    c = gptq_quantize(w, h, s, INT4, Granularity(1), input_axis=0, block_size=1).astype(np.int8)
    d = gptq_quantize(w, h, s, INT4, Granularity(1), input_axis=0, block_size=7).astype(np.int8)
    np.testing.assert_array_equal(a, b.T)
    assert (a != c).mean() < 1e-3 and (a != d).mean() < 1e-3  # equal up to float rounding at ties


@pytest.mark.parametrize(
    "gran,input_axis",
    [(Granularity(1), 0), (Granularity(0, 16), 0), (Granularity(0), 1), (Granularity(1, 16), 1), (Granularity(), 0)],
    ids=["channel", "block", "channel-transposed", "block-transposed", "tensor"],
)
@pytest.mark.parametrize("act_order", [False, True])
def test_rows_rounded_a_few_at_a_time_give_the_same_codes(monkeypatch, gran, input_axis, act_order):
    """Output rows are independent in GPTQ: rounding them in chunks (``ROWS_ELEMENTS``: an LM head is hundreds of
    MB in float64) gives the codes of one pass over all of them."""
    w, x = _layer(4, n_in=64, n_out=40, n=1024)
    w = w if input_axis == 0 else np.ascontiguousarray(w.T)
    h = x.T @ x / len(x)
    s = weight_scale(w, INT4, gran, "minmax")
    whole = gptq_quantize(w, h, s, INT4, gran, input_axis=input_axis, act_order=act_order).astype(np.int8)
    monkeypatch.setattr("onnxbc.solvers.gptq.ROWS_ELEMENTS", 64 * 3)  # rows of 3 outputs at a time
    chunked = gptq_quantize(w, h, s, INT4, gran, input_axis=input_axis, act_order=act_order).astype(np.int8)
    assert (chunked != whole).mean() < 1e-3  # equal up to float rounding at ties (BLAS blocks by row count)


def test_dead_inputs_get_zero_codes():
    w, x = _layer(4, n_in=32, n_out=8, n=512)
    x[:, [3, 17]] = 0.0
    s = weight_scale(w, INT4, Granularity(1), "minmax")
    codes = gptq_quantize(w, x.T @ x / len(x), s, INT4, Granularity(1), input_axis=0).astype(np.int8)
    assert np.all(codes[[3, 17]] == 0)


def test_rank_deficient_second_moments_are_damped():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 32))  # 8 samples, 32 features: H has rank 8
    w = rng.standard_normal((32, 4)).astype(np.float32)
    s = weight_scale(w, INT4, Granularity(1), "minmax")
    codes = gptq_quantize(w, x.T @ x / 8, s, INT4, Granularity(1), input_axis=0)
    assert np.isfinite(codes.astype(np.float32)).all()


def test_bad_shapes_are_refused():
    w = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="second moments"):
        gptq_quantize(w, np.eye(3), np.ones(3, np.float32), INT4, Granularity(1), input_axis=0)
    with pytest.raises(ValueError, match="2-D"):
        gptq_quantize(np.zeros((2, 2, 2)), np.eye(2), np.ones(1), INT4, Granularity())


def test_second_moments_stream_equals_numpy():
    rng = np.random.default_rng(6)
    batches = [rng.standard_normal((3, 5, 7)), rng.standard_normal((2, 7)), rng.standard_normal((4, 1, 2, 7))]
    moments = SecondMoments()
    for batch in batches:
        moments.update(batch.astype(np.float32))
    rows = np.concatenate([b.reshape(-1, 7) for b in batches]).astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(moments.matrix(), rows.T @ rows / len(rows), rtol=1e-12)
    np.testing.assert_allclose(moments.mean(), rows.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(moments.covariance(), np.cov(rows.T, bias=True), rtol=1e-10, atol=1e-12)
    assert moments.count == 15 + 2 + 8
    with pytest.raises(ValueError, match="features"):
        moments.update(np.zeros((2, 6)))
    with pytest.raises(ValueError, match="no samples"):
        SecondMoments().matrix()


def test_parked_second_moments_are_read_back_from_files(system_tmp):
    """Once gathered, the ``[in, in]`` sums go to a file: the same matrix comes back, nothing more can be added,
    and the file goes with the store."""
    moments = SecondMoments()
    moments.update(np.random.default_rng(7).standard_normal((50, 9)))
    expected = moments.matrix()
    store = Stash(0)
    moments.park(store)
    assert moments.sum_xx is None and len(list(system_tmp.rglob("*.npy"))) == 1
    np.testing.assert_array_equal(moments.matrix(), expected)
    with pytest.raises(ValueError, match="parked"):
        moments.update(np.zeros((2, 9)))
    del moments, store
    assert not list(system_tmp.rglob("*.npy"))


def test_output_error_is_the_mean_squared_output_difference():
    w, x = _layer(7, n_in=20, n_out=6, n=300)
    w_hat = w + np.random.default_rng(8).standard_normal(w.shape).astype(np.float32) * 0.01
    h = x.T @ x / len(x)
    dw = w.astype(np.float64) - w_hat.astype(np.float64)
    expected = np.square(x @ dw).sum(axis=1).mean()
    assert output_error(w, w_hat, h, input_axis=0) == pytest.approx(expected, rel=1e-9)
    assert output_error(w.T, w_hat.T, h, input_axis=1) == pytest.approx(expected, rel=1e-9)
    centred = x - x.mean(axis=0)
    after_bc = np.square(centred @ dw).sum(axis=1).mean()
    cov = np.cov(x.T, bias=True)
    assert output_error(w, w_hat, cov, input_axis=0) == pytest.approx(after_bc, rel=1e-9)


def test_inverse_cholesky_factor_is_that_of_the_inverse():
    """``U`` upper triangular with ``U^T U = (H + damp I)^-1`` (the factor GPTQ's updates read), as the direct
    route computes it: invert, then factor."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((400, 96)) @ rng.standard_normal((96, 96))
    h = x.T @ x / len(x)
    u = _upper_inverse(_damped_cholesky(h.copy(), 0.01))  # damps its argument in place
    damped = h + 0.01 * np.mean(np.diag(h)) * np.eye(96)
    np.testing.assert_allclose(np.triu(u), u)
    np.testing.assert_allclose(u.T @ u, np.linalg.inv(damped), rtol=1e-8, atol=1e-10 * np.abs(u).max() ** 2)
    inverse = np.linalg.inv(np.linalg.cholesky(damped))
    np.testing.assert_allclose(u, np.linalg.cholesky(inverse.T @ inverse).T, rtol=1e-7, atol=1e-12)


def test_lower_inverse_by_halves():
    rng = np.random.default_rng(8)
    for n in (5, 300, 777):
        lower = np.tril(rng.standard_normal((n, n))) + n * np.eye(n)
        np.testing.assert_allclose(_lower_inverse(lower) @ lower, np.eye(n), atol=1e-12)
