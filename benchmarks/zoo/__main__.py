"""python -m benchmarks.zoo prepare|evaluate|stats  (see benchmarks/zoo/README.md)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from . import DEFAULT_CACHE, MODELS, SLOW, common


def _selected(args: argparse.Namespace) -> list[str]:
    if args.only:
        unknown = [n for n in args.only if n not in MODELS]
        if unknown:
            raise SystemExit(f"unknown model(s) {unknown}; choose from {sorted(MODELS)}")
        return list(args.only)
    return [n for n in MODELS if args.all or n not in SLOW]


def _fmt(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def cmd_prepare(args: argparse.Namespace) -> int:
    for name in _selected(args):
        module = MODELS[name]
        start = time.perf_counter()
        bench = module.prepare(args.cache)
        prepared_in = time.perf_counter() - start
        stamp = json.loads(common.stamp_path(bench.onnx_path.parent).read_text())
        print(f"{name}: prepared in {prepared_in:.1f} s -> {bench.onnx_path}")
        print(f"  fp32 (at build time): {_fmt(stamp['fp32'])}")
        if args.evaluate:
            start = time.perf_counter()
            metrics = module.evaluate(bench.onnx_path, bench)
            print(f"  fp32 (now): {_fmt(metrics)}  [{time.perf_counter() - start:.1f} s]")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    module = MODELS[args.model]
    bench = module.prepare(args.cache)
    providers = tuple(args.providers.split(","))
    start = time.perf_counter()
    metrics = module.evaluate(Path(args.onnx) if args.onnx else bench.onnx_path, bench, providers=providers)
    print(json.dumps({"model": args.model, "metrics": metrics, "seconds": round(time.perf_counter() - start, 1)}))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    for name in _selected(args):
        bench = MODELS[name].prepare(args.cache)
        stats = common.graph_stats(bench.onnx_path)
        print(json.dumps({"model": name, **stats}))
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(prog="python -m benchmarks.zoo", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def common_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"cache folder (default {DEFAULT_CACHE})")

    p = sub.add_parser("prepare", help="build/export/cache the models and print their FP32 metrics")
    common_args(p)
    p.add_argument("--only", action="append", metavar="NAME", help=f"one of {sorted(MODELS)} (repeatable)")
    p.add_argument("--all", action="store_true", help=f"include the slow tier {SLOW}")
    p.add_argument("--evaluate", action="store_true", help="also re-run evaluate() on the cached FP32 model")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("evaluate", help="task metrics of an ONNX model (default: the FP32 one) on a model's eval split")
    common_args(p)
    p.add_argument("model", choices=sorted(MODELS))
    p.add_argument("onnx", nargs="?", help="a (quantized) model of the same inputs/outputs")
    p.add_argument("--providers", default="CPUExecutionProvider", help="comma-separated ORT providers")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("stats", help="size and structure of the FP32 models (JSON lines)")
    common_args(p)
    p.add_argument("--only", action="append", metavar="NAME")
    p.add_argument("--all", action="store_true")
    p.set_defaults(func=cmd_stats)

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose or args.command == "prepare" else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("onnx_ir", "onnxscript", "torch", "transformers", "sentence_transformers", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
