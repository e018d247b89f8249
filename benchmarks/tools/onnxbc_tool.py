"""onnxbc through its Python API, with the shared calibration file and every sample in it.

``bias_correction`` none | independent (onnxbc's default) | sequential; ``bias_shape`` channel (default) |
position (fixed input shapes only); ``rounding`` auto (onnxbc's default: GPTQ or nearest per weight at 4 bits
and fewer, by held-out error) | nearest | gptq. Everything else is onnxbc's default (MSE-searched weight
scales, MSE activation ranges, attention MatMuls left float, 20 % of the samples held out to decide whether
compensation is kept), except ``device=cpu``: every tool calibrates on the CPU
here. Blocks: onnxbc blocks along each weight's input dim (MatMul/Gemm K; Conv input channels), so a dim that
is not a multiple of 128 ends in a partial block and a Conv with fewer than 128 input channels gets one scale
per (output channel, kernel position).
"""

from __future__ import annotations

from pathlib import Path

from benchmarks import graph_facts
from benchmarks.settings import Setting, calibration_arrays, sample_count
from benchmarks.tools import NotApplicable, Result
from benchmarks.zoo.common import BenchModel


def quantize(
    bench: BenchModel,
    setting: Setting,
    out_path: Path,
    *,
    bias_correction: str = "independent",
    bias_shape: str = "channel",
    rounding: str = "auto",
) -> Result | NotApplicable:
    import onnxbc

    if bias_shape == "position":
        dynamic = graph_facts.dynamic_input_dims(bench.onnx_path)
        if dynamic:
            return NotApplicable(f"position-shaped biases need fixed input shapes; dynamic: {', '.join(dynamic)}")
    weights = {8: onnxbc.WeightType.INT8, 4: onnxbc.WeightType.INT4, 3: onnxbc.WeightType.INT3}[setting.weight_bits]
    options = onnxbc.CompressOptions(
        weights=weights,
        activations=onnxbc.ActivationType.INT8 if setting.activations else onnxbc.ActivationType.NONE,
        block_size=setting.block_size,
        bias_correction=onnxbc.BiasCorrection(bias_correction),
        bias_shape=onnxbc.BiasShape(bias_shape),
        rounding=onnxbc.Rounding(rounding),
        device=onnxbc.Device.CPU,
    )
    n = sample_count(calibration_arrays(bench))
    result = onnxbc.compress(
        bench.onnx_path,
        out_path,
        data=onnxbc.DataOptions(path=bench.calib_path, samples=n),
        options=options,
        force=True,
    )
    report = result.report
    notes = _notes(report, setting, out_path)
    info = {
        "compensation": report.compensation,
        "passes_over_data": report.passes_over_data,
        "timings_s": report.timings_s,
        "device": report.device,
        "warnings": report.warnings,
        "layers_quantized": sum(r.status == "quantized" for r in report.layers),
        "layers_skipped": sum(r.status == "skipped" for r in report.layers),
    }
    return Result(result.output, tuple(notes), info)


def _notes(report, setting: Setting, out_path: Path) -> list[str]:
    notes = []
    comp = report.compensation
    if comp.get("applied"):
        chosen = comp["chosen"]  # the saved candidate: the plan, min-max scales, sequential, ...
        which = "" if chosen == "with_compensation" else f": {chosen.replace('_', ' ')}"
        notes.append(
            f"compensation kept{which} (held-out rel. MSE {comp['output_rel_mse_without']:.3g} -> "
            f"{comp['output_rel_mse']:.3g})"
        )
    elif "output_rel_mse_with" in comp:
        notes.append(
            f"compensation dropped: it raised the held-out rel. MSE ({comp['output_rel_mse_without']:.3g} -> "
            f"{comp['output_rel_mse_with']:.3g})"
        )
    if setting.block_size:
        partial, total = graph_facts.partial_blocks(out_path)
        if partial:
            notes.append(f"{partial} of {total} blocked weights: input dim not a multiple of {setting.block_size}")
    skipped = [r for r in report.layers if r.status == "skipped" and r.kind == "weighted"]
    if skipped:
        notes.append(f"{len(skipped)} weighted layer(s) left float")
    return notes
