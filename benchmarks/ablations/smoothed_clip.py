"""Would wider clipping ranges on smoothed activations help end to end? onnxbc W8A8 with every smoothing
candidate's activation range multiplied by a factor.

    python -m benchmarks.ablations.smoothed_clip [--models minilm,chargpt] [--factors 1,1.25,1.5,2]

onnxbc picks the range of a smoothed activation by the MSE of the activation itself (``mse``, its default),
and ``layer_scale`` found that on MiniLM's ``gelu_1`` this sits just before a cliff in the reading layer's
error. Here every smoothing candidate's range (not the unsmoothed activations') is multiplied by each factor
before pass 2 measures and picks the candidates, so the held-out check still decides. W8A8 with
``--no-quantize-attention`` (the row closest to NNCF's placement), every calibration sample, CPU; each model is
measured as the matrix measures it (``benchmarks.worker evaluate``).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import onnxbc
import onnxbc.smoothing
from benchmarks.ablations.transformer_w8a8 import evaluate, metric_text
from benchmarks.settings import calibration_arrays, sample_count
from benchmarks.zoo import DEFAULT_CACHE, MODELS


def compress(bench, out: Path, factor: float) -> None:
    quant = onnxbc.smoothing.activation_quant

    def widened(*args, **kwargs):
        q = quant(*args, **kwargs)
        return dataclasses.replace(q, scale=q.scale * factor, amax=q.amax * factor)

    onnxbc.smoothing.activation_quant = widened
    try:
        options = onnxbc.CompressOptions(quantize_attention=False, device=onnxbc.Device.CPU)
        data = onnxbc.DataOptions(path=bench.calib_path, samples=sample_count(calibration_arrays(bench)))
        onnxbc.compress(bench.onnx_path, out, data=data, options=options, force=True)
    finally:
        onnxbc.smoothing.activation_quant = quant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm,chargpt")
    parser.add_argument("--factors", default="1,1.25,1.5,2")
    args = parser.parse_args()
    lines = ["| model | range factor | rel. MSE | task metric (exact) |", "|---|---|---|---|"]
    for name in args.models.split(","):
        bench = MODELS[name].prepare(DEFAULT_CACHE)
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            reference = work / "fp32.npy"
            evaluate(name, bench.onnx_path, reference, work / "fp32", save=True)
            for factor in (float(f) for f in args.factors.split(",")):
                out = work / f"x{factor}.onnx"
                compress(bench, out, factor)
                r = evaluate(name, out, reference, work / out.stem)
                lines.append(f"| {name} | {factor:g} | {r['rel_mse']:.3g} | {metric_text(r)} |")
                print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
