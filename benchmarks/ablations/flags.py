"""onnxbc with any command-line flags on one zoo model, measured as the matrix measures its rows.

    python -m benchmarks.ablations.flags --model smollm2 --flags="--no-quantize-attention" \\
        --flags="--weights int4 --block-size 128 --activations none"

Each ``--flags`` is one row: ``onnxbc compress`` with the model's whole calibration file, ``--device cpu`` and
those flags, then ``benchmarks.worker evaluate`` (eval split, graph computed as written, rel. MSE of the first
output against FP32). For a question the matrix's fixed rows do not ask, such as a default that might change.
"""

from __future__ import annotations

import argparse
import shlex
import tempfile
from pathlib import Path

from benchmarks.ablations.transformer_w8a8 import compress_cli, evaluate, metric_text
from benchmarks.zoo import DEFAULT_CACHE, MODELS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=sorted(MODELS))
    parser.add_argument("--flags", action="append", required=True, help="onnxbc compress flags of one row")
    args = parser.parse_args()
    bench = MODELS[args.model].prepare(DEFAULT_CACHE)
    lines = ["| flags | rel. MSE | task metric (exact) | size MB |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        reference = work / "fp32.npy"
        evaluate(args.model, bench.onnx_path, reference, work / "fp32", save=True)
        for k, flags in enumerate(args.flags):
            out = work / f"row{k}.onnx"
            compress_cli(bench, out, shlex.split(flags))
            r = evaluate(args.model, out, reference, work / out.stem)
            lines.append(f"| `{flags}` | {r['rel_mse']:.3g} | {metric_text(r)} | {r['size_bytes'] / 1e6:.1f} |")
            print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
