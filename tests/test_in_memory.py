"""compress, check and compare_models take a model in memory (onnx.ModelProto, onnx_ir.Model, onnx-graphsurgeon
Graph) and give the quantized model back in the same kind, with the same numbers as the file-based run."""

import os
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnx_ir as ir
import onnxruntime as ort
import pytest

import onnxbc
from onnxbc import model_io
from onnxbc.options import CheckOptions, DataOptions, Target

ROOT = Path(__file__).resolve().parents[1]
MODEL = str(ROOT / "models" / "fashion_cnn.onnx")
DATA = DataOptions(path=ROOT / "models" / "data" / "fashion_calib.npz")
EVAL_PATH = ROOT / "models" / "data" / "fashion_eval.npz"
EVAL = np.load(EVAL_PATH)


def as_proto(model):
    if isinstance(model, ir.Model):
        return ir.serde.serialize_model(model)
    if isinstance(model, gs.Graph):
        return gs.export_onnx(model)
    return model


KINDS = {
    "proto": lambda: onnx.load(MODEL),
    "onnx_ir": lambda: ir.load(MODEL),
    "graphsurgeon": lambda: gs.import_onnx(onnx.load(MODEL)),
}


@pytest.fixture(scope="module")
def from_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("file") / "cnn.int8.onnx"
    return onnxbc.compress(MODEL, out, data=DATA)


@pytest.mark.parametrize("kind", list(KINDS))
def test_compress_in_memory_matches_the_file_run(kind, from_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = KINDS[kind]()
    before = as_proto(model).SerializeToString()
    result = onnxbc.compress(model, data=DATA)
    assert type(result.model) is type(model) and result.output is None and result.report_path is None
    assert os.listdir(tmp_path) == []  # nothing written
    assert as_proto(model).SerializeToString() == before  # the caller's model is not changed
    assert result.report.input["path"].startswith("<") and result.report.output["path"] is None
    assert result.report.compensation == from_file.report.compensation
    assert result.report.outputs == from_file.report.outputs
    proto = as_proto(result.model)
    onnx.checker.check_model(proto)
    written = onnx.load(from_file.output)
    assert [n.op_type for n in proto.graph.node] == [n.op_type for n in written.graph.node]
    feeds = {"input": EVAL["input"][:16]}
    ours = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    theirs = ort.InferenceSession(str(from_file.output), providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_array_equal(ours[0], theirs[0])


def test_in_memory_with_output_and_report_paths(tmp_path):
    report = tmp_path / "only.report.json"
    alone = onnxbc.compress(onnx.load(MODEL), data=DATA, report=report)
    assert alone.report_path == report and report.exists() and os.listdir(tmp_path) == ["only.report.json"]
    written = onnxbc.compress(onnx.load(MODEL), tmp_path / "q.onnx", data=DATA)
    assert written.output.exists() and (tmp_path / "q.report.json").exists()
    assert isinstance(written.model, onnx.ModelProto)
    assert model_io.serialized_bytes(ir.serde.deserialize_model(written.model)) == written.report.output["bytes"]


def test_data_free_in_memory():
    result = onnxbc.compress(
        onnx.load(ROOT / "models" / "fashion_cnn_bn.onnx"),
        options=onnxbc.CompressOptions(data_free=True, weights=onnxbc.WeightType.INT4),
    )
    assert isinstance(result.model, onnx.ModelProto)
    assert any(n.op_type == "DequantizeLinear" for n in result.model.graph.node)


def test_check_and_compare_in_memory():
    result = onnxbc.compress(ir.load(MODEL), data=DATA)
    report = onnxbc.check(result.model, CheckOptions(target=Target.ONNXRUNTIME))
    assert report.passed and report.model == "<onnx_ir.Model in memory>"
    gated = onnxbc.check(
        as_proto(result.model),
        CheckOptions(reference=onnx.load(MODEL), data=DataOptions(path=EVAL_PATH), max_error=1e-3),
    )
    assert gated.passed
    float_model = onnxbc.check(gs.import_onnx(onnx.load(MODEL)))
    assert any(r.rule.id == "model.quantized" and r.status.value == "warned" for r in float_model.results)
    comparison = onnxbc.compare_models(onnx.load(MODEL), result.model, DataOptions(path=EVAL_PATH))
    assert comparison.sessions["default"]["logits"].as_dict()["rel_mse"] < 1e-3


def test_weights_too_big_for_one_proto(monkeypatch):
    """An onnx_ir model past protobuf's limit keeps working (sessions read it through external data files);
    handing it back as one ModelProto is a clear error."""
    monkeypatch.setattr(model_io, "PROTO_LIMIT_BYTES", 100_000)  # the CNN's weights are 1.7 MB
    result = onnxbc.compress(ir.load(MODEL), data=DATA)
    assert isinstance(result.model, ir.Model)
    with pytest.raises(onnxbc.OnnxbcError, match="too big for one ModelProto"):
        onnxbc.compress(onnx.load(MODEL), data=DATA)


def test_not_a_model():
    with pytest.raises(onnxbc.UsageError, match="a model is a path, an onnx.ModelProto"):
        onnxbc.compress(42, data=DATA)


class Reader:
    """ONNX Runtime's CalibrationDataReader protocol."""

    def __init__(self, x):
        self.items = iter([{"input": x[i : i + 5]} for i in range(0, len(x), 5)])

    def get_next(self):
        return next(self.items, None)


SAMPLES = np.load(ROOT / "models" / "data" / "fashion_calib.npz")["input"][:40]
DATA_KINDS = {
    "dict": lambda: {"input": SAMPLES},
    "generator": lambda: ({"input": SAMPLES[i : i + 3]} for i in range(0, 40, 3)),
    "reader": lambda: Reader(SAMPLES),
}


@pytest.mark.parametrize("kind, data_kind", [("proto", "dict"), ("onnx_ir", "generator"), ("graphsurgeon", "reader")])
def test_model_and_data_in_memory_match_the_files(kind, data_kind, tmp_path):
    """A model in memory calibrated on samples in memory: the same report numbers as the model file calibrated
    on an .npz of the same samples."""
    np.savez(tmp_path / "same.npz", input=SAMPLES)
    files = onnxbc.compress(MODEL, tmp_path / "f.onnx", data=DataOptions(path=tmp_path / "same.npz"))
    memory = onnxbc.compress(KINDS[kind](), data=DATA_KINDS[data_kind]())
    for section in ("compensation", "outputs", "smoothing", "weight_ranges", "precision"):
        assert getattr(memory.report, section) == getattr(files.report, section), section
    assert [r.error for r in memory.report.layers] == [r.error for r in files.report.layers]


def test_a_compress_that_fails_leaves_the_callers_proto_as_it_was():
    """The working copy of a ModelProto reads its weights from the caller's message without copying them; renaming
    a weight there (the float weights the QDQ pass quantizes become ``<name>_float``) must not rename the caller's:
    a compress that fails after its candidates are built (here: no candidate fits --max-size) left the caller's
    initializers renamed, and the proto broken."""
    model = onnx.load(MODEL)
    before = model.SerializeToString()
    with pytest.raises(onnxbc.UsageError, match="--max-size"):
        onnxbc.compress(model, data=DATA, options=onnxbc.CompressOptions(max_size=30_000))
    assert model.SerializeToString() == before
