"""FileSize prices a choice of quantized weights from the model serialized once: the price equals the bytes of
the model rewritten and serialized with that choice."""

from pathlib import Path

import pytest

from onnxbc import candidates, model_io
from onnxbc.flow import load_prepared, start
from onnxbc.options import CompressOptions, WeightType
from onnxbc.plan import QuantPlan
from onnxbc.progress import Stages
from onnxbc.quantizers import weight_quant
from onnxbc.sizing import FileSize
from onnxbc.targets import find_targets, weight_array

MODEL = Path("models/fashion_cnn.onnx")


def quantize(model, plan):
    return candidates.quantize(model, plan)[0]


@pytest.fixture
def prepared(tmp_path):
    run = start(MODEL, tmp_path / "o.onnx", None, options=CompressOptions(), force=False, stages=Stages(False))
    model = load_prepared(run, 21)
    return model, find_targets(model)


def choice(targets, bits: dict[str, int], block_size: int = 0):
    result = {}
    for name, group in targets.weights.items():
        options = CompressOptions(weights=WeightType.of_bits(bits.get(name, 8)), block_size=block_size)
        result[name] = weight_quant(group, weight_array(group), options)
    return result


def test_price_equals_the_serialized_model(prepared):
    model, targets = prepared
    names = list(targets.weights)
    size = FileSize(model, quantize)
    base = choice(targets, dict.fromkeys(names, 2))
    assert size(base) == model_io.serialized_bytes(quantize(model.clone(), QuantPlan(weights=base)))
    for bits in ({names[0]: 8}, {n: 4 for n in names[1:]}, {names[-1]: 3, names[0]: 4}):
        other = {**base, **choice(targets, bits)}
        expected = model_io.serialized_bytes(quantize(model.clone(), QuantPlan(weights=other)))
        assert size(other) == expected
    # blocks add a block_size attribute and more scales: priced as written too
    blocked = choice(targets, {names[-1]: 4}, block_size=32)
    other = {**base, names[-1]: blocked[names[-1]]}
    assert size(other) == model_io.serialized_bytes(quantize(model.clone(), QuantPlan(weights=other)))


def test_another_set_of_weights_is_refused(prepared):
    model, targets = prepared
    size = FileSize(model, quantize)
    full = choice(targets, {})
    size(full)
    with pytest.raises(ValueError, match="same weights"):
        size(dict(list(full.items())[:1]))
