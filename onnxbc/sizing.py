"""The written file's size for a choice of quantized weights, with the model serialized once.

    size(weights) = size(base) + sum over weights w of [entry(weights[w]) - entry(base[w])]

``base`` is the first choice asked about (under ``--max-size``: the smallest); its model is rewritten and
serialized once. An *entry* is what the rewrite writes for one weight (its codes, scale and zero point
initializers and its DequantizeLinear node, ``passes.qdq.weight_dequantize``), measured alone. Everything
else in the file is the same for every choice and cancels. Not counted: a length prefix of the graph that
grows by a byte when the graph crosses a power of 128 (2 MiB, 256 MiB), which the written-size check catches.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx_ir as ir

from onnxbc import model_io
from onnxbc.passes.graph_utils import Namer
from onnxbc.passes.qdq import weight_dequantize
from onnxbc.plan import QuantPlan, WeightQuant


class FileSize:
    """``size(weights)``: bytes of the written model with ``weights`` quantized (and nothing else).

    Attributes:
        model: the prepared float model.
        quantize: rewrites a copy of the model as a plan says (``candidates.quantize``).
    """

    def __init__(self, model: ir.Model, quantize: Callable[[ir.Model, QuantPlan], ir.Model]) -> None:
        self.model = model
        self.quantize = quantize
        self._base: tuple[dict[str, WeightQuant], int] | None = None
        self._entries: dict[int, tuple[WeightQuant, int]] = {}  # by id: the quant kept alive with its size
        self._dtypes = {v.name: v.dtype for g in model.graphs() for v in g.initializers.values()}

    def __call__(self, weights: dict[str, WeightQuant]) -> int:
        if self._base is None:
            plan = QuantPlan(weights=dict(weights))
            self._base = dict(weights), model_io.serialized_bytes(self.quantize(self.model.clone(), plan))
        base, size = self._base
        if weights.keys() != base.keys():
            raise ValueError("FileSize prices choices of the same weights as its first one")
        return size + sum(
            self._entry(wq) - self._entry(base[name]) for name, wq in weights.items() if wq is not base[name]
        )

    def _entry(self, wq: WeightQuant) -> int:
        """Serialized bytes of one weight's initializers and dequantizing node."""
        if id(wq) not in self._entries:
            graph = ir.Graph([], [], nodes=[], name="entry")
            values, node = weight_dequantize(Namer(ir.Model(graph, ir_version=10)), wq, self._dtypes[wq.source])
            graph.append(node)
            for value in values:
                graph.register_initializer(value)
            self._entries[id(wq)] = wq, ir.serde.serialize_graph(graph).ByteSize()
        return self._entries[id(wq)][1]
