"""Reading and writing ONNX files: the only module that touches protobuf files.

Models are loaded into onnx_ir (weights in external data are memory-mapped, not copied), from any path (onnx
itself takes only UTF-8 paths, so files are read through file objects). A run's outputs are checked before any
work (``prepare_outputs``) and written as one transaction (``write_outputs``): the model, its external data and
the report go to temporaries beside their destinations and are renamed into place only when all are complete,
so a failure or Ctrl-C leaves nothing new, and the input is never overwritten. Temporaries are named
``.NAME.PID.RANDOM.tmp``: those of a killed run (its pid gone) are removed by the next run writing NAME.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from onnxbc.errors import OnnxbcError, UsageError, display_path, one_line

# Protobuf cannot serialize a message over 2 GiB; stay clear of it.
PROTO_LIMIT_BYTES = 1_800_000_000
# ``spill``: where the weights held in memory go, and the smallest moved there (the rest are copied). Over
# ``validate.CHECKER_LEAVES_OUT``, so that the check before saving leaves them out, as it does weights in memory.
SPILL_FILE = "weights.bin"
SPILL_FROM_BYTES = 4096


def load(path: str | os.PathLike, *, check: bool = True) -> ir.Model:
    """Load a model (and run onnx.checker on it unless ``check=False``); raise a one-line error that says what is
    wrong with the file. Any path works, also one that is not UTF-8 (onnx takes paths as UTF-8 text only)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{display_path(path)}: no such file")
    if not path.is_file():
        raise UsageError(f"{display_path(path)}: not a file")
    proto = _read_proto(path)
    if not proto.graph.node and not proto.graph.output:
        raise UsageError(
            f"{display_path(path)}: not an ONNX model (no graph found; is the file truncated or of another format?)"
        )
    for location in sorted(_external_locations(proto)):
        if not (path.parent / location).is_file():
            raise UsageError(f"{display_path(path)}: external data file '{location}' is missing next to the model")
    if check:
        try:
            check_model_file(path)
        except onnx.checker.ValidationError as e:
            raise OnnxbcError(f"{display_path(path)}: fails onnx.checker: {one_line(e)}") from e
    model = ir.serde.deserialize_model(proto)
    ir.external_data.set_base_dir(model.graph, str(path.parent))
    return model


def is_proto(model: object) -> bool:
    return isinstance(model, onnx.ModelProto)


def from_proto(proto: onnx.ModelProto, *, check: bool = True) -> ir.Model:
    """An onnx_ir model of a ModelProto held in memory (the proto is not changed), checked like a file."""
    if not proto.graph.node and not proto.graph.output:
        raise UsageError("the ModelProto has no graph")
    if check and proto.ByteSize() < PROTO_LIMIT_BYTES:
        try:
            onnx.checker.check_model(proto)
        except onnx.checker.ValidationError as e:
            raise OnnxbcError(f"the ModelProto fails onnx.checker: {one_line(e)}") from e
    return _unaliased(ir.serde.deserialize_model(proto))


def _unaliased(model: ir.Model) -> ir.Model:
    """``model`` with each tensor read from a message (initializers, tensor attributes) behind a tensor of its own
    that reads it on demand: onnx_ir writes a weight's new name into the tensor (the QDQ pass renames the float
    weights it quantizes), which for one read from a message is the caller's ModelProto (a compress that failed
    left it with its initializers renamed). The data is not copied."""
    for graph in model.graphs():
        for value in graph.initializers.values():
            if isinstance(value.const_value, ir.TensorProtoTensor):
                value.const_value = _on_demand(value.const_value)
        for node in graph:
            for attr in list(node.attributes.values()):
                if attr.type is ir.AttributeType.TENSOR and isinstance(attr.value, ir.TensorProtoTensor):
                    node.attributes[attr.name] = ir.AttrTensor(attr.name, _on_demand(attr.value))
    return model


def _on_demand(tensor: ir.TensorProtoTensor) -> ir.LazyTensor:
    return ir.LazyTensor(
        lambda: tensor, dtype=tensor.dtype, shape=tensor.shape, name=tensor.name, doc_string=tensor.doc_string
    )


def check_model_file(path: str | os.PathLike, *, full_check: bool = False) -> None:
    """onnx.checker on a model file, its external data included, also under a path that is not UTF-8.

    Raises what onnx.checker raises (ValidationError, InferenceError).
    """
    path = Path(path)
    if _is_utf8(str(path)):
        onnx.checker.check_model(str(path), full_check=full_check)
    elif not external_data_files(path):  # under 2 GiB then: check the bytes
        onnx.checker.check_model(path.read_bytes(), full_check=full_check)
    elif _is_utf8(path.name):  # reach the folder through a symlink with a UTF-8 name
        with tempfile.TemporaryDirectory(prefix="onnxbc-") as tmp:
            os.symlink(path.parent, Path(tmp, "folder"))
            onnx.checker.check_model(f"{tmp}/folder/{path.name}", full_check=full_check)
    else:
        raise UsageError(
            f"{display_path(path)}: onnx.checker cannot open a model with external data whose file name is not "
            "UTF-8; rename the model file"
        )


def external_data_files(path: str | os.PathLike) -> list[Path]:
    """External data files a model file refers to (resolved next to the model)."""
    path = Path(path)
    try:
        proto = _read_proto(path)
    except UsageError:
        return []  # not a readable model: load() says so when it is read
    return [path.parent / location for location in sorted(_external_locations(proto))]


@dataclasses.dataclass(frozen=True)
class OutputPaths:
    """Where a run writes (both resolved); the model's external data, if any, goes to ``model`` + ``.data``."""

    model: Path
    report: Path


def prepare_outputs(
    input_path: str | os.PathLike | None, output: str | os.PathLike, report: str | os.PathLike, *, force: bool
) -> OutputPaths:
    """Every check on the output paths, run before any work: none may be the input or its external data
    (``input_path`` None: a model held in memory), nor each other; their folders must exist and be writable;
    existing files need ``force``. Also removes the temporaries that killed runs left for these outputs."""
    inp = Path(input_path).resolve() if input_path is not None else None
    input_data = _input_data(inp) if inp is not None else set()
    paths = OutputPaths(_check_model_output(inp, input_data, output, force), Path(report).resolve())
    taken = {
        paths.model: "the output model",
        _data_path(paths.model): "the output's external data",
        **({_data_path(inp): "the input's external data", inp: "the input model"} if inp is not None else {}),
        **dict.fromkeys(input_data, "the input's external data"),
    }
    if paths.report in taken or (inp is not None and _same_file(paths.report, inp)):
        raise UsageError(
            f"{display_path(report)}: the report path is {taken.get(paths.report, 'the input model')}; "
            "choose another with --report"
        )
    prepare_report(report, force=force)
    _remove_stale_temporaries(paths.model)  # the external data is written in the model's temporary folder
    return paths


def prepare_report(report: str | os.PathLike, *, force: bool) -> Path:
    """The checks for a report written alone (its folder takes files; an existing one needs ``force``)."""
    path = Path(report).resolve()
    _check_folder(path, report)
    _check_existing(path, force)
    _remove_stale_temporaries(path)
    return path


def _check_model_output(inp: Path | None, input_data: set[Path], given: str | os.PathLike, force: bool) -> Path:
    out = Path(given).resolve()
    if inp is not None and (out == inp or _same_file(out, inp)):
        raise UsageError(f"{display_path(given)}: the output path is the input model; choose another with -o")
    if inp is not None and {out, _data_path(out)} & {inp, _data_path(inp), *input_data}:
        raise UsageError(f"{display_path(given)}: would overwrite the input's external data; choose another with -o")
    if input_data and not _is_utf8(out.name):  # the output gets external data too
        raise UsageError(f"{display_path(given)}: external data needs a UTF-8 file name; choose another with -o")
    _check_folder(out, given)
    for p in (out, _data_path(out)):
        _check_existing(p, force)
    return out


def write_outputs(
    model: ir.Model,
    paths: OutputPaths,
    report: Callable[[list[Path], int], str],
    *,
    external_data: bool | None = None,
) -> list[Path]:
    """Write the model (and its external data) and its report as one transaction; return the model's files.

    The model goes to temporaries beside its destination; then ``report(files, total_bytes)`` gives the report's
    JSON text (it may raise, e.g. for a size budget); the report goes to a temporary too; only then are all
    renamed into place. On any error or interrupt every temporary is removed, so nothing new is left, and
    every OSError becomes a one-line OnnxbcError naming the path. ``external_data=None`` writes weights to
    ``<name>.data`` only when the model would not fit in one protobuf message (2 GiB).
    """
    return _write(model, paths.model, (paths.report, report), external_data)


def save(model: ir.Model, path: str | os.PathLike, *, external_data: bool | None = None) -> list[Path]:
    """Write ``model`` alone, atomically as ``write_outputs`` does; return the files written."""
    return _write(model, Path(path), None, external_data)


def _write(
    model: ir.Model,
    out: Path,
    report: tuple[Path, Callable[[list[Path], int], str]] | None,
    external_data: bool | None,
) -> list[Path]:
    if external_data is None:
        external_data = initializer_bytes(model) > PROTO_LIMIT_BYTES
    if not external_data:
        ir.external_data.load_to_model(model)  # weights read on demand (``spill``) go into the file
    names = [out.name, _data_path(out).name] if external_data else [out.name]
    if external_data and not _is_utf8(names[1]):
        raise UsageError(f"{display_path(out)}: external data needs a UTF-8 file name; choose another with -o")
    with _temporaries() as temporary:
        with _os_errors(out):
            folder = temporary(out, folder=True)
            _set_ir_version(model)
            ir.save(model, folder / out.name, external_data=names[1] if external_data else None)
            total = sum((folder / name).stat().st_size for name in names)
        files = [out.parent / name for name in names]
        moves = [(folder / name, out.parent / name) for name in reversed(names)]  # the model last
        if report is not None:
            report_path, render = report
            text = render(files, total)
            with _os_errors(report_path):
                tmp = temporary(report_path)
                tmp.write_text(text, encoding="utf-8")
            moves.append((tmp, report_path))
        for src, dest in moves:
            with _os_errors(dest):
                os.replace(src, dest)
    return files


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically (a temporary beside it, renamed into place), with the mode of any new file."""
    path = Path(path)
    with _temporaries() as temporary, _os_errors(path):
        tmp = temporary(path)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)


@contextlib.contextmanager
def ort_source(model: ir.Model, *, file_from: int = PROTO_LIMIT_BYTES) -> Iterator[bytes | str]:
    """The model as ONNX Runtime takes it: bytes, or a temporary file with external data when its weights take
    ``file_from`` bytes or more (at most a protobuf's limit) or it has external data.

    The temporary file lives in the system temp folder, never in the working directory.
    """
    _set_ir_version(model)
    if initializer_bytes(model) < min(file_from, PROTO_LIMIT_BYTES) and not has_external_tensors(model):
        yield ir.serde.serialize_model(model).SerializeToString()
        return
    with tempfile.TemporaryDirectory(prefix="onnxbc-") as tmp:
        file = Path(tmp) / "model.onnx"
        ir.save(model, file, external_data="model.onnx.data")
        release(model)  # writing read every weight
        yield str(file)


# ``weights_apart``: where a weight handed to ONNX Runtime apart from the graph says it is (no file is read)
APART = "onnxbc-in-memory"
# the element types ONNX Runtime takes from a numpy array (not int4, bfloat16, float8, string)
APART_TYPES = frozenset(
    ir.DataType[t]
    for t in ("FLOAT", "DOUBLE", "FLOAT16", "INT8", "UINT8", "INT16", "UINT16", "INT32", "UINT32", "INT64", "UINT64")
)


def weights_apart(model: ir.Model, *, least: int = SPILL_FROM_BYTES) -> tuple[bytes, dict[str, np.ndarray]]:
    """The model as ONNX Runtime takes it with no copy of its weights made here: the graph serialized with each
    main-graph weight a node reads of ``least`` bytes or more (of a type numpy holds) as a reference to external
    data, and those weights' arrays, which ``SessionOptions.add_external_initializers`` copies into the session
    before it optimizes the graph (its outputs are the same as from the serialized whole). The model is left as
    it was. Measured on MiniLM's 90 MB: 0.01 s where writing it with external data took 0.19-0.37 s and
    serializing it whole 0.23 s; the session is made from it in 0.11 s instead of 0.06 s from the file, and
    holds one copy more of the weights while it is made (SmolLM2's 542 MB: 1635 MB peak against 1264 MB)."""
    apart = {
        name: value
        for name, value in model.graph.initializers.items()
        if value.const_value is not None
        and value.const_value.dtype in APART_TYPES
        and value.const_value.nbytes >= least
        and value.uses()  # ONNX Runtime drops an unused weight before it takes these (then fails to find it)
        and not value.is_graph_output()
    }
    tensors = {name: value.const_value for name, value in apart.items()}
    _set_ir_version(model)
    try:
        for name, value in apart.items():
            t = tensors[name]
            value.const_value = ir.ExternalTensor(APART, 0, t.nbytes, t.dtype, shape=t.shape, name=name)
        graph = ir.serde.serialize_model(model).SerializeToString()
    finally:
        for name, value in apart.items():
            value.const_value = tensors[name]
    return graph, {name: np.ascontiguousarray(t.numpy()) for name, t in tensors.items()}


def release(model: ir.Model) -> None:
    """Unmap the weights of ``model`` read from external data so far: onnx_ir keeps a tensor's file mapped once it
    is read, and the mapped pages count as this process's memory (a 3 GB model read once for a session is 3 GB
    more). They are mapped again when next read; one whose array is still in use stays mapped."""
    for graph in model.graphs():
        for value in graph.initializers.values():
            release_value(value)


def release_value(value: ir.Value) -> None:
    """``release`` for one initializer."""
    if isinstance(value.const_value, ir.ExternalTensor):
        try:
            value.const_value.release()
        except BufferError:  # an array of it is still alive
            pass


def spill(model: ir.Model, folder: Path, *, least: int = SPILL_FROM_BYTES) -> int:
    """Move the weights ``model`` holds in memory (``least`` bytes or more each) into one file in ``folder``, where
    they are read on demand like external data (mapped, and let go by ``release``); returns the bytes moved. The
    rest of a model read from a protobuf file (its small initializers and attribute tensors) is copied out of the
    parsed message, which stays whole in memory while any tensor of it is alive (measured on a 542 MB file: 662
    MB resident after loading, 661 MB with its large weights moved, 141 MB with nothing left in the message)."""
    moved = 0
    with open(folder / SPILL_FILE, "wb") as f:
        for graph in model.graphs():
            for value in graph.initializers.values():
                tensor = value.const_value
                if tensor is None or isinstance(tensor, ir.ExternalTensor):
                    continue
                if tensor.nbytes < least:
                    value.const_value = _detached(tensor)
                    continue
                data = tensor.tobytes()
                value.const_value = ir.ExternalTensor(
                    SPILL_FILE, moved, len(data), tensor.dtype, shape=tensor.shape, name=tensor.name, base_dir=folder
                )
                f.write(data)
                moved += len(data)
            for node in graph:
                for attr in list(node.attributes.values()):
                    if attr.type is ir.AttributeType.TENSOR:
                        node.attributes[attr.name] = ir.AttrTensor(attr.name, _detached(attr.value))
                    elif attr.type is ir.AttributeType.TENSORS:
                        node.attributes[attr.name] = ir.AttrTensors(attr.name, [_detached(t) for t in attr.value])
    return moved


def _detached(tensor: ir.TensorProtocol) -> ir.TensorProtocol:
    """``tensor`` in memory of its own (a copy when it is part of a parsed protobuf message)."""
    if not isinstance(tensor, ir.TensorProtoTensor):
        return tensor
    if tensor.dtype is ir.DataType.STRING:
        return ir.StringTensor(tensor.string_data(), shape=tensor.shape, name=tensor.name, doc_string=tensor.doc_string)
    return ir.Tensor(tensor.numpy().copy(), dtype=tensor.dtype, name=tensor.name, doc_string=tensor.doc_string)


def to_bytes(model: ir.Model) -> bytes:
    """The model as one serialized ModelProto, its external data read into it (in place): a calibration graph sent
    to a Ray worker. Over protobuf's limit, an error (``to_proto``)."""
    return to_proto(ir.external_data.load_to_model(model)).SerializeToString()


def from_bytes(data: bytes) -> ir.Model:
    """The model of ``to_bytes``' bytes, unchecked."""
    return ir.serde.deserialize_model(onnx.ModelProto.FromString(data))


def serialized_bytes(model: ir.Model) -> int:
    """What ``model`` takes written (external data included)."""
    with ort_source(model) as source:
        return len(source) if isinstance(source, bytes) else file_bytes(source)


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """A ModelProto of ``model``; one over 2 GiB is an error (protobuf's limit; keep it as an onnx_ir model, or
    write it to a file with external data)."""
    if initializer_bytes(model) > PROTO_LIMIT_BYTES and not has_external_tensors(model):
        raise OnnxbcError(
            f"the model holds {initializer_bytes(model) / 2**30:.1f} GiB of weights: too big for one ModelProto; "
            "pass an output path (external data is written beside it) or an onnx_ir model"
        )
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


def held_bytes(model: ir.Model) -> int:
    """The bytes of the initializers ``model`` holds in memory (not those read on demand from external data)."""
    return initializer_bytes(model) - sum(t.nbytes for t in external_tensors(model))


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
    return any(True for _ in external_tensors(model))


def external_tensors(model: ir.Model) -> Iterator[ir.ExternalTensor]:
    """The initializers of every graph of ``model`` read from external data (on demand)."""
    for graph in model.graphs():
        for value in graph.initializers.values():
            if isinstance(value.const_value, ir.ExternalTensor):
                yield value.const_value


def _data_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + ".data")


def _read_proto(path: Path) -> onnx.ModelProto:
    """The model without its external data, read through a file object (onnx takes paths as UTF-8 text only)."""
    try:
        with open(path, "rb") as f:
            return onnx.load(f, load_external_data=False)
    except OSError as e:
        raise UsageError(f"{display_path(path)}: cannot read the file ({_reason(e)})") from e
    except (DecodeError, RuntimeError, ValueError) as e:
        raise UsageError(f"{display_path(path)}: not a readable ONNX model ({one_line(e)})") from e


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a path holding bytes that are not UTF-8 (decoded as surrogates)
        return False
    return True


def _input_data(inp: Path) -> set[Path]:
    """The external data files the input model names (resolved)."""
    return {p.resolve() for p in external_data_files(inp)}


def _same_file(a: Path, b: Path) -> bool:
    """True for two names of one file (hard links)."""
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _check_folder(dest: Path, given: str | os.PathLike) -> None:
    """``dest``'s folder exists and takes new files (tried: read-only file systems and /proc do not)."""
    folder = dest.parent
    if not folder.exists():
        raise UsageError(f"{display_path(given)}: folder {display_path(folder)} does not exist")
    if not folder.is_dir():
        raise UsageError(f"{display_path(given)}: {display_path(folder)} is not a folder")
    try:
        with _temporaries() as temporary:
            temporary(dest)
    except OSError as e:
        raise UsageError(f"{display_path(given)}: cannot write in {display_path(folder)} ({_reason(e)})") from e


def _check_existing(dest: Path, force: bool) -> None:
    if dest.is_dir():
        raise UsageError(f"{display_path(dest)}: is a folder; choose another name")
    if dest.exists() and not force:
        raise UsageError(f"{display_path(dest)}: already exists; pass --force to overwrite it")


@contextlib.contextmanager
def _temporaries() -> Iterator[Callable[..., Path]]:
    """``temporary(dest, folder=False)`` makes ``.NAME.PID.RANDOM.tmp`` beside ``dest``; all are removed on exit
    (those renamed into place are gone already). The pid tells a later run which ones a killed run left."""
    made: list[Path] = []

    def temporary(dest: Path, *, folder: bool = False) -> Path:
        path = dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        if folder:
            path.mkdir()
        else:
            path.touch(exist_ok=False)  # mode 0o666 less the umask, as any new file
        made.append(path)
        return path

    try:
        yield temporary
    finally:
        for path in made:
            _remove(path)


def _remove_stale_temporaries(dest: Path) -> None:
    """Remove the temporaries of ``dest`` that runs killed while writing left (their process is gone)."""
    prefix = f".{dest.name}."
    for path in dest.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = path.name[len(prefix) :].split(".")[0]
        if pid.isdigit() and not _alive(int(pid)):
            _remove(path)


def _alive(pid: int) -> bool:
    if os.name == "nt":
        return True  # os.kill would end the process there: keep the file
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # not ours to signal, but alive
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def _os_errors(path: Path) -> Iterator[None]:
    """An OSError as one line naming ``path`` (the destination, not a temporary)."""
    try:
        yield
    except OSError as e:
        raise OnnxbcError(f"{display_path(path)}: {_reason(e)}") from e


def _reason(e: OSError) -> str:
    """``No space left on device`` as ``no space left on device``."""
    if not e.strerror:
        return one_line(e)
    return e.strerror[0].lower() + e.strerror[1:]
