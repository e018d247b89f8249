"""Every statistic's declared merge (sharded calibration, ``calibration.shards``): a first batch, then the other
batches split into shards that start from its grids (``blank()``), merged in order, equal one pass over all
batches: counts, extremes and histogram grids exactly, float64 sums to float tolerance."""

import numpy as np
import pytest

from onnxbc.solvers.bias import ErrorMoments
from onnxbc.solvers.ranges import AbsHistogram, ChannelHistograms, ChannelMoments

RNG = np.random.default_rng(3)


def _batches():
    """NCHW batches whose ranges grow in steps (so shards double their grids differently), with a channel that is
    zero in the first batch, a NaN and an all-zero batch."""
    out = []
    for scale in (1.0, 0.5, 3.0, 40.0, 2.0, 700.0):
        x = (RNG.standard_normal((3, 4, 5, 5)) * scale).astype(np.float32)
        out.append(x)
    out[0][:, 2] = 0.0
    out[2][0, 0, 0, 0] = np.nan
    out.insert(3, np.zeros((2, 4, 5, 5), np.float32))
    return out


def _sharded(make, fold, batches, shards=2):
    """``fold`` over the first batch, then over batches ``b % shards`` of the rest, each shard on a ``blank()`` of
    the first (a new one for sums, which have no grid); merged in order."""
    first = make()
    fold(first, batches[0])
    parts = [first.blank() if hasattr(first, "blank") else make() for _ in range(shards)]
    for b, x in enumerate(batches[1:]):
        fold(parts[b % shards], x)
    for part in parts:
        first.merge(part)
    return first


def _whole(make, fold, batches):
    whole = make()
    for x in batches:
        fold(whole, x)
    return whole


def test_abs_histogram_merges_exactly():
    batches = _batches()
    fold = AbsHistogram.update
    whole, merged = _whole(AbsHistogram, fold, batches), _sharded(AbsHistogram, fold, batches)
    assert whole.top > 64 * _whole(AbsHistogram, fold, batches[:1]).top  # the grid grew
    assert merged.top == whole.top
    np.testing.assert_array_equal(merged.counts, whole.counts)
    assert whole.nonfinite == 1
    assert (merged.max, merged.min_value, merged.nonfinite) == (whole.max, whole.min_value, whole.nonfinite)


def test_abs_histogram_merges_into_one_without_a_grid_and_refuses_different_starts():
    a, b = AbsHistogram(), AbsHistogram()
    a.update(np.zeros(5, np.float32))  # zeros only: no grid yet
    b.update(np.array([1.0, -2.0], np.float32))
    a.merge(b)
    assert a.top == b.top and a.counts[0] == 5 + b.counts[0] and a.total == 7
    c = AbsHistogram()
    c.update(np.array([3.0], np.float32))  # a start of its own: not a power-of-two multiple of b's
    with pytest.raises(ValueError, match="different starting ranges"):
        b.merge(c)


@pytest.mark.parametrize("axis", [1, -1])
def test_channel_histograms_merge_exactly(axis):
    batches = [np.nan_to_num(x) if axis == 1 else np.nan_to_num(x).transpose(0, 2, 3, 1) for x in _batches()]
    make, fold = (lambda: ChannelHistograms(axis)), ChannelHistograms.update
    whole, merged = _whole(make, fold, batches), _sharded(make, fold, batches)
    assert whole.top[2] > 1e-20  # the channel that was zero in the first batch grew from its 1e-30 start
    np.testing.assert_array_equal(merged.top, whole.top)
    np.testing.assert_array_equal(merged.counts, whole.counts)
    np.testing.assert_array_equal(merged.max, whole.max)
    np.testing.assert_array_equal(merged.low, whole.low)


def test_channel_moments_merge_to_float_tolerance():
    batches = [np.nan_to_num(x) for x in _batches()]
    fold = lambda m, x: m.update(x, 1)  # noqa: E731
    whole, merged = _whole(ChannelMoments, fold, batches), _sharded(ChannelMoments, fold, batches)
    assert merged.count == whole.count
    np.testing.assert_allclose(merged.sum, whole.sum, rtol=1e-12)
    np.testing.assert_allclose(merged.square_sum, whole.square_sum, rtol=1e-12)


def test_error_moments_merge_to_float_tolerance():
    sums = [(RNG.standard_normal(4), RNG.random(4), RNG.random(4), int(RNG.integers(1, 9))) for _ in range(5)]
    whole = ErrorMoments()
    for s in sums:
        whole.update(*s)
    halves = [ErrorMoments(), ErrorMoments()]
    for i, s in enumerate(sums):
        halves[i % 2].update(*s)
    merged = ErrorMoments()
    merged.merge(halves[0])
    merged.merge(ErrorMoments())  # an empty one changes nothing
    merged.merge(halves[1])
    assert merged.count == whole.count
    for name in ("sum_d", "sum_d2", "sum_y2"):
        np.testing.assert_allclose(getattr(merged, name), getattr(whole, name), rtol=1e-12)
