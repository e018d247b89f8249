"""compress's cost against quantize_static (``python -m benchmarks.cost``) end to end on the bundled CNN.

One paired run (ORT, then onnxbc, each in its own worker process); the cache and results go to a temporary
folder. A model missing from the cache is a skipped row, not a failure.
"""

from __future__ import annotations

import json

import pytest

from benchmarks import cost
from benchmarks.zoo import MODELS


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    root = tmp_path_factory.mktemp("cost")
    MODELS["fashion"].prepare(root / "cache")  # copies the bundled model; the workers then find it ready
    argv = ["--models", "fashion,chargpt", "--repeats", "1", "--cache", str(root / "cache")]
    assert cost.main([*argv, "--name", "cost", "--results-dir", str(root)]) == 0
    return root, json.loads((root / "cost.json").read_text())


def test_both_methods_paired(measured):
    _, results = measured
    assert results["repeats"] == 1 and results["source"]["commit"] and "onnxbc" in results["packages"]
    fashion = results["models"]["fashion"]
    assert fashion["status"] == "ok", fashion.get("reason")
    assert fashion["samples"] == 256
    ort, bc = fashion["methods"][cost.ORT], fashion["methods"][cost.ONNXBC]
    for m in (ort, bc):
        assert len(m["runs"]) == 1 and m["median_run"] == m["runs"][0]
        assert m["process_s_median"] >= m["call_s_median"] > 0
        assert m["peak_rss_mb_max"] > 50  # a Python process with onnxruntime loaded
    assert fashion["ratios"]["wall"] == bc["process_s_median"] / ort["process_s_median"]
    assert fashion["ratios"]["peak_rss"] == bc["peak_rss_mb_max"] / ort["peak_rss_mb_max"]
    assert {"ranges", "layer_errors", "verify"} <= set(bc["median_run"]["timings_s"])
    assert "timings_s" not in ort["median_run"]
    # chargpt is not in the temporary cache: skipped with a note
    assert results["models"]["chargpt"]["status"] == "skipped"


def test_render(measured, capsys):
    root, results = measured
    assert cost.main(["render", "--name", "cost", "--results-dir", str(root)]) == 0
    text = capsys.readouterr().out
    ratio = results["models"]["fashion"]["ratios"]["wall"]
    assert "| fashion | 256 | " in text and f"| {ratio:.2f}x |" in text
    assert "| chargpt | skipped: " in text


def test_render_of_a_run_not_made_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cost.main(["render", "--name", "nothing", "--results-dir", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "no results at" in err and "nothing.json" in err and "Traceback" not in err
