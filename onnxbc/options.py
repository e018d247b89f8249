"""Typed options of every command: enums and frozen dataclasses, validated once on construction."""

from __future__ import annotations

import dataclasses
import enum
import functools
import typing
from pathlib import Path

from onnxbc.errors import UsageError


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


class RangeMethod(str, enum.Enum):
    """How a quantization range is chosen from the observed values."""

    MINMAX = "minmax"
    PERCENTILE = "percentile"
    MSE = "mse"
    AUTO = "auto"  # weights: measure mse and minmax scales per layer, keep the better


class BiasCorrection(str, enum.Enum):
    NONE = "none"
    INDEPENDENT = "independent"
    SEQUENTIAL = "sequential"


class BiasShape(str, enum.Enum):
    CHANNEL = "channel"
    POSITION = "position"


class Device(str, enum.Enum):
    AUTO = "auto"
    CUDA = "cuda"
    CPU = "cpu"


class Target(str, enum.Enum):
    """The runtime whose rules the output follows (see README, "Targets")."""

    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"


@dataclasses.dataclass(frozen=True)
class DataOptions:
    """Where calibration samples come from and how they are batched."""

    path: Path | None = None
    samples: int = 256
    batch_size: int = 16
    random: bool = False
    holdout_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.path is None and not self.random:
            raise UsageError("calibration data is needed: pass --data PATH (or --random-data to use noise)")
        if self.path is not None and self.random:
            raise UsageError("--data and --random-data exclude each other")
        if self.samples < 1:
            raise UsageError(f"--samples must be at least 1, got {self.samples}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise UsageError(f"--holdout-fraction must be in [0, 1), got {self.holdout_fraction}")


@dataclasses.dataclass(frozen=True)
class CompressOptions:
    """Everything ``compress`` needs besides the model and the data."""

    weights: WeightType = WeightType.INT8
    activations: ActivationType = ActivationType.INT8
    block_size: int = 0
    per_tensor_weights: bool = False
    reduce_range: bool = False
    weight_range: RangeMethod = RangeMethod.AUTO
    activation_range: RangeMethod = RangeMethod.MSE
    percentile: float = 99.99
    bias_correction: BiasCorrection = BiasCorrection.INDEPENDENT
    bias_shape: BiasShape = BiasShape.CHANNEL
    quantize_attention: bool = True
    smoothing: bool = True
    device: Device = Device.AUTO
    target: Target = Target.ONNXRUNTIME
    opset: int | None = None
    data_free: bool = False  # DF-MPC + data-free bias correction, no calibration data (onnxbc.datafree)
    next_weights: WeightType = WeightType.INT8  # --data-free: the layer after each compensated low-bit layer
    # Mixed precision (onnxbc.precision): a budget picks each weight's bits among the candidates.
    avg_bits: float | None = None
    max_size: int | None = None  # bytes of the written model file
    candidates: tuple[int, ...] = CANDIDATE_BITS
    price_compensated: bool = True  # price each candidate by its error left after bias compensation
    price_measured: bool = True  # scale the prices to the model output by running each weight's candidates
    block_candidates: tuple[int, ...] = ()  # --max-size: blocks to choose from (0: per channel)
    policy: Path | None = None  # per-layer overrides (onnxbc.policy)
    rounding: Rounding = Rounding.NEAREST
    scheme: str = "uniform"  # a solvers.schemes.Scheme value, or "auto" (per layer, least output error)
    emulate: bool = False  # allow schemes that are not integer codes x scale (written as float weights)
    int32_bias: bool = False  # Conv/Gemm biases as int32 codes + DequantizeLinear (passes.bias_int32)

    def __post_init__(self) -> None:
        _coerce_enums(self)
        self._check_mixed_precision()
        if self.data_free and self.weights is WeightType.NONE:
            raise UsageError("--data-free needs quantized weights: --weights int2|int3|int4|int8")
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
        if self.budget and self.data_free:
            raise UsageError("--avg-bits/--max-size need calibration data (they price layers on it), not --data-free")
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


class ErrorMetric(str, enum.Enum):
    """How far a model's output is from a reference output (``onnxbc check --metric``).

    ``cosine``: 1 - mean per-sample cosine similarity; ``rel-mse``: sum of squared errors over the sum of
    squared reference values; ``max-abs``: the largest absolute difference.
    """

    COSINE = "cosine"
    REL_MSE = "rel-mse"
    MAX_ABS = "max-abs"


class OutputFormat(str, enum.Enum):
    TEXT = "text"
    JSON = "json"
    JUNIT = "junit"


@dataclasses.dataclass(frozen=True)
class CheckOptions:
    """What ``onnxbc check`` checks besides the graph itself: the target's rules, and the numerics
    against a float reference on ``data`` (``reference``, ``data`` and ``max_error`` go together)."""

    target: Target = Target.ONNXRUNTIME
    device: Device = Device.AUTO
    reference: Path | None = None
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
        if not isinstance(value, kind):
            try:
                object.__setattr__(options, field, kind(value))
            except ValueError:
                allowed = ", ".join(str(m.value) for m in kind)
                raise UsageError(f"{field.replace('_', '-')} must be one of {allowed}, not {value!r}") from None


@functools.cache
def _enum_fields(cls: type) -> dict[str, type[enum.Enum]]:
    """The fields of dataclass ``cls`` typed with one enum (options are built often: resolved once)."""
    hints = typing.get_type_hints(cls)
    return {k: t for k, t in hints.items() if isinstance(t, type) and issubclass(t, enum.Enum)}
