"""Quantizing schemes for one weight tensor (numpy only), after AutoQNN's scheme set (Gong et al., JCST 2024).

Every scheme maps ``(w, bits, granularity)`` to codes, scale(s) and the dequantized weight ``w_hat``. Statistics
(``max|w|``, ``mean|w|``, ``std``) are taken per scale group: the whole tensor, one output channel, or one block
along the input axis (``quant.Granularity``, same layout as DequantizeLinear). With ``g`` one group, ``b`` bits:

===========  =====================================================================================  =====
scheme       formula                                                                                QDQ
===========  =====================================================================================  =====
uniform      ``s = max|g| / qmax``, ``q = clip(round(g / s), qmin, qmax)``, ``w_hat = s q``          yes
affine       ``lo = min(g, 0)``, ``hi = max(g, 0)``, ``s = (hi - lo) / (2^b - 1)``,                 yes*
             ``z = round(-lo / s)``, ``q = clip(round(g / s) + z, 0, 2^b - 1)``, ``w_hat = s (q - z)``
clipped      ``sigma = sqrt(mean(g^2))``, ``s = c_b sigma``, then as uniform (clip at ``qmax s``)    yes
pow2         ``q`` in ``{0, +-1, +-2, ..., +-2^(2^(b-1) - 2)}`` (nearest level),                     yes
             ``s = max|g| / max(q)``, ``w_hat = s q``
ternary      ``t = 0.7 mean|g|``, ``a = mean(|g| : |g| > t)``, ``q = sign(g) [|g| > t]``,            yes
             ``w_hat = a q`` (TWN, Li & Liu 2016)
binary       ``a = mean|g|``, ``q = sign(g)`` (``sign(0) = +1``), ``w_hat = a q``                   yes
fixed        ``s = 2^ceil(log2(max|g| / qmax))`` (power-of-two step), then as uniform               yes
mul2q        ``mu = mean(g)``, ``sigma = std(g)``, ``D = l_b sigma``,                                no
             ``q = clip(floor((g - mu) / D), -2^(b-1), 2^(b-1) - 1)``, ``w_hat = mu + D (q + 1/2)``
residual     ``r_0 = g``; for ``i = 1..b``: ``a_i = mean|r_(i-1)|``, ``q_i = sign(r_(i-1))``,         no
             ``r_i = r_(i-1) - a_i q_i``; ``w_hat = sum_i a_i q_i``
===========  =====================================================================================  =====

``QDQ = yes`` means integer codes times one scale per group: the result can be written as a real
DequantizeLinear with restricted codes in an ``IntFormat`` container (``Quantized.fmt``). *affine needs a
zero point (uint container; TensorRT refuses it). ``pow2`` at 4 bits has codes up to +-64: it needs an int8
container, so it takes no less space than int8. ``mul2q`` (half-step levels around a float mean) and
``residual`` (several binary terms with unrelated scales) are not integer codes times one scale: writing
them means baking ``w_hat`` into float weights (emulation, not smaller on disk).

Gaussian constants. ``c_b`` (clipped) and ``l_b`` (mul2q) are the steps of the uniform quantizer with least
mean squared error for a standard normal input: ``c_b`` for the mid-tread levels ``q in [qmin, qmax]`` of
``IntFormat(b)``, ``l_b`` for the ``2^b`` mid-rise levels ``q + 1/2`` that muL2Q uses (Gong et al., "muL2Q:
an ultra-low loss quantization method for DNN compression", IJCNN 2019). Both are computed here by
minimizing the exact distortion integral (``gaussian_step``); for mid-rise levels they reproduce the
optimum uniform steps tabulated by J. Max, "Quantizing for minimum distortion", IRE Trans. Inf. Theory
6(1), 1960, Table II: 1.596, 0.9957, 0.5860, 0.3352 for 2, 4, 8, 16 levels (checked in the tests).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
from collections.abc import Iterable

import ml_dtypes
import numpy as np

from onnxbc.solvers.quant import INT4, INT8, Granularity, IntFormat, from_groups_scale, to_groups

INT2_CONTAINER = IntFormat(2, np.dtype(ml_dtypes.int4))  # codes [-2, 1] in int4 (or int2 from opset 25)
PER_TENSOR = Granularity()


class Scheme(str, enum.Enum):
    UNIFORM = "uniform"
    AFFINE = "affine"
    CLIPPED = "clipped"
    POW2 = "pow2"
    TERNARY = "ternary"
    BINARY = "binary"
    FIXED = "fixed"
    MUL2Q = "mul2q"
    RESIDUAL = "residual"

    @property
    def qdq(self) -> bool:
        """Integer codes times one scale per group (writable as DequantizeLinear), or emulation only."""
        return self not in (Scheme.MUL2Q, Scheme.RESIDUAL)

    @property
    def bit_widths(self) -> tuple[int, ...]:
        """Logical bit widths the scheme is defined for."""
        return _BIT_WIDTHS[self]


_BIT_WIDTHS = {
    Scheme.UNIFORM: (2, 3, 4, 5, 6, 7, 8),
    Scheme.AFFINE: (2, 3, 4, 5, 6, 7, 8),
    Scheme.CLIPPED: (2, 3, 4, 5, 6, 7, 8),
    Scheme.POW2: (2, 3, 4),
    Scheme.TERNARY: (2,),
    Scheme.BINARY: (1,),
    Scheme.FIXED: (2, 3, 4, 5, 6, 7, 8),
    Scheme.MUL2Q: (1, 2, 3, 4, 5, 6, 7, 8),
    Scheme.RESIDUAL: (1, 2, 3, 4),
}


@dataclasses.dataclass(frozen=True)
class Quantized:
    """A weight quantized by one scheme.

    Attributes:
        scheme: the scheme used.
        bits: logical bits per weight.
        dequantized: ``w_hat``, float32, the shape of ``w``.
        codes: integer codes, int16, the shape of ``w`` (``residual``: ``[bits, *w.shape]``, one sign plane
            per term; ``affine``: unsigned codes ``[0, 2^b - 1]``).
        scale: float32 in DequantizeLinear layout for the granularity (``residual``: ``[bits, *layout]``).
        zero_point: ``affine`` only: integer zero points in the layout of ``scale``.
        offset: ``mul2q`` only: the float mean ``mu`` per group, in the layout of ``scale``.
        fmt: the smallest signed container whose ``[qmin, qmax]`` holds the codes (``None`` unless ``qdq``
            and symmetric).
        qdq: the scheme is integer codes times one scale per group (see module docstring).
    """

    scheme: Scheme
    bits: int
    dequantized: np.ndarray
    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None = None
    offset: np.ndarray | None = None
    fmt: IntFormat | None = None

    @property
    def qdq(self) -> bool:
        return self.scheme.qdq

    @property
    def stored_bits(self) -> int:
        """Bits per weight in the file: the container width for QDQ schemes (int4 holds 2- and 3-bit codes;
        an int2 container from opset 25 would halve 2-bit ones), 32 for emulation (float weights)."""
        if not self.qdq:
            return 32
        if self.fmt is None:  # affine: uint4 or uint8
            return 4 if self.bits <= 4 else 8
        return 4 if self.fmt.storage == INT4.storage else 8

    def stored_bytes(self, scale_bytes: int = 4) -> int:
        """Bytes the weight takes on disk: codes, scales (``scale_bytes`` each) and zero points in the
        container type; emulated schemes store float32 weights and nothing else. Feeds ``allocate.Option.size``."""
        n = self.dequantized.size
        if not self.qdq:
            return 4 * n
        zero_points = 0 if self.zero_point is None else -(-self.zero_point.size * self.stored_bits // 8)
        return -(-n * self.stored_bits // 8) + self.scale.size * scale_bytes + zero_points


def quantize_scheme(w: np.ndarray, scheme: Scheme | str, bits: int, gran: Granularity = PER_TENSOR) -> Quantized:
    """Quantize ``w`` with ``scheme`` at ``bits`` logical bits, statistics per scale group of ``gran``."""
    scheme = Scheme(scheme)
    if bits not in scheme.bit_widths:
        raise ValueError(f"scheme {scheme.value!r} is defined for bits {scheme.bit_widths}, not {bits}")
    groups = _Groups(np.asarray(w, dtype=np.float32), gran)
    return _SCHEMES[scheme](groups, bits)


def squared_error(w: np.ndarray, w_hat: np.ndarray, weights: np.ndarray | None = None) -> float:
    """``sum(weights * (w - w_hat)^2)``; ``weights`` broadcasts to ``w`` (e.g. ``E[x_j^2]`` along the input
    axis, which turns the weight error into the layer's output error under a diagonal approximation)."""
    sq = np.square(np.asarray(w, np.float64) - np.asarray(w_hat, np.float64))
    return float((sq if weights is None else sq * weights).sum())


def best_scheme(
    w: np.ndarray,
    bits: int,
    candidates: Iterable[Scheme | str] | None = None,
    weights: np.ndarray | None = None,
    gran: Granularity = PER_TENSOR,
) -> tuple[Quantized, dict[Scheme, float]]:
    """The candidate scheme with the least (input-weighted) squared error at ``bits``, and every candidate's
    error. Candidates not defined at ``bits`` are left out; ties go to the earlier candidate."""
    pool = [Scheme(c) for c in (candidates if candidates is not None else Scheme)]
    pool = [s for s in pool if bits in s.bit_widths]
    if not pool:
        raise ValueError(f"no candidate scheme is defined at {bits} bits")
    errors: dict[Scheme, float] = {}
    best: Quantized | None = None
    for scheme in pool:
        result = quantize_scheme(w, scheme, bits, gran)
        errors[scheme] = squared_error(w, result.dequantized, weights)
        if best is None or errors[scheme] < errors[best.scheme]:
            best = result
    return best, errors


# --- Gaussian-optimal steps -------------------------------------------------------------------------------


def gaussian_mse(levels: np.ndarray) -> float:
    """Mean squared error of nearest-level quantization of a standard normal input, in closed form.

    With sorted levels ``y_i`` and decision thresholds ``t_i`` halfway between them (``t_0 = -inf``,
    ``t_n = +inf``): ``sum_i int_{t_i}^{t_(i+1)} (x - y_i)^2 phi(x) dx``, where on ``[a, b]``
    ``int (x - y)^2 phi = (1 + y^2)(Phi(b) - Phi(a)) + a phi(a) - b phi(b) - 2 y (phi(a) - phi(b))``.
    """
    y = np.sort(np.asarray(levels, np.float64))
    t = np.concatenate([[-np.inf], (y[1:] + y[:-1]) / 2, [np.inf]])
    finite = np.isfinite(t)
    t0 = np.where(finite, t, 0.0)
    cdf = np.array([0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) for v in t])
    pdf = np.where(finite, np.exp(-0.5 * t0 * t0) / math.sqrt(2.0 * math.pi), 0.0)  # phi(+-inf) = 0
    tpdf = t0 * pdf  # x phi(x) -> 0 at +-inf
    a, b = slice(0, -1), slice(1, None)
    terms = (1 + y * y) * (cdf[b] - cdf[a]) + tpdf[a] - tpdf[b] - 2 * y * (pdf[a] - pdf[b])
    return float(terms.sum())


@functools.cache
def gaussian_step(bits: int, midrise: bool) -> float:
    """The uniform step with least MSE for a standard normal input.

    Mid-tread: levels ``D q``, ``q in [qmin, qmax]`` of ``IntFormat(bits)`` (the ``clipped`` scheme).
    Mid-rise: levels ``D (q + 1/2)``, ``q in [-2^(b-1), 2^(b-1) - 1]`` (``mul2q``, Max's table).
    Log grid over ``D``, then golden-section refinement around the best grid point.
    """
    if midrise:
        unit = np.arange(-(2 ** (bits - 1)), 2 ** (bits - 1)) + 0.5
    else:
        fmt = IntFormat(bits, INT8.storage)
        unit = np.arange(fmt.qmin, fmt.qmax + 1, dtype=np.float64)
    grid = np.geomspace(1e-3, 4.0, 121)
    errs = [gaussian_mse(d * unit) for d in grid]
    i = int(np.argmin(errs))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        m1, m2 = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if gaussian_mse(m1 * unit) <= gaussian_mse(m2 * unit):
            hi = m2
        else:
            lo = m1
    return (lo + hi) / 2


# --- scale groups ------------------------------------------------------------------------------------------


class _Groups:
    """``w`` as rows ``[G, n]`` of values sharing one scale (NaN-padded for a short last block), and back.

    Row order matches ``quant.weight_scale``: per channel, row ``c`` is channel ``c``; per block, rows run over
    the other axes (in order) and then over the blocks.
    """

    def __init__(self, w: np.ndarray, gran: Granularity) -> None:
        self.shape, self.gran = w.shape, gran
        rows = to_groups(w, gran, pad_value=np.nan)
        self.rows = rows.astype(np.float64)
        self.valid = ~np.isnan(self.rows)
        self.filled = np.where(self.valid, self.rows, 0.0)
        self.count = np.maximum(self.valid.sum(axis=1), 1)

    def mean(self, x: np.ndarray) -> np.ndarray:
        """Per-row mean of ``x`` (``[G, n]``) over the valid entries."""
        return np.where(self.valid, x, 0.0).sum(axis=1) / self.count

    def to_weight(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``[G, n]`` back to the weight's shape."""
        gran, shape = self.gran, self.shape
        if gran.axis is None:
            return rows.reshape(shape)
        moved_shape = tuple(d for i, d in enumerate(shape) if i != gran.axis) + (shape[gran.axis],)
        if not gran.block_size:
            moved = rows.T.reshape(moved_shape)
        else:
            moved = rows.reshape(moved_shape[:-1] + (-1,))[..., : shape[gran.axis]]
        return np.moveaxis(moved, -1, gran.axis)

    def layout(self, per_row: np.ndarray) -> np.ndarray:
        """One value per row (``[G]``) in DequantizeLinear scale layout."""
        return from_groups_scale(per_row.astype(np.float32), self.shape, self.gran)


def _positive(s: np.ndarray) -> np.ndarray:
    """Scales of all-zero groups become 1 (DequantizeLinear needs a positive scale; the codes are 0)."""
    return np.where(s > 0, s, 1.0)


def _codes_times_scale(
    g: _Groups, scheme: Scheme, bits: int, q: np.ndarray, s: np.ndarray, fmt: IntFormat
) -> Quantized:
    s32 = s.astype(np.float32)
    return Quantized(
        scheme=scheme,
        bits=bits,
        dequantized=g.to_weight(q * s32[:, None]).astype(np.float32),
        codes=g.to_weight(q).astype(np.int16),
        scale=g.layout(s32),
        fmt=fmt,
    )


def _round_clip(g: _Groups, s: np.ndarray, fmt: IntFormat) -> np.ndarray:
    return np.clip(np.rint(g.filled.astype(np.float32) / s.astype(np.float32)[:, None]), fmt.qmin, fmt.qmax)


def _uniform_with(g: _Groups, scheme: Scheme, bits: int, s: np.ndarray) -> Quantized:
    fmt = _signed_format(bits)
    s = _positive(s)
    return _codes_times_scale(g, scheme, bits, _round_clip(g, s, fmt), s, fmt)


def _signed_format(bits: int) -> IntFormat:
    return IntFormat(bits, INT4.storage if bits <= 4 else INT8.storage)


def _uniform(g: _Groups, bits: int) -> Quantized:
    amax = np.abs(g.filled).max(axis=1)
    return _uniform_with(g, Scheme.UNIFORM, bits, amax / _signed_format(bits).qmax)


def _clipped(g: _Groups, bits: int) -> Quantized:
    sigma = np.sqrt(g.mean(np.square(g.filled)))
    return _uniform_with(g, Scheme.CLIPPED, bits, gaussian_step(bits, midrise=False) * sigma)


def _fixed(g: _Groups, bits: int) -> Quantized:
    amax = np.abs(g.filled).max(axis=1)
    ratio = np.where(amax > 0, amax / _signed_format(bits).qmax, 1.0)
    return _uniform_with(g, Scheme.FIXED, bits, np.exp2(np.ceil(np.log2(ratio))))


def _affine(g: _Groups, bits: int) -> Quantized:
    top = 2**bits - 1
    lo = np.minimum(np.where(g.valid, g.rows, np.inf).min(axis=1), 0.0)
    hi = np.maximum(np.where(g.valid, g.rows, -np.inf).max(axis=1), 0.0)
    s = _positive((hi - lo) / top).astype(np.float32)
    z = np.clip(np.rint(-lo / s), 0, top)
    q = np.clip(np.rint(g.filled / s[:, None]) + z[:, None], 0, top)
    return Quantized(
        scheme=Scheme.AFFINE,
        bits=bits,
        dequantized=g.to_weight((q - z[:, None]) * s[:, None]).astype(np.float32),
        codes=g.to_weight(q).astype(np.int16),
        scale=g.layout(s),
        zero_point=g.layout(z).astype(np.int16),
    )


def _pow2(g: _Groups, bits: int) -> Quantized:
    magnitudes = np.concatenate([[0.0], np.exp2(np.arange(2 ** (bits - 1) - 1))])  # 0, 1, 2, ..., 2^(2^(b-1)-2)
    amax = np.abs(g.filled).max(axis=1)
    s = _positive(amax / magnitudes[-1]).astype(np.float32)
    x = np.abs(g.filled) / s[:, None]
    nearest = np.searchsorted((magnitudes[1:] + magnitudes[:-1]) / 2, x)  # ties go to the smaller level
    q = np.sign(g.filled) * magnitudes[nearest]
    fmt = {2: INT2_CONTAINER, 3: INT4, 4: INT8}[bits]
    return _codes_times_scale(g, Scheme.POW2, bits, q, s, fmt)


def _ternary(g: _Groups, bits: int) -> Quantized:
    mag = np.abs(g.filled)
    threshold = 0.7 * g.mean(mag)
    kept = g.valid & (mag > threshold[:, None])
    a = _positive(np.where(kept, mag, 0.0).sum(axis=1) / np.maximum(kept.sum(axis=1), 1))
    q = np.sign(g.filled) * kept
    return _codes_times_scale(g, Scheme.TERNARY, bits, q, a, INT2_CONTAINER)


def _signs(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, 1.0, -1.0)


def _binary(g: _Groups, bits: int) -> Quantized:
    a = g.mean(np.abs(g.filled))
    q = _signs(g.filled) * (a > 0)[:, None]  # an all-zero group keeps code 0 (the container holds it)
    return _codes_times_scale(g, Scheme.BINARY, bits, q, _positive(a), INT2_CONTAINER)


def _mul2q(g: _Groups, bits: int) -> Quantized:
    mu = g.mean(g.filled)
    sigma = np.sqrt(g.mean(np.square(g.filled - mu[:, None])))
    step = (gaussian_step(bits, midrise=True) * sigma).astype(np.float32)
    half = 2 ** (bits - 1)
    q = np.clip(np.floor((g.filled - mu[:, None]) / _positive(step)[:, None]), -half, half - 1)
    w_hat = mu[:, None] + step[:, None] * (q + 0.5)  # a constant group (step 0) comes back exactly
    return Quantized(
        scheme=Scheme.MUL2Q,
        bits=bits,
        dequantized=g.to_weight(w_hat).astype(np.float32),
        codes=g.to_weight(q).astype(np.int16),
        scale=g.layout(_positive(step)),
        offset=g.layout(mu),
    )


def _residual(g: _Groups, bits: int) -> Quantized:
    r = g.filled.copy()
    w_hat = np.zeros_like(r)
    codes, scales = [], []
    for _ in range(bits):
        a = g.mean(np.abs(r))
        q = _signs(r)
        r -= a[:, None] * q
        w_hat += a[:, None] * q
        codes.append(g.to_weight(q).astype(np.int16))
        scales.append(g.layout(a))
    return Quantized(
        scheme=Scheme.RESIDUAL,
        bits=bits,
        dequantized=g.to_weight(w_hat).astype(np.float32),
        codes=np.stack(codes),
        scale=np.stack(scales),
    )


_SCHEMES = {
    Scheme.UNIFORM: _uniform,
    Scheme.AFFINE: _affine,
    Scheme.CLIPPED: _clipped,
    Scheme.POW2: _pow2,
    Scheme.TERNARY: _ternary,
    Scheme.BINARY: _binary,
    Scheme.FIXED: _fixed,
    Scheme.MUL2Q: _mul2q,
    Scheme.RESIDUAL: _residual,
}
