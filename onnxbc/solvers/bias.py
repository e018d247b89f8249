"""Bias compensation in closed form (numpy only).

For a layer with float output ``Y_f`` and quantized output ``Y_q``, let ``d = Y_f - Y_q``. Adding a bias
``b`` to the quantized output and minimizing ``sum ||d - b||^2`` is a convex quadratic whose minimizer is
the mean of ``d`` over every axis ``b`` does not have (Gong et al., arXiv 2404.01892). With a per-channel
``b`` and per-channel running sums ``S1 = sum d``, ``S2 = sum d^2`` over ``n`` elements:

    b = S1 / n,   error before = sum(S2) / N,   error after = sum(S2 - 2 b S1 + b^2 n) / N = sum(S2 - S1^2 / n) / N

with ``N = n * C``. On the data it was fitted on the error after is never above the error before (they
are equal only when the mean error is already zero); on other data it can be, which is why errors are
also reported on held-out samples.
"""

from __future__ import annotations

import numpy as np


class ErrorMoments:
    """Running per-channel (or per-position) sums of a layer's output error ``d = y_float - y_quant``: of ``d``,
    ``d^2`` and ``y_float^2``; or of ``d`` alone (``means_only``: samples that only fit a bias)."""

    def __init__(self) -> None:
        self.sum_d: np.ndarray | None = None
        self.sum_d2: np.ndarray | None = None
        self.sum_y2: np.ndarray | None = None
        self.count = 0  # elements summed per channel

    def update(self, sum_d: np.ndarray, sum_d2: np.ndarray | None, sum_y2: np.ndarray | None, count: int) -> None:
        sums = [None if a is None else np.asarray(a, dtype=np.float64) for a in (sum_d, sum_d2, sum_y2)]
        if self.sum_d is None:
            self.sum_d, self.sum_d2, self.sum_y2 = sums
        elif (self.sum_d2 is None) != (sums[1] is None):
            raise ValueError("error sums with and without squares cannot be added")
        else:
            self.sum_d, self.sum_d2, self.sum_y2 = (
                None if mine is None else mine + theirs
                for mine, theirs in zip((self.sum_d, self.sum_d2, self.sum_y2), sums)
            )
        self.count += int(count)

    def merge(self, other: ErrorMoments) -> None:
        """Add the sums of ``other`` (other batches): one pass over both, to float rounding."""
        if other.sum_d is not None:
            self.update(other.sum_d, other.sum_d2, other.sum_y2, other.count)

    @property
    def empty(self) -> bool:
        return self.count == 0

    @property
    def means_only(self) -> bool:
        """Only the error's sums were gathered: the mean error is known, not the squared error."""
        return not self.empty and self.sum_d2 is None

    def mean_error(self) -> np.ndarray:
        return self.sum_d / self.count

    def mse(self, bias: np.ndarray | None = None) -> float:
        """Mean squared output error per element, after adding ``bias`` to the quantized output."""
        if self.sum_d2 is None:
            raise ValueError("only the mean error was gathered on these samples")
        s2 = self.sum_d2
        if bias is not None:
            s2 = s2 - 2.0 * bias * self.sum_d + bias * bias * self.count
        return float(np.maximum(s2, 0.0).sum() / (self.count * s2.size))

    def power(self) -> float:
        """Mean squared float output per element (the denominator of relative errors)."""
        return float(self.sum_y2.sum() / (self.count * self.sum_y2.size))

    def rel_mse(self, bias: np.ndarray | None = None) -> float:
        power = self.power()
        return self.mse(bias) / power if power > 0 else float(self.mse(bias) > 0)


def solve_bias(fit: ErrorMoments) -> np.ndarray:
    """The compensation bias minimizing the output MSE on the fitted data: the mean error."""
    return fit.mean_error()
