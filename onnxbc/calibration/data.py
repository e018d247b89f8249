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

``DataOptions.source`` gives samples from Python instead (``DataOptions.transform``, if set, first turns each
item into a feed dict):

- a dict of arrays: read like an ``.npz``;
- an iterable of feed dicts, a reader with ONNX Runtime's ``CalibrationDataReader`` protocol (``get_next()``
  until None), or a model-aware source (``feeds(specs)``, called once with the input specs below): each item
  (one batch or one sample, the two layouts of a file) is read once, checked, and written to a private
  temporary folder (``onnxbc.calibration.spill``), which is then read like a folder of files and removed when
  the ``CalibrationData`` is closed or collected. Reading stops once ``samples`` samples have come.

``--random-data`` follows the same two layouts: an input whose axis 0 is dynamic is batched along it; an
input whose axis 0 is fixed (or a scalar) gets one whole feed per sample, so a model with both runs one
sample per run. Every other dimension must be fixed.

``--shape NAME:DIMS`` (``DataOptions.shapes``) gives every dimension of an input: its dynamic dimensions take
those sizes, as do the dimensions of the same name in other inputs (``input_ids`` and ``attention_mask``
share ``seq``), for random data and for the checks. A batch axis it fixes to B makes every run exactly B
samples: the sample count and the held-out split are rounded down to whole batches (random data gives an input
it fixes whole feeds of that shape only where some input takes whole feeds anyway).

A run takes ``batch_size`` samples, across file (or item) boundaries where the arrays concatenate (every
input batched, the same per-sample shapes). A batch is split into smaller runs (``CalibrationData.batched``)
only when every input is batched on a dynamic axis 0 (or one fixed to 1): concatenating or slicing along an
axis that is not a batch would change a feed's shape.

Everything is checked against the model's inputs before any work starts (names, dtypes, ranks, fixed
dimensions, sample counts); non-finite values are refused when a file is read (when an item is read, for
``source``). The last ``holdout_fraction`` of the samples is held out: compensation is fitted on the rest and
errors are reported on both.
"""

from __future__ import annotations

import dataclasses
import zipfile
from collections.abc import Callable, Hashable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxbc import model_io
from onnxbc.calibration.spill import Spill
from onnxbc.errors import UsageError
from onnxbc.options import DataOptions, callable_name, describe_source, source_kind


@dataclasses.dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...] | None  # None: unknown rank
    shaped: bool = dataclasses.field(default=False, compare=False)  # sizes set by --shape (DataOptions.shapes)

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
        return f"{self.dtype.name}[{dims}]" + (" from --shape" if self.shaped else "")


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
    key: Hashable = None  # layout and per-sample shapes: runs span neighbouring chunks with equal keys


class CalibrationData:
    """Checked samples from a source, split into ``fit`` and ``holdout``, served in batches. Close it (or use
    it as a context manager) to remove the temporary files of a spilled ``source`` at once; they go when it is
    garbage collected otherwise."""

    def __init__(
        self,
        chunks: list[_Chunk],
        specs: list[InputSpec],
        options: DataOptions,
        ignored: list[str],
        *,
        spill: Spill | None = None,
    ):
        self.specs = specs
        self.ignored = ignored
        self.description = ""
        self._chunks = chunks
        self._spill = spill  # kept alive (and its folder with it) as long as this is
        available = sum(c.count for c in chunks)
        if available == 0:
            raise UsageError("the calibration data holds no samples")
        self.batch_size = options.batch_size
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
        # A fixed batch of B > 1 over batched arrays: the count and the split are whole batches.
        unit = self.batch_size if self._fixed_batch and not any(c.whole for c in chunks) else 1
        self.total = min(available, options.samples) // unit * unit
        if self.total == 0:
            name = fixed[self._fixed_batch]
            raise UsageError(
                f"input '{name}' takes batches of exactly {unit} samples ({_spec(specs, name).describe()}), "
                f"fewer than that are given ({min(available, options.samples)}): raise --samples or give more data"
            )
        groups = self.total // unit
        self.n_holdout = min(int(round(groups * options.holdout_fraction)), groups - 1) * unit
        self.n_fit = self.total - self.n_holdout

    @property
    def batched(self) -> bool:
        """True when every feed is a batch along axis 0 that may be split into smaller runs; False when
        some input takes whole feeds or a fixed batch of more than 1 (one feed per run, as it is)."""
        return not any(c.whole for c in self._chunks) and self._fixed_batch in (None, 1)

    def count_batches(self, split: str) -> int:
        return sum(1 for _ in self._runs(split))

    def batches(self, split: str) -> Iterator[dict[str, np.ndarray]]:
        """Feeds for ``split`` in {"fit", "holdout", "all"}."""
        loaded: dict[int, dict[str, np.ndarray]] = {}
        for run in self._runs(split):
            loaded = {i: loaded[i] if i in loaded else self._load(self._chunks[i]) for i, _, _ in run}
            if len(run) == 1:
                i, start, stop = run[0]
                whole = self._chunks[i].whole
                yield {k: np.asarray(a[start]) if k in whole else a[start:stop] for k, a in loaded[i].items()}
            else:
                yield {s.name: np.concatenate([loaded[i][s.name][a:b] for i, a, b in run]) for s in self.specs}

    def close(self) -> None:
        """Remove the temporary files of a spilled source (nothing else to release)."""
        if self._spill is not None:
            self._spill.close()

    def __enter__(self) -> CalibrationData:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _runs(self, split: str) -> Iterator[list[tuple[int, int, int]]]:
        """Each run as ``(chunk, start, stop)`` pieces: ``batch_size`` samples, taken across chunk boundaries
        where the chunks' keys are equal; a chunk with whole feeds gives one sample per run."""
        lo, hi = {"fit": (0, self.n_fit), "holdout": (self.n_fit, self.total), "all": (0, self.total)}[split]
        run: list[tuple[int, int, int]] = []
        size = offset = 0
        for i, chunk in enumerate(self._chunks):
            start, stop = max(lo - offset, 0), min(hi - offset, chunk.count)
            offset += chunk.count
            if start < stop and chunk.whole:
                if run:
                    yield run
                    run, size = [], 0
                yield from ([(i, s, s + 1)] for s in range(start, stop))
            elif start < stop:
                if run and self._chunks[run[-1][0]].key != chunk.key:
                    yield run
                    run, size = [], 0
                while start < stop:
                    take = min(self.batch_size - size, stop - start)
                    run.append((i, start, start + take))
                    size, start = size + take, start + take
                    if size == self.batch_size:
                        yield run
                        run, size = [], 0
            if offset >= hi:
                break
        if run:
            yield run

    def _load(self, chunk: _Chunk) -> dict[str, np.ndarray]:
        arrays = chunk.load()
        _check_finite(chunk.source, arrays, self.specs)
        return {s.name: arrays[s.name] for s in self.specs}

    def _summary(self) -> str:
        return f"{self.total} samples: {self.n_fit} fit, {self.n_holdout} held out"


def open_data(options: DataOptions, specs: list[InputSpec]) -> CalibrationData:
    """The samples ``options`` names, checked against the model inputs ``specs`` (``options.shapes`` applied)."""
    shaped = _with_shapes(specs, options.shapes)
    if options.random:
        chunks = [_random_chunk(shaped, specs, options)]
        data = CalibrationData(chunks, shaped, options, [])
        data.description = f"random data ({data.total} samples, standard normal / uniform integers)"
        return data
    if options.source is not None:
        return _open_source(options, shaped)
    path = Path(options.path)
    if not path.exists():
        raise UsageError(f"{path}: no such file or folder")
    chunks, ignored = _scan(path, shaped)
    data = CalibrationData(chunks, shaped, options, ignored)
    data.description = f"{path} ({data._summary()})"
    return data


def _with_shapes(specs: list[InputSpec], shapes: tuple[tuple[str, tuple[int, ...]], ...]) -> list[InputSpec]:
    """``specs`` with the sizes ``shapes`` gives: the named inputs take them whole (a fixed dimension they
    contradict is an error); a named dynamic dimension of another input takes the size given to that name."""
    if not shapes:
        return specs
    by_name = {s.name: s for s in specs}
    sizes: dict[str, tuple[int, str]] = {}  # dimension name -> (size, the input that gave it)
    for name, dims in shapes:
        spec = by_name.get(name)
        flag = f"--shape {name}:{','.join(map(str, dims))}"
        if spec is None:
            inputs = ", ".join(f"'{s.name}' {s.describe()}" for s in specs)
            raise UsageError(f"{flag}: the model has no input '{name}' (its inputs: {inputs})")
        if spec.shape is None:
            continue
        if len(dims) != len(spec.shape):
            raise UsageError(f"{flag}: input '{name}' has rank {len(spec.shape)} ({spec.describe()}), not {len(dims)}")
        for axis, (want, size) in enumerate(zip(spec.shape, dims)):
            if isinstance(want, int) and want != size:
                raise UsageError(f"{flag}: dimension {axis} of '{name}' is fixed to {want} ({spec.describe()})")
            if isinstance(want, str):
                before, by = sizes.setdefault(want, (size, name))
                if before != size:
                    raise UsageError(
                        f"--shape gives dimension '{want}' two sizes: {before} (input '{by}') and {size} "
                        f"(input '{name}')"
                    )
    given = dict(shapes)
    out = []
    for spec in specs:
        if spec.name in given:
            shape = given[spec.name]
        elif spec.shape is not None:
            shape = tuple(sizes[d][0] if isinstance(d, str) and d in sizes else d for d in spec.shape)
        else:
            shape = None
        out.append(dataclasses.replace(spec, shape=shape, shaped=shape != spec.shape))
    return out


def _spec(specs: list[InputSpec], name: str) -> InputSpec:
    return next(s for s in specs if s.name == name)


def _open_source(options: DataOptions, specs: list[InputSpec]) -> CalibrationData:
    """``DataOptions.source``: a dict is checked in memory; anything else is read once and spilled."""
    source, transform = options.source, options.transform
    what = describe_source(source)
    if transform is not None:
        what += f" through {callable_name(transform)}"
    kind = source_kind(source)
    if kind == "dict":
        where = "source dict"
        arrays = _feed(source, transform, where)
        count, whole, key, extra = _check_arrays(where, _headers(arrays), specs)
        _check_finite(where, arrays, specs)
        arrays = {s.name: arrays[s.name] for s in specs}
        data = CalibrationData([_Chunk(where, count, whole, lambda: arrays, key)], specs, options, extra)
        data.description = f"{what} ({data._summary()})"
        return data
    if kind == "feeds":
        items = iter(source.feeds(list(specs)))
    elif kind == "reader":
        items = iter(source.get_next, None)
    else:
        items = iter(source)
    spill = Spill()
    try:
        ignored = _spill_items(items, transform, specs, options.samples, spill)
        if spill.files == 0:
            raise UsageError(f"{what} gave no samples")
        chunks, _ = _scan(spill.path, specs)  # read back exactly like a folder of files
        data = CalibrationData(chunks, specs, options, ignored, spill=spill)
    except BaseException:
        spill.close()
        raise
    finally:
        if items is not source and callable(getattr(items, "close", None)):
            items.close()  # ours (from feeds() or iter()): stopped early, let it release its files
    data.description = f"{what}, spilled to {spill.files} file{'' if spill.files == 1 else 's'} ({data._summary()})"
    return data


def _spill_items(
    items: Iterator[Any], transform: Callable[[Any], Any] | None, specs: list[InputSpec], samples: int, spill: Spill
) -> list[str]:
    """Check each item as it is read and queue it in ``spill``; stop once ``samples`` samples were read."""
    ignored: set[str] = set()
    read = 0
    for index, item in enumerate(items):
        where = f"item {index}"
        arrays = _feed(item, transform, where)
        count, whole, key, extra = _check_arrays(where, _headers(arrays), specs)
        _check_finite(where, arrays, specs)
        ignored.update(extra)
        if count:
            spill.add({s.name: np.array(arrays[s.name]) for s in specs}, key)  # a copy: sources reuse buffers
        read += count
        if read >= samples:
            break
    spill.flush()
    return sorted(ignored)


def _feed(item: Any, transform: Callable[[Any], Any] | None, where: str) -> dict[str, np.ndarray]:
    """An item as a feed: ``transform`` applied, then a dict of arrays (values as ``np.asarray`` gives them,
    no casts: the dtype checks stay strict)."""
    if transform is not None:
        try:
            item = transform(item)
        except UsageError:
            raise
        except Exception as e:
            raise UsageError(f"{where}: transform {callable_name(transform)} failed: {type(e).__name__}: {e}") from e
    if not isinstance(item, Mapping):
        got = f"transform {callable_name(transform)} returned" if transform is not None else "got"
        hint = "" if transform is not None else " (DataOptions(transform=...) can make feeds of such items)"
        raise UsageError(f"{where}: a feed is a dict of arrays keyed by input name; {got} {type(item).__name__}{hint}")
    return {str(k): np.asarray(v) for k, v in item.items()}


def _headers(arrays: Mapping[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    return {k: (tuple(a.shape), a.dtype) for k, a in arrays.items()}


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
    count, whole, key, extra = _check_arrays(str(path), header, specs)
    return _Chunk(str(path), count, whole, load, key), extra


def _check_arrays(
    where: str, header: dict[str, tuple[tuple[int, ...], np.dtype]], specs: list[InputSpec]
) -> tuple[int, frozenset[str], Hashable, list[str]]:
    """Check one file's (or item's) arrays, given as shapes and dtypes, against the inputs. Returns the sample
    count, the inputs given as whole feeds, the layout key and the names of arrays no input reads."""
    missing = [s.name for s in specs if s.name not in header]
    if missing:
        raise UsageError(f"{where}: no array for model input '{missing[0]}' (it has: {', '.join(header) or 'nothing'})")
    whole, counts = set(), set()
    for spec in specs:
        shape, dtype = header[spec.name]
        if _check_array(where, spec, shape, dtype):
            whole.add(spec.name)
        counts.add(shape[0] if shape else 0)
    if len(counts) > 1:
        raise UsageError(f"{where}: arrays hold different numbers of samples ({sorted(counts)})")
    _check_mixed(where, specs, whole)
    extra = [k for k in header if k not in {s.name for s in specs}]
    key = (frozenset(whole), tuple((s.name, tuple(header[s.name][0][1:])) for s in specs))
    return counts.pop(), frozenset(whole), key, extra


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


def _check_array(path: Path | str, spec: InputSpec, shape: tuple[int, ...], dtype: np.dtype) -> bool:
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
                f"{where}: the model's batch is fixed to {spec.batch_dim} ({spec.describe()}); "
                f"{shape[0]} samples do not divide into it"
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


def _check_finite(where: str, arrays: Mapping[str, np.ndarray], specs: list[InputSpec]) -> None:
    for spec in specs:
        a = arrays[spec.name]
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            bad = int(np.argwhere(~np.isfinite(a))[0][0]) if a.ndim else 0
            raise UsageError(f"{where}: input '{spec.name}' has NaN or Inf values (sample {bad})")


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


def _random_chunk(specs: list[InputSpec], model_specs: list[InputSpec], options: DataOptions) -> _Chunk:
    """Standard-normal floats and small non-negative integers. An input whose axis 0 the model leaves dynamic
    is batched along it (``--shape`` may fix the batch); any other input (fixed axis 0, scalar) gets whole
    feeds of its own shape, and so then does one whose axis 0 ``--shape`` fixes. Every other dimension must be
    fixed, by the model or by ``--shape``: there is no size to guess for it."""
    dynamic = {s.name for s in model_specs if s.batchable}
    whole = {s.name for s in specs if s.name not in dynamic}
    if whole:  # one sample per run already: a batch that --shape fixes is a whole feed too
        whole |= {s.name for s in specs if not s.batchable}
    shapes = {}
    for spec in specs:
        if spec.shape is None:
            raise UsageError(
                f"input '{spec.name}' has an unknown rank: random data needs a known shape; "
                f"pass --shape {spec.name}:DIMS or --data"
            )
        batched = spec.name not in whole
        for axis, d in enumerate(spec.shape[1:] if batched else spec.shape, start=1 if batched else 0):
            if not isinstance(d, int):
                raise UsageError(
                    f"input '{spec.name}' has a dynamic dimension '{d}' at axis {axis} ({spec.describe()}): "
                    f"random data needs fixed sizes; pass --shape {spec.name}:DIMS with all {len(spec.shape)} "
                    "sizes, or --data"
                )
        shapes[spec.name] = tuple(spec.shape[1:] if batched else spec.shape)
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

    return _Chunk("random data", n, frozenset(whole), load, tuple(sorted(shapes.items())))
