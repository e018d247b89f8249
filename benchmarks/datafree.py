"""Data-free mode on the Fashion-MNIST CNN with BatchNormalization kept: plain data-free rounding vs DF-MPC +
data-free bias correction, beside calibrated onnxbc (weight-only) at the same bits; then PP-OCRv4 rec (BN folded
at export, HardSwish) and a MobileNetV2-like depthwise ReLU6 CNN built in code (``models/dw_cnn.py``).

    .venv-bench/bin/python -m benchmarks.datafree      # prints the tables, writes benchmarks/results/datafree.json

Accuracy: top-1 on models/data/fashion_eval.npz (1000 test images), computed as the graph defines it (ONNX
Runtime with its QDQ fusions off), as models/fashion_demo.py does; ``rel_mse``: logit MSE / logit power
against FP32 on the same images. Calibrated onnxbc uses models/data/fashion_calib.npz (256 training images).
The ablation rows switch one part of the data-free compensation off by patching the module (measurement only);
"factors not validated" applies every DF-MPC factor as before the validation existed.

PP-OCR (``--ppocr``, when ``python -m benchmarks.zoo prepare`` has cached it): line / character accuracy on the
zoo's 200 eval lines, QDQ fusions off. The depthwise CNN: random weights (He init), BatchNormalization
statistics set from the 256 Fashion calibration images (``dw_cnn.calibrate``), so they describe the inputs;
no labels mean anything, so it is measured by logit rel. MSE and top-1 agreement with FP32 on the 1000 eval
images, with BN kept, and folded beforehand (no statistics).
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
import onnx
import onnxruntime as ort

import onnxbc
from models import dw_cnn
from onnxbc import datafree
from onnxbc.solvers import dfmpc

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "fashion_cnn_bn.onnx"
EVAL = ROOT / "models" / "data" / "fashion_eval.npz"
CALIB = ROOT / "models" / "data" / "fashion_calib.npz"
RESULTS = Path(__file__).resolve().parent / "results" / "datafree.json"
PPOCR = Path(__file__).resolve().parent / ".cache" / "ppocr_rec"
BITS = {2: onnxbc.WeightType.INT2, 3: onnxbc.WeightType.INT3, 4: onnxbc.WeightType.INT4, 8: onnxbc.WeightType.INT8}


def logits(model: Path, images: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def _no_bias_correction(layer, model, targets) -> None:
    layer.bias_skip = "ablation: bias correction off"


@contextlib.contextmanager
def ablation(kind: str) -> Iterator[None]:
    """``factors-only``: no data-free bias correction; ``bias-only``: every factor 1; ``unvalidated``: every
    factor applied, unchecked (DF-MPC before the validation); ``before``: both unvalidated and factors-only."""
    if kind == "before":
        with ablation("unvalidated"), ablation("factors-only"):
            yield
    elif kind == "factors-only":
        with mock.patch.object(datafree, "_correct_bias", _no_bias_correction):
            yield
    elif kind == "bias-only":
        with mock.patch.object(dfmpc, "factors", lambda w, w_hat: np.ones(len(w))):
            yield
    elif kind == "unvalidated":
        with mock.patch.object(datafree, "_choose_factors", lambda *a: (a[3], {"decision": "ablation: unchecked"})):
            yield
    else:
        yield


def run(
    name: str, options: onnxbc.CompressOptions, data, workdir: Path, kind: str = "", model: Path = MODEL
) -> tuple[Path, dict]:
    out = workdir / f"{name}.onnx"
    with ablation(kind):
        result = onnxbc.compress(model, out, data=data, options=options, force=True)
    return out, result.report.to_dict()


def data_free(weights: int, next_weights: int, compensate: bool = True, **extra) -> onnxbc.CompressOptions:
    bc = onnxbc.BiasCorrection.INDEPENDENT if compensate else onnxbc.BiasCorrection.NONE
    return onnxbc.CompressOptions(
        weights=BITS[weights], next_weights=BITS[next_weights], data_free=True, bias_correction=bc, **extra
    )


def ppocr(work: Path) -> list[dict]:
    """PP-OCRv4 rec at --weights int4 (pairs' low layers), the rest int8: plain, unvalidated and validated DF-MPC."""
    from benchmarks.zoo import ppocr_rec
    from benchmarks.zoo.common import BenchModel

    _, bench = BenchModel.in_cache(PPOCR.parent, ppocr_rec.NAME, ppocr_rec.METRICS)
    config = {"session.disable_quant_qdq": "1"}
    rows = []
    for label, compensate, kind in (
        ("plain data-free rounding (--bias-correction none)", False, ""),
        ("DF-MPC factors unchecked, no bias correction (as before)", True, "before"),
        ("DF-MPC, factors not validated", True, "unvalidated"),
        ("DF-MPC, validated (default)", True, ""),
    ):
        path, report = run(f"ppocr_{len(rows)}", data_free(4, 8, compensate), None, work, kind, bench.onnx_path)
        metrics = ppocr_rec.evaluate(path, bench, providers=["CPUExecutionProvider"], session_config=config)
        pairs = report["compensation"]["pairs"]
        row = {"method": label, **metrics, "factors": [[p["factors"]["min"], p["factors"]["max"]] for p in pairs]}
        row["bias_corrected"] = len(report["compensation"]["bias_correction"]["layers"])
        rows.append(row)
        print(f"PP-OCR {label:<52} line {metrics['line_accuracy']:.3f}  char {metrics['char_accuracy']:.4f}")
    return rows


def depthwise_cnn(work: Path, images: np.ndarray, calib: np.ndarray) -> list[dict]:
    """The MobileNetV2-like CNN of models/dw_cnn.py on Fashion images: every layer at b bits, plain vs default."""
    rows = []
    for act, head, folded in (("relu6", "relu", False), ("hardswish", "relu", False), ("relu6", "relu", True)):
        float_model = dw_cnn.build(act, head, blocks=dw_cnn.MOBILE, channels=1, stem=16, last=128, size=28)
        float_model = dw_cnn.calibrate(float_model, calib)
        if folded:
            float_model = dw_cnn.fold(float_model)
        path = work / f"dw_{act}_{folded}.onnx"
        onnx.save(float_model, path)
        reference = logits(path, images)
        for b in (4, 8):
            for label, compensate in (("plain rounding", False), ("default", True)):
                out, report = run(f"dw_{len(rows)}", data_free(b, b, compensate), None, work, model=path)
                y = logits(out, images)
                comp = report["compensation"]
                row = {
                    "model": f"{act} blocks, {head} head, BN {'folded' if folded else 'kept'}",
                    "bits": b,
                    "method": label,
                    "rel_mse": float(np.square(y - reference).sum() / np.square(reference).sum()),
                    "top1_agreement": float(np.mean(y.argmax(axis=1) == reference.argmax(axis=1))),
                    "pairs": [[p["low"], p["validation"]] for p in comp["pairs"]],
                    "bias_corrected": len(comp["bias_correction"]["layers"]),
                    "layers": len(report["layers"]),
                }
                rows.append(row)
                print(
                    f"dw-CNN {row['model']:<40} int{b} {label:<15} rel-MSE {row['rel_mse']:.3e}  "
                    f"top-1 agreement {row['top1_agreement']:.1%}  bias-corrected {row['bias_corrected']}"
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, nargs="*", default=[2, 3, 4])
    parser.add_argument("--ppocr", action=argparse.BooleanOptionalAction, default=(PPOCR / "model.onnx").exists())
    args = parser.parse_args()
    with np.load(EVAL) as data:
        images, labels = data["input"], data["labels"]
    with np.load(CALIB) as data:
        calib_images = data["input"]
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
            row["validation"] = [p.get("validation") for p in pairs]
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
                ("  factors not validated (before), low b / next int8", dict(next_weights=onnxbc.WeightType.INT8),
                 "on", "unvalidated"),
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
                ("  factors not validated (before), per-tensor, low b / next int8",
                 dict(next_weights=onnxbc.WeightType.INT8, per_tensor_weights=True), "on", "unvalidated"),
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
        dw_rows = depthwise_cnn(work, images, calib_images)
        ppocr_rows = ppocr(work) if args.ppocr else []
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    results = {"model": str(MODEL.relative_to(ROOT)), "fp32_top1": fp32, "rows": rows}
    RESULTS.write_text(json.dumps({**results, "dw_cnn": dw_rows, "ppocr_rec": ppocr_rows}, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
