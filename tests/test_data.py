"""Calibration data: every accepted layout, and a clear error for each way data can be wrong."""

import numpy as np
import onnx
import pytest

from onnxbc.calibration.data import InputSpec, open_data
from onnxbc.errors import UsageError
from onnxbc.options import DataOptions

SPECS = [InputSpec("x", np.dtype(np.float32), ("N", 3, 4))]


def batches(path, specs=SPECS, **kw):
    data = open_data(DataOptions(path=path, **kw), specs)
    return data, list(data.batches("all"))


def test_npz_batches_and_holdout(tmp_path):
    x = np.arange(10 * 12, dtype=np.float32).reshape(10, 3, 4)
    np.savez(tmp_path / "d.npz", x=x, labels=np.zeros(10))
    data, all_batches = batches(tmp_path / "d.npz", batch_size=4, holdout_fraction=0.2)
    assert (data.n_fit, data.n_holdout) == (8, 2)
    assert [b["x"].shape[0] for b in all_batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in data.batches("holdout")]), x[8:])
    assert data.ignored == ["labels"]


def test_samples_limit_and_npy_and_folder(tmp_path):
    x = np.ones((7, 3, 4), np.float32)
    np.save(tmp_path / "a.npy", x)
    data, _ = batches(tmp_path / "a.npy", samples=5, holdout_fraction=0.0)
    assert (data.n_fit, data.n_holdout) == (5, 0)
    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(3):
        np.savez(folder / f"part{i}.npz", x=x[:3] * i)
    data, all_batches = batches(folder, batch_size=2, holdout_fraction=0.0)
    # runs span the files (same layout and shapes), in file order
    assert data.total == 9 and [b["x"].shape[0] for b in all_batches] == [2, 2, 2, 2, 1]
    np.testing.assert_array_equal(all_batches[1]["x"][:, 0, 0], [0, 1])
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in all_batches])[:, 0, 0], np.repeat([0, 1, 2], 3))


def test_test_data_set_folders(tmp_path):
    specs = [
        InputSpec("x", np.dtype(np.float32), ("N", 3, 4)),
        InputSpec("h", np.dtype(np.float32), (2, "N", 5)),
    ]
    for i in range(3):
        folder = tmp_path / f"test_data_set_{i}"
        folder.mkdir()
        for j, (name, shape) in enumerate((("x", (1, 3, 4)), ("h", (2, 1, 5)))):
            array = np.full(shape, i, np.float32)
            (folder / f"input_{j}.pb").write_bytes(onnx.numpy_helper.from_array(array, name).SerializeToString())
    data, all_batches = batches(tmp_path, specs, holdout_fraction=0.34)
    assert (data.n_fit, data.n_holdout) == (2, 1)
    assert all_batches[2]["h"].shape == (2, 1, 5) and all_batches[2]["x"][0, 0, 0] == 2


def test_whole_feeds_for_inputs_not_batched_on_axis0(tmp_path):
    specs = [InputSpec("h", np.dtype(np.float32), (2, "N", 5))]
    np.savez(tmp_path / "f.npz", h=np.zeros((6, 2, 3, 5), np.float32))  # 6 feeds of [2, 3, 5]
    data, all_batches = batches(tmp_path / "f.npz", specs)
    assert data.total == 6 and all(b["h"].shape == (2, 3, 5) for b in all_batches)


def test_random_data(tmp_path):
    data = open_data(DataOptions(random=True, samples=10, batch_size=4), SPECS)
    assert "random" in data.description and sum(b["x"].shape[0] for b in data.batches("all")) == 10
    with pytest.raises(UsageError, match="dynamic dimension 'T' at axis 1"):
        open_data(DataOptions(random=True), [InputSpec("x", np.dtype(np.float32), ("N", "T"))])


@pytest.mark.parametrize(
    "arrays,match",
    [
        ({"y": np.zeros((4, 3, 4), np.float32)}, "no array for model input 'x' \\(it has: y\\)"),
        (
            {"x": np.zeros((4, 3, 4), np.float64)},
            "input 'x': the model expects float32, the data has float64",
        ),
        ({"x": np.zeros((4, 3), np.float32)}, "expects rank 3"),
        ({"x": np.zeros((4, 3, 5), np.float32)}, "dimension 2 must be 4"),
    ],
)
def test_bad_arrays_are_refused_before_work(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(UsageError, match=match):
        open_data(DataOptions(path=tmp_path / "bad.npz"), SPECS)


def test_nonfinite_values_are_refused(tmp_path):
    x = np.zeros((4, 3, 4), np.float32)
    x[2, 1, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=x)
    data = open_data(DataOptions(path=tmp_path / "nan.npz"), SPECS)
    with pytest.raises(UsageError, match="NaN or Inf values \\(sample 2\\)"):
        list(data.batches("all"))


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        open_data(DataOptions(path=tmp_path / "none.npz"), SPECS)
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(UsageError, match="not a readable .npz"):
        open_data(DataOptions(path=tmp_path / "broken.npz"), SPECS)
    with pytest.raises(UsageError, match="single-input"):
        np.save(tmp_path / "a.npy", np.zeros((2, 3, 4), np.float32))
        open_data(DataOptions(path=tmp_path / "a.npy"), SPECS + [InputSpec("y", np.dtype(np.float32), None)])


def test_data_options_are_validated():
    with pytest.raises(UsageError, match="--data PATH"):
        DataOptions()
    with pytest.raises(UsageError, match="exclude each other"):
        DataOptions(path="x.npz", random=True)
    with pytest.raises(UsageError, match="--samples"):
        DataOptions(path="x.npz", samples=0)


# A recurrent-style step model: a sequence batched on a dynamic axis 0 beside states of fixed shape.
RECURRENT_SPECS = [
    InputSpec("input", np.dtype(np.float32), ("sequence_length", 576)),
    InputSpec("h", np.dtype(np.float32), (1, 1, 128)),
    InputSpec("c", np.dtype(np.float32), (1, 1, 128)),
]


def test_random_data_keeps_each_inputs_rank_when_inputs_are_not_all_batched():
    data = open_data(DataOptions(random=True, samples=8, batch_size=4), RECURRENT_SPECS)
    feeds = list(data.batches("all"))
    assert len(feeds) == 8 and not data.batched and data.batch_size == 1  # one sample per run, never split
    assert all(f["input"].shape == (1, 576) and f["h"].shape == f["c"].shape == (1, 1, 128) for f in feeds)
    assert not np.array_equal(feeds[0]["h"], feeds[1]["h"])


def test_random_scalar_inputs_are_whole_feeds():
    specs = [InputSpec("x", np.dtype(np.float32), ("N", 4)), InputSpec("t", np.dtype(np.int64), ())]
    feeds = list(open_data(DataOptions(random=True, samples=3), specs).batches("all"))
    assert [(f["x"].shape, f["t"].shape) for f in feeds] == [((1, 4), ())] * 3


def test_batched_and_whole_arrays_mix_in_one_file(tmp_path):
    x = np.arange(5 * 576, dtype=np.float32).reshape(5, 576)
    states = np.ones((5, 1, 1, 128), np.float32)
    np.savez(tmp_path / "d.npz", input=x, h=states, c=2 * states)
    data, feeds = batches(tmp_path / "d.npz", RECURRENT_SPECS, holdout_fraction=0.0)
    assert len(feeds) == 5 and not data.batched
    assert all(f["input"].shape == (1, 576) and f["h"].shape == (1, 1, 128) for f in feeds)
    np.testing.assert_array_equal(feeds[3]["input"], x[3:4])


def test_a_fixed_batch_is_never_split_and_fixed_sizes_must_agree(tmp_path):
    specs = [InputSpec("x", np.dtype(np.float32), (2, 3)), InputSpec("y", np.dtype(np.float32), (2, 4))]
    np.savez(tmp_path / "d.npz", x=np.zeros((6, 3), np.float32), y=np.zeros((6, 4), np.float32))
    data, feeds = batches(tmp_path / "d.npz", specs, holdout_fraction=0.0)
    assert not data.batched and [f["x"].shape for f in feeds] == [(2, 3)] * 3  # the collector keeps them whole
    specs[1] = InputSpec("y", np.dtype(np.float32), (3, 4))
    np.savez(tmp_path / "e.npz", x=np.zeros((6, 3), np.float32), y=np.zeros((6, 4), np.float32))
    with pytest.raises(UsageError, match="inputs 'x' and 'y' have different fixed sizes on axis 0 \\(2 and 3\\)"):
        open_data(DataOptions(path=tmp_path / "e.npz"), specs)
    np.savez(tmp_path / "f.npz", x=np.zeros((6, 3), np.float32), y=np.zeros((6, 3, 4), np.float32))
    with pytest.raises(UsageError, match="'x' is batched with a fixed batch of 2 while 'y' holds whole feeds"):
        open_data(DataOptions(path=tmp_path / "f.npz"), specs)


def _recurrent_model(path, lstm: bool):
    """input [sequence_length, 576], h and c [1, 1, 128] -> a MatMul on the input plus h and c (or an LSTM
    step on it) -> a MatMul."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    hidden = 128
    inits = [numpy_helper.from_array(rng.standard_normal((hidden, 64)).astype(np.float32) * 0.1, "W2")]
    if lstm:
        inits += [
            numpy_helper.from_array(rng.standard_normal((1, 4 * hidden, 576)).astype(np.float32) * 0.05, "W"),
            numpy_helper.from_array(rng.standard_normal((1, 4 * hidden, hidden)).astype(np.float32) * 0.05, "R"),
            numpy_helper.from_array(np.array([1], np.int64), "axis"),
        ]
        nodes = [
            helper.make_node("Unsqueeze", ["input", "axis"], ["x3"]),
            helper.make_node("LSTM", ["x3", "W", "R", "", "", "h", "c"], ["y", "state"], hidden_size=hidden),
            helper.make_node("MatMul", ["state", "W2"], ["out"]),
        ]
        out_shape = [1, 1, 64]
    else:
        inits.append(numpy_helper.from_array(rng.standard_normal((576, hidden)).astype(np.float32) * 0.05, "W"))
        nodes = [
            helper.make_node("MatMul", ["input", "W"], ["mm"]),
            helper.make_node("Add", ["mm", "h"], ["with_h"]),
            helper.make_node("Add", ["with_h", "c"], ["state"]),
            helper.make_node("MatMul", ["state", "W2"], ["out"]),
        ]
        out_shape = [1, "sequence_length", 64]
    inputs = [
        helper.make_tensor_value_info("input", TensorProto.FLOAT, ["sequence_length", 576]),
        helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 1, hidden]),
        helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 1, hidden]),
    ]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, out_shape)]
    graph = helper.make_graph(nodes, "recurrent_step", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("lstm", [False, True], ids=["matmul_add_states", "lstm"])
def test_compress_with_random_data_on_a_model_not_batched_on_axis0(tmp_path, lstm):
    import onnxruntime as ort

    import onnxbc

    path = _recurrent_model(tmp_path / "step.onnx", lstm)
    result = onnxbc.compress(
        path,
        tmp_path / "step.q.onnx",
        data=DataOptions(random=True, samples=8),
        options=onnxbc.CompressOptions(device="cpu"),
    )
    assert result.report.data["batch_size"] == 1 and result.report.data["fit_samples"] > 0
    quantized = [r.name for r in result.report.layers if r.status == "quantized"]
    assert len(quantized) == 2  # the LSTM weight-only
    session = ort.InferenceSession(str(result.output), providers=["CPUExecutionProvider"])
    feeds = {"input": np.ones((3, 576), np.float32), "h": np.zeros((1, 1, 128), np.float32)}
    (out,) = session.run(None, {**feeds, "c": feeds["h"]})
    assert out.shape == ((1, 1, 64) if lstm else (1, 3, 64)) and np.isfinite(out).all()
