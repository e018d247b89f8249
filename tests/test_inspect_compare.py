"""onnxbc inspect (reports and QDQ models, the optional plot) and onnxbc compare (output agreement)."""

import builtins
import json

import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

import onnxbc
from onnxbc import compare, inspection
from onnxbc.cli import app
from onnxbc.compare import OutputAgreement, compare_models
from onnxbc.errors import UsageError
from onnxbc.options import ActivationType, CompressOptions, DataOptions, Device, ErrorMetric, WeightType


def onnxbc_cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def compressed(zoo, tmp_path):
    """The zoo's attention block, W8A8 with --quantize-attention (weighted and activation x activation MatMuls)
    with its report."""
    path, data, _ = zoo("attention")
    options = CompressOptions(quantize_attention=True)
    return (
        path,
        data,
        onnxbc.compress(path, tmp_path / "attention.int8.onnx", data=DataOptions(path=data), options=options),
    )


def test_inspect_report(compressed):
    _, _, result = compressed
    report = json.loads(result.report_path.read_text())
    found = inspection.inspect(result.report_path)
    assert [r.name for r in found.rows] == [layer["name"] for layer in report["layers"]]
    assert found.error_split == "holdout"
    weighted = [r for r in found.rows if r.bits is not None]
    assert weighted and all(r.bits == 8 and r.weight == "int8 channel" for r in weighted)
    methods = {layer["name"]: layer["weight"]["scale_method"] for layer in report["layers"] if layer.get("weight")}
    assert all(r.scale_method == methods[r.name] in ("mse (input-weighted)", "minmax") for r in weighted)
    scores = next(r for r in found.rows if r.weight == "-")  # the Q x K^T MatMul: no weight
    # --target onnxruntime writes int8 activations as uint8 codes (zero point 128 for signed tensors)
    assert scores.inputs == ("uint8", "uint8") and scores.error_before > 0
    applied = report["compensation"]["applied"]
    for r, layer in zip(found.rows, report["layers"]):
        assert r.error_before == layer["error"]["holdout"]["rel_mse_before"]
        assert (r.bias_delta is not None) == (applied and bool(layer["bias"]) and layer["bias"]["applied"])
    assert found.totals["layers"] == f"{len(found.rows)} quantized, 0 left float"
    r = onnxbc_cli("inspect", result.report_path)
    assert r.exit_code == 0 and "rel. error before → after (holdout)" in r.stdout and "bias compensation:" in r.stdout


@pytest.mark.parametrize(
    "options, weight, bits, inputs",
    [
        (CompressOptions(), "int8 channel axis", 8, ("uint8",)),
        (CompressOptions(reduce_range=True), "int8 channel axis", 7, ("uint8",)),
        (
            CompressOptions(weights=WeightType.INT4, block_size=16, activations=ActivationType.NONE),
            "int4 block16 axis",
            4,
            ("float",),
        ),
        (CompressOptions(weights=WeightType.INT3, activations=ActivationType.NONE), "int4 channel axis", 3, ("float",)),
    ],
    ids=["w8a8", "w7a8", "w4-block16", "w3"],
)
def test_inspect_model_reads_the_qdq_graph(zoo, tmp_path, options, weight, bits, inputs):
    """The bundled conv stack: a Conv reading the ReLU output of another (non-negative: uint8 for ORT)."""
    path, data, _ = zoo("conv")
    out = onnxbc.compress(path, tmp_path / "q.onnx", data=DataOptions(path=data), options=options).output
    rows = inspection.inspect(out).rows
    assert [r.op for r in rows] == ["Conv", "Conv"]
    assert all(r.weight.startswith(weight) and r.bits == bits for r in rows), rows
    assert rows[1].inputs == inputs
    assert [r.bits for r in inspection.inspect(path).rows] == [None, None]  # the float model


def test_inspect_model_traces_weights_through_transpose(zoo, tmp_path):
    path, data, _ = zoo("tied_embedding")
    out = onnxbc.compress(path, tmp_path / "q.onnx", data=DataOptions(path=data)).output
    found = inspection.inspect(out)
    head = next(r for r in found.rows if r.op == "MatMul")  # reads the table through a Transpose
    assert head.bits == 8 and head.weight.startswith("int8 channel") and head.inputs in (("int8",), ("uint8",))
    r = onnxbc_cli("inspect", out)
    assert r.exit_code == 0 and "quantized weights:" in r.stdout


def test_inspect_errors(tmp_path):
    (tmp_path / "other.json").write_text('{"schema": "something/1"}')
    (tmp_path / "broken.json").write_text("{")
    for name, text in [("other.json", "not an onnxbc report"), ("broken.json", "not a readable JSON report")]:
        with pytest.raises(UsageError, match=text):
            inspection.inspect(tmp_path / name)
    r = onnxbc_cli("inspect", tmp_path / "missing.json")
    assert r.exit_code == 2 and "no such file" in r.stderr


def test_plot_draws_a_png(compressed, tmp_path):
    pytest.importorskip("matplotlib")
    _, _, result = compressed
    png = tmp_path / "layers.png"
    r = onnxbc_cli("inspect", result.report_path, "--plot", png)
    assert r.exit_code == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    inspection.plot(inspection.inspect(result.output), tmp_path / "model.png")  # bits only: no errors in a model
    assert (tmp_path / "model.png").stat().st_size > 5_000


def test_plot_without_matplotlib_is_a_clear_error(compressed, tmp_path, monkeypatch):
    _, _, result = compressed
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    r = onnxbc_cli("inspect", result.report_path, "--plot", tmp_path / "x.png")
    assert r.exit_code == 2 and "--plot needs matplotlib: pip install 'onnxbc[plot]'" in r.stderr
    assert not (tmp_path / "x.png").exists()


# ------------------------------------------------------------------------------------------------------------
# compare


def test_output_agreement_against_hand_computed_values():
    ref = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 1.0]], np.float32)
    test = np.array([[1.0, 2.0, 2.0], [0.0, 0.5, 1.0]], np.float32)
    a = OutputAgreement("y")
    a.update(ref[:1], test[:1])  # in two batches: only sums are kept
    a.update(ref[1:], test[1:])
    cosines = [(1 + 4 + 6) / (np.sqrt(14) * 3), (-0.5 + 1) / (np.sqrt(2) * np.sqrt(1.25))]
    assert a.error(ErrorMetric.REL_MSE) == pytest.approx((1 + 2.25) / (14 + 2))
    assert a.error(ErrorMetric.COSINE) == pytest.approx(1 - np.mean(cosines))
    assert a.error(ErrorMetric.MAX_ABS) == 1.5
    assert a.as_dict()["top1_agreement"] == 0.5  # argmax 2 vs 1 (the first of two maxima), then 2 vs 2


def test_output_agreement_in_blocks_of_a_row(monkeypatch):
    """Rows longer than a block are summed block by block: every number as in one block."""
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((3, 5, 7)).astype(np.float32)
    test = ref + 0.1 * rng.standard_normal(ref.shape).astype(np.float32)
    whole = OutputAgreement("y")
    whole.update(ref, test)
    monkeypatch.setattr(compare, "BLOCK_VALUES", 4)  # a column of the 3 rows at a time
    blocks = OutputAgreement("y")
    blocks.update(ref, test)
    assert blocks.as_dict() == pytest.approx(whole.as_dict(), rel=1e-12)
    np.testing.assert_allclose(blocks.row_err2, whole.row_err2, rtol=1e-12)
    np.testing.assert_allclose(blocks.row_err2, np.square(ref.astype(np.float64) - test).sum(axis=(1, 2)), rtol=1e-9)


def test_a_reference_runs_batches_in_parts_of_most_samples():
    """``Reference(most=2)`` runs a batch of 5 as 2 + 2 + 1 in both sessions: the same numbers as whole."""
    from onnx import TensorProto, helper

    from onnxbc.compare import Reference

    def session(k):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
        scale = helper.make_tensor("k", TensorProto.FLOAT, [], [k])
        graph = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"])], "g", [x], [y], [scale])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    def counted(k, calls):
        made = session(k)
        real = made.run
        made.run = lambda names, feeds: calls.append(len(feeds["x"])) or real(names, feeds)
        return made

    batches = [{"x": np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)}]
    whole = Reference(session(1.0), lambda: batches).compare(session(1.1))
    calls, float_calls = [], []
    parts = Reference(counted(1.0, float_calls), lambda: batches, most=2).compare(counted(1.1, calls))
    assert calls == float_calls == [2, 2, 1]
    assert parts["y"].as_dict() == pytest.approx(whole["y"].as_dict(), rel=1e-12)
    assert parts["y"].rows == 5


def test_a_stashed_reference_keeps_one_file_per_run_and_reads_back_the_same():
    """With ``remake`` and nothing kept in memory, the float outputs are stashed run by run (never a whole batch
    joined: an LM's logits on a batch take GBs), and a later pass against them gives the same numbers."""
    from onnx import TensorProto, helper

    from onnxbc.compare import Reference

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    graph = helper.make_graph([helper.make_node("Sin", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
    rng = np.random.default_rng(1)
    batches = [{"x": rng.standard_normal((n, 3)).astype(np.float32)} for n in (5, 2)]
    make = lambda: ort.InferenceSession(model, providers=["CPUExecutionProvider"])  # noqa: E731
    reference = Reference(make(), lambda: batches, 0, most=2, remake=make)
    advanced = []
    reference.store(lambda: advanced.append(1))
    assert reference.kept and reference.calls == 4 and len(advanced) == 2  # 2 + 2 + 1, then 2; per batch
    assert sorted(len(np.load(f)) for f in reference._stash._folder.iterdir()) == [1, 2, 2, 2]
    stored = reference.compare(make())
    assert reference.calls == 4 and stored["y"].err2 == 0 and stored["y"].rows == 7
    assert [ends for ends, _, _ in reference.runs()] == [False, False, True, True]
    folder = reference._stash._folder
    reference.close()
    assert not folder.exists()


def test_compare_models_matches_onnxruntime(compressed):
    path, data, result = compressed
    comparison = compare_models(path, result.output, DataOptions(data, holdout_fraction=0.0), exact=True)
    assert set(comparison.sessions) == {"default", "exact"} and comparison.device in ("cpu", "cuda")
    feeds = dict(np.load(data))
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    out = ort.InferenceSession(str(result.output), options, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    exact = next(iter(comparison.sessions["exact"].values())).as_dict()
    expected = np.sum((ref.astype(np.float64) - out) ** 2) / np.sum(ref.astype(np.float64) ** 2)
    assert exact["rel_mse"] == pytest.approx(expected, rel=1e-4)
    assert exact["max_abs_error"] == pytest.approx(np.abs(ref - out).max(), rel=1e-4)
    same = compare_models(path, path, DataOptions(data, holdout_fraction=0.0), device=Device.CPU)
    agreement = next(iter(same.sessions["default"].values())).as_dict()
    assert agreement["rel_mse"] == 0 and agreement["cosine"] == pytest.approx(1) and agreement["top1_agreement"] == 1


def test_compare_cli(compressed, zoo):
    path, data, result = compressed
    r = onnxbc_cli("compare", path, result.output, "--data", data, "--exact", "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    assert "ONNX Runtime default session" in r.stdout and "exact (QDQ fusions off)" in r.stdout
    assert r.stdout.count("top-1 agreement") == 2
    assert "exact" not in onnxbc_cli("compare", path, result.output, "--data", data).stdout
    other, _, _ = zoo("conv")
    r = onnxbc_cli("compare", path, other, "--data", data)
    assert r.exit_code == 2 and "take different inputs" in r.stderr
    assert onnxbc_cli("compare", path, result.output).exit_code == 2  # --data is required
