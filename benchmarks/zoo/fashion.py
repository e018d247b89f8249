"""fashion: the Fashion-MNIST CNN bundled with onnxbc (``models/``), copied into the cache unchanged.

Model: Conv-ReLU-MaxPool x2, Gemm 3136->128, ReLU, Gemm 128->10 (BatchNorm folded; 0.42 M parameters;
see models/README.md for how it was trained). Nothing is built here, so ``prepare()`` needs neither torch
nor the Fashion-MNIST dataset: it copies the three files and checks their hashes.

ONNX: input ``input`` float32 [N, 1, 28, 28] (pixel / 255) -> output ``logits`` float32 [N, 10].
calib.npz: ``input`` [256, 1, 28, 28], 256 training-split images (models/data/fashion_calib.npz).
eval.npz:  ``input`` [1000, 1, 28, 28] and ``labels`` [1000]: the first 1000 test images
(models/data/fashion_eval.npz), never in the calibration set.
Metric: ``top1`` accuracy on the eval split (FP32: 0.910).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from . import common
from .common import BenchModel

log = logging.getLogger("benchmarks.zoo.fashion")

NAME = "fashion"
METRICS = ("top1",)
SOURCE_DIR = Path(__file__).resolve().parents[2] / "models"
SOURCES = {
    "model.onnx": SOURCE_DIR / "fashion_cnn.onnx",
    "calib.npz": SOURCE_DIR / "data" / "fashion_calib.npz",
    "eval.npz": SOURCE_DIR / "data" / "fashion_eval.npz",
}


def _recipe() -> dict[str, object]:
    # the source files' hashes: a retrained model or new data in models/ invalidates the cache
    return {"version": 1, "sha256": {name: common.sha256_file(src) for name, src in SOURCES.items()}}


def prepare(cache_dir: Path) -> BenchModel:
    model_dir, bench = BenchModel.in_cache(cache_dir, NAME, METRICS)
    recipe = _recipe()
    if common.read_stamp(model_dir, recipe):
        return bench
    model_dir.mkdir(parents=True, exist_ok=True)
    info: dict = {"timings_s": {}}
    with common.timed("copy", info["timings_s"]):
        for name, src in SOURCES.items():
            shutil.copyfile(src, model_dir / name)
        info["source"] = str(SOURCE_DIR)
    with common.timed("evaluate_fp32", info["timings_s"]):
        info["fp32"] = evaluate(bench.onnx_path, bench)
    common.write_stamp(model_dir, recipe, list(SOURCES), **info)
    return bench


def evaluate(
    onnx_path: Path,
    bench: BenchModel,
    providers=common.DEFAULT_PROVIDERS,
    session_config: Mapping[str, str] | None = None,
    output_tap: common.OutputTap | None = None,
) -> dict[str, float]:
    data = common.load_npz(bench.eval_path)
    sess = common.ort_session(onnx_path, providers, session_config, output_tap)
    logits = common.run_batched(sess, {"input": data["input"]}, batch_size=100)[0]
    return {"top1": float(np.mean(logits.argmax(axis=1) == data["labels"]))}
