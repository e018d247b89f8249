"""``onnxbc inspect``: per-layer precision and error of a compress report, or of a quantized model's QDQ graph.

- A report (a ``.json`` file, schema ``onnxbc.report/1``): the records compress wrote for each layer (op,
  weight bits, scheme, scale method, compensation bias delta, layer error before/after compensation on the
  held-out samples, or the fit samples when none were held out) and totals. With a mixed-precision budget,
  the allocation's priced error-vs-cost curve (``Tradeoff``) and, for comparison, every weight at one bit
  width: the summed price of its options at that width (with ``--scheme auto`` the scheme of least error),
  so no new measurement. A report can also be turned into a policy file (``write_policy``).
- A model (anything else): what its QDQ structure says. For every Conv, ConvTranspose, Gemm and MatMul (and
  LSTM/GRU/RNN: W and R): the weight, traced back through ops that only move weights (Transpose, Reshape, ...)
  to a DequantizeLinear of constant codes (type, bits the codes use, granularity, axis, block size) or to a
  float constant; and the type of each activation input (from the DequantizeLinear feeding it, or float).
  Errors need data: they come from reports only.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from onnxbc import model_io
from onnxbc.errors import UsageError, display_path, one_line
from onnxbc.passes.graph_utils import constant_tensor
from onnxbc.policy import policy_from_report
from onnxbc.report import SCHEMA, close_call_errors, least_error, w_and_r
from onnxbc.targets import CHAIN_OPS, RECURRENT_OPS, WEIGHTED_OPS

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
class Tradeoff:
    """A mixed-precision report's priced error against cost: x is the average logical bits per quantized
    weight (``unit == "bits"``, an ``--avg-bits`` budget) or the quantized weights' bytes (``--max-size``);
    y the summed priced error of all weights."""

    unit: str  # "bits" or "bytes"
    priced: str  # "after compensation" or "before compensation"
    method: str
    curve: tuple[tuple[float, float], ...]  # the allocation's Lagrangian sweep, cheapest first
    chosen: tuple[float, float]
    budget: float | None  # x of the budget (for --max-size, the share left to the quantized weights)
    uniform: dict[int, tuple[float, float]]  # bits -> every weight at those bits
    held: dict[int, int]  # bits -> weights with no option at those bits, kept at their chosen one


@dataclasses.dataclass(frozen=True)
class Inspection:
    source: str
    rows: tuple[LayerRow, ...]
    totals: dict[str, str]
    error_split: str | None  # which samples the errors were measured on; None for a model
    tradeoff: Tradeoff | None = None  # reports with a mixed-precision budget

    def print(self, console: Console) -> None:
        table = Table(title=f"onnxbc inspect {escape(self.source)}", title_justify="left", box=box.SIMPLE)
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


def read_report(path: Path) -> dict[str, Any]:
    """A compress report as a dict, checked to be one (``UsageError`` otherwise)."""
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{display_path(path)}: no such file") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"{display_path(path)}: not a readable JSON report ({one_line(e)})") from e
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise UsageError(f'{display_path(path)}: not an onnxbc report (expected "schema": "{SCHEMA}")')
    return report


def inspect_report(path: Path) -> Inspection:
    report = read_report(path)
    split = "holdout" if report.get("data", {}).get("holdout_samples") else "fit"
    rows = tuple(_report_row(layer, split) for layer in report["layers"])
    return Inspection(display_path(path), rows, _report_totals(report, rows), split, tradeoff(report))


def _report_row(layer: dict[str, Any], split: str) -> LayerRow:
    weight = layer.get("weight") or {}
    activations = layer.get("activations") or []
    error = (layer.get("error") or {}).get(split) or {}
    bias = layer.get("bias") or {}
    if layer["status"] == "skipped":
        weight_cell = "float"
    elif weight:
        weight_cell = _weight_cell(weight)
    else:
        weight_cell = "-" if layer["kind"] == "activation_matmul" else "float"
    if layer["status"] != "skipped" and layer.get("recurrence") is not None:  # LSTM/GRU/RNN: W and R
        weight_cell = w_and_r(weight_cell, _weight_cell(layer["recurrence"]))
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


def _weight_cell(weight: dict[str, Any]) -> str:
    """``int4 channel``; the scheme when not uniform, ``gptq`` rounding, and float values for emulated schemes
    (their ``stored_bits`` is the float width)."""
    scheme = weight.get("scheme") or "uniform"
    if weight.get("emulated"):
        return f"float{weight['stored_bits']} {weight['granularity']} {scheme} (emulated)"
    codes = "uint" if scheme == "affine" else "int"  # affine: unsigned codes with a zero point
    cell = f"{codes}{weight['stored_bits']} {weight['granularity']}"
    if scheme != "uniform":
        cell += f" {scheme}"
    if weight.get("rounding") == "gptq":
        cell += " gptq"
    return cell


def _weights(layer: dict[str, Any]) -> list[dict[str, Any]]:
    """A layer record's quantized weights: ``weight``, and ``recurrence`` (R) for LSTM/GRU/RNN."""
    return [w for w in (layer.get("weight"), layer.get("recurrence")) if w]


def _report_totals(report: dict[str, Any], rows: tuple[LayerRow, ...]) -> dict[str, str]:
    quantized = [layer for layer in report["layers"] if layer["status"] == "quantized"]
    weights = [w for layer in quantized for w in _weights(layer)]
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
            f"{verdict}: output rel. MSE {least_error(compensation, 'without')} without, "
            f"{least_error(compensation, 'with')} with ({compensation.get('decided_on', 'holdout')} samples)"
        )
    if compensation.get("close_call"):
        errors = close_call_errors(compensation)
        totals["close call"] = f"the held-out samples could not tell these apart; on every sample: {errors}"
    if "chosen" in compensation and "output_rel_mse" in compensation:
        totals["saved"] = (
            f"{compensation['chosen']}: {compensation.get('description', '')}, "
            f"output rel. MSE {compensation['output_rel_mse']:.3e}"
        )
    precision = report.get("precision") or {}
    if "chosen" in precision:
        budget = precision["budget"]
        if budget.get("avg_bits") is not None:
            asked = f"{budget['avg_bits']:g} average bits"
        else:
            asked = f"{budget['max_size']:,} bytes ({budget['weights_bytes']:,} for the quantized weights)"
        chosen = precision["chosen"]
        totals["mixed precision"] = (
            f"budget {asked}; chosen {chosen['avg_bits']:.2f} average bits, {chosen['weights_bytes']:,} weight "
            f"bytes, priced error {chosen['error']:.3e} ({precision['method']}, priced {precision['priced']})"
        )
    return totals


def tradeoff(report: Mapping[str, Any]) -> Tradeoff | None:
    """The priced error-vs-cost curve of a report with a mixed-precision budget (None without one), and the
    points with every weight at one candidate bit width, from the same prices (``precision.options``)."""
    precision = report.get("precision") or {}
    if not precision.get("curve"):
        return None
    curve, options, layers = precision["curve"], precision["options"], precision.get("layers", {})
    unit = curve[0]["unit"]
    params = {}
    for layer in report.get("layers", []):
        for weight in _weights(layer):
            if weight.get("name") in options:
                params[weight["name"]] = weight["params"]
    total_params = sum(params.values())
    bits_unit = unit == "bits"
    if bits_unit and set(params) != set(options):  # cannot happen in reports compress writes
        raise UsageError(f"{report.get('input', {}).get('path')}: precision.options names weights with no layer")

    def to_x(cost: float) -> float:
        return cost / total_params if bits_unit else cost

    uniform, held = {}, {}
    for bits in precision["candidates"]:
        cost = error = 0.0
        held[bits] = 0
        for name, choices in options.items():
            at = [o for o in choices if o["bits"] == bits]
            if not at:  # pinned by the policy, or the target cannot take these bits: as allocated
                chosen = layers.get(name, {})
                at = [o for o in choices if (o["bits"], o["scheme"]) == (chosen.get("bits"), chosen.get("scheme"))]
                held[bits] += 1
            best = min(at or choices, key=lambda o: o["error"])  # several schemes per width: the best
            cost += best["bits"] * params[name] if bits_unit else best["bytes"]
            error += best["error"]
        if held[bits] < len(options):
            uniform[bits] = (to_x(cost), error)
    chosen = precision["chosen"]
    budget = precision["budget"]
    return Tradeoff(
        unit=unit,
        priced=precision["priced"],
        method=precision["method"],
        curve=tuple((to_x(p["cost"]), p["error"]) for p in curve),
        chosen=(chosen["avg_bits"] if bits_unit else chosen["weights_bytes"], chosen["error"]),
        budget=budget.get("avg_bits") if bits_unit else budget.get("weights_bytes"),
        uniform=uniform,
        held={b: n for b, n in held.items() if b in uniform and n},
    )


def write_policy(report_path: Path, policy_path: Path, *, force: bool) -> None:
    """Write ``policy_from_report`` of the report at ``report_path`` to ``policy_path`` (TOML) atomically."""
    policy_path = Path(policy_path)
    check_policy_path(report_path, policy_path, force=force)
    text = policy_from_report(read_report(report_path))
    model_io.write_text(policy_path, text)


def check_policy_path(report_path: Path, policy_path: Path, *, force: bool) -> None:
    """Refuse a model as input, a YAML name (the policy is TOML), a missing folder, the report itself, and an
    existing file unless ``force``."""
    if Path(report_path).suffix != ".json":
        raise UsageError(
            f"{report_path}: --policy-out reads a compress report (.json), not a model; "
            "pass the report compress wrote next to it (OUTPUT.report.json)"
        )
    if policy_path.suffix.lower() in (".yaml", ".yml"):
        raise UsageError(f"{policy_path}: the policy is written as TOML; name it .toml")
    if not policy_path.resolve().parent.is_dir():
        raise UsageError(f"{policy_path}: folder {policy_path.resolve().parent} does not exist")
    if policy_path.exists() and policy_path.resolve() == Path(report_path).resolve():
        raise UsageError(f"{policy_path}: is the report itself; choose another name")
    if policy_path.exists() and not force:
        raise UsageError(f"{policy_path}: already exists; pass --force to overwrite it")


# ------------------------------------------------------------------------------------------------------------
# Models


def inspect_model(path: Path) -> Inspection:
    model = model_io.load(path)
    ShapeInferencePass(strict_mode=False)(model)  # types of the quantized activations, where files omit them
    rows = tuple(
        _model_row(node)
        for node in ir.traversal.RecursiveGraphIterator(model.graph)
        if node.op_type in WEIGHTED_OPS + RECURRENT_OPS
    )
    quantized_weights = [r for r in rows if r.bits is not None]
    quantized_inputs = [r for r in rows if any(t != "float" for t in r.inputs)]
    bits = sorted({r.bits for r in quantized_weights})
    totals = {
        "layers": f"{len(rows)} (Conv, ConvTranspose, Gemm, MatMul, LSTM, GRU, RNN)",
        "quantized weights": f"{len(quantized_weights)}"
        + (f" ({', '.join(f'{b} bits' for b in bits)})" if bits else ""),
        "quantized inputs": f"{len(quantized_inputs)} layers",
        "opset": str(model.opset_imports.get("", "?")),
        "file size": f"{model_io.file_bytes(path) / 1e6:.2f} MB",
    }
    return Inspection(display_path(path), rows, totals, None)


def _model_row(node: ir.Node) -> LayerRow:
    index = _weight_index(node)
    inputs = tuple(_activation_type(v) for i, v in enumerate(node.inputs[:2]) if i != index and v is not None)
    bits, weight = _model_weight(node, index)
    if node.op_type in RECURRENT_OPS and len(node.inputs) > 2:  # W and R
        r_bits, r_weight = _model_weight(node, 2)
        bits, weight = max(bits or 0, r_bits or 0) or None, w_and_r(weight, r_weight)
    return LayerRow(node.name, node.op_type, bits, weight, inputs)


def _model_weight(node: ir.Node, index: int | None) -> tuple[int | None, str]:
    """The bits and the description of the weight ``node`` reads at input ``index``."""
    source = None if index is None or node.inputs[index] is None else _weight_source(node.inputs[index])
    if source is None or source.producer() is None or source.producer().op_type != DQ:
        return None, "-" if index is None else "float" if source is not None else "computed"
    dq = source.producer()
    codes = ir.convenience.get_const_tensor(dq.inputs[0])
    scale = ir.convenience.get_const_tensor(dq.inputs[1])
    zero_point = ir.convenience.get_const_tensor(dq.inputs[2]) if len(dq.inputs) > 2 and dq.inputs[2] else None
    axis, block = dq.attributes.get_int("axis", 1), dq.attributes.get_int("block_size", 0)
    if scale is None or scale.size == 1:
        scheme = "tensor"
    else:
        scheme = f"{f'block{block}' if block else 'channel'} axis {axis}"
    return _code_bits(codes, zero_point), f"{codes.dtype.name.lower()} {scheme}"


def _weight_index(node: ir.Node) -> int | None:
    """Conv, ConvTranspose and Gemm read their weight at input 1 (LSTM/GRU/RNN their W; R at 2); a MatMul at
    whichever input is constant."""
    if node.op_type != "MatMul":
        return 1
    return next((i for i in (1, 0) if node.inputs[i] is not None and _weight_source(node.inputs[i]) is not None), None)


def _weight_source(value: ir.Value) -> ir.Value | None:
    """The constant a weight input comes from: a float constant, or a DequantizeLinear of constant codes,
    reached through ops that only move weights; None for an activation."""
    while True:
        if constant_tensor(value) is not None:
            return value
        producer = value.producer()
        if producer is None:
            return None
        if producer.op_type == DQ and constant_tensor(producer.inputs[0]) is not None:
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
    """Per-layer weight bits (and, from a report, the layer error before/after compensation) as a PNG; for a
    mixed-precision report also the priced error against average bits (or bytes)."""
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
    panels = 1 + errors + (inspection.tradeoff is not None)
    width = min(24.0, max(6.0, 0.3 * len(rows) + 2))
    fig, axes = plt.subplots(
        panels, 1, figsize=(width, 4 + 2.5 * (panels - 1)), squeeze=False, layout="constrained"
    )  # constrained, not tight_layout: that spaces all panels as the ones with the rotated layer names
    layer_axes = axes[: 1 + errors, 0]
    for ax in layer_axes[1:]:
        ax.sharex(layer_axes[0])
    top, x = layer_axes[0], np.arange(len(rows))
    bits = [r.bits or 0 for r in rows]
    top.bar_label(top.bar(x, bits, color="tab:blue"), fontsize="x-small")
    top.set_ylim(0, max(bits) * 1.15 + 0.5)
    top.set_ylabel("weight bits (0: float or none)")
    top.set_title(f"onnxbc inspect {Path(inspection.source).name}")
    if errors:
        bottom = layer_axes[1]
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
    layer_axes[-1].set_xticks(x, labels, rotation=60 if len(rows) <= 80 else 90, ha="right", fontsize="x-small")
    for ax in layer_axes[:-1]:  # the shared ticks are labelled once, under the last layer panel
        ax.tick_params(labelbottom=False)
    if inspection.tradeoff is not None:
        _plot_tradeoff(axes[-1, 0], inspection.tradeoff)
    try:
        fig.savefig(path, dpi=110)
    except OSError as e:
        raise UsageError(f"{path}: cannot write the plot ({one_line(e)})") from e
    finally:
        plt.close(fig)


def _plot_tradeoff(ax: Any, t: Tradeoff) -> None:
    """The allocation's curve, the chosen point, the budget and the one-bit-width points; log error, so
    points of zero error are left out."""

    def positive(points: Any) -> tuple[list[float], list[float]]:
        kept = [(x, y) for x, y in points if y is not None and y > 0]
        return [x for x, _ in kept], [y for _, y in kept]

    ax.plot(*positive(t.curve), "-o", ms=3, color="tab:blue", label="allocations along the priced curve")
    for bits, point in t.uniform.items():
        xs, ys = positive([point])
        held = f" ({t.held[bits]} held)" if t.held.get(bits) else ""
        ax.plot(xs, ys, "s", color="tab:gray")
        for x, y in zip(xs, ys):
            ax.annotate(f"all {bits}-bit{held}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize="small")
    ax.plot(*positive([t.chosen]), "*", ms=14, color="tab:red", label=f"chosen ({t.method})")
    if t.budget is not None:
        ax.axvline(t.budget, ls="--", lw=1, color="tab:red", alpha=0.6, label="budget")
    ax.set_yscale("log")
    ax.margins(x=0.08)  # room for the point labels
    ax.set_xlabel("average bits per quantized weight" if t.unit == "bits" else "quantized weight bytes")
    ax.set_ylabel(f"summed priced error\n({t.priced})")
    ax.legend(fontsize="small")
