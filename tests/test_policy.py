"""Policy files: parsing, one-line errors naming file/rule/problem, resolution order, report round trip."""

import re
import sys
from pathlib import Path

import pytest

from onnxbc.errors import UsageError
from onnxbc.options import CompressOptions, Rounding, WeightType
from onnxbc.policy import LayerOverride, load_policy, parse_policy, policy_from_report, toml_string
from onnxbc.solvers.schemes import Scheme

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; on 3.10 policies report that they need it

LAYERS = ["encoder.0.fc1", "encoder.0.fc2", "encoder.1.fc1", "encoder.1.fc2", "lm_head", "classifier"]

POLICY = r"""
avg_bits = 4.5

[[layer]]
pattern = "encoder\\..*"
bits = 4

[[layer]]
pattern = "encoder\\.1\\..*"
bits = 3
block_size = 64

[[layer]]
name = "lm_head"
bits = 8
scheme = "uniform"

[[layer]]
name = "classifier"
skip = true

[[layer]]
name = "decoder.0"
bits = 2
"""


def test_parse_and_resolve_in_file_order():
    policy = parse_policy(POLICY, "p.toml")
    assert policy.avg_bits == 4.5 and policy.max_size is None and len(policy.rules) == 5
    overrides, warnings = policy.resolve(LAYERS)
    assert overrides["encoder.0.fc1"] == LayerOverride(bits=4, rules=(1,))
    assert overrides["encoder.1.fc2"] == LayerOverride(bits=3, block_size=64, rules=(1, 2))  # later rule wins
    assert overrides["lm_head"] == LayerOverride(bits=8, scheme=Scheme.UNIFORM, rules=(3,))
    assert overrides["classifier"].skip and overrides["classifier"].bits is None
    assert set(overrides) == set(LAYERS)
    assert warnings == ["p.toml: layer rule 5 (name 'decoder.0') matches no layer"]


def test_pattern_is_a_full_match_and_name_is_exact():
    policy = parse_policy('[[layer]]\npattern = "fc1"\nbits = 8\n[[layer]]\nname = "encoder.0"\nbits = 2\n')
    overrides, warnings = policy.resolve(LAYERS + ["fc1"])
    assert set(overrides) == {"fc1"}  # neither "encoder.0.fc1" (pattern is fullmatch) nor a name prefix
    assert len(warnings) == 1 and "rule 2" in warnings[0]


def test_load_from_file_and_sizes(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text('max_size = "3.5 MiB"\n[[layer]]\nname = "lm_head"\nbits = 8\n')
    policy = load_policy(path)
    assert policy.max_size == int(3.5 * 2**20) and policy.source == str(path)
    assert parse_policy("max_size = 1000").max_size == 1000
    assert parse_policy('max_size = "12MB"').max_size == 12_000_000
    assert parse_policy('max_size = "2048"').max_size == 2048


@pytest.mark.parametrize(
    "text, message",
    [
        ('[[layer]]\nname = "a"\nbitz = 4', r"p\.toml: layer rule 1: unknown key 'bitz'"),
        (
            '[[layer]]\nmatch = "a"\nbits = 4',
            r"layer rule 1: unknown key 'match' \(use name = exact layer name, or pattern",
        ),
        (
            '[[layer]]\nname = "a"\nbits = 4\n[[layer]]\nname = "b"\nbits = 5',
            r"layer rule 2: bits must be one of 2, 3, 4, 8, not 5",
        ),
        ('[[layer]]\nname = "a"\nbits = true', "bits must be one of"),
        ('[[layer]]\npattern = "enc(oder"\nbits = 4', r"layer rule 1: invalid regex 'enc\(oder'"),
        ('[[layer]]\nname = "a"\npattern = "b"', "exactly one of name"),
        ("[[layer]]\nbits = 4", "exactly one of name"),
        ('[[layer]]\nname = "a"\nscheme = "fancy"', "unknown scheme 'fancy'"),
        ('[[layer]]\nname = "a"\nscheme = "ternary"\nbits = 4', "scheme 'ternary' is defined for bits 2, not 4"),
        ('[[layer]]\nname = "a"\nskip = "yes"', "skip must be true or false"),
        ('[[layer]]\nname = "a"\nskip = true\nbits = 4', "skip = true leaves the layer float"),
        ('[[layer]]\nname = "a"\nblock_size = 0', "block_size must be an integer >= 2"),
        (
            '[[layer]]\nname = "a"\nrounding = "stochastic"',
            "unknown rounding 'stochastic' \\(known: nearest, gptq, auto\\)",
        ),
        ('[[layer]]\nname = "a"\nskip = true\nrounding = "gptq"', "skip = true leaves the layer float"),
        ('[[layer]]\nname = ""\nbits = 4', "name must be a non-empty string"),
        ("avg_bits = 4\nmax_size = 100", "avg_bits or max_size, not both"),
        ("avg_bits = 40", "avg_bits must be a number between 1 and 16"),
        ('max_size = "12 parsecs"', "max_size must be a positive number of bytes"),
        ("max_size = -3", "max_size must be"),
        ("bits = 4", r"unknown top-level key 'bits'"),
        ("layer = 3", "'layer' must be a list of rules"),
        ("[[layer]\nname = 1", r"p\.toml: not valid TOML"),
    ],
)
def test_errors_are_one_line_usage_errors_naming_file_and_rule(text, message):
    with pytest.raises(UsageError, match=message) as info:
        parse_policy(text, "p.toml")
    assert "\n" not in str(info.value) and str(info.value).startswith("p.toml: ")
    assert info.value.exit_code == 2


def test_unreadable_file(tmp_path):
    with pytest.raises(UsageError, match="cannot read the policy file"):
        load_policy(tmp_path / "missing.toml")


def test_yaml_without_pyyaml_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml -> ImportError
    path = tmp_path / "policy.yaml"
    path.write_text("layer:\n  - name: a\n    bits: 4\n")
    with pytest.raises(UsageError, match=r"policy\.yaml: YAML policies need PyYAML \(pip install pyyaml\)"):
        load_policy(path)
    (tmp_path / "policy.toml").write_text('[[layer]]\nname = "a"\nbits = 4\n')
    assert load_policy(tmp_path / "policy.toml").rules[0].bits == 4  # TOML never imports yaml


def test_pyyaml_is_a_dependency():
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert any(re.match(r"pyyaml\b", d, re.IGNORECASE) for d in pyproject["project"]["dependencies"])


def test_yaml_with_pyyaml(tmp_path):
    """PyYAML is a dependency (pyproject.toml): a YAML policy loads, with the same schema as TOML."""
    path = tmp_path / "policy.yml"
    path.write_text(
        "avg_bits: 3\n"
        "layer:\n"
        "  - pattern: 'encoder\\..*'\n"
        "    bits: 3\n"
        "  - name: lm_head\n"
        "    bits: 8\n"
        "    rounding: gptq\n"
        "  - name: classifier\n"
        "    skip: true\n"
    )
    policy = load_policy(path)
    overrides, warnings = policy.resolve(LAYERS)
    assert policy.avg_bits == 3.0 and warnings == []
    assert overrides["encoder.1.fc2"] == LayerOverride(bits=3, rules=(1,))
    assert overrides["lm_head"] == LayerOverride(bits=8, rounding=Rounding.GPTQ, rules=(2,))
    assert overrides["classifier"].skip
    path.write_text("layer: [name: a\n")
    with pytest.raises(UsageError, match=r"policy\.yml: not valid YAML"):
        load_policy(path)


@pytest.mark.parametrize(
    "policy, flags, message",
    [
        ("avg_bits = 4", {"max_size": 10**6}, r"p\.toml sets the budget avg_bits = 4, and --max-size sets another"),
        ("avg_bits = 4", {"avg_bits": 5.0}, r"p\.toml sets avg_bits = 4, but --avg-bits 5 contradicts it"),
        ('max_size = "1MB"', {"avg_bits": 4.0}, r"p\.toml sets the budget max_size = 1000000 bytes, and --avg-bits"),
        (
            "max_size = 1000",
            {"max_size": 2000},
            r"p\.toml sets max_size = 1000 bytes, but --max-size 2000 bytes contradicts",
        ),
        (
            "avg_bits = 3",
            {"candidates": (4, 8)},
            r"p\.toml: avg_bits = 3 is outside the range of --candidates \[4, 8\]",
        ),
        ("avg_bits = 4", {"weights": WeightType.NONE}, r"p\.toml sets the budget avg_bits.*not with --weights none"),
    ],
)
def test_a_budget_the_flags_contradict_is_a_usage_error(tmp_path, monkeypatch, policy, flags, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.toml").write_text(policy)
    with pytest.raises(UsageError, match=message) as info:
        CompressOptions(policy="p.toml", **flags)
    assert info.value.exit_code == 2 and "\n" not in str(info.value)


def test_a_budget_the_flags_agree_with_is_taken(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("avg_bits = 4")
    assert CompressOptions(policy=path).policy == path
    assert CompressOptions(policy=path, avg_bits=4.0, candidates=(2, 4, 8)).avg_bits == 4.0
    path.write_text('max_size = "1MB"')
    assert CompressOptions(policy=path, max_size=10**6).max_size == 10**6
    path.write_text("[[layer]\n")  # a broken policy fails when the options are built, before any work
    with pytest.raises(UsageError, match="not valid TOML"):
        CompressOptions(policy=path)


def test_cli_refuses_a_contradicted_policy_before_reading_the_model(tmp_path):
    from typer.testing import CliRunner

    from onnxbc.cli import app

    (tmp_path / "p.toml").write_text("avg_bits = 4\n")
    args = ["compress", str(tmp_path / "missing.onnx"), "--random-data", "--policy", str(tmp_path / "p.toml")]
    r = CliRunner().invoke(app, [*args, "--max-size", "2MB"])
    assert r.exit_code == 2 and "p.toml sets the budget avg_bits = 4, and --max-size sets another" in r.output
    assert "missing.onnx" not in r.output


def _report(layers):
    return {"schema": "onnxbc.report/1", "input": {"path": "m.onnx"}, "layers": layers}


def test_policy_from_report_round_trips():
    layers = [
        {"name": "conv1", "status": "quantized", "weight": {"bits": 8, "granularity": "channel", "block_size": 0}},
        {"name": 'fc/"odd"\\name\u00e9\U0001f600', "status": "quantized", "weight": {"bits": 3, "block_size": 0}},
        {"name": "fc2", "status": "quantized", "weight": {"bits": 4, "granularity": "block128", "block_size": 128}},
        {"name": "fc3", "status": "quantized", "weight": {"bits": 3, "rounding": "gptq"}},
        {"name": "attn_matmul", "status": "quantized", "weight": None},
        {"name": "head", "status": "skipped", "reason": "unsupported", "weight": None},
        {"name": "ln\ttab", "status": "quantized", "weight": {"bits": 2, "scheme": "ternary"}},
        {"name": "reduced", "status": "quantized", "weight": {"bits": 7}},
    ]
    text = policy_from_report(_report(layers))
    overrides, warnings = parse_policy(text, "generated.toml").resolve([layer["name"] for layer in layers])
    assert warnings == []  # every rule names a layer of the report
    assert overrides["conv1"] == LayerOverride(bits=8, rules=(1,))
    assert overrides['fc/"odd"\\name\u00e9\U0001f600'].bits == 3
    assert overrides["fc2"] == LayerOverride(bits=4, block_size=128, rules=(3,))
    assert overrides["fc3"] == LayerOverride(bits=3, rounding=Rounding.GPTQ, rules=(4,))
    assert "attn_matmul" not in overrides
    assert overrides["head"].skip
    assert overrides["ln\ttab"] == LayerOverride(bits=2, scheme=Scheme.TERNARY, rules=(6,))
    assert "reduced" not in overrides and "# reduced: 7 bits cannot be set by a policy" in text
    assert text.startswith("# onnxbc policy reproducing the per-layer choices of m.onnx")


@pytest.mark.parametrize("text", ["plain", 'q"uote', "back\\slash", "ctl\x00\x1f\x7f", "\U0001f600 é"])
def test_toml_string_round_trips(text):
    assert tomllib.loads(f"k = {toml_string(text)}")["k"] == text


def test_yaml_goes_through_the_same_validation(tmp_path, monkeypatch):
    """With a stand-in for PyYAML: parsed data is validated like TOML."""
    import types

    fake = types.ModuleType("yaml")
    fake.YAMLError = ValueError
    fake.safe_load = lambda text: {"avg_bits": 3, "layer": [{"pattern": "encoder\\.1\\..*", "bits": 3}, {"name": "x"}]}
    monkeypatch.setitem(sys.modules, "yaml", fake)
    path = tmp_path / "policy.yaml"
    path.write_text("ignored by the stand-in")
    policy = load_policy(path)
    overrides, warnings = policy.resolve(LAYERS)
    assert policy.avg_bits == 3 and set(overrides) == {"encoder.1.fc1", "encoder.1.fc2"}
    assert warnings == [f"{path}: layer rule 2 (name 'x') matches no layer"]
    fake.safe_load = lambda text: {"layer": [{"name": "a", "bits": 6}]}
    with pytest.raises(UsageError, match=r"policy\.yaml: layer rule 1: bits must be one of"):
        load_policy(path)
