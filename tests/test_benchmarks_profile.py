"""The compress profile (``python -m benchmarks.profile``, benchmarks/PROFILE.md) end to end on the bundled CNN.

It reaches into the pipeline's private stages, so this keeps it honest when they change: the probes it builds
per kind must be the ones compress builds (same counts, same graph outputs), and its timings must add up.
"""

from __future__ import annotations

import json

import pytest

from benchmarks import profile


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    root = tmp_path_factory.mktemp("profile")
    results, markdown = root / "profile.json", root / "PROFILE.md"
    argv = ["--models", "fashion", "--repeats", "1", "--cache", str(root / "cache")]
    assert profile.main([*argv, "--results", str(results), "--markdown", str(markdown)]) == 0
    return json.loads(results.read_text()), markdown.read_text(), root / "cache"


def test_compress_is_run_as_the_benchmark_runs_it(profiled):
    results = profiled[0]
    fashion = results["models"]["fashion"]
    c = fashion["compress"]
    assert {"ranges", "layer_errors", "verify", "save"} <= set(c["timings_s"])
    assert c["process_s"] > c["call_s"] >= sum(c["timings_s"].values()) > 0
    assert c["peak_rss_mb"] > 50  # a Python process with onnxruntime loaded
    assert len(c["runs"]) == 1 and fashion["repeats"] == 1
    assert results["source"]["commit"] and results["machine"]["nproc"] >= 1


def test_unit_covers_every_calibration_batch(profiled):
    fashion = profiled[0]["models"]["fashion"]
    u, batches = fashion["unit"], fashion["batches"]
    assert fashion["samples"] == {"fit": 205, "holdout": 51, "batch_size": 16}  # 256 samples, 20 % held out
    assert (u["fit_runs"], u["holdout_runs"]) == (batches["fit"], batches["holdout"]) == (13, 4)
    assert u["all_s"] == pytest.approx(u["fit_s"] + u["holdout_s"]) and u["all_s"] > 0


def test_probe_kinds_are_the_ones_compress_builds(profiled):
    fashion = profiled[0]["models"]["fashion"]
    kinds = {k["kind"]: k for k in fashion["kinds"]}
    # the CNN: Conv-Relu, Conv-Relu, Gemm-Relu, Gemm; every input is smoothable
    assert (fashion["layers"], fashion["activations"], fashion["smoothable"]) == (4, 4, 4)
    plain = kinds["ranges, no channel histograms: every layer input"]
    per_channel = kinds["ranges with channel histograms: the smoothable inputs"]
    outputs = kinds["ranges of the placement's own sites"]
    assert plain["probes"] == plain["graph_outputs"] == 4
    assert fashion["pass1"]["graph_outputs"] == 4 + outputs.get("graph_outputs", 0)
    assert plain["channel_histogram_s"] == 0 < per_channel["channel_histogram_s"]
    # pass 1 fetches what its range probes fetch
    assert fashion["pass1"]["fetched_mb"] == pytest.approx(plain["fetched_mb"] + outputs.get("fetched_mb", 0))
    shadows = kinds["layer-error shadows of the plan"]
    # 4 outputs per layer (sums of d, d^2, y^2 and the size), 4 more after each of the 3 ReLUs; on the fit samples
    # (a session of their own) the last Gemm, which no activation follows, gives its input's row sums (float and
    # quantized) and rows alone
    whole = 4 * 4 + 3 * 4
    assert shadows["probes"] == 4 and shadows["sessions"] == 2 and shadows["graph_outputs"] == whole - 4 + 3 + whole
    assert fashion["pass2"]["sessions"] == 2
    trials = [k for name, k in kinds.items() if name.startswith("variant trials")]
    pass2_outputs = shadows["graph_outputs"] + sum(k.get("graph_outputs", 0) for k in trials)
    # in one graph the probes of a layer share the float output's sums of y^2 (one, or two after a ReLU; the Gemm's
    # on the fit samples share its float input's sums and rows), which each kind alone computes once per layer:
    # each trial kind here measures each of the 4 layers, in each of the two sessions
    shared = 2 * 4 * sum(1 for k in trials if k["probes"])
    # and a min-max trial whose scales the search chose too is its layer's shadow there, measured once
    reused = kinds["variant trials: min-max weight scales"]["graph_outputs"]
    assert pass2_outputs - 2 * shared - reused <= fashion["pass2"]["graph_outputs"] <= pass2_outputs - shared
    assert kinds["variant trials: uniform bits"]["probes"] == 0  # no size budget
    assert "not in the default run" in kinds["moments (GPTQ)"]["note"]


def test_breakdowns_add_up(profiled):
    fashion = profiled[0]["models"]["fashion"]
    for row in [fashion["pass1"], fashion["pass2"], *(k for k in fashion["kinds"] if k["probes"])]:
        parts = ("build_s", "serialize_s", "session_create_s", "run_s", "update_s", "other_s")
        assert sum(row[p] for p in parts) == pytest.approx(row["wall_s"])
        assert min(row[p] for p in parts[:-1]) >= 0 and row["runs"] >= 1
    assert fashion["pass1"]["timer_s"] <= fashion["pass1"]["wall_s"] + 1e-3
    v = fashion["verify"]
    holdout = fashion["batches"]["holdout"]
    # each candidate against the reference (a candidate stops once it cannot win), then the winner in ONNX
    # Runtime's default session; the reference never runs: pass 2 fetched its outputs (``Reference.take``)
    assert v["candidate_runs"] <= v["candidates"] * holdout
    assert v["reference_runs"] == 0
    untimed = fashion["untimed"]
    assert set(untimed["variants_s"]) == {"weight_range", "smoothing", "uniform"}
    assert untimed["open_s"] > 0 and untimed["pass2_outside_timer_s"] > 0


def test_markdown(profiled):
    markdown = profiled[1]
    assert "python -m benchmarks.profile --models fashion" in markdown
    assert "| ranges | " in markdown and "| layer_errors | " in markdown and "#### fashion" in markdown
    assert "| **pass 1** (`_first_pass`)" in markdown


def test_options_are_the_benchmark_rows(profiled, monkeypatch, tmp_path):
    import onnxbc
    from benchmarks.settings import SETTINGS
    from benchmarks.tools import onnxbc_tool
    from benchmarks.zoo import MODELS

    class Captured(Exception):
        pass

    seen = {}

    def capture(model, output, *, data, options, force):
        seen["options"] = options
        raise Captured

    monkeypatch.setattr(onnxbc, "compress", capture)
    with pytest.raises(Captured):
        onnxbc_tool.quantize(MODELS["fashion"].prepare(profiled[2]), SETTINGS["w8a8"], tmp_path / "out.onnx")
    assert seen["options"] == profile.compress_options()
