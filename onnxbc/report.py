"""The per-layer report of a compress run: JSON (schema in docs/report-schema.md) and a terminal table."""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

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


@dataclasses.dataclass
class Report:
    tool_version: str
    input: dict[str, Any]
    output: dict[str, Any] = dataclasses.field(default_factory=dict)
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    device: str = "cpu"
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    opset: dict[str, int] = dataclasses.field(default_factory=dict)
    passes_over_data: int = 0
    timings_s: dict[str, float] = dataclasses.field(default_factory=dict)
    layers: list[LayerRecord] = dataclasses.field(default_factory=list)
    outputs: dict[str, Any] = dataclasses.field(default_factory=dict)
    compensation: dict[str, Any] = dataclasses.field(default_factory=dict)
    smoothing: dict[str, Any] = dataclasses.field(default_factory=dict)
    weight_ranges: dict[str, Any] = dataclasses.field(default_factory=dict)
    precision: dict[str, Any] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)
    schema: str = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def write(self, path: str | os.PathLike) -> None:
        """Write the JSON atomically (temporary file + rename)."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.to_dict(), f, indent=2)
                f.write("\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def print_summary(self, console: Console, max_rows: int = 40) -> None:
        table = Table(title="onnxbc: per-layer result", title_justify="left", show_lines=False)
        for col in ("layer", "op", "weights", "input", "rel. error before → after (fit)", "held out", "bias"):
            table.add_column(col, overflow="fold")
        quantized = [r for r in self.layers if r.status == "quantized"]
        for r in quantized[:max_rows]:
            table.add_row(
                r.name,
                r.op,
                _weight_cell(r.weight),
                ", ".join(a["dtype"] for a in r.activations) or "float",
                _error_cell(r.error, "fit"),
                _error_cell(r.error, "holdout"),
                _bias_cell(r.bias),
            )
        if len(quantized) > max_rows:
            table.add_row(f"... {len(quantized) - max_rows} more in the JSON report", "", "", "", "", "", "")
        console.print(table)
        skipped = [r for r in self.layers if r.status == "skipped"]
        for r in skipped[:max_rows]:
            console.print(f"  [yellow]left float[/] {r.name} ({r.op}): {r.reason}")
        if len(skipped) > max_rows:
            console.print(f"  ... {len(skipped) - max_rows} more left float (see the JSON report)")
        for w in self.warnings:
            console.print(f"[yellow]warning:[/] {w}")


def _weight_cell(weight: dict[str, Any] | None) -> str:
    if not weight:
        return "float"
    return f"int{weight['bits']} {weight['granularity']}"


def _error_cell(error: dict[str, Any] | None, split: str) -> str:
    if not error or not error.get(split):
        return "-"
    e = error[split]
    if e.get("rel_mse_after") is None:
        return f"{e['rel_mse_before']:.2e}"
    return f"{e['rel_mse_before']:.2e} → {e['rel_mse_after']:.2e}"


def _bias_cell(bias: dict[str, Any] | None) -> str:
    if not bias:
        return "-"
    if not bias.get("applied"):
        return "no"
    return f"|Δ|={bias['delta_norm']:.2e} ({bias['site']})"


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
