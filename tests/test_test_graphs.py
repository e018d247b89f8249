"""The test-graph zoo (models/test_graphs.py): every graph is a valid model that onnxruntime runs at two batch
sizes and that agrees with onnx.reference, and each keeps the structure it stands for."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper, version_converter
from onnx.reference import ReferenceEvaluator
from onnx.reference.ops.op_conv_transpose import ConvTranspose as _ReferenceConvTranspose

from models import test_graphs

ALL = test_graphs.names()
BATCH_SIZES = (1, 3)

QUANTIZED_OPS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "ConvInteger",
    "MatMulInteger",
    "MatMulNBits",
}

# onnx.reference implements QuantizeLinear/DequantizeLinear from opset 19 on only: these graphs are compared
# after onnx.version_converter lifts a copy to this opset.
REFERENCE_OPSET = {"quantized_qdq": 21, "quantized_qlinear": 21}

# Per-sample outputs depend on the rest of the batch (DynamicQuantizeLinear picks one scale for the batch).
BATCH_COUPLED = {"quantized_dynamic"}

# The structure each graph stands for: op types counted over the graph and its subgraphs.
EXPECTED_OPS = {
    "conv": {"Conv": 2, "Relu": 1},
    "conv_nobias": {"Conv": 2, "Relu": 1},
    "conv_grouped": {"Conv": 2, "Relu": 1},
    "conv_depthwise": {"Conv": 2, "Relu": 1},
    "conv_transpose": {"ConvTranspose": 2, "Relu": 1},
    "gemm": {"Gemm": 2, "Relu": 1},
    "gemm_nobias": {"Gemm": 1},
    "matmul_add": {"Add": 2, "MatMul": 2, "Relu": 1},
    "matmul_nobias": {"MatMul": 1},
    "attention": {
        "Add": 7,
        "Div": 1,
        "MatMul": 6,
        "Mul": 2,
        "Pow": 1,
        "ReduceMean": 2,
        "Reshape": 4,
        "Softmax": 1,
        "Sqrt": 1,
        "Sub": 1,
        "Transpose": 4,
    },
    "gelu_mlp": {"Add": 3, "Div": 1, "Erf": 1, "MatMul": 2, "Mul": 2},
    "batchnorm_conv": {
        "BatchNormalization": 2,
        "Conv": 2,
        "Flatten": 1,
        "Gemm": 1,
        "GlobalAveragePool": 1,
        "Relu": 2,
    },
    "hardswish_cnn": {
        "Conv": 4,
        "GlobalAveragePool": 1,
        "HardSigmoid": 1,
        "HardSwish": 1,
        "Mul": 1,
        "Relu": 1,
    },
    "constant_weights": {
        "Add": 1,
        "Constant": 4,
        "Conv": 1,
        "Flatten": 1,
        "GlobalAveragePool": 1,
        "MatMul": 1,
        "Relu": 1,
    },
    "if_conv": {"Constant": 2, "Conv": 3, "If": 1, "Relu": 2},
    "loop_matmul": {"Add": 1, "Constant": 2, "Identity": 1, "Loop": 1, "MatMul": 1, "Tanh": 1},
    "external_data": {"Add": 1, "Conv": 2, "Flatten": 1, "MatMul": 1, "Relu": 1},
    "transpose_weight": {"MatMul": 1, "Transpose": 1},
    "tied_embedding": {"Add": 1, "Gather": 1, "MatMul": 2, "Relu": 1, "Transpose": 1},
    "reshape_weight": {"MatMul": 1, "Reshape": 1},
    "shared_weight": {"Add": 1, "MatMul": 2, "Relu": 1},
    "recurrent_state": {"Add": 1, "GRU": 1, "MatMul": 1, "Reshape": 1, "Transpose": 2},
    "lstm": {"Add": 1, "LSTM": 1, "MatMul": 1, "Squeeze": 1, "Transpose": 2},
    "fp16_conv": {"Conv": 2, "Relu": 1},
    "integer_input": {
        "Add": 2,
        "Cast": 1,
        "Concat": 1,
        "Gather": 3,
        "MatMul": 2,
        "Mul": 1,
        "Relu": 1,
        "Reshape": 1,
        "Shape": 1,
        "Unsqueeze": 2,
    },
    "opset11_conv": {"Conv": 2, "Relu": 1},
    "opset13_gemm": {"Gemm": 2, "Relu": 1},
    "multi_output": {"Conv": 2, "Flatten": 1, "Gemm": 1, "GlobalAveragePool": 1, "Relu": 1},
    "concat_conv": {"Concat": 1, "Conv": 3, "Relu": 2},
    "quantized_qdq": {"Conv": 1, "DequantizeLinear": 4, "QuantizeLinear": 2, "Relu": 1},
    "quantized_qlinear": {"DequantizeLinear": 1, "QLinearConv": 1, "QLinearMatMul": 1, "QuantizeLinear": 1},
    "quantized_convinteger": {
        "Add": 1,
        "Cast": 1,
        "ConvInteger": 1,
        "Mul": 1,
        "QuantizeLinear": 1,
        "Relu": 1,
    },
    "quantized_dynamic": {"Add": 1, "Cast": 1, "DynamicQuantizeLinear": 1, "MatMulInteger": 1, "Mul": 2},
    "quantized_matmulnbits": {"Add": 1, "MatMulNBits": 1},
}

# name -> (default-domain opset, IR version) where not (17, 8)
OPSETS = {
    "opset11_conv": (11, 6),
    "opset13_gemm": (13, 7),
    "quantized_qdq": (13, 7),
    "quantized_qlinear": (13, 7),
    "quantized_convinteger": (13, 7),
    "quantized_dynamic": (13, 7),
}


class ConvTranspose(_ReferenceConvTranspose):
    """onnx.reference's ConvTranspose slices the weight on the wrong axis (and not the bias) when group > 1
    (onnx 1.23: "cannot reshape array"; onnx/onnx#8446 fixes part of it): run it group by group."""

    op_domain = ""

    def _run(
        self,
        X,
        W,
        B=None,
        auto_pad=None,
        dilations=None,
        group=None,
        kernel_shape=None,
        output_padding=None,
        output_shape=None,
        pads=None,
        strides=None,
    ):
        attrs = dict(
            auto_pad=auto_pad,
            dilations=dilations,
            kernel_shape=kernel_shape,
            output_padding=output_padding,
            output_shape=output_shape,
            pads=pads,
            strides=strides,
        )
        group = group or 1
        if group == 1:
            return super()._run(X, W, B, group=1, **attrs)
        xs, ws = np.split(X, group, axis=1), np.split(W, group, axis=0)
        bs = np.split(B, group) if B is not None else [None] * group
        parts = [
            super(ConvTranspose, self)._run(x, w, b, group=1, **attrs)[0] for x, w, b in zip(xs, ws, bs, strict=True)
        ]
        return (np.concatenate(parts, axis=1).astype(X.dtype),)


# ------------------------------------------------------------------------------------------------------------
# helpers


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        yield from attr.graphs


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """All nodes of the graph and of its subgraphs, depth first."""
    for node in graph.node:
        yield node
        for sub in _subgraphs(node):
            yield from _nodes(sub)


def _is_contrib(model: onnx.ModelProto) -> bool:
    return any(o.domain not in ("", "ai.onnx") for o in model.opset_import)


def _session(model: onnx.ModelProto | str) -> ort.InferenceSession:
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def _run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return _session(model).run(None, feeds)


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param or None for d in value.type.tensor_type.shape.dim]


def _batch_axis(value: onnx.ValueInfoProto) -> int | None:
    dims = _dims(value)
    return dims.index("N") if "N" in dims else None


def _tolerance(array: np.ndarray) -> float:
    return 1e-2 if array.dtype == np.float16 else 1e-4


def _assert_close(actual: list[np.ndarray], expected: list[np.ndarray], names: list[str]) -> None:
    assert len(actual) == len(expected)
    for a, e, name in zip(actual, expected, names, strict=True):
        assert a.dtype == e.dtype and a.shape == e.shape, name
        tol = _tolerance(a)
        np.testing.assert_allclose(a.astype(np.float64), e.astype(np.float64), rtol=tol, atol=tol, err_msg=name)


# ------------------------------------------------------------------------------------------------------------
# the registry


def test_names_are_the_fixed_list():
    assert sorted(ALL) == sorted(EXPECTED_OPS)
    assert ALL == list(test_graphs.BUILDERS)
    quantized = test_graphs.names(quantized=True)
    assert quantized == [n for n in ALL if n.startswith("quantized_")]
    assert test_graphs.names(quantized=False) == [n for n in ALL if n not in quantized]


def test_unknown_name_says_which_exist():
    with pytest.raises(KeyError, match="known: conv,"):
        test_graphs.build("resnet50")


@pytest.mark.parametrize("name", ALL)
def test_build_is_deterministic(name):
    first, second = test_graphs.build(name), test_graphs.build(name)
    assert first.name == name
    assert first.model.SerializeToString() == second.model.SerializeToString()
    assert first.model is not second.model


@pytest.mark.parametrize("name", ALL)
def test_feeds_are_deterministic_prefix_stable_and_typed(name):
    graph = test_graphs.build(name)
    inputs = {v.name: v for v in graph.model.graph.input}
    big, again, other, small = graph.feeds(3, 0), graph.feeds(3, 0), graph.feeds(3, 1), graph.feeds(1, 0)
    assert set(big) == set(inputs)
    for key, value in inputs.items():
        np.testing.assert_array_equal(big[key], again[key])
        expected_type = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        assert big[key].dtype == expected_type, key
        dims = _dims(value)
        assert big[key].ndim == len(dims), key
        for size, dim in zip(big[key].shape, dims, strict=True):
            assert size == {"N": 3, "T": test_graphs.SEQ_LEN}.get(dim, dim), (key, dims)
        axis = _batch_axis(value)
        if axis is not None:
            np.testing.assert_array_equal(small[key], np.take(big[key], [0], axis=axis))
    assert any(not np.array_equal(big[k], other[k]) for k in big), "seed does not change the feeds"


@pytest.mark.parametrize("name", ALL)
def test_batched_flag(name):
    graph = test_graphs.build(name)
    batch_axes = [_batch_axis(v) for v in graph.model.graph.input]
    assert graph.batched == all(axis == 0 for axis in batch_axes)


# ------------------------------------------------------------------------------------------------------------
# validity and numbers


@pytest.mark.parametrize("name", ALL)
def test_conventions(name):
    model = test_graphs.build(name).model
    opset, ir = OPSETS.get(name, (17, 8))
    assert {o.domain: o.version for o in model.opset_import}[""] == opset
    assert model.ir_version == ir <= 10  # onnxruntime 1.31 rejects IR version 11+
    node_names = [n.name for n in _nodes(model.graph)]
    assert all(node_names), "every node needs a name"
    assert len(set(node_names)) == len(node_names), "node names must be unique"
    assert Counter(n.op_type for n in _nodes(model.graph)) == EXPECTED_OPS[name]


@pytest.mark.parametrize("name", ALL)
def test_checker(name):
    model = test_graphs.build(name).model
    # contrib ops (com.microsoft) have no onnx schema: only the structural check applies
    onnx.checker.check_model(model, full_check=not _is_contrib(model))


@pytest.mark.parametrize("name", ALL)
def test_runs_in_onnxruntime_at_two_batch_sizes(name):
    graph = test_graphs.build(name)
    session = _session(graph.model)
    outputs = {}
    for n in BATCH_SIZES:
        outputs[n] = session.run(None, graph.feeds(n, 0))
        for value, array in zip(graph.model.graph.output, outputs[n], strict=True):
            assert array.dtype == helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type), value.name
            for size, dim in zip(array.shape, _dims(value), strict=True):
                if isinstance(dim, int):
                    assert size == dim, value.name
                elif dim in ("N", "T"):
                    assert size == {"N": n, "T": test_graphs.SEQ_LEN}[dim], value.name
            assert np.isfinite(array.astype(np.float64)).all(), value.name
            assert np.abs(array).max() > 0, value.name
    if name in BATCH_COUPLED:
        return
    # one sample gives the same answer alone and as the first of a batch: no mixing across the batch
    for value, small, big in zip(graph.model.graph.output, outputs[1], outputs[3], strict=True):
        assert _batch_axis(value) is not None, value.name
        first = np.take(big, [0], axis=_batch_axis(value))
        np.testing.assert_allclose(small, first, rtol=_tolerance(small), atol=_tolerance(small), err_msg=value.name)


@pytest.mark.parametrize("name", ALL)
def test_onnxruntime_matches_reference(name):
    graph = test_graphs.build(name)
    if _is_contrib(graph.model):
        pytest.skip("contrib op: onnx.reference does not implement it (see test_matmulnbits_matches_numpy)")
    reference_model = graph.model
    if name in REFERENCE_OPSET:
        reference_model = version_converter.convert_version(graph.model, REFERENCE_OPSET[name])
    reference = ReferenceEvaluator(reference_model, new_ops=[ConvTranspose])
    session = _session(graph.model)
    output_names = [o.name for o in graph.model.graph.output]
    for seed in (0, 1):  # two seeds: if_conv takes each branch once
        feeds = graph.feeds(2, seed)
        _assert_close(session.run(None, feeds), reference.run(None, feeds), output_names)


def test_matmulnbits_matches_numpy():
    """MatMulNBits weights unpacked by hand (low nibble first, zero point 8) give onnxruntime's answer."""
    graph = test_graphs.build("quantized_matmulnbits")
    inits = {t.name: numpy_helper.to_array(t) for t in graph.model.graph.initializer}
    packed, scale = inits["fc.weight_quantized"], inits["fc.weight_scale"]
    n, blocks, _ = packed.shape
    codes = np.stack([packed & 15, packed >> 4], axis=-1).reshape(n, blocks, -1).astype(np.float32)
    weight = ((codes - 8) * scale.reshape(n, blocks, 1)).reshape(n, -1)
    feeds = graph.feeds(2, 0)
    expected = feeds["x"] @ weight.T + inits["fc.bias"]
    np.testing.assert_allclose(_run_ort(graph.model, feeds)[0], expected, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------------------
# save()


@pytest.mark.parametrize("name", ALL)
def test_save_round_trip(name, tmp_path):
    graph = test_graphs.build(name)
    path = test_graphs.save(graph, tmp_path / f"{name}.onnx")
    data = tmp_path / f"{name}.onnx.data"
    assert path == tmp_path / f"{name}.onnx" and path.exists()
    assert data.exists() == graph.external_data
    feeds = graph.feeds(2, 0)
    output_names = [o.name for o in graph.model.graph.output]
    _assert_close(_session(str(path)).run(None, feeds), _run_ort(graph.model, feeds), output_names)
    loaded, original = onnx.load(path).graph, graph.model.graph  # external tensors keep their location fields
    assert (loaded.node, loaded.input, loaded.output) == (original.node, original.input, original.output)
    for got, want in zip(loaded.initializer, original.initializer, strict=True):
        assert got.name == want.name
        np.testing.assert_array_equal(numpy_helper.to_array(got), numpy_helper.to_array(want))
    if not _is_contrib(graph.model):
        onnx.checker.check_model(str(path), full_check=True)


def test_external_data_puts_every_weight_outside(tmp_path):
    graph = test_graphs.build("external_data")
    assert graph.external_data
    before = graph.model.SerializeToString()
    path = test_graphs.save(graph, tmp_path / "model.onnx")
    assert graph.model.SerializeToString() == before, "save() must not move weights out of the caller's model"
    skeleton = onnx.load(path, load_external_data=False)
    assert skeleton.graph.initializer
    for tensor in skeleton.graph.initializer:
        assert tensor.data_location == onnx.TensorProto.EXTERNAL, tensor.name
        assert {e.key: e.value for e in tensor.external_data}["location"] == "model.onnx.data"
    weight_bytes = sum(numpy_helper.to_array(t).nbytes for t in graph.model.graph.initializer)
    assert (tmp_path / "model.onnx.data").stat().st_size >= weight_bytes
    assert path.stat().st_size < weight_bytes


def test_saving_twice_rewrites_the_data_file(tmp_path):
    graph = test_graphs.build("external_data")
    data = tmp_path / "model.onnx.data"
    test_graphs.save(graph, tmp_path / "model.onnx")
    size = data.stat().st_size
    test_graphs.save(graph, tmp_path / "model.onnx")
    assert data.stat().st_size == size  # onnx alone would append a second copy
    feeds = graph.feeds(2, 0)
    _assert_close(_session(str(tmp_path / "model.onnx")).run(None, feeds), _run_ort(graph.model, feeds), ["y"])


# ------------------------------------------------------------------------------------------------------------
# the patterns the graphs stand for


@pytest.mark.parametrize("name", ALL)
def test_quantized_flag_matches_the_ops(name):
    graph = test_graphs.build(name)
    ops = {n.op_type for n in _nodes(graph.model.graph)}
    assert graph.quantized == bool(ops & QUANTIZED_OPS)


@pytest.mark.parametrize("name", [n for n in ALL if not n.startswith("quantized_")])
def test_float_weights_have_realistic_scales(name):
    graph = test_graphs.build(name)
    tensors = [*graph.model.graph.initializer]
    tensors += [a.t for n in _nodes(graph.model.graph) for a in n.attribute if a.type == onnx.AttributeProto.TENSOR]
    tensors += [t for n in _nodes(graph.model.graph) for g in _subgraphs(n) for t in g.initializer]
    float_type = np.float16 if name == "fp16_conv" else np.float32
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    weights = [numpy_helper.to_array(t) for t in tensors if t.data_type in floats and len(t.dims) >= 1]
    assert weights
    for w in weights:
        assert w.dtype == float_type
        assert np.isfinite(w).all() and np.count_nonzero(w) == w.size  # biases too are nonzero
        assert 1e-3 < np.abs(w.astype(np.float64)).mean() < 3.0


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output}


def _consumers(graph: onnx.GraphProto, value: str) -> list[onnx.NodeProto]:
    return [n for n in _nodes(graph) if value in n.input]


def _initializer_names(graph: onnx.GraphProto) -> set[str]:
    return {t.name for t in graph.initializer}


def test_attention_has_four_weight_and_two_activation_matmuls():
    graph = test_graphs.build("attention").model.graph
    inits = _initializer_names(graph)
    matmuls = [n for n in graph.node if n.op_type == "MatMul"]
    assert sum(n.input[1] in inits for n in matmuls) == 4
    assert sum(n.input[0] not in inits and n.input[1] not in inits for n in matmuls) == 2


@pytest.mark.parametrize("name", ["conv_nobias", "gemm_nobias", "matmul_nobias"])
def test_nobias_graphs_have_no_bias(name):
    graph = test_graphs.build(name).model.graph
    assert all(len(n.input) == 2 for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul"))
    assert not any(n.op_type == "Add" for n in graph.node)


def test_gemm_has_nondefault_alpha_and_beta():
    for name in ("gemm", "opset13_gemm"):
        gemms = [n for n in test_graphs.build(name).model.graph.node if n.op_type == "Gemm"]
        attrs = [{a.name: helper.get_attribute_value(a) for a in n.attribute} for n in gemms]
        assert {"alpha": 0.5, "beta": 2.0, "transB": 0} in attrs


def test_group_attributes():
    def groups(name):
        model = test_graphs.build(name).model
        nodes = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]
        return [helper.get_attribute_value(next(a for a in n.attribute if a.name == "group")) for n in nodes]

    assert groups("conv_grouped") == [2, 2]
    assert groups("conv_depthwise") == [8, 1]
    assert groups("conv_transpose") == [1, 2]


def test_constant_weights_are_constant_nodes():
    graph = test_graphs.build("constant_weights").model.graph
    assert not graph.initializer
    producers = _producers(graph)
    for node in graph.node:
        if node.op_type in ("Conv", "MatMul", "Add"):
            assert producers[node.input[1]].op_type == "Constant", node.name
    conv = next(n for n in graph.node if n.op_type == "Conv")
    assert producers[conv.input[2]].op_type == "Constant"


def test_if_branches_hold_their_weights():
    graph = test_graphs.build("if_conv").model.graph
    if_node = next(n for n in graph.node if n.op_type == "If")
    branches = {a.name: a.g for a in if_node.attribute}
    then_conv = next(n for n in branches["then_branch"].node if n.op_type == "Conv")
    else_conv = next(n for n in branches["else_branch"].node if n.op_type == "Conv")
    assert then_conv.input[0] == else_conv.input[0] == "x"  # from the outer scope
    assert {then_conv.input[1], then_conv.input[2]} <= _initializer_names(branches["then_branch"])
    else_producers = _producers(branches["else_branch"])
    assert else_producers[else_conv.input[1]].op_type == "Constant"
    assert [i.name for i in graph.input] == ["x", "use_a"]


def test_loop_body_captures_its_weight_from_outside():
    graph = test_graphs.build("loop_matmul").model.graph
    loop = next(n for n in graph.node if n.op_type == "Loop")
    body = next(_subgraphs(loop))
    matmul = next(n for n in body.node if n.op_type == "MatMul")
    assert not body.initializer
    assert matmul.input[1] in _initializer_names(graph)
    trips = _producers(graph)[loop.input[0]]
    assert trips.op_type == "Constant" and numpy_helper.to_array(trips.attribute[0].t) == 3


@pytest.mark.parametrize(("name", "op_type"), [("transpose_weight", "Transpose"), ("reshape_weight", "Reshape")])
def test_weight_reached_through_a_shape_op(name, op_type):
    graph = test_graphs.build(name).model.graph
    matmul = next(n for n in graph.node if n.op_type == "MatMul")
    producer = _producers(graph)[matmul.input[1]]
    assert producer.op_type == op_type and producer.input[0] in _initializer_names(graph)


def test_tied_embedding_shares_one_table():
    graph = test_graphs.build("tied_embedding").model.graph
    users = _consumers(graph, "embed.weight")
    assert sorted(n.op_type for n in users) == ["Gather", "Transpose"]
    transpose = next(n for n in users if n.op_type == "Transpose")
    assert [n.op_type for n in _consumers(graph, transpose.output[0])] == ["MatMul"]


def test_shared_weight_feeds_two_matmuls():
    graph = test_graphs.build("shared_weight").model.graph
    (weight,) = graph.initializer
    assert [n.op_type for n in _consumers(graph, weight.name)] == ["MatMul", "MatMul"]


def test_integer_input_keeps_an_integer_shape_path():
    graph = test_graphs.build("integer_input").model.graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    reshape = next(n for n in graph.node if n.op_type == "Reshape")
    assert _producers(graph)[reshape.input[1]].op_type == "Concat"
    assert [n.op_type for n in _consumers(graph, "ids")] == ["Cast", "Shape"]


def test_recurrent_state_is_an_input_and_an_output():
    graph = test_graphs.build("recurrent_state").model.graph
    gru = next(n for n in graph.node if n.op_type == "GRU")
    assert gru.input[5] == "h0" and gru.output[1] == "h_n"
    assert [o.name for o in graph.output] == ["y", "h_n"]


def test_fp16_conv_is_float16_throughout():
    model = test_graphs.build("fp16_conv").model
    values = [*model.graph.input, *model.graph.output]
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for v in values)
    assert all(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)


def test_multi_output_names():
    graph = test_graphs.build("multi_output").model.graph
    assert [i.name for i in graph.input] == ["x"]
    assert [o.name for o in graph.output] == ["logits", "aux"]


def test_concat_branches_have_different_ranges():
    graph = test_graphs.build("concat_conv")
    model = graph.model
    concat = next(n for n in model.graph.node if n.op_type == "Concat")
    extended = onnx.ModelProto()
    extended.CopyFrom(model)
    extended.graph.output.extend(helper.make_empty_tensor_value_info(v) for v in concat.input)
    *_, a, b = _run_ort(extended, graph.feeds(4, 0))
    assert b.max() > 2 * a.max()
