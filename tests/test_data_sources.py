"""Calibration data as people keep it (``DataOptions.source``, ``transform``) and ``--shape`` for dynamic inputs.

Every source kind must give the same report as the same samples in an ``.npz``: the samples are spilled and
read back like files, and runs span the spilled files, so the runs are the file's runs.
"""

import gc
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader
from typer.testing import CliRunner

import onnxbc
from onnxbc import cli
from onnxbc.calibration import spill
from onnxbc.calibration.data import InputSpec, open_data
from onnxbc.errors import UsageError
from onnxbc.options import DataOptions

FASHION = "models/fashion_cnn.onnx"
N = 40  # samples: 30 fit and 10 held out at holdout_fraction 0.25
SIZES = [1, 1, 5, 8, 3, 2, 7, 4, 9]  # items of uneven batches: runs of 8 must span them
assert sum(SIZES) == N


@pytest.fixture(scope="module")
def calib():
    with np.load("models/data/fashion_calib.npz") as z:
        return z["input"][:N]


def pieces(x):
    bounds = np.cumsum([0, *SIZES])
    return [x[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


class Reader(CalibrationDataReader):
    """ONNX Runtime's calibration reader protocol: get_next() until None."""

    def __init__(self, items):
        self.items = iter(items)

    def get_next(self):
        return next(self.items, None)


class ModelAware:
    """A model-aware source: feeds(specs) sees the model's inputs and yields feeds for them."""

    def __init__(self, x, raw=False):
        self.x, self.raw, self.seen = x, raw, None

    def feeds(self, specs):
        self.seen = specs
        name = specs[0].name
        for part in pieces(self.x):
            yield (2 * part, "label") if self.raw else {name: part}


def double(x):
    return 2 * x  # halved again by `halve`: exact in float32


def halve(item):
    """NNCF-style transform: a raw item (a (batch, label) tuple, or a dict under another key) to a feed."""
    if isinstance(item, tuple):
        return {"input": item[0] / 2}
    return {"input": item["pixels"] / 2}


SOURCES = {
    "dict": (lambda x: {"input": x}, None, "dict of 1 array"),
    "dict+transform": (lambda x: {"pixels": double(x), "labels": np.arange(N)}, halve, "dict of 2 arrays through"),
    "list": (lambda x: [{"input": p} for p in pieces(x)], None, "iterable (list), spilled to 1 file"),
    "list+transform": (lambda x: [(double(p), 0) for p in pieces(x)], halve, "iterable (list) through halve"),
    "generator": (lambda x: ({"input": p} for p in pieces(x)), None, "iterable (generator)"),
    "generator+transform": (lambda x: ((double(p), 0) for p in pieces(x)), halve, "iterable (generator) through"),
    "reader": (lambda x: Reader({"input": p} for p in pieces(x)), None, "CalibrationDataReader (Reader)"),
    "reader+transform": (lambda x: Reader({"pixels": double(p)} for p in pieces(x)), halve, "(Reader) through"),
    "feeds": (lambda x: ModelAware(x), None, "ModelAware.feeds(specs)"),
    "feeds+transform": (lambda x: ModelAware(x, raw=True), halve, "ModelAware.feeds(specs) through halve"),
}


def numbers(report):
    """What a run measured: per-layer records, outputs, compensation and the other decisions."""
    d = report.to_dict()
    return {k: d[k] for k in ("layers", "outputs", "compensation", "smoothing", "weight_ranges", "precision")}


def compress(path, tmp_path, data):
    options = onnxbc.CompressOptions(device="cpu")
    return onnxbc.compress(path, tmp_path / "out.onnx", data=data, options=options, force=True).report


@pytest.fixture(scope="module")
def from_file(calib, tmp_path_factory):
    folder = tmp_path_factory.mktemp("file")
    np.savez(folder / "calib.npz", input=calib)
    return compress(FASHION, folder, DataOptions(path=folder / "calib.npz", holdout_fraction=0.25, batch_size=8))


@pytest.mark.parametrize("kind", SOURCES)
def test_every_source_gives_the_report_of_the_same_samples_in_a_file(kind, calib, from_file, tmp_path, system_tmp):
    make, transform, described = SOURCES[kind]
    source = make(calib)
    data = DataOptions(source=source, transform=transform, holdout_fraction=0.25, batch_size=8)
    report = compress(FASHION, tmp_path, data)
    assert (report.data["fit_samples"], report.data["holdout_samples"]) == (30, 10)
    assert described in report.data["source"] and "30 fit, 10 held out" in report.data["source"]
    assert numbers(report) == numbers(from_file)
    assert report.compensation["output_rel_mse"] == from_file.compensation["output_rel_mse"]
    assert report.compensation["output_rel_mse"] > 0  # a run that measured something
    assert report.options["data"] == data.describe()  # text for the source and transform, never their data
    json.dumps(report.to_dict())
    gc.collect()
    assert list(system_tmp.iterdir()) == []  # the spill folder went with the data
    if kind.startswith("feeds"):
        assert [(s.name, s.shape) for s in source.seen] == [("input", ("N", 1, 28, 28))]


def test_a_generator_is_read_once_and_only_as_far_as_samples(calib, system_tmp):
    pulled = []

    def items():
        for i, part in enumerate(pieces(calib)):
            pulled.append(i)
            yield {"input": part}

    specs = [InputSpec("input", np.dtype(np.float32), ("N", 1, 28, 28))]
    gen = items()
    data = open_data(DataOptions(source=gen, samples=10, batch_size=4, holdout_fraction=0.0), specs)
    assert pulled == [0, 1, 2, 3]  # 1 + 1 + 5 + 8 >= 10: the fifth item is never asked for
    assert data.total == 10 and [len(b["input"]) for b in data.batches("all")] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(list(b["input"] for b in data.batches("all"))), calib[:10])
    (folder,) = system_tmp.iterdir()
    assert folder.name.startswith("onnxbc-data-") and sorted(p.suffix for p in folder.iterdir()) == [".npz"]
    assert "spilled to 1 file" in data.description
    data.close()
    assert list(system_tmp.iterdir()) == []
    assert next(gen)["input"].shape[0] == SIZES[4]  # left where reading stopped, not read again


def test_runs_span_the_spilled_files_as_they_would_one_file(calib, tmp_path, monkeypatch):
    """Items spilled to several files give the runs of the same samples in one .npz, split by split."""
    monkeypatch.setattr(spill, "CHUNK_BYTES", 6 * calib[0].nbytes)
    np.savez(tmp_path / "calib.npz", input=calib)
    kw = {"batch_size": 8, "holdout_fraction": 0.3}
    spec = [InputSpec("input", np.dtype(np.float32), ("N", 1, 28, 28))]
    from_file = open_data(DataOptions(path=tmp_path / "calib.npz", **kw), spec)
    spilled = open_data(DataOptions(source=[{"input": p} for p in pieces(calib)], **kw), spec)
    assert "spilled to 4 files" in spilled.description  # 7, 8, 12 and 13 samples
    for split in ("fit", "holdout", "all"):
        runs = [list(from_file.batches(split)), list(spilled.batches(split))]
        assert [len(b["input"]) for b in runs[1]] == [len(b["input"]) for b in runs[0]]
        assert all(np.array_equal(a["input"], b["input"]) for a, b in zip(*runs))
        assert spilled.count_batches(split) == len(runs[0])
    assert [len(b["input"]) for b in spilled.batches("fit")] == [8, 8, 8, 4]  # 28 fit, 12 held out


def test_spilled_files_are_grouped_by_layout(system_tmp):
    """One-sample items share files; a change of per-sample shape (a dynamic axis) starts a new file."""
    specs = [InputSpec("x", np.dtype(np.float32), ("N", "T"))]
    items = [{"x": np.full((1, 3), i, np.float32)} for i in range(5)] + [{"x": np.ones((2, 4), np.float32)}]
    with open_data(DataOptions(source=items, batch_size=4, holdout_fraction=0.0), specs) as data:
        assert "spilled to 2 files" in data.description
        assert [b["x"].shape for b in data.batches("all")] == [(4, 3), (1, 3), (2, 4)]
    assert list(system_tmp.iterdir()) == []


def test_a_dict_source_is_read_like_an_npz_with_both_layouts():
    specs = [
        InputSpec("input", np.dtype(np.float32), ("sequence_length", 576)),
        InputSpec("h", np.dtype(np.float32), (1, 1, 128)),
    ]
    source = {"input": np.ones((5, 576), np.float32), "h": np.zeros((5, 1, 1, 128), np.float32), "y": np.ones(5)}
    data = open_data(DataOptions(source=source, holdout_fraction=0.0), specs)
    feeds = list(data.batches("all"))
    assert len(feeds) == 5 and feeds[0]["input"].shape == (1, 576) and feeds[0]["h"].shape == (1, 1, 128)
    assert data.ignored == ["y"] and data.description.startswith("dict of 3 arrays (5 samples")


SPECS = [InputSpec("x", np.dtype(np.float32), ("N", 3, 4)), InputSpec("ids", np.dtype(np.int64), ("N", 3))]


def good(n=2):
    return {"x": np.zeros((n, 3, 4), np.float32), "ids": np.zeros((n, 3), np.int64)}


def nan_at_1():
    feed = good()
    feed["x"][1, 0, 0] = np.nan
    return feed


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"x": np.zeros((2, 3, 4), np.float32)}, "item 2: no array for model input 'ids' \\(it has: x\\)"),
        ({**good(), "x": np.zeros((2, 3, 4))}, "item 2: input 'x': the model expects float32, the data has float64"),
        ({**good(), "ids": np.zeros((2, 3), np.int32)}, "item 2: input 'ids': the model expects int64"),
        ({**good(), "x": np.zeros((2, 12), np.float32)}, "item 2: input 'x': the model expects rank 3"),
        ({**good(), "x": np.zeros((2, 3, 5), np.float32)}, "item 2: input 'x': dimension 2 must be 4"),
        ({**good(), "ids": np.zeros((3, 3), np.int64)}, "item 2: arrays hold different numbers of samples"),
        (nan_at_1(), "item 2: input 'x' has NaN or Inf values \\(sample 1\\)"),
        ((np.zeros((2, 3, 4), np.float32),), "item 2: a feed is a dict of arrays keyed by input name; got tuple"),
    ],
)
def test_a_bad_item_is_refused_with_its_index_and_nothing_is_left(bad, match, system_tmp):
    items = iter([good(), good(1), bad, good()])
    with pytest.raises(UsageError, match=match):
        open_data(DataOptions(source=items), SPECS)
    assert list(system_tmp.iterdir()) == []
    assert next(items)["x"].shape == (2, 3, 4)  # nothing read after the bad item


def test_bad_items_from_a_reader_a_feeds_source_a_dict_and_a_transform():
    with pytest.raises(UsageError, match="item 0: input 'x': dimension 1 must be 3"):
        open_data(DataOptions(source=Reader([{**good(), "x": np.zeros((2, 2, 4), np.float32)}])), SPECS)
    with pytest.raises(UsageError, match="source dict: input 'ids': the model expects int64, the data has float64"):
        open_data(DataOptions(source={**good(), "ids": np.zeros((2, 3))}), SPECS)

    def broken(item):
        return item["missing"]

    with pytest.raises(UsageError, match="item 0: transform .*broken failed: KeyError: 'missing'"):
        open_data(DataOptions(source=[good()], transform=broken), SPECS)
    with pytest.raises(UsageError, match="item 0: a feed is .*; transform .*<lambda> returned list"):
        open_data(DataOptions(source=[good()], transform=lambda item: [item]), SPECS)
    with pytest.raises(UsageError, match="iterable \\(list\\) gave no samples"):
        open_data(DataOptions(source=[]), SPECS)


def test_data_options_take_one_source_and_describe_it_as_json():
    with pytest.raises(UsageError, match="source=.* excludes path="):
        DataOptions(source=[good()], path="x.npz")
    with pytest.raises(UsageError, match="source=.* excludes"):
        DataOptions(source=[good()], random=True)
    with pytest.raises(UsageError, match="transform=.* give source= too"):
        DataOptions(path="x.npz", transform=halve)
    with pytest.raises(UsageError, match="not a path"):
        DataOptions(source="calib.npz")
    with pytest.raises(UsageError, match="not one array"):
        DataOptions(source=np.zeros((2, 3, 4), np.float32))
    with pytest.raises(UsageError, match="got int"):
        DataOptions(source=3)
    with pytest.raises(UsageError, match="must be callable"):
        DataOptions(source=[good()], transform="halve")
    options = DataOptions(source=(f for f in [good()]), transform=halve, shapes={"x": (2, 3, 4)})
    assert options.describe() == {
        "path": None,
        "source": "iterable (generator)",
        "transform": "halve",
        "samples": 256,
        "batch_size": 16,
        "random": False,
        "holdout_fraction": 0.2,
        "seed": 0,
        "shapes": {"x": [2, 3, 4]},
    }
    json.dumps(DataOptions(source=good()).describe())
    hash(DataOptions(source=good()))  # arrays take no part in hash and ==
    assert DataOptions(path="a.npz").describe()["path"] == "a.npz"


@pytest.mark.parametrize(
    "given",
    [
        {"input_ids": (8, 128), "mask": [8, 128]},
        [("input_ids", (8, 128)), ("mask", (np.int64(8), 128))],
        ["input_ids:8,128", "mask:8x128"],
    ],
)
def test_shapes_are_parsed_to_pairs(given):
    assert DataOptions(random=True, shapes=given).shapes == (("input_ids", (8, 128)), ("mask", (8, 128)))
    assert DataOptions(random=True, shapes=["input_1:0:1,3"]).shapes == (("input_1:0", (1, 3)),)  # a TF name


@pytest.mark.parametrize(
    "given,match",
    [
        (["input_ids=8,128"], "--shape takes NAME:DIMS .*got 'input_ids=8,128'"),
        (["input_ids:8,a"], "--shape takes NAME:DIMS"),
        (["input_ids:0,128"], "positive sizes"),
        ([":8"], "--shape takes NAME:DIMS"),
        (["x:1", "x:2"], "--shape gives input 'x' twice"),
        ([("x", (1.5,))], "shapes= takes"),
        ([("x", (True,))], "shapes= takes"),
    ],
)
def test_bad_shapes_are_usage_errors(given, match):
    with pytest.raises(UsageError, match=match):
        DataOptions(random=True, shapes=given)


TOKENS = [
    InputSpec("input_ids", np.dtype(np.int64), ("N", "seq")),
    InputSpec("mask", np.dtype(np.float32), ("N", "seq")),
]


def test_random_data_needs_shape_for_dynamic_dims_and_shape_fixes_them():
    with pytest.raises(UsageError, match="dynamic dimension 'seq' at axis 1 .*pass --shape input_ids:DIMS"):
        open_data(DataOptions(random=True), TOKENS)
    # seq fixed on one input fixes it on the other; axis 0 is a fixed batch of 4: runs of exactly 4 samples
    data = open_data(DataOptions(random=True, samples=18, holdout_fraction=0.2, shapes=["input_ids:4,12"]), TOKENS)
    assert (data.total, data.n_fit, data.n_holdout, data.batch_size, data.batched) == (16, 12, 4, 4, False)
    feeds = list(data.batches("all"))
    assert [(f["input_ids"].shape, f["mask"].shape) for f in feeds] == [((4, 12), (4, 12))] * 4
    assert [s.describe() for s in data.specs] == ["int64[4,12] from --shape", "float32[4,12] from --shape"]
    with pytest.raises(UsageError, match="exactly 4 samples .*fewer than that are given \\(3\\)"):
        open_data(DataOptions(random=True, samples=3, shapes=["input_ids:4,12"]), TOKENS)
    with pytest.raises(UsageError, match="unknown rank: .*pass --shape x:DIMS"):
        open_data(DataOptions(random=True), [InputSpec("x", np.dtype(np.float32), None)])
    unknown = open_data(
        DataOptions(random=True, samples=2, shapes={"x": (1, 5)}), [InputSpec("x", np.dtype(np.float32), None)]
    )
    assert [f["x"].shape for f in unknown.batches("all")] == [(1, 5), (1, 5)]


def test_shape_on_a_model_with_whole_feeds_gives_whole_feeds_of_that_shape():
    specs = [
        InputSpec("input", np.dtype(np.float32), ("sequence_length", 576)),
        InputSpec("h", np.dtype(np.float32), (1, 1, 128)),
    ]
    data = open_data(DataOptions(random=True, samples=3, shapes=["input:10,576"]), specs)
    assert [(f["input"].shape, f["h"].shape) for f in data.batches("all")] == [((10, 576), (1, 1, 128))] * 3


@pytest.mark.parametrize(
    "shapes,match",
    [
        (
            ["ids:4,12"],
            "--shape ids:4,12: the model has no input 'ids' \\(its inputs: 'input_ids' int64\\[N,seq\\], 'mask'",
        ),
        (["input_ids:4"], "--shape input_ids:4: input 'input_ids' has rank 2 \\(int64\\[N,seq\\]\\), not 1"),
        (["input_ids:4,12", "mask:4,16"], "--shape gives dimension 'seq' two sizes: 12 \\(input 'input_ids'\\) and 16"),
    ],
)
def test_shapes_that_do_not_fit_the_model(shapes, match):
    with pytest.raises(UsageError, match=match):
        open_data(DataOptions(random=True, shapes=shapes), TOKENS)


def test_shapes_check_file_data_and_fixed_dimensions(tmp_path):
    fixed = [InputSpec("x", np.dtype(np.float32), ("N", 3, 4))]
    with pytest.raises(UsageError, match="--shape x:2,3,5: dimension 2 of 'x' is fixed to 4"):
        open_data(DataOptions(random=True, shapes=["x:2,3,5"]), fixed)
    np.savez(tmp_path / "d.npz", input_ids=np.zeros((8, 10), np.int64), mask=np.ones((8, 10), np.float32))
    with pytest.raises(
        UsageError, match="input 'input_ids': dimension 1 must be 12 \\(int64\\[4,12\\] from --shape\\)"
    ):
        open_data(DataOptions(path=tmp_path / "d.npz", shapes=["input_ids:4,12"]), TOKENS)
    with pytest.raises(UsageError, match="item 0: input 'input_ids': the model's batch is fixed to 4"):
        open_data(
            DataOptions(
                source=[{"input_ids": np.zeros((6, 10), np.int64), "mask": np.ones((6, 10), np.float32)}],
                shapes=["input_ids:4,10"],
            ),
            TOKENS,
        )
    data = open_data(DataOptions(path=tmp_path / "d.npz", shapes=["input_ids:4,10"], holdout_fraction=0.5), TOKENS)
    assert (data.n_fit, data.n_holdout) == (4, 4) and [f["mask"].shape for f in data.batches("all")] == [(4, 10)] * 2


def test_a_fixed_batch_splits_into_whole_batches(tmp_path):
    specs = [InputSpec("x", np.dtype(np.float32), (2, 3))]
    np.savez(tmp_path / "d.npz", x=np.zeros((6, 3), np.float32))
    data = open_data(DataOptions(path=tmp_path / "d.npz"), specs)  # 20% of 3 batches: one batch held out
    assert (data.n_fit, data.n_holdout) == (4, 2)
    assert [f["x"].shape for split in ("fit", "holdout") for f in data.batches(split)] == [(2, 3)] * 3


def _token_model(path):
    """input_ids [N, seq] -> embedding Gather, times mask [N, seq, 1] -> MatMul -> [N, seq, 8]."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((100, 16)).astype(np.float32), "emb"),
        numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32) * 0.3, "W"),
        numpy_helper.from_array(np.array([2], np.int64), "axis"),
    ]
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["e"]),
        helper.make_node("Unsqueeze", ["mask", "axis"], ["m"]),
        helper.make_node("Mul", ["e", "m"], ["x"]),
        helper.make_node("MatMul", ["x", "W"], ["out"]),
    ]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", "seq"]),
        helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", "seq"]),
    ]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", "seq", 8])]
    model = helper.make_model(
        helper.make_graph(nodes, "tokens", inputs, outputs, inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def test_shape_makes_random_data_work_end_to_end(tmp_path):
    path = _token_model(tmp_path / "tokens.onnx")
    with pytest.raises(UsageError, match="random data needs fixed sizes; pass --shape"):
        compress(path, tmp_path, DataOptions(random=True, samples=16))
    report = compress(path, tmp_path, DataOptions(random=True, samples=16, shapes=["input_ids:4,12"]))
    assert report.data["batch_size"] == 4 and (report.data["fit_samples"], report.data["holdout_samples"]) == (12, 4)
    assert [r.name for r in report.layers if r.status == "quantized"]


def invoke(*args):
    return CliRunner().invoke(cli.app, [str(a) for a in args])


def test_shape_on_the_command_line(tmp_path):
    path = _token_model(tmp_path / "tokens.onnx")
    out = tmp_path / "q.onnx"
    r = invoke("compress", path, "-o", out, "--random-data", "--samples", 16, "--shape", "input_ids:4,12", "-q")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "q.report.json").read_text())["options"]["data"]["shapes"] == {"input_ids": [4, 12]}
    np.savez(tmp_path / "d.npz", input_ids=np.ones((8, 12), np.int64), mask=np.ones((8, 12), np.float32))
    r = invoke("compare", path, out, "--data", tmp_path / "d.npz", "--shape", "input_ids:4,12", "-q")
    assert r.exit_code == 0, r.output
    r = invoke("compare", path, out, "--data", tmp_path / "d.npz", "--shape", "input_ids:4,16", "-q")
    assert r.exit_code == 2 and "dimension 1 must be 16 (int64[4,16] from --shape)" in r.output
    ref = ("--reference", path, "--data", tmp_path / "d.npz", "--max-error", 1.0)
    r = invoke("check", out, *ref, "--shape", "input_ids:4,12", "--shape", "mask:4,12", "-q")
    assert r.exit_code in (0, 1) and "error:" not in r.output, r.output
    r = invoke("check", out, *ref, "--shape", "mask:4,16", "-q")
    assert (
        r.exit_code == 2 and "input 'input_ids': dimension 1 must be 16 (int64[4,16] from --shape)" in r.output
    )  # seq, by name
    r = invoke("check", out, "--shape", "input_ids:4,12")
    assert r.exit_code == 2 and "--shape needs --data" in r.output


@pytest.mark.parametrize(
    "shape,message",
    [
        (
            "input_ids=4,12",
            "--shape takes NAME:DIMS with positive sizes, such as input:1,3,224,224; got 'input_ids=4,12'",
        ),
        ("ids:4,12", "--shape ids:4,12: the model has no input 'ids' (its inputs: 'input_ids' int64[N,seq], 'mask'"),
    ],
)
def test_bad_shape_on_the_command_line_exits_2(tmp_path, shape, message):
    path = _token_model(tmp_path / "tokens.onnx")
    r = invoke("compress", path, "-o", tmp_path / "q.onnx", "--random-data", "--shape", shape)
    assert r.exit_code == 2 and message in r.output, r.output
    assert not (tmp_path / "q.onnx").exists()
    r = invoke("compress", path, "--data-free", "--shape", "input_ids:4,12")
    assert r.exit_code == 2 and "--data-free uses no calibration data: drop --shape" in r.output, r.output
