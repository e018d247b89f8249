"""Peak resident memory of ``onnxbc compress`` per stage (issue: scale), one process per run.

Each run is ``python -m onnxbc compress MODEL --data CALIB --device cpu FLAGS`` in a fresh process; its resident
memory (``VmRSS``, Linux) is read every 0.25 s and each sample is put in the stage whose progress line
("Calibrating activation ranges ...") came last before it. The JSON has, per run, the flags, the wall clock,
the peak, the peak of each stage, the report's output error and its ``memory`` entry::

    python -m benchmarks.memory --model smollm2 --run "--segments 1" --run "--max-memory 3GB"
    python -m benchmarks.memory --model llama --onnx /tmp/llama/model.onnx --calib /tmp/llama/ids.npz --run=...
    python -m benchmarks.memory --model smollm2 --run "" --keep out   # out/run0/model.onnx kept, to evaluate

(results in ``results/memory_MODEL.json``; ``--run=`` for flags without a space, ``--run ""`` for the defaults.)

Nothing else should run beside it: ``VmRSS`` is the process's own, but time is shared.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import runner

INTERVAL_S = 0.25


def _rss_mb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def measure(onnx: Path, calib: Path, flags: str, work: Path) -> dict:
    """One compress in a fresh process: its peak resident memory overall and per stage."""
    out = work / "model.onnx"
    cmd = [sys.executable, "-m", "onnxbc", "compress", str(onnx), "--data", str(calib), "--device", "cpu"]
    cmd += [*shlex.split(flags), "-o", str(out), "--force"]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    stage = ["start"]
    peaks: dict[str, int] = {}

    def sample() -> None:
        while proc.poll() is None:
            mb = _rss_mb(proc.pid)
            peaks[stage[0]] = max(peaks.get(stage[0], 0), mb)
            time.sleep(INTERVAL_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    tail = []
    for line in proc.stdout:
        text = line.strip()
        tail = (tail + [text])[-20:]
        print(f"  {time.perf_counter() - started:7.1f} s {_rss_mb(proc.pid):6d} MB | {text}", flush=True)
        if text.endswith("...") and not text.startswith("..."):  # a stage starts: "Measuring layer errors (2) ..."
            stage[0] = text.split(" (")[0].rstrip(". ")
    proc.wait()
    sampler.join()
    row = {"flags": flags, "status": "ok" if proc.returncode == 0 else "error", "wall_s": None}
    row["wall_s"] = round(time.perf_counter() - started, 1)
    row["peak_rss_mb"] = max(peaks.values(), default=0)
    row["stage_peak_rss_mb"] = peaks
    if proc.returncode != 0:
        row["reason"] = "\n".join(tail)
        return row
    report = json.loads((work / "model.report.json").read_text())
    row["output_rel_mse"] = report["compensation"].get("output_rel_mse")
    row["memory"] = report.get("memory")
    row["warnings"] = report.get("warnings", [])
    row["output_mb"] = round(report["output"]["bytes"] / 1e6, 1)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a zoo model (its cached model.onnx and calib.npz) or a label")
    parser.add_argument("--onnx", type=Path, help="the model file (default: the zoo cache's)")
    parser.add_argument("--calib", type=Path, help="the calibration .npz (default: the zoo cache's)")
    parser.add_argument("--cache", type=Path, default=Path("benchmarks/.cache"))
    parser.add_argument("--run", action="append", required=True, help="the flags of one run (repeat for more)")
    parser.add_argument("--name", help="results/NAME.json (default: memory_MODEL)")
    parser.add_argument("--keep", type=Path, help="keep each run's model and report in KEEP/run<i>/ (to evaluate them)")
    args = parser.parse_args(argv)
    onnx = args.onnx or args.cache / args.model / "model.onnx"
    calib = args.calib or args.cache / args.model / "calib.npz"
    path = runner.RESULTS_DIR / f"{args.name or 'memory_' + args.model}.json"
    results = {
        "kind": "memory",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.memory " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "machine": runner.machine_info(),
        "onnxbc_source": runner.source_state(),
        "model": args.model,
        "onnx": str(onnx),
        "weights_mb": round(sum(p.stat().st_size for p in onnx.parent.glob(onnx.name + "*")) / 1e6, 1),
        "rows": [],
    }
    for i, flags in enumerate(args.run):
        with tempfile.TemporaryDirectory(prefix="onnxbc-memory-") as work:
            row = measure(onnx, calib, flags, Path(work))
            if args.keep is not None:
                shutil.copytree(work, args.keep / f"run{i}", dirs_exist_ok=True)
        results["rows"].append(row)
        print(f"[{args.model} {flags}] {row['status']} {row['wall_s']} s peak {row['peak_rss_mb']} MB", flush=True)
        runner.write_json(path, results)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
