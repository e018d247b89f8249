"""DF-MPC factors and data-free bias correction (numpy only).

A pair is ``y = W2 . phi(W1 x + h)`` where ``phi`` is positively homogeneous (ReLU, LeakyReLU:
``phi(c u) = c phi(u)`` for ``c > 0``) and ``W1`` is quantized to few bits. With BatchNormalization
between ``W1`` and ``phi`` folded first (``fold_batchnorm``), channel ``i`` of the low layer computes
``u_i = w_i . x + h_i``. Quantizing ``w_i`` to ``w_hat_i`` and choosing a factor ``c_i > 0``:

    phi(w_i . x + h_i) ~= phi(c_i w_hat_i . x + h_i) = c_i phi(w_hat_i . x + h_i / c_i)

so the low layer keeps its integer codes with bias ``h_i / c_i``, and input channel ``i`` of ``W2`` is
multiplied by ``c_i`` before ``W2`` is quantized (at a higher width). The rewrite is exact in float; what
changes is which weight the low layer effectively has: ``c_i w_hat_i``. ``factors`` picks ``c_i`` by least
squares, ``c_i = <w_i, w_hat_i> / ||w_hat_i||^2``, the optimum of ``E||(w_i - c_i w_hat_i) . x||^2`` for an
isotropic input (the paper's data-free assumption), so the weight-space error never rises.

Known limit (exact algebra): with one scale per output channel, ``c_i w_hat_i = (c_i s_i) q_i`` is a
least-squares refit of that channel's scale; the factor adds most where the scale cannot absorb it (one
scale per tensor, or several blocks per channel).

Validation (derived): the factors are least squares for an isotropic input, which real inputs are not
(channels of very different spread, or a large mean). Where the low layer's input ``x`` is modelled from
BatchNormalization statistics (independent channels and positions, ``Var(x_j)`` per input channel), the
expected squared error of output channel ``i`` after bias correction is ``sum_j Var(x_j) (w_ij - c_i w_hat_ij)^2``
(``expected_error``; the mean part ``(d_i . E[x])^2`` is what the bias correction removes). ``check_factors``
keeps ``c_i`` only where that is lower than with ``c_i = 1``.

Data-free bias correction (Nagel et al., DFQ): a layer with weight error ``dW = W_hat - W`` shifts its
output mean by ``dW . E[x]``. The input of a layer is modelled per channel from the BatchNormalization before
it: ``z ~ N(beta_j, gamma_j^2)`` through the activation: ``clipped_moments`` in closed form for ReLU, ReLU6
and Clip (a clipped normal), ``gaussian_moments`` on a fixed grid for any other elementwise function
(HardSwish, SiLU, ...). The shift is subtracted from the layer's bias. Conv padding is ignored (border outputs
see fewer inputs).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


def fold_batchnorm(
    w: np.ndarray,
    b: np.ndarray | None,
    gamma: np.ndarray,
    beta: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    eps: float,
) -> tuple[np.ndarray, np.ndarray]:
    """``BN(W x + b)`` as ``W' x + h``: (``W'``, ``h``); output channels on axis 0 of ``w``."""
    k = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    b = np.zeros(len(k)) if b is None else np.asarray(b, np.float64)
    w_folded = np.asarray(w, np.float64) * k.reshape(-1, *[1] * (w.ndim - 1))
    h = (b - mean) * k + beta
    return w_folded.astype(np.float32), h.astype(np.float32)


def factors(w: np.ndarray, w_hat: np.ndarray) -> np.ndarray:
    """Per output channel (axis 0), ``c_i = <w_i, w_hat_i> / ||w_hat_i||^2``; 1 where that is not positive
    or ``w_hat_i`` is all zero (the rescaling needs ``c > 0``)."""
    a = np.asarray(w, np.float64).reshape(len(w), -1)
    q = np.asarray(w_hat, np.float64).reshape(len(w_hat), -1)
    dot, norm = (a * q).sum(axis=1), np.square(q).sum(axis=1)
    c = np.divide(dot, norm, out=np.ones(len(a)), where=norm > 0)
    return np.where(c > 0, c, 1.0)


def weight_error(w: np.ndarray, w_hat: np.ndarray, c: np.ndarray | None = None) -> float:
    """``||w - c * w_hat||^2 / ||w||^2`` (``c`` per output channel, axis 0; None: 1)."""
    a = np.asarray(w, np.float64).reshape(len(w), -1)
    q = np.asarray(w_hat, np.float64).reshape(len(w_hat), -1)
    if c is not None:
        q = q * np.asarray(c, np.float64)[:, None]
    power = float(np.square(a).sum())
    return float(np.square(a - q).sum()) / power if power > 0 else 0.0


def _cdf(t: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf, otypes=[np.float64])(t / math.sqrt(2.0)))


def _pdf(t: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * np.square(t)) / math.sqrt(2.0 * math.pi)


def clipped_moments(
    mu: np.ndarray, var: np.ndarray, lo: float = 0.0, hi: float = math.inf
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of ``clip(z, lo, hi)`` for ``z ~ N(mu, var)`` (ReLU: ``lo = 0``; ReLU6: ``hi = 6``).

    With ``a = (lo - mu) / s``, ``b = (hi - mu) / s``: ``E = lo Phi(a) + mu (Phi(b) - Phi(a)) + s (phi(a) - phi(b))
    + hi (1 - Phi(b))`` and ``E[.^2] = lo^2 Phi(a) + (mu^2 + s^2)(Phi(b) - Phi(a)) + s ((lo + mu) phi(a)
    - (hi + mu) phi(b)) + hi^2 (1 - Phi(b))``; terms of an infinite bound are 0."""
    mu = np.asarray(mu, np.float64)
    s = np.sqrt(np.maximum(np.asarray(var, np.float64), 0.0))
    safe = np.where(s > 0, s, 1.0)
    a, b = (lo - mu) / safe, (hi - mu) / safe
    below = _cdf(a) if math.isfinite(lo) else np.zeros_like(mu)
    above = 1.0 - _cdf(b) if math.isfinite(hi) else np.zeros_like(mu)
    pa = _pdf(a) if math.isfinite(lo) else np.zeros_like(mu)
    pb = _pdf(b) if math.isfinite(hi) else np.zeros_like(mu)
    lo_, hi_ = (v if math.isfinite(v) else 0.0 for v in (lo, hi))
    inside = 1.0 - below - above
    mean = lo_ * below + mu * inside + s * (pa - pb) + hi_ * above
    second = lo_**2 * below + (mu**2 + s**2) * inside + s * ((lo_ + mu) * pa - (hi_ + mu) * pb) + hi_**2 * above
    degenerate = np.clip(mu, lo, hi)
    mean = np.where(s > 0, mean, degenerate)
    return mean, np.where(s > 0, np.maximum(second - mean**2, 0.0), 0.0)


_GRID = np.linspace(-8.0, 8.0, 1001)  # z / sigma; a fine grid, not Gauss-Hermite: activations have kinks
_GRID_WEIGHTS = np.exp(-0.5 * _GRID**2) / np.exp(-0.5 * _GRID**2).sum()


def gaussian_moments(
    f: Callable[[np.ndarray], np.ndarray], mu: np.ndarray, var: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of ``f(z)`` for ``z ~ N(mu, var)``, per element of ``mu`` (numerical, error ~1e-5)."""
    mu = np.asarray(mu, np.float64)
    z = mu[..., None] + np.sqrt(np.maximum(np.asarray(var, np.float64), 0.0))[..., None] * _GRID
    fz = f(z)
    mean = fz @ _GRID_WEIGHTS
    return mean, np.maximum(np.square(fz) @ _GRID_WEIGHTS - mean**2, 0.0)


def _per_weight(x: np.ndarray, out: int, per_group: int, group: int) -> np.ndarray:
    """Input statistic ``x`` [I] laid out as [O, I / group]: what each output channel's weights multiply."""
    groups = np.arange(out) // (out // group)
    return np.asarray(x, np.float64).reshape(group, per_group)[groups]


def expected_error(w: np.ndarray, w_hat: np.ndarray, c: np.ndarray, x_var: np.ndarray, group: int = 1) -> np.ndarray:
    """Per output channel (axis 0), ``sum_j Var(x_j) (w_ij - c_i w_hat_ij)^2``: the expected squared output error
    left after bias correction, for independent inputs (``x_var`` [I]; ``w`` [O, I / group, k...] or [O, I])."""
    d = np.asarray(w, np.float64) - np.asarray(c, np.float64).reshape(-1, *[1] * (w.ndim - 1)) * w_hat
    out, per_group = d.shape[0], d.shape[1]
    power = np.square(d).reshape(out, per_group, -1).sum(axis=2)  # [O, I/g]
    return (power * _per_weight(x_var, out, per_group, group)).sum(axis=1)


def check_factors(
    w: np.ndarray, w_hat: np.ndarray, c: np.ndarray, x_var: np.ndarray, group: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(``c`` where it lowers ``expected_error``, else 1; the error per channel with ``c = 1``; with ``c``)."""
    plain = expected_error(w, w_hat, np.ones(len(w)), x_var, group)
    scaled = expected_error(w, w_hat, c, x_var, group)
    return np.where(scaled < plain, c, 1.0), plain, scaled


def conv_shift(dw: np.ndarray, x_mean: np.ndarray, group: int = 1) -> np.ndarray:
    """Mean output shift ``dW . E[x]`` of a Conv (``dw`` [O, I/g, k...], ``x_mean`` [I]), padding ignored."""
    out, per_group = dw.shape[0], dw.shape[1]
    summed = np.asarray(dw, np.float64).reshape(out, per_group, -1).sum(axis=2)  # [O, I/g]
    return (summed * _per_weight(x_mean, out, per_group, group)).sum(axis=1)


def linear_shift(dw_out_in: np.ndarray, x_mean: np.ndarray) -> np.ndarray:
    """Mean output shift ``dW . E[x]`` of a Gemm/MatMul with ``dw`` laid out [out, in]."""
    return np.asarray(dw_out_in, np.float64) @ np.asarray(x_mean, np.float64)
