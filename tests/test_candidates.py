"""Whatever candidate compress saves, the error it prints and reports is the written file's.

Each test forces the held-out choice to one kind of candidate (plain, compensated, min-max scales, uniform bits,
strict int4 beside weights kept at 8, no GPTQ, sequential compensation, int32 biases) and measures the written
file independently: its own ONNX Runtime session against the float model's on the held-out samples of the same
data.
"""

import json
import math
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from onnxbc import candidates
from onnxbc.calibration.data import input_specs, open_data
from onnxbc.candidates import Weights
from onnxbc.cli import app
from onnxbc.model_io import load
from onnxbc.options import BiasCorrection, DataOptions

MODEL = Path("models/fashion_cnn.onnx")
DATA = Path("models/data/fashion_calib.npz")

# kind -> (flags, the weights (None: any) and compensation of the candidate to save)
KINDS = {
    "plain": ([], Weights.PLAN, BiasCorrection.NONE),
    "compensated": ([], Weights.PLAN, BiasCorrection.INDEPENDENT),
    "minmax": (["--weights", "int4"], Weights.MINMAX, BiasCorrection.INDEPENDENT),
    "uniform": (["--avg-bits", "6", "--candidates", "4,8"], Weights.UNIFORM, BiasCorrection.NONE),
    "uniform_compensated": (["--avg-bits", "6", "--candidates", "4,8"], Weights.UNIFORM, BiasCorrection.INDEPENDENT),
    "strict_int4": (["--weights", "int4"], Weights.UNIFORM, BiasCorrection.INDEPENDENT),  # the plan keeps some at 8
    "nearest": (["--weights", "int4"], Weights.NEAREST, BiasCorrection.INDEPENDENT),  # GPTQ rounds the classifier
    "sequential": (["--bias-correction", "sequential"], None, BiasCorrection.SEQUENTIAL),  # from the best start
    "int32_bias": (["--int32-bias"], Weights.PLAN, BiasCorrection.INDEPENDENT),
}


def independent_rel_mse(model: Path) -> dict[str, float]:
    """Per output: sum of squared error over sum of squared FP32 output on the held-out samples, as computed
    from the files alone (the graph as written: ONNX Runtime's QDQ fusions off)."""
    exact = ort.SessionOptions()
    exact.add_session_config_entry("session.disable_quant_qdq", "1")
    reference = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    tested = ort.InferenceSession(str(model), exact, providers=["CPUExecutionProvider"])
    names = [o.name for o in reference.get_outputs()]
    err2, ref2 = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
    for feeds in open_data(DataOptions(path=DATA), input_specs(load(MODEL))).batches("holdout"):
        for name, a, b in zip(names, reference.run(None, feeds), tested.run(None, feeds)):
            err2[name] += float(np.square(a.astype(np.float64) - b).sum())
            ref2[name] += float(np.square(a.astype(np.float64)).sum())
    return {name: err2[name] / ref2[name] for name in names}


@pytest.mark.parametrize("kind", list(KINDS))
def test_saved_error_is_the_written_files(kind, tmp_path, monkeypatch):
    flags, weights, compensation = KINDS[kind]
    choose = candidates.choose
    built = []

    def forced(cands, max_size, split, finalists=()):
        built.extend(cands)
        match = [c for c in cands if c.compensation is compensation and weights in (None, c.weights)]
        assert match, f"{kind}: no such candidate among {[c.name for c in cands]}"
        return match[0], choose(cands, max_size, split)[1]

    monkeypatch.setattr(candidates, "choose", forced)
    monkeypatch.setattr(candidates, "MARGIN", math.inf)  # measure every candidate to the end: one may be forced
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(app, ["compress", str(MODEL), "--data", str(DATA), "-o", str(out), *flags])
    assert result.exit_code == 0, result.output

    measured = independent_rel_mse(out)
    rep = json.loads((tmp_path / "out.report.json").read_text())
    comp = rep["compensation"]
    assert comp["chosen"] == next(
        c.name for c in built if c.compensation is compensation and weights in (None, c.weights)
    )
    assert comp["applied"] == (compensation is not BiasCorrection.NONE)
    assert comp["output_rel_mse"] == pytest.approx(np.mean(list(measured.values())), rel=1e-5)
    assert comp["candidates"][comp["chosen"]] == comp["output_rel_mse"]
    for name, value in measured.items():
        assert rep["outputs"][comp["chosen"]][name]["rel_mse"] == pytest.approx(value, rel=1e-5)
        printed = re.search(rf"Output '{name}' vs FP32 .*?rel\. MSE ([0-9.e+-]+)", result.output.replace("\n", " "))
        assert printed and float(printed.group(1)) == pytest.approx(value, rel=1e-3)
    biased = [r for r in rep["layers"] if r["bias"] and r["bias"].get("delta_norm") is not None]
    assert biased and all(r["bias"]["applied"] == comp["applied"] for r in biased)
    shown = " ".join(CliRunner().invoke(app, ["inspect", str(tmp_path / "out.report.json")]).output.split())
    assert f"{comp['chosen']}:" in shown and f"output rel. MSE {comp['output_rel_mse']:.3e}" in shown
    if kind == "int32_bias":
        assert any("bias stored as int32 codes" in n for r in rep["layers"] for n in r["notes"])
    if weights is Weights.UNIFORM:
        assert rep["precision"]["saved"].startswith("uniform int")
        assert len({layer["bits"] for layer in rep["precision"]["layers"].values()}) == 1
    quantized = [r["weight"] for r in rep["layers"] if r["weight"]]
    if weights is Weights.MINMAX:  # smoothing and GPTQ (--rounding auto) keep their own scales
        smoothed = {r["weight"]["name"] for r in rep["layers"] if any("input smoothed" in n for n in r["notes"])}
        alone = [w for w in quantized if w["rounding"] == "nearest" and w["name"] not in smoothed]
        assert alone and all(w["scale_method"] == "minmax" for w in alone), quantized
    if weights is Weights.NEAREST:
        assert {w["rounding"] for w in quantized} == {"nearest"}
        assert rep["precision"]["rounding"]["gptq"] >= 1
