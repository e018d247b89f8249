"""The matrix: every model x setting x method, each compression and each evaluation in a fresh process.

For one model: evaluate FP32 (this also saves its first output, the reference for the output error); then for
each setting and each method that applies, compress in a worker process (wall clock and peak RSS measured
here, from ``os.wait4``: the peak of that one child), evaluate the output in another worker, and delete it.
Rows are written to the results JSON as they finish, so a run that dies keeps what it measured.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.methods import FP32, METHODS, TRANSFORMERS, baselines
from benchmarks.settings import SETTINGS, calibration_arrays, sample_count
from benchmarks.zoo import MODELS

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
SCHEMA = "onnxbc.bench/1"
# batch of eval inputs timed for the latency column; the LM's 512-token windows are timed one at a time
LATENCY_BATCH = {"smollm2": 1}
DEFAULT_LATENCY_BATCH = 8
PACKAGES = (
    "onnxbc",
    "onnx",
    "onnxruntime-gpu",
    "onnxruntime",
    "onnx-ir",
    "onnxscript",
    "numpy",
    "nncf",
    "torch",
    "transformers",
    "matplotlib",
)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    name: str
    models: tuple[str, ...]
    settings: tuple[str, ...]
    methods: tuple[str, ...]  # FP32 first, then METHODS keys
    cache: Path
    results_dir: Path = RESULTS_DIR
    slow: bool = False  # the slow tier: rows marked slow_on for a model run too
    keep_outputs: bool = False
    timeout_s: int = 3600
    latency_runs: int = 10
    command: str = ""

    @property
    def work_root(self) -> Path:
        return self.results_dir / "tmp" / self.name

    @property
    def results_path(self) -> Path:
        return self.results_dir / f"{self.name}.json"


# --------------------------------------------------------------------------- processes


@dataclasses.dataclass(frozen=True)
class Process:
    returncode: int
    wall_s: float
    peak_rss_mb: float
    timed_out: bool
    log: Path

    def tail(self, lines: int = 1) -> str:
        text = self.log.read_text(errors="replace").strip().splitlines() if self.log.exists() else []
        return " | ".join(text[-lines:])


def spawn(argv: Sequence[str], log: Path, timeout_s: float) -> Process:
    """Run ``argv`` to completion; its wall clock and its own peak RSS (``wait4`` on that child only)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as sink:
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdout=sink, stderr=subprocess.STDOUT, cwd=REPO)
        timed_out = threading.Event()

        def kill() -> None:
            if proc.returncode is None:
                timed_out.set()
                proc.kill()

        timer = threading.Timer(timeout_s, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
    return Process(proc.returncode, wall, usage.ru_maxrss / 1024, timed_out.is_set(), log)


def _worker(*args: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.worker", *args]


# --------------------------------------------------------------------------- machine and packages


def machine_info() -> dict[str, Any]:
    model = platform.processor()
    flags: set[str] = set()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                model = value.strip()
            elif key.strip() == "Flags":
                flags = set(value.split())
    except (OSError, subprocess.CalledProcessError):
        pass
    mem_gib = None
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "avx2": "avx2" in flags,
        "vnni": bool(flags & {"avx512_vnni", "avx_vnni"}),
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def source_state() -> dict[str, Any]:
    """The onnxbc source the run measured: git commit and the files that differ from it (onnxbc/, passes/)."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return ""

    modified = git("status", "--porcelain", "--", "onnxbc", "passes", "pyproject.toml").splitlines()
    # porcelain lines are "XY path": strip only the line ends (a leading space is part of XY)
    return {"commit": git("rev-parse", "--short", "HEAD").strip(), "modified": [line[3:] for line in modified]}


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


# --------------------------------------------------------------------------- the matrix


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def evaluate(
    model: str, onnx_path: Path, cell: Path, reference: Path, *, save: bool, cache: Path, timeout_s: float, runs: int
) -> dict:
    """Evaluate one model file in a worker (see worker.evaluate); ``save``: this is FP32, write the reference."""
    result_path = cell / "evaluate.json"
    result_path.unlink(missing_ok=True)
    args = ["evaluate", "--model", model, "--onnx", str(onnx_path), "--cache", str(cache)]
    args += ["--save-reference" if save else "--reference", str(reference)]
    args += ["--latency-batch", str(LATENCY_BATCH.get(model, DEFAULT_LATENCY_BATCH))]
    args += ["--latency-runs", str(runs), "--result", str(result_path)]
    proc = spawn(_worker(*args), cell / "evaluate.log", timeout_s)
    result = _read_json(result_path)
    if proc.returncode != 0 or result is None:
        why = "timed out" if proc.timed_out else f"exit {proc.returncode}: {proc.tail()}"
        return {"status": "failed", "reason": f"evaluation failed ({why})"}
    return result


def compress(
    model: str, setting: str, method: str, cell: Path, *, cache: Path, timeout_s: float, calib: Path | None = None
) -> dict:
    """Compress in a worker; the row's status, notes, tool facts and process costs (output: cell/model.onnx)."""
    row: dict[str, Any] = {"notes": []}
    missing = METHODS[method].missing_package()
    if missing:
        return {**row, "status": "skipped", "reason": f"{missing} is not importable in this environment"}
    shutil.rmtree(cell, ignore_errors=True)
    result_path = cell / "compress.json"
    args = ["compress", "--model", model, "--setting", setting, "--method", method, "--cache", str(cache)]
    args += ["--out", str(cell / "model.onnx"), "--result", str(result_path)]
    if calib:
        args += ["--calib", str(calib)]
    proc = spawn(_worker(*args), cell / "compress.log", timeout_s)
    result = _read_json(result_path)
    if result is None:
        why = "timed out" if proc.timed_out else f"exit {proc.returncode}: {proc.tail()}"
        return {**row, "status": "failed", "reason": f"compress process died ({why})"}
    if result["status"] != "ok":
        return {**row, "status": result["status"], "reason": result.get("reason")}
    return {
        "status": "ok",
        "notes": result.get("notes", []),
        "info": result.get("info", {}),
        "compress": {
            "process_s": round(proc.wall_s, 2),
            "call_s": result["call_s"],
            "import_s": result["import_s"],
            "peak_rss_mb": round(proc.peak_rss_mb, 1),
        },
    }


def run_cell(config: RunConfig, model: str, setting: str, method: str, reference: Path) -> dict:
    cell = config.work_root / model / setting / method
    row = {"model": model, "setting": setting, "method": method, "load_avg_1min": os.getloadavg()[0]}
    row.update(compress(model, setting, method, cell, cache=config.cache, timeout_s=config.timeout_s))
    if row["status"] != "ok":
        return row
    evaluation = evaluate(
        model,
        cell / "model.onnx",
        cell,
        reference,
        save=False,
        cache=config.cache,
        timeout_s=config.timeout_s,
        runs=config.latency_runs,
    )
    if evaluation["status"] != "ok":
        row.update(status="failed", reason=evaluation["reason"])
    else:
        row["notes"] += evaluation.pop("notes")
        evaluation.pop("status")
        row.update(evaluation)
    if not config.keep_outputs:
        for path in cell.glob("*.onnx*"):
            path.unlink()
    return row


def model_info(bench) -> dict[str, Any]:
    from benchmarks import graph_facts

    stamp = _read_json(bench.onnx_path.parent / "prepared.json") or {}
    with np.load(bench.eval_path, allow_pickle=False) as data:
        n_eval = len(data[bench.input_names()[0]])
    return {
        "onnx": str(bench.onnx_path.relative_to(REPO) if bench.onnx_path.is_relative_to(REPO) else bench.onnx_path),
        "size_bytes": graph_facts.file_bytes(bench.onnx_path),
        "calibration_samples": sample_count(calibration_arrays(bench)),
        "eval_samples": n_eval,
        "metric_names": list(bench.metric_names),
        "fixed_shapes": not graph_facts.dynamic_input_dims(bench.onnx_path),
        "fp32_at_build": stamp.get("fp32"),
    }


def run_model(
    config: RunConfig, model: str, results: dict, save: Callable[[], None], log: Callable[[str], None]
) -> None:
    bench = MODELS[model].prepare(config.cache)
    results["models"][model] = model_info(bench)
    save()
    work = config.work_root / model
    reference = work / "fp32_first_output.npy"
    fp32 = evaluate(
        model,
        bench.onnx_path,
        work / FP32,
        reference,
        save=True,
        cache=config.cache,
        timeout_s=config.timeout_s,
        runs=config.latency_runs,
    )
    row = {"model": model, "setting": None, "method": FP32, **fp32}
    row.setdefault("notes", [])
    results["rows"].append(row)
    log(_summary(row))
    save()
    for setting_name in config.settings:
        setting = SETTINGS[setting_name]
        for method_name in config.methods:
            if method_name == FP32 or not METHODS[method_name].applies_to(setting):
                continue
            if METHODS[method_name].transformers_only and model not in TRANSFORMERS:
                continue
            if model in METHODS[method_name].slow_on and not config.slow:
                reason = "slow tier (one pass over the calibration data per wave of layers); run with --slow"
                row = {"model": model, "setting": setting_name, "method": method_name, "status": "skipped"}
                row["reason"] = reason
            else:
                row = run_cell(config, model, setting_name, method_name, reference)
            results["rows"].append(row)
            log(_summary(row))
            save()
    reference.unlink(missing_ok=True)


def add_ratios(results: dict) -> None:
    """Time and peak memory relative to the setting's ORT row; latency and size relative to FP32."""
    rows = results["rows"]
    by_key = {(r["model"], r["setting"], r["method"]): r for r in rows}
    for r in rows:
        if r.get("status") != "ok" or r["method"] == FP32:
            continue
        ratios: dict[str, Any] = {}
        fp32 = by_key.get((r["model"], None, FP32))
        if fp32 and fp32.get("status") == "ok":
            ratios["latency_vs_fp32"] = r["latency_ms"] / fp32["latency_ms"]
            ratios["size_vs_fp32"] = r["size_bytes"] / fp32["size_bytes"]
        candidates = [by_key.get((r["model"], r["setting"], name)) for name in baselines(SETTINGS[r["setting"]])]
        base = next((b for b in candidates if b and b.get("status") == "ok"), None)
        if base:
            ratios["baseline"] = base["method"]
            ratios["time_vs_baseline"] = r["compress"]["process_s"] / base["compress"]["process_s"]
            ratios["call_time_vs_baseline"] = r["compress"]["call_s"] / max(base["compress"]["call_s"], 1e-3)
            ratios["rss_vs_baseline"] = r["compress"]["peak_rss_mb"] / base["compress"]["peak_rss_mb"]
        r["ratios"] = {k: round(v, 3) if isinstance(v, float) else v for k, v in ratios.items()}


def json_safe(value: Any) -> Any:
    """NaN and infinities are not JSON: written as null (the row's notes say why when it matters)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(json_safe(results), indent=1, allow_nan=False) + "\n")
    tmp.replace(path)


def write_between(path: Path, begin: str, end: str, generated: str) -> None:
    """Put ``generated`` between the markers ``begin`` and ``end`` of the markdown file ``path`` (the whole file
    when it has none); what stands outside them (hand-written findings) is kept."""
    block = f"{begin}\n{generated}\n{end}"
    old = path.read_text() if path.exists() else ""
    if begin in old and end in old:
        text = old[: old.index(begin)] + block + old[old.index(end) + len(end) :]
    else:
        text = block + "\n"
    path.write_text(text)


def run(config: RunConfig, log: Callable[[str], None] = print) -> dict:
    started = time.perf_counter()
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "name": config.name,
        "kind": "matrix",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": config.command,
        "machine": machine_info(),
        "packages": package_versions(),
        "onnxbc_source": source_state(),
        "config": {
            "models": list(config.models),
            "settings": {s: SETTINGS[s].description for s in config.settings},
            "methods": {m: ("float model" if m == FP32 else METHODS[m].description) for m in config.methods},
            "latency_batch": {m: LATENCY_BATCH.get(m, DEFAULT_LATENCY_BATCH) for m in config.models},
            "latency_runs": config.latency_runs,
            "slow_tier": config.slow,
        },
        "models": {},
        "rows": [],
        "load_avg_at_start": os.getloadavg(),
    }

    def save() -> None:
        add_ratios(results)
        results["wall_s"] = round(time.perf_counter() - started, 1)
        write_json(config.results_path, results)

    for model in config.models:
        run_model(config, model, results, save, log)
    save()
    if not config.keep_outputs:
        shutil.rmtree(config.work_root, ignore_errors=True)
    return results


def _summary(row: dict) -> str:
    head = f"[{row['model']} {row['setting'] or '-'} {row['method']}]"
    if row.get("status") != "ok":
        return f"{head} {row.get('status')}: {row.get('reason')}"
    metrics = " ".join(
        f"{k}={row['metrics_exact'][k]:.4g}/{row['metrics_default'][k]:.4g}" for k in list(row["metrics_exact"])[:2]
    )
    comp = row.get("compress")
    cost = f" {comp['process_s']:.1f}s {comp['peak_rss_mb']:.0f}MB" if comp else ""
    rel = row.get("rel_mse")
    return f"{head} ok{cost} {metrics} rel_mse={rel if rel is None else f'{rel:.3g}'}"
