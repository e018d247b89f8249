"""Real models, their data and task metrics for the onnxbc benchmarks.

Each module (``fashion``, ``chargpt``, ``minilm``, ``ppocr_rec``, ...) exposes

    prepare(cache_dir: Path) -> BenchModel      # build / export / cache everything; idempotent
    evaluate(onnx_path, bench, providers=("CPUExecutionProvider",)) -> dict[str, float]

``BenchModel`` (in ``common``) names the float32 model, the calibration .npz (keys = model input names,
axis 0 = samples; what ``onnxbc compress --data`` reads), the held-out evaluation .npz and the metric names.
Modules import torch / transformers only inside ``prepare()``; ``evaluate()`` needs numpy and onnxruntime only.
Command line: ``python -m benchmarks.zoo prepare [--only NAME] [--cache benchmarks/.cache]``.
"""

from __future__ import annotations

from pathlib import Path

from . import chargpt, fashion, minilm, ppocr_rec, smollm2
from .common import BenchModel

DEFAULT_CACHE = Path(__file__).resolve().parents[1] / ".cache"

# smallest first: the order of the benchmark tables
MODELS = {
    "fashion": fashion,
    "chargpt": chargpt,
    "minilm": minilm,
    "ppocr_rec": ppocr_rec,
    "smollm2": smollm2,
}

# the slow tier: prepared only when asked for by name (--only smollm2 or --all)
SLOW = ("smollm2",)

__all__ = ["MODELS", "SLOW", "DEFAULT_CACHE", "BenchModel"]
