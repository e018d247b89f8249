"""ONNX Runtime's own quantizers: ``quantize_static`` (QDQ) and, for weight-only int4, ``MatMulNBitsQuantizer``.

Both start from ORT's recommended pre-processing (``quant_pre_process``: symbolic shape inference, ORT graph
optimization, ONNX shape inference). Where symbolic shape inference fails (dynamic H/W in the OCR model) the
pre-processing is retried without it (its documented ``skip_symbolic_shape`` option), and where that fails
too the model is quantized as it is; the row says which.

quantize_static: QDQ format, symmetric int8 activations and weights (``ActivationSymmetric``,
``WeightSymmetric``), ``per_channel=True``, MinMax calibration over the shared calibration samples (batches of
16), default op types unless ``op_types`` is given. Batches of 16 got ``quantize_static`` killed for memory
on SmolLM2 (24 GB, 512 tokens a sample), so models over ``LARGE_MODEL_BYTES`` are calibrated one sample at a
time: the same min-max ranges (ORT reduces each batch to a min and a max and merges them). int4 weights
are ``QuantType.QInt4`` (per channel; ORT writes com.microsoft Q/DQ below opset 21). Blocks are ORT's
opset-21 block-wise QDQ (``extra_options`` ``BlockSize``); ORT blocks along the per-channel axis by default,
i.e. along the *output* dim of a MatMul, so each weight gets a ``TensorQuantOverrides`` axis that puts the
blocks along its input dim. ORT supports blocks for rank-2 weights only (not Conv).

MatMulNBitsQuantizer: symmetric int4 in blocks of 128 (RTN), QOperator format (the contrib op MatMulNBits,
``accuracy_level`` unset = float accumulation); it covers MatMul only (Gemm and Conv stay float) and has no
3-bit mode.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from benchmarks.settings import Setting, calibration_arrays, sample_count
from benchmarks.tools import NotApplicable, Result, at_least_opset, work_dir
from benchmarks.zoo.common import BenchModel

log = logging.getLogger("benchmarks.tools.ort")

CALIBRATION_BATCH = 16
# Above this FP32 file size quantize_static calibrates one sample at a time (see the module docstring).
LARGE_MODEL_BYTES = 256 * 2**20


def quantize(
    bench: BenchModel, setting: Setting, out_path: Path, *, op_types: Sequence[str] | None = None
) -> Result | NotApplicable:
    if setting.weight_only:
        return _matmul_nbits(bench, setting, out_path)
    return _static(bench, setting, out_path, op_types)


# --------------------------------------------------------------------------- pre-processing


def calibration_batch(bench, notes: list[str]) -> int:
    """Samples per calibration batch: ``CALIBRATION_BATCH``, or 1 for a large model (its calibration keeps
    every tensor of a batch; min-max ranges do not depend on the batching), noted in ``notes``."""
    if bench.onnx_path.stat().st_size > LARGE_MODEL_BYTES:
        notes.append("large model: calibration batches of 1 sample (same min-max ranges, less memory)")
        return 1
    return CALIBRATION_BATCH


def pre_process(bench: BenchModel, out_path: Path, *, per_channel_qdq: bool) -> tuple[Path, list[str]]:
    """The model after ``quant_pre_process`` (or as it is), and notes on what was not the plain recipe."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, notes = (bench.onnx_path, [])
    if per_channel_qdq:  # on opset 12, quantize_static writes DequantizeLinear(axis) that ORT then refuses to load
        source, notes = at_least_opset(bench.onnx_path, out_path, 13)
    target = work_dir(out_path) / "pre_processed.onnx"
    errors = []
    for skip_symbolic in (False, True):
        try:
            with contextlib.chdir(target.parent):  # it leaves sym_shape_infer_temp.onnx in the working directory
                quant_pre_process(str(source.resolve()), str(target.resolve()), skip_symbolic_shape=skip_symbolic)
        except Exception as e:  # ORT raises bare Exceptions here
            errors.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip())
            log.warning("quant_pre_process(skip_symbolic_shape=%s) failed: %s", skip_symbolic, errors[-1])
            continue
        if skip_symbolic:
            notes.append(f"quant_pre_process failed ({errors[0]}); pre-processed with skip_symbolic_shape=True")
        return target, notes
    notes.append(f"quant_pre_process failed ({'; '.join(errors)}); quantized without pre-processing")
    return source, notes


# --------------------------------------------------------------------------- quantize_static


class _Reader:
    """A CalibrationDataReader over the shared calibration samples, in batches."""

    def __init__(self, arrays: Mapping[str, np.ndarray], batch_size: int) -> None:
        self._arrays = arrays
        self._batches = self._iter(batch_size)

    def _iter(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        n = sample_count(dict(self._arrays))
        for start in range(0, n, batch_size):
            yield {k: v[start : start + batch_size] for k, v in self._arrays.items()}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _weight_input_axes(model_path: Path, op_types: Sequence[str] | None) -> dict[str, int]:
    """Initializer weight of each MatMul/Gemm -> the axis of its input dim (where blocks must run)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    axes: dict[str, int] = {}
    for node in model.graph.node:
        if op_types and node.op_type not in op_types:
            continue
        if node.op_type == "MatMul" and node.input[1] in inits and len(inits[node.input[1]].dims) == 2:
            axes[node.input[1]] = 0  # [K, N]
        elif node.op_type == "Gemm" and node.input[1] in inits:
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axes[node.input[1]] = 1 if trans_b else 0  # [N, K] or [K, N]
    return axes


def _static(
    bench: BenchModel, setting: Setting, out_path: Path, op_types: Sequence[str] | None
) -> Result | NotApplicable:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    weight_type = {8: QuantType.QInt8, 4: QuantType.QInt4}.get(setting.weight_bits)
    if weight_type is None:
        return NotApplicable(f"quantize_static has no {setting.weight_bits}-bit weight type")
    source, notes = pre_process(bench, out_path, per_channel_qdq=True)
    extra: dict[str, object] = {"ActivationSymmetric": True, "WeightSymmetric": True}
    if setting.block_size:
        if _has_conv_weights(source, op_types):
            return NotApplicable(
                "ORT block-wise QDQ (extra_options BlockSize) supports rank-2 weights only; this model has Conv weights"
            )
        axes = _weight_input_axes(source, op_types)
        extra["BlockSize"] = setting.block_size
        extra["TensorQuantOverrides"] = {name: [{"axis": axis}] for name, axis in axes.items()}
        notes.append(f"BlockSize {setting.block_size}, blocks along each weight's input dim (axis override)")
    arrays = calibration_arrays(bench)
    batch = calibration_batch(bench, notes)
    try:
        quantize_static(
            str(source),
            str(out_path),
            _Reader(arrays, batch),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types) if op_types else None,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=weight_type,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options=extra,
        )
    except NotImplementedError as e:  # ORT's way of saying "not for this weight" (blocks on rank != 2)
        if not setting.block_size:
            raise
        return NotApplicable(f"ORT block-wise QDQ: {str(e).splitlines()[0]}")
    return Result(out_path, tuple(notes), {"calibration_samples": sample_count(arrays), "calibration_batch": batch})


def _has_conv_weights(model_path: Path, op_types: Sequence[str] | None) -> bool:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    return any(
        n.op_type in ("Conv", "ConvTranspose") and n.input[1] in inits and (not op_types or n.op_type in op_types)
        for n in model.graph.node
    )


# --------------------------------------------------------------------------- MatMulNBits


def _matmul_nbits(bench: BenchModel, setting: Setting, out_path: Path) -> Result | NotApplicable:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    if setting.weight_bits != 4:
        return NotApplicable(f"MatMulNBits takes 2, 4 or 8 bits; no {setting.weight_bits}-bit weights")
    if not setting.block_size:
        return NotApplicable("MatMulNBits quantizes in blocks (QOperator format); no per-channel int4")
    source, notes = pre_process(bench, out_path, per_channel_qdq=False)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), bits=4, block_size=setting.block_size, is_symmetric=True)
    quantizer.process()
    model = quantizer.model.model
    converted = sum(n.op_type == "MatMulNBits" for n in model.graph.node)
    if not converted:
        return NotApplicable("no MatMul with a constant weight: MatMulNBits covers MatMul only (Gemm, Conv stay float)")
    left = sum(n.op_type in ("Gemm", "Conv", "ConvTranspose") for n in model.graph.node)
    if left:
        notes.append(f"{left} Gemm/Conv left float (MatMulNBits covers MatMul only)")
    quantizer.model.save_model_to_file(str(out_path), use_external_data_format=model.ByteSize() > 2**31 - 2**26)
    return Result(out_path, tuple(notes), {"matmulnbits_nodes": converted, "float_gemm_conv": left})
