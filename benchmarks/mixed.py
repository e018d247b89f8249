"""Mixed precision, W4A4 and 3-bit GPTQ on the transformers of the zoo, beside uniform bits and NNCF (issue 8).

    python -m benchmarks.mixed                           # chargpt, minilm -> results/mixed.json, MIXED.md, PNGs
    python -m benchmarks.mixed --models chargpt --quick  # one budget (4.5 bits), uniform int4 only
    python -m benchmarks.mixed --slow                    # + SmolLM2 (3-bit GPTQ section only)
    python -m benchmarks.mixed --render                  # MIXED.md and the plots again from the JSON

Sections, per model (``MODEL_SECTIONS``):

- ``size``, weight-only, per output channel: uniform int8/int4/int3; ``--avg-bits X`` over ``--candidates
  2,3,4,8`` with candidates priced after (``--compensated-prices``) and before (``--raw-prices``) bias
  compensation; ``--max-size`` = the uniform int4 file (the claim at equal size); and NNCF
  ``compress_weights(INT4_SYM, group_size=-1)`` with the ``ratio`` whose file is closest to onnxbc's
  4.5-bit file (``match_ratio``: one linear interpolation, then bisection on the measured file size).
- ``w4a4``: int4 weights with int4 (and, for reference, int8) activations, bias correction none vs independent.
- ``gptq``: int3 weight-only, rounding nearest vs GPTQ, bias correction none vs independent.

Every row is measured as the matrix measures (``benchmarks.worker``): the zoo's task metric on the eval split
with ONNX Runtime computing the graph as written (QDQ fusions off), the first output's rel. MSE against FP32
over the same run, and the file size. Average weight bits are logical bits per quantized weight (the report's
per-weight bits weighted by parameter count; at the default opset int2/int3 codes sit in int4 containers, so
they do not make the file smaller than int4). Compress time is the wall clock of the ``onnxbc.compress`` /
``nncf.compress_weights`` call in this process (imports warm), not comparable with the matrix's fresh-process times.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import enum
import importlib.util
import json
import logging
import math
import os
import shlex
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

import onnxbc
from benchmarks import graph_facts, runner
from benchmarks.render import LOWER_IS_BETTER
from benchmarks.settings import calibration_arrays, sample_count
from benchmarks.tools import at_least_opset
from benchmarks.worker import EXACT_SESSION, OutputError
from benchmarks.zoo import DEFAULT_CACHE, MODELS
from benchmarks.zoo.common import BenchModel
from onnxbc.options import Rounding

RESULTS = runner.RESULTS_DIR / "mixed.json"
MARKDOWN = Path(__file__).resolve().parent / "MIXED.md"
AVG_BITS = (3.5, 4.5, 5.5, 6.5)
UNIFORM_BITS = (8, 4, 3)
CANDIDATES = (2, 3, 4, 8)
BLOCK_CANDIDATES = (0, 128, 64, 32)  # --block-candidates of the "bits and blocks" rows (0: per channel)
CLAIM_BITS = 4.5  # the claim check and NNCF's size target
SECTIONS = ("size", "w4a4", "gptq")
DEFAULT_MODELS = ("chargpt", "minilm")
MODEL_SECTIONS = {"chargpt": SECTIONS, "minilm": ("size", "w4a4"), "smollm2": ("gptq",)}  # others: all
SLOW_MODELS = ("smollm2",)
NNCF_MIN_RATIO = 1e-6  # nncf reads ratio 0 as 1 (`ratio or 1`); this ratio leaves every layer int8
NNCF_TOLERANCE = 0.0025  # stop the ratio search within 0.25 % of the target size

log = logging.getLogger("benchmarks.mixed")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row: a tool and its options (``CompressOptions`` keywords besides ``device``)."""

    key: str
    section: str
    label: str
    tool: str = "onnxbc"  # "fp32" | "onnxbc" | "nncf"
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    size_of: str | None = None  # the row whose file size is this row's budget (max-size) or target (nncf)
    policy: str | None = None  # an --policy file's text (written beside the row's output)


@dataclasses.dataclass(frozen=True)
class MixedConfig:
    models: tuple[str, ...] = DEFAULT_MODELS
    avg_bits: tuple[float, ...] = AVG_BITS
    uniform_bits: tuple[int, ...] = UNIFORM_BITS
    bias_corrections: tuple[str, ...] = ("none", "independent")  # sections w4a4 and gptq
    sections: Mapping[str, tuple[str, ...]] | None = None  # per model; None: MODEL_SECTIONS
    nncf_probes: int = 6
    cache: Path = DEFAULT_CACHE
    results_path: Path = RESULTS
    markdown: Path = MARKDOWN
    keep_outputs: bool = False
    quick: bool = False
    slow: bool = False
    command: str = ""

    def sections_for(self, model: str) -> tuple[str, ...]:
        table = MODEL_SECTIONS if self.sections is None else self.sections
        return tuple(table.get(model, SECTIONS))

    @property
    def work_root(self) -> Path:
        return self.results_path.parent / "tmp" / self.results_path.stem


# --------------------------------------------------------------------------- the rows


def mixed_key(bits: float, compensated: bool) -> str:
    return f"mixed{bits:g}-{'comp' if compensated else 'raw'}"


def plan(model: str, config: MixedConfig) -> list[Variant]:
    """The rows of one model, in table order (FP32 first: every error is measured against it)."""
    W, A = onnxbc.WeightType, onnxbc.ActivationType
    sections = config.sections_for(model)
    rows = [Variant("fp32", "reference", "FP32", tool="fp32")]
    weight_only = {"activations": A.NONE}
    if "size" in sections:
        for b in config.uniform_bits:
            # every weight at b bits: without the rule, --weights int4 keeps the few weights that cost the model
            # far more than their bytes at 8 bits (onnxbc.precision, "Kept at 8 bits")
            options = {**weight_only, "weights": W.of_bits(b)}
            rows.append(
                Variant(
                    f"int{b}",
                    "size",
                    f"uniform int{b} (policy: every layer)",
                    options=options,
                    policy=_every_layer_at(b),
                )
            )
        for x in config.avg_bits:
            for comp in (True, False):
                label = f"mixed {x:g} bits, {'compensated' if comp else 'raw'} prices"
                options = {**weight_only, "avg_bits": x, "candidates": CANDIDATES, "price_compensated": comp}
                rows.append(Variant(mixed_key(x, comp), "size", label, options=options))
        if 4 in config.uniform_bits:
            # 3-bit codes take a 4-bit container: only packed int2 (opset 25) can pay for 8-bit layers
            options = {**weight_only, "candidates": CANDIDATES, "opset": 25}
            label = "mixed, max size = int4 file (opset 25: int2 packed)"
            rows.append(Variant("max-size-int4", "size", label, options=options, size_of="int4"))
            blocks = {**options, "block_candidates": BLOCK_CANDIDATES}
            label = "mixed bits and blocks, max size = int4 file (opset 25)"
            rows.append(Variant("max-size-int4-blocks", "size", label, options=blocks, size_of="int4"))
            # uniform int4 in blocks of 64 stores 4 + 32/64 = 4.5 bits a weight (fp32 scales): the same size as
            # 4.5-bit mixed precision, so the claim can be asked at equal file size
            uniform_b64 = {**weight_only, "weights": W.INT4, "block_size": 64}
            rows.append(
                Variant(
                    "int4-b64",
                    "size",
                    "uniform int4, blocks of 64 (4.5 bits stored; policy: every layer)",
                    options=uniform_b64,
                    policy=_every_layer_at(4),
                )
            )
            label = "mixed, max size = int4 blocks-of-64 file (opset 25: int2 packed)"
            rows.append(Variant("max-size-int4-b64", "size", label, options=options, size_of="int4-b64"))
            label = "mixed bits and blocks, max size = int4 blocks-of-64 file (opset 25)"
            rows.append(Variant("max-size-int4-b64-blocks", "size", label, options=blocks, size_of="int4-b64"))
        if CLAIM_BITS in config.avg_bits:
            label = f"NNCF INT4_SYM per channel, ratio matched to mixed {CLAIM_BITS:g}"
            rows.append(Variant("nncf", "size", label, tool="nncf", size_of=mixed_key(CLAIM_BITS, True)))
    if "w4a4" in sections:
        for acts in (A.INT4, A.INT8):
            for bc in config.bias_corrections:
                options = {"weights": W.INT4, "activations": acts, "bias_correction": onnxbc.BiasCorrection(bc)}
                label = f"W4A{acts.bits}, bias correction {bc}"
                rows.append(Variant(f"w4a{acts.bits}-{bc}", "w4a4", label, options=options))
    if "gptq" in sections:
        for rounding in (Rounding.NEAREST, Rounding.GPTQ):
            for bc in config.bias_corrections:
                options = {**weight_only, "weights": W.INT3, "rounding": rounding}
                options["bias_correction"] = onnxbc.BiasCorrection(bc)
                label = f"int3 {rounding.value}, bias correction {bc}"
                rows.append(Variant(f"int3-{rounding.value}-{bc}", "gptq", label, options=options))
    return rows


def _every_layer_at(bits: int) -> str:
    return f'[[layer]]\npattern = ".*"\nbits = {bits}\n'


def cli_flags(options: Mapping[str, Any]) -> str:
    """The ``onnxbc compress`` flags that give ``options`` (besides --data/--samples/--device cpu)."""
    parts = []
    for key, value in options.items():
        if key == "price_compensated":
            parts.append("--compensated-prices" if value else "--raw-prices")
            continue
        if isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, tuple):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, float):
            value = f"{value:g}"
        elif isinstance(value, Path):  # a file the run wrote (a policy): its rules are in the row's label
            value = value.name
        parts.append(f"--{key.replace('_', '-')} {value}")
    return " ".join(parts)


# --------------------------------------------------------------------------- measuring


def measure(module, bench: BenchModel, path: Path, reference: Path, *, save: bool = False) -> dict:
    """Task metric (exact graph semantics), first-output rel. MSE against FP32, and file size."""
    tap = OutputError(None if save else np.load(reference, mmap_mode="r"))
    metrics = module.evaluate(path, bench, session_config=EXACT_SESSION, output_tap=tap)
    if save:
        np.save(reference, np.concatenate(tap.kept, axis=0))
    notes = [f"{tap.nonfinite} non-finite output values"] if tap.nonfinite else []
    return {
        "status": "ok",
        "metrics": metrics,
        "rel_mse": tap.rel_mse(),
        "size_bytes": graph_facts.file_bytes(path),
        "notes": notes,
    }


def weight_bits(report: dict) -> tuple[dict[int, int], set[str]]:
    """Parameters per bit width over the quantized weights of a report, and those weights' names."""
    seen: dict[str, tuple[int, int]] = {}
    for layer in report["layers"]:
        w = layer.get("weight")
        if w and layer["status"] == "quantized":
            seen[w["name"]] = (w["bits"], w["params"])
    params: dict[int, int] = {}
    for bits, n in seen.values():
        params[bits] = params.get(bits, 0) + n
    return dict(sorted(params.items())), set(seen)


def average_bits(params: Mapping[int, int]) -> float | None:
    total = sum(params.values())
    return sum(int(b) * n for b, n in params.items()) / total if total else None


def _onnxbc_row(options: dict, bench: BenchModel, data: onnxbc.DataOptions, cell: Path) -> dict:
    compress_options = onnxbc.CompressOptions(device=onnxbc.Device.CPU, **options)
    start = time.perf_counter()
    result = onnxbc.compress(bench.onnx_path, cell / "model.onnx", data=data, options=compress_options, force=True)
    call_s = time.perf_counter() - start
    report = result.report.to_dict()
    params, names = weight_bits(report)
    precision = {k: v for k, v in report["precision"].items() if k not in ("layers", "options")}
    return {
        "path": result.output,
        "quantized_weights": names,
        "row": {
            "compress_s": round(call_s, 2),
            "avg_bits": average_bits(params),
            "bits_params": params,
            "compensation": report["compensation"],
            "precision": precision,
            "timings_s": report["timings_s"],
            "warnings": report["warnings"],
        },
    }


# --------------------------------------------------------------------------- NNCF, size-matched


def match_ratio(compress_at: Callable[[float], int], target: int, probes: int) -> tuple[float, list[dict]]:
    """The probed ``ratio`` whose file is closest to ``target`` bytes, and every probe made.

    NNCF gives int4 to the least sensitive layers until their share of the parameters would reach ``ratio``,
    so the file size is a non-increasing step function of it: probe 1 and ~0 (all int4 / all int8), then
    interpolate linearly between the two sizes that bracket the target, then bisect the bracket.
    """
    sizes: dict[float, int] = {}

    def probe(ratio: float) -> int:
        sizes[ratio] = compress_at(ratio)
        return sizes[ratio]

    hi, s_hi = 1.0, probe(1.0)
    if s_hi < target and probes > 1:
        lo, s_lo = NNCF_MIN_RATIO, probe(NNCF_MIN_RATIO)
        while s_lo > target and len(sizes) < probes and hi - lo > 1e-4:
            guess = lo + (hi - lo) * (s_lo - target) / (s_lo - s_hi) if len(sizes) == 2 else (lo + hi) / 2
            ratio = round(min(max(guess, lo + 1e-4), hi - 1e-4), 4)
            if ratio in sizes:
                break
            size = probe(ratio)
            if abs(size - target) <= NNCF_TOLERANCE * target:
                break
            if size > target:
                lo, s_lo = ratio, size
            else:
                hi, s_hi = ratio, size
    best = min(sizes, key=lambda r: (abs(sizes[r] - target), sizes[r]))
    return best, [{"ratio": r, "size_bytes": s} for r, s in sizes.items()]


def nncf_bits(path: Path) -> dict[int, int]:
    """Parameters per bit width of the weights NNCF's DequantizeLinear nodes read."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    width = {onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4, onnx.TensorProto.INT8: 8, onnx.TensorProto.UINT8: 8}
    params: dict[int, int] = {}
    for node in model.graph.node:
        init = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if init is not None and init.data_type in width and len(init.dims) > 1:
            bits = width[init.data_type]
            params[bits] = params.get(bits, 0) + math.prod(init.dims)
    return dict(sorted(params.items()))


def _nncf_row(bench: BenchModel, target: int, quantized: set[str], cell: Path, probes: int) -> dict:
    import nncf
    import onnx

    from benchmarks.tools.nncf_tool import _save

    nncf.set_log_level(logging.ERROR)
    source, notes = at_least_opset(bench.onnx_path, cell / "model.onnx", 21)  # int4 per channel: DQ opset 21
    graph = onnx.load(str(source), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    # the embedding lookups onnxbc leaves float stay float here too: both files hold the same float tensors
    ignored = [n.name for n in graph.node if n.op_type == "Gather" and n.input[0] in inits - quantized]
    arrays = calibration_arrays(bench)
    n = sample_count(arrays)
    dataset = nncf.Dataset([{k: v[i : i + 1] for k, v in arrays.items()} for i in range(n)])
    files: dict[float, tuple[Path, float]] = {}

    def compress_at(ratio: float) -> int:
        model = onnx.load(str(source))
        start = time.perf_counter()
        compressed = nncf.compress_weights(
            model,
            mode=nncf.CompressWeightsMode.INT4_SYM,
            group_size=-1,
            ratio=ratio,
            dataset=dataset,
            subset_size=n,
            ignored_scope=nncf.IgnoredScope(names=ignored) if ignored else None,
        )
        call_s = time.perf_counter() - start
        path = cell / f"ratio{len(files)}.onnx"
        _save(compressed, path)
        files[ratio] = (path, call_s)
        log.info("nncf ratio %.4f: %d bytes (target %d)", ratio, graph_facts.file_bytes(path), target)
        return graph_facts.file_bytes(path)

    ratio, probed = match_ratio(compress_at, target, probes)
    path, call_s = files[ratio]
    params = nncf_bits(path)
    if ignored:
        notes.append(f"embedding lookups left float as onnxbc leaves them: {', '.join(ignored)}")
    return {
        "path": path,
        "row": {
            "tool_settings": f"compress_weights(mode=INT4_SYM, group_size=-1, ratio={ratio:g}, dataset=calibration)",
            "ratio": ratio,
            "target_bytes": target,
            "probes": probed,
            "sweep_s": round(sum(s for _, s in files.values()), 2),
            "compress_s": round(call_s, 2),
            "avg_bits": average_bits(params),
            "bits_params": params,
            "notes": notes,
        },
    }


# --------------------------------------------------------------------------- one model


def run_model(
    config: MixedConfig, model: str, results: dict, save: Callable[[], None], log_line: Callable[[str], None]
) -> None:
    module = MODELS[model]
    bench = module.prepare(config.cache)
    results["models"][model] = runner.model_info(bench)
    work = config.work_root / model
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    reference = work / "fp32_first_output.npy"
    data = onnxbc.DataOptions(path=bench.calib_path, samples=sample_count(calibration_arrays(bench)))
    done: dict[str, dict] = {}
    quantized: dict[str, set[str]] = {}
    for variant in plan(model, config):
        row: dict[str, Any] = {"model": model, "key": variant.key, "section": variant.section}
        row.update(label=variant.label, tool=variant.tool, load_avg_1min=os.getloadavg()[0], notes=[])
        cell = work / variant.key
        cell.mkdir(parents=True, exist_ok=True)
        if variant.tool == "fp32":
            row.update(measure(module, bench, bench.onnx_path, reference, save=True), avg_bits=32.0)
        else:
            row.update(_run_variant(variant, config, bench, data, cell, done, quantized, module, reference))
        if not config.keep_outputs:
            shutil.rmtree(cell, ignore_errors=True)
        done[variant.key] = row
        results["rows"].append(row)
        log_line(summary(row))
        save()
    reference.unlink(missing_ok=True)


def _run_variant(variant, config, bench, data, cell, done, quantized, module, reference) -> dict:
    """Compress and measure one row; a tool that fails or cannot run is a row that says why."""
    base = done.get(variant.size_of) if variant.size_of else None
    if variant.size_of and (base is None or base.get("status") != "ok"):
        return {"status": "skipped", "reason": f"needs the row '{variant.size_of}', which did not run"}
    if variant.tool == "nncf" and importlib.util.find_spec("nncf") is None:
        return {"status": "skipped", "reason": "nncf is not importable in this environment"}
    options = dict(variant.options)
    if variant.tool == "onnxbc" and variant.size_of:
        options["max_size"] = base["size_bytes"]
    if variant.policy is not None:
        cell.mkdir(parents=True, exist_ok=True)
        options["policy"] = cell / f"{variant.key}-policy.toml"
        options["policy"].write_text(variant.policy)
    head = {"cli": cli_flags(options)} if variant.tool == "onnxbc" else {}
    try:
        if variant.tool == "nncf":
            out = _nncf_row(bench, base["size_bytes"], quantized[variant.size_of], cell, config.nncf_probes)
        else:
            out = _onnxbc_row(options, bench, data, cell)
            quantized[variant.key] = out["quantized_weights"]
        measured = measure(module, bench, out["path"], reference)
    except Exception as e:  # the row records the failure, the run goes on
        traceback.print_exc()
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return {**head, "status": "failed", "reason": f"{type(e).__name__}: {message}"[:400]}
    row = out["row"]
    row["notes"] = row.get("notes", []) + measured.pop("notes")
    return {**head, **measured, **row}


# --------------------------------------------------------------------------- claim check


def primary_metric(info: dict) -> str:
    names = [m for m in info["metric_names"] if m != "nll"]
    return (names or info["metric_names"])[0]


def _better_or_equal(metric: str, value: float, base: float) -> bool:
    return value <= base if metric in LOWER_IS_BETTER else value >= base


def claim_check(rows: list[dict], metric: str) -> dict | None:
    """At ``CLAIM_BITS`` average bits, does mixed precision beat uniform int4 with the same or smaller file?

    "Beat": lower output rel. MSE and a task metric at least as good. The same question is asked of the raw-price
    row and of the row whose budget is the int4 file itself (``--max-size``).
    """
    everything = {r["key"]: r for r in rows}
    by_key = {k: r for k, r in everything.items() if r.get("status") == "ok"}
    base = by_key.get("int4")
    if base is None:
        return None
    entries = []
    pairs = [(mixed_key(CLAIM_BITS, True), "int4"), (mixed_key(CLAIM_BITS, False), "int4"), ("max-size-int4", "int4")]
    pairs.append(("max-size-int4-blocks", "int4"))
    pairs += [("max-size-int4-b64", "int4-b64"), ("max-size-int4-b64-blocks", "int4-b64")]
    for key, base_key in pairs:
        r, base = by_key.get(key), by_key.get(base_key)
        if r is None or base is None or r.get("rel_mse") is None or base.get("rel_mse") is None:
            if key in everything:  # it ran and failed, or could not run: the check says so
                r = everything[key]
                entries.append({"key": key, "label": r["label"], "status": r.get("status"), "reason": r.get("reason")})
            continue
        smaller = r["size_bytes"] <= base["size_bytes"]
        lower = r["rel_mse"] < base["rel_mse"]
        metric_ok = _better_or_equal(metric, r["metrics"][metric], base["metrics"][metric])
        entries.append(
            {
                "key": key,
                "base": base_key,
                "label": r["label"],
                "size_bytes": r["size_bytes"],
                "size_vs_int4": r["size_bytes"] / base["size_bytes"],
                "avg_bits": r["avg_bits"],
                "rel_mse": r["rel_mse"],
                "rel_mse_vs_int4": r["rel_mse"] / base["rel_mse"] if base["rel_mse"] else None,
                "metric": r["metrics"][metric],
                "same_or_smaller_file": smaller,
                "lower_rel_mse": lower,
                "metric_at_least_as_good": metric_ok,
                "beats_int4": smaller and lower and metric_ok,
            }
        )
    # the answer: 4.5-bit mixed precision beats a uniform int4 file at least as large, by either route (an
    # --avg-bits 4.5 file no larger than per-channel int4, or the file of int4 in blocks of 64, 4.5 bits stored)
    routes = (mixed_key(CLAIM_BITS, True), "max-size-int4-b64", "max-size-int4-b64-blocks")
    measured = [e for e in entries if "beats_int4" in e and e["key"] in routes]
    base = by_key["int4"]
    nncf = by_key.get("nncf")
    reference = None
    if nncf is not None:
        reference = {k: nncf[k] for k in ("size_bytes", "avg_bits", "rel_mse", "ratio")}
        reference["metric"] = nncf["metrics"][metric]
    return {
        "question": f"at {CLAIM_BITS:g} bits, does mixed precision beat uniform int4 with the same or smaller file "
        "(lower rel. MSE, task metric at least as good): --avg-bits 4.5 against per-channel int4, or a file the "
        "size of int4 in blocks of 64 (4.5 bits stored) against that int4?",
        "metric": metric,
        "int4": {k: base[k] for k in ("size_bytes", "avg_bits", "rel_mse")} | {"metric": base["metrics"][metric]},
        "rows": entries,
        "answer": any(e["beats_int4"] for e in measured) if measured else None,
        "nncf": reference,
    }


def claims(results: dict) -> dict[str, dict]:
    """The claim check of every model that ran the rows it needs, from the rows themselves."""
    out = {}
    for model, info in results["models"].items():
        claim = claim_check([r for r in results["rows"] if r["model"] == model], primary_metric(info))
        if claim:
            out[model] = claim
    return out


def claim_lines(model: str, claim: dict) -> list[str]:
    m = claim["metric"]
    base = claim["int4"]
    lines = [
        f"{model}: uniform int4: {base['size_bytes']:,} bytes, {base['avg_bits']:.2f} bits/weight, "
        f"rel. MSE {base['rel_mse']:.3g}, {m} {base['metric']:.4f}."
    ]
    for e in claim["rows"]:
        if "beats_int4" not in e:
            lines.append(f"{model}: {e['label']}: {e['status']} ({e['reason']}).")
            continue
        why = []
        base_name = "int4 blocks of 64" if e.get("base") == "int4-b64" else "int4"
        why.append(
            "same or smaller file" if e["same_or_smaller_file"] else f"file {e['size_vs_int4']:.3f}× {base_name}'s"
        )
        why.append("lower rel. MSE" if e["lower_rel_mse"] else "rel. MSE not lower")
        why.append(f"{m} at least as good" if e["metric_at_least_as_good"] else f"{m} worse")
        ratio = "" if e["rel_mse_vs_int4"] is None else f" ({e['rel_mse_vs_int4']:.2f}× {base_name}'s)"
        lines.append(
            f"{model}: {e['label']}: {e['size_bytes']:,} bytes, {e['avg_bits']:.2f} bits/weight, rel. MSE "
            f"{e['rel_mse']:.3g}{ratio}, {m} {e['metric']:.4f} -> "
            f"{'beats' if e['beats_int4'] else 'does not beat'} {base_name} ({', '.join(why)})."
        )
    nncf = claim.get("nncf")
    if nncf:
        lines.append(
            f"{model}: for reference, NNCF INT4_SYM at ratio {nncf['ratio']:g} (size-matched to mixed "
            f"{CLAIM_BITS:g}): {nncf['size_bytes']:,} bytes, {nncf['avg_bits']:.2f} bits/weight, rel. MSE "
            f"{nncf['rel_mse']:.3g}, {m} {nncf['metric']:.4f}."
        )
    answer = {None: "not measured", True: "YES", False: "NO"}[claim["answer"]]
    lines.append(f"{model}: claim ({claim['question']}): {answer}.")
    return lines


# --------------------------------------------------------------------------- tables and plots


def _metric(name: str, value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if name in ("perplexity", "nll") else f"{value:.4f}"


def _bits_mix(params: Mapping[Any, int] | None) -> str:
    if not params:
        return "–"
    total = sum(params.values())
    return " ".join(f"{b}:{100 * n / total:.0f}%" for b, n in params.items())


def compensation_note(comp: Mapping[str, Any]) -> str:
    """What the report says compensation did: the variant onnxbc kept and its held-out error."""
    if "output_rel_mse_without" not in comp:
        return ""
    errors, chosen = comp["candidates"], comp["chosen"]
    if not comp["applied"]:
        with_ = comp["output_rel_mse_with"]
        return f"compensation dropped (held-out rel. MSE {errors[chosen]:.3g}; with it {with_:.3g})"
    return f"kept `{chosen}`: held-out rel. MSE {comp['output_rel_mse_without']:.3g} -> {errors[chosen]:.3g}"


def _row_notes(row: dict) -> str:
    notes = [*row.get("notes", []), compensation_note(row.get("compensation") or {})]
    if row.get("status") != "ok":
        notes.append(f"{row.get('status')}: {row.get('reason')}")
    return "; ".join(n for n in notes if n)


def table(rows: list[dict], metrics: list[str], fp32_bytes: int) -> list[str]:
    head = ["row", "onnxbc flags / tool settings", *metrics, "rel. MSE", "file bytes (×FP32)", "avg bits"]
    head += ["bits (% of weights)", "compress s", "notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        settings = r.get("cli") or r.get("tool_settings") or ""
        cells = [r["label"], f"`{settings}`" if settings else "–"]
        if r.get("status") == "ok":
            rel = r.get("rel_mse")
            cells += [_metric(m, r["metrics"].get(m)) for m in metrics]
            cells += [
                "0" if r["key"] == "fp32" else ("–" if rel is None else f"{rel:.3g}"),
                f"{r['size_bytes']:,} ({r['size_bytes'] / fp32_bytes:.3f})",
                "–" if r.get("avg_bits") is None else f"{r['avg_bits']:.2f}",
                _bits_mix(r.get("bits_params")),
                "–" if r.get("compress_s") is None else f"{r['compress_s']:.1f}",
            ]
        else:
            cells += ["–"] * (len(metrics) + 5)
        cells.append(_row_notes(r))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot(model: str, rows: list[dict], metric: str, path: Path) -> bool:
    """Output rel. MSE and the task metric against file size, size-section rows only."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ok = [r for r in rows if r.get("status") == "ok"]
    fp32 = next((r for r in ok if r["key"] == "fp32"), None)
    points = [r for r in ok if r["section"] == "size" and r.get("rel_mse")]
    if not points:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    series = [
        ("uniform", [r for r in points if r["key"].startswith("int")], "s", {"color": "black"}),
        ("mixed, compensated prices", [r for r in points if r["key"].endswith("-comp")], "o-", {"color": "tab:red"}),
        (
            "mixed, raw prices",
            [r for r in points if r["key"].endswith("-raw")],
            "o--",
            {"color": "tab:orange", "mfc": "none"},
        ),
        (
            "mixed, max size = int4 file",
            [r for r in points if r["key"] == "max-size-int4"],
            "*",
            {"color": "tab:purple"},
        ),
        ("NNCF INT4_SYM, ratio matched", [r for r in points if r["key"] == "nncf"], "^", {"color": "tab:green"}),
    ]
    for ax, value, ylabel in (
        (axes[0], lambda r: r["rel_mse"], "output rel. MSE vs FP32 (log)"),
        (axes[1], lambda r: r["metrics"][metric], f"{metric} (eval split)"),
    ):
        for name, group, style, kwargs in series:
            group = sorted(group, key=lambda r: r["size_bytes"])
            if group:
                ax.plot([r["size_bytes"] / 1e6 for r in group], [value(r) for r in group], style, label=name, **kwargs)
        for r in points:
            if r["key"].startswith("int") or r["key"].startswith("mixed"):
                tag = r["key"].replace("-comp", "").replace("-raw", "").replace("mixed", "")
                ax.annotate(
                    tag, (r["size_bytes"] / 1e6, value(r)), fontsize=6, xytext=(3, 2), textcoords="offset points"
                )
        ax.set_xlabel("file size, MB")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    axes[0].set_yscale("log")
    if fp32:
        axes[1].axhline(fp32["metrics"][metric], color="gray", linestyle=":", label="FP32")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"{model}: weight-only, per channel (FP32 file {fp32['size_bytes'] / 1e6:.2f} MB)" if fp32 else model)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


SECTION_TITLES = {
    "size": "Weight-only, per channel: uniform bits, mixed precision, NNCF at the same size",
    "w4a4": "W4A4 (and W4A8 for reference): int4 weights per channel, int4/int8 activations per tensor",
    "gptq": "3-bit weight-only: rounding nearest vs GPTQ",
}

METHOD = """\
How it is measured (the module docstring of `benchmarks/mixed.py` says the same):

- Calibration and evaluation splits are the main benchmark's (`benchmarks/zoo`): every sample of the model's
  `calib.npz` (onnxbc holds 20 % out to decide whether compensation is kept), the separate `eval.npz` for the
  task metric. onnxbc calibrates on the CPU (`--device cpu`); everything not listed in a row is onnxbc's
  default (bias correction `independent`, MSE-searched scales).
- Task metric and output rel. MSE (sum of squared error / sum of squared FP32 output, first output, whole eval
  split) come from one ONNX Runtime run that computes the graph as written (QDQ fusions off), like the
  "exact" column of `benchmarks/README.md`.
- avg bits: logical bits per quantized weight, weighted by parameter count (onnxbc: from its report; NNCF: from
  the int4/int8 weight tensors its DequantizeLinear nodes read). int2 and int3 codes are stored in int4
  containers (at the default opset; `--opset 25` packs int2), so below 4 bits the file does not shrink;
  `--max-size` budgets count file bytes, `--avg-bits` budgets count logical bits.
- compress s: wall clock of the one `onnxbc.compress` / `nncf.compress_weights` call, in a process where the
  libraries are already imported (not comparable with the matrix's fresh-process times); the machine is shared,
  so times move by tens of percent between runs. Accuracy figures are deterministic.
- NNCF row: `nncf.compress_weights(model, mode=INT4_SYM, group_size=-1, ratio=r, dataset=<the calibration
  samples>)` on the model converted to opset 21 (int4 DequantizeLinear per channel). NNCF gives int4 to the
  least sensitive layers (its data-aware default, max activation variance) until their share of the
  parameters would reach `r`; the rest, and the last MatMul, stay int8 (asymmetric, per channel). `r` is
  searched on the measured file size: probe `r = 1` and `r ≈ 0` (NNCF reads 0 as 1, so 1e-6), interpolate
  linearly between the two sizes that bracket onnxbc's 4.5-bit file, then bisect, at most `--nncf-probes`
  (default 6) compressions; the row keeps the probe closest in bytes (all probes are in `mixed.json`). The embedding
  lookups (Gather) that onnxbc leaves float are in NNCF's `ignored_scope`, so both files hold the same float
  tensors and differ only in how they quantize the same weights.
"""


def markdown(results: dict, plots: Mapping[str, str], source: str) -> str:
    m = results["machine"]
    src = results.get("onnxbc_source") or {}
    state = f"commit {src.get('commit') or '?'}"
    if src.get("modified"):
        state += f" + uncommitted changes to {', '.join(src['modified'])}"
    cfg = results["config"]
    lines = [
        "# Mixed precision, W4A4 and GPTQ (issue 8)",
        "",
        f"Written by `python -m benchmarks.mixed` from `{source}`; do not edit by hand.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; {m['os']}; Python {m['python']}.",
        "",
        "Packages: " + ", ".join(f"{k} {v}" for k, v in results["packages"].items()) + ".",
        "",
        f"onnxbc source measured: {state}.",
        "",
        "```console",
        f"{results['command']}    # {results['created']}, {results.get('wall_s', 0) / 60:.0f} min",
        "```",
        "",
    ]
    if cfg.get("quick"):
        lines += ["**Quick run** (`--quick`): one budget and uniform int4 only; not the full table.", ""]
    lines += [METHOD, "## Claim check", ""]
    for model, claim in results.get("claims", {}).items():
        lines += [f"- {line}" for line in claim_lines(model, claim)]
    if not results.get("claims"):
        lines.append("No model ran the rows the claim needs (uniform int4 and mixed 4.5 bits).")
    lines.append("")
    for model, info in results["models"].items():
        rows = [r for r in results["rows"] if r["model"] == model]
        fp32 = next((r for r in rows if r["key"] == "fp32" and r.get("status") == "ok"), None)
        metrics = [n for n in info["metric_names"] if n != "nll"] or info["metric_names"]
        lines += [
            f"## {model}",
            "",
            f"FP32 `{info['onnx']}`: {info['size_bytes']:,} bytes; {info['calibration_samples']} calibration "
            f"samples, {info['eval_samples']} eval samples.",
            "",
        ]
        for section in ("size", "w4a4", "gptq"):
            part = [r for r in rows if r["section"] == section]
            if not part:
                continue
            lines += [f"### {model}: {SECTION_TITLES[section]}", ""]
            lines += table(([fp32] if fp32 else []) + part, metrics, info["size_bytes"]) + [""]
            nncf = next((r for r in part if r["key"] == "nncf" and r.get("probes")), None)
            if nncf:
                probes = ", ".join(f"{p['ratio']:g} -> {p['size_bytes']:,}" for p in nncf["probes"])
                lines += [f"NNCF ratio search (target {nncf['target_bytes']:,} bytes): {probes}.", ""]
            if section == "size" and model in plots:
                lines += [f"![{model}: error and {primary_metric(info)} vs file size]({plots[model]})", ""]
    return "\n".join(lines).rstrip() + "\n"


def render(results: dict, markdown_path: Path, results_path: Path) -> list[Path]:
    """MIXED.md and one PNG per model (``<results stem>_<model>.png`` beside the results JSON) from a results dict."""
    results = {**results, "claims": claims(results)}
    plot_dir = results_path.parent
    written, plots = [], {}
    for model, info in results["models"].items():
        png = plot_dir / f"{results_path.stem}_{model}.png"
        rows = [r for r in results["rows"] if r["model"] == model]
        if plot(model, rows, primary_metric(info), png):
            plots[model] = os.path.relpath(png.resolve(), markdown_path.resolve().parent)
            written.append(png)
    source = os.path.relpath(results_path.resolve(), runner.REPO)
    markdown_path.write_text(markdown(results, plots, source if not source.startswith("..") else str(results_path)))
    return [*written, markdown_path]


# --------------------------------------------------------------------------- the run


def run(config: MixedConfig, log_line: Callable[[str], None] = print) -> dict:
    started = time.perf_counter()
    results: dict[str, Any] = {
        "schema": runner.SCHEMA,
        "name": config.results_path.stem,
        "kind": "mixed",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": config.command,
        "machine": runner.machine_info(),
        "packages": runner.package_versions(),
        "onnxbc_source": runner.source_state(),
        "config": {
            "models": {m: list(config.sections_for(m)) for m in config.models},
            "avg_bits": list(config.avg_bits),
            "uniform_bits": list(config.uniform_bits),
            "candidates": list(CANDIDATES),
            "claim_bits": CLAIM_BITS,
            "bias_corrections": list(config.bias_corrections),
            "nncf_probes": config.nncf_probes,
            "quick": config.quick,
            "slow": config.slow,
        },
        "models": {},
        "rows": [],
        "claims": {},
        "load_avg_at_start": os.getloadavg(),
    }

    def save() -> None:
        results["claims"] = claims(results)
        results["wall_s"] = round(time.perf_counter() - started, 1)
        runner.write_json(config.results_path, _jsonable(results))

    for model in config.models:
        run_model(config, model, results, save, log_line)
    save()
    if not config.keep_outputs:
        shutil.rmtree(config.work_root, ignore_errors=True)
    final = json.loads(config.results_path.read_text())
    for path in render(final, config.markdown, config.results_path):
        log_line(f"wrote {path}")
    for model, claim in final["claims"].items():
        for line in claim_lines(model, claim):
            log_line(line)
    return final


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    return value


def summary(row: dict) -> str:
    head = f"[{row['model']} {row['key']}]"
    if row.get("status") != "ok":
        return f"{head} {row.get('status')}: {row.get('reason')}"
    metrics = " ".join(f"{k}={v:.4g}" for k, v in list(row["metrics"].items())[:2])
    bits = "" if row.get("avg_bits") is None else f" bits={row['avg_bits']:.2f}"
    secs = "" if row.get("compress_s") is None else f" {row['compress_s']:.1f}s"
    rel = row.get("rel_mse")
    return f"{head} ok{secs} {row['size_bytes']:,}B{bits} rel_mse={rel if rel is None else f'{rel:.3g}'} {metrics}"


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mixed", description=__doc__.splitlines()[0])
    parser.add_argument("--models", help=f"comma-separated (default: {','.join(DEFAULT_MODELS)})")
    parser.add_argument("--quick", action="store_true", help="one budget (--avg-bits 4.5), uniform int4 only")
    parser.add_argument("--slow", action="store_true", help=f"add {', '.join(SLOW_MODELS)} (3-bit GPTQ section)")
    parser.add_argument("--avg-bits", help=f"budgets (default: {','.join(f'{b:g}' for b in AVG_BITS)})")
    parser.add_argument("--nncf-probes", type=int, default=6, help="compressions NNCF's ratio search may take")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"results JSON (default: {RESULTS})")
    parser.add_argument("--markdown", type=Path, default=MARKDOWN, help=f"tables (default: {MARKDOWN})")
    parser.add_argument("--keep-outputs", action="store_true", help="keep the quantized models (results/tmp/)")
    parser.add_argument("--render", action="store_true", help="only write the markdown and plots from --results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    if args.render:
        for path in render(json.loads(args.results.read_text()), args.markdown, args.results):
            print(f"wrote {path}")
        return 0
    models = tuple(m.strip() for m in args.models.split(",") if m.strip()) if args.models else DEFAULT_MODELS
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {sorted(MODELS)}")
    slow = [m for m in models if m in SLOW_MODELS]
    if slow and not args.slow:
        raise SystemExit(f"{', '.join(slow)} is the slow tier: add --slow")
    if args.slow:
        models += tuple(m for m in SLOW_MODELS if m not in models)
    avg_bits = _floats(args.avg_bits) if args.avg_bits else ((CLAIM_BITS,) if args.quick else AVG_BITS)
    config = MixedConfig(
        models=models,
        avg_bits=avg_bits,
        uniform_bits=(4,) if args.quick else UNIFORM_BITS,
        nncf_probes=min(args.nncf_probes, 3) if args.quick else args.nncf_probes,
        cache=args.cache,
        results_path=args.results,
        markdown=args.markdown,
        keep_outputs=args.keep_outputs,
        quick=args.quick,
        slow=args.slow,
        command="python -m benchmarks.mixed " + shlex.join(sys.argv[1:] if argv is None else argv),
    )
    results = run(config, log_line=lambda line: print(line, flush=True))
    print(f"wrote {config.results_path} ({len(results['rows'])} rows, {results['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
