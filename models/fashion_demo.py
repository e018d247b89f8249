"""Accuracy of the float and the compressed Fashion-MNIST CNN on the bundled evaluation split.

    python -m models.fashion_demo models/fashion_cnn.onnx build/demo/fashion_cnn.int8.onnx

Prints the top-1 accuracy of both models on models/data/fashion_eval.npz (1000 test images), twice for
the quantized one: as the graph defines it (ONNX Runtime with its QDQ fusions off) and as ONNX Runtime's
default CPU session runs it (fused integer kernels, which differ on some CPUs; see README).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime as ort

EVAL = Path(__file__).parent / "data" / "fashion_eval.npz"


def accuracy(model: Path, images: np.ndarray, labels: np.ndarray, *, fused: bool = True) -> float:
    options = ort.SessionOptions()
    if not fused:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: images})[0]
    return float(np.mean(logits.argmax(axis=1) == labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("float_model", type=Path)
    parser.add_argument("quantized_model", type=Path)
    args = parser.parse_args()
    with np.load(EVAL) as data:
        images, labels = data["input"], data["labels"]
    fp32 = accuracy(args.float_model, images, labels)
    exact = accuracy(args.quantized_model, images, labels, fused=False)
    fused = accuracy(args.quantized_model, images, labels, fused=True)
    size_f, size_q = args.float_model.stat().st_size, args.quantized_model.stat().st_size
    print(f"Fashion-MNIST eval split ({len(labels)} test images):")
    print(f"  FP32 {args.float_model} ({size_f / 1e6:.2f} MB): top-1 {fp32:.2%}")
    print(f"  quantized {args.quantized_model} ({size_q / 1e6:.2f} MB, {size_f / size_q:.1f}x smaller):")
    print(f"    top-1 {exact:.2%} ({(exact - fp32) * 100:+.1f} points), as the graph defines it")
    print(f"    top-1 {fused:.2%} ({(fused - fp32) * 100:+.1f} points), ONNX Runtime default CPU session here")


if __name__ == "__main__":
    main()
