"""Compress time and peak memory versus the number of calibration samples, on one model.

The samples are the first N of the model's deterministic large calibration set (``zoo.chargpt.
calibration_set``: random 128-char windows of the training plays; ``zoo.minilm.calibration_set``: distinct
sentences of the training plays; ``zoo.smollm2.calibration_set``: distinct 512-token windows of the training
plays), in random order, so 64 of them are also 64 of 256.
Each compression runs in a fresh worker, exactly as in the matrix; its output is evaluated too, so that the
table shows what the extra samples buy. The model-size axis of the scaling check comes from the matrix
itself (the same method and setting on every model), see ``render``.
"""

from __future__ import annotations

import dataclasses
import datetime
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import runner
from benchmarks.methods import FP32
from benchmarks.zoo import MODELS, chargpt, minilm, smollm2
from benchmarks.zoo.common import save_npz

# model -> (cache, n) -> .npz
LARGE_SETS = {
    "chargpt": chargpt.calibration_set,
    "minilm": minilm.calibration_set,
    "smollm2": smollm2.calibration_set,
}


@dataclasses.dataclass(frozen=True)
class ScalingConfig:
    name: str
    model: str
    samples: tuple[int, ...]
    methods: tuple[str, ...]
    setting: str
    cache: Path
    results_dir: Path = runner.RESULTS_DIR
    timeout_s: int = 3600
    latency_runs: int = 3
    command: str = ""


def _subsets(model: str, cache: Path, samples: tuple[int, ...], work: Path) -> dict[int, Path]:
    full = LARGE_SETS[model](cache, max(samples))
    with np.load(full, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    paths = {}
    for n in samples:
        path = work / f"calib_{n}.npz"
        save_npz(path, {k: v[:n] for k, v in arrays.items()})
        paths[n] = path
    return paths


def run(config: ScalingConfig, log=print) -> Path:
    started = time.perf_counter()
    work = config.results_dir / "tmp" / config.name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    bench = MODELS[config.model].prepare(config.cache)
    calib = _subsets(config.model, config.cache, config.samples, work)
    results: dict[str, Any] = {
        "schema": runner.SCHEMA,
        "name": config.name,
        "kind": "scaling",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": config.command,
        "machine": runner.machine_info(),
        "packages": runner.package_versions(),
        "onnxbc_source": runner.source_state(),
        "config": {"model": config.model, "setting": config.setting, "samples": list(config.samples)},
        "rows": [],
    }
    reference = work / "fp32_first_output.npy"
    evaluate = dict(cache=config.cache, timeout_s=config.timeout_s, runs=config.latency_runs)
    fp32 = runner.evaluate(config.model, bench.onnx_path, work / FP32, reference, save=True, **evaluate)
    if fp32["status"] != "ok":
        raise RuntimeError(f"FP32 evaluation failed: {fp32['reason']}")
    for n, path in calib.items():
        for method in config.methods:
            cell = work / str(n) / method
            row = {"samples": n, "method": method}
            compressed = runner.compress(
                config.model, config.setting, method, cell, cache=config.cache, timeout_s=config.timeout_s, calib=path
            )
            row.update(compressed)
            if row["status"] == "ok":
                ev = runner.evaluate(config.model, cell / "model.onnx", cell, reference, save=False, **evaluate)
                row.update({k: ev.get(k) for k in ("metrics_exact", "metrics_default", "rel_mse")})
            results["rows"].append(row)
            comp = row.get("compress", {})
            log(f"[scaling {n} {method}] {row['status']} {comp.get('process_s')} s {comp.get('peak_rss_mb')} MB")
            results["wall_s"] = round(time.perf_counter() - started, 1)
            runner.write_json(config.results_dir / f"{config.name}.json", results)
    shutil.rmtree(work, ignore_errors=True)
    return config.results_dir / f"{config.name}.json"
