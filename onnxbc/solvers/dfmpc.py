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

Data-free bias correction (Nagel et al., DFQ): a layer with weight error ``dW = W_hat - W`` shifts its
output mean by ``dW . E[x]``. When ``x = ReLU(BN(z))``, the BN output of channel ``j`` is modelled as
``N(beta_j, gamma_j^2)``, whose ReLU mean is ``relu_mean(beta_j, |gamma_j|)`` (clipped normal). The shift
is subtracted from the layer's bias. Conv padding is ignored (border outputs see fewer inputs).
"""

from __future__ import annotations

import math

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


def relu_mean(mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """``E[max(0, z)]`` for ``z ~ N(mu, sigma^2)``: ``mu Phi(mu/sigma) + sigma phi(mu/sigma)``."""
    mu, sigma = np.asarray(mu, np.float64), np.abs(np.asarray(sigma, np.float64))
    safe = np.where(sigma > 0, sigma, 1.0)
    t = mu / safe
    cdf = 0.5 * (1.0 + np.vectorize(math.erf, otypes=[np.float64])(t / math.sqrt(2.0)))
    pdf = np.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)
    return np.where(sigma > 0, mu * cdf + safe * pdf, np.maximum(mu, 0.0))


def conv_shift(dw: np.ndarray, x_mean: np.ndarray, group: int = 1) -> np.ndarray:
    """Mean output shift ``dW . E[x]`` of a Conv (``dw`` [O, I/g, k...], ``x_mean`` [I]), padding ignored."""
    out, per_group = dw.shape[0], dw.shape[1]
    summed = np.asarray(dw, np.float64).reshape(out, per_group, -1).sum(axis=2)  # [O, I/g]
    groups = np.arange(out) // (out // group)
    means = np.asarray(x_mean, np.float64).reshape(group, per_group)[groups]  # [O, I/g]
    return (summed * means).sum(axis=1)


def linear_shift(dw_out_in: np.ndarray, x_mean: np.ndarray) -> np.ndarray:
    """Mean output shift ``dW . E[x]`` of a Gemm/MatMul with ``dw`` laid out [out, in]."""
    return np.asarray(dw_out_in, np.float64) @ np.asarray(x_mean, np.float64)
