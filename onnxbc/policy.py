"""Per-layer quantization policy files (``--policy FILE``): TOML, or YAML when PyYAML is installed.

Schema (TOML)::

    avg_bits = 4.5            # optional budget: logical bits per quantizable weight
    # max_size = "12 MiB"     # or a size budget (bytes as an integer, or a string with B/kB/MB/GB/KiB/MiB/GiB)

    [[layer]]
    pattern = "encoder\\\\..*"  # a Python regex, matched against the whole layer name (re.fullmatch)
    bits = 4

    [[layer]]
    name = "lm_head"          # an exact layer name
    bits = 8
    scheme = "uniform"        # a schemes.Scheme value
    block_size = 128          # optional, weights per scale block along the input axis
    rounding = "gptq"         # optional: "nearest" or "gptq" (2-D MatMul/Gemm weights)

    [[layer]]
    name = "classifier"
    skip = true               # leave float

Each rule has exactly one of ``name`` (exact) or ``pattern`` (regex). Rules apply in file order; a later rule
overrides the fields it sets for the layers it matches, so put general patterns first and exceptions after.
A layer matched by no rule is left to the automatic choice. ``bits`` is 2, 3, 4 or 8; ``avg_bits`` and
``max_size`` are exclusive, and a budget on the command line must agree with the policy's (``--avg-bits`` with
the same value, no ``--max-size`` beside ``avg_bits``): ``CompressOptions`` checks that when it is built. Errors
are ``UsageError``s of one line naming the file, the rule and the problem; a rule that matches no layer is only
a warning (``Policy.resolve``), since layer names are known late. YAML needs PyYAML (a dependency of onnxbc),
imported only when a YAML policy is read.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from onnxbc.errors import UsageError
from onnxbc.options import CompressOptions, Rounding, WeightType
from onnxbc.solvers.schemes import Scheme

BITS = (2, 3, 4, 8)
RULE_KEYS = ("name", "pattern", "bits", "scheme", "skip", "block_size", "rounding")
TOP_KEYS = ("layer", "avg_bits", "max_size")
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


@dataclasses.dataclass(frozen=True)
class LayerRule:
    """One ``[[layer]]`` rule; ``index`` is its 1-based position in the file."""

    index: int
    name: str | None = None
    pattern: re.Pattern[str] | None = None
    bits: int | None = None
    scheme: Scheme | None = None
    skip: bool | None = None
    block_size: int | None = None
    rounding: Rounding | None = None

    def matches(self, layer: str) -> bool:
        return layer == self.name if self.pattern is None else self.pattern.fullmatch(layer) is not None

    def describe(self) -> str:
        return f"name {self.name!r}" if self.pattern is None else f"pattern {self.pattern.pattern!r}"


@dataclasses.dataclass(frozen=True)
class LayerOverride:
    """What the policy fixes for one layer (``None``: left to the automatic choice); ``rules`` that set it."""

    bits: int | None = None
    scheme: Scheme | None = None
    skip: bool = False
    block_size: int | None = None
    rounding: Rounding | None = None
    rules: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class Policy:
    source: str
    rules: tuple[LayerRule, ...] = ()
    avg_bits: float | None = None
    max_size: int | None = None  # bytes

    def resolve(self, layer_names: Iterable[str]) -> tuple[dict[str, LayerOverride], list[str]]:
        """Per-layer overrides for the layers some rule matches, and a warning per rule that matches none."""
        names = list(layer_names)
        overrides: dict[str, LayerOverride] = {}
        warnings = []
        for rule in self.rules:
            hits = [n for n in names if rule.matches(n)]
            if not hits:
                warnings.append(f"{self.source}: layer rule {rule.index} ({rule.describe()}) matches no layer")
            for n in hits:
                overrides[n] = _apply(overrides.get(n, LayerOverride()), rule)
        return overrides, warnings

    def check_flags(self, options: CompressOptions) -> None:
        """The command line must agree with this policy's budget: another budget, another value of the same
        one, candidates that cannot reach it or unquantized weights are a usage error naming the file and the
        flag (``CompressOptions`` calls this when it is built, before any work)."""
        if self.avg_bits is None and self.max_size is None:
            return
        key, flag = ("avg_bits", "--avg-bits") if self.avg_bits is not None else ("max_size", "--max-size")
        mine = _budget_text(key, getattr(self, key))
        for other_key, other_flag in (("avg_bits", "--avg-bits"), ("max_size", "--max-size")):
            given = getattr(options, other_key)
            if given is None:
                continue
            if other_key != key:
                raise UsageError(
                    f"{self.source} sets the budget {key} = {mine}, and {other_flag} sets another: "
                    f"drop {other_flag} or the policy's {key}"
                )
            if given != getattr(self, key):
                raise UsageError(
                    f"{self.source} sets {key} = {mine}, but {flag} {_budget_text(key, given)} contradicts it: "
                    f"drop {flag} or make them agree"
                )
        if options.weights is WeightType.NONE:
            raise UsageError(f"{self.source} sets the budget {key}, which chooses weight bits: not with --weights none")
        low, high = min(options.candidates), max(options.candidates)
        if self.avg_bits is not None and not low <= self.avg_bits <= high:
            raise UsageError(f"{self.source}: avg_bits = {mine} is outside the range of --candidates [{low}, {high}]")


def _budget_text(key: str, value: float) -> str:
    return f"{value:g}" if key == "avg_bits" else f"{value} bytes"


def _apply(current: LayerOverride, rule: LayerRule) -> LayerOverride:
    changes: dict[str, Any] = {"rules": current.rules + (rule.index,)}
    for field in ("bits", "scheme", "skip", "block_size", "rounding"):
        value = getattr(rule, field)
        if value is not None:
            changes[field] = value
    return dataclasses.replace(current, **changes)


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file: ``.yaml``/``.yml`` as YAML (needs PyYAML), anything else as TOML."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"{path}: cannot read the policy file ({e.strerror or e})") from e
    yaml = path.suffix.lower() in (".yaml", ".yml")
    return parse_policy(text, str(path), "yaml" if yaml else "toml")


def parse_policy(text: str, source: str = "<policy>", fmt: str = "toml") -> Policy:
    """Validate a policy given as text (``fmt`` ``"toml"`` or ``"yaml"``); ``source`` names it in errors."""
    data = _load_yaml(text, source) if fmt == "yaml" else _load_toml(text, source)
    if not isinstance(data, Mapping):
        raise UsageError(f"{source}: a policy must be a table of settings and [[layer]] rules")
    for key in data:
        if key not in TOP_KEYS:
            raise UsageError(f"{source}: unknown top-level key {key!r} (allowed: {', '.join(TOP_KEYS)})")
    if "avg_bits" in data and "max_size" in data:
        raise UsageError(f"{source}: set avg_bits or max_size, not both")
    layers = data.get("layer", [])
    if not isinstance(layers, list) or not all(isinstance(r, Mapping) for r in layers):
        raise UsageError(f"{source}: 'layer' must be a list of rules ([[layer]] tables)")
    return Policy(
        source=source,
        rules=tuple(_rule(r, i, source) for i, r in enumerate(layers, start=1)),
        avg_bits=_avg_bits(data["avg_bits"], source) if "avg_bits" in data else None,
        max_size=parse_size(data["max_size"], f"{source}: max_size") if "max_size" in data else None,
    )


def _load_toml(text: str, source: str) -> Any:
    try:
        import tomllib
    except ModuleNotFoundError as e:  # Python 3.10
        raise UsageError(f"{source}: reading TOML needs Python 3.11 or newer (tomllib)") from e
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{source}: not valid TOML: {e}") from e


def _load_yaml(text: str, source: str) -> Any:
    try:
        import yaml
    except ImportError as e:
        raise UsageError(
            f"{source}: YAML policies need PyYAML (pip install pyyaml); or write the policy in TOML"
        ) from e
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"{source}: not valid YAML: {' '.join(str(e).split())}") from e


def _rule(raw: Mapping[str, Any], index: int, source: str) -> LayerRule:
    where = f"{source}: layer rule {index}"
    for key in raw:
        if key not in RULE_KEYS:
            hint = " (use name = exact layer name, or pattern = regex)" if key == "match" else ""
            raise UsageError(f"{where}: unknown key {key!r}{hint}; allowed: {', '.join(RULE_KEYS)}")
    if ("name" in raw) == ("pattern" in raw):
        raise UsageError(f"{where}: give exactly one of name (exact layer name) and pattern (regex)")
    fields: dict[str, Any] = {"index": index}
    if "name" in raw:
        fields["name"] = _string(raw["name"], where, "name")
    else:
        text = _string(raw["pattern"], where, "pattern")
        try:
            fields["pattern"] = re.compile(text)
        except re.error as e:
            raise UsageError(f"{where}: invalid regex {text!r}: {e}") from e
    if "bits" in raw:
        bits = raw["bits"]
        if isinstance(bits, bool) or bits not in BITS:
            raise UsageError(f"{where}: bits must be one of {', '.join(map(str, BITS))}, not {bits!r}")
        fields["bits"] = int(bits)
    for key, kind in (("scheme", Scheme), ("rounding", Rounding)):
        if key in raw:
            try:
                fields[key] = kind(raw[key])
            except ValueError as e:
                known = ", ".join(v.value for v in kind)
                raise UsageError(f"{where}: unknown {key} {raw[key]!r} (known: {known})") from e
    if "skip" in raw:
        if not isinstance(raw["skip"], bool):
            raise UsageError(f"{where}: skip must be true or false, not {raw['skip']!r}")
        fields["skip"] = raw["skip"]
    if "block_size" in raw:
        size = raw["block_size"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 2:
            raise UsageError(f"{where}: block_size must be an integer >= 2, not {size!r}")
        fields["block_size"] = size
    rule = LayerRule(**fields)
    _check_rule(rule, where)
    return rule


def _check_rule(rule: LayerRule, where: str) -> None:
    if rule.skip and any(v is not None for v in (rule.bits, rule.scheme, rule.block_size, rule.rounding)):
        raise UsageError(f"{where}: skip = true leaves the layer float; drop bits/scheme/block_size/rounding")
    if rule.scheme is not None and rule.bits is not None and rule.bits not in rule.scheme.bit_widths:
        widths = ", ".join(map(str, rule.scheme.bit_widths))
        raise UsageError(f"{where}: scheme {rule.scheme.value!r} is defined for bits {widths}, not {rule.bits}")


def _string(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise UsageError(f"{where}: {key} must be a non-empty string, not {value!r}")
    return value


def _avg_bits(value: Any, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= 16:
        raise UsageError(f"{source}: avg_bits must be a number between 1 and 16, not {value!r}")
    return float(value)


def parse_size(value: Any, what: str) -> int:
    """Bytes from an integer or a string such as ``"12MB"``, ``"3.5 MiB"``."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value) if isinstance(value, str) else None
    unit = _UNITS.get(match.group(2).lower() or "b") if match else None
    if unit is None or float(match.group(1)) <= 0:
        raise UsageError(f'{what} must be a positive number of bytes or a size like "12MB" / "3.5 MiB", not {value!r}')
    return int(float(match.group(1)) * unit)


def policy_from_report(report: Mapping[str, Any]) -> str:
    """A TOML policy that reproduces a run's per-layer choices, from its report JSON (as a dict).

    Each layer of ``report["layers"]`` becomes an exact-name rule: ``skip = true`` when its status is
    ``"skipped"``, else ``bits`` (and ``block_size`` for block scales, ``scheme`` and ``rounding`` when recorded) of its
    ``"weight"``. Quantized layers without a weight (activation x activation MatMul) get no rule; bit widths
    a policy cannot set (7) become a comment.
    """
    lines = [
        f"# onnxbc policy reproducing the per-layer choices of {' '.join(_input_name(report).split())}",
        '# name = exact layer name; edit bits / skip, or add pattern = "regex" rules',
        "",
    ]
    for layer in report.get("layers", []):
        body = _rule_lines(layer)
        bits = (layer.get("weight") or {}).get("bits")
        if body and bits is not None and bits not in BITS and layer.get("status") != "skipped":
            lines += [
                f"# {' '.join(str(layer['name']).split())}: {bits} bits cannot be set by a policy (2, 3, 4, 8)",
                "",
            ]
        elif body:
            lines += ["[[layer]]", f"name = {toml_string(layer['name'])}", *body, ""]
    return "\n".join(lines)


def _rule_lines(layer: Mapping[str, Any]) -> list[str]:
    if layer.get("status") == "skipped":
        return ["skip = true"]
    weight = layer.get("weight") or {}
    if "bits" not in weight:
        return []
    body = [f"bits = {int(weight['bits'])}"]
    if weight.get("scheme"):
        body.append(f"scheme = {toml_string(weight['scheme'])}")
    if weight.get("block_size"):
        body.append(f"block_size = {int(weight['block_size'])}")
    if weight.get("rounding"):
        body.append(f"rounding = {toml_string(weight['rounding'])}")
    return body


def _input_name(report: Mapping[str, Any]) -> str:
    source = report.get("input", {})
    return str(source.get("path") or source.get("model") or "a report") if isinstance(source, Mapping) else "a report"


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for ch in str(text):
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'
