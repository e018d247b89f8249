"""Facts about an ONNX file that the tables report: size on disk, QDQ content, blocks, dynamic input dims."""

from __future__ import annotations

from collections import Counter
from pathlib import Path


def _load(path: Path):
    import onnx

    return onnx.load(str(path), load_external_data=False)


def file_bytes(path: Path) -> int:
    """The model file plus every external data file its initializers point to."""
    from onnx.external_data_helper import uses_external_data

    path = Path(path)
    model = _load(path)
    locations = set()
    for init in model.graph.initializer:
        if uses_external_data(init):
            locations |= {e.value for e in init.external_data if e.key == "location"}
    return path.stat().st_size + sum((path.parent / loc).stat().st_size for loc in locations)


def op_counts(path: Path) -> Counter[str]:
    return Counter(node.op_type for node in _load(path).graph.node)


def has_qdq(path: Path) -> bool:
    """Whether ONNX Runtime's QDQ fusions could change what the graph computes (any Q or DQ node)."""
    ops = op_counts(path)
    return ops["QuantizeLinear"] + ops["DequantizeLinear"] > 0


def dynamic_input_dims(path: Path) -> list[str]:
    """Input dims other than the batch (axis 0) that are not fixed numbers, as 'input[axis]'."""
    model = _load(path)
    inits = {i.name for i in model.graph.initializer}
    dynamic = []
    for value in model.graph.input:
        if value.name in inits:
            continue
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if axis > 0 and not dim.HasField("dim_value"):
                dynamic.append(f"{value.name}[{axis}]")
    return dynamic


def partial_blocks(path: Path) -> tuple[int, int]:
    """(blocked weights whose blocked dim is not a multiple of the block size, blocked weights in all)."""
    model = _load(path)
    inits = {i.name: i for i in model.graph.initializer}
    partial = total = 0
    for node in model.graph.node:
        attrs = {a.name: a.i for a in node.attribute}
        if node.op_type != "DequantizeLinear" or not attrs.get("block_size") or node.input[0] not in inits:
            continue
        dims = list(inits[node.input[0]].dims)
        axis = attrs.get("axis", 1) % len(dims)
        total += 1
        partial += dims[axis] % attrs["block_size"] != 0
    return partial, total
