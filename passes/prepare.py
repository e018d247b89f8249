"""Passes that bring a float model found in the wild into the form the other passes expect.

1. Inline model-local functions, so that layers inside them can be found.
2. Lift ``Constant`` nodes holding tensors to initializers (Paddle and some exporters keep every weight
   and bias in a Constant node), in the main graph and in subgraphs.
3. Give every node and value a unique, non-empty name (the report and the plan refer to them by name).
4. Raise the ai.onnx opset when the quantization needs a newer one (per-axis scales need 13; int4 and
   ``block_size`` need 21), through onnxscript's version converter (onnx's C converter as a fallback).
5. Infer shapes and types where onnx can (failure leaves the model unchanged: custom ops are common).
6. Fold BatchNormalization, and constant per-channel Mul/Add, into the Conv/ConvTranspose/Gemm/MatMul before
   them (``passes.fold_bn``), for every target: a float BatchNormalization after a layer keeps ONNX Runtime
   from fusing it into an integer kernel. After 2 (constants lifted), 3 (names for the report) and 5 (MatMul
   output ranks).

Already-quantized models are refused before any of this (``quantized_nodes``). ``prepare`` runs the sequence
and keeps what step 6 folded and left, with the BatchNormalization statistics DF-MPC reads.
"""

from __future__ import annotations

import dataclasses
import logging

import onnx_ir as ir
import onnx_ir.passes.common as common

from onnxbc.errors import OnnxbcError, one_line
from onnxbc.passes.fold_bn import FoldBatchNormPass, FoldResult

logger = logging.getLogger(__name__)

QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "ConvInteger",
        "MatMulInteger",
        "MatMulNBits",
        "MatMulBnb4",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "DynamicQuantizeLSTM",
        "GatherBlockQuantized",
        "QGemm",
        "QAttention",
        "QOrderedMatMul",
    }
)


def quantized_nodes(model: ir.Model) -> list[ir.Node]:
    """Nodes that show the model is already quantized (QDQ, QLinear*, *Integer, MatMulNBits, ...)."""
    found = []
    for graph_like in [model.graph, *model.functions.values()]:
        for node in ir.traversal.RecursiveGraphIterator(graph_like):
            if node.op_type in QUANTIZED_OPS or node.op_type.startswith("QLinear"):
                found.append(node)
    return found


class _OpTypeNames:
    """Unnamed nodes are named after their op type (NameFixPass adds a suffix when needed)."""

    def generate_node_name(self, node: ir.Node) -> str:
        return node.name or node.op_type

    def generate_value_name(self, value: ir.Value) -> str:
        return value.name or "v"


class RaiseOpsetPass(ir.passes.InPlacePass):
    """Raise the default-domain opset to at least ``min_opset``.

    Attributes:
        min_opset: the lowest ai.onnx opset the model must have afterwards.
    """

    def __init__(self, min_opset: int) -> None:
        super().__init__()
        self.min_opset = min_opset

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        current = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        if current >= self.min_opset:
            return ir.passes.PassResult(model, modified=False)
        # imported here: onnxscript takes 0.26 s to import, and most models need no conversion
        from onnxscript.version_converter import ConvertVersionPass

        try:
            model = ConvertVersionPass(self.min_opset, fallback=True)(model).model
        except Exception as e:  # the converters raise many exception types
            raise OnnxbcError(
                f"cannot convert the model from opset {current} to {self.min_opset}, which the chosen "
                f"quantization needs ({one_line(e, 200)}); re-export it at opset >= {self.min_opset}"
            ) from e
        reached = model.opset_imports.get("", current)
        if reached < self.min_opset:
            raise OnnxbcError(
                f"cannot convert the model from opset {current} to {self.min_opset}, which the chosen "
                f"quantization needs (the ONNX version converter gave up); re-export it at opset >= {self.min_opset}"
            )
        logger.info("raised the opset from %d to %d", current, reached)
        return ir.passes.PassResult(model, modified=True)


def prepare_passes(min_opset: int) -> ir.passes.PassManager:
    """The prepare sequence, in order (see the module docstring)."""
    return ir.passes.PassManager(
        [
            common.InlinePass(),
            common.RemoveUnusedFunctionsPass(),
            common.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=1),
            RaiseOpsetPass(min_opset),
            common.NameFixPass(_OpTypeNames()),
            common.ShapeInferencePass(strict_mode=False),
            FoldBatchNormPass(),
        ]
    )


@dataclasses.dataclass(frozen=True)
class Prepared:
    model: ir.Model
    folds: FoldResult  # what step 6 folded (``sites``), left (``skipped``) and the statistics it kept


def prepare(model: ir.Model, min_opset: int) -> Prepared:
    """Run ``prepare_passes`` one by one, keeping the fold pass's result (a ``PassManager`` returns a plain
    ``PassResult``, and wraps a pass's ``OnnxbcError`` in its own error)."""
    folds = None
    for pass_ in prepare_passes(min_opset).passes:
        result = pass_(model)
        model = result.model
        if isinstance(result, FoldResult):
            folds = result
    return Prepared(model, folds)
