"""Data-free mode on the Fashion-MNIST CNN with BatchNormalization kept: plain data-free rounding vs DF-MPC +
data-free bias correction, beside calibrated onnxbc (weight-only) at the same bits.

    .venv/bin/python -m benchmarks.datafree            # prints the table, writes benchmarks/results/datafree.json

Accuracy: top-1 on models/data/fashion_eval.npz (1000 test images), computed as the graph defines it (ONNX
Runtime with its QDQ fusions off), as models/fashion_demo.py does; ``rel_mse``: logit MSE / logit power
against FP32 on the same images. Calibrated onnxbc uses models/data/fashion_calib.npz (256 training images).
The ablation rows switch one half of the data-free compensation off by patching the module (measurement only).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import onnxruntime as ort

import onnxbc
from onnxbc.solvers import dfmpc

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "fashion_cnn_bn.onnx"
EVAL = ROOT / "models" / "data" / "fashion_eval.npz"
CALIB = ROOT / "models" / "data" / "fashion_calib.npz"
RESULTS = Path(__file__).resolve().parent / "results" / "datafree.json"
BITS = {2: onnxbc.WeightType.INT2, 3: onnxbc.WeightType.INT3, 4: onnxbc.WeightType.INT4}


def logits(model: Path, images: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


@contextlib.contextmanager
def ablation(kind: str) -> Iterator[None]:
    """``factors-only``: no data-free bias correction; ``bias-only``: every factor 1."""
    if kind == "factors-only":
        with mock.patch("onnxbc.datafree.input_mean", lambda t, statistics: "ablation: bias correction off"):
            yield
    elif kind == "bias-only":
        with mock.patch.object(dfmpc, "factors", lambda w, w_hat: np.ones(len(w))):
            yield
    else:
        yield


def run(name: str, options: onnxbc.CompressOptions, data, workdir: Path, kind: str = "") -> tuple[Path, dict]:
    out = workdir / f"{name}.onnx"
    with ablation(kind):
        result = onnxbc.compress(MODEL, out, data=data, options=options, force=True)
    return out, result.report.to_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, nargs="*", default=[2, 3, 4])
    args = parser.parse_args()
    with np.load(EVAL) as data:
        images, labels = data["input"], data["labels"]
    reference = logits(MODEL, images)
    rows = []

    def measure(label: str, bits: int, path: Path, report: dict) -> None:
        out = logits(path, images)
        row = {
            "method": label,
            "low_bits": bits,
            "top1": float(np.mean(out.argmax(axis=1) == labels)),
            "rel_mse": float(np.square(out - reference).sum() / np.square(reference).sum()),
            "bytes": path.stat().st_size,
            "weight_bits": {r["name"]: r["weight"]["bits"] for r in report["layers"] if r.get("weight")},
        }
        pairs = report["compensation"].get("pairs")
        if pairs:
            row["factors"] = [[p["factors"]["min"], p["factors"]["max"]] for p in pairs]
            row["expected_weight_error_reduction"] = [p["expected_error_reduction"] for p in pairs]
        rows.append(row)
        print(f"{label:<58} {bits}  top-1 {row['top1']:.1%}  rel-MSE {row['rel_mse']:.3e}  {row['bytes'] / 1e3:.0f} kB")

    calib = onnxbc.DataOptions(CALIB, samples=256, batch_size=64)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32 = float(np.mean(reference.argmax(axis=1) == labels))
        print(f"FP32 {MODEL.name}: top-1 {fp32:.1%}, {MODEL.stat().st_size / 1e3:.0f} kB")
        for b in args.bits:
            low = BITS[b]
            variants = [
                ("data-free plain rounding, low b / next int8", dict(next_weights=onnxbc.WeightType.INT8), "none", ""),
                ("data-free DF-MPC + BC, low b / next int8", dict(next_weights=onnxbc.WeightType.INT8), "on", ""),
                ("  ablation: factors only, low b / next int8", dict(next_weights=onnxbc.WeightType.INT8), "on",
                 "factors-only"),
                ("  ablation: bias correction only, low b / next int8", dict(next_weights=onnxbc.WeightType.INT8),
                 "on", "bias-only"),
                ("data-free plain rounding, low b / next int4", dict(next_weights=onnxbc.WeightType.INT4), "none", ""),
                ("data-free DF-MPC + BC, low b / next int4", dict(next_weights=onnxbc.WeightType.INT4), "on", ""),
                ("data-free plain rounding, all layers b", dict(next_weights=low), "none", ""),
                ("data-free DF-MPC + BC, all layers b", dict(next_weights=low), "on", ""),
                ("data-free plain rounding, per-tensor, low b / next int8",
                 dict(next_weights=onnxbc.WeightType.INT8, per_tensor_weights=True), "none", ""),
                ("data-free DF-MPC + BC, per-tensor, low b / next int8",
                 dict(next_weights=onnxbc.WeightType.INT8, per_tensor_weights=True), "on", ""),
            ]  # fmt: skip
            for label, extra, mode, kind in variants:
                bc = onnxbc.BiasCorrection.NONE if mode == "none" else onnxbc.BiasCorrection.INDEPENDENT
                options = onnxbc.CompressOptions(weights=low, data_free=True, bias_correction=bc, **extra)
                path, report = run(f"df_{b}_{len(rows)}", options, None, work, kind)
                measure(label, b, path, report)
            for label, bc in (
                ("calibrated onnxbc, all layers b, no compensation", onnxbc.BiasCorrection.NONE),
                ("calibrated onnxbc, all layers b, BC (default)", onnxbc.BiasCorrection.INDEPENDENT),
            ):
                options = onnxbc.CompressOptions(
                    weights=low, activations=onnxbc.ActivationType.NONE, bias_correction=bc, device=onnxbc.Device.CPU
                )
                path, report = run(f"cal_{b}_{len(rows)}", options, calib, work)
                measure(label, b, path, report)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"model": str(MODEL.relative_to(ROOT)), "fp32_top1": fp32, "rows": rows}, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
