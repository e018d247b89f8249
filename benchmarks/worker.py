"""One job in a fresh process, so that its time and peak memory are its own (the runner measures both).

    python -m benchmarks.worker compress --model M --setting S --method METHOD --out OUT.onnx --result R.json
    python -m benchmarks.worker evaluate --model M --onnx OUT.onnx --result R.json [--reference FP32.npy]
    python -m benchmarks.worker evaluate --model M --onnx FP32.onnx --result R.json --save-reference FP32.npy

``compress`` runs one tool on one model and setting; ``evaluate`` measures a model on the eval split:

- the task metrics twice: with ONNX Runtime computing exactly what the graph says (QDQ fusions off:
  ``session.disable_quant_qdq=1``, ``session.qdq_matmulnbits_accuracy_level=1``) and in ORT's default session
  (its fused integer kernels); a model without Q/DQ nodes runs the same kernels both ways, so it is run once;
- the relative MSE of the first output against the FP32 model's, taken from the exact run itself:
  sum of squared error / sum of squared FP32 output over the whole eval split;
- the latency of a fixed batch of eval inputs in the default session with 2 threads (median of a few runs).

Both write a JSON result; a tool failure is a result (``status: failed``), not a crash.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import resource
import shutil
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from benchmarks import graph_facts
from benchmarks.methods import METHODS
from benchmarks.settings import SETTINGS, with_calibration
from benchmarks.tools import NotApplicable, work_dir
from benchmarks.zoo import DEFAULT_CACHE, MODELS

EXACT_SESSION = {"session.disable_quant_qdq": "1", "session.qdq_matmulnbits_accuracy_level": "1"}
LATENCY_THREADS = 2


def _self_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# --------------------------------------------------------------------------- compress


def compress(args: argparse.Namespace) -> dict:
    method = METHODS[args.method]
    setting = SETTINGS[args.setting]
    start = time.perf_counter()
    importlib.import_module(method.requires)  # the tool's import cost stays out of the call time
    tool = importlib.import_module(f"benchmarks.tools.{method.tool}")
    bench = with_calibration(MODELS[args.model].prepare(args.cache), args.calib)
    import_s = time.perf_counter() - start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        result = tool.quantize(bench, setting, out, **method.options)
    except Exception as e:
        traceback.print_exc()
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return {"status": "failed", "reason": f"{type(e).__name__}: {message}"[:400], "import_s": import_s}
    finally:
        shutil.rmtree(work_dir(out), ignore_errors=True)
    call_s = time.perf_counter() - start
    if isinstance(result, NotApplicable):
        return {"status": "n/a", "reason": result.reason}
    return {
        "status": "ok",
        "path": str(result.path),
        "notes": list(result.notes),
        "info": result.info,
        "import_s": round(import_s, 3),
        "call_s": round(call_s, 3),
        "self_peak_rss_mb": round(_self_peak_mb(), 1),
    }


# --------------------------------------------------------------------------- evaluate


class OutputError:
    """Streams the first output of a run against the FP32 reference: rel. MSE over the whole split."""

    def __init__(self, reference: np.ndarray | None) -> None:
        self.reference = reference
        self.kept: list[np.ndarray] = []  # when there is no reference yet: this run makes it
        self.offset = 0
        self.err = 0.0
        self.ref = 0.0
        self.nonfinite = 0

    def __call__(self, out: np.ndarray) -> None:
        n = len(out)
        if self.reference is None:
            self.kept.append(np.array(out, copy=True))
        else:
            ref = np.asarray(self.reference[self.offset : self.offset + n], dtype=np.float64)
            diff = out.astype(np.float64) - ref
            finite = np.isfinite(diff)
            self.nonfinite += int(diff.size - finite.sum())
            self.err += float(np.square(diff[finite]).sum())
            self.ref += float(np.square(ref).sum())
        self.offset += n

    def rel_mse(self) -> float | None:
        if self.reference is None:
            return 0.0
        if self.offset != len(self.reference):
            raise RuntimeError(f"evaluate() ran {self.offset} samples, the FP32 reference has {len(self.reference)}")
        return None if self.nonfinite or self.ref == 0 else self.err / self.ref


def _latency_ms(onnx_path: Path, feeds: dict[str, np.ndarray], runs: int) -> tuple[float, float]:
    """(median, minimum) of ``runs`` timed runs after one warm-up, in milliseconds."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = LATENCY_THREADS
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    sess.run(None, feeds)  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), min(times)


def evaluate(args: argparse.Namespace) -> dict:
    module = MODELS[args.model]
    bench = module.prepare(args.cache)
    onnx_path = Path(args.onnx)
    reference = np.load(args.reference, mmap_mode="r") if args.reference else None
    tap = OutputError(reference)
    notes = []
    start = time.perf_counter()
    exact = module.evaluate(onnx_path, bench, session_config=EXACT_SESSION, output_tap=tap)
    exact_s = time.perf_counter() - start
    if args.save_reference:
        np.save(args.save_reference, np.concatenate(tap.kept, axis=0))
    rel_mse = tap.rel_mse()
    if tap.nonfinite:
        notes.append(f"{tap.nonfinite} non-finite output values (exact session)")
    if graph_facts.has_qdq(onnx_path):
        default = module.evaluate(onnx_path, bench)
    else:
        default = dict(exact)
        notes.append("no Q/DQ nodes: the default session runs the same kernels")
    with np.load(bench.eval_path, allow_pickle=False) as data:
        feeds = {n: data[n][: args.latency_batch] for n in bench.input_names()}
    latency, fastest = _latency_ms(onnx_path, feeds, args.latency_runs)
    return {
        "status": "ok",
        "metrics_exact": exact,
        "metrics_default": default,
        "rel_mse": rel_mse,
        "size_bytes": graph_facts.file_bytes(onnx_path),
        "latency_ms": round(latency, 3),
        "latency_min_ms": round(fastest, 3),
        "latency_batch": len(next(iter(feeds.values()))),
        "eval_s": round(exact_s, 2),
        "notes": notes,
    }


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("compress")
    p.add_argument("--model", required=True, choices=sorted(MODELS))
    p.add_argument("--setting", required=True, choices=sorted(SETTINGS))
    p.add_argument("--method", required=True, choices=sorted(METHODS))
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--calib", type=Path, help="another calibration .npz (scaling check)")
    p.set_defaults(func=compress)
    p = sub.add_parser("evaluate")
    p.add_argument("--model", required=True, choices=sorted(MODELS))
    p.add_argument("--onnx", required=True, type=Path)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--reference", type=Path, help="FP32 first-output .npy to measure the error against")
    group.add_argument("--save-reference", type=Path, help="write this (FP32) model's first output here")
    p.add_argument("--latency-batch", type=int, default=8)
    p.add_argument("--latency-runs", type=int, default=10)
    p.set_defaults(func=evaluate)
    for p in sub.choices.values():
        p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
        p.add_argument("--result", required=True, type=Path, help="where the JSON result goes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    result = args.func(args)
    args.result.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
