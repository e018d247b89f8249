"""Reading and writing ONNX files: the only module that touches protobuf files.

Models are loaded into onnx_ir (weights in external data are memory-mapped, not copied) and written
atomically: everything goes to a temporary folder beside the destination and is renamed into place
only when complete, so a failure never leaves a half-written model, and the input is never overwritten.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from onnxbc.errors import OnnxbcError, UsageError, one_line

# Protobuf cannot serialize a message over 2 GiB; stay clear of it.
PROTO_LIMIT_BYTES = 1_800_000_000


def load(path: str | os.PathLike) -> ir.Model:
    """Load and check a model; raise a one-line error that says what is wrong with the file."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if not path.is_file():
        raise UsageError(f"{path}: not a file")
    try:
        proto = onnx.load(path, load_external_data=False)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise UsageError(f"{path}: not a readable ONNX model ({one_line(e)})") from e
    if not proto.graph.node and not proto.graph.output:
        raise UsageError(f"{path}: not an ONNX model (no graph found; is the file truncated or of another format?)")
    for location in sorted(_external_locations(proto)):
        if not (path.parent / location).is_file():
            raise UsageError(f"{path}: external data file '{location}' is missing next to the model")
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as e:
        raise OnnxbcError(f"{path}: fails onnx.checker: {one_line(e)}") from e
    model = ir.serde.deserialize_model(proto)
    ir.external_data.set_base_dir(model.graph, str(path.parent))
    return model


def external_data_files(path: str | os.PathLike) -> list[Path]:
    """External data files a model file refers to (resolved next to the model)."""
    path = Path(path)
    try:
        proto = onnx.load(path, load_external_data=False)
    except (DecodeError, OSError, RuntimeError, ValueError):
        return []  # not a readable model: load() says so when it is read
    return [path.parent / location for location in sorted(_external_locations(proto))]


def check_output_path(input_path: str | os.PathLike, output_path: str | os.PathLike, *, force: bool) -> Path:
    """Refuse an output that would overwrite the input (or its weights), or lands in a missing folder."""
    inp, out = Path(input_path).resolve(), Path(output_path).resolve()
    if out == inp or (out.exists() and inp.exists() and out.samefile(inp)):
        raise UsageError(f"{output_path}: the output path is the input model; choose another with -o")
    if not out.parent.is_dir():
        raise UsageError(f"{output_path}: folder {out.parent} does not exist")
    protected = {p.resolve() for p in external_data_files(inp)} if inp.is_file() else set()
    if out in protected or _data_path(out).resolve() in protected:
        raise UsageError(f"{output_path}: would overwrite the input's external data; choose another name")
    if not force:
        for p in (out, _data_path(out)):
            if p.exists():
                raise UsageError(f"{p}: already exists; pass --force to overwrite it")
    return out


def save(model: ir.Model, path: str | os.PathLike, *, external_data: bool | None = None) -> list[Path]:
    """Write ``model`` atomically; return the files written (the model, and its external data if any).

    ``external_data=None`` writes weights to ``<name>.data`` only when the model would not fit in one
    protobuf message (2 GiB).
    """
    out = Path(path)
    if external_data is None:
        external_data = initializer_bytes(model) > PROTO_LIMIT_BYTES
    data_name = _data_path(out).name
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        _set_ir_version(model)
        if external_data:
            ir.save(model, tmp / out.name, external_data=data_name)
            os.replace(tmp / data_name, out.parent / data_name)
        else:
            ir.save(model, tmp / out.name)
        os.replace(tmp / out.name, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [out, out.parent / data_name] if external_data else [out]


@contextlib.contextmanager
def ort_source(model: ir.Model) -> Iterator[bytes | str]:
    """The model as ONNX Runtime takes it: bytes, or a temporary file when it is too big or has external data.

    The temporary file lives in the system temp folder, never in the working directory.
    """
    _set_ir_version(model)
    if initializer_bytes(model) < PROTO_LIMIT_BYTES and not has_external_tensors(model):
        yield ir.serde.serialize_model(model).SerializeToString()
        return
    with tempfile.TemporaryDirectory(prefix="onnxbc-") as tmp:
        file = Path(tmp) / "model.onnx"
        ir.save(model, file, external_data="model.onnx.data")
        yield str(file)


def serialized_bytes(model: ir.Model) -> int:
    """What ``model`` takes written (external data included)."""
    with ort_source(model) as source:
        return len(source) if isinstance(source, bytes) else file_bytes(source)


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """A ModelProto of ``model`` (for onnx.checker and onnx.reference; small models only)."""
    _set_ir_version(model)
    return ir.serde.serialize_model(model)


def read_tensor_pb(path: str | os.PathLike) -> tuple[str, np.ndarray]:
    """A serialized TensorProto (ONNX test_data_set ``input_*.pb``) as (name, array)."""
    tensor = onnx.TensorProto()
    try:
        tensor.ParseFromString(Path(path).read_bytes())
        return tensor.name, onnx.numpy_helper.to_array(tensor)
    except (DecodeError, ValueError, TypeError) as e:
        raise UsageError(f"{path}: not a readable TensorProto ({one_line(e)})") from e


def file_bytes(path: str | os.PathLike) -> int:
    """Size on disk of a model file plus the external data files it refers to."""
    path = Path(path)
    return path.stat().st_size + sum(p.stat().st_size for p in external_data_files(path))


def initializer_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for g in model.graphs() for v in g.initializers.values() if v.const_value)


def _set_ir_version(model: ir.Model) -> None:
    # onnx >= 1.23 writes IR version 14 by default, which ONNX Runtime 1.31 cannot load: use the lowest
    # IR version the opsets need (never lower than what the model's own data types need).
    opsets = [onnx.helper.make_opsetid(d, v) for d, v in model.opset_imports.items()]
    needed = onnx.helper.find_min_ir_version_for(opsets, ignore_unknown=True)
    model.ir_version = max(needed, _min_ir_for_dtypes(model))


def _min_ir_for_dtypes(model: ir.Model) -> int:
    dtypes = {v.const_value.dtype for g in model.graphs() for v in g.initializers.values() if v.const_value}
    if dtypes & {ir.DataType.INT2, ir.DataType.UINT2}:
        return 13
    if dtypes & {ir.DataType.INT4, ir.DataType.UINT4}:
        return 10
    return 7


def _external_locations(proto: onnx.ModelProto) -> set[str]:
    return {
        onnx.external_data_helper.ExternalDataInfo(t).location
        for t in _all_tensors(proto.graph)
        if onnx.external_data_helper.uses_external_data(t)
    }


def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Initializers and tensor attributes of a graph and all its subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for g in attr.graphs:
                yield from _all_tensors(g)


def has_external_tensors(model: ir.Model) -> bool:
    return any(isinstance(v.const_value, ir.ExternalTensor) for g in model.graphs() for v in g.initializers.values())


def _data_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + ".data")
