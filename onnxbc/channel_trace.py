"""Where a per-channel division of an activation can go instead of a Mul: back up the ops that computed it.

Smoothing divides an activation ``x`` by positive per-channel factors ``s`` before the layers that read it. A
Mul there runs in float between integer kernels; where the division can be moved into what computed ``x``, the
graph gains no work. Walking back from ``x`` one producer at a time, a division by ``s`` (channel ``c`` of
``x``) becomes:

1. through ``Relu``, ``LeakyRelu``, ``Identity`` (any axis) and ``MaxPool``/``AveragePool``/``Global*Pool``
   (channel axis 1): the same division of the op's input (``f(x / s) = f(x) / s``);
2. through ``Reshape``/``Flatten``/``Squeeze``/``Unsqueeze``, ``Transpose`` and a ``Slice``: the same division of
   the input at the positions the channels came from (their axes, and the offset a slice starts at);
3. through ``MatMul(A, B)`` of two activations (attention): a division of ``B`` when the channels lie on its
   last axis and batch axes, of ``A`` when on its second-last (never the contracted axis);
4. at ``Mul(a, c)`` / ``Div(a, c)`` with ``c`` constant: ``c / s`` / ``c * s`` (nothing left to move);
   at ``Mul(a, b)`` of two activations: a division of whichever operand can take it (GELU's
   ``x * (0.5 * (1 + erf(...)))`` takes it into the constant 0.5; SwiGLU's ``silu(g) * up`` into ``up``);
5. at ``Add``/``Sub`` with a constant: the constant divided too, then the other operand;
6. at a quantized Conv/Gemm/MatMul (the ``layers`` given): its per-output-channel weight scales (the codes stay),
   its compensation and its float bias; the walk ends there.

Every tensor on the way (``x`` excepted) must be read by the op the walk came from only, or besides by Slices
that take other channels (a fused QKV projection's Q and K), not be a graph output, and not be one the plan
quantizes (``blocked``): a per-tensor quantizer cannot follow a per-channel division. The positions of
the channels are tracked as flat row-major indices over the axes that hold them, so heads split by a Reshape and
moved by a Transpose keep their place. Anything else (a Split, a broadcast, an Add of two activations, unknown
static shapes) ends the walk without a fold, and the caller keeps its Mul.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection

import numpy as np
import onnx_ir as ir

from onnxbc.passes.graph_utils import constant_tensor
from onnxbc.plan import ConstantEdit, Fold

POOLS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"})
ELEMENTWISE = frozenset({"Relu", "LeakyRelu", "Identity"})
RESHAPES = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})
MAX_STEPS = 32


@dataclasses.dataclass(frozen=True)
class _Channels:
    """Where the smoothed channels sit in a tensor: the axes holding them (counted from the last, in the order
    of their row-major flattening) and each channel's flat index over those axes."""

    value: ir.Value
    axes: tuple[int, ...]
    positions: np.ndarray


def trace(
    x: ir.Value,
    axis: int,
    channels: int,
    layer_of: Callable[[ir.Value, int], str | None],
    blocked: Collection[str],
) -> Fold | None:
    """The fold of a division of ``x`` (``channels`` of them along ``axis``), or None when it needs a Mul.
    ``layer_of(value, axis)`` names the quantized layer computing ``value`` whose weight scales can carry a
    division along ``axis`` (counted from the last), if any (rule 6). ``blocked``: tensors the plan quantizes."""
    rank = _rank(x)
    if axis >= 0:
        if rank is None:
            return None
        axis -= rank
    return _Walk(x, layer_of, frozenset(blocked)).back(_Channels(x, (axis,), np.arange(channels)), ())


@dataclasses.dataclass(frozen=True)
class _Walk:
    x: ir.Value
    layer_of: Callable[[ir.Value, int], str | None]
    blocked: frozenset[str]

    def back(self, ch: _Channels, path: tuple[str, ...], reader: ir.Node | None = None) -> Fold | None:
        """The fold of the division of ``ch``'s channels, ``path`` the ops walked so far, ``reader`` the node
        the walk came from."""
        v = ch.value
        if len(path) > MAX_STEPS or (v is not self.x and (not _alone(v, reader, ch) or v.name in self.blocked)):
            return None
        if v.is_graph_output() or v.is_graph_input() or constant_tensor(v) is not None:
            return None
        if len(ch.axes) == 1 and (layer := self.layer_of(v, ch.axes[0])) is not None:
            return Fold(layer, ch.positions, (), path)
        node = v.producer()
        if node is None or node.domain not in ("", "ai.onnx") or len(node.outputs) != 1:
            return None
        path = (*path, node.op_type)
        moved = _through(node, ch)
        if moved is not None:
            return self.back(moved, path, node)
        if node.op_type in ("Mul", "Div", "Add", "Sub") and len(node.inputs) == 2:
            return self._arithmetic(node, ch, path)
        if node.op_type == "MatMul":  # rule 3: the last axis comes from B, the second-last from A
            if -1 in ch.axes and -2 not in ch.axes:
                return self._operand(node, 1, ch, path)
            if -2 in ch.axes and -1 not in ch.axes:
                return self._operand(node, 0, ch, path)
        return None

    def _arithmetic(self, node: ir.Node, ch: _Channels, path: tuple[str, ...]) -> Fold | None:
        """Rules 4 and 5."""
        op = node.op_type
        consts = [i for i, v in enumerate(node.inputs) if constant_tensor(v) is not None]
        if len(consts) == 2 or (consts and len(ch.axes) != 1):
            return None
        if consts:
            i = consts[0]
            size = _size(node.inputs[i], ch)
            if size is None or (op in ("Div", "Sub") and i == 0):  # c / a, c - a: the division does not pass
                return None
            edit = ConstantEdit(node.name, i, ch.axes[0], size, ch.positions, multiply=op == "Div")
            if op in ("Mul", "Div"):
                return Fold(None, None, (edit,), path)
            rest = self._operand(node, 1 - i, ch, path)
            return None if rest is None else dataclasses.replace(rest, constants=(*rest.constants, edit))
        operands = {"Div": (0,), "Mul": (1, 0)}.get(op, ())
        return next((f for i in operands if (f := self._operand(node, i, ch, path)) is not None), None)

    def _operand(self, node: ir.Node, i: int, ch: _Channels, path: tuple[str, ...]) -> Fold | None:
        value = node.inputs[i]
        if value is None or not _same_channels(value, ch):
            return None
        return self.back(dataclasses.replace(ch, value=value), path, node)


def _through(node: ir.Node, ch: _Channels) -> _Channels | None:
    """Rules 1 and 2: the channels in the op's first input (None: not such an op, or not traceable)."""
    op, source = node.op_type, node.inputs[0]
    if source is None:
        return None
    if op in ELEMENTWISE:
        return dataclasses.replace(ch, value=source)
    if op in POOLS:
        rank = _rank(source)
        return dataclasses.replace(ch, value=source) if rank is not None and ch.axes == (1 - rank,) else None
    if op in RESHAPES:
        return _reshaped(source, ch)
    if op == "Transpose":
        rank = _rank(source)
        if rank is None:
            return None
        perm = node.attributes.get_ints("perm", list(range(rank))[::-1])
        return dataclasses.replace(ch, value=source, axes=tuple(perm[a + rank] - rank for a in ch.axes))
    if op == "Slice":
        return _sliced(node, source, ch)
    return None


def _reshaped(source: ir.Value, ch: _Channels) -> _Channels | None:
    """Through a reshape: the channels must fill the trailing axes of the output, whose flat index then equals
    the flat index over the input's trailing axes of the same total size."""
    out_dims = _dims(ch.value, ch.axes)
    if out_dims is None or ch.axes != tuple(range(-len(ch.axes), 0)):
        return None
    size = math.prod(out_dims)
    shape = source.shape
    if shape is None:
        return None
    count, product = 0, 1
    for dim in reversed(list(shape)):
        if not isinstance(dim, int):
            return None
        count, product = count + 1, product * dim
        if product >= size:
            break
    if product != size:
        return None
    return _Channels(source, tuple(range(-count, 0)), ch.positions)


def _sliced(node: ir.Node, source: ir.Value, ch: _Channels) -> _Channels | None:
    """Through a Slice: the channels' axis may be sliced alone, with step 1 (the offset is its start)."""
    spans = [_slice_span(node, a) for a in ch.axes]
    if None in spans or (len(spans) > 1 and any(spans)):
        return None
    return _Channels(source, ch.axes, ch.positions + (spans[0][0] if spans[0] else 0))


def _slice_span(node: ir.Node, axis: int) -> tuple[int, int] | tuple[()] | None:
    """The [start, end) a Slice takes along ``axis`` (counted from the last) of its input, with step 1; ``()``
    when it does not slice that axis; None when unknown or strided."""
    source = node.inputs[0]
    params = [constant_tensor(v) if v is not None else None for v in node.inputs[1:5]]
    if source.shape is None or len(params) < 2 or params[0] is None or params[1] is None:
        return None
    rank = len(source.shape)
    starts, ends = params[0].numpy().tolist(), params[1].numpy().tolist()
    axes = params[2].numpy().tolist() if len(params) > 2 and params[2] is not None else list(range(len(starts)))
    steps = params[3].numpy().tolist() if len(params) > 3 and params[3] is not None else [1] * len(starts)
    for a, start, end, step in zip(axes, starts, ends, steps, strict=True):
        if a % rank - rank != axis:
            continue
        dim = source.shape[axis]
        if step != 1 or not isinstance(dim, int):
            return None
        start, end = (min(max(i + dim if i < 0 else i, 0), dim) for i in (start, end))
        return start, end
    return ()


def _alone(value: ir.Value, reader: ir.Node | None, ch: _Channels) -> bool:
    """Dividing ``ch``'s channels of ``value`` changes nothing ``reader`` (the node the walk came from) does not
    read: every other reader is a Slice that takes other channels (a fused QKV projection's Q and K)."""
    others = [use.node for use in value.uses() if use.node is not reader]
    if len(others) == len(value.uses()):
        return False
    if others and len(ch.axes) != 1:
        return False
    low, high = int(ch.positions.min()), int(ch.positions.max())
    for node in others:
        span = _slice_span(node, ch.axes[0]) if node.op_type == "Slice" and node.inputs[0] is value else None
        if not span or (span[0] <= high and low < span[1]):
            return False
    return True


def _same_channels(value: ir.Value, ch: _Channels) -> bool:
    """``value`` holds the channels where ``ch.value`` does: the same static sizes on their axes (no broadcast)."""
    here = _dims(ch.value, ch.axes)
    return here is not None and _dims(value, ch.axes) == here


def _size(value: ir.Value, ch: _Channels) -> int | None:
    """The output's size along the channel axis, where the float constant ``value`` broadcasts along it (size 1
    there, or that size); None otherwise."""
    tensor = constant_tensor(value)
    dims = _dims(ch.value, ch.axes)
    if tensor is None or dims is None or not np.issubdtype(tensor.dtype.numpy(), np.floating):
        return None
    shape = tuple(tensor.shape)
    size = shape[ch.axes[0]] if len(shape) >= -ch.axes[0] else 1
    return dims[0] if size in (1, dims[0]) else None


def _dims(value: ir.Value, axes: tuple[int, ...]) -> tuple[int, ...] | None:
    """The sizes of ``value`` on ``axes`` (counted from the last) when all are known integers (None otherwise)."""
    shape = value.shape
    if shape is None or len(shape) < -min(axes):
        return None
    dims = tuple(shape[a] for a in axes)
    return dims if all(isinstance(d, int) for d in dims) else None


def _rank(value: ir.Value) -> int | None:
    return len(value.shape) if value.shape is not None else None
