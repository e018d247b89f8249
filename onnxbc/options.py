"""Typed options of every command: enums and frozen dataclasses, validated once on construction."""

from __future__ import annotations

import dataclasses
import enum
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


class ActivationType(str, enum.Enum):
    INT8 = "int8"
    NONE = "none"


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

    def __post_init__(self) -> None:
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
        if self.target is Target.TENSORRT and self.weights.int4_container:
            if self.block_size not in (64, 128):
                raise UsageError("TensorRT runs int4 weights only in blocks: add --block-size 64 or 128")
            if self.activations is not ActivationType.NONE:
                raise UsageError("TensorRT runs int4 weights only weight-only: add --activations none")
        if self.opset is not None and not 13 <= self.opset <= 25:
            raise UsageError(f"--opset must be between 13 and 25, got {self.opset}")

    @property
    def required_opset(self) -> int:
        """The lowest ai.onnx opset that can express the chosen quantization."""
        if self.weights.int4_container or self.block_size or (self.data_free and self.next_weights.int4_container):
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
