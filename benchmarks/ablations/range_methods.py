"""Which activation range method should be the default? W8A8 with each method, on every bench model.

    python -m benchmarks.ablations.range_methods [--models fashion,chargpt,minilm,ppocr_rec] [--out FILE.json]

For each model and each ``--activation-range`` (minmax, percentile 99.99, mse) it compresses W8A8 twice
(compensation off, and the default independent compensation) and scores the result on the model's eval
split with its task metric, computed as the graph defines it (ONNX Runtime with its QDQ fusions off), plus
the output relative MSE from the report (held-out calibration samples). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

import onnxbc
from benchmarks.worker import EXACT_SESSION  # ORT computing the graph as written
from benchmarks.zoo import DEFAULT_CACHE, MODELS

METHODS = ("minmax", "percentile", "mse")


def model_and_metric(name: str):
    module = MODELS[name]
    bench = module.prepare(DEFAULT_CACHE)
    return bench.onnx_path, bench.calib_path, lambda path: module.evaluate(path, bench, session_config=EXACT_SESSION)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="fashion,chargpt,minilm,ppocr_rec")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model, calib, metric = model_and_metric(name)
            rows.append({"model": name, "method": "fp32", **metric(model)})
            for method in METHODS:
                for bc in ("none", "independent"):
                    options = onnxbc.CompressOptions(
                        activation_range=onnxbc.RangeMethod(method), bias_correction=onnxbc.BiasCorrection(bc)
                    )
                    out = Path(tmp) / f"{name}.{method}.{bc}.onnx"
                    result = onnxbc.compress(
                        model, out, data=onnxbc.DataOptions(path=calib), options=options, force=True
                    )
                    label = "with_compensation" if result.report.compensation.get("applied") else "without_compensation"
                    rel = float(np.mean([o["rel_mse"] for o in result.report.outputs[label].values()]))
                    rows.append({"model": name, "method": method, "bias_correction": bc, "rel_mse": rel, **metric(out)})
                    print(json.dumps(rows[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    metrics = [k for k in rows[0] if k not in ("model", "method")]
    print("\n| model | range | compensation | held-out rel. MSE | task metric |\n|---|---|---|---|---|")
    for r in rows:
        task = ", ".join(f"{k} {r[k]:.4f}" for k in r if k not in ("model", "method", "bias_correction", "rel_mse"))
        rel = f"{r['rel_mse']:.2e}" if "rel_mse" in r else "-"
        print(f"| {r['model']} | {r['method']} | {r.get('bias_correction', '-')} | {rel} | {task} |")
    del metrics


if __name__ == "__main__":
    main()
