"""``python -m benchmarks.ort_kernels`` on the bundled CNN: the largest session of one compress is pass 2's."""

from __future__ import annotations

import onnx
import pytest

from benchmarks import ort_kernels
from benchmarks.zoo import MODELS


def test_the_largest_session_is_pass_two_with_a_shadow_per_layer(tmp_path, capsys):
    MODELS["fashion"].prepare(tmp_path / "cache")
    assert ort_kernels.main(["--model", "fashion", "--cache", str(tmp_path / "cache")]) == 0
    model = onnx.load(tmp_path / "cache" / "fashion" / "model.onnx")
    layers = sum(n.op_type in ("Conv", "Gemm", "MatMul") for n in model.graph.node)
    found = [
        ort_kernels.summary(p)
        for p in ort_kernels.profiles(
            tmp_path / "cache" / "fashion" / "model.onnx", tmp_path / "cache" / "fashion" / "calib.npz", tmp_path
        )
    ]
    largest = max(found, key=lambda s: s["nodes"])
    convs = sum(o["nodes"] for op, o in largest["ops"].items() if op in ("Conv", "FusedConv", "Gemm", "MatMul"))
    assert largest["runs"] > 0 and largest["run_s"] > 0
    assert convs >= 2 * layers  # the model's layers and a shadow of each
    assert "the largest session" in capsys.readouterr().out


def test_a_model_not_in_the_cache_is_a_one_line_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        ort_kernels.main(["--model", "fashion", "--cache", str(tmp_path)])
    assert exit_.value.code == 2
    assert "no model.onnx and calib.npz in" in capsys.readouterr().err
