"""python -m benchmarks run|scaling|render  (see benchmarks/README.md).

python -m benchmarks run                       # fashion, chargpt, minilm, ppocr_rec x all settings x all methods
python -m benchmarks run --slow --name smollm2 --models smollm2
python -m benchmarks run --models fashion --settings w8a8 --methods fp32,onnxbc_independent,ort_static
python -m benchmarks scaling                   # onnxbc time and memory vs calibration samples (chargpt)
python -m benchmarks render                    # benchmarks/README.md tables + one PNG per model
"""

from __future__ import annotations

import argparse
import functools
import os
import shlex
import sys
from pathlib import Path

from benchmarks import render, runner, scaling
from benchmarks.methods import FP32, METHODS
from benchmarks.settings import SETTINGS
from benchmarks.zoo import DEFAULT_CACHE, MODELS, SLOW


def _names(value: str, known, what: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown {what} {unknown}; choose from {sorted(known)}")
    return names


def _command() -> str:
    return "python -m benchmarks " + shlex.join(sys.argv[1:])


def cmd_run(args: argparse.Namespace) -> int:
    if args.models:
        models = _names(args.models, MODELS, "model(s)")
    else:
        models = tuple(m for m in MODELS if args.slow or m not in SLOW)
    methods = _names(args.methods, (FP32, *METHODS), "method(s)") if args.methods else (FP32, *METHODS)
    if FP32 not in methods:
        methods = (FP32, *methods)  # the reference of every error and ratio
    config = runner.RunConfig(
        name=args.name,
        models=models,
        settings=_names(args.settings, SETTINGS, "setting(s)") if args.settings else tuple(SETTINGS),
        methods=methods,
        slow=args.slow,
        cache=args.cache,
        results_dir=args.results_dir,
        keep_outputs=args.keep_outputs,
        timeout_s=args.timeout,
        command=_command(),
    )
    results = runner.run(config, log=functools.partial(print, flush=True))
    print(f"wrote {config.results_path} ({len(results['rows'])} rows, {results['wall_s']:.0f} s)")
    return 0


def cmd_scaling(args: argparse.Namespace) -> int:
    config = scaling.ScalingConfig(
        name=args.name,
        model=args.model,
        samples=tuple(int(n) for n in args.samples.split(",")),
        methods=_names(args.methods, METHODS, "method(s)"),
        setting=args.setting,
        cache=args.cache,
        results_dir=args.results_dir,
        command=_command(),
    )
    path = scaling.run(config, log=functools.partial(print, flush=True))
    print(f"wrote {path}")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    paths = [args.results_dir / f"{n}.json" for n in args.names] if args.names else None
    written = render.render(args.results_dir, args.readme, paths)
    for path in written:
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="the matrix: models x settings x methods")
    p.add_argument("--name", default="matrix", help="results go to RESULTS_DIR/NAME.json (default: matrix)")
    p.add_argument("--models", help=f"comma-separated, from {list(MODELS)} (default: all but the slow tier {SLOW})")
    p.add_argument(
        "--slow",
        action="store_true",
        help=f"the slow tier: the models {SLOW} and onnxbc_sequential on the larger models",
    )
    p.add_argument("--settings", help=f"comma-separated, from {list(SETTINGS)} (default: all)")
    p.add_argument("--methods", help=f"comma-separated, from {[FP32, *METHODS]} (default: all; fp32 always runs)")
    p.add_argument("--keep-outputs", action="store_true", help="keep the quantized models under RESULTS_DIR/tmp")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per compression or evaluation process")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("scaling", help="compress time and peak memory vs the number of calibration samples")
    p.add_argument("--name", default="scaling")
    p.add_argument("--model", default="chargpt", choices=sorted(scaling.LARGE_SETS))
    p.add_argument("--samples", default="64,256,1024")
    p.add_argument("--methods", default="onnxbc_independent,ort_static,nncf")
    p.add_argument("--setting", default="w8a8", choices=sorted(SETTINGS))
    p.set_defaults(func=cmd_scaling)

    p = sub.add_parser("render", help="write the README tables and the plots from results JSON files")
    p.add_argument("names", nargs="*", help="result names (default: every RESULTS_DIR/*.json)")
    p.add_argument("--readme", type=Path, default=render.README)
    p.set_defaults(func=cmd_render)

    for p in sub.choices.values():
        p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"model cache (default {DEFAULT_CACHE})")
        p.add_argument("--results-dir", type=Path, default=runner.RESULTS_DIR)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
