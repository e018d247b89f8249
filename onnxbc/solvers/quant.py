"""Symmetric integer quantizers for weights (numpy only).

``q = clip(round(w / s), qmin, qmax)``, ``w_hat = s * q``, zero point 0. Scales are laid out the way
ONNX DequantizeLinear reads them:

- per tensor: a scalar;
- per channel: a 1-D array along ``axis`` (the output-channel axis);
- per block: an array of the weight's rank where ``axis`` (the input-feature axis) has
  ``ceil(dim / block_size)`` entries, every other axis its full size (ONNX opset 21 ``block_size``).

Scale choice: ``minmax`` (``max|w| / qmax``), ``percentile`` (that percentile of ``|w|``), or ``mse``: a
grid search over clipping ratios per scale group that minimizes ``||w - w_hat||^2``. Large weights are
processed in chunks of whole scale groups, so memory stays bounded.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import ml_dtypes
import numpy as np


@dataclasses.dataclass(frozen=True)
class IntFormat:
    """Integer codes of ``bits`` bits, zero point 0, stored in a container type (int8, int4).

    The scale maps ``max|w|`` to ``qmax = 2^(bits-1) - 1``. At 8 and 7 bits the codes are symmetric
    ``[-qmax, qmax]`` (negating a weight never saturates; ONNX Runtime's int8 kernels expect it). At 4 bits
    and below, where every level counts, the extra negative code is used too: int4 ``[-8, 7]``, 3 bits
    ``[-4, 3]``, 2 bits ``[-2, 1]`` (int4 containers with restricted codes).
    """

    bits: int
    storage: np.dtype

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    @property
    def qmin(self) -> int:
        return -self.qmax if self.bits > 4 else -(2 ** (self.bits - 1))


INT8 = IntFormat(8, np.dtype(np.int8))
INT7 = IntFormat(7, np.dtype(np.int8))  # int8 container, codes [-63, 63]: ONNX Runtime's "reduce_range"
INT4 = IntFormat(4, np.dtype(ml_dtypes.int4))
INT3 = IntFormat(3, np.dtype(ml_dtypes.int4))  # int4 container, codes [-4, 3]
INT2 = IntFormat(2, np.dtype(ml_dtypes.int4))  # int4 container, codes [-2, 1]
INT2_PACKED = IntFormat(2, np.dtype(ml_dtypes.int2))  # int2 (opset 25): four codes a byte


@dataclasses.dataclass(frozen=True)
class Granularity:
    """How scales are shared: per tensor (axis None), per channel (axis, block 0) or per block."""

    axis: int | None = None
    block_size: int = 0

    def describe(self) -> str:
        if self.axis is None:
            return "tensor"
        return f"block{self.block_size}" if self.block_size else "channel"


def mse_grid(fmt: IntFormat) -> np.ndarray:
    """Clipping ratios tried by the MSE search. Measured on chargpt, MiniLM and PP-OCR weights per channel:
    at 8 bits the best ratio was >= 0.98 for every non-zero channel; at 4 bits it reached 0.3 (MiniLM)."""
    return np.linspace(0.8, 1.0, 11) if fmt.bits > 4 else np.linspace(0.15, 1.0, 35)


def weight_scale(
    w: np.ndarray,
    fmt: IntFormat,
    gran: Granularity,
    method: str = "mse",
    percentile: float = 99.99,
    importance: np.ndarray | None = None,
) -> np.ndarray:
    """The float32 scale(s) for ``w``, laid out for DequantizeLinear (see module docstring).

    ``importance`` (broadcastable to ``w``; with ``mse``) weighs each element's squared error: with the mean
    square of the input each weight multiplies, the search minimizes the layer's output error under a
    diagonal approximation (``E||x (W - W_hat)||^2 ~ sum_j E[x_j^2] ||W_j - W_hat_j||^2``) instead of the
    weight's own error. Works through ``w`` in chunks of whole scale groups, so temporaries stay small.
    """
    if method not in ("minmax", "percentile", "mse"):
        raise ValueError(f"unknown scale method {method!r}")
    if gran.axis is None:
        amax = _tensor_clip(w, fmt, method, percentile)
        return np.asarray(amax / fmt.qmax if amax > 0 else 1.0, dtype=np.float32)
    axis = _chunk_axis(w.ndim, gran)
    parts = []
    weighed = None if importance is None else np.broadcast_to(importance, w.shape)
    for index, _, _ in chunks(w.shape, axis, gran):
        sub = w[index]
        groups = to_groups(sub, gran)  # [G, n]: one row per scale
        amax = np.abs(groups).max(axis=1)
        if method == "percentile":
            amax = np.minimum(amax, np.percentile(np.abs(groups), percentile, axis=1))
        elif method == "mse":
            amax = _mse_clip(groups, amax, fmt, None if weighed is None else to_groups(weighed[index], gran))
        scale = np.where(amax > 0, amax / fmt.qmax, 1.0).astype(np.float32)
        parts.append(from_groups_scale(scale, sub.shape, gran))
    return np.concatenate(parts, axis=0 if not gran.block_size else axis) if len(parts) > 1 else parts[0]


def quantize(w: np.ndarray, scale: np.ndarray, fmt: IntFormat, gran: Granularity) -> np.ndarray:
    """Integer codes of ``w`` in ``fmt.storage`` (computed chunk by chunk)."""
    codes = np.empty(w.shape, dtype=np.int8)
    axis = 0 if gran.axis is None else _chunk_axis(w.ndim, gran)
    for index, start, stop in chunks(w.shape, axis, gran):
        sub = w[index]
        s_full = expand_scale(scale_part(scale, gran, axis, start, stop), sub.shape, gran)
        codes[index] = np.clip(np.rint(sub.astype(np.float32) / s_full), fmt.qmin, fmt.qmax)
    return codes.astype(fmt.storage)


def dequantize(q: np.ndarray, scale: np.ndarray, gran: Granularity) -> np.ndarray:
    return q.astype(np.float32) * expand_scale(scale, q.shape, gran)


def expand_scale(scale: np.ndarray, shape: tuple[int, ...], gran: Granularity) -> np.ndarray:
    """Broadcast a DequantizeLinear-layout scale to the weight shape (a view where it can be)."""
    if gran.axis is None:
        return np.asarray(scale, dtype=np.float32).reshape(())
    if not gran.block_size:
        view = [1] * len(shape)
        view[gran.axis] = shape[gran.axis]
        return scale.reshape(view)
    index = np.arange(shape[gran.axis]) // gran.block_size
    return np.take(scale, index, axis=gran.axis)


MSE_BLOCK = 1 << 15  # values per block of the MSE search: its float64 scratch stays in a core's L2 cache
CHUNK_ELEMENTS = 1 << 22  # 4 Mi values (16 MB as float32) per temporary


def _chunk_axis(ndim: int, gran: Granularity) -> int:
    """The axis to cut ``w`` along so that every chunk holds whole scale groups."""
    if gran.axis is None or not gran.block_size:
        return gran.axis or 0
    others = [d for d in range(ndim) if d != gran.axis]
    return others[0] if others else gran.axis  # a 1-D weight in blocks: cut along the blocks themselves


def chunks(
    shape: tuple[int, ...], axis: int, gran: Granularity, elements: int | None = None
) -> Iterator[tuple[tuple[slice, ...], int, int]]:
    """The index of each chunk of about ``elements`` (``CHUNK_ELEMENTS``) values of an array of ``shape`` cut along
    ``axis`` (whole blocks of ``gran`` where ``axis`` is blocked), with its ``[start, stop)`` along ``axis``; one
    chunk, index ``()``, for a scalar."""
    if not shape:
        yield (), 0, 1
        return
    multiple = gran.block_size if gran.block_size and axis == gran.axis else 1
    per_slice = max(1, math.prod(shape) // max(shape[axis], 1))
    step = max(1, (elements or CHUNK_ELEMENTS) // per_slice // multiple) * multiple
    for start in range(0, shape[axis], step):
        stop = min(start + step, shape[axis])
        yield (slice(None),) * axis + (slice(start, stop),), start, stop


def scale_part(scale: np.ndarray, gran: Granularity, axis: int, start: int, stop: int) -> np.ndarray:
    """The part of a DequantizeLinear-layout ``scale`` (or zero point) for the weight's ``[start, stop)`` along
    ``axis`` (``chunks``: whole blocks where ``axis`` is the blocked one)."""
    if gran.axis is None:
        return scale
    if not gran.block_size:
        return scale[start:stop] if gran.axis == axis else scale
    if gran.axis == axis:
        return scale[(slice(None),) * axis + (slice(start // gran.block_size, -(-stop // gran.block_size)),)]
    return scale[(slice(None),) * axis + (slice(start, stop),)]


def _pieces(w: np.ndarray) -> Iterator[np.ndarray]:
    """``w`` in ``chunks`` along its first axis."""
    return (w[index] for index, _, _ in chunks(w.shape, 0, Granularity()))


def _tensor_clip(w: np.ndarray, fmt: IntFormat, method: str, percentile: float) -> float:
    """Clipping value of a per-tensor scale, accumulated over chunks."""
    amax = max((float(np.abs(sub).max(initial=0.0)) for sub in _pieces(w)), default=0.0)
    if amax == 0.0 or method == "minmax":
        return amax
    if method == "percentile":
        from onnxbc.solvers.ranges import AbsHistogram, choose_range

        hist = AbsHistogram()
        for sub in _pieces(w):
            hist.update(sub)
        return choose_range(hist, "percentile", fmt.qmax, percentile)
    grid = mse_grid(fmt)
    err = np.zeros(len(grid))
    for sub in _pieces(w):
        x = sub.astype(np.float32).ravel()
        for i, ratio in enumerate(grid):
            step = amax * ratio / fmt.qmax
            err[i] += float(np.square(np.clip(np.rint(x / step), fmt.qmin, fmt.qmax) * step - x).sum())
    return float(amax * grid[int(np.argmin(err))])


def to_groups(w: np.ndarray, gran: Granularity, pad_value: float = 0.0) -> np.ndarray:
    """Rows ``[G, n]`` of values that share one scale, padded with ``pad_value`` to equal length for blocks.

    Per channel, row ``c`` is channel ``c``; per block, rows run over the other axes (in order), then the blocks.
    """
    w = np.asarray(w, dtype=np.float32)
    if gran.axis is None:
        return w.reshape(1, -1)
    moved = np.moveaxis(w, gran.axis, -1)
    if not gran.block_size:
        return moved.reshape(-1, moved.shape[-1]).T.copy() if moved.ndim > 1 else moved.reshape(-1, 1)
    n = moved.shape[-1]
    nblocks = -(-n // gran.block_size)
    pad = nblocks * gran.block_size - n
    if pad:
        moved = np.pad(moved, [(0, 0)] * (moved.ndim - 1) + [(0, pad)], constant_values=pad_value)
    return moved.reshape(-1, gran.block_size)


def from_groups_scale(scale: np.ndarray, shape: tuple[int, ...], gran: Granularity) -> np.ndarray:
    """One value per row of ``to_groups`` (``[G]``) in DequantizeLinear scale layout for a weight of ``shape``."""
    if gran.axis is None:
        return scale.reshape(())
    if not gran.block_size:
        return scale.reshape(-1)
    moved_shape = [d for i, d in enumerate(shape) if i != gran.axis] + [-(-shape[gran.axis] // gran.block_size)]
    return np.moveaxis(scale.reshape(moved_shape), -1, gran.axis)


def _mse_clip(groups: np.ndarray, amax: np.ndarray, fmt: IntFormat, weights: np.ndarray | None = None) -> np.ndarray:
    """Per row, the clipping value from ``mse_grid(fmt) * amax`` with the least (weighted) squared error. The rows
    are taken about ``MSE_BLOCK`` values at a time, every ratio tried on a block while it is in cache, in place
    (the same arithmetic row by row as on the whole array: the same choices)."""
    best = amax.copy()
    safe = np.where(amax > 0, amax, 1.0)
    ratios = mse_grid(fmt)
    steps = [(safe * ratio / fmt.qmax)[:, None] for ratio in ratios]  # float64: a float64 ratio
    rows = max(1, MSE_BLOCK // max(groups.shape[1], 1))
    scratch = np.empty((min(rows, len(groups)), groups.shape[1]), np.result_type(groups, steps[0]))
    for start in range(0, len(groups), rows):
        block = slice(start, start + rows)
        g = groups[block]
        b, best_err = scratch[: len(g)], np.full(len(g), np.inf)
        for ratio, step in zip(ratios, steps, strict=True):
            s = step[block]
            np.divide(g, s, out=b)
            np.rint(b, out=b)
            np.clip(b, fmt.qmin, fmt.qmax, out=b)
            b *= s
            b -= g
            np.square(b, out=b)
            if weights is not None:
                b *= weights[block]
            err = b.sum(axis=1)
            better = err < best_err
            best_err[better] = err[better]
            best[block][better] = amax[block][better] * ratio
    return best
