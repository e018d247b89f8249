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
    assert data.total == 9 and [b["x"].shape[0] for b in all_batches] == [2, 1, 2, 1, 2, 1]


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
