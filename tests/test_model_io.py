"""Loading and saving: clear errors, atomic writes, external data, the input never touched."""

import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from models import test_graphs
from onnxbc import model_io
from onnxbc.calibration import session
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


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    model = model_io.load(test_graphs.save(test_graphs.build("conv"), tmp_path / "conv.onnx"))
    out = tmp_path / "out" / "conv2.onnx"
    out.parent.mkdir()
    out.write_bytes(b"previous")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ir, "save", broken)
    with pytest.raises(OnnxbcError, match="conv2.onnx: disk full"):  # one line naming the file, not an OSError
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


def test_weights_read_from_external_data_are_unmapped_after_a_session_is_made(tmp_path):
    """Making a session reads every weight (to write its temporary file); the mapped files go after, except one
    whose array is still in use, and a weight read again has the same values."""
    model = model_io.load(test_graphs.save(test_graphs.build("external_data"), tmp_path / "ext.onnx"))
    external = [v for v in model.graph.initializers.values() if isinstance(v.const_value, ir.ExternalTensor)]
    assert len(external) >= 2
    before = {v.name: v.const_value.numpy().copy() for v in external}
    in_use = external[0].const_value.numpy()
    with model_io.ort_source(model, file_from=0) as source:
        assert Path(source).is_file()
    assert external[0].const_value.raw is not None  # ``in_use`` still reads it
    assert all(v.const_value.raw is None for v in external[1:])
    for v in external:
        np.testing.assert_array_equal(v.const_value.numpy(), before[v.name])
    np.testing.assert_array_equal(in_use, before[external[0].name])


def test_read_tensor_pb(tmp_path):
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    (tmp_path / "input_0.pb").write_bytes(onnx.numpy_helper.from_array(array, "x").SerializeToString())
    name, back = model_io.read_tensor_pb(tmp_path / "input_0.pb")
    assert name == "x"
    np.testing.assert_array_equal(back, array)


def undecodable(folder, name):
    """A path holding the byte 0xff, which is not UTF-8 (as ``os.listdir`` returns it: a surrogate in ``str``)."""
    return Path(os.fsdecode(os.fsencode(folder) + b"/" + name))


@pytest.mark.parametrize("graph", ["conv", "external_data"])
def test_paths_that_are_not_utf8(tmp_path, graph):
    test_graphs.save(test_graphs.build(graph), tmp_path / "dir" / "m.onnx")
    folder = (tmp_path / "dir").rename(undecodable(tmp_path, b"\xffdir"))
    path = folder / "m.onnx"
    if graph == "conv":  # the file name too (external data needs a UTF-8 name: ONNX stores it as text)
        path = path.rename(undecodable(folder, b"\xffm.onnx"))
    model = model_io.load(path)
    assert model.graph.node(0).op_type == "Conv"
    model_io.check_model_file(path, full_check=True)
    out = undecodable(folder, b"\xffout.onnx")
    if graph == "external_data":  # ONNX stores the data file name as text
        with pytest.raises(UsageError, match="external data needs a UTF-8 file name; choose another with -o"):
            model_io.prepare_outputs(path, out, folder / "r.json", force=False)
        out = folder / "out.onnx"
    paths = model_io.prepare_outputs(path, out, out.with_name(out.name + ".json"), force=False)
    written = model_io.write_outputs(model, paths, lambda final, total: "{}", external_data=graph != "conv")
    assert model_io.load(written[0]).graph.node(0).op_type == "Conv"
    with pytest.raises(UsageError) as e:
        model_io.load(undecodable(folder, b"\xffmissing.onnx"))
    assert str(e.value).endswith("\\xffdir/\\xffmissing.onnx: no such file")
    str(e.value).encode("utf-8")  # printable


def test_checker_failure_under_a_path_that_is_not_utf8(tmp_path):
    proto = test_graphs.build("conv").model
    proto.graph.node[0].input[1] = "no_such_weight"
    bad = undecodable(tmp_path, b"\xffbad.onnx")
    onnx.save(proto, bad)
    with pytest.raises(OnnxbcError, match=r"\\xffbad.onnx: fails onnx.checker"):
        model_io.load(bad)
    assert model_io.load(bad, check=False).graph.node(0).op_type == "Conv"
    with pytest.raises(onnx.checker.ValidationError):
        model_io.check_model_file(bad)
    ext = test_graphs.save(test_graphs.build("external_data"), tmp_path / "ext.onnx")
    with pytest.raises(UsageError, match="external data whose file name is not UTF-8; rename"):
        model_io.check_model_file(ext.rename(undecodable(tmp_path, b"\xffext.onnx")))


def test_spill_moves_held_weights_to_a_file_and_frees_the_parsed_message(tmp_path):
    """Large initializers become external tensors of one file, read back equal; the small ones and the
    attribute tensors (a Constant, an If branch's) are copies of their own, so that nothing keeps the parsed
    protobuf message alive; a model written from it embeds the weights again."""
    for name in ("constant_weights", "if_conv", "tied_embedding"):
        src = test_graphs.save(test_graphs.build(name), tmp_path / f"{name}.onnx")
        model = model_io.load(src)
        before = {v.name: v.const_value.numpy().copy() for g in model.graphs() for v in g.initializers.values()}
        attrs = [
            a for g in model.graphs() for n in g for a in n.attributes.values() if a.type is ir.AttributeType.TENSOR
        ]
        folder = tmp_path / name
        folder.mkdir()
        moved = model_io.spill(model, folder, least=256)
        values = [v for g in model.graphs() for v in g.initializers.values()]
        external = [v for v in values if isinstance(v.const_value, ir.ExternalTensor)]
        assert len(external) == sum(a.nbytes >= 256 for a in before.values())
        assert moved == sum(v.const_value.nbytes for v in external)
        assert (folder / model_io.SPILL_FILE).stat().st_size == moved
        assert all(v.const_value.nbytes >= 256 for v in external)
        assert not any(isinstance(v.const_value, ir.TensorProtoTensor) for v in values)
        tensors = [
            a.value
            for g in model.graphs()
            for n in g
            for a in n.attributes.values()
            if a.type is ir.AttributeType.TENSOR
        ]
        assert len(tensors) == len(attrs) and not any(isinstance(t, ir.TensorProtoTensor) for t in tensors)
        for v in values:
            np.testing.assert_array_equal(v.const_value.numpy(), before[v.name])
        assert model_io.held_bytes(model) == sum(v.const_value.nbytes for v in values) - moved
        out = tmp_path / f"{name}_copy.onnx"
        model_io.save(model, out)
        assert model_io.external_data_files(out) == []
        copy = onnx.load(out)
        for t in copy.graph.initializer:
            np.testing.assert_array_equal(onnx.numpy_helper.to_array(t), before[t.name])


@pytest.mark.parametrize(
    "graph",
    [
        "matmul_add",
        "attention",
        "hardswish_cnn",
        "loop_matmul",
        "tied_embedding",
        "lstm",
        "integer_input",
        "external_data",
    ],
)
def test_weights_handed_over_from_memory_make_the_session_of_the_serialized_model(tmp_path, graph):
    """``session.ort_input`` with room for the weights: the graph without those held in memory, which ONNX Runtime
    copies in (zeroing the arrays after changes nothing); the outputs are those of the whole model serialized,
    and the model is as before. Weights read from external data, or no room, go the old way (the whole)."""
    g = test_graphs.build(graph)
    path = test_graphs.save(g, tmp_path / "m.onnx")
    if g.external_data:
        model = model_io.load(path)
    else:
        model = ir.serde.deserialize_model(g.model)
        for value in model.graph.initializers.values():  # in memory, as compress holds the weights it made
            value.const_value = ir.Tensor(value.const_value.numpy().copy(), name=value.name)
    whole = ir.serde.serialize_model(model).SerializeToString()
    feeds = g.feeds(2, 0)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    big = [v.const_value.numpy() for v in model.graph.initializers.values() if v.const_value.nbytes >= 4096]
    assert big
    for room in (0, model_io.initializer_bytes(model)):
        options = ort.SessionOptions()
        with session.ort_input(model, options, room) as source:
            made = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        if g.external_data:
            assert Path(source).suffix == ".onnx"  # a temporary file, as before
        elif room:
            assert len(source) < len(whole) - sum(a.nbytes for a in big) + 1024
        else:
            assert len(source) >= len(whole)
        assert ir.serde.serialize_model(model).SerializeToString() == whole
        for a, b in zip(made.run(None, feeds), expected, strict=True):
            np.testing.assert_array_equal(a, b)
    if not g.external_data:
        for a in big:
            a[...] = 0
        for a, b in zip(made.run(None, feeds), expected, strict=True):
            np.testing.assert_array_equal(a, b)


def test_a_weight_no_node_reads_stays_in_the_graph_handed_over():
    """ONNX Runtime drops an unused initializer before it takes the weights handed over (and would then fail to
    find it): such a weight stays serialized in the graph."""
    g = test_graphs.build("matmul_add")
    g.model.graph.initializer.append(onnx.numpy_helper.from_array(np.ones(4096, np.float32), "unused"))
    model = ir.serde.deserialize_model(g.model)
    options = ort.SessionOptions()
    with session.ort_input(model, options, model_io.initializer_bytes(model)) as source:
        made = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    assert len(source) > 4 * 4096
    expected = ort.InferenceSession(g.model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = g.feeds(2, 0)
    for a, b in zip(made.run(None, feeds), expected.run(None, feeds), strict=True):
        np.testing.assert_array_equal(a, b)
