"""Where does onnxbc lose to NNCF's transformer mode at W8A8? Each difference between the two, switched alone.

    python -m benchmarks.ablations.transformer_w8a8 [--models chargpt,minilm] [--out DIR] [--layers]

Rows, all W8A8 on the model's whole calibration file, CPU:
- ``onnxbc``: defaults (both attention MatMuls quantized, activation ranges by MSE);
- ``onnxbc --no-quantize-attention``: the attention MatMuls' inputs left float;
- ``onnxbc --no-quantize-attention --activation-range minmax``;
- ``onnxbc --no-smoothing``: no SmoothQuant-style smoothing;
- ``nncf transformer``: ``nncf.quantize(model_type=TRANSFORMER)`` (preset MIXED: asymmetric activations,
  SmoothQuant), as the matrix's ``nncf_transformer`` row;
- ``nncf transformer, preset PERFORMANCE``: the same with symmetric activations, as onnxbc and TensorRT use;
- ``nncf transformer, PERFORMANCE, no SmoothQuant``: its MatMul smoothing alpha set to -1 (off).

Each output is measured exactly as the matrix measures it (``benchmarks.worker evaluate``: eval split, graph
computed as written, rel. MSE of the first output against FP32; latency: ORT's default CPU session, 2 threads,
a batch of 8 eval inputs, median of 10 runs). Prints a markdown table. ``--layers`` adds, per model, each
MatMul/Gemm output's relative MSE on the first 64 eval samples for ``onnxbc --no-quantize-attention`` and NNCF's
symmetric transformer mode, to show where the gap between the two opens.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx_ir as ir

from benchmarks import runner
from benchmarks.ablations.candidate_splits import layer_errors
from benchmarks.settings import SETTINGS, calibration_arrays, sample_count
from benchmarks.tools import nncf_tool
from benchmarks.zoo import DEFAULT_CACHE, MODELS
from benchmarks.zoo.common import BenchModel

ONNXBC_ROWS = {
    "onnxbc": [],
    "onnxbc --no-quantize-attention": ["--no-quantize-attention"],
    "onnxbc --no-quantize-attention --activation-range minmax": [
        "--no-quantize-attention",
        "--activation-range",
        "minmax",
    ],
    "onnxbc --no-smoothing": ["--no-smoothing"],
}
NNCF_ROWS = {
    "nncf transformer": ("MIXED", True),
    "nncf transformer, preset PERFORMANCE": ("PERFORMANCE", True),
    "nncf transformer, PERFORMANCE, no SmoothQuant": ("PERFORMANCE", False),
}


def evaluate(name: str, onnx_path: Path, reference: Path, cell: Path, *, save: bool = False) -> dict:
    """``benchmarks.worker evaluate`` on one model file, as the matrix runs it (its result JSON and log in ``cell``)."""
    result = runner.evaluate(name, onnx_path, cell, reference, save=save, cache=DEFAULT_CACHE, timeout_s=3600, runs=10)
    if result.get("status") == "failed":
        raise SystemExit(f"{onnx_path}: {result['reason']}")
    return result


def compress_cli(bench: BenchModel, out: Path, flags: list[str]) -> None:
    """``onnxbc compress`` on the model's whole calibration file, CPU, with ``flags``."""
    n = sample_count(calibration_arrays(bench))
    cli = ["-m", "onnxbc", "compress", bench.onnx_path, "-o", out, "--data", bench.calib_path]
    cli += ["--samples", n, "--device", "cpu", "--force", "-q", *flags]
    subprocess.run([sys.executable, *map(str, cli)], check=True)


def metric_text(result: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in result["metrics_exact"].items())


LAYER_ROWS = ("onnxbc --no-quantize-attention", "nncf transformer, preset PERFORMANCE")


def layer_table(name: str, bench: BenchModel, ours: Path, theirs: Path) -> list[str]:
    """Each MatMul/Gemm output's rel. MSE in the two models (first 64 eval samples), in graph order."""
    fp32 = ir.load(bench.onnx_path)
    evaluation = np.load(bench.eval_path)
    feeds = {v.name: evaluation[v.name][:64] for v in fp32.graph.inputs}
    a, b = (layer_errors(ir.load(path), fp32, feeds) for path in (ours, theirs))
    nodes = {n.outputs[0].name: n for n in fp32.graph if n.op_type in ("MatMul", "Gemm")}
    lines = [f"| {name}: layer | {LAYER_ROWS[0]} | {LAYER_ROWS[1]} | ratio |", "|---|---|---|---|"]
    lines += [
        f"| {nodes[v].name} | {a[v]:.3g} | {b[v]:.3g} | {a[v] / max(b[v], 1e-30):.2f} |"
        for v in a
        if v in b and v in nodes
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="chargpt,minilm")
    parser.add_argument("--out", type=Path, help="keep the quantized models here (default: a temporary folder)")
    parser.add_argument("--layers", action="store_true", help="compare two rows layer by layer (see above)")
    args = parser.parse_args()
    lines = ["| model | row | rel. MSE | task metric (exact) | latency ms |", "|---|---|---|---|---|"]
    layers: list[str] = []
    for name in args.models.split(","):
        bench = MODELS[name].prepare(DEFAULT_CACHE)
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(args.out or tmp) / name
            work.mkdir(parents=True, exist_ok=True)
            reference = work / "fp32.npy"
            fp32 = evaluate(name, bench.onnx_path, reference, work / "fp32", save=True)
            lines.append(f"| {name} | FP32 | 0 | – | {fp32['latency_ms']:.1f} |")
            outputs = {}
            for row, flags in ONNXBC_ROWS.items():
                out = work / f"onnxbc_{len(outputs)}.onnx"
                compress_cli(bench, out, flags)
                outputs[row] = out
            for row, (preset, smooth_quant) in NNCF_ROWS.items():
                out = work / f"nncf_{len(outputs)}.onnx"
                nncf_tool.quantize(
                    bench, SETTINGS["w8a8"], out, model_type="transformer", preset=preset, smooth_quant=smooth_quant
                )
                outputs[row] = out
            for row, out in outputs.items():
                r = evaluate(name, out, reference, work / out.stem)
                lines.append(f"| {name} | {row} | {r['rel_mse']:.3g} | {metric_text(r)} | {r['latency_ms']:.1f} |")
                print(lines[-1], flush=True)
            if args.layers:
                layers += layer_table(name, bench, outputs[LAYER_ROWS[0]], outputs[LAYER_ROWS[1]])
    print("\n".join(lines + [""] + layers))


if __name__ == "__main__":
    main()
