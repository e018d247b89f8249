"""Loading and saving: clear errors, atomic writes, external data, the input never touched."""

import os

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from models import test_graphs
from onnxbc import model_io
from onnxbc.errors import OnnxbcError, UsageError


def test_load_errors_say_what_and_where(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        model_io.load(tmp_path / "missing.onnx")
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model")
    with pytest.raises(UsageError, match="notes.onnx"):
        model_io.load(text)
    good = test_graphs.save(test_graphs.build("conv"), tmp_path / "conv.onnx")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UsageError, match="truncated.onnx"):
        model_io.load(truncated)


def test_checker_failure_is_a_model_error(tmp_path):
    proto = test_graphs.build("conv").model
    proto.graph.node[0].input[1] = "no_such_weight"
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, bad)
    with pytest.raises(OnnxbcError, match="fails onnx.checker") as e:
        model_io.load(bad)
    assert e.value.exit_code == 1


def test_missing_external_data_file(tmp_path):
    path = test_graphs.save(test_graphs.build("external_data"), tmp_path / "ext.onnx")
    os.remove(tmp_path / "ext.onnx.data")
    with pytest.raises(UsageError, match="external data file 'ext.onnx.data' is missing"):
        model_io.load(path)


def test_output_path_rules(tmp_path):
    model = test_graphs.save(test_graphs.build("external_data"), tmp_path / "m.onnx")
    with pytest.raises(UsageError, match="is the input model"):
        model_io.check_output_path(model, tmp_path / "." / "m.onnx", force=True)
    with pytest.raises(UsageError, match="does not exist"):
        model_io.check_output_path(model, tmp_path / "nope" / "out.onnx", force=False)
    with pytest.raises(UsageError, match="external data"):
        model_io.check_output_path(model, tmp_path / "m.onnx.data", force=True)
    existing = tmp_path / "out.onnx"
    existing.write_bytes(b"x")
    with pytest.raises(UsageError, match="--force"):
        model_io.check_output_path(model, existing, force=False)
    assert model_io.check_output_path(model, existing, force=True) == existing.resolve()


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    model = model_io.load(test_graphs.save(test_graphs.build("conv"), tmp_path / "conv.onnx"))
    out = tmp_path / "out" / "conv2.onnx"
    out.parent.mkdir()
    out.write_bytes(b"previous")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ir, "save", broken)
    with pytest.raises(OSError):
        model_io.save(model, out)
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in out.parent.iterdir()) == ["conv2.onnx"]


def test_external_data_round_trip_and_ir_version(tmp_path):
    src = test_graphs.save(test_graphs.build("external_data"), tmp_path / "ext.onnx")
    before = src.read_bytes(), (tmp_path / "ext.onnx.data").read_bytes()
    model = model_io.load(src)
    out = tmp_path / "copy.onnx"
    files = model_io.save(model, out, external_data=True)
    assert files == [out, tmp_path / "copy.onnx.data"]
    assert (src.read_bytes(), (tmp_path / "ext.onnx.data").read_bytes()) == before
    loaded = onnx.load(out)
    onnx.checker.check_model(str(out))
    assert loaded.ir_version <= 10  # ONNX Runtime 1.31 loads IR <= 13; we write what the opset needs
    assert model_io.file_bytes(out) == out.stat().st_size + (tmp_path / "copy.onnx.data").stat().st_size
    assert model_io.external_data_files(out) == [tmp_path / "copy.onnx.data"]


def test_read_tensor_pb(tmp_path):
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    (tmp_path / "input_0.pb").write_bytes(onnx.numpy_helper.from_array(array, "x").SerializeToString())
    name, back = model_io.read_tensor_pb(tmp_path / "input_0.pb")
    assert name == "x"
    np.testing.assert_array_equal(back, array)
