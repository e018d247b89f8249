"""GPTQ rounding of a 2-D weight with fixed scales (numpy only; Frantar et al., "GPTQ", arXiv 2210.17323).

For a linear layer ``y = W x`` (``W`` is ``[out, in]``) and input second moments ``H = E[x x^T]``, the output
error of a rounded weight is ``E||(W - W_hat) x||^2 = tr(dW H dW^T)`` (``output_error``). GPTQ quantizes the
input columns one at a time and, after rounding column ``j``, moves the rounding error onto the columns not
yet quantized so as to keep that quadratic minimal (optimal brain surgeon update):

    e = (w_j - s_j q_j) / U_jj,    W[:, j:] -= e U[j, j:],

where ``U`` is the upper Cholesky factor of ``H^-1`` (``H^-1 = U^T U``), which gives every step's inverse
Hessian restricted to the remaining columns at once. Updates are applied lazily per block of columns
(``block_size``, 128): inside a block column by column, then the block's accumulated errors update all later
columns in one matrix product.

Damping: ``H += percdamp * mean(diag H) * I`` (0.01). Inputs that are always zero (``H_jj = 0``) get
``H_jj = 1`` and their weights are set to 0 before quantizing (they never affect the output). Scales are an
input, computed beforehand (``quant.weight_scale``): per tensor, per output channel or per block along the
input axis, so the scale choice stays with the existing code ("static groups"). Codes use the given
``IntFormat``'s ``[qmin, qmax]``. ``act_order`` quantizes columns by decreasing ``H_jj`` (often better at 3
bits); the scales stay attached to their original columns.

Limits: 2-D weights only (MatMul/Gemm). For Conv, reshape the weight to ``[out, in * kh * kw]`` and give the
second moments of the im2col patches. GPTQ minimizes ``E||dW x||^2``; it leaves the mean output error that
bias compensation removes (``tr(dW Cov(x) dW^T)`` is what remains after it).
"""

from __future__ import annotations

import numpy as np

from onnxbc.errors import OnnxbcError
from onnxbc.solvers.quant import Granularity, IntFormat, chunks, expand_scale, scale_part

ROWS_ELEMENTS = 1 << 24  # weight values GPTQ rounds at a time (128 MB in float64; rows are independent)


class SecondMoments:
    """Streaming ``E[x x^T]`` and ``E[x]`` of a layer input, features on the last axis.

    Every leading axis (batch, tokens, positions) is flattened into samples: ``update`` with ``[..., in]``
    arrays, then ``matrix()`` equals ``X^T X / n`` for all rows ``X`` seen (float64 sums).
    """

    def __init__(self) -> None:
        self.sum_xx: np.ndarray | None = None
        self.sum_x: np.ndarray | None = None
        self.count = 0
        self._store = None  # where ``park`` put ``sum_xx``

    def park(self, store) -> None:
        """Move ``sum_xx`` into ``store`` (a ``calibration.stash.Stash``: in files) until it is asked for: a model
        has one ``[in, in]`` matrix per distinct layer input and split (1 GB in float64 for six Llama blocks of
        width 1024), used one layer at a time once gathered. No more samples can be added."""
        if self.sum_xx is not None:
            store.put(id(self), {"xx": self.sum_xx})
            self.sum_xx, self._store = None, store

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        rows = x.reshape(-1, x.shape[-1])
        self.add(rows.T @ rows, rows.sum(axis=0), rows.shape[0])

    def add(self, sum_xx: np.ndarray, sum_x: np.ndarray, count: int) -> None:
        """Fold in sums computed elsewhere (in the graph): ``X^T X``, ``X.sum(0)`` and the row count."""
        if self._store is not None:
            raise ValueError("samples added to parked second moments")
        if self.sum_xx is None:
            self.sum_xx = np.zeros(sum_xx.shape)
            self.sum_x = np.zeros(sum_x.shape)
        elif sum_x.shape != self.sum_x.shape:
            raise ValueError(f"input has {sum_x.shape[0]} features, earlier batches had {self.sum_x.shape[0]}")
        self.sum_xx += np.asarray(sum_xx, np.float64)
        self.sum_x += np.asarray(sum_x, np.float64)
        self.count += count

    def matrix(self) -> np.ndarray:
        """``E[x x^T]`` (``in x in``)."""
        return self.sum_of_squares() / self.count

    def sum_of_squares(self) -> np.ndarray:
        """``X^T X`` as kept: not to be changed (parked: read from its file, not copied)."""
        self._check()
        return self.sum_xx if self._store is None else self._store.get(id(self))["xx"]

    def mean(self) -> np.ndarray:
        self._check()
        return self.sum_x / self.count

    def covariance(self) -> np.ndarray:
        """``Cov(x) = E[x x^T] - E[x] E[x]^T``: prices the output error left after bias compensation."""
        mean = self.mean()
        return self.matrix() - np.outer(mean, mean)

    def _check(self) -> None:
        if not self.count:
            raise ValueError("no samples accumulated")


def output_error(w: np.ndarray, w_hat: np.ndarray, h: np.ndarray, input_axis: int = 1) -> float:
    """``tr(dW H dW^T)`` with ``dW = W - W_hat``: the mean ``||dW x||^2`` per sample for ``H = E[x x^T]``
    (with ``H = Cov(x)``: the error left after bias compensation)."""
    dw = np.asarray(w, np.float64) - np.asarray(w_hat, np.float64)
    if input_axis == 0:
        dw = dw.T
    return float(np.einsum("oi,ij,oj->", dw, h, dw))


def gptq_quantize(
    w: np.ndarray,
    h: np.ndarray,
    scale: np.ndarray,
    fmt: IntFormat,
    gran: Granularity,
    input_axis: int = 1,
    block_size: int = 128,
    percdamp: float = 0.01,
    act_order: bool = False,
) -> np.ndarray:
    """Integer codes of ``w`` in ``fmt.storage``, rounded by GPTQ with the given scales.

    Args:
        w: 2-D weight. ``input_axis=1`` for ``[out, in]`` (Gemm with transB), ``0`` for ONNX MatMul's
            ``[in, out]``. Codes come back in the same orientation.
        h: ``E[x x^T]`` of the layer input, ``[in, in]`` (``SecondMoments.matrix()``; any positive multiple
            gives the same result).
        scale, gran: scales in DequantizeLinear layout for ``w`` as given (``quant.weight_scale``).
        fmt: the code range (``INT8``, ``INT4``, ``INT3``, ...).
        block_size: columns per lazy-update block.
        percdamp: damping as a fraction of the mean diagonal of ``h``.
        act_order: quantize columns by decreasing ``h`` diagonal.
    """
    w = np.asarray(w)
    if w.ndim != 2 or input_axis not in (0, 1):
        raise ValueError("gptq_quantize needs a 2-D weight and input_axis 0 or 1")
    scale = np.asarray(scale, np.float32)
    h = np.asarray(h)
    if h.shape != (w.shape[input_axis],) * 2:
        raise ValueError(f"second moments are {h.shape}, the weight has {w.shape[input_axis]} inputs")
    dead = np.diag(h) == 0
    order = np.argsort(-np.where(dead, 1.0, np.diag(h)), kind="stable") if act_order else None
    # one [in, in] matrix at a time where it can be (254 MB each at 5632 inputs): the damped copy goes once
    # factored, the factor once inverted
    damped = np.array(h, dtype=np.float64)
    damped[dead, dead] = 1.0
    if order is not None:
        damped = damped[np.ix_(order, order)]
    lower = _damped_cholesky(damped, percdamp)
    del damped
    u = _upper_inverse(lower)
    del lower
    # output rows are rounded independently: a few at a time, so that a vocabulary's LM head (hundreds of MB)
    # is never copied whole in float64, with its scales beside it
    out_axis = 1 - input_axis
    codes = np.empty(w.shape, np.int16)
    for index, start, stop in chunks(w.shape, out_axis, gran, ROWS_ELEMENTS):
        part = w[index]
        scales = np.broadcast_to(
            expand_scale(scale_part(scale, gran, out_axis, start, stop), part.shape, gran), part.shape
        )
        wt = np.array(part if input_axis == 1 else part.T, dtype=np.float64)  # [rows, in]
        st = np.asarray(scales if input_axis == 1 else scales.T, dtype=np.float64)
        wt[:, dead] = 0.0
        if order is not None:
            wt, st = wt[:, order], st[:, order]
        rounded = _gptq_loop(wt, st, u, fmt, block_size)
        if order is not None:
            rounded = rounded[:, np.argsort(order)]
        codes[index] = rounded if input_axis == 1 else rounded.T
    return codes.astype(fmt.storage)


def _damped_cholesky(h: np.ndarray, percdamp: float) -> np.ndarray:
    """Lower ``L`` with ``L L^T = P (H + damp I) P`` for the order reversal ``P`` (``_upper_inverse`` turns it
    into GPTQ's factor); the damping grows 10x (up to 3 times) if needed. ``h`` is damped in place."""
    diagonal = np.diag(h).copy()
    damp = percdamp * float(np.mean(diagonal))
    for attempt in range(4):
        np.fill_diagonal(h, diagonal + damp)
        try:
            return np.linalg.cholesky(h[::-1, ::-1])
        except np.linalg.LinAlgError as e:
            if attempt == 3:
                raise OnnxbcError(
                    f"GPTQ: input second moments are not positive definite even with damping {damp:g}"
                ) from e
            damp = damp * 10 if damp > 0 else 1e-8
    raise AssertionError("unreachable")


def _upper_inverse(lower: np.ndarray) -> np.ndarray:
    """Upper ``U`` with ``U^T U = (H + damp I)^-1`` from ``_damped_cholesky``'s ``L``.

    With ``P H P = L L^T``: ``H^-1 = P L^-T L^-1 P = U^T U`` for ``U = P L^-1 P``, upper triangular with a positive
    diagonal (so the unique such factor): one Cholesky and one triangular inverse, where inverting ``H`` and
    factoring ``H^-1`` took two of each and a matrix product."""
    return np.ascontiguousarray(_lower_inverse(lower)[::-1, ::-1])


def _lower_inverse(lower: np.ndarray) -> np.ndarray:
    """The inverse of a lower triangular matrix by halves, ``[[A, 0], [C, D]]^-1 = [[A^-1, 0], [-D^-1 C A^-1,
    D^-1]]``: its matrix products cost a third of a general inverse's work."""
    n = len(lower)
    if n <= 256:
        return np.linalg.inv(lower)
    k = n // 2
    a, d = _lower_inverse(lower[:k, :k]), _lower_inverse(lower[k:, k:])
    inverse = np.zeros_like(lower)
    inverse[:k, :k], inverse[k:, k:] = a, d
    inverse[k:, :k] = -(d @ (lower[k:, :k] @ a))
    return inverse


def _gptq_loop(w: np.ndarray, s: np.ndarray, u: np.ndarray, fmt: IntFormat, block_size: int) -> np.ndarray:
    """Column-wise rounding with error feedback, lazily applied per block (``w`` is updated in place)."""
    n = w.shape[1]
    codes = np.zeros(w.shape, dtype=np.int16)
    for b0 in range(0, n, block_size):
        b1 = min(b0 + block_size, n)
        block = w[:, b0:b1]  # a view: in-block updates land in w
        errors = np.zeros_like(block)
        for j in range(b1 - b0):
            col, scale = block[:, j], s[:, b0 + j]
            q = np.clip(np.rint(col / scale), fmt.qmin, fmt.qmax)
            codes[:, b0 + j] = q
            err = (col - q * scale) / u[b0 + j, b0 + j]
            block[:, j:] -= np.outer(err, u[b0 + j, b0 + j : b1])
            errors[:, j] = err
        w[:, b1:] -= errors @ u[b0:b1, b1:]
    return codes
