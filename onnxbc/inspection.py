"""``onnxbc inspect``: per-layer precision and error of a compress report, or of a quantized model's QDQ graph.

- A report (a ``.json`` file, schema ``onnxbc.report/1``): the records compress wrote for each layer (op,
  weight bits, scheme, scale method, compensation bias delta, layer error before/after compensation on the
  held-out samples, or the fit samples when none were held out) and totals.
- A model (anything else): what its QDQ structure says. For every Conv, ConvTranspose, Gemm and MatMul: the
  weight, traced back through ops that only move weights (Transpose, Reshape, ...) to a DequantizeLinear of
  constant codes (type, bits the codes use, granularity, axis, block size) or to a float constant; and the
  type of each activation input (from the DequantizeLinear feeding it, or float). Errors need data: they come
  from reports only.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass
from rich import box
from rich.console import Console
from rich.table import Table

from onnxbc import model_io
from onnxbc.errors import UsageError, one_line
from onnxbc.report import SCHEMA
from onnxbc.targets import CHAIN_OPS, WEIGHTED_OPS

DQ = "DequantizeLinear"
SIGNED = (ir.DataType.INT2, ir.DataType.INT4, ir.DataType.INT8, ir.DataType.INT16)


@dataclasses.dataclass(frozen=True)
class LayerRow:
    name: str
    op: str
    bits: int | None  # weight bits; None: float weight or no weight
    weight: str  # "int8 channel", "int4 block32 axis 0", "float", "-" (activation x activation)
    inputs: tuple[str, ...]  # type of each activation input: "uint8", "int8", "float"
    scale_method: str | None = None
    bias_delta: float | None = None  # norm of the compensation bias, when applied
    error_before: float | None = None  # layer output rel. MSE without / with compensation
    error_after: float | None = None
    note: str = ""  # why a layer was left float (reports)


@dataclasses.dataclass(frozen=True)
class Inspection:
    source: str
    rows: tuple[LayerRow, ...]
    totals: dict[str, str]
    error_split: str | None  # which samples the errors were measured on; None for a model

    def print(self, console: Console) -> None:
        table = Table(title=f"onnxbc inspect {self.source}", title_justify="left", box=box.SIMPLE)
        columns = ["layer", "op", "bits", "weight", "inputs"]
        if self.error_split is not None:
            columns += ["scale method", "bias |Δ|", f"rel. error before → after ({self.error_split})"]
        notes = any(r.note for r in self.rows)
        for col in columns + ["note"] * notes:
            table.add_column(col, overflow="fold")
        for r in self.rows:
            cells = [r.name, r.op, "-" if r.bits is None else str(r.bits), r.weight, ", ".join(r.inputs)]
            if self.error_split is not None:
                cells += [r.scale_method or "-", _number(r.bias_delta), _before_after(r.error_before, r.error_after)]
            table.add_row(*cells, *[r.note] * notes)
        console.print(table)
        width = max(map(len, self.totals), default=0)
        for label, value in self.totals.items():
            console.print(f"{label + ':':<{width + 1}} {value}", highlight=False)


def inspect(path: str | Path) -> Inspection:
    path = Path(path)
    return inspect_report(path) if path.suffix == ".json" else inspect_model(path)


# ------------------------------------------------------------------------------------------------------------
# Reports


def inspect_report(path: Path) -> Inspection:
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: not a readable JSON report ({one_line(e)})") from e
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise UsageError(f'{path}: not an onnxbc report (expected "schema": "{SCHEMA}")')
    split = "holdout" if report.get("data", {}).get("holdout_samples") else "fit"
    rows = tuple(_report_row(layer, split) for layer in report["layers"])
    return Inspection(str(path), rows, _report_totals(report, rows), split)


def _report_row(layer: dict[str, Any], split: str) -> LayerRow:
    weight = layer.get("weight") or {}
    activations = layer.get("activations") or []
    error = (layer.get("error") or {}).get(split) or {}
    bias = layer.get("bias") or {}
    if layer["status"] == "skipped":
        weight_cell = "float"
    elif weight:
        weight_cell = f"int{weight['stored_bits']} {weight['granularity']}"
    else:
        weight_cell = "-" if layer["kind"] == "activation_matmul" else "float"
    return LayerRow(
        name=layer["name"],
        op=layer["op"],
        bits=weight.get("bits"),
        weight=weight_cell,
        inputs=tuple(a["dtype"] for a in activations) or ("float",),
        scale_method=weight.get("scale_method"),
        bias_delta=bias.get("delta_norm") if bias.get("applied") else None,
        error_before=error.get("rel_mse_before"),
        error_after=error.get("rel_mse_after") if bias.get("applied") else None,
        note=layer.get("reason") or "",
    )


def _report_totals(report: dict[str, Any], rows: tuple[LayerRow, ...]) -> dict[str, str]:
    quantized = [layer for layer in report["layers"] if layer["status"] == "quantized"]
    weights = [layer["weight"] for layer in quantized if layer.get("weight")]
    params = sum(w["params"] for w in weights)
    stored = sum(w["params"] * w["stored_bits"] for w in weights) / max(params, 1)
    before, after = report.get("input", {}).get("bytes"), report.get("output", {}).get("bytes")
    totals = {
        "layers": f"{len(quantized)} quantized, {len(rows) - len(quantized)} left float",
        "quantized weights": f"{params:,} parameters, {stored:.2f} stored bits each on average",
    }
    if before and after:
        totals["file size"] = f"{before / 1e6:.2f} MB -> {after / 1e6:.2f} MB ({before / after:.2f}x smaller)"
    compensation = report.get("compensation", {})
    if "output_rel_mse_with" in compensation:
        verdict = "kept" if compensation["applied"] else "dropped"
        totals["bias compensation"] = (
            f"{verdict}: output rel. MSE {compensation['output_rel_mse_without']:.3e} -> "
            f"{compensation['output_rel_mse_with']:.3e} ({compensation.get('decided_on', 'holdout')} samples)"
        )
    return totals


# ------------------------------------------------------------------------------------------------------------
# Models


def inspect_model(path: Path) -> Inspection:
    model = model_io.load(path)
    ShapeInferencePass(strict_mode=False)(model)  # types of the quantized activations, where files omit them
    rows = tuple(
        _model_row(node) for node in ir.traversal.RecursiveGraphIterator(model.graph) if node.op_type in WEIGHTED_OPS
    )
    quantized_weights = [r for r in rows if r.bits is not None]
    quantized_inputs = [r for r in rows if any(t != "float" for t in r.inputs)]
    bits = sorted({r.bits for r in quantized_weights})
    totals = {
        "layers": f"{len(rows)} (Conv, ConvTranspose, Gemm, MatMul)",
        "quantized weights": f"{len(quantized_weights)}"
        + (f" ({', '.join(f'{b} bits' for b in bits)})" if bits else ""),
        "quantized inputs": f"{len(quantized_inputs)} layers",
        "opset": str(model.opset_imports.get("", "?")),
        "file size": f"{model_io.file_bytes(path) / 1e6:.2f} MB",
    }
    return Inspection(str(path), rows, totals, None)


def _model_row(node: ir.Node) -> LayerRow:
    index = _weight_index(node)
    inputs = tuple(_activation_type(v) for i, v in enumerate(node.inputs[:2]) if i != index and v is not None)
    source = None if index is None else _weight_source(node.inputs[index])
    if source is None or source.producer() is None or source.producer().op_type != DQ:
        weight = "-" if index is None else "float" if source is not None else "computed"
        return LayerRow(node.name, node.op_type, None, weight, inputs)
    dq = source.producer()
    codes = ir.convenience.get_const_tensor(dq.inputs[0])
    scale = ir.convenience.get_const_tensor(dq.inputs[1])
    zero_point = ir.convenience.get_const_tensor(dq.inputs[2]) if len(dq.inputs) > 2 and dq.inputs[2] else None
    axis, block = dq.attributes.get_int("axis", 1), dq.attributes.get_int("block_size", 0)
    if scale is None or scale.size == 1:
        scheme = "tensor"
    else:
        scheme = f"{f'block{block}' if block else 'channel'} axis {axis}"
    bits = _code_bits(codes, zero_point)
    return LayerRow(node.name, node.op_type, bits, f"{codes.dtype.name.lower()} {scheme}", inputs)


def _weight_index(node: ir.Node) -> int | None:
    """Conv, ConvTranspose and Gemm read their weight at input 1; a MatMul at whichever input is constant."""
    if node.op_type != "MatMul":
        return 1
    return next((i for i in (1, 0) if node.inputs[i] is not None and _weight_source(node.inputs[i]) is not None), None)


def _weight_source(value: ir.Value) -> ir.Value | None:
    """The constant a weight input comes from: a float constant, or a DequantizeLinear of constant codes,
    reached through ops that only move weights; None for an activation."""
    while True:
        if ir.convenience.get_const_tensor(value) is not None and not value.is_graph_input():
            return value
        producer = value.producer()
        if producer is None:
            return None
        if producer.op_type == DQ and ir.convenience.get_const_tensor(producer.inputs[0]) is not None:
            return value
        if producer.op_type not in CHAIN_OPS or not producer.inputs or producer.inputs[0] is None:
            return None
        value = producer.inputs[0]


def _activation_type(value: ir.Value) -> str:
    producer = value.producer()
    if producer is not None and producer.op_type == DQ and producer.inputs[0] is not None:
        dtype = producer.inputs[0].dtype
        return dtype.name.lower() if dtype is not None else "quantized"
    return "float"


def _code_bits(codes: ir.TensorProtocol, zero_point: ir.TensorProtocol | None) -> int:
    """Bits the symmetric signed codes use (int8 codes in [-63, 63] use 7, int4 codes in [-4, 3] use 3);
    the container's bits for unsigned or asymmetric codes."""
    container = codes.dtype.bitwidth
    if codes.dtype not in SIGNED or (zero_point is not None and zero_point.numpy().astype(np.int64).any()):
        return container
    q = codes.numpy().astype(np.int64)
    return min(container, max(int(q.max(initial=0)), -int(q.min(initial=0)) - 1, 0).bit_length() + 1)


def _number(x: float | None) -> str:
    return "-" if x is None else f"{x:.2e}"


def _before_after(before: float | None, after: float | None) -> str:
    if before is None:
        return "-"
    return _number(before) if after is None else f"{_number(before)} → {_number(after)}"


# ------------------------------------------------------------------------------------------------------------
# Plot


def plot(inspection: Inspection, path: str | Path) -> None:
    """Per-layer weight bits (and, from a report, the layer error before/after compensation) as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'onnxbc[plot]'") from None
    rows = [r for r in inspection.rows if r.bits is not None or r.error_before is not None]
    if not rows:
        raise UsageError(f"{inspection.source}: no quantized layers to plot")
    errors = inspection.error_split is not None
    width = min(24.0, max(6.0, 0.3 * len(rows) + 2))
    fig, axes = plt.subplots(2 if errors else 1, 1, sharex=True, figsize=(width, 6.5 if errors else 4), squeeze=False)
    top, x = axes[0, 0], np.arange(len(rows))
    bits = [r.bits or 0 for r in rows]
    top.bar_label(top.bar(x, bits, color="tab:blue"), fontsize="x-small")
    top.set_ylim(0, max(bits) * 1.15 + 0.5)
    top.set_ylabel("weight bits (0: float or none)")
    top.set_title(f"onnxbc inspect {Path(inspection.source).name}")
    if errors:
        bottom = axes[1, 0]
        before = [np.nan if r.error_before is None else r.error_before for r in rows]
        after = [np.nan if r.error_after is None else r.error_after for r in rows]
        if np.isnan(after).all():
            bottom.bar(x, before, 0.6, label="no compensation applied", color="tab:orange")
        else:
            bottom.bar(x - 0.2, before, 0.4, label="before compensation", color="tab:orange")
            bottom.bar(x + 0.2, after, 0.4, label="after compensation", color="tab:green")
        bottom.set_yscale("log")
        bottom.set_ylabel(f"layer rel. MSE ({inspection.error_split})")
        bottom.legend(fontsize="small")
    labels = [r.name for r in rows] if len(rows) <= 80 else [str(i) for i in x]  # names would overlap
    axes[-1, 0].set_xticks(x, labels, rotation=60 if len(rows) <= 80 else 90, ha="right", fontsize="x-small")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as e:
        raise UsageError(f"{path}: cannot write the plot ({one_line(e)})") from e
    finally:
        plt.close(fig)
