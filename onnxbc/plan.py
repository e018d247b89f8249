"""The quantization plan: every graph edit ``compress`` will make, as plain data keyed by names.

Solvers fill it; the rewrite passes apply all of it at once; calibration probes read it to build the
quantized shadow of each layer. It holds no graph objects, so it can be inspected, tested and reported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from onnxbc.calibration import memory
from onnxbc.solvers.quant import Granularity, chunks, dequantize, expand_scale, scale_part


@dataclasses.dataclass(frozen=True)
class WeightQuant:
    """An initializer replaced by integer codes and a DequantizeLinear (or, for a scheme that is not codes
    times a scale, ``emulated``: float values that only simulate it, with no saving)."""

    source: str
    codes: np.ndarray  # in the storage dtype (int8, int4, uint4 with a zero point, ...)
    scale: np.ndarray  # float32, DequantizeLinear layout
    granularity: Granularity
    bits: int  # logical bits (codes may use fewer levels than the container)
    method: str
    scheme: str = "uniform"  # solvers.schemes.Scheme value
    rounding: str = "nearest"  # or "gptq"
    zero_point: np.ndarray | None = None  # affine scheme: in the codes' dtype, the layout of ``scale``
    emulated: np.ndarray | None = None  # float weight values written instead of codes

    def dequantized(self) -> np.ndarray:
        """The weight values the model computes with (float32)."""
        if self.emulated is not None:
            return np.asarray(self.emulated, np.float32)
        values = np.empty(self.codes.shape, np.float32)  # filled a part at a time: no whole-size temporaries
        for index, part in self.dequantized_parts(0):
            values[index] = part
        return values

    def dequantized_parts(self, axis: int) -> Iterator[tuple[tuple[slice, ...], np.ndarray]]:
        """``dequantized()`` in chunks along ``axis`` (``quant.chunks``), each with its index into the weight: a
        vocabulary's embedding table is hundreds of MB, and a whole float copy would be held beside it."""
        shape = self.codes.shape if self.emulated is None else self.emulated.shape
        for index, start, stop in chunks(shape, axis, self.granularity):
            if self.emulated is not None:
                yield index, np.asarray(self.emulated[index], np.float32)
                continue
            codes = self.codes[index].astype(np.float32)
            if self.zero_point is not None:
                zero = scale_part(self.zero_point, self.granularity, axis, start, stop).astype(np.float32)
                codes -= expand_scale(zero, codes.shape, self.granularity)
            yield (
                index,
                dequantize(codes, scale_part(self.scale, self.granularity, axis, start, stop), self.granularity),
            )

    def parked(self, parking: memory.Parking) -> WeightQuant:
        """The same, its codes (and emulated values) kept in a file while unused (``memory.Parking``)."""
        emulated = None if self.emulated is None else parking.park(self.emulated)
        return dataclasses.replace(self, codes=parking.park(self.codes), emulated=emulated)

    @property
    def stored_bits(self) -> int:
        """Bits per weight in the file: the container's width (int4 holds 4- and 3-bit codes)."""
        if self.emulated is not None:
            return self.emulated.dtype.itemsize * 8
        return {"int4": 4, "uint4": 4, "int2": 2}.get(self.codes.dtype.name, self.codes.dtype.itemsize * 8)


@dataclasses.dataclass(frozen=True)
class ActivationQuant:
    """A float tensor passed through QuantizeLinear -> DequantizeLinear before the layers that read it."""

    value: str
    scale: float
    zero_point: int
    dtype: np.dtype  # int8 or uint8 codes
    amax: float
    method: str
    float_dtype: np.dtype = np.dtype(np.float32)  # type of the tensor being quantized (scale type)


@dataclasses.dataclass(frozen=True)
class ConstantEdit:
    """Divide (or, for a divisor, multiply) the constant ``node.inputs[index]`` by a smoothing's factors at
    ``positions`` along ``axis`` (counted from the last, as the constant broadcasts), whose size is ``size``."""

    node: str
    index: int
    axis: int
    size: int
    positions: np.ndarray
    multiply: bool = False

    def apply(self, old: np.ndarray, factors: np.ndarray) -> np.ndarray:
        """The new constant (float64): ``old`` broadcast to ``size`` along the axis, then edited."""
        rank = max(old.ndim, -self.axis)
        padded = old.reshape((1,) * (rank - old.ndim) + old.shape)
        shape = list(padded.shape)
        shape[self.axis] = self.size
        new = np.broadcast_to(padded, shape).astype(np.float64)
        view = np.moveaxis(new, self.axis, -1)
        view[..., self.positions] *= factors if self.multiply else 1.0 / factors
        return new


@dataclasses.dataclass(frozen=True)
class Fold:
    """Where a smoothing's division went instead of a Mul (``onnxbc.channel_trace``): the layer whose weight
    scales and compensation carry it (its output channels, one per factor), and the constants to edit."""

    layer: str | None
    positions: np.ndarray | None
    constants: tuple[ConstantEdit, ...]
    path: tuple[str, ...]  # the ops walked through, for the report
    layer_op: str = ""

    def describe(self) -> str:
        through = f", through {', '.join(self.path)}" if self.path else ""
        if self.layer is not None:
            return f"folded into {self.layer_op} '{self.layer}' (weight scales and bias){through}"
        edited = ", ".join(f"'{c.node}'" for c in self.constants)
        return f"folded into the constants of {edited}{through}"


@dataclasses.dataclass(frozen=True)
class Smoothing:
    """Activation ``value`` divided per channel by ``factors`` before the layers that read it (whose weights
    were multiplied by the same factors along their input channels, see ``solvers.smooth``)."""

    value: str
    factors: np.ndarray
    channel_axis: int  # of the activation (negative: counted from the last axis)
    alpha: float
    rank: int | None = None  # of the activation, when the channel axis is counted from the front
    into: Fold | None = None  # where the division went instead of a Mul (``smoothing.fold_divisions``)

    def divisor_shape(self) -> tuple[int, ...]:
        """Shape of ``1 / factors`` broadcasting along the channel axis of the activation."""
        if self.channel_axis < 0:
            return (-1,) + (1,) * (-self.channel_axis - 1)
        return (-1,) + (1,) * (self.rank - self.channel_axis - 1)


@dataclasses.dataclass(frozen=True)
class BiasFold:
    """A compensation bias added to a layer's output (per output channel, or per position)."""

    target: str
    delta: np.ndarray
    output_channel_axis: int
    per_position: bool = False


@dataclasses.dataclass
class QuantPlan:
    weights: dict[str, WeightQuant] = dataclasses.field(default_factory=dict)
    activations: dict[str, ActivationQuant] = dataclasses.field(default_factory=dict)
    # value name -> (node name, input index) of each layer input that reads the quantized tensor
    activation_uses: dict[str, list[tuple[str, int]]] = dataclasses.field(default_factory=dict)
    biases: dict[str, BiasFold] = dataclasses.field(default_factory=dict)
    smoothing: dict[str, Smoothing] = dataclasses.field(default_factory=dict)
    # ONNX Runtime placement (``onnxbc.placement``): layer outputs quantized right after their producer for every
    # reader, so that DQ -> layer -> Q forms one of its integer kernels; planned activations (keys of
    # ``activations``) that every reader, not only the listed layers, reads quantized; and zero points of 0
    # written on weights (its QGemm fusion wants them)
    outputs: dict[str, ActivationQuant] = dataclasses.field(default_factory=dict)
    every_reader: set[str] = dataclasses.field(default_factory=set)
    weight_zero_points: bool = False
