"""The stages both compress flows share: the front (output paths, load, prepare) and the back (write).

``onnxbc.pipeline`` (calibrated) and ``onnxbc.datafree`` run the same front and back around their own middle:

    start (output paths checked before any work) -> load_prepared -> ... -> write (model, external data and
    report as one transaction: all of them or none)

The model may be a file or held in memory (``onnxbc.held``: a ModelProto, an onnx_ir model, a gs.Graph). A
model in memory with no output path is handed back in its own kind and nothing is written but a report asked
for with ``report``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import onnx_ir as ir

import onnxbc
from onnxbc import held, model_io
from onnxbc.errors import OnnxbcError
from onnxbc.options import ActivationType, CompressOptions, WeightType
from onnxbc.passes.fold_bn import FoldResult
from onnxbc.passes.prepare import Prepared, prepare, quantized_nodes
from onnxbc.progress import Stages
from onnxbc.report import Report

HALF_FLOATS = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


@dataclasses.dataclass(frozen=True)
class CompressResult:
    output: Path | None  # the model file written (None: a model in memory, handed back in ``model``)
    report_path: Path | None  # the report file written, if any
    report: Report
    model: Any = None  # a model given in memory: the quantized one, of the same kind


class Timer:
    """Seconds per named stage, for the report."""

    def __init__(self) -> None:
        self.durations: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.durations[name] = round(time.perf_counter() - start, 3)


@dataclasses.dataclass
class Run:
    """One compress run: what it reads and where it writes, its report as it fills, its timer and progress."""

    model: held.ModelLike  # as the caller gave it
    options: CompressOptions
    paths: model_io.OutputPaths | None  # resolved, for writing; None: no model file (a model in memory)
    shown: model_io.OutputPaths | None  # as the user gave them (or as defaulted from the input), for messages
    report_file: Path | None  # with no model file: the report written alone, if asked for
    report: Report
    timer: Timer
    stages: Stages

    @property
    def source(self) -> Path | None:
        """The model file read (None: a model in memory)."""
        return Path(self.model) if held.is_path(self.model) else None

    @property
    def name(self) -> str:
        """How messages name the model."""
        return held.describe(self.model)


def default_output(model_path: Path, options: CompressOptions) -> Path:
    """``model.onnx`` -> ``model.int8.onnx`` (W8A8), ``model.w4a8.onnx``, ``model.w4.onnx`` (weight-only),
    ``model.mixed4.5a8.onnx`` (--avg-bits 4.5), ``model.df-w2w8.onnx`` (--data-free: low-bit layers int2, the
    others int8), ..."""
    if options.data_free:
        high = "f" if options.next_weights is WeightType.NONE else str(options.next_weights.bits)
        return model_path.with_name(f"{model_path.stem}.df-w{options.weights.bits}w{high}.onnx")
    w = "" if options.weights is WeightType.NONE else f"w{options.weights.bits}"
    if options.budget:
        w = f"mixed{options.avg_bits:g}" if options.avg_bits is not None else "mixed"
    a = "" if options.activations is ActivationType.NONE else f"a{options.activations.bits}"
    tag = "int8" if (w, a) == ("w8", "a8") else w + a
    return model_path.with_name(f"{model_path.stem}.{tag}.onnx")


def default_report(output: Path) -> Path:
    return output.with_name(f"{output.stem}.report.json")


def start(
    model: held.ModelLike,
    output: str | Path | None,
    report: str | Path | None,
    *,
    options: CompressOptions,
    force: bool,
    stages: Stages,
    extra_options: dict[str, Any] | None = None,
) -> Run:
    """Check the output paths (before any work) and open the report."""
    source = Path(model) if held.is_path(model) else None
    paths = shown = report_file = None
    if source is None and output is None:
        report_file = model_io.prepare_report(report, force=force) if report is not None else None
    else:
        out = Path(output) if output is not None else default_output(source, options)
        shown = model_io.OutputPaths(out, Path(report) if report is not None else default_report(out))
        paths = model_io.prepare_outputs(source, shown.model, shown.report, force=force)
    rep = Report(tool_version=onnxbc.__version__, input={"path": held.describe(model)})
    rep.options = {**dataclasses.asdict(options), **(extra_options or {})}
    return Run(model, options, paths, shown, report_file, rep, Timer(), stages)


def load_prepared(run: Run, needed_opset: int) -> ir.Model:
    """The prepared model of ``load_and_prepare``."""
    return load_and_prepare(run, needed_opset).model


def load_and_prepare(run: Run, needed_opset: int) -> Prepared:
    """Load the model, refuse a quantized one, and run the prepare passes (opset raised to ``needed_opset``,
    to ``--opset``, and to 19 for half-float tensors, whose QuantizeLinear/DequantizeLinear need it); the
    report's ``prepare`` says what was folded into the layers and what was left."""
    rep = run.report
    with run.timer("load"):
        model = held.read(run.model)
        rep.input["bytes"] = model_io.file_bytes(run.source) if run.source else model_io.serialized_bytes(model)
    refuse_quantized(model, run.name)
    rep.opset["before"] = model.opset_imports.get("", 0)
    with run.timer("prepare"), run.stages.step("Preparing the graph", None):
        opset = max(needed_opset, run.options.opset or 0, 19 if has_half_floats(model) else 0)
        prepared = prepare(model, opset)
    rep.opset["after"] = prepared.model.opset_imports.get("", 0)
    rep.prepare = fold_record(prepared.folds)
    return prepared


def fold_record(folds: FoldResult) -> dict[str, Any]:
    """The report's ``prepare`` section (docs/report-schema.md)."""
    return {
        "folded": len(folds.sites),
        "fold_sites": [{"node": node, "into": layer} for node, layer in folds.sites.items()],
        "fold_skipped": [{"node": node, "reason": reason} for node, reason in folds.skipped.items()],
    }


def refuse_quantized(model: ir.Model, name: str) -> None:
    """``name``: how messages name the model (a path, or ``<onnx.ModelProto in memory>``)."""
    found = quantized_nodes(model)
    if found:
        first = found[0]
        more = f" and {len(found) - 1} more quantized nodes" if len(found) > 1 else ""
        where = f"node '{first.name}' is {first.op_type}{more}"
        raise OnnxbcError(f"{name}: already quantized ({where}); onnxbc needs the float model")


def has_half_floats(model: ir.Model) -> bool:
    """Float16/bfloat16 tensors need opset 19 QuantizeLinear/DequantizeLinear."""
    return any(v.dtype in HALF_FLOATS for v in [*model.graph.inputs, *model.graph.initializers.values()])


def write(run: Run, model: ir.Model, check_size: Callable[[int], None] = lambda _: None) -> CompressResult:
    """Write the model, its external data (when the input had some, or it is too big for one file) and the
    report, all or nothing; or, for a model in memory with no output path, hand it back (and write the report
    alone if asked). ``check_size`` sees the model's bytes and may refuse them (nothing is then left)."""
    rep = run.report
    if run.paths is None:
        size = model_io.serialized_bytes(model)
        check_size(size)
        rep.output = {"path": None, "files": [], "bytes": size}
        rep.timings_s = dict(run.timer.durations)
        result = held.give_back(model, run.model)
        if run.report_file is not None:
            model_io.write_text(run.report_file, rep.to_json())
        return CompressResult(None, run.report_file, rep, result)

    def report_text(files: list[Path], size: int) -> str:
        check_size(size)
        rep.output = {"path": str(run.shown.model), "files": [str(f) for f in files], "bytes": size}
        rep.timings_s = {**run.timer.durations, "save": round(time.perf_counter() - started, 3)}
        return rep.to_json()

    has_data = model_io.external_data_files(run.source) if run.source else model_io.has_external_tensors(model)
    started = time.perf_counter()
    with run.stages.step("Writing the model and the report", None):
        model_io.write_outputs(model, run.paths, report_text, external_data=bool(has_data) or None)
    in_memory = None if run.source is not None else held.give_back(model, run.model)
    return CompressResult(run.shown.model, run.shown.report, rep, in_memory)
