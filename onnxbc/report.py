"""The per-layer report of a compress run: JSON (schema in docs/report-schema.md) and a terminal table."""

from __future__ import annotations

import dataclasses
import enum
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from onnxbc import model_io

SCHEMA = "onnxbc.report/1"


@dataclasses.dataclass
class LayerRecord:
    name: str
    op: str
    kind: str  # "weighted" | "activation_matmul" | "other"
    status: str  # "quantized" | "skipped"
    reason: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    weight: dict[str, Any] | None = None
    activations: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    error: dict[str, Any] | None = None
    bias: dict[str, Any] | None = None
    fusion: dict[str, Any] | None = None  # --target onnxruntime: how ONNX Runtime runs it (onnxbc.fusion)
    recurrence: dict[str, Any] | None = None  # LSTM/GRU/RNN: the recurrence weight R (``weight`` is W)


@dataclasses.dataclass
class Report:
    tool_version: str
    input: dict[str, Any]
    output: dict[str, Any] = dataclasses.field(default_factory=dict)
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    device: str = "cpu"
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    opset: dict[str, int] = dataclasses.field(default_factory=dict)
    prepare: dict[str, Any] = dataclasses.field(default_factory=dict)
    passes_over_data: int = 0
    timings_s: dict[str, float] = dataclasses.field(default_factory=dict)
    memory: dict[str, Any] = dataclasses.field(default_factory=dict)  # the budget, and the process's peak
    layers: list[LayerRecord] = dataclasses.field(default_factory=list)
    outputs: dict[str, Any] = dataclasses.field(default_factory=dict)
    compensation: dict[str, Any] = dataclasses.field(default_factory=dict)
    smoothing: dict[str, Any] = dataclasses.field(default_factory=dict)
    weight_ranges: dict[str, Any] = dataclasses.field(default_factory=dict)
    precision: dict[str, Any] = dataclasses.field(default_factory=dict)
    fusion: dict[str, Any] = dataclasses.field(default_factory=dict)  # --target onnxruntime: the audit's summary
    warnings: list[str] = dataclasses.field(default_factory=list)
    schema: str = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def write(self, path: str | os.PathLike) -> None:
        """Write the JSON atomically (temporary file + rename)."""
        model_io.write_text(path, self.to_json())

    def print_summary(self, console: Console, max_rows: int = 40) -> None:
        """The per-layer table and the layers left float (warnings are the caller's: they go to stderr).

        Numbers are never folded across lines. Where all columns leave less than 20 for the layer names, only
        the decisive error (held out, else fit) and the bias change are shown, then "op" and "input" give way,
        and longer names end in "…" (the JSON report has them whole).
        """
        quantized = [r for r in self.layers if r.status == "quantized"]
        columns = _columns(quantized[:max_rows], wide=True)
        if _width(columns) + 20 > console.width:
            columns = _columns(quantized[:max_rows], wide=False)
        for optional in ("op", "input"):
            if _width(columns) + 20 <= console.width:
                break
            del columns[optional]
        more = len(quantized) - max_rows
        table = Table(
            title="onnxbc: per-layer result",
            title_justify="left",
            caption=f"... {more} more in the JSON report" if more > 0 else None,
            caption_justify="left",
        )
        table.add_column("layer", no_wrap=True, overflow="ellipsis", max_width=max(console.width - _width(columns), 8))
        for header in columns:
            table.add_column(header, no_wrap=True)
        for i, r in enumerate(quantized[:max_rows]):
            table.add_row(escape(r.name), *(escape(cells[i]) for cells in columns.values()))  # names hold [brackets]
        console.print(table)
        skipped = [r for r in self.layers if r.status == "skipped"]
        for r in skipped[:max_rows]:
            console.print(f"  [yellow]left float[/] {escape(r.name)} ({r.op}): {escape(str(r.reason))}")
        if len(skipped) > max_rows:
            console.print(f"  ... {len(skipped) - max_rows} more left float (see the JSON report)")


def _columns(records: list[LayerRecord], wide: bool) -> dict[str, list[str]]:
    """The table's cells but the layer names, by column header."""
    columns = {
        "op": [r.op for r in records],
        "weights": [_weight_cell(r.weight, r.recurrence) for r in records],
        "input": [", ".join(a["dtype"] for a in r.activations) or "float" for r in records],
    }
    if wide:
        columns["rel. error before → after (fit)"] = [_error_cell(r.error, "fit") for r in records]
        columns["held out"] = [_error_cell(r.error, "holdout") for r in records]
        columns["bias"] = [_bias_cell(r.bias) for r in records]
        return columns
    split = "holdout" if any(r.error and r.error.get("holdout") for r in records) else "fit"
    columns[f"rel. error ({'held out' if split == 'holdout' else 'fit'})"] = [
        _error_cell(r.error, split) for r in records
    ]
    columns["bias |Δ|"] = [_bias_cell(r.bias, site=False) for r in records]
    return columns


def _width(columns: dict[str, list[str]]) -> int:
    """Columns the table takes without the layer names: cells, padding and rules."""
    return sum(max(map(cell_len, [header, *cells])) + 3 for header, cells in columns.items()) + 4


def _weight_cell(weight: dict[str, Any] | None, recurrence: dict[str, Any] | None = None) -> str:
    if not weight:
        return "float"
    cell = f"int{weight['bits']} {weight['granularity']}"
    return cell if not recurrence else w_and_r(cell, f"int{recurrence['bits']} {recurrence['granularity']}")


def w_and_r(w: str, r: str) -> str:
    """A recurrent layer's weight cell: ``int8 channel (W, R)``, or each with its own when they differ."""
    return f"{w} (W, R)" if w == r else f"{w} (W), {r} (R)"


def _error_cell(error: dict[str, Any] | None, split: str) -> str:
    if not error or not error.get(split):
        return "-"
    e = error[split]
    if e.get("rel_mse_after") is None:
        return f"{e['rel_mse_before']:.2e}"
    return f"{e['rel_mse_before']:.2e} → {e['rel_mse_after']:.2e}"


def _bias_cell(bias: dict[str, Any] | None, site: bool = True) -> str:
    if not bias:
        return "-"
    if not bias.get("applied"):
        return "no"
    return f"|Δ|={bias['delta_norm']:.2e} ({bias['site']})" if site else f"{bias['delta_norm']:.2e}"


def least_error(compensation: dict[str, Any], kind: str) -> str:
    """The report's least output error ``without`` or ``with`` compensation, in words: a lower bound ("at least")
    when those candidates were stopped once they could not win."""
    bound = "at least " if compensation.get(f"output_rel_mse_{kind}_is_bound") else ""
    return f"{bound}{compensation[f'output_rel_mse_{kind}']:.3e}"


def close_call_errors(compensation: dict[str, Any]) -> str:
    """A close call's candidates with their errors on every sample, in words; one stopped once it could not win
    (``close_call_stopped``) with the least its error can be."""
    stopped = compensation.get("close_call_stopped") or {}
    return ", ".join(
        [f"{name} {error:.3e}" for name, error in compensation["close_call"].items()]
        + [f"{name} at least {s['rel_mse_at_least']:.3e}" for name, s in stopped.items()]
    )


def _plain(x: Any) -> Any:
    """JSON-ready: enums to values, numpy to Python, paths to strings."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, enum.Enum):
        return x.value
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x
