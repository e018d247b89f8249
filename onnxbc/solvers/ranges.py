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
"""

from __future__ import annotations

import numpy as np

BINS = 2048


class AbsHistogram:
    """Streaming histogram of ``|x|`` with exact power-of-two range growth."""

    def __init__(self, bins: int = BINS) -> None:
        self.bins = bins
        self.counts = np.zeros(bins, dtype=np.int64)
        self.top = 0.0
        self.max = 0.0
        self.min_value = np.inf
        self.nonfinite = 0

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        finite = np.isfinite(x)
        if not finite.all():
            self.nonfinite += int(x.size - finite.sum())
            x = x[finite]
        if x.size == 0:
            return
        a = np.abs(x.astype(np.float32, copy=False)).ravel()
        self.min_value = min(self.min_value, float(x.min()))
        amax = float(a.max())
        self.max = max(self.max, amax)
        if amax == 0.0:
            self.counts[0] += a.size
            return
        if self.top == 0.0:
            self.top = amax * (1 + 1e-6)
        while amax >= self.top:
            self._double()
        idx = np.minimum((a * (self.bins / self.top)).astype(np.int64), self.bins - 1)
        self.counts += np.bincount(idx, minlength=self.bins)

    def _double(self) -> None:
        self.counts = np.concatenate([self.counts.reshape(-1, 2).sum(axis=1), np.zeros(self.bins // 2, np.int64)])
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

    def update(self, x: np.ndarray) -> None:
        a = np.abs(np.moveaxis(np.asarray(x, dtype=np.float32), self.channel_axis, -1))
        a = a.reshape(-1, a.shape[-1])
        a = np.where(np.isfinite(a), a, 0.0)
        channels = a.shape[1]
        batch_max = a.max(axis=0) if len(a) else np.zeros(channels, np.float32)
        if self.counts is None:
            self.counts = np.zeros((channels, self.bins), np.int64)
            self.top = np.where(batch_max > 0, batch_max * (1 + 1e-6), 1e-30).astype(np.float64)
            self.max = np.zeros(channels, np.float64)
        self.max = np.maximum(self.max, batch_max)
        doublings = np.maximum(np.ceil(np.log2(np.maximum(batch_max, 1e-30) / self.top) + 1e-12), 0).astype(int)
        for d in np.unique(doublings[doublings > 0]):
            rows = doublings == d
            counts = self.counts[rows]
            for _ in range(int(d)):
                counts = np.concatenate(
                    [counts.reshape(len(counts), -1, 2).sum(axis=2), np.zeros_like(counts[:, : self.bins // 2])], axis=1
                )
            self.counts[rows] = counts
            self.top[rows] *= 2.0**d
        idx = np.minimum((a * (self.bins / self.top)).astype(np.int64), self.bins - 1)
        flat = idx + np.arange(channels) * self.bins
        self.counts += np.bincount(flat.ravel(), minlength=channels * self.bins).reshape(channels, self.bins)

    def rescaled(self, divisor: np.ndarray, min_value: float, bins: int = BINS) -> AbsHistogram:
        """The histogram of ``|x / divisor|`` (per channel divisor > 0), at bin-centre resolution;
        ``min_value`` is the smallest value of ``x`` (its sign survives the division)."""
        top = self.top / divisor
        centres = (np.arange(self.bins) + 0.5)[None, :] * (top / self.bins)[:, None]
        out = AbsHistogram(bins)
        out.max = float((self.max / divisor).max())
        out.top = out.max * (1 + 1e-6) if out.max > 0 else 0.0
        if out.max > 0:
            idx = np.minimum((centres * (bins / out.top)).astype(np.int64), bins - 1)
            out.counts = np.bincount(idx.ravel(), weights=self.counts.ravel(), minlength=bins).astype(np.int64)
        out.min_value = min_value / float(divisor.max()) if min_value < 0 else min_value
        return out
