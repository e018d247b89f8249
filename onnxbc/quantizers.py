"""Turning options and statistics into the plan's quantizers (weights and activations)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import ml_dtypes
import numpy as np
import onnx_ir as ir

from onnxbc.options import ActivationType, CompressOptions, RangeMethod, Target
from onnxbc.plan import ActivationQuant, WeightQuant
from onnxbc.solvers.quant import (
    INT2,
    INT2_PACKED,
    INT3,
    INT4,
    INT7,
    INT8,
    Granularity,
    IntFormat,
    quantize,
    weight_scale,
)
from onnxbc.solvers.ranges import AbsHistogram, choose_range
from onnxbc.targets import RECURRENT_OPS, WeightGroup

# (w, scale, fmt, granularity) -> codes: rounding other than to nearest (GPTQ)
Rounder = Callable[[np.ndarray, np.ndarray, IntFormat, Granularity], np.ndarray]
# Why recurrent weights stay float for TensorRT (also the ``trt.recurrent`` check rule's finding).
TENSORRT_RECURRENT = (
    "TensorRT: recurrent weights stay float (its ONNX parser runs the layer as a loop whose MatMuls read W and R; "
    "its explicit quantization is documented for weights dequantized right before a Conv/MatMul/Gemm, not "
    "across a loop boundary); --target onnxruntime quantizes them"
)


def weight_format(options: CompressOptions, bits: int | None = None) -> IntFormat:
    """The code range of ``bits``-bit weights (default: ``--weights``; 8 and 7 both mean int8, 7-bit codes
    with ``--reduce-range``)."""
    low = {4: INT4, 3: INT3, 2: INT2_PACKED if options.int2_storage else INT2}
    return low.get(options.weights.bits if bits is None else bits, INT7 if options.reduce_range else INT8)


def weight_granularity(group: WeightGroup, options: CompressOptions) -> tuple[Granularity, str | None]:
    """The scale layout for a weight group, and a note when the asked-for blocks are not possible."""
    if options.per_tensor_weights:
        return Granularity(None), None
    if options.block_size and group.input_axis is not None:
        return Granularity(group.input_axis, options.block_size), None
    note = (
        "input axis not traceable through the weight's Reshape: per channel, not blocks" if options.block_size else None
    )
    return Granularity(group.channel_axis), note


def like(wq: WeightQuant, options: CompressOptions) -> CompressOptions:
    """``options`` with ``wq``'s scale blocks (a policy or a size budget may have chosen them per weight)."""
    return dataclasses.replace(options, block_size=wq.granularity.block_size)


def unsupported_weight(group: WeightGroup, options: CompressOptions, bits: int | None = None) -> str | None:
    """Why the target runtime cannot take this weight at ``bits`` (default ``--weights``; None: it can)."""
    bits = options.weights.bits if bits is None else bits
    if options.target is not Target.TENSORRT:
        return None
    if any(t.op in RECURRENT_OPS for t in group.targets):
        return TENSORRT_RECURRENT
    if bits > 4:
        return None
    rank = len(group.source.const_value.shape)
    if any(t.op not in ("MatMul", "Gemm") for t in group.targets):
        return "TensorRT runs int4 weights only in MatMul/Gemm: left float"
    if group.input_axis is None or group.input_axis < rank - 2:
        return "TensorRT needs int4 blocks along one of the weight's last two axes, not traceable here: left float"
    return None


def weight_quant(
    group: WeightGroup,
    w: np.ndarray,
    options: CompressOptions,
    importance: np.ndarray | None = None,
    method: RangeMethod | None = None,
    bits: int | None = None,
    rounding: Rounder | None = None,
) -> WeightQuant:
    """Quantize ``w`` (the group's weight, or a rescaled copy of it) as the options say (``method`` overrides
    ``--weight-range``; ``auto`` starts from mse; ``bits`` overrides ``--weights``). ``importance``
    (broadcastable to ``w``): the mean square of the input each weight multiplies, which turns the mse search
    into an output-error search. ``rounding``: codes from the scales other than by rounding to nearest
    (GPTQ, ``onnxbc.precision``)."""
    fmt = weight_format(options, bits)
    gran, _ = weight_granularity(group, options)
    method = method or options.weight_range
    if method is RangeMethod.AUTO:
        method = RangeMethod.MSE
    scale = weight_scale(
        w, fmt, gran, method.value, options.percentile, importance if method is RangeMethod.MSE else None
    )
    scale = representable_scale(scale, group.source.const_value.dtype)
    label = "mse (input-weighted)" if method is RangeMethod.MSE and importance is not None else method.value
    codes = rounding(w, scale, fmt, gran) if rounding is not None else quantize(w, scale, fmt, gran)
    return WeightQuant(group.name, codes, scale, gran, fmt.bits, label)


# --activations -> (signed codes, unsigned codes)
_ACTIVATION_CODES = {
    ActivationType.INT8: (np.dtype(np.int8), np.dtype(np.uint8)),
    ActivationType.INT16: (np.dtype(np.int16), np.dtype(np.uint16)),
    ActivationType.INT4: (np.dtype(ml_dtypes.int4), np.dtype(ml_dtypes.uint4)),
}


def activation_quant(name: str, hist: AbsHistogram, dtype: np.dtype, options: CompressOptions) -> ActivationQuant:
    """Per-tensor quantizer (``--activations`` bits) for an activation with histogram ``hist`` of ``|x|``.

    Symmetric: the codes stand for ``[-amax, amax]``, or ``[0, amax]`` for a non-negative tensor with
    --target onnxruntime (one more bit of resolution for ReLU outputs; TensorRT takes no uint8 activations
    inside the network). With --target onnxruntime int8 activations are written as uint8 codes, with zero
    point 128 for a signed tensor (the same values as int8 codes with zero point 0): ONNX Runtime converts int8
    activations to uint8 itself on x86, but only where a QuantizeLinear has one DequantizeLinear, and an
    integer kernel needs its input and output codes of one type. A signed tensor mostly on one side of zero
    gets an offset range instead when its step is at most ``LOPSIDED`` of the symmetric one (``_lopsided``;
    measured at W8A8 on the benchmark models' eval splits: char-GPT 5.86e-5 -> 5.15e-5, MiniLM 7.89e-3 ->
    7.50e-3, PP-OCR 0.0280 -> 0.0199 rel. MSE; the ReLU CNN unchanged).
    """
    unsigned = options.target is Target.ONNXRUNTIME and hist.nonnegative
    codes = _ACTIVATION_CODES[options.activations][unsigned]
    qmax = int(ml_dtypes.iinfo(codes).max)
    amax = choose_range(hist, options.activation_range.value, qmax, options.percentile)
    float_type = ir.DataType.from_numpy(np.dtype(dtype))
    scale = float(representable_scale(np.array(amax / qmax), float_type))
    zero_point = 0
    if options.target is Target.ONNXRUNTIME and codes == np.dtype(np.int8):
        codes, zero_point = np.dtype(np.uint8), 128
        offset = _lopsided(hist, options, float_type)
        if offset is not None and offset[0] <= LOPSIDED * scale:
            scale, zero_point, amax = offset
    return ActivationQuant(name, scale, zero_point, codes, amax, options.activation_range.value, np.dtype(dtype))


LOPSIDED = 0.75  # an offset range replaces the symmetric one when its step is at most this fraction of it


def _lopsided(hist: AbsHistogram, options: CompressOptions, float_type: ir.DataType) -> tuple[float, int, float] | None:
    """uint8 codes from the smallest value seen to the clipping value of the ``|x|`` histogram at 255 steps,
    with the zero point where 0 falls: (scale, zero point, top), or None when the negative side is not the
    smaller one. For a tensor mostly on one side of zero (GELU, SiLU and HardSwish outputs reach at most 0.17,
    0.28 and 0.375 below it) the step is up to half the symmetric one's; ONNX Runtime's integer kernels take
    any zero point of uint8 activations."""
    low = hist.min_value
    top = choose_range(hist, options.activation_range.value, 255, options.percentile)
    if not (0 < -low < top):
        return None
    scale = float(representable_scale(np.array((top - low) / 255), float_type))
    zero_point = min(int(np.ceil(-low / scale)), 255)
    return scale, zero_point, top


def representable_scale(scale: np.ndarray, dtype: ir.DataType) -> np.ndarray:
    """Round scales to the float type they will be stored in (fp16 models keep fp16 scales)."""
    np_type = dtype.numpy()
    tiny = float(np.finfo(np_type).tiny) if np.issubdtype(np_type, np.floating) else 1e-30
    return np.maximum(scale, tiny).astype(np_type).astype(np.float32)
