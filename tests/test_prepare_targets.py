"""Prepare passes and target discovery on graphs as they are found in the wild."""

import pytest

from models import test_graphs
from onnxbc import model_io
from onnxbc.errors import OnnxbcError
from onnxbc.flow import refuse_quantized
from onnxbc.passes.prepare import RaiseOpsetPass, prepare_passes, quantized_nodes
from onnxbc.targets import find_targets


def prepared(tmp_path, name, opset=13):
    path = test_graphs.save(test_graphs.build(name), tmp_path / f"{name}.onnx")
    return prepare_passes(opset)(model_io.load(path)).model


def by_name(targets):
    return {t.name: t for t in targets.targets}


@pytest.mark.parametrize("name", test_graphs.names(quantized=True))
def test_quantized_models_are_refused(tmp_path, name):
    model = model_io.load(test_graphs.save(test_graphs.build(name), tmp_path / f"{name}.onnx"))
    assert quantized_nodes(model)
    with pytest.raises(OnnxbcError, match="already quantized .*needs the float model"):
        refuse_quantized(model, tmp_path / f"{name}.onnx")


@pytest.mark.parametrize("name", test_graphs.names(quantized=False))
def test_float_models_are_not_refused(tmp_path, name):
    model = model_io.load(test_graphs.save(test_graphs.build(name), tmp_path / f"{name}.onnx"))
    assert quantized_nodes(model) == []


def test_opset_raised_when_needed(tmp_path):
    model = prepared(tmp_path, "opset11_conv", opset=13)
    assert model.opset_imports[""] == 13
    model = prepared(tmp_path, "conv", opset=21)
    assert model.opset_imports[""] == 21
    assert not RaiseOpsetPass(13)(model).modified  # never lowered


def test_constant_weights_are_lifted_and_quantizable(tmp_path):
    model = prepared(tmp_path, "constant_weights")
    assert not [n for n in model.graph if n.op_type == "Constant"]
    targets = find_targets(model)
    assert {t.op for t in targets.targets} == {"Conv", "MatMul"}
    assert not targets.skipped


def test_expected_targets_per_layer_kind(tmp_path):
    t = find_targets(prepared(tmp_path, "attention"))
    kinds = sorted(x.kind for x in t.targets)
    assert kinds.count("weighted") == 4 and kinds.count("activation_matmul") == 2
    t = find_targets(prepared(tmp_path, "conv_transpose"))
    assert all(x.weight.channel_axis == 1 for x in t.targets)  # ConvTranspose weights: [I, O/g, k, k]
    t = find_targets(prepared(tmp_path, "gemm"))
    axes = sorted((x.node.attributes.get_int("transB", 0), x.weight.channel_axis) for x in t.targets)
    assert axes == [(0, 1), (1, 0)]


def test_weights_through_transpose_and_reshape(tmp_path):
    [t] = find_targets(prepared(tmp_path, "transpose_weight")).targets
    assert [n.op_type for n in t.weight.chain] == ["Transpose"]
    assert t.weight.channel_axis == 0 and t.weight.input_axis == 1  # W[16,32] is read as W^T
    [t] = find_targets(prepared(tmp_path, "reshape_weight")).targets
    assert t.weight.source.const_value.shape == (4, 8, 16) and t.weight.channel_axis == 2
    assert t.weight.input_axis is None  # the input axis is two source axes merged: no blocks


def test_tied_embedding_is_one_group_with_its_gather(tmp_path):
    targets = find_targets(prepared(tmp_path, "tied_embedding"))
    groups = [g for g in targets.weights.values() if g.gathers]
    assert len(groups) == 1 and groups[0].channel_axis == 0
    assert [t.name for t in groups[0].targets] == [t.name for t in targets.targets if t.weight.chain]


def test_shared_weight_is_quantized_once(tmp_path):
    targets = find_targets(prepared(tmp_path, "shared_weight"))
    assert len(targets.targets) == 2 and len(targets.weights) == 1


def test_subgraph_layers_get_weights_only_with_a_note(tmp_path):
    targets = find_targets(prepared(tmp_path, "if_conv"))
    inner = [t for t in targets.targets if t.in_subgraph]
    assert len(inner) == 2
    assert all(t.activation_inputs == () and "subgraph" in t.notes[0] for t in inner)
    loop = find_targets(prepared(tmp_path, "loop_matmul"))
    assert loop.targets and all(t.in_subgraph for t in loop.targets)


def test_every_candidate_left_float_has_a_reason(tmp_path):
    targets = find_targets(prepared(tmp_path, "lstm"))  # W and R quantized weight-only (tests/test_recurrent.py)
    assert not targets.skipped and by_name(targets)["lstm"].activation_inputs == ()
    targets = find_targets(prepared(tmp_path, "attention"), quantize_attention=False)
    assert len(targets.skipped) == 2 and all("left float" in s.reason for s in targets.skipped)
    for name in test_graphs.names(quantized=False):
        for s in find_targets(prepared(tmp_path, name)).skipped:
            assert s.reason and s.name, (name, s)
