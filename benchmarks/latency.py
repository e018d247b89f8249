"""The latency tier (issue 18): onnxbc's default W8A8 output against FP32 and ``quantize_static``'s defaults.

    python -m benchmarks.latency                                   # the fast tier -> results/latency.json + LATENCY.md
    python -m benchmarks.latency --models chargpt,minilm --batch-size 4 --rounds 20
    python -m benchmarks.latency render                            # LATENCY.md again from results/latency.json

Per model of the zoo, in ``--work`` (default ``benchmarks/.cache/latency/<model>/``, kept, so that the recorded
``onnxbc bench`` command can be run again):

1. FP32: the zoo's ``model.onnx`` as it is.
2. onnxbc: ``onnxbc compress MODEL --data calib.npz --samples N --device cpu`` with every other option at its
   default (W8A8, ``--target onnxruntime``), in a fresh process; its report gives the held-out output error,
   the weighted layers it left float (and why). The fusion audit (``onnxbc.fusion``, which ``compress`` runs
   into its report as counts) is run again on the output to list every op ONNX Runtime does not run as an
   integer kernel and why: the weighted layers and the other quantized ops (Add, Mul, pools, ...).
3. ``quantize_static``: ONNX Runtime's recommended ``quant_pre_process`` first (with the fallbacks of
   ``benchmarks.tools.ort.pre_process``), then ``quantize_static(model, out, reader)`` with every argument at
   its default (ONNX Runtime 1.31: QDQ, per-tensor, int8 activations *and* weights, MinMax; the JSON records
   the defaults read from its signature), on the same calibration samples in batches of 16 (of 1 for a model
   over 256 MiB, as ``benchmarks.tools.ort`` does: its calibration keeps every tensor of a batch).
4. ``onnxbc bench FP32 ONNXBC ORT --data eval.npz --batch-size B --device cpu --json ...`` in a fresh
   process: the three models interleaved in rounds, ONNX Runtime's default CPU session with ``--threads``
   intra-op threads; ratios are medians over the FP32 median of the same run.
5. The output error of each quantized model against FP32 on the whole eval split (``rel. MSE``: sum of squared
   error / sum of squared FP32 first output), and the zoo's task metrics, computed twice as the benchmark
   matrix does (``benchmarks.worker``): in ONNX Runtime's default session (its integer kernels, which saturate
   on x86 without VNNI) and with its QDQ fusions off (the graph as written, the matrix's rel. MSE column).

The batch size: the smallest power of two whose fastest FP32 run, in a short ``onnxbc bench`` probe of FP32 alone,
takes at least ``MIN_FP32_MS`` (the fastest, not the median: other jobs on a shared machine inflate the median, so
a batch chosen by it can take less than 5 ms on an idle machine), up to the eval samples; ``--batch-size`` fixes
it for every model instead. Each round runs ``BATCHES_PER_ROUND`` batches per model (fewer where the eval split
is smaller).

Threads: one by default (``--threads 0``: ONNX Runtime's default, one per physical core). On a machine other jobs
share, a pool of several threads waits for its slowest thread at every op, and the latencies measure the other
jobs: on this 2-core machine at load 3-4, ONNX Runtime's default (2 threads) gave interquartile ranges of 10-100 %
of the median and ratios that moved by up to 0.14 between runs; one thread, 1-8 % and ratios within 0.03.

The issue's bar, checked per model in the table: where the fastest FP32 run takes 5 ms or more, onnxbc's median is
below FP32's and not above ``quantize_static``'s; on the transformers (``benchmarks.methods.TRANSFORMERS``) it
is at most 0.75x FP32; its eval and held-out rel. MSE are within 1.2x of the W8A8 ``onnxbc_independent`` row of
``results/matrix.json`` (the numbers before issue 18). Latencies come from one run on a shared machine: a ratio
near a bar can fall either side on another run.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import graph_facts, runner
from benchmarks.methods import TRANSFORMERS
from benchmarks.settings import calibration_arrays, sample_count
from benchmarks.worker import EXACT_SESSION, OutputError
from benchmarks.zoo import DEFAULT_CACHE, MODELS

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "latency.json"
MARKDOWN = REPO / "benchmarks" / "LATENCY.md"
MATRIX = REPO / "benchmarks" / "results" / "matrix.json"  # the errors before issue 18
FAST_TIER = ("fashion", "chargpt", "minilm", "ppocr_rec")
BEGIN, END = "<!-- latency:begin -->", "<!-- latency:end -->"

MIN_FP32_MS = 5.0  # the issue's bar applies to models whose FP32 batch takes this long or more
PROBE_ROUNDS, PROBE_BATCHES = 5, 4  # 20 timed runs per probed batch size: their fastest is steady under load
BATCHES_PER_ROUND = 8
TRANSFORMER_RATIO = 0.75
ACCURACY_FACTOR = 1.2
ROWS = ("fp32", "onnxbc", "ort_static")
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
TIMEOUT_S = 3600


# --------------------------------------------------------------------------- helpers


def _rel(path: Path) -> str:
    """``path`` as the recorded commands name it: relative to the repository root when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _onnxbc(*args: str) -> tuple[list[str], str]:
    """The argv that runs the onnxbc CLI of this environment, and the command as a reader types it."""
    return [sys.executable, "-m", "onnxbc", *args], shlex.join(["onnxbc", *args])


def _run(argv: list[str], log: Path) -> subprocess.CompletedProcess:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as sink:
        return subprocess.run(argv, stdout=sink, stderr=subprocess.STDOUT, cwd=REPO, timeout=TIMEOUT_S)


def _tail(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return lines[-1] if lines else ""


def _git_dirty() -> bool | None:
    try:
        out = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return bool(out.stdout.strip())


def eval_samples(bench) -> int:
    with np.load(bench.eval_path, allow_pickle=False) as data:
        return len(data[bench.input_names()[0]])


# --------------------------------------------------------------------------- the three models


def compress_onnxbc(bench, work: Path) -> dict[str, Any]:
    """``onnxbc compress`` with its defaults (``--device cpu``), and what its report says about speed and error."""
    out, report_path = work / "onnxbc.onnx", work / "onnxbc.report.json"
    n = sample_count(calibration_arrays(bench))
    argv, command = _onnxbc(
        "compress", _rel(bench.onnx_path), "--data", _rel(bench.calib_path), "--samples", str(n),
        "-o", _rel(out), "--report", _rel(report_path), "--device", "cpu", "--force", "--quiet",
    )  # fmt: skip
    start = time.perf_counter()
    proc = _run(argv, work / "onnxbc.log")
    row: dict[str, Any] = {"command": command, "wall_s": round(time.perf_counter() - start, 2)}
    if proc.returncode != 0 or not out.exists():
        return {**row, "status": "failed", "reason": f"exit {proc.returncode}: {_tail(work / 'onnxbc.log')}"}
    report = json.loads(report_path.read_text())
    left_float = [
        {"name": layer["name"], "op": layer["op"], "reason": layer.get("reason")}
        for layer in report["layers"]
        if layer.get("kind") == "weighted" and layer.get("status") != "quantized"
    ]
    return {
        **row,
        "status": "ok",
        "path": _rel(out),
        "size_bytes": graph_facts.file_bytes(out),
        "heldout_rel_mse": held_out_error(report.get("compensation") or {}),
        "compensation": {k: v for k, v in (report.get("compensation") or {}).items() if k != "candidates"},
        "report_fusion": (report.get("fusion") or {}).get("summary"),
        "fusion": audit(out),
        "weighted_layers_left_float": left_float,
        "warnings": report.get("warnings", []),
        "timings_s": report.get("timings_s"),
    }


def held_out_error(compensation: dict[str, Any]) -> float | None:
    """The saved model's output rel. MSE on the held-out samples, from a report of this or an older onnxbc."""
    if "output_rel_mse" in compensation:
        return compensation["output_rel_mse"]
    chosen = compensation.get("chosen")
    if chosen in (compensation.get("alternatives") or {}):
        return compensation["alternatives"][chosen]
    key = "output_rel_mse_with" if compensation.get("applied") else "output_rel_mse_without"
    return compensation.get(key)


def quantize_static_defaults(bench, work: Path) -> dict[str, Any]:
    """``quantize_static`` with every argument at its default, after ORT's recommended pre-processing."""
    from onnxruntime.quantization import quantize_static

    from benchmarks.tools import ort as ort_tool

    out = work / "ort_static.onnx"
    parameters = inspect.signature(quantize_static).parameters
    defaults = {
        name: str(parameters[name].default)
        for name in ("quant_format", "per_channel", "activation_type", "weight_type", "calibrate_method")
    }
    start = time.perf_counter()
    try:
        source, notes = ort_tool.pre_process(bench, out, per_channel_qdq=False)
        arrays = calibration_arrays(bench)
        batch = ort_tool.calibration_batch(bench, notes)
        quantize_static(str(source), str(out), ort_tool._Reader(arrays, batch))
    except Exception as e:  # ONNX Runtime raises bare Exceptions
        reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        return {"status": "failed", "reason": reason[:400], "defaults": defaults}
    finally:
        shutil.rmtree(work / "work", ignore_errors=True)  # pre_process's folder
    return {
        "status": "ok",
        "call": "quantize_static(model, output, reader)",
        "defaults": defaults,
        "calibration_samples": sample_count(arrays),
        "calibration_batch": batch,
        "notes": notes,
        "wall_s": round(time.perf_counter() - start, 2),
        "path": _rel(out),
        "size_bytes": graph_facts.file_bytes(out),
        "fusion": audit(out),
    }


def audit(path: Path) -> dict[str, Any]:
    """onnxbc's fusion audit (``onnxbc.fusion``) of a quantized model: per verdict, the counts over every audited op
    and over the weighted layers (Conv/Gemm/MatMul) alone, and each op ONNX Runtime does not run as an integer
    kernel, with what its optimized graph shows is missing. The compress report keeps only the counts."""
    from onnxbc import fusion, held
    from onnxbc.errors import OnnxbcError

    try:
        result = fusion.audit(held.read(path))
    except (OnnxbcError, OSError, ValueError) as e:
        return {"error": str(e)}
    layers = [layer for layer in result.layers if layer.op in WEIGHTED_OPS]
    return {
        "ops": {v.value: result.count(v) for v in fusion.Verdict},
        "layers": {v.value: sum(layer.verdict is v for layer in layers) for v in fusion.Verdict},
        "unfused": [{**layer.as_dict(), "message": layer.message()} for layer in result.unfused],
    }


# --------------------------------------------------------------------------- timing


def bench_command(paths: Sequence[str], data: Path, batch: int, batches: int, args: argparse.Namespace, out: Path):
    extra = ["--threads", str(args.threads)]
    return _onnxbc(
        "bench", *paths, "--data", _rel(data), "--batch-size", str(batch), "--samples", str(batch * batches),
        "--rounds", str(args.rounds), "--warmup", str(args.warmup), *extra, "--device", "cpu",
        "--json", _rel(out), "--quiet",
    )  # fmt: skip


def choose_batch(bench, work: Path, args: argparse.Namespace, limit: int) -> tuple[int, list[dict[str, float]]]:
    """The smallest power of two (at most ``limit``) whose FP32 median reaches the target, and the probes."""
    probes = []
    batch = 1
    while True:
        out = work / "probe.json"
        argv, _ = bench_command([_rel(bench.onnx_path)], bench.eval_path, batch, PROBE_BATCHES, _probe_args(args), out)
        proc = _run(argv, work / "probe.log")
        if proc.returncode != 0:
            raise RuntimeError(f"onnxbc bench (batch probe) failed: {_tail(work / 'probe.log')}")
        timing = json.loads(out.read_text())["models"][0]
        probes.append({"batch_size": batch, "min_ms": timing["min_ms"], "median_ms": timing["median_ms"]})
        out.unlink()
        if timing["min_ms"] >= MIN_FP32_MS or batch * 2 > limit:
            return batch, probes
        batch *= 2


def _probe_args(args: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "rounds": PROBE_ROUNDS, "warmup": 2})


# --------------------------------------------------------------------------- errors on the eval split


def evaluate(module, bench, paths: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Task metrics and first-output rel. MSE against FP32, in the default session and the exact one."""
    reference = OutputError(None)
    fp32 = module.evaluate(bench.onnx_path, bench, output_tap=reference)
    ref = np.concatenate(reference.kept, axis=0)
    del reference
    results = {"fp32": {"metrics_default": fp32, "metrics_exact": fp32, "rel_mse_default": 0.0, "rel_mse_exact": 0.0}}
    for row, path in paths.items():
        entry: dict[str, Any] = {}
        for kind, config in (("default", None), ("exact", EXACT_SESSION)):
            tap = OutputError(ref)
            entry[f"metrics_{kind}"] = module.evaluate(path, bench, session_config=config, output_tap=tap)
            entry[f"rel_mse_{kind}"] = tap.rel_mse()
            if tap.nonfinite:
                entry.setdefault("notes", []).append(f"{tap.nonfinite} non-finite output values ({kind} session)")
        results[row] = entry
    return results


def matrix_reference(model: str) -> dict[str, Any] | None:
    """The W8A8 ``onnxbc_independent`` row of results/matrix.json: eval and held-out errors before issue 18."""
    try:
        matrix = json.loads(MATRIX.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    for row in matrix.get("rows", []):
        if (row["model"], row["setting"], row["method"]) == (model, "w8a8", "onnxbc_independent"):
            if row.get("status") != "ok":
                return None
            src = matrix.get("onnxbc_source", {})
            return {
                "file": _rel(MATRIX),
                "created": matrix.get("created"),
                "commit": src.get("commit"),
                "modified": src.get("modified", []),
                "eval_rel_mse": row.get("rel_mse"),
                "heldout_rel_mse": held_out_error((row.get("info") or {}).get("compensation") or {}),
                "metrics_exact": row.get("metrics_exact"),
            }
    return None


# --------------------------------------------------------------------------- one model, the run


def measure_model(name: str, args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    module = MODELS[name]
    bench = module.prepare(args.cache)
    work = (args.work or args.cache / "latency") / name
    work.mkdir(parents=True, exist_ok=True)
    n_eval = eval_samples(bench)
    started = time.perf_counter()
    entry: dict[str, Any] = {
        "fp32": {"path": _rel(bench.onnx_path), "size_bytes": graph_facts.file_bytes(bench.onnx_path)}
    }
    entry["transformer"] = name in TRANSFORMERS
    entry["eval_samples"] = n_eval

    if args.batch_size:
        batch, probes = min(args.batch_size, n_eval), []
        entry["batch_choice"] = f"--batch-size {args.batch_size}" + (
            f" (cut to {batch} eval samples)" if batch < args.batch_size else ""
        )
    else:
        batch, probes = choose_batch(bench, work, args, n_eval)
        entry["batch_choice"] = f"smallest power of two whose fastest FP32 probe run took >= {MIN_FP32_MS:g} ms"
        if probes[-1]["min_ms"] < MIN_FP32_MS:
            entry["batch_choice"] += f" (not reached: the eval split has {n_eval} samples)"
    entry["batch_probes"] = probes
    log(f"[{name}] batch {batch} (probes: {probes})")

    entry["onnxbc"] = compress_onnxbc(bench, work)
    log(f"[{name}] onnxbc compress: {entry['onnxbc']['status']} {entry['onnxbc'].get('wall_s', '')} s")
    entry["ort_static"] = quantize_static_defaults(bench, work)
    log(f"[{name}] quantize_static: {entry['ort_static']['status']} {entry['ort_static'].get('wall_s', '')} s")

    rows = [r for r in ROWS if r == "fp32" or entry[r]["status"] == "ok"]
    paths = [entry[r]["path"] for r in rows]
    batches = max(1, min(BATCHES_PER_ROUND, n_eval // batch))
    out = work / "bench.json"
    entry["load_avg_at_bench"] = os.getloadavg()
    argv, command = bench_command(paths, bench.eval_path, batch, batches, args, out)
    proc = _run(argv, work / "bench.log")
    if proc.returncode != 0:
        raise RuntimeError(f"{command} failed: {_tail(work / 'bench.log')}")
    timing = json.loads(out.read_text())
    entry["bench"] = {"command": command, "json": _rel(out), "report": timing}
    fastest = timing["models"][0]["min_ms"]
    for row, model in zip(rows, timing["models"]):
        entry[row]["latency"] = {k: model[k] for k in ("median_ms", "q1_ms", "q3_ms", "min_ms", "max_ms", "ratio")}
        entry[row]["latency"]["min_ratio"] = round(model["min_ms"] / fastest, 4)  # fastest over FP32's fastest
    log(f"[{name}] bench: " + ", ".join(f"{r} {entry[r]['latency']['median_ms']:.3f} ms" for r in rows))

    errors = evaluate(module, bench, {r: REPO / entry[r]["path"] for r in rows if r != "fp32"})
    for row, values in errors.items():
        entry[row].update(values)
    entry["matrix_reference"] = matrix_reference(name)
    entry["bar"] = issue_bar(entry)
    entry["wall_s"] = round(time.perf_counter() - started, 1)
    log(f"[{name}] rel. MSE exact: " + ", ".join(f"{r} {entry[r].get('rel_mse_exact')}" for r in rows[1:]))
    return entry


def issue_bar(entry: dict[str, Any]) -> dict[str, Any]:
    """Issue 18's bar on this model: the clauses that fail, and whether it applies: the fastest FP32 run took 5 ms
    or more (the median would let other jobs on the machine decide). The speed clauses compare medians."""
    fp32, bc, ort = entry["fp32"], entry["onnxbc"], entry["ort_static"]
    if "latency" not in bc:
        return {"applies": None, "failed": ["onnxbc compress failed"]}
    applies = fp32["latency"]["min_ms"] >= MIN_FP32_MS
    failed = []
    ratio = bc["latency"]["ratio"]
    if applies and ratio >= 1:
        failed.append(f"onnxbc not faster than FP32 ({ratio:.2f}x)")
    if applies and "latency" in ort and bc["latency"]["median_ms"] > ort["latency"]["median_ms"]:
        a, b = bc["latency"], ort["latency"]
        failed.append(
            f"onnxbc slower than quantize_static ({a['ratio']:.2f}x vs {b['ratio']:.2f}x; medians {a['median_ms']:.2f} "
            f"vs {b['median_ms']:.2f} ms, IQR {a['q3_ms'] - a['q1_ms']:.2f} / {b['q3_ms'] - b['q1_ms']:.2f} ms)"
        )
    if applies and entry["transformer"] and ratio > TRANSFORMER_RATIO:
        failed.append(f"transformer above {TRANSFORMER_RATIO}x FP32 ({ratio:.2f}x)")
    ref = entry.get("matrix_reference")
    if ref:
        for key, now in (("eval_rel_mse", bc.get("rel_mse_exact")), ("heldout_rel_mse", bc.get("heldout_rel_mse"))):
            then = ref.get(key)
            if now is not None and then and now > ACCURACY_FACTOR * then:
                failed.append(f"{key.split('_')[0]} rel. MSE {now:.3g} > {ACCURACY_FACTOR}x {then:.3g} (matrix.json)")
    return {"applies": applies, "failed": failed}


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    started = time.perf_counter()
    results: dict[str, Any] = {
        "schema": "onnxbc.latency/1",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": args.command,
        "machine": runner.machine_info(),
        "packages": runner.package_versions(),
        "source": {**runner.source_state(), "tree_dirty": _git_dirty()},
        "config": {
            "rounds": args.rounds,
            "warmup": args.warmup,
            "threads": args.threads,
            "batch_size": args.batch_size or "auto",
            "batches_per_round": BATCHES_PER_ROUND,
            "min_fp32_ms": MIN_FP32_MS,
        },
        "load_avg_at_start": os.getloadavg(),
        "models": {},
    }
    for name in args.models:
        results["models"][name] = measure_model(name, args, log)
        results["wall_s"] = round(time.perf_counter() - started, 1)
        runner.write_json(args.out, results)  # a run that dies keeps what it measured
    results["source_at_end"] = {**runner.source_state(), "tree_dirty": _git_dirty()}  # others may commit meanwhile
    results["load_avg_at_end"] = os.getloadavg()
    results["wall_s"] = round(time.perf_counter() - started, 1)
    runner.write_json(args.out, results)
    return results


# --------------------------------------------------------------------------- LATENCY.md


def write_markdown(path: Path, results: dict[str, Any]) -> None:
    """The generated part between ``BEGIN`` and ``END``; what stands outside them is kept."""
    runner.write_between(path, BEGIN, END, render(results))


def _g(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.3g}"


def _ratio(row: dict[str, Any], bold: bool = False) -> str:
    if "latency" not in row:
        return row.get("status", "–")
    median = f"{row['latency']['ratio']:.2f}x"
    return f"{f'**{median}**' if bold else median} ({row['latency']['min_ratio']:.2f}x)"


def _fused(audited: Any) -> str:
    if not isinstance(audited, dict) or "ops" not in audited:
        return "–"
    layers, ops = audited["layers"], audited["ops"]
    return f"{layers['fused']}/{sum(layers.values())}; {ops['fused']}/{sum(ops.values())}"


def _source(src: dict[str, Any]) -> str:
    modified = f" + uncommitted changes to {', '.join(src['modified'])}" if src.get("modified") else ""
    dirty = "" if src.get("tree_dirty") is None else f" (working tree {'dirty' if src['tree_dirty'] else 'clean'})"
    return f"commit {src.get('commit')}{modified}{dirty}"


def render(results: dict[str, Any]) -> str:
    models, m = results["models"], results["machine"]
    first = next(iter(models.values()))["bench"]["report"]
    bm, ort = first["machine"], first["onnxruntime"]
    vnni = "yes (" + ", ".join(bm["vnni_flags"]) + ")" if bm["vnni"] else ("no" if bm["vnni"] is False else "unknown")
    source = _source(results["source"])
    if results.get("source_at_end") and results["source_at_end"] != results["source"]:
        source += f"; **at the end** {_source(results['source_at_end'])}"
    cfg = results["config"]
    threads = (
        f"{ort['threads']} intra-op thread{'' if ort['threads'] == 1 else 's'}"
        if ort["threads"] is not None
        else "ONNX Runtime's default intra-op threads (not counted)"
    )
    lines = [
        "## The measurements",
        "",
        "Generated by `benchmarks/latency.py` from `benchmarks/results/latency.json`:",
        "",
        "```console",
        results["command"],
        "```",
        "",
        f"- CPU: **{bm['cpu']}**, {bm['cores']} cores, AVX2 {'yes' if m.get('avx2') else 'no'}, **VNNI {vnni}**; "
        f"{m.get('memory_gib')} GiB; {bm['platform']}.",
        f"- onnxbc source measured: {source}.",
        f"- ONNX Runtime {ort['version']}, default CPU session, {threads}; "
        f"{cfg['rounds']} rounds, {cfg['warmup']} untimed runs per turn; batch size {cfg['batch_size']} "
        f"({'per model below' if cfg['batch_size'] == 'auto' else 'every model'}). "
        f"{results['created']}, {results['wall_s']:.0f} s in all; load average "
        f"{', '.join(f'{v:.2f}' for v in results['load_avg_at_start'])} at the start.",
        "- Packages: " + ", ".join(f"{k} {v}" for k, v in results["packages"].items()) + ".",
        "",
        "### Latency and output error",
        "",
        "onnxbc, quantize_static: the model's median latency over FP32's in the same `onnxbc bench` run (below 1: "
        "faster), and in brackets its fastest run over FP32's fastest (what an idle machine would show more "
        "nearly; the bar is judged on the medians). "
        "rel. MSE: of the first output against FP32 on the whole eval split, in ONNX Runtime's default session "
        "(integer kernels) / with its QDQ fusions off (the graph as written). Fused (onnxbc's fusion audit): "
        "quantized Conv/Gemm/MatMul layers that ONNX Runtime runs as integer kernels / all of them; then the same "
        "over every quantized op it audits (Add, Mul, pools, Softmax, ... too). Load: the machine's "
        "1-minute load average when the model's `onnxbc bench` started (this run's own work is one process).",
        "",
        "| model | batch | FP32 ms: median (fastest) | onnxbc | quantize_static | onnxbc rel. MSE default / exact "
        "| quantize_static rel. MSE default / exact | onnxbc fused | quantize_static fused | load | issue 18 bar |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in models.items():
        fp32, bc, ort_row = e["fp32"], e["onnxbc"], e["ort_static"]
        lat = fp32["latency"]
        batch = e["bench"]["report"]["data"]["batch_size"]
        lines.append(
            f"| {name} | {batch} | {lat['median_ms']:.2f} ({lat['min_ms']:.2f}) | {_ratio(bc, bold=True)} "
            f"| {_ratio(ort_row)} | {_g(bc.get('rel_mse_default'))} / {_g(bc.get('rel_mse_exact'))} "
            f"| {_g(ort_row.get('rel_mse_default'))} / {_g(ort_row.get('rel_mse_exact'))} "
            f"| {_fused(bc.get('fusion'))} | {_fused(ort_row.get('fusion'))} | {e['load_avg_at_bench'][0]:.2f} "
            f"| {_bar(issue_bar(e))} |"
        )
    lines += [
        "",
        "Batch sizes: " + "; ".join(f"{n}: {_batch_note(e)}" for n, e in models.items()) + ".",
        "",
        "### Errors against the numbers before issue 18",
        "",
        "onnxbc's eval rel. MSE (exact, as the matrix measures it) and its held-out rel. MSE (the report's, on "
        f"20 % of calib.npz) now and in the W8A8 `onnxbc_independent` row of `{_matrix_file(models)}`; the bar "
        f"is {ACCURACY_FACTOR}x.",
        "",
        "| model | eval rel. MSE now | then | now / then | held-out rel. MSE now | then | now / then |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, e in models.items():
        bc, ref = e["onnxbc"], e.get("matrix_reference") or {}
        now_eval, now_held = bc.get("rel_mse_exact"), bc.get("heldout_rel_mse")
        then_eval, then_held = ref.get("eval_rel_mse"), ref.get("heldout_rel_mse")
        lines.append(
            f"| {name} | {_g(now_eval)} | {_g(then_eval)} | {_div(now_eval, then_eval)} | {_g(now_held)} "
            f"| {_g(then_held)} | {_div(now_held, then_held)} |"
        )
    refs = {(r["commit"], r["created"]) for e in models.values() if (r := e.get("matrix_reference"))}
    if refs:
        lines.append("")
        lines.append("Then: " + "; ".join(f"commit {c}, run {d}" for c, d in sorted(refs)) + ".")
    lines += [
        "",
        "### Task metrics on the eval split (default session / exact; one figure where both agree)",
        "",
        "Then: onnxbc's W8A8 row of the matrix (exact), as above.",
        "",
        "| model | metric | FP32 | onnxbc | onnxbc then | quantize_static |",
        "|---|---|---|---|---|---|",
    ]
    for name, e in models.items():
        then = (e.get("matrix_reference") or {}).get("metrics_exact") or {}
        for metric in _metric_names(e):
            cells = [_metric(e["fp32"], metric), _metric(e["onnxbc"], metric), _g(then.get(metric))]
            lines.append(f"| {name} | {metric} | " + " | ".join([*cells, _metric(e["ort_static"], metric)]) + " |")
    lines += [
        "",
        "### What onnxbc's output does not run as integer kernels",
        "",
        "From the fusion audit of each output (every op in `latency.json`, grouped here by op and reason; names in "
        "a reason are shortened to '…'), and the weighted layers the report says were left float.",
        "",
    ]
    for name, e in models.items():
        lines += _unfused_lines(name, e["onnxbc"])
    lines += ["", "### The commands of each model", ""]
    for name, e in models.items():
        lines.append(f"- **{name}** ({e['wall_s']:.0f} s):")
        lines.append("")
        lines.append("  ```console")
        if "command" in e["onnxbc"]:
            lines.append(f"  {e['onnxbc']['command']}")
        o = e["ort_static"]
        if o.get("status") == "ok":
            pre = "; ".join(o["notes"]) or "quant_pre_process as recommended"
            lines.append(
                f"  # {o['call']} after {pre}; defaults: " + ", ".join(f"{k}={v}" for k, v in o["defaults"].items())
            )
        else:
            lines.append(f"  # quantize_static failed: {o.get('reason')}")
        lines.append(f"  {e['bench']['command']}")
        lines.append("  ```")
        lines.append("")
    return "\n".join(lines).rstrip()


def _matrix_file(models: dict[str, Any]) -> str:
    return next((e["matrix_reference"]["file"] for e in models.values() if e.get("matrix_reference")), _rel(MATRIX))


def _unfused_lines(name: str, bc: dict[str, Any]) -> list[str]:
    if bc.get("status") != "ok":
        return [f"- **{name}**: onnxbc compress failed: {bc.get('reason')}"]
    if "error" in bc["fusion"]:
        return [f"- **{name}**: the fusion audit failed: {bc['fusion']['error']}"]
    unfused, left = bc["fusion"]["unfused"], bc.get("weighted_layers_left_float", [])
    if not unfused and not left:
        return [f"- **{name}**: none; every quantized op runs as an integer kernel."]
    lines = [f"- **{name}**: {len(unfused)} quantized op(s) not fused, {len(left)} weighted layer(s) left float."]
    groups: dict[tuple[str, str, str], list[str]] = {}
    for layer in unfused:
        why = "; ".join(layer["missing"]) or (
            "not in ONNX Runtime's optimized graph under its name, nor is its output (cannot tell)"
            if layer["status"] == "unknown"
            else "the optimized graph shows no reason"
        )
        key = (layer["op"], layer["status"], re.sub(r"'[^']*'", "'…'", why))
        groups.setdefault(key, []).append(layer["name"] or "(unnamed)")
    for (op, status, why), names in groups.items():
        shown = ", ".join(f"`{n}`" for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        lines.append(f"  - {len(names)} {op} ({status}): {why}: {shown}")
    for layer in left:
        lines.append(f"  - {layer['op']} `{layer['name']}`: left float: {layer['reason']}")
    return lines


def _metric_names(e: dict[str, Any]) -> list[str]:
    return list(e["fp32"].get("metrics_default", {}))


def _metric(row: dict[str, Any], metric: str) -> str:
    if "metrics_default" not in row:
        return "–"
    d, x = row["metrics_default"].get(metric), row["metrics_exact"].get(metric)
    return _g(d) if d == x else f"{_g(d)} / {_g(x)}"


def _div(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "–"


def _bar(bar: dict[str, Any]) -> str:
    if bar.get("applies") is False and not bar["failed"]:
        return f"n/a (fastest FP32 run < {MIN_FP32_MS:g} ms)"
    return "met" if not bar["failed"] else "**not met**: " + "; ".join(bar["failed"])


def _batch_note(e: dict[str, Any]) -> str:
    probes = ", ".join(f"{p['batch_size']}: {p['min_ms']:.2f} ms" for p in e["batch_probes"])
    return e["batch_choice"] + (f" (fastest probe run per batch size: {probes})" if probes else "")


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if argv[:1] == ["render"]:
        parser = argparse.ArgumentParser(prog="python -m benchmarks.latency render")
        parser.add_argument("--results", type=Path, default=RESULTS)
        parser.add_argument("--markdown", type=Path, default=MARKDOWN)
        args = parser.parse_args(argv[1:])
        write_markdown(args.markdown, json.loads(args.results.read_text()))
        print(f"wrote {args.markdown}")
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(FAST_TIER), help="comma-separated zoo models")
    parser.add_argument(
        "--batch-size", type=int, default=0, help="samples per run for every model (0: chosen per model)"
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (0: ONNX Runtime's default)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--work", type=Path, help="work folder (default: CACHE/latency)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--markdown", type=Path, default=MARKDOWN)
    args = parser.parse_args(argv)
    args.models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {sorted(MODELS)}")
    args.command = shlex.join(["python", "-m", "benchmarks.latency", *argv])
    results = run(args, log=lambda line: print(line, flush=True))
    write_markdown(args.markdown, results)
    print(f"wrote {args.out} and {args.markdown} ({results['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
