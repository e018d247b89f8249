"""Per-weight precision in ``compress``: budgets, prices against measured errors, policies, GPTQ, schemes,
activation types and int32 biases, end to end on the bundled model and the test graphs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

import onnxbc
from onnxbc.cli import app
from onnxbc.errors import UsageError
from onnxbc.options import ActivationType, CompressOptions, DataOptions, RangeMethod, Rounding, WeightType

ROOT = Path(__file__).resolve().parents[1]
FASHION = ROOT / "models" / "fashion_cnn.onnx"
FASHION_DATA = ROOT / "models" / "data" / "fashion_calib.npz"
WEIGHT_ONLY = {"activations": ActivationType.NONE}


def run(model, out: Path, data: Path, samples: int = 64, **options):
    return onnxbc.compress(
        model, out, data=DataOptions(Path(data), samples=samples), options=CompressOptions(**options), force=True
    ).report


def weight_bits(report) -> dict[str, tuple[int, int]]:
    """weight name -> (bits, params) of every quantized weight."""
    return {r.weight["name"]: (r.weight["bits"], r.weight["params"]) for r in report.layers if r.weight}


def average_bits(report) -> float:
    bits = weight_bits(report).values()
    return sum(b * p for b, p in bits) / sum(p for _, p in bits)


def run_ort(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("avg_bits", [2.5, 4.5, 6.0])
def test_avg_bits_budget_is_never_exceeded(tmp_path, avg_bits):
    rep = run(FASHION, tmp_path / "m.onnx", FASHION_DATA, avg_bits=avg_bits, **WEIGHT_ONLY)
    assert average_bits(rep) <= avg_bits
    assert rep.precision["chosen"]["avg_bits"] == pytest.approx(average_bits(rep))
    curve = rep.precision["curve"]
    assert [p["cost"] for p in curve] == sorted(p["cost"] for p in curve)  # cheapest first
    assert curve[0]["error"] >= curve[-1]["error"]
    assert len({b for b, _ in weight_bits(rep).values()}) >= 1


def test_more_bits_buy_less_priced_error(tmp_path):
    low = run(FASHION, tmp_path / "a.onnx", FASHION_DATA, avg_bits=3.0, **WEIGHT_ONLY)
    high = run(FASHION, tmp_path / "b.onnx", FASHION_DATA, avg_bits=6.0, **WEIGHT_ONLY)
    assert high.precision["chosen"]["error"] < low.precision["chosen"]["error"]
    assert (
        high.outputs["without_compensation"]["logits"]["rel_mse"]
        < low.outputs["without_compensation"]["logits"]["rel_mse"]
    )


def test_max_size_budget_bounds_the_written_file(tmp_path):
    out = tmp_path / "m.onnx"
    budget = int(FASHION.stat().st_size * 0.2)
    rep = run(FASHION, out, FASHION_DATA, max_size=budget, **WEIGHT_ONLY)
    assert out.stat().st_size <= budget
    assert rep.output["bytes"] == out.stat().st_size
    assert rep.precision["budget"]["max_size"] == budget


def test_max_size_of_a_uniform_file_admits_that_file(tmp_path):
    """The bytes outside the weights are measured, not estimated from above: a budget equal to uniform int4's
    own file (compensation biases included) admits int4 everywhere, and the mixed choice fits it too."""
    uniform = run(FASHION, tmp_path / "u.onnx", FASHION_DATA, weights=WeightType.INT4, **WEIGHT_ONLY)
    size = (tmp_path / "u.onnx").stat().st_size
    pinned = run(FASHION, tmp_path / "p.onnx", FASHION_DATA, max_size=size, candidates=(4,), **WEIGHT_ONLY)
    assert {b for b, _ in weight_bits(pinned).values()} == {4}
    assert (tmp_path / "p.onnx").stat().st_size <= size
    mixed = run(FASHION, tmp_path / "m.onnx", FASHION_DATA, max_size=size, candidates=(2, 4, 8), **WEIGHT_ONLY)
    assert (tmp_path / "m.onnx").stat().st_size <= size
    assert mixed.precision["budget"]["weights_bytes"] >= sum(
        o["bytes"] for opts in mixed.precision["options"].values() for o in opts if o["bits"] == 4
    )  # all-int4 was within the allocation's budget
    assert uniform.output["bytes"] == size


def test_uniform_alternative_is_the_uniform_model_even_where_smoothing_was_chosen(tmp_path, monkeypatch):
    """Under a budget the held-out check measures every weight at the uniform bits that fit: on the CNN at W4A8,
    where pass 2 smooths the classifier's input for the mixed model, that alternative takes the smoothing back
    and is exactly what --weights int4 writes when a policy gives every layer 4 bits (no weight kept at 8)."""
    monkeypatch.setattr(onnxbc.candidates, "MARGIN", float("inf"))  # measured to the end, though it cannot win
    mixed = run(FASHION, tmp_path / "m.onnx", FASHION_DATA, samples=256, avg_bits=4.5, bias_correction="none")
    assert any(s["chosen"] != "none" for s in mixed.smoothing.values())
    strict = tmp_path / "strict.toml"
    strict.write_text('[[layer]]\npattern = ".*"\nbits = 4\n')
    uniform = run(
        FASHION,
        tmp_path / "u.onnx",
        FASHION_DATA,
        samples=256,
        weights=WeightType.INT4,
        bias_correction="none",
        policy=strict,
    )
    assert mixed.outputs["uniform_int4"]["logits"]["rel_mse"] == pytest.approx(
        uniform.outputs["without_compensation"]["logits"]["rel_mse"], rel=1e-6
    )
    assert mixed.precision["saved"] == "mixed"  # here the mixed bits measure better
    assert mixed.compensation["chosen"] == "without_compensation"


def test_max_size_below_the_smallest_model_is_a_clear_error(tmp_path):
    out = tmp_path / "m.onnx"
    with pytest.raises(UsageError, match="max-size|smallest"):
        run(FASHION, out, FASHION_DATA, max_size=20_000, **WEIGHT_ONLY)
    assert not out.exists()


@pytest.mark.parametrize("compensated", [True, False])
def test_prices_match_the_measured_layer_errors(tmp_path, compensated):
    """Each weight's price at 4 bits against its layer's error measured on held-out data (after the bias
    compensation, or before it): within a factor of 2 per layer, and in the same order."""
    rep = run(
        FASHION,
        tmp_path / "m.onnx",
        FASHION_DATA,
        samples=256,
        avg_bits=4.0,
        candidates=(4,),
        price_compensated=compensated,
        weight_range=RangeMethod.MSE,
        smoothing=False,
        **WEIGHT_ONLY,
    )
    prices = {name: options[0]["layer_error"] for name, options in rep.precision["options"].items()}
    pairs = []
    for layer in rep.layers:
        if layer.weight and layer.error:
            measured = layer.error["holdout"]["rel_mse_after" if compensated else "rel_mse_before"]
            pairs.append((prices[layer.weight["name"]], measured))
    assert len(pairs) == 4
    ratios = [p / m for p, m in pairs]
    assert all(0.5 < r < 2.0 for r in ratios), ratios
    assert np.argsort([p for p, _ in pairs]).tolist() == np.argsort([m for _, m in pairs]).tolist()


def test_policy_pins_bits_skips_layers_and_sets_the_budget(tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text(
        'avg_bits = 5.0\n[[layer]]\nname = "/classifier/classifier.3/Gemm"\nbits = 2\n'
        '[[layer]]\npattern = ".*features.0.*"\nskip = true\n'
    )
    rep = run(FASHION, tmp_path / "m.onnx", FASHION_DATA, policy=policy, **WEIGHT_ONLY)
    records = {r.name: r for r in rep.layers}
    assert records["/classifier/classifier.3/Gemm"].weight["bits"] == 2
    assert records["/features/features.0/Conv"].status == "skipped"
    assert "policy" in records["/features/features.0/Conv"].reason
    assert rep.precision["budget"] == {"avg_bits": 5.0}
    assert average_bits(rep) <= 5.0


def test_policy_rule_matching_nothing_is_a_warning(tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text('[[layer]]\nname = "no such layer"\nbits = 4\n')
    rep = run(FASHION, tmp_path / "m.onnx", FASHION_DATA, policy=policy, **WEIGHT_ONLY)
    assert any("matches no layer" in w for w in rep.warnings)


def test_gptq_lowers_the_output_error_at_3_bits(zoo, tmp_path):
    path, data, graph = zoo("gelu_mlp", samples=64)
    reports = {
        rounding: run(
            path,
            tmp_path / f"{rounding.value}.onnx",
            data,
            weights=WeightType.INT3,
            rounding=rounding,
            bias_correction="none",
            **WEIGHT_ONLY,
        )
        for rounding in Rounding
    }
    errors = {k: next(iter(r.outputs["without_compensation"].values()))["rel_mse"] for k, r in reports.items()}
    assert errors[Rounding.GPTQ] < errors[Rounding.NEAREST]
    assert {r.weight["rounding"] for r in reports[Rounding.GPTQ].layers if r.weight} == {"gptq"}


def test_policy_sets_gptq_rounding_per_layer(tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text('[[layer]]\nname = "/classifier/classifier.1/Gemm"\nrounding = "gptq"\n')
    rep = run(FASHION, tmp_path / "m.onnx", FASHION_DATA, weights=WeightType.INT4, policy=policy)
    rounding = {r.name: r.weight["rounding"] for r in rep.layers if r.weight}
    assert rounding.pop("/classifier/classifier.1/Gemm") == "gptq"
    assert set(rounding.values()) == {"nearest"}


def test_gptq_notes_the_layers_it_cannot_round(tmp_path):
    rep = run(FASHION, tmp_path / "m.onnx", FASHION_DATA, weights=WeightType.INT4, rounding=Rounding.GPTQ)
    records = {r.name: r for r in rep.layers}
    assert records["/classifier/classifier.1/Gemm"].weight["rounding"] == "gptq"
    conv = records["/features/features.0/Conv"]
    assert conv.weight["rounding"] == "nearest"
    assert any("GPTQ" in n for n in conv.notes)


@pytest.mark.parametrize(
    "activations,codes", [(ActivationType.INT4, {"int4", "uint4"}), (ActivationType.INT16, {"int16", "uint16"})]
)
def test_int4_and_int16_activations_run_in_onnxruntime(tmp_path, activations, codes):
    """W4A4 / W4A16. ONNX Runtime's default session cannot load W4A4 on this CNN (its QDQ optimizer moves uint4
    codes into MaxPool): compress says so and saves; the graph runs with the basic optimizations."""
    out = tmp_path / "m.onnx"
    rep = run(FASHION, out, FASHION_DATA, weights=WeightType.INT4, activations=activations)
    assert "onnxruntime_default_session" in rep.outputs or any("default session cannot" in w for w in rep.warnings)
    types = {a["dtype"] for r in rep.layers for a in r.activations}
    assert types and types <= codes
    x = np.load(FASHION_DATA)
    feeds = {"input": x[x.files[0]][:4].astype(np.float32)}
    model = onnx.load(out)
    feeds = {model.graph.input[0].name: feeds["input"]}
    assert np.isfinite(run_ort(out, feeds)[0]).all()
    assert model.opset_import[0].version >= 21


def test_int16_activations_are_more_accurate_than_int4(tmp_path):
    errors = {}
    for act in (ActivationType.INT4, ActivationType.INT8, ActivationType.INT16):
        rep = run(FASHION, tmp_path / f"{act.value}.onnx", FASHION_DATA, activations=act, bias_correction="none")
        errors[act] = rep.outputs["without_compensation"]["logits"]["rel_mse"]
    assert errors[ActivationType.INT16] < errors[ActivationType.INT8] < errors[ActivationType.INT4]


def test_ternary_scheme_writes_restricted_codes(tmp_path):
    out = tmp_path / "m.onnx"
    rep = run(FASHION, out, FASHION_DATA, weights=WeightType.INT2, scheme="ternary", **WEIGHT_ONLY)
    assert {r.weight["scheme"] for r in rep.layers if r.weight} == {"ternary"}
    model = onnx.load(out)
    quantized = [t for t in model.graph.initializer if t.name.endswith("_quantized")]
    assert quantized
    for t in quantized:
        assert set(np.unique(onnx.numpy_helper.to_array(t).astype(np.int8))) <= {-1, 0, 1}


def test_emulated_scheme_needs_emulate_and_is_not_smaller(tmp_path):
    with pytest.raises(UsageError, match="--emulate"):
        run(FASHION, tmp_path / "m.onnx", FASHION_DATA, weights=WeightType.INT2, scheme="mul2q", **WEIGHT_ONLY)
    out = tmp_path / "e.onnx"
    rep = run(FASHION, out, FASHION_DATA, weights=WeightType.INT2, scheme="mul2q", emulate=True, **WEIGHT_ONLY)
    weights = [r.weight for r in rep.layers if r.weight]
    assert all(w["emulated"] and w["stored_bits"] == 32 for w in weights)
    assert out.stat().st_size > 0.9 * FASHION.stat().st_size


def test_auto_scheme_picks_per_layer_by_priced_error(tmp_path):
    rep = run(FASHION, tmp_path / "m.onnx", FASHION_DATA, weights=WeightType.INT3, scheme="auto", **WEIGHT_ONLY)
    schemes = {r.weight["scheme"] for r in rep.layers if r.weight}
    assert schemes <= {"uniform", "affine", "clipped", "pow2", "fixed"}


def test_int32_bias_is_written_and_folded(tmp_path):
    out = tmp_path / "m.onnx"
    rep = run(FASHION, out, FASHION_DATA, int32_bias=True)
    model = onnx.load(out)
    int32 = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT32]
    assert len(int32) == 4  # two Conv B and two Gemm C
    assert all(any("int32" in n for n in r.notes) for r in rep.layers if r.op in ("Conv", "Gemm"))
    assert rep.outputs["with_compensation" if rep.compensation["applied"] else "without_compensation"]


def test_cli_budget_options(tmp_path):
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(
        app,
        [
            "compress",
            str(FASHION),
            "--data",
            str(FASHION_DATA),
            "--samples",
            "48",
            "--activations",
            "none",
            "--max-size",
            f"{FASHION.stat().st_size * 0.25 / 1000:.1f}KB",
            "--candidates",
            "4,8",
            "-o",
            str(out),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.with_name("m.report.json").read_text())
    assert {layer["bits"] for layer in report["precision"]["layers"].values()} <= {4, 8}
    assert out.stat().st_size <= FASHION.stat().st_size * 0.25


@pytest.mark.parametrize(
    "args,message",
    [
        (["--avg-bits", "4", "--max-size", "1MB"], "exclude each other"),
        (["--candidates", "4,5"], "--candidates"),
        (["--avg-bits", "9"], "outside the candidates"),
        (["--max-size", "12 parsecs"], "--max-size must be"),
        (["--scheme", "octal"], "'octal' is not one of"),
        (["--activations", "int4", "--target", "tensorrt"], "TensorRT takes int8 activations"),
        (["--int32-bias", "--activations", "none"], "--int32-bias needs"),
        (["--avg-bits", "4", "--block-candidates", "0,64"], "--block-candidates needs --max-size"),
        (["--max-size", "1MB", "--block-candidates", "0,40"], "multiples of 16"),
        (["--max-size", "1MB", "--block-candidates", "0,x"], "comma-separated integers"),
    ],
)
def test_cli_refuses_bad_precision_options(tmp_path, args, message):
    result = CliRunner().invoke(
        app, ["compress", str(FASHION), "--data", str(FASHION_DATA), "-o", str(tmp_path / "m.onnx"), *args]
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "m.onnx").exists()


def test_block_candidates_buy_finer_scales_within_the_file_budget(tmp_path):
    """Scale blocks as a second dimension of the allocation: at a budget between per-channel int4 and int8, some
    weight takes blocks or 8 bits, the file stays within the budget, and the graph runs in ONNX Runtime."""
    budget = int(FASHION.stat().st_size * 0.17)
    reports, sizes = {}, {}
    for blocks in ((), (0, 64, 32)):
        out = tmp_path / f"m{len(blocks)}.onnx"
        reports[blocks] = run(
            FASHION, out, FASHION_DATA, max_size=budget, candidates=(4, 8), block_candidates=blocks, **WEIGHT_ONLY
        )
        sizes[blocks] = out.stat().st_size
        assert sizes[blocks] <= budget
    rep = reports[(0, 64, 32)]
    layouts = {(r.weight["bits"], r.weight["block_size"]) for r in rep.layers if r.weight}
    assert any(block for _, block in layouts), layouts
    options = rep.precision["options"]["classifier.1.weight"]
    assert {o["block_size"] for o in options} == {0, 64, 32} and {o["bits"] for o in options} == {4, 8}
    assert {o["block_size"] for opts in reports[()].precision["options"].values() for o in opts} == {0}
    # priced at least as well as without blocks: the allocation had every option it had before
    assert rep.precision["chosen"]["error"] <= reports[()].precision["chosen"]["error"] * (1 + 1e-9)
    x = np.load(FASHION_DATA)
    model = onnx.load(tmp_path / "m3.onnx")
    assert np.isfinite(run_ort(tmp_path / "m3.onnx", {model.graph.input[0].name: x[x.files[0]][:2]})[0]).all()


def test_int2_weights_are_packed_at_opset_25(tmp_path):
    sizes = {}
    strict = tmp_path / "strict.toml"  # every weight at 2 bits (none kept at 8)
    strict.write_text('[[layer]]\npattern = ".*"\nbits = 2\n')
    for opset in (21, 25):
        out = tmp_path / f"m{opset}.onnx"
        rep = run(FASHION, out, FASHION_DATA, weights=WeightType.INT2, opset=opset, policy=strict, **WEIGHT_ONLY)
        assert {r.weight["stored_bits"] for r in rep.layers if r.weight} == {4 if opset == 21 else 2}
        x = np.load(FASHION_DATA)
        model = onnx.load(out)
        assert np.isfinite(run_ort(out, {model.graph.input[0].name: x[x.files[0]][:2].astype(np.float32)})[0]).all()
        sizes[opset] = out.stat().st_size
    assert sizes[25] < 0.6 * sizes[21]


@pytest.mark.parametrize(
    "name", ["if_conv", "loop_matmul", "tied_embedding", "transpose_weight", "fp16_conv", "attention"]
)
def test_mixed_precision_with_gptq_on_unusual_graphs(zoo, tmp_path, name):
    """Subgraphs, tied embeddings, weights behind a Transpose, fp16: every weight gets bits within the budget,
    GPTQ rounds what it can and says why not elsewhere, and the output runs."""
    path, data, graph = zoo(name, samples=24)
    out = tmp_path / "m.onnx"
    rep = run(path, out, data, avg_bits=4.5, rounding=Rounding.GPTQ, **WEIGHT_ONLY)
    assert weight_bits(rep) and average_bits(rep) <= 4.5
    for r in rep.layers:
        if r.weight and r.weight["rounding"] == "nearest":
            assert any("GPTQ" in n or "GPTQ" in (r.reason or "") for n in r.notes), (r.name, r.notes)
    onnx.checker.check_model(onnx.load(out))
