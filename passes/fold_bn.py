"""Fold BatchNormalization, and constant per-channel Mul and Add, into the layer before them, in float.

Why: ONNX Runtime fuses ``DequantizeLinear -> Conv -> QuantizeLinear`` into an integer kernel only when the
layer's output goes straight to its quantizer, and exporters often leave BatchNormalization unfolded (PyTorch
in training-mode export, tf2onnx, Paddle). Folded, the layer is also what smoothing, compensation and DF-MPC
work on.

A *layer* is a standard-domain ``Conv``, ``ConvTranspose``, ``Gemm`` or ``MatMul`` (``x @ W``) whose weight
``W`` (input 1) is a float constant. Per output channel it computes ``y = (W x) + b``, where ``b`` is
``Conv``/``ConvTranspose`` input ``B``, ``Gemm`` ``beta * C``, or, for ``MatMul``, the constant of an ``Add``
that alone reads it (an exporter's Linear layer); 0 when absent. A *per-channel constant* broadcasts along
the layer's output channel only (axis 1; the last axis for ``MatMul``): a scalar, or ``C`` values on that axis
and ones elsewhere, of a rank no higher than the output's.

Rewrite rules, for a node ``F`` that reads a layer's output ``y`` and computes ``k y + d`` per channel:

1. ``BatchNormalization`` in inference form: ``k = scale / sqrt(var + epsilon)``, ``d = B - mean k``;
2. ``Mul`` by a per-channel constant ``s``: ``k = s``, ``d = 0``;
3. ``Add`` of a per-channel constant ``t``: ``k = 1``, ``d = t`` (right after a bias-less ``MatMul`` that
   ``Add`` is the layer's bias, and stays).

``W`` becomes ``W k`` along its output channels (``Conv``: axis 0; ``ConvTranspose``, ``[C_in, C_out / group,
...]``: axis 1 within each group; ``Gemm``: axis 1, or 0 with ``transB``; ``MatMul``: the last axis) and the
bias ``k b + d`` (``Gemm``: ``C = k beta C + d`` and ``beta = 1``). A missing bias is created when ``d`` is not
zero (``MatMul``: a new ``Add``). ``F`` is removed and its readers read the layer output, which takes ``F``'s
output name when that is a graph output. Nodes are visited in graph order, so ``Conv -> BatchNormalization ->
Mul -> Add`` folds whole. Constants are computed in float64 and stored in their own type (float16 stays
float16), so the model computes the same function up to float rounding. A bias read by other nodes too is
copied first (``graph_utils.set_constant``); parameters nothing reads any more are dropped.

A site is left as it is, with a reason in the result's ``skipped`` (keyed by the node left), when folding
would not be exact or not safe: a BatchNormalization in training mode (or whose running statistics are read),
with parameters computed at run time or ``var + epsilon <= 0``; ``y`` read by other nodes too, a graph output,
or in an outer graph; ``W`` computed at run time, or read by other nodes when ``k`` is not 1 (folding would
need a second copy of the weight); a bias computed at run time; a BatchNormalization after a ``MatMul`` whose
output is not 2-D (it normalizes axis 1, not the output channels) or of unknown rank; new values that
overflow their type. A BatchNormalization after anything but a layer is skipped, naming what it follows. A
``Mul``/``Add`` is reported only when it is a rule 2/3 site: after a layer, with a per-channel constant.

BatchNormalization statistics: the result's ``batchnorms`` keeps, per folded BatchNormalization, its ``scale``
and ``B`` (times any ``Mul``, plus any ``Add`` folded after it), keyed by the name of the value its readers now
read. ``onnxbc.pairs`` models that value as ``N(B, scale^2)`` per channel (data-free bias correction).

onnxscript's ``fuse_batchnorm`` rules cover BatchNormalization after Conv/ConvTranspose/Gemm only, give no
reason when they do not match, and compute in the weight's type; hence this pass.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from onnxbc.passes.graph_utils import Namer, const, constant_tensor, drop_if_unused, set_constant
from onnxbc.passes.results import SitesResult

logger = logging.getLogger(__name__)

LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE)
_NOT_A_LAYER = "not from a Conv, ConvTranspose, Gemm or MatMul with a constant weight"


@dataclasses.dataclass(frozen=True)
class FoldedBatchNorm:
    """A BatchNormalization folded into a layer: the layer's output is modelled per channel as
    ``scale * z + shift``, ``z ~ N(0, 1)`` (its ``scale`` and ``B``, carried through later folds)."""

    name: str  # the BatchNormalization node
    layer: str  # the node it was folded into
    scale: np.ndarray  # float64, one per channel
    shift: np.ndarray


@dataclasses.dataclass
class FoldResult(SitesResult):
    """``sites``: folded node -> the layer it went into; ``skipped``: node left -> why.

    Attributes:
        batchnorms: name of the value a folded BatchNormalization's readers now read -> its statistics.
    """

    batchnorms: dict[str, FoldedBatchNorm] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class _Layer:
    node: ir.Node
    bias_add: ir.Node | None  # MatMul: the Add that holds its bias
    weight: ir.TensorProtocol  # read only when it changes (a large model's weights may be on disk)
    channels: int
    rank: int | None  # of the output (None: unknown, MatMul only)
    tail: int  # output axes after the channel axis

    @property
    def output(self) -> ir.Value:
        return (self.bias_add or self.node).outputs[0]


@dataclasses.dataclass(frozen=True)
class _Site:
    node: ir.Node  # the BatchNormalization, Mul or Add to fold
    layer: _Layer
    k: np.ndarray  # float64, one per channel
    d: np.ndarray
    batchnorm: tuple[np.ndarray, np.ndarray] | None  # BatchNormalization: (scale, B)


@dataclasses.dataclass(frozen=True)
class _Fold:
    """A site checked, with the values its layer will hold."""

    site: _Site
    weight: np.ndarray | None  # None: unchanged (k = 1)
    bias: np.ndarray | None  # None: unchanged (no bias and d = 0)


class FoldBatchNormPass(ir.passes.InPlacePass):
    """Fold BatchNormalization and per-channel Mul/Add into the layer before them (rules in the module
    docstring). Returns a ``FoldResult``; run it after the passes that lift constants, name nodes and infer
    shapes (``MatMul`` needs its output rank)."""

    def call(self, model: ir.Model) -> FoldResult:
        namer = Namer(model)
        result = FoldResult(model, modified=False)
        stats: dict[ir.Value, FoldedBatchNorm] = {}  # by value: a graph output is renamed when it moves
        count = 0
        for graph in list(model.graphs()):
            for node in list(graph):
                count += self._try_fold(node, namer, result, stats)
        result.modified = count > 0
        result.batchnorms = {value.name: folded for value, folded in stats.items()}
        logger.debug("folded %d nodes into layers, left %d", count, len(result.skipped))
        return result

    def _try_fold(
        self, node: ir.Node, namer: Namer, result: FoldResult, stats: dict[ir.Value, FoldedBatchNorm]
    ) -> bool:
        fold = _match(node)
        if fold is None:
            return False
        if isinstance(fold, str):
            result.skipped[node.name] = fold
            logger.debug("left %s: %s", node.name, fold)
            return False
        site, before = fold.site, fold.site.layer.output
        out = _apply(fold, namer)
        known = stats.pop(before, None)
        if site.batchnorm is not None:
            stats[out] = FoldedBatchNorm(node.name, site.layer.node.name, *site.batchnorm)
        elif known is not None:  # a Mul/Add after a folded BatchNormalization: carry its statistics through
            stats[out] = dataclasses.replace(known, scale=known.scale * site.k, shift=known.shift * site.k + site.d)
        result.sites[node.name] = site.layer.node.name
        logger.debug("folded %s into %s", node.name, site.layer.node.name)
        return True


def _match(node: ir.Node) -> _Fold | str | None:
    """The fold of ``node``, why it cannot be folded, or None when it is no site."""
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "BatchNormalization":
        layer = _layer_before(node.inputs[0], node)
        site = layer if isinstance(layer, str) else _match_batchnorm(node, layer)
    elif node.op_type in ("Mul", "Add") and len(node.inputs) == 2 and _matmul_of_bias(node) is None:
        site = _match_affine(node)
    else:
        return None
    return site if site is None or isinstance(site, str) else _checked(site)


def _match_batchnorm(node: ir.Node, layer: _Layer) -> _Site | str:
    """Rule 1."""
    if node.attributes.get_int("training_mode", 0):
        return "training mode (training_mode=1)"
    if node.attributes.get_int("spatial", 1) == 0:
        return "spatial=0: statistics per position, not per channel"
    used = [v.name for v in node.outputs[1:] if v.uses() or v.is_graph_output()]
    if used:
        return f"its running statistics {used} are read (training form)"
    if len(node.inputs) != 5 or None in node.inputs:
        return "it lacks some of its 5 inputs"
    params = []
    for v in node.inputs[1:]:
        tensor = constant_tensor(v)
        if tensor is None:
            return f"parameter '{v.name}' is computed at run time"
        if tensor.size != layer.channels:
            return f"parameter '{v.name}' has {tensor.size} values, '{layer.node.name}' has {layer.channels} channels"
        params.append(tensor.numpy().astype(np.float64).reshape(-1))
    if layer.node.op_type == "MatMul" and layer.rank != 2:
        rank = "of unknown rank" if layer.rank is None else f"{layer.rank}-D"
        return f"the output of MatMul '{layer.node.name}' is {rank}: BatchNormalization would normalize axis 1"
    gamma, beta, mean, var = params
    var_eps = var + node.attributes.get_float("epsilon", 1e-5)
    if not np.all(var_eps > 0):
        return f"var + epsilon is not positive in channel {int(np.argmin(var_eps))}"
    k = gamma / np.sqrt(var_eps)
    return _Site(node, layer, k, beta - mean * k, (gamma, beta))


def _match_affine(node: ir.Node) -> _Site | str | None:
    """Rules 2 and 3: a Mul or Add of a per-channel constant after a layer (None: no such site)."""
    constants = [constant_tensor(v) for v in node.inputs]
    if sum(c is not None for c in constants) != 1:
        return None
    index = 0 if constants[0] is not None else 1
    layer = _layer_before(node.inputs[1 - index], node)
    if isinstance(layer, str):
        return None
    vector = _per_channel(constants[index], layer)
    if vector is None or isinstance(vector, str):
        return vector
    ones, zeros = np.ones(layer.channels), np.zeros(layer.channels)
    return _Site(node, layer, vector, zeros, None) if node.op_type == "Mul" else _Site(node, layer, ones, vector, None)


def _layer_before(x: ir.Value | None, reader: ir.Node) -> _Layer | str:
    """The layer whose output ``x`` is, or why there is none."""
    producer = x.producer() if x is not None else None
    if producer is None:
        what = "a graph input" if x is not None and x.is_graph_input() else "a constant, or missing"
        return f"its input '{x.name if x is not None else ''}' is {what}, {_NOT_A_LAYER}"
    matmul = _matmul_of_bias(producer)
    node = matmul or producer
    if node.op_type not in LAYER_OPS or node.domain not in ("", "ai.onnx"):
        return f"its input comes from {producer.op_type} '{producer.name}', {_NOT_A_LAYER}"
    if producer.graph is not reader.graph:
        return f"its input comes from '{producer.name}' in an outer graph"
    return _layer(node, producer if matmul is not None else None)


def _layer(node: ir.Node, bias_add: ir.Node | None) -> _Layer | str:
    """``node`` as a layer (its weight, channels and output rank), or why it is not one."""
    op = node.op_type
    w_value = node.inputs[1] if len(node.inputs) > 1 else None
    weight = constant_tensor(w_value)
    if weight is None:
        if w_value is not None and w_value.is_graph_input():
            return f"the weight '{w_value.name}' of {op} '{node.name}' is a graph input (supplied at run time)"
        by = w_value.producer() if w_value is not None else None
        return f"the weight of {op} '{node.name}' is computed at run time" + (f" by '{by.name}'" if by else "")
    if weight.dtype not in _FLOATS:
        return f"the weight of {op} '{node.name}' is {weight.dtype.name}, not a float type"
    if op == "MatMul" and constant_tensor(node.inputs[0]) is not None:
        return f"both inputs of MatMul '{node.name}' are constants"
    shape = tuple(weight.shape)
    if op == "MatMul" and len(shape) < 2:
        return f"the weight of MatMul '{node.name}' is 1-D (a vector product)"
    if op == "Conv":
        return _Layer(node, bias_add, weight, shape[0], len(shape), len(shape) - 2)
    if op == "ConvTranspose":
        group = node.attributes.get_int("group", 1)
        if shape[0] % group:
            return f"ConvTranspose '{node.name}' has {shape[0]} input channels, not a multiple of group={group}"
        return _Layer(node, bias_add, weight, shape[1] * group, len(shape), len(shape) - 2)
    if op == "Gemm":
        return _Layer(node, bias_add, weight, shape[0 if node.attributes.get_int("transB", 0) else 1], 2, 0)
    return _Layer(node, bias_add, weight, shape[-1], _matmul_rank(node, len(shape)), 0)


def _matmul_of_bias(node: ir.Node) -> ir.Node | None:
    """The MatMul whose bias ``node`` holds (rule 3's exception): ``node`` is an Add of a per-channel constant
    and the only reader of a MatMul with a constant weight."""
    if node.op_type != "Add" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
        return None
    for x, bias in (node.inputs, reversed(node.inputs)):
        matmul = x.producer() if x is not None else None
        tensor = constant_tensor(bias)
        if matmul is None or matmul.op_type != "MatMul" or tensor is None:
            continue
        if len(x.uses()) != 1 or x.is_graph_output():
            return None
        layer = _layer(matmul, None)
        return matmul if isinstance(layer, _Layer) and isinstance(_per_channel(tensor, layer), np.ndarray) else None
    return None


def _matmul_rank(node: ir.Node, w_rank: int) -> int | None:
    if node.outputs[0].shape is not None:
        return len(node.outputs[0].shape)
    x = node.inputs[0].shape
    if x is None:
        return None
    return max(len(x), w_rank) if len(x) >= 2 else w_rank - 1


def _per_channel(tensor: ir.TensorProtocol, layer: _Layer) -> np.ndarray | str | None:
    """A per-channel constant as ``C`` float64 values; None when it is not one; a reason when it would be
    one but the layer's output rank, needed to tell, is unknown."""
    shape = tuple(tensor.shape)
    axis = len(shape) - 1 - layer.tail  # the constant's channel axis (right-aligned with the output)
    size = shape[axis] if axis >= 0 else 1
    if size not in (1, layer.channels) or any(d != 1 for i, d in enumerate(shape) if i != axis):
        return None
    if layer.rank is None and len(shape) > 1:
        return f"the rank of '{layer.output.name}' is unknown: cannot tell whether the constant broadcasts it"
    if layer.rank is not None and len(shape) > layer.rank:
        return None
    return np.broadcast_to(tensor.numpy().astype(np.float64).reshape(-1), (layer.channels,)).copy()


def _checked(site: _Site) -> _Fold | str:
    """The values ``site`` gives its layer, or why the layer cannot take them: other readers, a shared or
    run-time constant, overflow."""
    layer, node = site.layer, site.layer.node
    y = layer.output
    readers = [u.node for u in y.uses() if u.node is not site.node]
    if readers:
        return f"'{y.name}' of {node.op_type} '{node.name}' is also read by {readers[0].op_type} '{readers[0].name}'"
    if y.is_graph_output():
        return f"'{y.name}' of {node.op_type} '{node.name}' is a graph output"
    w = node.inputs[1]
    dtype = constant_tensor(w).dtype
    weight = None
    if not np.all(site.k == 1):
        others = [u.node for u in w.uses() if u.node is not node]
        if others:
            return f"weight '{w.name}' of '{node.name}' is shared with {others[0].op_type} '{others[0].name}'"
        if w.is_graph_output():
            return f"weight '{w.name}' of '{node.name}' is a graph output"
        weight = _scaled_weight(layer, site.k)
        if not _fits(weight, dtype):
            return f"the folded weight '{w.name}' overflows {dtype.name}"
    bias = _bias(layer)
    if isinstance(bias, str):
        return bias
    if bias is None and not np.any(site.d):
        return _Fold(site, weight, None)
    new_bias = site.d if bias is None else site.k * bias + site.d
    bias_dtype = dtype if bias is None else constant_tensor(_bias_value(layer)).dtype
    if not _fits(new_bias, bias_dtype):
        return f"the folded bias of '{node.name}' overflows {bias_dtype.name}"
    return _Fold(site, weight, new_bias)


def _fits(values: np.ndarray, dtype: ir.DataType) -> bool:
    with np.errstate(over="ignore"):
        return bool(np.all(np.isfinite(values.astype(dtype.numpy()))))


def _bias_value(layer: _Layer) -> ir.Value | None:
    """The input that holds the layer's bias (None: no bias, or a Gemm whose ``beta`` is 0)."""
    node = layer.node
    if layer.bias_add is not None:
        return next(v for v in layer.bias_add.inputs if v.producer() is not node)
    if node.op_type == "MatMul" or len(node.inputs) < 3 or node.inputs[2] is None:
        return None
    if node.op_type == "Gemm" and node.attributes.get_float("beta", 1.0) == 0.0:
        return None
    return node.inputs[2]


def _bias(layer: _Layer) -> np.ndarray | str | None:
    """The layer's ``b`` in float64 (channels on the last axis), None when it has none, or why it cannot
    change."""
    value = _bias_value(layer)
    if value is None:
        return None
    tensor = constant_tensor(value)
    if tensor is None:
        return f"bias '{value.name}' of '{layer.node.name}' is computed at run time"
    b = tensor.numpy().astype(np.float64)
    if layer.node.op_type == "Gemm":
        return b * layer.node.attributes.get_float("beta", 1.0)
    if layer.bias_add is None and b.size != layer.channels:
        return f"bias '{value.name}' of '{layer.node.name}' has {b.size} values, not {layer.channels}"
    return b


def _scaled_weight(layer: _Layer, k: np.ndarray) -> np.ndarray:
    """``W k`` along the weight's output channels."""
    w, op = layer.weight.numpy().astype(np.float64), layer.node.op_type
    if op == "Conv":
        return w * k.reshape(-1, *[1] * (w.ndim - 1))
    if op == "ConvTranspose":
        group = layer.node.attributes.get_int("group", 1)
        grouped = w.reshape(group, w.shape[0] // group, *w.shape[1:])
        return (grouped * k.reshape(group, 1, w.shape[1], *[1] * (w.ndim - 2))).reshape(w.shape)
    if op == "Gemm" and layer.node.attributes.get_int("transB", 0):
        return w * k.reshape(-1, 1)
    return w * k  # Gemm B [K, N], MatMul W [..., K, N]


def _apply(fold: _Fold, namer: Namer) -> ir.Value:
    """Write the fold's values and remove its node; returns the value the node's readers now read."""
    layer, node = fold.site.layer, fold.site.layer.node
    y = layer.output
    params = [*node.inputs[1:], *(layer.bias_add.inputs if layer.bias_add else ()), *fold.site.node.inputs]
    params = [v for v in params if v is not y]
    if fold.weight is not None:
        set_constant(node, 1, fold.weight, namer, "folded")
    out = y if fold.bias is None else _set_bias(layer, fold.bias, namer)
    _bypass(fold.site.node, out)
    for value in params:
        drop_if_unused(value)
    return out


def _set_bias(layer: _Layer, bias: np.ndarray, namer: Namer) -> ir.Value:
    """Store the new ``b``; returns the layer output (a new Add's for a bias-less MatMul)."""
    node, value = layer.node, _bias_value(layer)
    if layer.bias_add is not None:
        set_constant(layer.bias_add, list(layer.bias_add.inputs).index(value), bias, namer, "folded")
        return layer.output
    dtype = constant_tensor(node.inputs[1]).dtype
    if node.op_type == "Gemm":
        node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
    if value is not None:
        set_constant(node, 2, bias, namer, "folded")
        return layer.output
    new = const(namer, f"{node.name}_bias", bias.astype(dtype.numpy()))
    node.graph.register_initializer(new)
    if node.op_type != "MatMul":
        if len(node.inputs) < 3:
            node.resize_inputs(3)
        node.replace_input_with(2, new)
        return layer.output
    y = node.outputs[0]
    add = ir.node("Add", [y, new], name=namer(f"{node.name}_bias_Add"))
    out = add.outputs[0]
    out.name, out.dtype, out.shape = namer(f"{y.name}_biased"), y.dtype or dtype, y.shape
    node.graph.insert_after(node, [add])
    return out


def _bypass(node: ir.Node, value: ir.Value) -> None:
    """Remove ``node``; its readers read ``value``, which takes its output's name if that is a graph output."""
    out = node.outputs[0]
    name, was_output = out.name, out.is_graph_output()
    out.replace_all_uses_with(value, replace_graph_outputs=True)
    node.graph.remove(node, safe=True)
    if was_output:  # keep the model's output names, and their types
        out.name, value.name = None, name
        if value.dtype is None:
            value.type = out.type
        value.shape = value.shape or out.shape
