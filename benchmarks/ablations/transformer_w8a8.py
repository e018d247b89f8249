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
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx_ir as ir

from benchmarks.ablations.candidate_splits import layer_errors
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


def nncf_quantize(model: Path, calib: Path, out: Path, preset: str, smooth_quant: bool) -> None:
    import nncf
    import onnx
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    arrays = dict(np.load(calib))
    n = len(next(iter(arrays.values())))
    items = [{k: v[i : i + 1] for k, v in arrays.items()} for i in range(n)]
    advanced = (
        None
        if smooth_quant
        else AdvancedQuantizationParameters(smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1))
    )
    quantized = nncf.quantize(
        onnx.load(str(model)),
        nncf.Dataset(items),
        subset_size=n,
        model_type=nncf.ModelType.TRANSFORMER,
        preset=getattr(nncf.QuantizationPreset, preset),
        advanced_parameters=advanced,
    )
    onnx.save(quantized, str(out))


def evaluate(model: str, onnx_path: Path, reference: Path, work: Path, save: bool = False) -> dict:
    """`benchmarks.worker evaluate` on one model: its result JSON (rel_mse, metrics_exact, ...)."""
    result = work / f"{onnx_path.stem}.json"
    flag = "--save-reference" if save else "--reference"
    argv = ["-m", "benchmarks.worker", "evaluate", "--model", model, "--onnx", onnx_path, "--result", result]
    subprocess.run([sys.executable, *map(str, argv), flag, str(reference), "--latency-runs", "10"], check=True)
    return json.loads(result.read_text())


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
        n = len(next(iter(np.load(bench.calib_path).values())))
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(args.out or tmp) / name
            work.mkdir(parents=True, exist_ok=True)
            reference = work / "fp32.npy"
            fp32 = evaluate(name, bench.onnx_path, reference, work, save=True)
            lines.append(f"| {name} | FP32 | 0 | – | {fp32['latency_ms']:.1f} |")
            outputs = {}
            for row, flags in ONNXBC_ROWS.items():
                out = work / f"onnxbc_{len(outputs)}.onnx"
                cli = ["-m", "onnxbc", "compress", bench.onnx_path, "-o", out, "--data", bench.calib_path]
                cli += ["--samples", n, "--device", "cpu", "--force", "-q", *flags]
                subprocess.run([sys.executable, *map(str, cli)], check=True)
                outputs[row] = out
            for row, (preset, smooth_quant) in NNCF_ROWS.items():
                out = work / f"nncf_{len(outputs)}.onnx"
                nncf_quantize(bench.onnx_path, bench.calib_path, out, preset, smooth_quant)
                outputs[row] = out
            for row, out in outputs.items():
                r = evaluate(name, out, reference, work)
                metric = ", ".join(f"{k} {v:.4g}" for k, v in r["metrics_exact"].items())
                lines.append(f"| {name} | {row} | {r['rel_mse']:.3g} | {metric} | {r['latency_ms']:.1f} |")
                print(lines[-1], flush=True)
            if args.layers:
                layers += layer_table(name, bench, outputs[LAYER_ROWS[0]], outputs[LAYER_ROWS[1]])
    print("\n".join(lines + [""] + layers))


if __name__ == "__main__":
    main()
