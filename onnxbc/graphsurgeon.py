"""The onnx-graphsurgeon adapter: a ``gs.Graph`` in, a ``gs.Graph`` out, through a ModelProto.

TensorRT pipelines often hold their model as an onnx-graphsurgeon graph. onnxbc works on onnx_ir; this module
is the only one that imports onnx_graphsurgeon, and only when a graph is handed in (``gs.export_onnx`` and
``gs.import_onnx``; the opsets of the graph are kept). Graphs over 2 GiB cannot pass through one ModelProto:
use a file or an onnx_ir model for those.
"""

from __future__ import annotations

from typing import Any


def is_graph(model: object) -> bool:
    """A ``gs.Graph`` (told by its type's module, so onnx_graphsurgeon is imported only for graphs)."""
    return type(model).__module__.startswith("onnx_graphsurgeon") and type(model).__name__ == "Graph"


def to_proto(graph: Any) -> Any:
    import onnx_graphsurgeon as gs

    return gs.export_onnx(graph)


def from_proto(proto: Any) -> Any:
    import onnx_graphsurgeon as gs

    return gs.import_onnx(proto)
