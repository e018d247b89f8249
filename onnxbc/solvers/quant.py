"""Symmetric integer quantizers for weights (numpy only).

``q = clip(round(w / s), qmin, qmax)``, ``w_hat = s * q``, zero point 0. Scales are laid out the way
ONNX DequantizeLinear reads them:

- per tensor: a scalar;
- per channel: a 1-D array along ``axis`` (the output-channel axis);
- per block: an array of the weight's rank where ``axis`` (the input-feature axis) has
  ``ceil(dim / block_size)`` entries, every other axis its full size (ONNX opset 21 ``block_size``).

Scale choice: ``minmax`` (``max|w| / qmax``), ``percentile`` (that percentile of ``|w|``), or ``mse``: a
grid search over clipping ratios per scale group that minimizes ``||w - w_hat||^2``.
"""

from __future__ import annotations

import dataclasses

import ml_dtypes
import numpy as np

MSE_GRID = np.linspace(0.30, 1.0, 36)


@dataclasses.dataclass(frozen=True)
class IntFormat:
    """Integer codes of ``bits`` bits, zero point 0, stored in a container type (int8, int4).

    The scale maps ``max|w|`` to ``qmax = 2^(bits-1) - 1``. At 8 and 7 bits the codes are symmetric
    ``[-qmax, qmax]`` (negating a weight never saturates; ONNX Runtime's int8 kernels expect it). At 4 bits
    and below, where every level counts, the extra negative code is used too: int4 ``[-8, 7]``, 3 bits
    ``[-4, 3]`` (an int4 container with restricted codes).
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


@dataclasses.dataclass(frozen=True)
class Granularity:
    """How scales are shared: per tensor (axis None), per channel (axis, block 0) or per block."""

    axis: int | None = None
    block_size: int = 0

    def describe(self) -> str:
        if self.axis is None:
            return "tensor"
        return f"block{self.block_size}" if self.block_size else "channel"


def weight_scale(
    w: np.ndarray, fmt: IntFormat, gran: Granularity, method: str = "mse", percentile: float = 99.99
) -> np.ndarray:
    """The float32 scale(s) for ``w``, laid out for DequantizeLinear (see module docstring)."""
    groups = _to_groups(w, gran)  # [G, n]: one row per scale
    amax = np.abs(groups).max(axis=1)
    if method == "percentile":
        amax = np.minimum(amax, np.percentile(np.abs(groups), percentile, axis=1))
    elif method == "mse":
        amax = _mse_clip(groups, amax, fmt)
    elif method != "minmax":
        raise ValueError(f"unknown scale method {method!r}")
    scale = np.where(amax > 0, amax / fmt.qmax, 1.0).astype(np.float32)
    return _from_groups_scale(scale, w.shape, gran)


def quantize(w: np.ndarray, scale: np.ndarray, fmt: IntFormat, gran: Granularity) -> np.ndarray:
    """Integer codes of ``w`` in ``fmt.storage``."""
    s = expand_scale(scale, w.shape, gran)
    q = np.clip(np.rint(w / s), fmt.qmin, fmt.qmax)
    return q.astype(np.int8).astype(fmt.storage)


def dequantize(q: np.ndarray, scale: np.ndarray, gran: Granularity) -> np.ndarray:
    return q.astype(np.float32) * expand_scale(scale, q.shape, gran)


def expand_scale(scale: np.ndarray, shape: tuple[int, ...], gran: Granularity) -> np.ndarray:
    """Broadcast a DequantizeLinear-layout scale to the full weight shape."""
    if gran.axis is None:
        return np.asarray(scale, dtype=np.float32).reshape(())
    if not gran.block_size:
        view = [1] * len(shape)
        view[gran.axis] = shape[gran.axis]
        return scale.reshape(view)
    return np.repeat(scale, gran.block_size, axis=gran.axis).take(range(shape[gran.axis]), axis=gran.axis)


def _to_groups(w: np.ndarray, gran: Granularity) -> np.ndarray:
    """Rows of values that share one scale, zero-padded to equal length for blocks."""
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
        moved = np.pad(moved, [(0, 0)] * (moved.ndim - 1) + [(0, pad)])
    return moved.reshape(-1, gran.block_size)


def _from_groups_scale(scale: np.ndarray, shape: tuple[int, ...], gran: Granularity) -> np.ndarray:
    if gran.axis is None:
        return scale.reshape(())
    if not gran.block_size:
        return scale.reshape(-1)
    moved_shape = list(np.moveaxis(np.empty(shape, dtype=np.uint8), gran.axis, -1).shape)
    moved_shape[-1] = -(-shape[gran.axis] // gran.block_size)
    return np.moveaxis(scale.reshape(moved_shape), -1, gran.axis)


def _mse_clip(groups: np.ndarray, amax: np.ndarray, fmt: IntFormat) -> np.ndarray:
    """Per row, the clipping value from MSE_GRID * amax with the least squared error."""
    best_err = np.full(len(groups), np.inf)
    best = amax.copy()
    safe = np.where(amax > 0, amax, 1.0)
    for ratio in MSE_GRID:
        s = (safe * ratio / fmt.qmax)[:, None]
        err = np.square(np.clip(np.rint(groups / s), fmt.qmin, fmt.qmax) * s - groups).sum(axis=1)
        better = err < best_err
        best_err[better] = err[better]
        best[better] = amax[better] * ratio
    return best
