"""Typed options of every command: enums and frozen dataclasses, validated once on construction.

``CompressOptions`` is one flat record, but each field's metadata says its group (``OptionGroup``), its flag
and whether data-free mode reads it, so the checks by mode are data: ``--data-free`` with any option it
ignores set is a usage error naming the flags.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import importlib.util
import operator
import os
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxbc.errors import UsageError

__all__ = [  # the public API re-exports these (onnxbc/__init__.py)
    "ActivationType",
    "BiasCorrection",
    "BiasShape",
    "CheckOptions",
    "CompressOptions",
    "DataOptions",
    "Device",
    "ErrorMetric",
    "OutputFormat",
    "RangeMethod",
    "Rounding",
    "Target",
    "WeightType",
]

if TYPE_CHECKING:
    from onnxbc.policy import Policy

RAY_MISSING = "--ray needs the ray extra: pip install 'onnxbc[ray]'"


class WeightType(str, enum.Enum):
    INT8 = "int8"
    INT4 = "int4"
    INT3 = "int3"  # stored in an int4 container with codes [-4, 3]
    INT2 = "int2"  # stored in an int4 container with codes [-2, 1]
    NONE = "none"

    @property
    def bits(self) -> int:
        return {"int8": 8, "int4": 4, "int3": 3, "int2": 2, "none": 32}[self.value]

    @property
    def int4_container(self) -> bool:
        return self in (WeightType.INT4, WeightType.INT3, WeightType.INT2)

    @classmethod
    def of_bits(cls, bits: int) -> WeightType:
        return {8: cls.INT8, 4: cls.INT4, 3: cls.INT3, 2: cls.INT2}[bits]


CANDIDATE_BITS = (2, 3, 4, 8)  # what --candidates may list


class ActivationType(str, enum.Enum):
    INT8 = "int8"
    INT16 = "int16"  # opset 21; ONNX Runtime only
    INT4 = "int4"  # opset 21; ONNX Runtime only (W4A4)
    NONE = "none"

    @property
    def bits(self) -> int:
        return {"int8": 8, "int16": 16, "int4": 4, "none": 32}[self.value]


class Rounding(str, enum.Enum):
    """How weights are rounded to their codes once the scales are chosen."""

    NEAREST = "nearest"
    GPTQ = "gptq"  # error feedback with the input second moments (MatMul/Gemm)
    AUTO = "auto"  # per weight, the lower held-out error of the two at 4 bits and fewer (onnxbc.precision)


class RangeMethod(str, enum.Enum):
    """How a quantization range is chosen from the observed values."""

    MINMAX = "minmax"
    PERCENTILE = "percentile"
    MSE = "mse"
    AUTO = "auto"  # weights: measure mse and minmax scales per layer, keep the better


class BiasCorrection(str, enum.Enum):
    """How compensation biases are fitted (``onnxbc.compensation``): not at all, per layer on the float model's
    inputs, or wave by wave on the compensated upstream model."""

    NONE = "none"
    INDEPENDENT = "independent"
    SEQUENTIAL = "sequential"


class BiasShape(str, enum.Enum):
    """A compensation bias per output channel (folds into the layer bias) or per output position."""

    CHANNEL = "channel"
    POSITION = "position"


class Device(str, enum.Enum):
    """Where ONNX Runtime runs the calibration: ``auto`` takes CUDA when it really starts."""

    AUTO = "auto"
    CUDA = "cuda"
    CPU = "cpu"


class Target(str, enum.Enum):
    """The runtime whose rules the output follows (see README, "Targets")."""

    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"


@dataclasses.dataclass(frozen=True)
class DataOptions:
    """Where calibration samples come from, how they are batched, and the sizes of dynamic input dimensions.

    Exactly one of ``path`` (a file or folder: ``--data``), ``random`` (``--random-data``) and ``source`` (from
    Python) gives the samples. ``source`` is (``onnxbc.calibration.data`` has the layouts and checks):

    - a dict of arrays keyed by input name, laid out like an ``.npz`` (axis 0 counts samples);
    - an iterable of feed dicts, each one batch or one sample (read once, as it streams);
    - an object with ONNX Runtime's ``CalibrationDataReader`` protocol: ``get_next()`` returns a feed dict or
      None at the end;
    - a model-aware source: an object with ``feeds(specs) -> Iterator[dict[str, np.ndarray]]``, called once with
      the model's input specs (``onnxbc.calibration.data.InputSpec``, ``shapes`` applied).

    ``transform`` (NNCF's ``transform_fn``) turns each item of ``source`` (the dict itself, for a dict) into a feed
    dict before the checks. ``shapes`` (``--shape NAME:DIMS``) gives every dimension of the named inputs: it fixes
    their dynamic dimensions (and those of the same name in other inputs) for ``random`` data and for the
    checks; given as ``{"input_ids": (8, 128)}``, pairs, or ``"input_ids:8,128"`` strings, it is kept as a tuple
    of ``(name, dims)`` pairs. ``source`` and ``transform`` take no part in ``==`` and ``hash`` (an iterator
    has no value to compare); ``describe()`` is what reports store.
    """

    path: Path | None = None
    samples: int = 256
    batch_size: int = 16
    random: bool = False
    holdout_fraction: float = 0.2
    seed: int = 0
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    source: Any = dataclasses.field(default=None, compare=False)
    transform: Callable[[Any], Mapping[str, Any]] | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.path is None and not self.random and self.source is None:
            raise UsageError(
                "calibration data is needed: pass --data PATH (or --random-data to use noise; "
                "from Python, DataOptions(source=...))"
            )
        if self.path is not None and self.random:
            raise UsageError("--data and --random-data exclude each other")
        if self.source is not None and (self.path is not None or self.random):
            raise UsageError("DataOptions(source=...) excludes path= (--data) and random=True (--random-data)")
        if self.source is not None:
            source_kind(self.source)  # refuses what it is not
        if self.transform is not None and self.source is None:
            raise UsageError("DataOptions(transform=...) applies to the items of source=: give source= too")
        if self.transform is not None and not callable(self.transform):
            raise UsageError(f"DataOptions(transform=...) must be callable, got {type(self.transform).__name__}")
        if self.samples < 1:
            raise UsageError(f"--samples must be at least 1, got {self.samples}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise UsageError(f"--holdout-fraction must be in [0, 1), got {self.holdout_fraction}")
        object.__setattr__(self, "shapes", _shapes(self.shapes))

    def describe(self) -> dict[str, Any]:
        """These options as plain JSON values for a report: ``source`` and ``transform`` as short text, never
        their data."""
        return {
            "path": None if self.path is None else str(self.path),
            "source": None if self.source is None else describe_source(self.source),
            "transform": None if self.transform is None else callable_name(self.transform),
            "samples": self.samples,
            "batch_size": self.batch_size,
            "random": self.random,
            "holdout_fraction": self.holdout_fraction,
            "seed": self.seed,
            "shapes": {name: list(dims) for name, dims in self.shapes},
        }


def source_kind(source: Any) -> str:
    """What ``DataOptions.source`` is: "dict" (arrays keyed by input name), "feeds" (a model-aware source),
    "reader" (ONNX Runtime's ``CalibrationDataReader`` protocol) or "iterable" (of feed dicts); anything else is
    a UsageError."""
    if isinstance(source, Mapping):
        return "dict"
    if isinstance(source, (str, bytes, os.PathLike)):
        raise UsageError(f"source= takes samples, not a path ({source!r}): pass path= (--data) for files")
    if callable(getattr(source, "feeds", None)):
        return "feeds"
    if callable(getattr(source, "get_next", None)):
        return "reader"
    if hasattr(source, "__array__") or hasattr(source, "shape"):
        raise UsageError("source= takes a dict of arrays keyed by input name, not one array: source={'input': array}")
    if isinstance(source, Iterable):
        return "iterable"
    raise UsageError(
        "source= must be a dict of arrays, an iterable of feed dicts, a CalibrationDataReader (get_next()) or "
        f"an object with feeds(specs); got {type(source).__name__}"
    )


def describe_source(source: Any) -> str:
    """A short text for ``source``: "dict of 2 arrays", "iterable (generator)", "CalibrationDataReader (Reader)",
    "ImageFolder.feeds(specs)"."""
    kind = source_kind(source)
    name = type(source).__name__
    if kind == "dict":
        return f"dict of {len(source)} array{'' if len(source) == 1 else 's'}"
    if kind == "feeds":
        return getattr(source, "description", None) or f"{name}.feeds(specs)"
    if kind == "reader":
        return f"CalibrationDataReader ({name})"
    return f"iterable ({name})"


def callable_name(f: Callable) -> str:
    """A transform's name for messages and reports: its ``__qualname__`` (``halve``, ``<lambda>``), or its class's
    for a callable object."""
    return getattr(f, "__qualname__", None) or type(f).__qualname__


_SHAPE_SYNTAX = "NAME:DIMS with positive sizes, such as input:1,3,224,224"


def _shapes(value: Any) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """``DataOptions.shapes`` as ``(name, dims)`` pairs, from a mapping, pairs or ``"NAME:DIMS"`` strings."""
    items = value.items() if isinstance(value, Mapping) else value
    if isinstance(items, str):
        items = (items,)
    pairs: dict[str, tuple[int, ...]] = {}
    for item in items:
        name, dims = _parse_shape(item) if isinstance(item, str) else _shape_pair(item)
        if name in pairs:
            raise UsageError(f"--shape gives input '{name}' twice")
        pairs[name] = dims
    return tuple(pairs.items())


def _parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``"input:1,3,224,224"`` (or ``1x3x224x224``); the name is everything before the last colon, so ONNX
    names such as ``input_1:0`` work."""
    name, colon, dims = text.strip().rpartition(":")
    try:
        sizes = tuple(int(d) for d in dims.replace("x", ",").split(","))
    except ValueError:
        sizes = ()
    if not colon or not name or not sizes or min(sizes) < 1:
        raise UsageError(f"--shape takes {_SHAPE_SYNTAX}; got {text!r}")
    return name, sizes


def _shape_pair(item: Any) -> tuple[str, tuple[int, ...]]:
    try:
        name, dims = item
        if any(isinstance(d, bool) for d in dims):
            raise TypeError
        sizes = tuple(operator.index(d) for d in dims)  # ints, numpy integers
    except (TypeError, ValueError):
        raise UsageError(f"shapes= takes (name, dims) pairs or {_SHAPE_SYNTAX}; got {item!r}") from None
    if not isinstance(name, str) or not name or not sizes or min(sizes) < 1:
        raise UsageError(f"shapes= takes (name, dims) pairs with positive integer sizes; got {item!r}")
    return name, sizes


class OptionGroup(str, enum.Enum):
    """What part of the work an option of ``compress`` steers (``dataclasses.field`` metadata "group")."""

    WEIGHTS = "weights"
    ACTIVATIONS = "activations"
    COMPENSATION = "compensation"
    BUDGET = "budget"  # mixed precision: each weight's bits chosen under a size budget
    DATA_FREE = "data_free"
    RUNTIME = "runtime"  # where calibration runs and the runtime the output is written for


def _option(
    default: Any, group: OptionGroup, flag: str, *, data_free: bool | tuple, by_mode: dict | None = None
) -> Any:
    """A ``CompressOptions`` field and its metadata: ``group``; ``flag``, the command-line option
    (``--on/--off`` for switches); ``data_free``, whether ``onnxbc.datafree`` reads it, or the values it
    reads (from its code: any other option set to a non-default value with ``--data-free`` is a usage error);
    ``by_mode``, the default of a field given as None, by ``data_free`` (False / True)."""
    metadata = {"group": group, "flag": flag, "data_free": data_free}
    if by_mode is not None:
        metadata["by_mode"] = by_mode
    return dataclasses.field(default=default, metadata=metadata)


_W, _A, _C, _B, _D, _R = (
    OptionGroup.WEIGHTS,
    OptionGroup.ACTIVATIONS,
    OptionGroup.COMPENSATION,
    OptionGroup.BUDGET,
    OptionGroup.DATA_FREE,
    OptionGroup.RUNTIME,
)


@dataclasses.dataclass(frozen=True)
class CompressOptions:
    """Everything ``compress`` needs besides the model and the data, one flat record (``options.weights``);
    each field's group, flag and data-free use are its metadata (``option_groups``, ``flag_of``)."""

    # weights
    weights: WeightType = _option(WeightType.INT8, _W, "--weights", data_free=True)
    block_size: int = _option(0, _W, "--block-size", data_free=True)
    per_tensor_weights: bool = _option(False, _W, "--per-tensor-weights/--no-per-tensor-weights", data_free=True)
    reduce_range: bool = _option(False, _W, "--reduce-range/--no-reduce-range", data_free=True)
    weight_range: RangeMethod = _option(RangeMethod.AUTO, _W, "--weight-range", data_free=True)
    rounding: Rounding = _option(Rounding.AUTO, _W, "--rounding", data_free=False)
    # a solvers.schemes.Scheme value, or "auto" (per layer, least output error)
    scheme: str = _option("uniform", _W, "--scheme", data_free=False)
    # allow schemes that are not integer codes x scale (written as float weights)
    emulate: bool = _option(False, _W, "--emulate/--no-emulate", data_free=False)
    policy: Path | None = _option(None, _W, "--policy", data_free=False)  # per-layer overrides (onnxbc.policy)
    # activations (None: int8, or none with data_free: data-free mode is weight-only)
    activations: ActivationType | None = _option(
        None, _A, "--activations", data_free=False, by_mode={False: ActivationType.INT8, True: ActivationType.NONE}
    )
    activation_range: RangeMethod = _option(RangeMethod.MSE, _A, "--activation-range", data_free=False)
    # for --weight-range/--activation-range percentile (data-free reads it with --weight-range percentile)
    percentile: float = _option(99.99, _A, "--percentile", data_free=True)
    quantize_attention: bool = _option(False, _A, "--quantize-attention/--no-quantize-attention", data_free=False)
    smoothing: bool = _option(True, _A, "--smoothing/--no-smoothing", data_free=False)
    # compensation (data-free: none or independent, from BatchNormalization statistics)
    bias_correction: BiasCorrection = _option(
        BiasCorrection.INDEPENDENT,
        _C,
        "--bias-correction",
        data_free=(BiasCorrection.NONE, BiasCorrection.INDEPENDENT),  # no data to refit on: no sequential
    )
    bias_shape: BiasShape = _option(BiasShape.CHANNEL, _C, "--bias-shape", data_free=False)
    # budget: mixed precision (onnxbc.precision) picks each weight's bits among the candidates
    avg_bits: float | None = _option(None, _B, "--avg-bits", data_free=False)
    max_size: int | None = _option(None, _B, "--max-size", data_free=False)  # bytes of the written model file
    candidates: tuple[int, ...] = _option(CANDIDATE_BITS, _B, "--candidates", data_free=False)
    # price each candidate by its error left after bias compensation
    price_compensated: bool = _option(True, _B, "--compensated-prices/--raw-prices", data_free=False)
    # scale the prices to the model output by running each weight's candidates
    price_measured: bool = _option(True, _B, "--measured-prices/--closed-form-prices", data_free=False)
    # --max-size: blocks to choose from (0: per channel)
    block_candidates: tuple[int, ...] = _option((), _B, "--block-candidates", data_free=False)
    # data-free: DF-MPC + data-free bias correction, no calibration data (onnxbc.datafree)
    data_free: bool = _option(False, _D, "--data-free/--no-data-free", data_free=True)
    # --data-free: the layer after each compensated low-bit layer, and the unpaired layers
    next_weights: WeightType = _option(WeightType.INT8, _D, "--next-weights", data_free=True)
    # runtime and output
    device: Device = _option(Device.AUTO, _R, "--device", data_free=False)  # data-free never runs the model
    target: Target = _option(Target.ONNXRUNTIME, _R, "--target", data_free=True)
    opset: int | None = _option(None, _R, "--opset", data_free=True)
    # calibration graphs cut into up to this many segments run one after another (onnxbc.calibration.segments);
    # 0: as many as --max-memory asks for (onnxbc.calibration.memory)
    segments: int = _option(0, _R, "--segments", data_free=False)
    # bytes the run may use (None: half the machine's memory); sizes calibration runs and segments
    max_memory: int | None = _option(None, _R, "--max-memory", data_free=False)
    # calibration batches sharded across Ray workers (onnxbc.calibration.shards): "auto" or a cluster's address
    ray: str | None = _option(None, _R, "--ray", data_free=False)
    workers: int | None = _option(None, _R, "--workers", data_free=False)  # --ray: how many (None: its CPUs)
    # collected statistics kept there, for a later run to resume from (onnxbc.calibration.cache)
    cache_dir: Path | None = _option(None, _R, "--cache-dir", data_free=False)
    # Conv/Gemm biases (and MatMul + bias Add, as a Gemm) as int32 codes + DequantizeLinear (passes.bias_int32);
    # None: on for --target onnxruntime with int8 activations (its integer kernels take them), off otherwise
    int32_bias: bool | None = _option(
        None, _R, "--int32-bias/--no-int32-bias", data_free=False, by_mode={False: None, True: False}
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if getattr(self, f.name) is None and "by_mode" in f.metadata:
                object.__setattr__(self, f.name, f.metadata["by_mode"][bool(self.data_free)])
        _coerce_enums(self)
        if self.int32_bias is None:
            auto = self.target is Target.ONNXRUNTIME and self.activations is ActivationType.INT8
            object.__setattr__(self, "int32_bias", auto)
        if self.data_free:
            self._check_data_free()
        self._check_mixed_precision()
        if self.data_free and self.weights is WeightType.NONE:
            raise UsageError("--data-free needs quantized weights: --weights int2|int3|int4|int8")
        if self.segments < 0:
            raise UsageError(f"--segments must be auto, 1 (the whole graph) or more, got {self.segments}")
        if self.max_memory is not None and self.max_memory <= 0:
            raise UsageError(f"--max-memory must be a positive size, got {self.max_memory}")
        self._check_ray()
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", Path(self.cache_dir))  # the API may pass text
            if self.cache_dir.exists() and not self.cache_dir.is_dir():
                raise UsageError(f"--cache-dir {self.cache_dir}: not a folder")
        if self.block_size < 0 or (self.block_size and self.block_size % 16):
            raise UsageError(
                f"--block-size must be 0 (per channel) or a positive multiple of 16, got {self.block_size}"
            )
        if self.reduce_range and self.weights is not WeightType.INT8:
            raise UsageError("--reduce-range applies to int8 weights only")
        if self.block_size and self.per_tensor_weights:
            raise UsageError("--block-size and --per-tensor-weights exclude each other")
        if self.activation_range is RangeMethod.AUTO:
            raise UsageError("--activation-range auto is not available; use mse, minmax or percentile")
        if not 50.0 < self.percentile <= 100.0:
            raise UsageError(f"--percentile must be in (50, 100], got {self.percentile}")
        if self.weights is WeightType.NONE and self.activations is ActivationType.NONE:
            raise UsageError("--weights none with --activations none leaves nothing to quantize")
        if self.target is Target.TENSORRT and self.block_size and not self.weights.int4_container:
            raise UsageError("TensorRT takes weight blocks only for int4: drop --block-size or use --weights int4")
        if self.target is Target.TENSORRT and self.activations in (ActivationType.INT16, ActivationType.INT4):
            raise UsageError(
                f"TensorRT takes int8 activations only, not {self.activations.value}: use --target onnxruntime"
            )
        if self.target is Target.TENSORRT and self.low_bit_weights:
            if self.block_size not in (64, 128):
                raise UsageError("TensorRT runs int4 weights only in blocks: add --block-size 64 or 128")
            if self.activations is not ActivationType.NONE:
                raise UsageError("TensorRT runs int4 weights only weight-only: add --activations none")
        if self.opset is not None and not 13 <= self.opset <= 25:
            raise UsageError(f"--opset must be between 13 and 25, got {self.opset}")
        if self.policy is not None and not self.data_free:
            _check_policy(self)

    def _check_ray(self) -> None:
        if self.workers is not None and self.ray is None:
            raise UsageError("--workers sets the Ray workers: add --ray auto (or --ray ADDRESS)")
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"--workers must be 1 or more, got {self.workers}")
        if self.ray is not None and not (self.ray == "auto" or re.fullmatch(r"(ray://)?\S+:\d+", self.ray)):
            raise UsageError(
                f"--ray takes auto or a Ray cluster's address, HOST:PORT or ray://HOST:PORT, not {self.ray!r}"
            )
        if self.ray is not None and importlib.util.find_spec("ray") is None:
            raise UsageError(RAY_MISSING)

    def _check_data_free(self) -> None:
        """``onnxbc.datafree`` reads only the fields marked ``data_free`` (weights, next_weights, the weight
        scale layout and range, bias_correction none|independent, target, opset); any other set to a value
        other than its data-free default would be silently ignored: a usage error naming the flags."""
        ignored = []
        for f in dataclasses.fields(self):
            value, reads = getattr(self, f.name), f.metadata["data_free"]
            if (reads is False and value != _default(f, data_free=True)) or (
                isinstance(reads, tuple) and value not in reads
            ):
                ignored.append(flag_of(f.name, value))
        if self.percentile != _FIELDS["percentile"].default and self.weight_range is not RangeMethod.PERCENTILE:
            ignored.append("--percentile (without --weight-range percentile)")
        if ignored:
            raise UsageError(
                f"--data-free ignores {', '.join(ignored)}: drop {'it' if len(ignored) == 1 else 'them'} "
                f"(data-free mode reads {', '.join(_data_free_flags())})"
            )

    def _check_mixed_precision(self) -> None:
        from onnxbc.solvers.schemes import Scheme  # here: solvers import nothing from options, keep it so

        if self.avg_bits is not None and self.max_size is not None:
            raise UsageError("--avg-bits and --max-size exclude each other: give one budget")
        if not self.candidates or any(b not in CANDIDATE_BITS for b in self.candidates):
            raise UsageError(f"--candidates takes bit widths among {CANDIDATE_BITS}, got {self.candidates}")
        if self.avg_bits is not None and not min(self.candidates) <= self.avg_bits <= max(self.candidates):
            raise UsageError(
                f"--avg-bits {self.avg_bits:g} is outside the candidates' range "
                f"[{min(self.candidates)}, {max(self.candidates)}]"
            )
        if self.max_size is not None and self.max_size <= 0:
            raise UsageError(f"--max-size must be a positive size, got {self.max_size}")
        if self.budget and self.weights is WeightType.NONE:
            raise UsageError("--avg-bits/--max-size choose weight bits: they need quantized weights")
        if self.block_candidates:
            if self.max_size is None:
                raise UsageError(
                    "--block-candidates needs --max-size: blocks cost scale bytes, which --avg-bits does not count"
                )
            if any(b < 0 or b % 16 for b in self.block_candidates):
                raise UsageError(
                    f"--block-candidates takes 0 (per channel) or multiples of 16, got {self.block_candidates}"
                )
            if self.target is Target.TENSORRT or self.per_tensor_weights:
                raise UsageError(
                    "--block-candidates is for --target onnxruntime with per-channel scales: give one --block-size"
                )
        if self.scheme != "auto" and self.scheme not in {s.value for s in Scheme}:
            choices = ", ".join([*(s.value for s in Scheme), "auto"])
            raise UsageError(f"--scheme must be one of {choices}, got {self.scheme!r}")
        if self.int32_bias and self.target is Target.TENSORRT:
            raise UsageError("--int32-bias is for ONNX Runtime: TensorRT takes float biases")
        if self.int32_bias and self.activations is ActivationType.NONE:
            raise UsageError("--int32-bias needs quantized activations (the bias scale is s_x * s_w)")
        if self.emulate and self.target is Target.TENSORRT:
            raise UsageError("--emulate writes float weights that only simulate a scheme: not for --target tensorrt")

    @property
    def int2_storage(self) -> bool:
        """2-bit weights stored as int2 (opset 25, ONNX Runtime), not in an int4 container."""
        return self.target is Target.ONNXRUNTIME and (self.opset or 0) >= 25

    @property
    def budget(self) -> bool:
        """A size budget is set: each weight's bits are chosen (``onnxbc.precision``)."""
        return self.avg_bits is not None or self.max_size is not None

    @property
    def low_bit_weights(self) -> bool:
        """Some weight may get fewer than 8 bits (int4 container)."""
        return self.weights.int4_container or (self.budget and min(self.candidates) <= 4)

    @property
    def required_opset(self) -> int:
        """The lowest ai.onnx opset that can express the chosen quantization."""
        if (
            self.low_bit_weights
            or self.block_size
            or any(self.block_candidates)
            or (self.data_free and self.next_weights.int4_container)
        ):
            return 21
        if self.activations in (ActivationType.INT16, ActivationType.INT4):
            return 21
        return 13


_FIELDS = {f.name: f for f in dataclasses.fields(CompressOptions)}


def option_groups() -> dict[OptionGroup, tuple[str, ...]]:
    """``CompressOptions`` field names by group, in declaration order."""
    return {g: tuple(name for name, f in _FIELDS.items() if f.metadata["group"] is g) for g in OptionGroup}


def flag_of(name: str, value: Any = None) -> str:
    """The command-line spelling of ``CompressOptions.<name>`` set to ``value``: the side of a switch
    (``--no-smoothing``), an enum, string or path with its value (``--bias-correction sequential``), else the
    flag."""
    flag = _FIELDS[name].metadata["flag"]
    if "/" in flag:
        on, off = flag.split("/")
        return on if value or value is None else off
    if isinstance(value, enum.Enum):
        return f"{flag} {value.value}"
    if isinstance(value, (str, Path)):
        return f"{flag} {value}"
    return flag


def _default(f: dataclasses.Field, data_free: bool) -> Any:
    return f.metadata["by_mode"][data_free] if "by_mode" in f.metadata else f.default


def _data_free_flags() -> list[str]:
    flags = []
    for name, f in _FIELDS.items():
        reads = f.metadata["data_free"]
        if name == "data_free" or reads is False:
            continue
        flag = flag_of(name)
        flags.append(f"{flag} {'|'.join(v.value for v in reads)}" if isinstance(reads, tuple) else flag)
    return flags


def _check_policy(options: CompressOptions) -> None:
    """Read ``--policy`` now, so that a bad file or a budget the flags contradict stops before any work."""
    try:
        stat = Path(options.policy).stat()
    except OSError:
        stat = None  # load_policy says why it cannot read it
    stamp = (stat.st_mtime_ns, stat.st_size) if stat is not None else None
    _load_policy(str(options.policy), stamp).check_flags(options)


@functools.lru_cache(maxsize=8)  # options are rebuilt often (dataclasses.replace): read each file version once
def _load_policy(path: str, stamp: tuple[int, int] | None) -> Policy:
    from onnxbc.policy import load_policy  # here: policy imports this module

    return load_policy(path)


class ErrorMetric(str, enum.Enum):
    """How far a model's output is from a reference output (``onnxbc check --metric``).

    ``cosine``: 1 - mean per-sample cosine similarity; ``rel-mse``: sum of squared errors over the sum of
    squared reference values; ``max-abs``: the largest absolute difference.
    """

    COSINE = "cosine"
    REL_MSE = "rel-mse"
    MAX_ABS = "max-abs"


class OutputFormat(str, enum.Enum):
    """``onnxbc check --format``: text for people, JSON and JUnit XML for CI."""

    TEXT = "text"
    JSON = "json"
    JUNIT = "junit"


@dataclasses.dataclass(frozen=True)
class CheckOptions:
    """What ``onnxbc check`` checks besides the graph itself: the target's rules, and the numerics
    against a float reference on ``data`` (``reference``, ``data`` and ``max_error`` go together)."""

    target: Target = Target.ONNXRUNTIME
    device: Device = Device.AUTO
    reference: Any = None  # the float model: a path, or in memory (onnxbc.held)
    data: DataOptions | None = None
    max_error: float | None = None
    metric: ErrorMetric = ErrorMetric.REL_MSE
    exact: bool = False  # numerics with ONNX Runtime's QDQ fusions off (the graph as written)
    ignore: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.reference is not None and (self.data is None or self.max_error is None):
            raise UsageError("--reference needs --data PATH and --max-error X")
        if self.max_error is not None and self.reference is None:
            raise UsageError("--max-error needs --reference FLOAT.onnx (and --data PATH)")
        if self.max_error is not None and not self.max_error >= 0:
            raise UsageError(f"--max-error must be >= 0, got {self.max_error}")


def _coerce_enums(options: object) -> None:
    """Enum fields given as their values (``bias_correction="none"`` from Python) become the enum members
    that the pipeline compares by identity; an unknown value is a UsageError naming the option."""
    for field, kind in _enum_fields(type(options)).items():
        value = getattr(options, field)
        if value is not None and not isinstance(value, kind):
            try:
                object.__setattr__(options, field, kind(value))
            except ValueError:
                allowed = ", ".join(str(m.value) for m in kind)
                raise UsageError(f"{field.replace('_', '-')} must be one of {allowed}, not {value!r}") from None


@functools.cache
def _enum_fields(cls: type) -> dict[str, type[enum.Enum]]:
    """The fields of dataclass ``cls`` typed with one enum (options are built often: resolved once)."""
    fields = {}
    for name, hint in typing.get_type_hints(cls).items():
        kinds = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]  # X | None: X
        if len(kinds) == 1 and isinstance(kinds[0], type) and issubclass(kinds[0], enum.Enum):
            fields[name] = kinds[0]
    return fields
