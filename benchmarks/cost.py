"""compress's cost against ONNX Runtime's ``quantize_static``: wall clock and peak memory, paired runs (issue 22).

    python -m benchmarks.cost                                  # the fast tier, 3 repeats -> results/cost.json
    python -m benchmarks.cost --models fashion --repeats 1 --name cost-fashion
    python -m benchmarks.cost render [--name cost]             # the markdown table again from the JSON

Per model, ``--repeats`` times: ``ort_static`` then ``onnxbc_independent`` (W8A8, the benchmark's rows), one
after the other so that both see the same machine state, each through ``runner.compress``: a fresh
``benchmarks.worker compress`` process on the zoo's ``calib.npz`` (every sample, the same file for both), its
wall clock and its own peak RSS (``wait4``: the whole process, imports included). Each run's cell folder is
deleted once read. Summary: the median process wall clock, the stage times (onnxbc's report ``timings_s``) of
the repeat with the median wall (the lower one of an even count), the peak RSS's maximum over repeats, and the
ratios onnxbc / ORT of both. A model whose ``model.onnx`` is not in the cache is skipped with a note
(``python -m benchmarks.zoo prepare --only M``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
FAST_TIER = ("fashion", "chargpt", "minilm", "ppocr_rec")
SETTING, ORT, ONNXBC = "w8a8", "ort_static", "onnxbc_independent"
STAGES = ("ranges", "layer_errors", "verify")  # the stage columns of the table


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(runs, key=lambda r: r["process_s"])[(len(runs) - 1) // 2]


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "process_s_median": statistics.median(r["process_s"] for r in runs),
        "call_s_median": statistics.median(r["call_s"] for r in runs),
        "peak_rss_mb_max": max(r["peak_rss_mb"] for r in runs),
        "median_run": _median_run(runs),
        "runs": runs,
    }


def measure(model: str, repeats: int, cache: Path, work: Path, timeout_s: float) -> dict[str, Any]:
    """Both methods on ``model``, interleaved, ``repeats`` times; a failed run ends the model (status, reason)."""
    from benchmarks import runner
    from benchmarks.settings import calibration_arrays, sample_count
    from benchmarks.zoo import MODELS

    if not (cache / model / "model.onnx").exists():
        return {"status": "skipped", "reason": f"no {model}/model.onnx in the cache (benchmarks.zoo prepare)"}
    entry: dict[str, Any] = {"samples": sample_count(calibration_arrays(MODELS[model].prepare(cache)))}
    runs: dict[str, list[dict[str, Any]]] = {ORT: [], ONNXBC: []}
    for r in range(repeats):
        for method in (ORT, ONNXBC):
            cell = work / f"{model}-{method}-{r}"
            load = os.getloadavg()[0]
            row = runner.compress(model, SETTING, method, cell, cache=cache, timeout_s=timeout_s)
            report = runner._read_json(cell / "model.report.json") or {}  # onnxbc's, beside its output model
            shutil.rmtree(cell, ignore_errors=True)
            if row["status"] != "ok":
                return {**entry, "status": row["status"], "reason": f"{method}: {row.get('reason')}", "runs": runs}
            run = {**row["compress"], "load_avg_1min": load}
            if method == ONNXBC:
                run["timings_s"] = report.get("timings_s") or row["info"]["timings_s"]  # the same dict
            runs[method].append(run)
    methods = {m: summarize(rs) for m, rs in runs.items()}
    ort, bc = methods[ORT], methods[ONNXBC]
    ratios = {
        "wall": bc["process_s_median"] / ort["process_s_median"],
        "peak_rss": bc["peak_rss_mb_max"] / ort["peak_rss_mb_max"],
    }
    return {**entry, "status": "ok", "repeats": repeats, "methods": methods, "ratios": ratios}


def table(results: dict[str, Any]) -> str:
    head = [
        "model",
        "samples",
        "onnxbc wall s (median)",
        "ORT wall s",
        "ratio",
        "onnxbc peak MB",
        "ORT peak MB",
        "ratio",
        "onnxbc " + " / ".join(STAGES) + " s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, m in results["models"].items():
        if m["status"] != "ok":
            lines.append(f"| {model} | {m['status']}: {m.get('reason')} |" + " |" * (len(head) - 2))
            continue
        bc, ort, ratios = m["methods"][ONNXBC], m["methods"][ORT], m["ratios"]
        timings = bc["median_run"]["timings_s"]
        stages = " / ".join(f"{timings[s]:.2f}" if s in timings else "-" for s in STAGES)
        cells = [model, str(m["samples"]), f"{bc['process_s_median']:.2f}", f"{ort['process_s_median']:.2f}"]
        cells += [f"{ratios['wall']:.2f}x", f"{bc['peak_rss_mb_max']:.0f}", f"{ort['peak_rss_mb_max']:.0f}"]
        cells += [f"{ratios['peak_rss']:.2f}x", stages]
        lines.append("| " + " | ".join(cells) + " |")
    src, machine = results["source"], results["machine"]
    caption = (
        f"W8A8, `{ONNXBC}` vs `{ORT}`: whole worker process, median of {results['repeats']} paired run(s), peak RSS"
        f" max over runs; {machine['cpu']}, {machine['cores']} cores; onnxbc {src['commit']}"
        f"{' (dirty)' if src['dirty'] else ''}, {results['created'][:10]}; `{results['command']}`."
    )
    return "\n".join(lines) + "\n\n" + caption


def run(models: Sequence[str], repeats: int, cache: Path, path: Path, command: str, timeout_s: float) -> dict:
    from benchmarks import runner

    def source() -> dict[str, Any]:
        state = runner.source_state()
        return {**state, "dirty": bool(state["modified"])}

    results: dict[str, Any] = {
        "kind": "cost",
        "command": command,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": source(),
        "machine": {**runner.machine_info(), "load_avg_at_start": os.getloadavg()},
        "packages": runner.package_versions(),
        "setting": SETTING,
        "methods": [ORT, ONNXBC],
        "repeats": repeats,
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="onnxbc-cost-") as tmp:
        for model in models:
            print(f"{model}: {ORT} / {ONNXBC} x{repeats}", file=sys.stderr, flush=True)
            results["models"][model] = measure(model, repeats, cache, Path(tmp), timeout_s)
            runner.write_json(path, results)  # a run that dies keeps what it measured
    results["source_at_end"] = source()  # others may commit meanwhile
    runner.write_json(path, results)
    return results


def main(argv: list[str] | None = None) -> int:
    from benchmarks.zoo import DEFAULT_CACHE, MODELS

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    argv = sys.argv[1:] if argv is None else argv
    render = argv[:1] == ["render"]
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cost", description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="cost", help="results file: RESULTS_DIR/NAME.json")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    if not render:
        parser.add_argument("--models", default=",".join(FAST_TIER), help="comma-separated (default: the fast tier)")
        parser.add_argument("--repeats", type=int, default=3, help="paired runs per model (median)")
        parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
        parser.add_argument("--timeout-s", type=float, default=3600, help="per compress process")
    args = parser.parse_args(argv[1:] if render else argv)
    path = args.results_dir / f"{args.name}.json"
    if render:
        if not path.is_file():
            parser.error(f"no results at {path}: run 'python -m benchmarks.cost --name {args.name}' first")
        print(table(json.loads(path.read_text())))
        return 0
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown or args.repeats < 1:
        parser.error(f"unknown model(s) {unknown}; choose from {sorted(MODELS)}" if unknown else "--repeats < 1")
    command = "python -m benchmarks.cost " + shlex.join(argv)
    results = run(models, args.repeats, args.cache, path, command.strip(), args.timeout_s)
    print(table(results))
    print(f"\nwrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
