"""Insert QuantizeLinear/DequantizeLinear nodes as a ``QuantPlan`` says.

Rewrite rules:

1. A quantized weight initializer ``W`` becomes integer codes ``W_quantized`` plus ``DequantizeLinear``
   whose output takes over the name ``W``, so every reader (layers, a Transpose on the way to a tied
   lm-head, an embedding Gather) now reads the dequantized tensor. The float initializer is removed.
   Zero points are omitted (symmetric: 0) except for the affine scheme. Scales have the float type of the
   weight. An emulated scheme (``--emulate``) writes float values read through an Identity instead.
2. A quantized activation ``x`` gets ``x -> QuantizeLinear -> DequantizeLinear`` right after its producer
   (or at the top of the graph for a graph input). Only the layer inputs listed in the plan read the
   dequantized tensor; other readers keep the float one (TensorRT: quantize op *inputs*). The tensor is
   found through those layer inputs, so a smoothed activation (``x / s``, see ``passes.smooth``) is the
   one quantized. With ``every_reader`` (ONNX Runtime placement) every reader of the tensor reads the
   dequantized one, so that its producer's output goes only to the QuantizeLinear.
3. A quantized layer output (``plan.outputs``, ONNX Runtime placement) gets ``QuantizeLinear ->
   DequantizeLinear`` right after its producer, and every reader reads the dequantized tensor (a graph output
   stays float): ONNX Runtime then fuses ``DQ -> layer -> Q`` into an integer kernel.

The pass decides nothing: it applies the plan. It requires every planned weight to be a constant initializer
and every listed layer to exist, and ensures every planned weight and every listed layer input is read
through its DequantizeLinear (an Identity for an emulated weight).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from onnxbc.passes.graph_utils import (
    Namer,
    const,
    constant_tensor,
    insert_after_producer,
    nodes_by_name,
    values_by_name,
)
from onnxbc.plan import ActivationQuant, QuantPlan, WeightQuant

logger = logging.getLogger(__name__)


def float_array(array: np.ndarray, dtype: ir.DataType) -> np.ndarray:
    return np.asarray(array, dtype=np.float32).astype(dtype.numpy())


def weight_dequantize(
    namer: Namer, wq: WeightQuant, dtype: ir.DataType, *, zero_point: bool = False
) -> tuple[list[ir.Value], ir.Node]:
    """Initializers (codes, scale[, zero point]) and the DequantizeLinear node that rebuilds weight
    ``wq.source``; for an emulated scheme, the float values and an Identity (which runtimes fold away).
    ``zero_point``: write the zero point of 8-bit symmetric codes (0) too (ONNX Runtime's QGemm fusion
    needs it)."""
    if wq.emulated is not None:
        values = const(namer, f"{wq.source}_{wq.scheme}", float_array(wq.emulated, dtype))
        node = ir.node("Identity", [values], name=namer(f"{wq.source}_Identity"))
        node.outputs[0].name = namer(f"{wq.source}_emulated")
        node.outputs[0].dtype = dtype
        node.outputs[0].shape = ir.Shape(wq.emulated.shape)
        return [values], node
    codes = const(namer, f"{wq.source}_quantized", wq.codes)
    inputs = [codes, const(namer, f"{wq.source}_scale", float_array(wq.scale, dtype))]
    if wq.zero_point is not None:
        inputs.append(const(namer, f"{wq.source}_zero_point", wq.zero_point))
    elif zero_point and wq.codes.dtype in (np.int8, np.uint8):
        zeros = np.zeros(np.shape(wq.scale), wq.codes.dtype)
        inputs.append(const(namer, f"{wq.source}_zero_point", zeros))
    attrs: dict[str, int] = {}
    if wq.granularity.axis is not None:
        attrs["axis"] = wq.granularity.axis
    if wq.granularity.block_size:
        attrs["block_size"] = wq.granularity.block_size
    node = ir.node(
        "DequantizeLinear",
        inputs,
        attributes=attrs,
        name=namer(f"{wq.source}_DequantizeLinear"),
    )
    node.outputs[0].name = namer(f"{wq.source}_dequantized")
    node.outputs[0].dtype = dtype
    node.outputs[0].shape = ir.Shape(wq.codes.shape)
    return inputs, node


def activation_qdq(
    namer: Namer, x: ir.Value, aq: ActivationQuant, dtype: ir.DataType
) -> tuple[list[ir.Value], list[ir.Node], ir.Value]:
    """Initializers, the Q and DQ nodes for ``x``, and the dequantized output value."""
    scale = const(namer, f"{x.name}_scale", float_array(np.array(aq.scale), dtype))
    zero = const(namer, f"{x.name}_zero_point", np.array(aq.zero_point, dtype=aq.dtype))
    q = ir.node("QuantizeLinear", [x, scale, zero], name=namer(f"{x.name}_QuantizeLinear"))
    q.outputs[0].name = namer(f"{x.name}_quantized")
    q.outputs[0].dtype = ir.DataType.from_numpy(aq.dtype)
    q.outputs[0].shape = x.shape
    dq = ir.node("DequantizeLinear", [q.outputs[0], scale, zero], name=namer(f"{x.name}_DequantizeLinear"))
    dq.outputs[0].name = namer(f"{x.name}_dequantized")
    dq.outputs[0].dtype = dtype
    dq.outputs[0].shape = x.shape
    return [scale, zero], [q, dq], dq.outputs[0]


class InsertQDQPass(ir.passes.InPlacePass):
    """Apply the weight and activation quantization of a plan (rules in the module docstring).

    Attributes:
        plan: the quantization plan to apply.
    """

    def __init__(self, plan: QuantPlan) -> None:
        super().__init__()
        self.plan = plan

    def requires(self, model: ir.Model) -> None:
        values, nodes = values_by_name(model), nodes_by_name(model)
        for name in self.plan.weights:
            if name not in values or not values[name].is_initializer() or constant_tensor(values[name]) is None:
                raise ir.passes.PreconditionError(
                    f"planned weight '{name}' is not a constant initializer of the model "
                    "(already quantized, or the plan was computed on another model)"
                )
        for name in self.plan.activations:
            uses = self.plan.activation_uses.get(name, [])
            missing = [n for n, _ in uses if n not in nodes]
            if not uses or missing:
                raise ir.passes.PreconditionError(
                    f"activation '{name}' is planned to be quantized for the layers {[n for n, _ in uses]}, "
                    f"but {'no layer is listed' if not uses else f'{missing} are not in the model'}"
                )
            # The layers' inputs now, which an earlier pass (smoothing) may have rewired.
            if len({nodes[n].inputs[i] for n, i in uses}) != 1:
                raise ir.passes.PreconditionError(f"the layers planned to read '{name}' no longer read one tensor")
        for name in self.plan.outputs:
            value = values.get(name)
            if value is None or value.producer() is None or value.graph is not model.graph:
                raise ir.passes.PreconditionError(f"planned layer output '{name}' is not computed in the main graph")
            uses = self.plan.activation_uses.get(name)
            if name in self.plan.activations and nodes[uses[0][0]].inputs[uses[0][1]] is value:
                raise ir.passes.PreconditionError(f"'{name}' is planned as a layer output and a layer input")

    def ensures(self, model: ir.Model) -> None:
        values, nodes = values_by_name(model), nodes_by_name(model)
        for name, wq in self.plan.weights.items():
            expected = "Identity" if wq.emulated is not None else "DequantizeLinear"
            if _producer_op(values.get(name)) != expected:
                raise ir.passes.PostconditionError(f"weight '{name}' is not read through a {expected}")
        for name in self.plan.activations:
            for node, index in self.plan.activation_uses[name]:
                if _producer_op(nodes[node].inputs[index]) != "DequantizeLinear":
                    raise ir.passes.PostconditionError(
                        f"input {index} of '{node}' does not read activation '{name}' through a DequantizeLinear"
                    )
        for name in self.plan.outputs:
            for use in values[name].uses():
                if use.node.op_type != "QuantizeLinear":
                    raise ir.passes.PostconditionError(f"'{use.node.name}' reads layer output '{name}' unquantized")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        namer = Namer(model)
        values = values_by_name(model)
        count = 0
        for wq in self.plan.weights.values():
            self._quantize_weight(values[wq.source], wq, namer)
            count += 1
        nodes = nodes_by_name(model)
        for name, aq in self.plan.activations.items():
            uses = self.plan.activation_uses[name]
            node, index = uses[0]  # all of them read one tensor (see requires)
            readers = None if name in self.plan.every_reader else [(nodes[n], i) for n, i in uses]
            self._quantize_activation(model.graph, nodes[node].inputs[index], aq, readers, namer)
            count += 1
        for name, aq in self.plan.outputs.items():
            self._quantize_activation(model.graph, values[name], aq, None, namer)
            count += 1
        logger.debug("inserted %d quantizers", count)
        return ir.passes.PassResult(model, modified=count > 0)

    def _quantize_weight(self, source: ir.Value, wq: WeightQuant, namer: Namer) -> None:
        graph = source.graph
        zero_point = self.plan.weight_zero_points
        initializers, dq = weight_dequantize(namer, wq, source.const_value.dtype, zero_point=zero_point)
        for init in initializers:
            graph.register_initializer(init)
        insert_after_producer(source, [dq])  # at the start of the graph
        graph.initializers.pop(source.name)
        original = source.name
        source.name = namer(f"{original}_float")
        source.replace_all_uses_with(dq.outputs[0])
        namer.used.discard(dq.outputs[0].name)
        dq.outputs[0].name = original
        logger.debug("quantized weight %s to %d bits", original, wq.bits)

    def _quantize_activation(
        self,
        graph: ir.Graph,
        x: ir.Value,
        aq: ActivationQuant,
        readers: list[tuple[ir.Node, int]] | None,
        namer: Namer,
    ) -> None:
        """Q/DQ after ``x``'s producer, read by ``readers`` (None: every reader of ``x``)."""
        dtype = ir.DataType.from_numpy(aq.float_dtype)
        initializers, new_nodes, out = activation_qdq(namer, x, aq, dtype)
        for init in initializers:
            graph.register_initializer(init)
        if readers is None:
            readers = [(use.node, use.idx) for use in x.uses() if use.node is not new_nodes[0]]
        insert_after_producer(x, new_nodes)
        for node, index in readers:
            node.replace_input_with(index, out)
        logger.debug("quantized activation %s (scale %g)", x.name, aq.scale)


def _producer_op(value: ir.Value | None) -> str | None:
    producer = value.producer() if value is not None else None
    return producer.op_type if producer is not None else None
