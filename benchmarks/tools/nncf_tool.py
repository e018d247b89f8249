"""NNCF on the ONNX model: ``nncf.quantize`` for W8A8, ``nncf.compress_weights`` for weight-only int4.

nncf.quantize: default settings (preset PERFORMANCE: symmetric int8 weights per channel and activations per
tensor; fast bias correction on; MinMax-type range estimators), the shared calibration samples one by one as
``nncf.Dataset`` items (its documented usage), ``subset_size`` = all of them. ``model_type`` is
``nncf.ModelType.TRANSFORMER`` for the transformer rows: NNCF then runs SmoothQuant first (ONNX backend
included), uses preset MIXED (asymmetric activations) and leaves Add/Sub/Div/Pow/ReduceMean/... inputs float.
Its ONNX backend quantizes weights to 8 bits only (asking for 4 bits through the advanced parameters fails
its hardware-config check) and has no blocks.

nncf.compress_weights: mode INT4_SYM, group_size 128, ratio 1.0, data-free (its default: AWQ, scale estimation
and GPTQ are off unless asked for, and with ratio 1.0 there is no mixed-precision choice to make). NNCF keeps
embeddings and the last layer in int8 (per channel, asymmetric) by default; its ONNX backend writes MatMulNBits.
It has no 3-bit mode. Where 128 does not divide a weight's input dim, NNCF refuses by default; the row then
uses its documented ``group_size_fallback_mode=ADJUST`` (the largest power of two that divides, down to 32;
int8 below that) and says so.

Where NNCF fails on the graph as exported (its ONNX backend expects every weight to be an initializer;
SmolLM2's tied LM head is ``Transpose(embedding)``), the row is quantized again after ORT's
``quant_pre_process`` (which folds such constants) and says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.settings import Setting, calibration_arrays, sample_count
from benchmarks.tools import NotApplicable, Result, at_least_opset
from benchmarks.tools.ort import pre_process
from benchmarks.zoo.common import BenchModel

log = logging.getLogger("benchmarks.tools.nncf")


def quantize(
    bench: BenchModel,
    setting: Setting,
    out_path: Path,
    *,
    model_type: str | None = None,
    preset: str | None = None,
    smooth_quant: bool = True,
) -> Result | NotApplicable:
    """``preset`` (a ``nncf.QuantizationPreset`` name) and ``smooth_quant=False`` (MatMul alpha -1) are for
    the ablations; the matrix rows use NNCF's defaults."""
    if setting.weight_only:
        return _compress_weights(bench, setting, out_path)
    return _quantize(bench, setting, out_path, model_type, preset, smooth_quant)


def _quantize(
    bench: BenchModel, setting: Setting, out_path: Path, model_type: str | None, preset: str | None, smooth_quant: bool
) -> Result | NotApplicable:
    import nncf
    import onnx
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    if setting.weight_bits != 8:
        return NotApplicable(
            "nncf.quantize (ONNX) quantizes weights to 8 bits only: 4-bit weight parameters fail its "
            "hardware-config check; int4 is weight-only (compress_weights)"
        )
    arrays = calibration_arrays(bench)
    n = sample_count(arrays)
    items = [{k: v[i : i + 1] for k, v in arrays.items()} for i in range(n)]
    kwargs = {}
    if model_type == "transformer":
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    if preset:
        kwargs["preset"] = getattr(nncf.QuantizationPreset, preset)
    if not smooth_quant:
        alphas = AdvancedSmoothQuantParameters(matmul=-1)
        kwargs["advanced_parameters"] = AdvancedQuantizationParameters(smooth_quant_alphas=alphas)
    notes: list[str] = []

    def attempt(source: Path):
        return nncf.quantize(onnx.load(str(source)), nncf.Dataset(items), subset_size=n, **kwargs)

    quantized = _folded_if_needed(attempt, bench, out_path, notes)
    _save(quantized, out_path)
    return Result(out_path, tuple(notes), {"calibration_samples": n, "model_type": model_type or "default"})


def _compress_weights(bench: BenchModel, setting: Setting, out_path: Path) -> Result | NotApplicable:
    import nncf
    import onnx
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters

    if setting.weight_bits != 4:
        return NotApplicable(f"compress_weights has no {setting.weight_bits}-bit mode (int4, int8, fp formats only)")
    if not setting.block_size:
        return NotApplicable("no per-channel weight-only setting at 4 bits in this matrix")
    source, notes = at_least_opset(bench.onnx_path, out_path, 13)
    options = {"mode": nncf.CompressWeightsMode.INT4_SYM, "group_size": setting.block_size, "ratio": 1.0}

    def attempt(path: Path):
        try:
            return nncf.compress_weights(onnx.load(str(path)), **options)
        except nncf.InvalidGroupSizeError as e:  # an input dim that is not a multiple of the group size
            log.warning("compress_weights refuses group size %d (%s); retrying with ADJUST", setting.block_size, e)
            adjust = AdvancedCompressionParameters(group_size_fallback_mode=nncf.GroupSizeFallbackMode.ADJUST)
            compressed = nncf.compress_weights(onnx.load(str(path)), **options, advanced_parameters=adjust)
            notes.append(
                f"group size {setting.block_size} does not divide some input dims: NNCF's group_size_fallback_mode "
                "ADJUST gave those weights smaller groups (or int8)"
            )
            return compressed

    compressed = _folded_if_needed(attempt, bench, out_path, notes, source)
    _save(compressed, out_path)
    ops = [n.op_type for n in compressed.graph.node]
    notes.append("data-free; embeddings and last layer kept int8 by NNCF's default")
    doubled = _biases_added_twice(compressed)
    if doubled:
        notes.append(
            f"NNCF defect: {doubled} MatMulNBits take the bias as an input while the original bias Add stays, "
            "so those biases are added twice"
        )
    info = {"matmulnbits_nodes": ops.count("MatMulNBits"), "dequantize_nodes": ops.count("DequantizeLinear")}
    return Result(out_path, tuple(notes), {**info, "biases_added_twice": doubled})


def _folded_if_needed(
    attempt: Callable[[Path], Any], bench: BenchModel, out_path: Path, notes: list[str], source: Path | None = None
) -> Any:
    """``attempt(source)`` (default: the FP32 model); where NNCF fails on that graph, again after ORT's
    ``quant_pre_process``.

    NNCF's ONNX backend expects every weight to be an initializer: a tied LM head (``MatMul(x,
    Transpose(embedding))``, SmolLM2) fails in SmoothQuant and in compress_weights. A user folds such constants
    first; ``quant_pre_process`` does (ORT's constant folding), as for the ORT rows.
    """
    try:
        return attempt(source or bench.onnx_path)
    except Exception as e:  # NNCF raises many kinds; the retry below re-raises if the cause was elsewhere
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()
        log.warning("NNCF failed on the exported graph (%s); retrying after quant_pre_process", why)
        folded, pre_notes = pre_process(bench, out_path, per_channel_qdq=True)
        if folded == bench.onnx_path:
            raise
        notes += [f"NNCF failed on the exported graph ({why}); run again after ORT's quant_pre_process", *pre_notes]
        return attempt(folded)


def _biases_added_twice(model) -> int:
    """MatMulNBits nodes with a bias input whose output also feeds an Add of that same bias."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    count = 0
    for node in model.graph.node:
        if node.op_type != "MatMulNBits" or len(node.input) < 6 or not node.input[5]:
            continue
        bias = node.input[5]
        count += any(c.op_type == "Add" and bias in c.input for c in consumers.get(node.output[0], []))
    return count


def _save(model, out_path: Path) -> None:
    import onnx

    large = model.ByteSize() > 2**31 - 2**26 if hasattr(model, "ByteSize") else False
    onnx.save(model, str(out_path), save_as_external_data=large, location=out_path.name + ".data")
