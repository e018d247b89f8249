"""How much memory one sample's intermediate tensors take when ONNX Runtime runs a graph: a static estimate.

The collector splits each batch into runs of at most so many samples that these tensors stay within a budget:
an instrumented graph computes the model and every layer's shadow and trial side by side, so on an LM head of
49152 logits a token one run of 13 windows of 512 tokens held several 1.3 GB tensors at once (SmolLM2, pass 2:
10.4 GB peak). The estimate is reproducible (the same on every machine), so the runs are too, and with them the
statistics that depend on them.

``peak_bytes``: the shapes of one sample (every input's leading axis 1) are inferred by onnx's shape
inference (weights left out of the call); the nodes are walked in graph order, which the collector's exact
sessions follow (``ExecutionOrder.PRIORITY_BASED``); a tensor is alive from its node until its last reader (a
graph output to the end); the estimate is the most bytes alive at once. Tensors whose shape is not inferred
count nothing, subgraphs are not walked, and ONNX Runtime may reuse or fuse buffers: an estimate, not a bound.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import _c_api_utils

from onnxbc.calibration import segments

logger = logging.getLogger(__name__)


def peak_bytes(model: ir.Model, sample: Mapping[str, np.ndarray], outputs_held: int = 1) -> int | None:
    """The most bytes of intermediate tensors alive at once while ``model`` runs on ``sample`` (see the module
    docstring), its graph outputs counted ``outputs_held`` times (held beside copies of themselves after the run);
    None when shape inference fails."""
    both = peak_and_output_bytes(model, sample, outputs_held)
    return None if both is None else both[0]


def peak_and_output_bytes(
    model: ir.Model, sample: Mapping[str, np.ndarray], outputs_held: int = 1
) -> tuple[int, int | None] | None:
    """``peak_bytes``, and the bytes of the graph outputs on ``sample`` (None when one's shape is not inferred),
    from one shape inference; None when it fails."""
    sizes = _sizes(model, sample)
    if sizes is None:
        return None
    outputs = [sizes.get(v.name) for v in model.graph.outputs]
    return _peak(model, sizes, outputs_held), None if None in outputs else sum(outputs)


def _peak(model: ir.Model, sizes: Mapping[str, int], outputs_held: int) -> int:
    nodes = list(model.graph)
    position = {node: i for i, node in enumerate(nodes)}
    end = len(nodes)
    outputs = set(model.graph.outputs)
    freed: list[int] = [0] * (end + 1)  # bytes released after node i
    alive = peak = 0
    constant = segments.constant_nodes(nodes)  # ONNX Runtime folds them into weights
    for i, node in enumerate(nodes):
        if node in constant:
            continue
        for v in node.outputs:
            size = sizes.get(v.name, 0)
            if not size:
                continue
            last = end if v in outputs else max((position.get(u.node, end) for u in v.uses()), default=i)
            alive += size
            freed[max(last, i)] += size
        peak = max(peak, alive)
        alive -= freed[i]
    return peak + (outputs_held - 1) * sum(sizes.get(v.name, 0) for v in outputs)


def _sizes(model: ir.Model, sample: Mapping[str, np.ndarray]) -> dict[str, int] | None:
    """Bytes of each value whose shape is fully inferred for ``sample``."""
    inputs = [v for v in model.graph.inputs if v.name in sample]
    bound = {}  # the sizes the sample gives the inputs' named dimensions (the batch axis: 1)
    for v in inputs:
        for dim, size in zip(v.shape or (), sample[v.name].shape):
            if isinstance(dim, ir.SymbolicDim) and dim.value is not None:
                bound.setdefault(dim.value, size)
    values = inputs + [v for node in model.graph for v in node.outputs if v.shape is not None]
    declared = [v.shape for v in values]
    try:
        for v in inputs:
            v.shape = ir.Shape(sample[v.name].shape)
        for v in values[len(inputs) :]:  # declared shapes name the batch axis: onnx keeps a name it could size
            v.shape = ir.Shape([bound.get(d.value, d) if isinstance(d, ir.SymbolicDim) else d for d in v.shape])
        proto = _c_api_utils.call_onnx_api(lambda p: onnx.shape_inference.infer_shapes(p, data_prop=True), model)
    except Exception as e:  # onnx raises its own exception types
        logger.debug("shape inference for the run size failed: %s", e)
        return None
    finally:
        for v, shape in zip(values, declared):
            v.shape = shape
    sizes = {}
    for info in [*proto.graph.value_info, *proto.graph.output]:
        with contextlib.suppress(ValueError):  # an element type numpy does not know
            tensor = info.type.tensor_type
            if not tensor.HasField("shape") or not tensor.elem_type:
                continue
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
            if all(d >= 0 for d in dims):
                item = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).itemsize
                sizes[info.name] = math.prod(dims) * item
    return sizes
