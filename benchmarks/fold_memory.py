"""What an ONNX Runtime CPU session holds for one weight, by how the graph makes it (issue: scale).

``calibration.segments.held_bytes`` estimates the bytes a segment's session holds from its graph; this measures
the cases it counts, each in a fresh process: a float weight, an int8 or int4 weight's DequantizeLinear (folded
into a float weight), the same then transposed (folded again), two such chains, each read by a MatMul. The
session is made as the collector makes segment sessions (no memory arena, no prepacking, ``disable_quant_qdq``:
constant DequantizeLinear nodes folded), the weight in an external-data file; and again with ONNX Runtime's
constant folding off (``SessionFactory.create_from(fold=False)``: what the graph computes from constants is
computed on every run). Reported per case: the peak resident memory over the process's before the session is
made, what it holds after, and after three runs of one [1, 128, K] input, in MB (2**20 bytes), beside the float
weight's size, and the mean time of a run::

    python -m benchmarks.fold_memory                 # 4096 x 8192 weights (128 MiB as float)
    python -m benchmarks.fold_memory --rows 1024     # smaller

(results in ``results/fold_memory.json``)
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CASES = {
    "float": ("float", False, 1),
    "float_transposed": ("float", True, 1),
    "int8_dq": ("int8", False, 1),
    "int8_dq_transposed": ("int8", True, 1),
    "int4_dq": ("int4", False, 1),
    "int4_dq_transposed": ("int4", True, 1),
    "int4_dq_transposed_x2": ("int4", True, 2),
}
BLOCK = 128


def build(path: Path, kind: str, transposed: bool, count: int, rows: int, cols: int) -> None:
    """``count`` weights of ``rows x cols`` (K x N as the MatMul reads them), each made as ``kind`` says: a float
    initializer, or a blocked (int4, int8) DequantizeLinear of one; with ``transposed``, stored N x K and
    transposed by a Transpose node (a tied LM head's layout)."""
    rng = np.random.default_rng(0)
    nodes, inits, outputs = [], [], []
    shape = (cols, rows) if transposed else (rows, cols)
    axis = 1 if transposed else 0  # the blocks run along K
    for i in range(count):
        w = f"w{i}"
        if kind == "float":
            inits.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), w))
        else:
            codes = rng.integers(-8, 8, shape).astype(np.int8)
            q = (
                helper.make_tensor(f"q{i}", TensorProto.INT4, shape, codes.flatten().tolist())
                if kind == "int4"
                else numpy_helper.from_array(codes, f"q{i}")
            )
            scale_shape = (cols, rows // BLOCK) if transposed else (rows // BLOCK, cols)
            scale = numpy_helper.from_array((rng.random(scale_shape) * 0.01 + 0.001).astype(np.float32), f"s{i}")
            inits += [q, scale]
            nodes.append(helper.make_node("DequantizeLinear", [f"q{i}", f"s{i}"], [w], axis=axis, block_size=BLOCK))
        if transposed:
            nodes.append(helper.make_node("Transpose", [w], [w + "t"], perm=[1, 0]))
            w += "t"
        nodes.append(helper.make_node("MatMul", ["x", w], [f"y{i}"]))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, 128, cols]))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 128, rows])
    graph = helper.make_graph(nodes, "g", [x], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    onnx.save(model, path, save_as_external_data=True, location=path.name + ".data", size_threshold=0)


MEASURE = """
import sys, time, numpy as np, onnxruntime as ort
def mem():
    with open("/proc/self/status") as f:
        v = {l.split()[0]: int(l.split()[1]) // 1024 for l in f if l.startswith(("VmHWM", "VmRSS"))}
    return v["VmRSS:"], v["VmHWM:"]
before, _ = mem()
o = ort.SessionOptions()
o.enable_cpu_mem_arena = False
o.log_severity_level = 3
o.add_session_config_entry("session.disable_prepacking", "1")
o.add_session_config_entry("session.disable_quant_qdq", "1")
if sys.argv[3] == "0":
    o.add_session_config_entry("optimization.disable_specified_optimizers", "ConstantFolding")
s = ort.InferenceSession(sys.argv[1], o, providers=["CPUExecutionProvider"])
held, peak = mem()
x = np.random.default_rng(1).standard_normal((1, 128, int(sys.argv[2]))).astype(np.float32)
start = time.perf_counter()
for _ in range(3):
    s.run(None, {"x": x})
seconds = (time.perf_counter() - start) / 3
ran, ran_peak = mem()
print(peak - before, held - before, ran - before, ran_peak - before, seconds)
"""


def measure(path: Path, rows: int, fold: bool) -> dict:
    cmd = [sys.executable, "-c", MEASURE, str(path), str(rows), str(int(fold))]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{path.name}: {out.stderr.strip().splitlines()[-1]}")
    *sizes, seconds = out.stdout.split()
    made_peak, held, after_runs, run_peak = (int(x) for x in sizes)
    return {
        "made_peak_mb": made_peak,
        "held_mb": held,
        "after_runs_mb": after_runs,
        "peak_mb": run_peak,
        "run_s": round(float(seconds), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4096, help="K, the MatMul's inner size")
    parser.add_argument("--cols", type=int, default=8192, help="N, its output size")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fold_memory.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnxbc-fold-") as tmp:
        for name, (kind, transposed, count) in CASES.items():
            path = Path(tmp) / f"{name}.onnx"
            build(path, kind, transposed, count, args.rows, args.cols)
            for fold in (True, False):
                row = {"case": name, "fold": fold, "weights": count}
                row["float_weight_mb"] = args.rows * args.cols * 4 * count >> 20
                row.update(measure(path, args.rows, fold))
                print(json.dumps(row), flush=True)
                rows.append(row)
    result = {"date": datetime.date.today().isoformat(), "rows": args.rows, "cols": args.cols, "cases": rows}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
