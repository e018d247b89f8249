"""Pass-1 statistics computed block by block (``ranges.observe``) equal the straightforward whole-tensor
computation: the same histogram counts, tops and extremes exactly, the same float64 moments up to summation
order."""

import numpy as np
import pytest

from onnxbc.calibration.probes import RangeProbe
from onnxbc.errors import OnnxbcError
from onnxbc.solvers import ranges
from onnxbc.solvers.ranges import AbsHistogram, ChannelHistograms, ChannelMoments, observe

RNG = np.random.default_rng(0)


class Reference:
    """Each statistic as one numpy expression over the whole batch (the definitions ``observe`` must meet)."""

    def __init__(self, axis, bins=64, channel_bins=16):
        self.axis, self.bins, self.channel_bins = axis, bins, channel_bins
        self.counts, self.top, self.max, self.min_value, self.nonfinite = np.zeros(bins, np.int64), 0.0, 0.0, np.inf, 0
        self.channel_counts = self.channel_top = self.channel_max = None
        self.sum = self.square_sum = None
        self.count = 0

    def update(self, x):
        x = np.asarray(x, np.float32)
        finite = np.isfinite(x)
        self.nonfinite += int((~finite).sum())
        a = np.abs(x[finite])
        if a.size:
            amax = float(a.max())  # compared in float64 (a float32 scalar would round top to float32)
            self.min_value = min(self.min_value, float(x[finite].min()))
            self.max = max(self.max, amax)
            if amax == 0:
                self.counts[0] += a.size
            else:
                self.top = self.top or amax * (1 + 1e-6)
                while amax >= self.top:
                    self.counts = _merge_pairs(self.counts)
                    self.top *= 2
                index = np.minimum((a * np.float32(self.bins / self.top)).astype(np.int64), self.bins - 1)
                self.counts += np.bincount(index, minlength=self.bins)
        if self.axis is None:
            return
        rows = np.moveaxis(np.where(finite, x, 0), self.axis, -1).reshape(-1, x.shape[self.axis])
        wide = rows.astype(np.float64)
        sums, squares = wide.sum(0), (wide * wide).sum(0)
        self.sum = sums if self.sum is None else self.sum + sums
        self.square_sum = squares if self.square_sum is None else self.square_sum + squares
        self.count += len(rows)
        a, n = np.abs(rows), self.channel_bins
        batch_max = a.max(0) if len(a) else np.zeros(rows.shape[1], np.float32)
        if self.channel_counts is None:
            self.channel_counts = np.zeros((rows.shape[1], n), np.int64)
            self.channel_top = np.where(batch_max > 0, batch_max * (1 + 1e-6), 1e-30).astype(np.float64)
            self.channel_max = np.zeros(rows.shape[1])
        self.channel_max = np.maximum(self.channel_max, batch_max)
        # ChannelHistograms' doubling rule: ceil(log2(max / top)) doublings (max at least 1e-30 in float32, so that a
        # channel that never fired doubles its top of 1e-30 once per batch: harmless, kept as it was)
        ratio = np.maximum(batch_max, np.float32(1e-30)) / self.channel_top
        for c in range(rows.shape[1]):
            for _ in range(max(int(np.ceil(np.log2(ratio[c]) + 1e-12)), 0)):
                self.channel_counts[c] = _merge_pairs(self.channel_counts[c])
                self.channel_top[c] *= 2
            index = np.minimum((a[:, c] * (n / self.channel_top[c])).astype(np.int64), n - 1)
            self.channel_counts[c] += np.bincount(index, minlength=n)


def _merge_pairs(counts):
    """The counts of a histogram whose top doubled: bin pairs merged into the lower half."""
    return np.concatenate([counts.reshape(-1, 2).sum(1), np.zeros(len(counts) // 2, np.int64)])


def _observe_all(batches, axis, bins=64, channel_bins=16):
    hist = AbsHistogram(bins)
    channels = ChannelHistograms(axis, channel_bins) if axis is not None else None
    moments = ChannelMoments() if axis is not None else None
    reference = Reference(axis, bins, channel_bins)
    for x in batches:
        observe(x, axis, hist=hist, channels=channels, moments=moments)
        reference.update(x)
    return hist, channels, moments, reference


def _assert_equal(hist, channels, moments, reference):
    np.testing.assert_array_equal(hist.counts, reference.counts)
    assert (hist.top, hist.max, hist.min_value, hist.nonfinite) == (
        reference.top,
        reference.max,
        reference.min_value,
        reference.nonfinite,
    )
    if channels is None:
        return
    np.testing.assert_array_equal(channels.counts, reference.channel_counts)
    np.testing.assert_array_equal(channels.top, reference.channel_top)
    np.testing.assert_array_equal(channels.max, reference.channel_max)
    assert moments.count == reference.count
    np.testing.assert_allclose(moments.sum, reference.sum, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(moments.square_sum, reference.square_sum, rtol=1e-12)


@pytest.fixture(params=[1 << 16, 7], ids=["one-block", "blocks-of-7"])
def block(request, monkeypatch):
    """Also with tiny blocks and 3 channels per block, so every block boundary (rows split into columns, a
    period of channels into row groups) is crossed many times."""
    monkeypatch.setattr(ranges, "BLOCK", request.param)
    monkeypatch.setattr(ranges, "CHANNEL_CHUNK", 3 if request.param < 100 else ranges.CHANNEL_CHUNK)
    return request.param


SHAPES = {
    "channels first (NCHW)": ((4, 5, 3, 6), 1),
    "channels last": ((3, 10, 8), -1),
    "channels in the middle": ((2, 3, 4, 5), 2),
    "channels on axis 0": ((6, 20), 0),
    "rows of one value": ((7, 9, 1), 1),
    "no channel axis": ((4, 3, 10), None),
}


def _at_bin_edges(first, axis, shape, bins=64, channel_bins=16):
    """A batch of values within two float32 steps of the bin edges that batch ``first`` sets, top included:
    those of the ``|x|`` histogram and, along ``axis``, of each channel's (where float rounding decides the bin)."""
    a = np.abs(first)
    top = float(a.max()) * (1 + 1e-6)
    edges = np.broadcast_to(np.arange(1, bins + 1) * (top / bins), shape + (bins,))
    if axis is not None:
        channel_top = (np.moveaxis(a, axis, -1).reshape(-1, shape[axis]).max(0) * (1 + 1e-6)).astype(np.float64)
        channel_edges = np.arange(1, channel_bins + 1)[None, :] * (channel_top / channel_bins)[:, None]
        edges = np.concatenate([edges, channel_edges[np.indices(shape)[axis]]], axis=-1)
    pick = np.take_along_axis(edges, RNG.integers(0, edges.shape[-1], shape)[..., None], -1)[..., 0]
    nudged = (pick.astype(np.float32).view(np.int32) + RNG.integers(-2, 3, shape).astype(np.int32)).view(np.float32)
    return np.where(RNG.random(shape) < 0.5, -nudged, nudged)


@pytest.mark.parametrize("shape, axis", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize(
    "kind", ["normal", "growing range", "nan and inf", "zeros", "negative only", "float16", "at bin edges"]
)
def test_observe_equals_the_whole_tensor_definitions(block, shape, axis, kind):
    scales = {"growing range": (0.1, 1.0, 10.0, 3.0, 1e4)}.get(kind, (1.0, 2.0))
    batches = [(RNG.standard_normal(shape) * s).astype(np.float32) for s in scales]
    if kind == "at bin edges":
        batches[1] = _at_bin_edges(batches[0], axis, shape)
    if kind == "nan and inf":
        for x in batches:
            x.reshape(-1)[RNG.choice(x.size, 5, replace=False)] = [np.nan, np.inf, -np.inf, np.nan, np.inf]
    elif kind == "zeros":
        batches = [np.zeros(shape, np.float32), batches[0] * (RNG.random(shape) < 0.1)]
    elif kind == "negative only":
        batches = [-np.abs(x) for x in batches]
    elif kind == "float16":
        batches = [x.astype(np.float16) for x in batches]
    _assert_equal(*_observe_all(batches, axis))


@pytest.mark.parametrize("axis", [1, None])
def test_all_nonfinite_and_empty_batches(block, axis):
    batches = [np.full((2, 3, 4), np.nan), np.zeros((0, 3, 4)), np.zeros((2, 3, 0)), RNG.standard_normal((2, 3, 4))]
    hist, channels, moments, reference = _observe_all([b.astype(np.float32) for b in batches], axis)
    _assert_equal(hist, channels, moments, reference)
    assert hist.nonfinite == 24 and hist.total == 24


def test_range_probe_keeps_its_fields_and_names_a_bad_axis():
    x = RNG.standard_normal((4, 6, 5)).astype(np.float32)
    probe = RangeProbe("act", 1, channel_histograms=True)
    probe.update([x], "fit")
    probe.update([x], "holdout")  # pass 1 statistics are of fit samples only
    np.testing.assert_allclose(probe.channel_power(), np.mean(np.square(x.astype(np.float64)), axis=(0, 2)))
    np.testing.assert_allclose(probe.channel_mean(), np.mean(x.astype(np.float64), axis=(0, 2)), atol=1e-15)
    assert probe.hist.total == x.size and probe.channels.counts.shape == (6, 256) and probe.dtype == np.float32
    assert RangeProbe("act").channel_power() is None
    with pytest.raises(OnnxbcError, match="activation 'act': channel axis 3 is out of range for .*\\[4, 6, 5\\]"):
        RangeProbe("act", 3).update([x], "fit")
