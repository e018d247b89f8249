"""ONNX Runtime's own profile of the largest session one ``compress`` makes (pass 2): kernel time per op type.

    python -m benchmarks.ort_kernels --model minilm          # the zoo's model and calib.npz, onnxbc's defaults

Every ``InferenceSession`` of one ``onnxbc.compress`` call (W8A8 defaults, ``device=cpu``) is made with
``enable_profiling``; the profile of the session with the most nodes (pass 2's shadows and trials beside the
model) is summed by op type: kernel seconds and node count, and its ``model_run`` total. PROFILE.md quotes it.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import onnxruntime as ort

from onnxbc.options import CompressOptions, DataOptions, Device
from onnxbc.pipeline import compress


def profiles(model: Path, data: Path, folder: Path) -> list[Path]:
    """Compress ``model`` with every session profiled into ``folder``; the profile files."""
    real = ort.InferenceSession.__init__

    def profiled(self, source, sess_options=None, *args, **kwargs):
        sess_options = sess_options or ort.SessionOptions()
        sess_options.enable_profiling = True
        sess_options.profile_file_prefix = str(folder / f"session{len(list(folder.glob('*.json'))):03d}")
        real(self, source, sess_options, *args, **kwargs)

    ort.InferenceSession.__init__ = profiled
    try:
        options = CompressOptions(device=Device.CPU)
        compress(model, folder / "q.onnx", data=DataOptions(path=data), options=options, force=True)
    finally:
        ort.InferenceSession.__init__ = real
    return sorted(folder.glob("session*.json"))


def summary(profile: Path) -> dict:
    """Kernel seconds and nodes per op type, the runs and their total seconds."""
    events = json.loads(profile.read_text())
    seconds, nodes = collections.Counter(), collections.defaultdict(set)
    runs = [e["dur"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            seconds[e["args"]["op_name"]] += e["dur"] / 1e6
            nodes[e["args"]["op_name"]].add(e["name"])
    ops = {op: {"seconds": s, "nodes": len(nodes[op])} for op, s in seconds.most_common()}
    return {"runs": len(runs), "run_s": sum(runs) / 1e6, "nodes": sum(len(n) for n in nodes.values()), "ops": ops}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ort_kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", help="a zoo model in --cache")
    parser.add_argument("--cache", type=Path, default=Path(__file__).resolve().parent / ".cache")
    parser.add_argument("--top", type=int, default=8, help="op types shown")
    args = parser.parse_args(argv)
    folder = args.cache / args.model
    if not (folder / "model.onnx").is_file() or not (folder / "calib.npz").is_file():
        parser.error(f"no model.onnx and calib.npz in {folder} (python -m benchmarks.zoo prepare)")
    with tempfile.TemporaryDirectory(prefix="onnxbc-ort-profile-") as tmp:
        found = [summary(p) for p in profiles(folder / "model.onnx", folder / "calib.npz", Path(tmp))]
    largest = max(found, key=lambda s: s["nodes"])
    kernels = sum(o["seconds"] for o in largest["ops"].values())
    print(f"{args.model}: the largest session: {largest['nodes']} nodes, {largest['runs']} runs, ", end="")
    print(f"{largest['run_s']:.2f} s run, {kernels:.2f} s in kernels")
    for op, o in list(largest["ops"].items())[: args.top]:
        print(f"  {op:24s} {o['seconds']:6.2f} s  {o['nodes']:5d} nodes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
