"""Calibration samples: where they come from, how they are checked, split and batched.

Accepted ``--data`` paths:

- ``.npz``: one array per model input, keyed by input name; axis 0 counts samples. Arrays whose rank
  is the input's rank are batched along axis 0; arrays with one extra leading axis hold whole feeds,
  one per sample (for inputs not batched on axis 0, such as recurrent state ``[2, batch, 128]``).
  The two layouts may be mixed (a sequence ``[N, 576]`` beside states ``[N, 1, 1, 128]``): then each run
  takes one sample, the batched arrays sliced to one row (their axis 0 must be dynamic or 1).
- ``.npy``: the same, for a model with a single input.
- a folder of ``.npz``/``.npy`` files (read one at a time, in name order), or of ONNX
  ``test_data_set_*`` folders (``input_*.pb``, each folder one whole feed), or one such folder itself.

``--random-data`` follows the same two layouts: an input whose axis 0 is dynamic is batched along it; an
input whose axis 0 is fixed (or a scalar) gets one whole feed per sample, so a model with both runs one
sample per run. Every other dimension must be fixed.

A batch is split into smaller runs (``CalibrationData.batched``) only when every input is batched on a
dynamic axis 0 (or one fixed to 1): concatenating or slicing along an axis that is not a batch would change
a feed's shape.

Everything is checked against the model's inputs before any work starts (names, dtypes, ranks, fixed
dimensions, sample counts); non-finite values are refused when a file is read. The last
``holdout_fraction`` of the samples is held out: compensation is fitted on the rest and errors are
reported on both.
"""

from __future__ import annotations

import dataclasses
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnxbc import model_io
from onnxbc.errors import UsageError
from onnxbc.options import DataOptions


@dataclasses.dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...] | None  # None: unknown rank

    @property
    def batch_dim(self) -> int | None:
        """The static size of axis 0, or None when it is dynamic."""
        if not self.shape:
            return None
        d = self.shape[0]
        return d if isinstance(d, int) else None

    @property
    def batchable(self) -> bool:
        """Samples can be stacked along axis 0: it exists and is dynamic (unknown ranks are taken as batched)."""
        return self.shape is None or (len(self.shape) > 0 and self.batch_dim is None)

    def describe(self) -> str:
        dims = "?" if self.shape is None else ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype.name}[{dims}]"


def input_specs(model: ir.Model) -> list[InputSpec]:
    """The inputs a caller must feed (inputs with an initializer default are optional and left out)."""
    specs = []
    for v in model.graph.inputs:
        if v.name in model.graph.initializers:
            continue
        if v.dtype is None:
            raise UsageError(f"model input '{v.name}' has no element type")
        shape = None if v.shape is None else tuple(d if isinstance(d, int) else (d.value) for d in v.shape.dims)
        specs.append(InputSpec(v.name, np.dtype(v.dtype.numpy()), shape))
    return specs


@dataclasses.dataclass
class _Chunk:
    """One file's worth of samples; loaded only when iterated."""

    source: str
    count: int
    whole: frozenset[str]  # inputs whose arrays hold one complete feed per sample; the others batch along axis 0
    load: Callable[[], dict[str, np.ndarray]]


class CalibrationData:
    """Checked samples from a source, split into ``fit`` and ``holdout``, served in batches."""

    def __init__(self, chunks: list[_Chunk], specs: list[InputSpec], options: DataOptions, ignored: list[str]):
        self.specs = specs
        self.ignored = ignored
        self.description = ""
        total = sum(c.count for c in chunks)
        if total == 0:
            raise UsageError("the calibration data holds no samples")
        self.total = min(total, options.samples)
        self.n_holdout = min(int(round(self.total * options.holdout_fraction)), self.total - 1)
        self.n_fit = self.total - self.n_holdout
        self.batch_size = options.batch_size
        self._chunks = chunks
        batched = [s for s in specs if any(s.name not in c.whole for c in chunks)]
        fixed = {s.batch_dim: s.name for s in batched if s.batch_dim is not None}
        if len(fixed) > 1:
            (a, first), (b, second) = list(fixed.items())[:2]
            raise UsageError(
                f"inputs '{first}' and '{second}' have different fixed sizes on axis 0 ({a} and {b}): "
                "they cannot both be batched on it; give whole feeds (one extra leading axis per sample)"
            )
        self._fixed_batch = next(iter(fixed), None)
        if self._fixed_batch is not None:
            # A model with a fixed batch (often 1) takes exactly that many samples per run.
            self.batch_size = self._fixed_batch
        elif all(c.whole for c in chunks):
            self.batch_size = 1  # whole feeds: one sample per run

    @property
    def batched(self) -> bool:
        """True when every feed is a batch along axis 0 that may be split into smaller runs; False when
        some input takes whole feeds or a fixed batch of more than 1 (one feed per run, as it is)."""
        return not any(c.whole for c in self._chunks) and self._fixed_batch in (None, 1)

    def count_batches(self, split: str) -> int:
        return sum(1 for _ in self._ranges(split))

    def batches(self, split: str) -> Iterator[dict[str, np.ndarray]]:
        """Feeds for ``split`` in {"fit", "holdout", "all"}."""
        loaded: tuple[int, dict[str, np.ndarray]] | None = None
        for chunk_index, start, stop in self._ranges(split):
            if loaded is None or loaded[0] != chunk_index:
                loaded = (chunk_index, self._load(self._chunks[chunk_index]))
            whole = self._chunks[chunk_index].whole
            yield {k: np.asarray(a[start]) if k in whole else a[start:stop] for k, a in loaded[1].items()}

    def _ranges(self, split: str) -> Iterator[tuple[int, int, int]]:
        lo, hi = {"fit": (0, self.n_fit), "holdout": (self.n_fit, self.total), "all": (0, self.total)}[split]
        offset = 0
        for i, chunk in enumerate(self._chunks):
            start, stop = max(lo - offset, 0), min(hi - offset, chunk.count)
            step = 1 if chunk.whole else self.batch_size
            for s in range(start, stop, step):
                yield i, s, min(s + step, stop)
            offset += chunk.count
            if offset >= hi:
                break

    def _load(self, chunk: _Chunk) -> dict[str, np.ndarray]:
        arrays = chunk.load()
        for spec in self.specs:
            a = arrays[spec.name]
            if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
                bad = int(np.argwhere(~np.isfinite(a))[0][0])
                raise UsageError(f"{chunk.source}: input '{spec.name}' has NaN or Inf values (sample {bad})")
        return {s.name: arrays[s.name] for s in self.specs}


def open_data(options: DataOptions, specs: list[InputSpec]) -> CalibrationData:
    if options.random:
        chunks = [_random_chunk(specs, options)]
        data = CalibrationData(chunks, specs, options, [])
        data.description = f"random data ({data.total} samples, standard normal / uniform integers)"
        return data
    path = Path(options.path)
    if not path.exists():
        raise UsageError(f"{path}: no such file or folder")
    chunks, ignored = _scan(path, specs)
    data = CalibrationData(chunks, specs, options, ignored)
    data.description = f"{path} ({data.total} samples: {data.n_fit} fit, {data.n_holdout} held out)"
    return data


def _scan(path: Path, specs: list[InputSpec]) -> tuple[list[_Chunk], list[str]]:
    if path.is_file():
        files = [path]
    elif _is_test_data_set(path):
        return [_pb_chunk(path, specs)], []
    else:
        sets = sorted(p for p in path.iterdir() if p.is_dir() and _is_test_data_set(p))
        if sets:
            return [_pb_chunk(p, specs) for p in sets], []
        files = sorted(p for p in path.iterdir() if p.suffix in (".npz", ".npy"))
        if not files:
            raise UsageError(f"{path}: no .npz/.npy files or test_data_set_* folders in it")
    chunks, ignored = [], set()
    for f in files:
        chunk, extra = _array_chunk(f, specs)
        chunks.append(chunk)
        ignored.update(extra)
    return chunks, sorted(ignored)


def _array_chunk(path: Path, specs: list[InputSpec]) -> tuple[_Chunk, list[str]]:
    if path.suffix == ".npy":
        if len(specs) != 1:
            names = ", ".join(s.name for s in specs)
            raise UsageError(f"{path}: a .npy file can only feed a single-input model; this one has {names} (use .npz)")
        header = {specs[0].name: _npy_header(path)}

        def load() -> dict[str, np.ndarray]:
            return {specs[0].name: np.load(path, mmap_mode="r")}

    elif path.suffix == ".npz":
        header = _npz_headers(path)

        def load() -> dict[str, np.ndarray]:
            with np.load(path) as z:
                return {s.name: z[s.name] for s in specs}

    else:
        raise UsageError(f"{path}: calibration data must be .npz, .npy or a folder (got '{path.suffix}')")
    missing = [s.name for s in specs if s.name not in header]
    if missing:
        raise UsageError(f"{path}: no array for model input '{missing[0]}' (it has: {', '.join(header) or 'nothing'})")
    whole, counts = set(), set()
    for spec in specs:
        shape, dtype = header[spec.name]
        if _check_array(path, spec, shape, dtype):
            whole.add(spec.name)
        counts.add(shape[0] if shape else 0)
    if len(counts) > 1:
        raise UsageError(f"{path}: arrays hold different numbers of samples ({sorted(counts)})")
    _check_mixed(path, specs, whole)
    extra = [k for k in header if k not in {s.name for s in specs}]
    return _Chunk(str(path), counts.pop(), frozenset(whole), load), extra


def _check_mixed(source: Path | str, specs: list[InputSpec], whole: set[str]) -> None:
    """Whole feeds beside batched arrays: one sample per run, so a batched input must take one row."""
    if not whole:
        return
    for spec in specs:
        if spec.name not in whole and spec.batch_dim not in (None, 1):
            raise UsageError(
                f"{source}: input '{spec.name}' is batched with a fixed batch of {spec.batch_dim} while "
                f"'{sorted(whole)[0]}' holds whole feeds (one sample per run): give '{spec.name}' whole feeds too "
                f"(shape [N, {spec.batch_dim}, ...])"
            )


def _check_array(path: Path, spec: InputSpec, shape: tuple[int, ...], dtype: np.dtype) -> bool:
    """Check one array against an input; return True when it holds whole feeds (rank + 1)."""
    where = f"{path}: input '{spec.name}'"
    if dtype != spec.dtype:
        raise UsageError(f"{where}: the model expects {spec.dtype.name}, the data has {dtype.name}")
    if spec.shape is None:
        return False
    rank = len(spec.shape)
    if len(shape) == rank + 1:
        per_sample, model_dims = shape[1:], spec.shape
        whole = True
    elif len(shape) == rank and rank > 0:
        per_sample, model_dims = shape[1:], spec.shape[1:]
        whole = False
        if spec.batch_dim is not None and spec.batch_dim != 1 and shape[0] % spec.batch_dim:
            raise UsageError(
                f"{where}: the model's batch is fixed to {spec.batch_dim}; {shape[0]} samples do not divide into it"
            )
    else:
        raise UsageError(f"{where}: the model expects rank {rank} {spec.describe()}, the data has shape {tuple(shape)}")
    for axis, (have, want) in enumerate(zip(per_sample, model_dims)):
        if isinstance(want, int) and have != want:
            raise UsageError(
                f"{where}: dimension {axis + (0 if whole else 1)} must be {want} ({spec.describe()}), "
                f"the data has {have} (shape {tuple(shape)})"
            )
    return whole


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    try:
        a = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as e:
        raise UsageError(f"{path}: not a readable .npy file ({e})") from e
    return tuple(a.shape), a.dtype


def _npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shapes and dtypes of an .npz's arrays, read from the member headers without decompressing the data."""
    headers = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read(f)
                headers[info.filename[:-4]] = (tuple(shape), np.dtype(dtype))
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise UsageError(f"{path}: not a readable .npz file ({e})") from e
    return headers


def _is_test_data_set(path: Path) -> bool:
    return path.name.startswith("test_data_set") or any(path.glob("input_*.pb"))


def _pb_chunk(folder: Path, specs: list[InputSpec]) -> _Chunk:
    files = sorted(folder.glob("input_*.pb"), key=lambda p: int(p.stem.split("_")[-1]))
    if len(files) != len(specs):
        raise UsageError(f"{folder}: {len(files)} input_*.pb files for a model with {len(specs)} inputs")
    tensors = [model_io.read_tensor_pb(f) for f in files]
    names = [name for name, _ in tensors]
    by_name = all(n in {s.name for s in specs} for n in names)
    arrays = {}
    for i, spec in enumerate(specs):
        name, array = tensors[names.index(spec.name)] if by_name else tensors[i]
        if array.dtype != spec.dtype:
            raise UsageError(
                f"{folder}: input '{spec.name}': the model expects {spec.dtype.name}, the data has {array.dtype.name}"
            )
        if spec.shape is not None and (
            len(array.shape) != len(spec.shape)
            or any(isinstance(w, int) and h != w for h, w in zip(array.shape, spec.shape))
        ):
            raise UsageError(
                f"{folder}: input '{spec.name}': the model expects {spec.describe()}, the data has shape {array.shape}"
            )
        arrays[spec.name] = array[None]
    return _Chunk(str(folder), 1, frozenset(arrays), lambda: arrays)


def _random_chunk(specs: list[InputSpec], options: DataOptions) -> _Chunk:
    """Standard-normal floats and small non-negative integers. An input with a dynamic axis 0 is batched
    along it; any other input (fixed axis 0, scalar) gets whole feeds of its own shape. Every other
    dimension must be fixed: there is no size to guess for it."""
    shapes = {}
    for spec in specs:
        if spec.shape is None:
            raise UsageError(f"input '{spec.name}' has an unknown rank: random data needs a known shape; pass --data")
        batched = spec.batchable
        for axis, d in enumerate(spec.shape[1:] if batched else spec.shape, start=1 if batched else 0):
            if not isinstance(d, int):
                raise UsageError(
                    f"input '{spec.name}' has a dynamic dimension '{d}' at axis {axis}: "
                    "random data needs fixed sizes; pass --data"
                )
        shapes[spec.name] = tuple(spec.shape[1:] if batched else spec.shape)
    whole = frozenset(s.name for s in specs if not s.batchable)
    n = options.samples

    def load() -> dict[str, np.ndarray]:
        rng = np.random.default_rng(options.seed)
        out = {}
        for spec in specs:
            shape = (n, *shapes[spec.name])
            if np.issubdtype(spec.dtype, np.floating):
                out[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
            elif spec.dtype == np.bool_:
                out[spec.name] = rng.integers(0, 2, shape).astype(np.bool_)
            else:
                out[spec.name] = rng.integers(0, 100, shape).astype(spec.dtype)
        return out

    return _Chunk("random data", n, whole, load)
