"""What ``onnxbc check`` found, and the three ways it says so: text for people, JSON (schema in
docs/check-schema.md) and JUnit XML for CI systems (one testsuite per model, one testcase per rule).

A rule ends ``passed``, ``warned`` (it found something to say that does not fail the check, e.g. a float
model), ``failed`` or ``skipped``; the report passes when no rule failed."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnxbc
from onnxbc import held, model_io
from onnxbc.options import CheckOptions, OutputFormat

if TYPE_CHECKING:
    from onnxbc.validate import Subject

SCHEMA = "onnxbc.check/1"


class Status(str, enum.Enum):
    PASSED = "passed"
    WARNED = "warned"  # passed, with findings that are warnings (a rule with ``warns``)
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclasses.dataclass(frozen=True)
class Finding:
    """One line about one node, tensor or output; ``failed=False`` for measurements that passed and warnings."""

    message: str
    failed: bool = True
    metrics: dict[str, float | None] | None = None


@dataclasses.dataclass(frozen=True)
class Rule:
    id: str
    profile: str  # onnx | qdq | tensorrt | onnxruntime | numerics
    doc: str
    check: Callable[[Subject], Iterator[Finding]]
    needs_checker: bool = True  # reads Q/DQ parts: skipped when onnx.checker fails
    warns: bool = False  # its findings are warnings: the rule ends warned, never failed
    exit_code: int = 1  # onnxbc check's exit code when this rule fails (2: the model file cannot be read)


@dataclasses.dataclass(frozen=True)
class RuleResult:
    rule: Rule
    status: Status
    findings: tuple[Finding, ...] = ()
    reason: str | None = None  # why a rule was skipped
    seconds: float = 0.0

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.failed]


@dataclasses.dataclass(frozen=True)
class CheckReport:
    model: str
    options: CheckOptions
    results: tuple[RuleResult, ...]

    @property
    def passed(self) -> bool:
        return all(r.status is not Status.FAILED for r in self.results)

    @property
    def exit_code(self) -> int:
        """0 when no rule failed; else the largest exit code of the failed rules (2 when the model is unreadable)."""
        return max((r.rule.exit_code for r in self.results if r.status is Status.FAILED), default=0)

    @property
    def warnings(self) -> list[str]:
        """The warned rules' findings, as ``rule: message`` lines."""
        return [f"{r.rule.id}: {f.message}" for r in self.results if r.status is Status.WARNED for f in r.findings]

    def count(self, status: Status) -> int:
        return sum(r.status is status for r in self.results)

    def summary(self) -> str:
        counts = ", ".join(f"{self.count(s)} {s.value}" for s in Status)
        return f"{'PASSED' if self.passed else 'FAILED'}: {counts}"

    def render(self, fmt: OutputFormat) -> str:
        if fmt is OutputFormat.JSON:
            return json.dumps(self.to_dict(), indent=2)
        if fmt is OutputFormat.JUNIT:
            return self.to_junit()
        return self.to_text()

    def write(self, fmt: OutputFormat, path: str | os.PathLike) -> None:
        """Write the report in ``fmt`` to ``path`` atomically (an OSError as a one-line OnnxbcError)."""
        model_io.write_text(path, self.render(fmt) + "\n")

    def to_text(self, max_lines: int = 10) -> str:
        lines = [f"onnxbc check {self.model} (target {self.options.target.value})"]
        mark = {Status.PASSED: "ok", Status.WARNED: "WARN", Status.FAILED: "FAIL", Status.SKIPPED: "skip"}
        for r in self.results:
            lines.append(f"  {mark[r.status]:<4}  {r.rule.id}" + (f" ({r.reason})" if r.reason else ""))
            lines.extend(f"        {f.message}" for f in r.findings[:max_lines])
            if len(r.findings) > max_lines:
                lines.append(f"        ... {len(r.findings) - max_lines} more (--format json lists all)")
        lines.append(self.summary())
        return printable("\n".join(lines))

    def to_dict(self) -> dict[str, Any]:
        o = self.options
        return {
            "schema": SCHEMA,
            "tool_version": onnxbc.__version__,
            "model": printable(self.model),
            "target": o.target.value,
            "options": {
                "device": o.device.value,
                "reference": None if o.reference is None else held.describe(o.reference),
                "data": None if o.data is None else (o.data.describe()["path"] or o.data.describe()["source"]),
                "metric": o.metric.value,
                "max_error": o.max_error,
                "exact": o.exact,
                "ignore": sorted(o.ignore),
            },
            "passed": self.passed,
            "summary": {s.value: self.count(s) for s in Status},
            "rules": [
                {
                    "id": r.rule.id,
                    "profile": r.rule.profile,
                    "doc": r.rule.doc,
                    "status": r.status.value,
                    "reason": None if r.reason is None else printable(r.reason),
                    "seconds": round(r.seconds, 4),
                    "findings": [_finding_dict(f) for f in r.findings],
                }
                for r in self.results
            ],
        }

    def to_junit(self) -> str:
        counts = {
            "tests": str(len(self.results)),
            "failures": str(self.count(Status.FAILED)),
            "errors": "0",
            "skipped": str(self.count(Status.SKIPPED)),
            "time": f"{sum(r.seconds for r in self.results):.3f}",
        }
        root = ET.Element("testsuites", {"name": "onnxbc check", **counts})
        suite = ET.SubElement(root, "testsuite", {"name": self.model, **counts})
        properties = ET.SubElement(suite, "properties")
        ET.SubElement(properties, "property", {"name": "target", "value": self.options.target.value})
        classname = Path(self.model).name
        for r in self.results:
            case = ET.SubElement(
                suite, "testcase", {"classname": classname, "name": r.rule.id, "time": f"{r.seconds:.3f}"}
            )
            if r.status is Status.FAILED:
                failure = ET.SubElement(case, "failure", {"message": r.failures[0].message, "type": r.rule.id})
                failure.text = "\n".join(f.message for f in r.failures)
            elif r.status is Status.SKIPPED:
                ET.SubElement(case, "skipped", {"message": r.reason or ""})
            if r.status is Status.WARNED:
                ET.SubElement(case, "system-err").text = "\n".join(f"warning: {f.message}" for f in r.findings)
            else:
                measured = [f.message for f in r.findings if not f.failed]
                if measured:
                    ET.SubElement(case, "system-out").text = "\n".join(measured)
        ET.indent(root)
        return printable('<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode"))


def printable(text: str) -> str:
    """``text`` writable as UTF-8: the bytes of a path that is not UTF-8 (surrogates in ``str``) as ``\\xff``."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that stands for no byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _finding_dict(f: Finding) -> dict[str, Any]:
    metrics = f.metrics and {k: v if v is None or math.isfinite(v) else None for k, v in f.metrics.items()}
    return {"message": printable(f.message), "failed": f.failed, "metrics": metrics}
