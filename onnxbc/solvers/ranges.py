"""Activation ranges from one streaming pass (numpy only).

Symmetric quantization only needs the distribution of ``|x|``. ``AbsHistogram`` keeps a fixed number of
equal-width bins over ``[0, top)`` and doubles ``top`` (merging bin pairs, which is exact) whenever a
batch exceeds it, so memory is constant and the result does not depend on how samples are batched
beyond bin resolution.

Range choice for a code range ``qmax`` (step ``s = c / qmax`` for a clipping value ``c``):

- ``minmax``: ``c = max|x|``;
- ``percentile``: the ``p``-th percentile of ``|x|``;
- ``mse``: ``argmin_c sum_bins n_i * err_i(c)`` with ``err = s^2 / 12`` inside the range (uniform rounding
  noise) and ``(|x_i| - c)^2`` outside (clipping), evaluated at every bin edge in O(bins).

Speed (pass 1 histograms every layer input: hundreds of millions of values): ``observe`` folds one batch into
the ``|x|`` histogram, the per-channel histograms and the per-channel moments together, in blocks of
``BLOCK`` values whose temporaries stay in the core's cache, so the batch is read from memory three times
(its minima, its maxima, the blocks) instead of once per numpy operation. The extremes come first (each bin
grid depends on them), and the check for NaN/inf rides on them: only a batch whose extremes are not finite
pays an ``isfinite`` pass. Each bin index is computed with the same arithmetic as a whole-tensor
``trunc(|x| * bins / top)``, so counts are exactly those of the straightforward computation; only the float64
moment sums are added in another order.

Merging (sharded calibration, ``calibration.shards``): every statistic here has ``merge(other)``, equal to one
pass over the batches of both. Counts, extremes and non-finite counts merge exactly, the float64 sums to float
rounding. A histogram's grid is ``top = start * 2^k`` from the start its first nonzero batch set, and binning at
``top`` then halving equals binning at ``2 top`` (``|x| * bins / top`` is halved exactly in floating point), so two
histograms that grew from one start (``blank()`` of one histogram) merge exactly: the finer is doubled to the
coarser. Histograms from different starts are refused (ValueError): re-binning them would only approximate.
(The one inexact case is a value within float32 rounding of a power-of-two multiple of the start, which the top
bin's clipping may put one bin lower: the single-process run has it too, only in other batches.)
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

BINS = 2048
BLOCK = 1 << 16  # values per block: its scratch buffers (4 + 8 + 8 bytes a value) stay in a core's L2 cache
CHANNEL_CHUNK = 64  # channels per block when channels are the last axis: bounds each block's bincount to 64 x bins


class AbsHistogram:
    """Streaming histogram of ``|x|`` with exact power-of-two range growth."""

    def __init__(self, bins: int = BINS) -> None:
        self.bins = bins
        self.counts = np.zeros(bins, dtype=np.int64)
        self.top = 0.0
        self.max = 0.0
        self.min_value = np.inf
        self.nonfinite = 0
        self._batch_max = 0.0

    def update(self, x: np.ndarray) -> None:
        observe(x, hist=self)

    def blank(self) -> AbsHistogram:
        """An empty histogram on this one's grid (its ``top``), that merges exactly with this one."""
        out = AbsHistogram(self.bins)
        out.top = self.top
        return out

    def merge(self, other: AbsHistogram) -> None:
        """Add ``other``'s values: the finer grid is doubled to the coarser one (exact, module docstring)."""
        counts = other.counts
        if self.top and other.top:
            self.counts = _coarsened(self.counts, _doublings(self.top, other.top))
            counts = _coarsened(counts, _doublings(other.top, self.top))
        self.top = max(self.top, other.top)  # a histogram without a top holds only zeros, in bin 0 of any grid
        self.counts = self.counts + counts
        self.max = max(self.max, other.max)
        self.min_value = min(self.min_value, other.min_value)
        self.nonfinite += other.nonfinite

    def _start(self, lo: float, hi: float, finite: int) -> np.float32 | None:
        """Take a batch's extremes over its ``finite`` finite values and grow ``top`` to hold them; return the
        factor that maps ``|x|`` to a bin, or None when there is nothing left to bin."""
        if finite == 0:
            return None
        self.min_value = min(self.min_value, lo)
        amax = self._batch_max = max(-lo, hi)
        self.max = max(self.max, amax)
        if amax == 0.0:
            self.counts[0] += finite
            return None
        if self.top == 0.0:
            self.top = amax * (1 + 1e-6)
        while amax >= self.top:
            self._double()
        return np.float32(self.bins / self.top)  # float32 arithmetic: |x| * (bins / top) on a float32 array

    def _count(self, x: np.ndarray, factor: np.float32, scratch: np.ndarray, index: np.ndarray) -> None:
        """Count one block of ``x`` (float32); ``scratch`` and ``index`` are buffers of its shape."""
        np.abs(x, out=scratch)
        np.multiply(scratch, factor, out=scratch)
        if np.float32(self._batch_max) * factor >= self.bins:  # rounding may reach the top: clip to the last bin
            np.minimum(scratch, self.bins - 1, out=scratch)
        np.copyto(index, scratch, casting="unsafe")  # truncation: the bin
        self.counts += np.bincount(index.reshape(-1), minlength=self.bins)

    def _double(self) -> None:
        self.counts = _coarsened(self.counts, 1)
        self.top *= 2.0

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def nonnegative(self) -> bool:
        return self.min_value >= 0.0

    def edges(self) -> np.ndarray:
        return np.linspace(0.0, self.top, self.bins + 1)


def choose_range(hist: AbsHistogram, method: str, qmax: int, percentile: float = 99.99) -> float:
    """The clipping value ``c`` (> 0) for a histogram of ``|x|`` and codes ``[-qmax, qmax]``."""
    if hist.total == 0 or hist.max == 0.0:
        return 1.0  # an all-zero tensor: any scale represents it exactly
    if method == "minmax":
        return hist.max
    if method == "percentile":
        return min(hist.max, _percentile(hist, percentile))
    if method == "mse":
        return min(hist.max, _mse_range(hist, qmax))
    raise ValueError(f"unknown range method {method!r}")


def _percentile(hist: AbsHistogram, p: float) -> float:
    cdf = np.cumsum(hist.counts) / hist.total
    i = int(np.searchsorted(cdf, p / 100.0))
    return float(hist.edges()[min(i + 1, hist.bins)])


def _mse_range(hist: AbsHistogram, qmax: int) -> float:
    n = hist.counts.astype(np.float64)
    edges = hist.edges()
    x = (edges[:-1] + edges[1:]) / 2
    # Suffix sums over bins i >= k give the clipping error of c = edges[k] in closed form.
    s0 = np.cumsum(n[::-1])[::-1]
    s1 = np.cumsum((n * x)[::-1])[::-1]
    s2 = np.cumsum((n * x * x)[::-1])[::-1]
    c = edges[1:]  # candidate clip at the top of each bin: bins <= k are inside
    clip_err = np.zeros_like(c)
    clip_err[:-1] = s2[1:] - 2 * c[:-1] * s1[1:] + c[:-1] ** 2 * s0[1:]
    inside = np.cumsum(n)
    round_err = inside * (c / qmax) ** 2 / 12.0
    err = clip_err + round_err
    # Never clip below the bin that holds the median: that would be nonsense, and guards empty tails.
    lo = int(np.searchsorted(np.cumsum(n) / n.sum(), 0.5))
    k = lo + int(np.argmin(err[lo:]))
    return float(c[k])


class ChannelHistograms:
    """One streaming ``|x|`` histogram per channel (axis ``channel_axis``), with exact range doubling.

    Kept for activations that may be *smoothed* (divided per channel by ``s`` before quantization): the
    per-tensor histogram of ``x / s`` for any ``s`` is then the sum of the channel histograms rescaled by
    ``1 / s_c`` (``rescaled``), so candidate smoothings are priced without another pass over the data.
    """

    def __init__(self, channel_axis: int, bins: int = 256) -> None:
        self.channel_axis = channel_axis
        self.bins = bins
        self.counts: np.ndarray | None = None  # [C, bins]
        self.top: np.ndarray | None = None  # [C]
        self.max: np.ndarray | None = None  # [C]
        self.low: np.ndarray | None = None  # [C]: the smallest value per channel (0 when all are positive)
        self._batch_max: np.ndarray | None = None

    def update(self, x: np.ndarray) -> None:
        observe(x, self.channel_axis, channels=self)

    def _start(self, batch_max: np.ndarray, batch_min: np.ndarray) -> np.ndarray:
        """Take a batch's ``max |x|`` and ``min x`` per channel (float32; NaN and inf counted as 0) and grow each
        channel's ``top`` to hold it; return the factors that map ``|x|`` to a bin, per channel."""
        channels = len(batch_max)
        if self.counts is None:
            self.counts = np.zeros((channels, self.bins), np.int64)
            self.top = np.where(batch_max > 0, batch_max * (1 + 1e-6), 1e-30).astype(np.float64)
            self.max = np.zeros(channels, np.float64)
            self.low = np.zeros(channels, np.float64)
        self.max = np.maximum(self.max, batch_max)
        self.low = np.minimum(self.low, batch_min)
        doublings = np.maximum(np.ceil(np.log2(np.maximum(batch_max, 1e-30) / self.top) + 1e-12), 0).astype(int)
        self._double(self.counts, doublings)
        self.top *= 2.0**doublings
        self._batch_max = batch_max
        return self.bins / self.top  # float64: |x| is promoted, as in |x| * (bins / top) on a float32 array

    def blank(self) -> ChannelHistograms:
        """Empty histograms on this one's grids (its ``top``), that merge exactly with these."""
        out = ChannelHistograms(self.channel_axis, self.bins)
        if self.counts is not None:
            out.counts, out.top = np.zeros_like(self.counts), self.top.copy()
            out.max, out.low = np.zeros_like(self.max), np.zeros_like(self.low)
        return out

    def merge(self, other: ChannelHistograms) -> None:
        """Add ``other``'s values, channel by channel as ``AbsHistogram.merge``."""
        if other.counts is None:
            return
        if self.counts is None:  # nothing yet: take other's grids
            vars(self).update(vars(other.blank()))
        if len(other.top) != len(self.top):
            raise ValueError(f"{len(other.top)} channels cannot merge into {len(self.top)}")
        counts = other.counts.copy()
        self._double(self.counts, _doublings(self.top, other.top))
        self._double(counts, _doublings(other.top, self.top))
        self.top = np.maximum(self.top, other.top)
        self.counts += counts
        self.max = np.maximum(self.max, other.max)
        self.low = np.minimum(self.low, other.low)

    @staticmethod
    def _double(counts: np.ndarray, doublings: np.ndarray) -> None:
        """Coarsen each row of ``counts`` (in place) by its number of ``doublings``."""
        for d in np.unique(doublings[doublings > 0]):
            rows = doublings == d
            counts[rows] = _coarsened(counts[rows], int(d))

    def _count(self, x: np.ndarray, block: _Block, factors: np.ndarray, index: np.ndarray) -> None:
        """Count one block of ``x`` taken to float64 (overwritten); ``index`` is a buffer of its shape."""
        np.abs(x, out=x)
        np.multiply(x, block.along(factors), out=x)
        if np.any(block.along(self._batch_max) * block.along(factors) >= self.bins):  # as in AbsHistogram._count
            np.minimum(x, self.bins - 1, out=x)
        np.floor(x, out=x)  # the bin within the channel; whole numbers stay exact below
        x += block.shaped(np.arange(block.count) * float(self.bins))
        np.copyto(index, x, casting="unsafe")
        counts = np.bincount(index.reshape(-1), minlength=block.count * self.bins)
        self.counts[block.first : block.first + block.count] += counts.reshape(block.count, self.bins)

    def rescaled(self, divisor: np.ndarray, bins: int = BINS) -> AbsHistogram:
        """The histogram of ``|x / divisor|`` (per channel divisor > 0), at bin-centre resolution, with the
        smallest value of ``x / divisor`` (exact: each channel's smallest value divided by its divisor)."""
        top = self.top / divisor
        centres = (np.arange(self.bins) + 0.5)[None, :] * (top / self.bins)[:, None]
        out = AbsHistogram(bins)
        out.max = float((self.max / divisor).max())
        out.top = out.max * (1 + 1e-6) if out.max > 0 else 0.0
        if out.max > 0:
            idx = np.minimum((centres * (bins / out.top)).astype(np.int64), bins - 1)
            out.counts = np.bincount(idx.ravel(), weights=self.counts.ravel(), minlength=bins).astype(np.int64)
        out.min_value = float((self.low / divisor).min())
        return out


class ChannelMoments:
    """Sums of ``x`` and ``x^2`` per channel, in float64, and the number of values each channel had."""

    def __init__(self) -> None:
        self.sum: np.ndarray | None = None
        self.square_sum: np.ndarray | None = None
        self.count = 0

    def update(self, x: np.ndarray, channel_axis: int) -> None:
        observe(x, channel_axis, moments=self)

    def merge(self, other: ChannelMoments) -> None:
        """Add ``other``'s sums and count (float64 sums: equal to one pass to float rounding)."""
        if other.sum is None:
            return
        if self.sum is None:
            self.sum, self.square_sum = np.zeros_like(other.sum), np.zeros_like(other.square_sum)
        elif len(other.sum) != len(self.sum):
            raise ValueError(f"{len(other.sum)} channels cannot merge into {len(self.sum)}")
        self.sum += other.sum
        self.square_sum += other.square_sum
        self.count += other.count

    def mean(self) -> np.ndarray | None:
        return None if self.sum is None else self.sum / max(self.count, 1)

    def mean_square(self) -> np.ndarray | None:
        return None if self.square_sum is None else self.square_sum / max(self.count, 1)

    def _start(self, channels: int, per_channel: int) -> None:
        if self.sum is None:
            self.sum = np.zeros(channels, np.float64)
            self.square_sum = np.zeros(channels, np.float64)
        self.count += per_channel

    def _add(self, x: np.ndarray, block: _Block) -> None:
        """Add one block of ``x`` (float64)."""
        channels = slice(block.first, block.first + block.count)
        self.sum[channels] += x.sum(axis=1 - block.axis)
        self.square_sum[channels] += np.einsum("ij,ij->i" if block.axis == 0 else "ij,ij->j", x, x)


def _coarsened(counts: np.ndarray, doublings: int) -> np.ndarray:
    """Histogram ``counts`` (bins on the last axis) on a grid ``2^doublings`` times as wide: bin pairs summed, the
    upper half left empty, ``doublings`` times (exact)."""
    for _ in range(doublings):
        halves = counts.reshape(*counts.shape[:-1], -1, 2).sum(axis=-1)
        counts = np.concatenate([halves, np.zeros_like(halves)], axis=-1)
    return counts


def _doublings(top, other):
    """How many times ``top`` doubles to reach ``other`` (0 where it is not below it), elementwise; ValueError where
    the two are not power-of-two multiples of each other (grids that grew from different starts)."""
    top, other = np.asarray(top, np.float64), np.asarray(other, np.float64)
    k = np.maximum(np.rint(np.log2(other / top)), 0)
    if not np.all((top * 2.0**k == other) | (top >= other)):
        raise ValueError("the histograms grew from different starting ranges: they cannot be merged exactly")
    return k.astype(int) if k.ndim else int(k)


def observe(
    x: np.ndarray,
    channel_axis: int | None = None,
    *,
    hist: AbsHistogram | None = None,
    channels: ChannelHistograms | None = None,
    moments: ChannelMoments | None = None,
) -> None:
    """Fold one batch ``x`` into each statistic given, reading it block by block (module docstring).

    NaN and inf are left out of ``hist`` (and counted in ``hist.nonfinite``); the per-channel statistics,
    along ``channel_axis``, take them as zeros. Values are taken in float32, as the histograms always took them.
    """
    x = np.asarray(x)
    values = x if x.dtype == np.float32 else x.astype(np.float32)
    if channel_axis is None and (channels is not None or moments is not None):
        raise ValueError("per-channel statistics need a channel axis")
    if values.size == 0:
        n_channels = x.shape[_axis(x, channel_axis)] if channel_axis is not None else 1
        if channels is not None:
            channels._start(np.zeros(n_channels, np.float32), np.zeros(n_channels, np.float32))
        if moments is not None:
            moments._start(n_channels, 0)
        return
    view, axis, n_channels = _channel_view(values, channel_axis)
    lo, hi = _extremes(view, axis, n_channels)
    finite = values.size
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):  # NaN and inf make the extremes non-finite
        mask = np.isfinite(values)
        finite = int(np.count_nonzero(mask))
        hist_lo, hist_hi = (values[mask].min(), values[mask].max()) if finite else (0.0, 0.0)
        values = np.where(mask, values, np.float32(0))
        view = _channel_view(values, channel_axis)[0]
        lo, hi = _extremes(view, axis, n_channels)
    else:
        hist_lo, hist_hi = lo.min(), hi.max()
    factor = None
    if hist is not None:
        hist.nonfinite += values.size - finite
        factor = hist._start(float(hist_lo), float(hist_hi), finite)
    factors = channels._start(np.maximum(-lo, hi), lo) if channels is not None else None
    if moments is not None:
        moments._start(n_channels, values.size // n_channels)
    if factor is None and factors is None and moments is None:
        return
    size = min(BLOCK, view.size)
    scratch32, scratch64, index = np.empty(size, np.float32), np.empty(size, np.float64), np.empty(size, np.intp)
    for block in _blocks(view, axis, n_channels):
        b = view[block.index]
        if factor is not None:
            hist._count(b, factor, _like(scratch32, b), _like(index, b))
        if factors is not None or moments is not None:
            wide = _like(scratch64, b)
            np.copyto(wide, b)
            if moments is not None:
                moments._add(wide, block)
            if factors is not None:
                channels._count(wide, block, factors, _like(index, b))
    if factor is not None and finite < values.size:
        hist.counts[0] -= values.size - finite  # the non-finite values, binned as zeros above


class _Block:
    """A block of the channel view: ``index`` into it; channels ``first .. first + count - 1`` run along its
    ``axis`` (rows: 0, columns: 1; None without channels)."""

    __slots__ = ("index", "axis", "first", "count")

    def __init__(self, index: tuple[slice, ...], axis: int | None, first: int, count: int) -> None:
        self.index, self.axis, self.first, self.count = index, axis, first, count

    def along(self, per_channel: np.ndarray) -> np.ndarray:
        """This block's channels' entries of ``per_channel``, shaped to broadcast against the block."""
        return self.shaped(per_channel[self.first : self.first + self.count])

    def shaped(self, values: np.ndarray) -> np.ndarray:
        """One value per channel of the block, shaped to broadcast against it."""
        return values[:, None] if self.axis == 0 else values[None, :]


def _channel_view(x: np.ndarray, channel_axis: int | None) -> tuple[np.ndarray, int | None, int]:
    """``x`` as a 2-D view whose rows (axis 0: ``channel_axis`` is not last; row ``r`` is channel ``r % C``) or
    columns (axis 1: it is last) are channels, with that axis and ``C``; 1-D, None and 1 without a channel axis."""
    if channel_axis is None:
        return x.reshape(-1), None, 1
    axis = _axis(x, channel_axis)
    n_channels, inner = x.shape[axis], int(np.prod(x.shape[axis + 1 :]))
    if inner == 1:
        return x.reshape(-1, n_channels), 1, n_channels
    return x.reshape(-1, inner), 0, n_channels


def _axis(x: np.ndarray, channel_axis: int) -> int:
    if not -x.ndim <= channel_axis < x.ndim:
        raise ValueError(f"channel axis {channel_axis} is out of range for a tensor of shape {list(x.shape)}")
    return channel_axis % x.ndim


def _extremes(view: np.ndarray, axis: int | None, n_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Minimum and maximum per channel (one each without channels); NaN anywhere makes them NaN."""
    if axis is None:
        return view.min(keepdims=True), view.max(keepdims=True)
    if axis == 1:
        return view.min(axis=0), view.max(axis=0)
    return view.min(axis=1).reshape(-1, n_channels).min(axis=0), view.max(axis=1).reshape(-1, n_channels).max(axis=0)


def _blocks(view: np.ndarray, axis: int | None, n_channels: int) -> Iterator[_Block]:
    """Blocks of about ``BLOCK`` values covering ``view``, each over a few consecutive channels."""
    if axis is None:
        for start in range(0, len(view), BLOCK):
            yield _Block((slice(start, start + BLOCK),), None, 0, 0)
    elif axis == 1:  # [positions, channels]: a few channels at a time, so that a block's bincount stays small
        width = min(n_channels, CHANNEL_CHUNK)
        step = max(1, BLOCK // width)
        for first in range(0, n_channels, width):
            count = min(width, n_channels - first)
            for start in range(0, len(view), step):
                yield _Block((slice(start, start + step), slice(first, first + count)), 1, first, count)
    else:  # [rows, positions], row r is channel r % C: rows of one period at a time, long rows in pieces
        rows, width = view.shape
        step, span = max(1, BLOCK // width), min(width, BLOCK)
        for period in range(0, rows, n_channels):
            for start in range(period, period + n_channels, step):
                count = min(step, period + n_channels - start)
                for column in range(0, width, span):
                    yield _Block((slice(start, start + count), slice(column, column + span)), 0, start - period, count)


def _like(buffer: np.ndarray, block: np.ndarray) -> np.ndarray:
    """The start of a flat scratch ``buffer`` shaped as ``block``."""
    return buffer[: block.size].reshape(block.shape)
