"""onnxbc inspect on mixed-precision reports: the priced curve (text line, plot panel, one-bit-width points)
and --policy-out (a TOML policy that reproduces the report's bits when compress reads it back)."""

import copy
import json
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from onnxbc import inspection
from onnxbc.cli import app
from onnxbc.policy import load_policy

ROOT = Path(__file__).resolve().parents[1]
FASHION = ROOT / "models" / "fashion_cnn.onnx"
CALIB = ROOT / "models" / "data" / "fashion_calib.npz"
AVG_BITS = 4.5


def onnxbc_cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def compress(out: Path, *args) -> dict:
    """Weight-only compress of the bundled Fashion CNN on 32 samples; returns the report."""
    r = onnxbc_cli(
        "compress", FASHION, "--data", CALIB, "--samples", 32, "--activations", "none", "-q", "-o", out, *args
    )
    assert r.exit_code == 0, r.stderr
    return json.loads(out.with_name(out.stem + ".report.json").read_text())


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> tuple[Path, dict]:
    """A real mixed-precision report (--avg-bits), and its path."""
    out = tmp_path_factory.mktemp("mixed") / "mixed.onnx"
    report = compress(out, "--avg-bits", AVG_BITS)
    return out.with_name("mixed.report.json"), report


def by_weight(report: dict) -> dict[str, int]:
    return {layer["weight"]["name"]: layer["weight"]["bits"] for layer in report["layers"] if layer.get("weight")}


def test_the_fixture_is_really_mixed(mixed):
    _, report = mixed
    assert len(set(by_weight(report).values())) > 1, by_weight(report)  # else the tests below prove little
    assert report["precision"]["curve"][0]["unit"] == "bits"


def test_tradeoff_points_agree_with_the_allocation(mixed):
    path, report = mixed
    precision = report["precision"]
    t = inspection.inspect(path).tradeoff
    assert t is not None and t.unit == "bits" and t.budget == AVG_BITS and t.method == precision["method"]
    assert t.chosen == (precision["chosen"]["avg_bits"], precision["chosen"]["error"]) and t.chosen[0] <= AVG_BITS
    assert len(t.curve) == len(precision["curve"])
    xs, errors = zip(*t.curve)
    assert list(xs) == sorted(xs) and list(errors) == sorted(errors, reverse=True)  # cost up, error down
    assert set(t.uniform) == set(precision["candidates"]) and t.held == {}
    for bits, (x, error) in t.uniform.items():
        assert x == pytest.approx(bits)  # every weight at `bits`: that many bits on average
        assert error == pytest.approx(
            sum(o["error"] for opts in precision["options"].values() for o in opts if o["bits"] == bits)
        )
    # the sweep starts with every weight at its fewest bits and ends with every weight at its least error (8)
    assert t.uniform[2] == pytest.approx(t.curve[0]) and t.uniform[8] == pytest.approx(t.curve[-1])
    for x, error in t.uniform.values():  # a one-width choice within the budget is never better
        if x <= AVG_BITS:
            assert t.chosen[1] <= error * (1 + 1e-9)


def test_tradeoff_holds_weights_without_the_width_at_their_chosen_option(mixed):
    """A weight a policy pins (options at one width only) stays at its choice in the one-width points."""
    _, report = mixed
    report = copy.deepcopy(report)
    name, params = next((w["name"], w["params"]) for w in (layer["weight"] for layer in report["layers"]) if w)
    bits = report["precision"]["layers"][name]["bits"]
    report["precision"]["options"][name] = [o for o in report["precision"]["options"][name] if o["bits"] == bits]
    total = sum(w["params"] for w in (layer["weight"] for layer in report["layers"]) if w)
    t = inspection.tradeoff(report)
    for b in (c for c in report["precision"]["candidates"] if c != bits):
        assert t.held[b] == 1
        assert t.uniform[b][0] == pytest.approx((b * (total - params) + bits * params) / total)
    assert bits not in t.held


def test_inspect_prints_the_budget_and_the_choice(mixed):
    path, report = mixed
    r = onnxbc_cli("inspect", path)
    assert r.exit_code == 0, r.stderr
    chosen = report["precision"]["chosen"]
    line = next(line for line in r.stdout.splitlines() if line.startswith("mixed precision:"))
    assert f"budget {AVG_BITS:g} average bits" in line and f"chosen {chosen['avg_bits']:.2f} average bits" in line
    assert f"{chosen['weights_bytes']:,} weight bytes" in line and report["precision"]["method"] in line
    assert "mixed precision:" not in onnxbc_cli("inspect", path.with_name("mixed.onnx")).stdout  # a model: no prices


@pytest.mark.parametrize(
    "changes, cell",
    [
        ({}, "int4 channel"),
        ({"scheme": "affine"}, "uint4 channel affine"),
        ({"rounding": "gptq"}, "int4 channel gptq"),
        ({"scheme": "mul2q", "emulated": True, "stored_bits": 32}, "float32 channel mul2q (emulated)"),
    ],
    ids=["uniform", "affine", "gptq", "emulated"],
)
def test_weight_cell_names_scheme_rounding_and_emulation(mixed, tmp_path, changes, cell):
    _, report = mixed
    report = copy.deepcopy(report)
    layer = next(layer for layer in report["layers"] if layer.get("weight"))
    layer["weight"].update({"stored_bits": 4, "granularity": "channel", "scheme": "uniform", "rounding": "nearest"})
    layer["weight"].update(changes)
    path = tmp_path / "edited.report.json"
    path.write_text(json.dumps(report))
    assert inspection.inspect(path).rows[0].weight == cell


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_plot_adds_the_curve_panel(mixed, tmp_path):
    pytest.importorskip("matplotlib")  # without it: the clear error tested in test_inspect_compare.py
    path, report = mixed
    r = onnxbc_cli("inspect", path, "--plot", tmp_path / "mixed.png")
    assert r.exit_code == 0, r.stderr
    assert f"Wrote {tmp_path / 'mixed.png'}" in r.stdout
    plain = copy.deepcopy(report)
    plain["precision"] = {"layers": report["precision"]["layers"]}  # as without a budget
    (tmp_path / "plain.report.json").write_text(json.dumps(plain))
    assert inspection.inspect(tmp_path / "plain.report.json").tradeoff is None
    inspection.plot(inspection.inspect(tmp_path / "plain.report.json"), tmp_path / "plain.png")
    (width, height), (plain_width, plain_height) = png_size(tmp_path / "mixed.png"), png_size(tmp_path / "plain.png")
    assert width == plain_width and height > plain_height * 1.3  # one more panel, below the per-layer ones


def test_policy_out_reproduces_the_bits(mixed, tmp_path):
    path, report = mixed
    policy = tmp_path / "mixed.toml"
    r = onnxbc_cli("inspect", path, "--policy-out", policy)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip().endswith(f"Wrote {policy}")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left
    loaded = load_policy(policy)
    assert loaded.avg_bits is None and loaded.max_size is None  # the choices, not the budget
    overrides, warnings = loaded.resolve(layer["name"] for layer in report["layers"])
    assert warnings == []
    for layer in report["layers"]:
        weight = layer["weight"]
        assert (overrides[layer["name"]].bits, overrides[layer["name"]].scheme) == (weight["bits"], weight["scheme"])
    again = compress(tmp_path / "again.onnx", "--policy", policy)  # no budget: the policy alone sets the bits
    assert "curve" not in again["precision"]
    assert by_weight(again) == by_weight(report)
    assert {k: v["bits"] for k, v in again["precision"]["layers"].items()} == {
        k: v["bits"] for k, v in report["precision"]["layers"].items()
    }


def test_policy_out_refuses_to_overwrite_without_force(mixed, tmp_path):
    path, _ = mixed
    policy = tmp_path / "p.toml"
    policy.write_text("# mine\n")
    r = onnxbc_cli("inspect", path, "--policy-out", policy)
    assert r.exit_code == 2 and f"{policy}: already exists; pass --force to overwrite it" in r.stderr
    assert policy.read_text() == "# mine\n" and "layer" not in r.stdout  # refused before any work
    r = onnxbc_cli("inspect", path, "--policy-out", policy, "--force")
    assert r.exit_code == 0, r.stderr
    assert "[[layer]]" in policy.read_text()
    load_policy(policy)


@pytest.mark.parametrize(
    "source, target, message",
    [
        ("mixed.onnx", "p.toml", "--policy-out reads a compress report (.json), not a model"),
        ("mixed.report.json", "p.yaml", "the policy is written as TOML; name it .toml"),
        ("mixed.report.json", "missing/p.toml", "does not exist"),
    ],
    ids=["model-input", "yaml-name", "missing-folder"],
)
def test_policy_out_refusals(mixed, tmp_path, source, target, message):
    path, _ = mixed
    r = onnxbc_cli("inspect", path.with_name(source), "--policy-out", tmp_path / target)
    assert r.exit_code == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / target).exists()


def test_policy_out_never_overwrites_the_report(mixed):
    path, _ = mixed
    before = path.read_text()
    r = onnxbc_cli("inspect", path, "--policy-out", path, "--force")
    assert r.exit_code == 2 and "is the report itself" in r.stderr and path.read_text() == before
