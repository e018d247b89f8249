"""The benchmark runner end to end on the bundled Fashion-MNIST CNN, small enough for the default suite.

One setting (W8A8) and three rows (FP32, onnxbc's default, ONNX Runtime quantize_static), each compression and
evaluation in its own worker process as in the full benchmark; the cache and results go to a temporary folder.
The full matrix is ``python -m benchmarks run`` (benchmarks/README.md); this test only keeps its code alive.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from benchmarks import render, runner
from benchmarks.methods import METHODS

METHODS_RUN = ("fp32", "onnxbc_independent", "ort_static")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    config = runner.RunConfig(
        name="smoke",
        models=("fashion",),
        settings=("w8a8",),
        methods=METHODS_RUN,
        cache=root / "cache",
        results_dir=root / "results",
        timeout_s=300,
        latency_runs=2,
        command="pytest tests/test_benchmarks_smoke.py",
    )
    runner.run(config, log=lambda line: None)
    return config, json.loads(config.results_path.read_text())


def test_rows_and_metrics(smoke):
    config, results = smoke
    rows = {r["method"]: r for r in results["rows"]}
    assert set(rows) == set(METHODS_RUN)
    assert all(r["status"] == "ok" for r in rows.values()), [(r["method"], r.get("reason")) for r in rows.values()]
    fp32, bc, ort = rows["fp32"], rows["onnxbc_independent"], rows["ort_static"]
    assert fp32["metrics_exact"]["top1"] == pytest.approx(0.91)  # models/README.md
    assert fp32["rel_mse"] == 0.0
    # onnxbc's W8A8 keeps the CNN's accuracy when the graph is computed exactly (README: 91.0 %)
    assert bc["metrics_exact"]["top1"] >= 0.90
    assert 0 < bc["rel_mse"] < 1e-3
    assert 0 < ort["rel_mse"] < 1e-2
    for row in (bc, ort):
        assert 0 <= row["metrics_default"]["top1"] <= 1
        assert row["size_bytes"] < 0.3 * fp32["size_bytes"]  # int8 weights: about 4x smaller
        assert row["compress"]["process_s"] >= row["compress"]["call_s"] > 0
        assert row["compress"]["peak_rss_mb"] > 50  # a Python process with onnxruntime loaded
        assert row["latency_ms"] > 0
    assert bc["ratios"]["baseline"] == "ort_static"
    assert ort["ratios"]["time_vs_baseline"] == 1.0
    assert bc["info"]["passes_over_data"] == 2  # design.md: at most 2 passes in the default mode
    assert results["machine"]["cores"] >= 1 and "onnxbc" in results["packages"]
    assert not (config.results_dir / "tmp" / "smoke").exists()  # quantized models are not left behind


def test_render_tables(smoke, tmp_path):
    config, _ = smoke
    readme = tmp_path / "README.md"
    readme.write_text(f"# bench\n\n{render.BEGIN}\nold\n{render.END}\nkept\n")
    render.render(config.results_dir, readme, [config.results_path])
    text = readme.read_text()
    assert "\nold\n" not in text and text.endswith("kept\n")
    assert "| w8a8 | `onnxbc_independent` |" in text and "| w8a8 | `ort_static` |" in text


@pytest.mark.skipif(importlib.util.find_spec("nncf") is not None, reason="nncf is installed here")
def test_missing_tool_is_skipped_with_a_note(tmp_path):
    row = runner.compress("fashion", "w8a8", "nncf", tmp_path / "cell", cache=tmp_path, timeout_s=60)
    assert row["status"] == "skipped" and "nncf" in row["reason"]
    assert METHODS["nncf"].missing_package() == "nncf"


def test_later_runs_replace_rows_unless_they_did_not_run():
    def result(created, rows):
        config = {"latency_batch": {"m": 1}}
        return {"kind": "matrix", "created": created, "models": {"m": {}}, "config": config, "rows": rows}

    def row(method, status, value):
        return {"model": "m", "setting": "w8a8", "method": method, "status": status, "rel_mse": value}

    first = result("1", [row("a", "ok", 1.0), row("b", "ok", 1.0), row("c", "skipped", None)])
    second = result("2", [row("a", "ok", 2.0), row("b", "skipped", None), row("c", "ok", 2.0)])
    merged = {r["method"]: r["rel_mse"] for r in render.merged_matrix([first, second])["rows"]}
    assert merged == {"a": 2.0, "b": 1.0, "c": 2.0}


def test_merged_models_follow_the_zoo_order_not_the_file_order():
    def result(created, models):
        batches = {m: 1 for m in models}
        return {
            "kind": "matrix",
            "created": created,
            "models": {m: {} for m in models},
            "config": {"latency_batch": batches},
            "rows": [],
        }

    merged = render.merged_matrix([result("1", ["smollm2"]), result("2", ["ppocr_rec", "fashion", "chargpt"])])
    assert list(merged["models"]) == ["fashion", "chargpt", "ppocr_rec", "smollm2"]


def test_quantize_static_calibrates_large_models_one_sample_at_a_time(smoke, tmp_path, monkeypatch):
    from benchmarks.settings import SETTINGS
    from benchmarks.tools import ort
    from benchmarks.zoo import MODELS

    config, results = smoke
    bench = MODELS["fashion"].prepare(config.cache)
    monkeypatch.setattr(ort, "LARGE_MODEL_BYTES", 0)  # the CNN counts as large
    result = ort.quantize(bench, SETTINGS["w8a8"], tmp_path / "out.onnx")
    assert result.info["calibration_batch"] == 1
    assert any("batches of 1 sample" in note for note in result.notes)
    # the ranges are min-max over the same samples, so the model is the one the smoke run measured
    rows = {r["method"]: r for r in results["rows"]}
    assert result.path.stat().st_size == rows["ort_static"]["size_bytes"]


def test_nncf_rows_retry_on_the_pre_processed_graph(smoke, tmp_path):
    from pathlib import Path

    from benchmarks.tools import nncf_tool
    from benchmarks.zoo import MODELS

    config, _ = smoke
    bench = MODELS["fashion"].prepare(config.cache)
    seen: list[Path] = []

    def fails_on_the_export(path):
        seen.append(Path(path))
        if len(seen) == 1:
            raise AttributeError("'NoneType' object has no attribute 'shape'")
        return "quantized"

    notes: list[str] = []
    assert nncf_tool._folded_if_needed(fails_on_the_export, bench, tmp_path / "out.onnx", notes) == "quantized"
    assert seen[0] == bench.onnx_path and seen[1] != bench.onnx_path and seen[1].is_file()
    assert "AttributeError" in notes[0] and "quant_pre_process" in notes[0]

    def always_fails(path):
        raise ValueError("not the graph's fault")

    with pytest.raises(ValueError, match="not the graph"):
        nncf_tool._folded_if_needed(always_fails, bench, tmp_path / "again.onnx", [])


def test_latency_tier_on_the_cnn(smoke, tmp_path):
    """``python -m benchmarks.latency`` end to end on the bundled CNN (one round of batches of 16, a few seconds)."""
    from benchmarks import latency

    config, _ = smoke
    out, markdown = tmp_path / "latency.json", tmp_path / "LATENCY.md"
    markdown.write_text(f"# kept\n\n{latency.BEGIN}\nold\n{latency.END}\n")
    argv = ["--models", "fashion", "--batch-size", "16", "--rounds", "1", "--warmup", "1", "--cache", str(config.cache)]
    assert latency.main([*argv, "--work", str(tmp_path / "work"), "--out", str(out), "--markdown", str(markdown)]) == 0
    entry = json.loads(out.read_text())["models"]["fashion"]
    fp32, bc, ort = entry["fp32"], entry["onnxbc"], entry["ort_static"]
    assert bc["status"] == ort["status"] == "ok", (bc.get("reason"), ort.get("reason"))
    assert (
        entry["bench"]["command"].startswith("onnxbc bench ") and entry["bench"]["report"]["data"]["batch_size"] == 16
    )
    assert [m["model"] for m in entry["bench"]["report"]["models"]] == [fp32["path"], bc["path"], ort["path"]]
    assert fp32["latency"]["ratio"] == 1.0 and bc["latency"]["median_ms"] > 0 and ort["latency"]["median_ms"] > 0
    assert fp32["rel_mse_exact"] == 0.0
    assert 0 < bc["rel_mse_exact"] < 1e-3 and 0 < ort["rel_mse_exact"] < 1e-2  # as the matrix's smoke rows
    assert sum(bc["fusion"]["layers"].values()) == 4  # two Conv, two Gemm
    assert bc["heldout_rel_mse"] > 0 and bc["command"].startswith("onnxbc compress ")
    assert ort["defaults"]["per_channel"] == "False" and "QDQ" in ort["defaults"]["quant_format"]
    # at batch 16 the CNN runs well under 5 ms: the speed bar does not apply
    assert fp32["latency"]["min_ms"] < latency.MIN_FP32_MS and entry["bar"]["applies"] is False
    text = markdown.read_text()
    assert text.startswith("# kept\n") and "\nold\n" not in text and "| fashion | 16 |" in text


def test_latency_reads_held_out_errors_of_old_and_new_reports():
    from benchmarks.latency import held_out_error

    assert held_out_error({"output_rel_mse": 1.0, "output_rel_mse_without": 2.0}) == 1.0
    old = {"applied": True, "chosen": "minmax", "alternatives": {"minmax": 3.0}, "output_rel_mse_with": 4.0}
    assert held_out_error(old) == 3.0
    assert held_out_error({"applied": True, "output_rel_mse_with": 4.0, "output_rel_mse_without": 5.0}) == 4.0
    assert held_out_error({"applied": False, "output_rel_mse_with": 4.0, "output_rel_mse_without": 5.0}) == 5.0
