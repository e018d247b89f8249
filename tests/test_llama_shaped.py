"""The generated Llama-shaped decoder (``models.llama_shaped``): a valid external-data model that runs causally
in ONNX Runtime, and that onnxbc compresses."""

import numpy as np
import onnx
import onnxruntime as ort

import onnxbc
from models.llama_shaped import Shape, write
from onnxbc.options import ActivationType, CompressOptions, DataOptions, Device, WeightType

TINY = Shape(hidden=64, layers=2, mlp=128, vocab=256, heads=4)


def test_a_tiny_one_is_valid_causal_and_has_its_parameters(tmp_path):
    path = write(tmp_path / "m.onnx", TINY)
    onnx.checker.check_model(str(path), full_check=True)
    assert (tmp_path / "m.onnx.data").stat().st_size == 4 * TINY.parameters
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(0).integers(0, TINY.vocab, (2, 16))
    logits = session.run(None, {"input_ids": ids})[0]
    assert logits.shape == (2, 16, TINY.vocab) and np.isfinite(logits).all()
    changed = ids.copy()
    changed[:, 10] = (changed[:, 10] + 1) % TINY.vocab
    again = session.run(None, {"input_ids": changed})[0]
    np.testing.assert_array_equal(again[:, :10], logits[:, :10])  # a later token changes no earlier logit
    assert np.abs(again[:, 10:] - logits[:, 10:]).max() > 0


def test_onnxbc_compresses_it_with_external_data(tmp_path):
    path = write(tmp_path / "m.onnx", TINY)
    np.savez(tmp_path / "ids.npz", input_ids=np.random.default_rng(1).integers(0, TINY.vocab, (8, 16)))
    runs = (
        (WeightType.INT8, ActivationType.INT8, 0.01),
        (WeightType.INT4, ActivationType.NONE, 0.1),
    )  # seen: 2e-4, 0.018
    for weights, activations, bound in runs:
        out = tmp_path / f"{weights.value}_{activations.value}.onnx"
        options = CompressOptions(weights=weights, activations=activations, device=Device.CPU, segments=2)
        result = onnxbc.compress(path, out, data=DataOptions(path=tmp_path / "ids.npz"), options=options)
        assert result.report.compensation["output_rel_mse"] < bound
        assert any(f.endswith(".data") for f in result.report.output["files"])  # the input had external data
