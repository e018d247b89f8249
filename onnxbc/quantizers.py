"""Turning options and statistics into the plan's quantizers (weights and activations)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxbc.options import CompressOptions, RangeMethod, Target, WeightType
from onnxbc.plan import ActivationQuant, WeightQuant
from onnxbc.solvers.quant import INT2, INT3, INT4, INT7, INT8, Granularity, IntFormat, quantize, weight_scale
from onnxbc.solvers.ranges import AbsHistogram, choose_range
from onnxbc.targets import WeightGroup


def weight_format(options: CompressOptions) -> IntFormat:
    low = {WeightType.INT4: INT4, WeightType.INT3: INT3, WeightType.INT2: INT2}
    return low.get(options.weights, INT7 if options.reduce_range else INT8)


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


def unsupported_weight(group: WeightGroup, options: CompressOptions) -> str | None:
    """Why the target runtime cannot take this weight at the chosen precision (None: it can)."""
    if options.target is not Target.TENSORRT or not options.weights.int4_container:
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
) -> WeightQuant:
    """Quantize ``w`` (the group's weight, or a rescaled copy of it) as the options say (``method`` overrides
    ``--weight-range``; ``auto`` starts from mse). ``importance`` (broadcastable to ``w``): the mean square of
    the input each weight multiplies, which turns the mse search into an output-error search."""
    fmt = weight_format(options)
    gran, _ = weight_granularity(group, options)
    method = method or options.weight_range
    if method is RangeMethod.AUTO:
        method = RangeMethod.MSE
    scale = weight_scale(
        w, fmt, gran, method.value, options.percentile, importance if method is RangeMethod.MSE else None
    )
    scale = representable_scale(scale, group.source.const_value.dtype)
    label = "mse (input-weighted)" if method is RangeMethod.MSE and importance is not None else method.value
    return WeightQuant(group.name, quantize(w, scale, fmt, gran), scale, gran, fmt.bits, label)


def activation_quant(name: str, hist: AbsHistogram, dtype: np.dtype, options: CompressOptions) -> ActivationQuant:
    """Per-tensor 8-bit quantizer for an activation with histogram ``hist`` of ``|x|``.

    Zero point 0. uint8 for non-negative tensors with --target onnxruntime (one more bit of resolution for
    ReLU outputs), int8 otherwise (TensorRT takes no uint8 activations inside the network).
    """
    unsigned = options.target is Target.ONNXRUNTIME and hist.nonnegative
    qmax = 255 if unsigned else 127
    amax = choose_range(hist, options.activation_range.value, qmax, options.percentile)
    scale = float(representable_scale(np.array(amax / qmax), ir.DataType.from_numpy(np.dtype(dtype))))
    codes = np.dtype(np.uint8 if unsigned else np.int8)
    return ActivationQuant(name, scale, 0, codes, amax, options.activation_range.value, np.dtype(dtype))


def representable_scale(scale: np.ndarray, dtype: ir.DataType) -> np.ndarray:
    """Round scales to the float type they will be stored in (fp16 models keep fp16 scales)."""
    np_type = dtype.numpy()
    tiny = float(np.finfo(np_type).tiny) if np.issubdtype(np_type, np.floating) else 1e-30
    return np.maximum(scale, tiny).astype(np_type).astype(np.float32)
