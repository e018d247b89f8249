"""One module per quantizer, each with the same entry point::

    quantize(bench: BenchModel, setting: Setting, out_path: Path, **variant) -> Result | NotApplicable

It writes the quantized model to ``out_path`` (plus any external data beside it) and returns facts worth a
note in the tables, or says why the tool cannot do ``setting`` on this model. Temporary files go to
``work_dir(out_path)``, which the worker deletes. Modules import their tool inside ``quantize`` only, so the
runner can list them on a machine where a tool is missing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class Result:
    path: Path
    notes: tuple[str, ...] = ()
    info: dict[str, Any] = dataclasses.field(default_factory=dict)  # tool-specific facts, kept in the JSON


@dataclasses.dataclass(frozen=True)
class NotApplicable:
    reason: str


def work_dir(out_path: Path) -> Path:
    path = Path(out_path).parent / "work"
    path.mkdir(parents=True, exist_ok=True)
    return path


def at_least_opset(model_path: Path, out_path: Path, opset: int) -> tuple[Path, list[str]]:
    """The model, converted to ``opset`` (onnx.version_converter) when it is older, and a note saying so.

    Per-channel QuantizeLinear/DequantizeLinear (``axis``) needs opset 13; NNCF refuses older models and
    ONNX Runtime's quantize_static writes models it cannot load. A user converts the model first; so do we.
    """
    import onnx
    from onnx import version_converter

    model = onnx.load(str(model_path))
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if current >= opset:
        return Path(model_path), []
    target = work_dir(out_path) / f"opset{opset}.onnx"
    onnx.save(version_converter.convert_version(model, opset), str(target))
    return target, [f"converted from opset {current} to {opset} first (per-channel Q/DQ needs it)"]
