"""Segment-wise calibration (``collect(..., segments=N)``): the graph is cut where few tensors cross, each
segment runs in its own session over every batch, and every probe's statistics equal the whole-graph run's."""

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxbc.calibration import collector, footprint, memory, segmented, segments
from onnxbc.calibration.collector import collect
from onnxbc.calibration.data import input_specs, open_data
from onnxbc.calibration.probes import LayerErrorProbe, MomentsProbe, OutputPowerProbe, PairedErrorProbe, RangeProbe
from onnxbc.calibration.session import SessionFactory
from onnxbc.calibration.stash import Stash
from onnxbc.errors import OnnxbcError
from onnxbc.options import CompressOptions, DataOptions, Device, WeightType
from onnxbc.passes.graph_utils import pair_models
from onnxbc.plan import QuantPlan, WeightQuant
from onnxbc.quantizers import activation_quant
from onnxbc.solvers.gptq import SecondMoments
from onnxbc.solvers.quant import INT4, Granularity, quantize, weight_scale
from onnxbc.targets import find_targets

D, T = 16, 8
RNG = np.random.default_rng(0)


class _Graph:
    """Nodes and initializers of one test graph, named by block."""

    def __init__(self):
        self.nodes, self.inits = [], []

    def weight(self, name, shape):
        w = (RNG.standard_normal(shape) * np.sqrt(2 / np.prod(shape[1:] if len(shape) > 2 else shape[:1]))).astype(
            np.float32
        )
        self.inits.append(numpy_helper.from_array(w, name))
        return name

    def const(self, name, array):
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op, inputs, name, **attrs):
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def model(self, inputs, outputs, *, infer):
        """The model; with ``infer``, every value typed by onnx's shape inference (else only the inputs are)."""
        graph = helper.make_graph(self.nodes, "g", inputs, outputs, self.inits)
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
        return ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(proto) if infer else proto)


def transformer(blocks=3):
    """Pre-norm single-head blocks over x[N, T, D]; every block reads the graph input ``mask[N, T]`` itself.
    Every value is typed (``resnet``'s are not: segments then type their boundary inputs from the arrays)."""
    g = _Graph()
    g.const("one", np.float32(1))
    g.const("big", np.float32(-1e4))
    g.const("axes", np.array([1], np.int64))
    g.const("scale", np.float32(1 / np.sqrt(D)))
    h = "x"
    for b in range(blocks):
        p = f"b{b}_"
        n = g.op(
            "LayerNormalization",
            [h, g.const(p + "gamma", np.ones(D, np.float32)), g.const(p + "beta", np.zeros(D, np.float32))],
            p + "ln",
            axis=-1,
        )
        q, k, v = (g.op("MatMul", [n, g.weight(p + f"W{c}", (D, D))], p + c) for c in "qkv")
        scores = g.op("MatMul", [q, g.op("Transpose", [k], p + "kt", perm=[0, 2, 1])], p + "scores")
        scaled = g.op("Mul", [scores, "scale"], p + "scaled")
        bias = g.op(
            "Mul", [g.op("Sub", ["one", g.op("Unsqueeze", ["mask", "axes"], p + "m")], p + "inv"), "big"], p + "bias"
        )
        attn = g.op("Softmax", [g.op("Add", [scaled, bias], p + "masked")], p + "attn", axis=-1)
        o = g.op("MatMul", [g.op("MatMul", [attn, v], p + "ctx"), g.weight(p + "Wo", (D, D))], p + "o")
        h = g.op("Add", [h, o], p + "res1")
        up = g.op("Relu", [g.op("MatMul", [h, g.weight(p + "W1", (D, 2 * D))], p + "up")], p + "act")
        h = g.op("Add", [h, g.op("MatMul", [up, g.weight(p + "W2", (2 * D, D))], p + "down")], p + "out")
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", T, D]),
        helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", T]),
    ]
    return g.model(inputs, [helper.make_tensor_value_info(h, TensorProto.FLOAT, None)], infer=True)


def resnet(stages=2, blocks=2):
    """Stages of residual blocks (conv-relu-conv + skip, relu), a strided conv between stages; 8 channels."""
    g = _Graph()
    h, c = g.op("Relu", [g.op("Conv", ["x", g.weight("stem_W", (8, 3, 3, 3))], "stem", pads=[1] * 4)], "stem_relu"), 8
    for s in range(stages):
        for b in range(blocks):
            p = f"s{s}b{b}_"
            a = g.op("Relu", [g.op("Conv", [h, g.weight(p + "W1", (c, c, 3, 3))], p + "c1", pads=[1] * 4)], p + "r1")
            y = g.op("Conv", [a, g.weight(p + "W2", (c, c, 3, 3))], p + "c2", pads=[1] * 4)
            h = g.op("Relu", [g.op("Add", [y, h], p + "add")], p + "out")
        if s < stages - 1:
            h = g.op(
                "Relu",
                [g.op("Conv", [h, g.weight(f"down{s}_W", (c, c, 3, 3))], f"down{s}", pads=[1] * 4, strides=[2, 2])],
                f"down{s}_relu",
            )
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    return g.model([x], [helper.make_tensor_value_info(h, TensorProto.FLOAT, None)], infer=False)


def _data(tmp_path, model, samples=10, batch_size=4, holdout=0.3):
    feeds = {}
    for spec in input_specs(model):
        shape = (samples, *spec.shape[1:])
        feeds[spec.name] = (
            (RNG.random(shape) > 0.3).astype(np.float32)
            if spec.name == "mask"
            else RNG.standard_normal(shape).astype(np.float32)
        )
    np.savez(tmp_path / "d.npz", **feeds)
    options = DataOptions(path=tmp_path / "d.npz", holdout_fraction=holdout, batch_size=batch_size)
    return open_data(options, input_specs(model))


def _plan(model, ranges):
    """Int4 weights and int8 inputs (from the pass-1 histograms) for every layer."""
    plan = QuantPlan()
    for t in find_targets(model).targets:
        if t.weight is not None:
            w = t.weight.source.const_value.numpy()
            gran = Granularity(t.weight.channel_axis)
            s = weight_scale(w, INT4, gran, "minmax")
            plan.weights[t.weight.source.name] = WeightQuant(
                t.weight.source.name, quantize(w, s, INT4, gran), s, gran, 4, "minmax"
            )
        for i in t.activation_inputs:
            name = t.node.inputs[i].name
            if name in ranges:
                plan.activations[name] = activation_quant(
                    name, ranges[name].hist, ranges[name].dtype, CompressOptions()
                )
    return plan


def _pass_one(model):
    targets = find_targets(model).targets
    layers = [t for t in targets if t.weight is not None]
    inputs = {t.node.inputs[i].name for t in targets for i in t.activation_inputs}
    ranges = [
        RangeProbe(name, -1 if model.graph.inputs[0].shape.rank() == 3 else 1, channel_histograms=True)
        for name in sorted(inputs)
    ]
    moments = [
        MomentsProbe(t.node.inputs[0].name, D)
        for t in layers
        if t.op == "MatMul" and t.weight.source.const_value.shape[0] == D
    ]
    return ranges + moments + [OutputPowerProbe(t) for t in layers]


def _state(probe):
    """Every number a probe gathered, by path (its target and plan left out, and ``_batch_max``: the last batch's,
    which a sharded run sees in another order)."""
    found = {}

    def walk(path, x):
        if isinstance(x, SecondMoments) and x.count:  # parked in files once gathered
            found[f"{path}.matrix"] = x.matrix()
        if isinstance(x, dict):
            for k, v in x.items():
                walk(f"{path}[{k}]", v)
        elif hasattr(x, "__dict__") and not isinstance(x, (np.ndarray, np.dtype)):
            for k, v in vars(x).items():
                if k not in ("target", "plan", "_store", "_batch_max"):
                    walk(f"{path}.{k}", v)
        elif isinstance(x, (np.ndarray, np.generic, int, float)):
            found[path] = np.asarray(x)

    walk("", probe)
    return found


def _assert_same(whole, parts):
    for a, b in zip(whole, parts):
        sa, sb = _state(a), _state(b)
        assert sa.keys() == sb.keys()
        for key in sa:
            if np.issubdtype(sa[key].dtype, np.integer):
                np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)
            else:
                np.testing.assert_allclose(sa[key], sb[key], rtol=1e-5, atol=1e-6, err_msg=key)


def _unpacked(options) -> bool:
    """Whether ONNX Runtime session ``options`` turn repacking the weights off."""
    try:
        return options.get_session_config_entry("session.disable_prepacking") == "1"
    except Exception:  # onnxruntime raises where the entry is not set
        return False


def _collect(model, make, data, segments=None, made_once=True):
    """The probes ``make`` gives, collected; checks that each segment's session holds only its own weights, and
    does not repack them (a second copy: ``SessionFactory.create_from``) where the graph is cut; and with
    ``made_once`` that each session is made once (runs sized by shape inference, not by a trial run)."""
    probes, factory, made, packed, calls = make(), SessionFactory(Device.CPU), {}, set(), []
    real = factory.create

    def create(sub, **kwargs):
        calls.append(sub.graph.name)
        made.setdefault(sub.graph.name, set(sub.graph.initializers))
        session = real(sub, **kwargs)
        packed.add(not _unpacked(session.get_session_options()))
        return session

    factory.create = create
    collect(model, probes, data, factory, splits=("fit", "holdout"), segments=segments)
    assert len(made) == (segments or 1)
    assert (len(calls) == len(made)) is made_once
    assert packed == {not segments}
    weights = {v.name for v in model.graph.initializers.values() if v.const_value.size > D}
    assert all(weights - m for m in made.values()) if segments else made["g"] >= weights
    return probes


@pytest.mark.parametrize("build", [transformer, resnet])
@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize("budget", [None, 2000])
def test_segments_give_the_statistics_of_the_whole_graph(tmp_path, monkeypatch, build, count, budget):
    """Pass 1 (channel histograms, GPTQ moments, output power) and pass 2 (shadow errors) equal the whole-graph
    run: histogram counts exactly, sums to float tolerance; also with batches split into several runs."""
    if budget:
        monkeypatch.setattr(collector, "FETCH_BUDGET_BYTES", budget)
    model = build()
    data = _data(tmp_path, model)
    whole = _collect(model, lambda: _pass_one(model), data)
    assert whole[0].hist.counts.sum() > 0
    parked = any(".matrix" in key for p in whole for key in _state(p))  # GPTQ moments compared (parked in files)
    assert parked is (build is transformer)
    _assert_same(whole, _collect(model, lambda: _pass_one(model), data, segments=count))
    plan = _plan(model, {p.value: p for p in whole if isinstance(p, RangeProbe)})
    assert plan.activations
    layers = [t for t in find_targets(model).targets if t.weight is not None]
    shadows = lambda: [LayerErrorProbe(t, plan) for t in layers]  # noqa: E731
    errors = _collect(model, shadows, data)
    assert errors[0].moments["holdout"].count > 0
    _assert_same(errors, _collect(model, shadows, data, segments=count))


def test_runs_sized_by_a_trial_run_where_shape_inference_cannot_size_them(tmp_path, monkeypatch):
    """Fetched tensors that shape inference does not size: the whole graph runs one sample first, the segments
    one sample through each (their sessions made twice); runs split alike, statistics equal."""
    monkeypatch.setattr(collector, "FETCH_BUDGET_BYTES", 2000)
    monkeypatch.setattr(footprint, "peak_and_output_bytes", lambda *args: None)
    model = transformer()
    data = _data(tmp_path, model)
    whole = _collect(model, lambda: _pass_one(model), data, made_once=True)  # the whole graph's trial: same session
    _assert_same(whole, _collect(model, lambda: _pass_one(model), data, segments=3, made_once=False))


def test_paired_errors_of_a_float_and_perturbed_model(tmp_path):
    """Sequential compensation's graph (the float model beside another, ``pair_models``) gives the same
    paired errors cut into three segments."""
    model = transformer()
    other = model.clone()
    for v in other.graph.initializers.values():
        a = v.const_value.numpy()
        if a.ndim == 2:
            v.const_value = ir.tensor(a + 0.01 * RNG.standard_normal(a.shape).astype(np.float32), name=v.name)
    paired = pair_models(model, other, "q/")
    data = _data(tmp_path, model)
    layers = [t for t in find_targets(paired).targets if t.weight is not None and not t.name.startswith("q/")]
    make = lambda: [PairedErrorProbe(t, "q/") for t in layers]  # noqa: E731
    whole = _collect(paired, make, data)
    assert whole[-1].moments["fit"].mse() > 0
    _assert_same(whole, _collect(paired, make, data, segments=3))


def _ordered(model, count):
    nodes = list(model.graph)
    cuts = segments.find_cuts(nodes, count)
    return nodes, cuts


def test_a_chain_of_blocks_is_cut_between_blocks():
    """Six equal transformer blocks in three segments: two blocks each, cut right after a block's output."""
    model = transformer(blocks=6)
    nodes, cuts = _ordered(model, 3)
    assert [nodes[p - 1].name for p in cuts] == ["b1_out", "b3_out"]


def _matmul_chain(count: int) -> list[ir.Node]:
    """The nodes of ``count`` MatMuls in a chain, each reading a ``[D, D]`` weight."""
    g = _Graph()
    h = "x"
    for i in range(count):
        h = g.op("MatMul", [h, g.weight(f"W{i}", (D, D))], f"mm{i}")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", D])
    return list(g.model([x], [helper.make_tensor_value_info(h, TensorProto.FLOAT, None)], infer=True).graph)


def test_never_more_segments_than_asked_and_none_over_the_share():
    """Three equal weights asked into two segments (no even split exists): two segments, not three. Six blocks
    asked into four: four segments, none reading more than 1.25 times an even share."""
    assert len(segments.find_cuts(_matmul_chain(3), 2)) == 1
    nodes, cuts = _ordered(transformer(blocks=6), 4)
    assert len(cuts) == 3
    weights = [
        sum(v.const_value.nbytes for v in {v for n in nodes[a:b] for v in n.inputs if v.is_initializer()})
        for a, b in zip([0, *cuts], [*cuts, len(nodes)])
    ]
    assert max(weights) <= 1.25 * sum(weights) / 4


def test_a_residual_network_is_not_cut_inside_a_block():
    """Along a residual branch the skip tensor crosses beside it: every cut crosses one tensor, after a
    block, never the branch and its skip."""
    model = resnet(stages=2, blocks=3)
    nodes, cuts = _ordered(model, 3)
    assert [nodes[p - 1].name for p in cuts] == ["s0b1_out", "s1b0_out"]
    for p in cuts:
        made = {v for n in nodes[:p] for v in n.outputs}
        assert len({v for n in nodes[p:] for v in n.inputs if v in made}) == 1
    crossing = segments.crossing_bytes(nodes)
    branch = [q for q in range(1, len(nodes)) if nodes[q - 1].name.endswith(("c1", "r1", "c2"))]
    assert max(crossing[p] for p in cuts) < min(crossing[q] for q in branch)


def test_probe_nodes_at_the_end_are_moved_next_to_what_they_read():
    """An output-power probe appends its reductions at the end of the graph: ``order`` moves them right
    after the layer, so the layer's output crosses no cut."""
    from onnxbc.passes.graph_utils import GraphBuilder

    model = transformer(blocks=2)
    original = list(model.graph)
    target = next(t for t in find_targets(model).targets if t.name == "b0_up")
    fetched = OutputPowerProbe(target).attach(GraphBuilder(model))
    nodes = segments.order(list(model.graph), [n for n in model.graph if n not in set(original)])
    where = [i for i, n in enumerate(nodes) if n.name == "b0_up"][0]
    assert {v.producer() for v in fetched} <= set(nodes[where + 1 : where + 3])


def test_nodes_that_compute_from_constants_are_moved_next_to_their_reader():
    """A QDQ model as saved has every weight's DequantizeLinear first (an exporter may put Constants first): a
    cut after them would carry every weight they make. ``order`` puts each such node (and a chain of them:
    DequantizeLinear then Transpose) right before its reader, so the cuts of a chain of layers cross only the
    activation."""
    width, layers = 64, 4
    nodes, inits = [], []
    for i in range(layers):
        codes = np.random.default_rng(i).integers(-127, 127, (width, width)).astype(np.int8)
        inits += [numpy_helper.from_array(codes, f"q{i}"), numpy_helper.from_array(np.float32(0.01), f"s{i}")]
        nodes.append(helper.make_node("DequantizeLinear", [f"q{i}", f"s{i}"], [f"w{i}"], name=f"dq{i}"))
    nodes.append(helper.make_node("Transpose", ["w0"], ["w0t"], name="t0"))
    nodes.append(helper.make_node("Constant", [], ["one"], name="one", value=numpy_helper.from_array(np.float32(1))))
    h = "x"
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [h, "w0t" if i == 0 else f"w{i}"], [f"h{i}"], name=f"mm{i}"))
        h = f"h{i}"
    nodes.append(helper.make_node("Add", [h, "one"], ["y"], name="add"))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, width])],
        inits,
    )
    model = ir.from_proto(onnx.shape_inference.infer_shapes(helper.make_model(graph)))
    ordered = segments.order(list(model.graph), [])
    names = [n.name for n in ordered]
    assert names == ["dq0", "t0", "mm0", "dq1", "mm1", "dq2", "mm2", "dq3", "mm3", "one", "add"]
    (cut,) = segments.find_cuts(ordered, 2)
    assert segments.crossing_bytes(ordered)[cut] == 8 * width * 4  # the activation only
    (saved,) = segments.find_cuts(list(model.graph), 2)
    assert segments.crossing_bytes(list(model.graph))[saved] >= 2 * width * width * 4  # as saved: weights cross


def test_what_computes_from_constants_alone_is_one_rule():
    """``constant_nodes``, which both the cutter's order and the run-size estimate follow: a weight's
    DequantizeLinear and what reads only it, a Constant; not a node reading an initializer that is also a graph
    input (it may be fed), nor a random node (it differs from run to run), nor what reads those."""
    nodes = [
        helper.make_node("DequantizeLinear", ["q", "s"], ["w"], name="dq"),
        helper.make_node("Transpose", ["w"], ["wt"], name="t"),
        helper.make_node("Constant", [], ["one"], name="one", value=numpy_helper.from_array(np.float32(1))),
        helper.make_node("Mul", ["fed", "one"], ["fed2"], name="fed_mul"),
        helper.make_node("RandomNormal", [], ["noise"], name="noise", shape=[4, 4]),
        helper.make_node("Add", ["wt", "noise"], ["wn"], name="noisy"),
        helper.make_node("MatMul", ["x", "wn"], ["y0"], name="mm"),
        helper.make_node("Add", ["y0", "fed2"], ["y"], name="add"),
    ]
    inits = [
        numpy_helper.from_array(np.ones((4, 4), np.int8), "q"),
        numpy_helper.from_array(np.float32(0.1), "s"),
        numpy_helper.from_array(np.zeros((4, 4), np.float32), "fed"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4, 4]) for n in ("x", "fed")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])],
        inits,
    )
    model = ir.from_proto(helper.make_model(graph))
    assert {n.name for n in segments.constant_nodes(list(model.graph))} == {"dq", "t", "one"}


def test_a_split_model_holds_only_its_segment(tmp_path):
    """Every segment's model has its own nodes and the initializers they read (the same tensors, not
    copies), reads the mask as a graph input and passes one hidden state on; each loads in onnx's checker."""
    model = transformer(blocks=4)
    tensors = {v.name: v.const_value for v in model.graph.initializers.values()}
    nodes, cuts = _ordered(model, 2)
    out = nodes[-1].outputs[0]
    parts = segments.split(model, nodes, cuts, [out])
    assert len(parts) == 2
    first, second = (p.model.graph for p in parts)
    assert first.initializers["b0_Wq"].const_value is tensors["b0_Wq"]
    assert "b3_Wq" not in first.initializers and "b0_Wq" not in second.initializers
    assert {v.name for v in second.inputs} == {"mask", "b1_out"}
    assert parts[0].outputs == ["b1_out"] and parts[1].outputs == [out.name]
    for p in parts:
        onnx.checker.check_model(ir.serde.serialize_model(p.model), full_check=True)


def test_boundary_files_are_removed_after_the_run_and_after_an_error(tmp_path, monkeypatch, system_tmp):
    """With no memory for boundary tensors they go to ``.npy`` files: there while the last segment runs (a
    probe reading the first block's and the last block's outputs gets both, as the whole graph gives them),
    gone after the run, and gone when a probe's update raises."""
    model = transformer()
    data = _data(tmp_path, model)

    class Watch:
        def __init__(self, fail=False):
            self.fail, self.seen, self.sums = fail, [], []

        def attach(self, b):
            return [b.values["b0_out"], b.values["b2_out"]]

        def update(self, arrays, split):
            self.seen.append(sorted(p.name for p in system_tmp.rglob("*.npy")))
            self.sums.append([float(a.sum()) for a in arrays])
            if self.fail:
                raise RuntimeError("probe failed")

    whole = Watch()
    collect(model, [whole], data, SessionFactory(Device.CPU))
    monkeypatch.setattr(collector, "BOUNDARY_MEMORY_BYTES", 0)
    parts = Watch()
    collect(model, [parts, RangeProbe("b1_out")], data, SessionFactory(Device.CPU), segments=3)
    np.testing.assert_allclose(parts.sums, whole.sums, rtol=1e-5)
    assert all(parts.seen) and not list(system_tmp.rglob("*"))
    with pytest.raises(RuntimeError, match="probe failed") as caught:
        collect(model, [Watch(fail=True), RangeProbe("b1_out")], data, SessionFactory(Device.CPU), segments=3)
    assert caught.tb is not None and not list(system_tmp.rglob("*"))  # removed while its frames live on


def test_boundary_tensors_in_memory_are_copies():
    """ONNX Runtime's outputs point into their session's memory arena: a kept one would keep the whole arena
    of a finished segment alive, so the store holds copies."""
    output = _ort_output()
    assert not output.flags.owndata
    store = Stash(collector.BOUNDARY_MEMORY_BYTES)
    store.put("run", {"y": output})
    kept = store.get("run")["y"]
    assert kept.flags.owndata and not np.shares_memory(kept, output)
    np.testing.assert_array_equal(kept, output)


def _ort_output():
    """An array ONNX Runtime returns (a Relu of ones)."""
    g = _Graph()
    g.op("Relu", ["x"], "y")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", D])
    model = g.model([x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", D])], infer=False)
    session = SessionFactory(Device.CPU).create(model)
    return session.run(["y"], {"x": np.ones((4, D), np.float32)})[0]


def test_runs_are_split_as_the_whole_graph_splits_them(tmp_path, monkeypatch):
    """Only the last segment fetches (a 1 KiB activation per sample): with a 1.5 KiB budget every run takes
    one sample, as the whole graph's runs do (the first segment, passing on 512 bytes, would allow two)."""
    monkeypatch.setattr(collector, "FETCH_BUDGET_BYTES", 1536)
    model = transformer()
    data = _data(tmp_path, model)

    class Rows:
        def __init__(self):
            self.rows = []

        def attach(self, b):
            return [b.values["b2_act"]]

        def update(self, arrays, split):
            self.rows.append(len(arrays[0]))

    probe, advanced = Rows(), []
    collect(model, [probe], data, SessionFactory(Device.CPU), segments=3, advance=lambda: advanced.append(1))
    assert probe.rows == [1] * data.n_fit
    assert len(advanced) == data.count_batches("fit")  # once per batch, spread over the segments


def test_a_segment_that_cannot_be_made_names_itself(tmp_path, monkeypatch):
    """A session that cannot be made gives one OnnxbcError naming the segment and its nodes."""
    model = transformer()
    data = _data(tmp_path, model)
    factory = SessionFactory(Device.CPU)
    real = factory.create

    def create(sub, **kwargs):
        if sub.graph.name.endswith("segment2"):
            raise OnnxbcError("ONNX Runtime cannot load the model: broken")
        return real(sub, **kwargs)

    monkeypatch.setattr(factory, "create", create)
    with pytest.raises(
        OnnxbcError, match=r"calibration segment 2 of 3 \(nodes '.*' to '.*'\) cannot be made: .*broken"
    ):
        collect(model, [RangeProbe("b2_out")], data, factory, segments=3)


@pytest.mark.parametrize("bias_correction", ["independent", "sequential"])
def test_compress_with_segments_saves_the_same_model(tmp_path, monkeypatch, bias_correction):
    """``onnxbc compress --segments 3`` on the bundled CNN: every statistic of both passes (and of sequential
    compensation's waves) runs segment by segment, and the saved model is byte for byte the whole graph's."""
    from typer.testing import CliRunner

    from onnxbc import cli

    made = []
    split = segments.split
    monkeypatch.setattr(segments, "split", lambda *a: made.append(len(parts := split(*a))) or parts)
    root = Path(__file__).resolve().parents[1] / "models"
    saved = {}
    for n in (1, 3):
        out = tmp_path / f"cnn{n}.onnx"
        args = ["compress", str(root / "fashion_cnn.onnx"), "--data", str(root / "data" / "fashion_calib.npz")]
        args += ["--samples", "64", "--device", "cpu", "--bias-correction", bias_correction, "--segments", str(n)]
        r = CliRunner().invoke(cli.app, [*args, "-o", str(out)])
        assert r.exit_code == 0, r.output
        saved[n] = out.read_bytes()
    assert made and max(made) >= 2  # cut (a collection whose weights sit in one node may stay whole)
    assert saved[1] == saved[3]


def test_segments_below_one_is_a_usage_error():
    from onnxbc.errors import UsageError
    from onnxbc.options import CompressOptions

    with pytest.raises(UsageError, match="--segments must be auto, 1"):
        CompressOptions(segments=-1)


@pytest.mark.parametrize("value", ["0", "two"])
def test_segments_take_auto_or_a_count(tmp_path, value):
    """``--segments`` is auto or a number of segments: anything else is one line and exit code 2."""
    from typer.testing import CliRunner

    from onnxbc import cli

    root = Path(__file__).resolve().parents[1] / "models"
    args = ["compress", str(root / "fashion_cnn.onnx"), "--random-data", "--segments", value, "-o", str(tmp_path / "o")]
    r = CliRunner().invoke(cli.app, args)
    assert r.exit_code == 2
    assert f"--segments takes auto or a number of segments (1: the whole graph), not '{value}'" in r.output


def test_auto_segments_keep_a_session_within_the_memory_budget(tmp_path, monkeypatch):
    """``segments=0``: a budget whose room (after the run and boundary buffers, an eighth of it each, and the
    resident memory, here 0) is 3/4 of the graph's weights cuts it in two, and the statistics equal the whole
    graph's under the same budget; a budget twice the weights keeps it whole."""
    monkeypatch.setattr(memory, "resident_bytes", lambda: 0)
    model = transformer()
    data = _data(tmp_path, model)
    held = sum(segments.held_bytes(list(model.graph)))

    def run(count, budget):  # without GPTQ moments: they count too (the next test)
        probes = [p for p in _pass_one(model) if not isinstance(p, MomentsProbe)]
        factory, made = SessionFactory(Device.CPU, segments=count, max_memory=budget), []
        real = factory.create
        factory.create = lambda sub, **kw: made.append(sub) or real(sub, **kw)
        collect(model, probes, data, factory)
        return probes, len(made)

    whole, sessions = run(1, held)
    auto, cut = run(0, held)
    assert (sessions, cut) == (1, 2)  # each segment's session made once: shape inference sizes the runs
    _assert_same(whole, auto)
    assert run(0, 2 * held)[1] == 1


def test_statistics_held_while_gathered_count_with_the_weights(tmp_path, monkeypatch):
    """GPTQ's second moments (``[d, d]`` float64 per layer input and split, parked in files once their segment
    is done) count with the weights of their segment: a budget the weights alone fit cuts the graph when the
    moments do not fit beside them, and the moments equal the whole graph's."""
    monkeypatch.setattr(memory, "resident_bytes", lambda: 0)
    model = transformer()
    data = _data(tmp_path, model)
    moments = lambda: [p for p in _pass_one(model) if isinstance(p, MomentsProbe)]  # noqa: E731
    weights = sum(segments.held_bytes(list(model.graph)))
    statistics = sum(p.held_bytes() for p in moments())
    budget = int((weights + statistics / 2) * 4 / 3)  # room (3/4 of it) for the weights and half the moments

    def run(make, count):
        probes, factory, made = make(), SessionFactory(Device.CPU, segments=count, max_memory=budget), []
        real = factory.create
        factory.create = lambda sub, **kw: made.append(sub) or real(sub, **kw)
        collect(model, probes, data, factory, splits=("fit", "holdout"))
        return probes, len(made)

    whole, _ = run(moments, 1)
    auto, sessions = run(moments, 0)
    assert sessions >= 2  # segments
    assert all(p.moments.sum_xx is None for p in auto)  # parked
    _assert_same(whole, auto)
    assert run(lambda: [p for p in _pass_one(model) if isinstance(p, RangeProbe)], 0)[1] == 1  # weights alone fit


def test_a_quantized_weight_is_held_at_its_float_size():
    """ONNX Runtime folds a constant DequantizeLinear into a float weight: an int8 weight of 64 values is held
    as 256 bytes; a float weight read directly, at its own 64 x 4."""
    w = ir.Value(name="w", const_value=ir.tensor(np.ones((8, 8), np.int8), name="w"))
    scale = ir.Value(name="s", const_value=ir.tensor(np.float32(0.1), name="s"))
    scale.dtype = ir.DataType.FLOAT
    f = ir.Value(name="f", const_value=ir.tensor(np.ones((8, 8), np.float32), name="f"))
    x = ir.val("x", ir.DataType.FLOAT, ir.Shape([1, 8]))
    dq = ir.node("DequantizeLinear", [w, scale])
    mm = ir.node("MatMul", [x, dq.outputs[0]])
    mm2 = ir.node("MatMul", [mm.outputs[0], f])
    graph = ir.Graph([x], mm2.outputs, nodes=[dq, mm, mm2], initializers=[w, scale, f], opset_imports={"": 21})
    assert segments.held_bytes(list(graph)) == [64 * 4 + 4, 0, 64 * 4]


def test_a_4_bit_weight_is_held_unpacked_beside_its_float_size():
    """ONNX Runtime keeps a folded int4 weight as a byte an element beside the float weight it made: 64 int4
    values dequantized to float are held as 64 x 4 + 64 bytes."""
    w = ir.Value(name="w", const_value=ir.tensor(np.ones((8, 8), np.int8), dtype=ir.DataType.INT4, name="w"))
    scale = ir.Value(name="s", const_value=ir.tensor(np.ones((8,), np.float32), name="s"))
    scale.dtype = ir.DataType.FLOAT
    x = ir.val("x", ir.DataType.FLOAT, ir.Shape([1, 8]))
    dq = ir.node("DequantizeLinear", [w, scale], attributes={"axis": 1})
    mm = ir.node("MatMul", [x, dq.outputs[0]])
    graph = ir.Graph([x], mm.outputs, nodes=[dq, mm], initializers=[w, scale], opset_imports={"": 21})
    assert segments.held_bytes(list(graph)) == [64 * 4 + 64 + 8 * 4, 0]


def test_a_weight_folded_into_another_constant_is_held_again_and_twice_while_folded():
    """A tied LM head: the embedding read by a Gather at the start and by a Transpose at the end, which ONNX
    Runtime folds into a transposed copy of its own, held twice while the session is made; so the Transpose
    holds the table's bytes again (counted once, at the Gather, the segment of the head left it out) and twice
    its copy's. A weight two nodes read as it is counts once. A dequantized int8 weight, then transposed: the
    DequantizeLinear holds the float weight, the Transpose twice that."""
    emb = ir.Value(name="emb", const_value=ir.tensor(np.ones((16, 8), np.float32), name="emb"))
    ids = ir.val("ids", ir.DataType.INT64, ir.Shape([1, 4]))
    gather = ir.node("Gather", [emb, ids])
    x = ir.val("x", ir.DataType.FLOAT, ir.Shape([8, 2]))
    mm0 = ir.node("MatMul", [emb, x])  # a second reader of the table as it is: counted once
    transpose = ir.node("Transpose", [emb], attributes={"perm": [1, 0]})
    head = ir.node("MatMul", [gather.outputs[0], transpose.outputs[0]])
    q = ir.Value(name="q", const_value=ir.tensor(np.ones((16, 8), np.int8), name="q"))
    scale = ir.Value(
        name="s", type=ir.TensorType(ir.DataType.FLOAT), const_value=ir.tensor(np.ones((16, 1), np.float32))
    )
    dq = ir.node("DequantizeLinear", [q, scale], attributes={"axis": 0})
    dq_t = ir.node("Transpose", [dq.outputs[0]], attributes={"perm": [1, 0]})
    shadow = ir.node("MatMul", [gather.outputs[0], dq_t.outputs[0]])
    graph = ir.Graph(
        [ids, x],
        [mm0.outputs[0], head.outputs[0], shadow.outputs[0]],
        nodes=[gather, mm0, transpose, head, dq, dq_t, shadow],
        initializers=[emb, q, scale],
        opset_imports={"": 21},
    )
    table = 16 * 8 * 4
    held = segments.held_bytes(list(graph))
    assert held == [table, 0, 3 * table, 0, table + 16 * 4, 2 * table, 0]
    # where cuts are chosen, what is folded counts at the node that reads it: a chain at its last one's reader
    assert segments._at_readers(list(graph), held) == [table, 0, 0, 3 * table, 0, 0, 3 * table + 16 * 4]


def test_auto_segments_each_fit_the_room_the_budget_leaves(monkeypatch):
    """The room is the budget less what is reserved and resident (at least a byte). Ten equal weights with room
    for two and a half: the fewest segments within it, five of two weights (an even share of four segments with
    its slack would read three, over the room); with room for less than one, a weight each. A node that reads
    more than the room gets a segment of its own, and does not widen the others."""
    monkeypatch.setattr(memory, "resident_bytes", lambda: 100)
    assert memory.room(budget=1000, reserved=200) == 700
    assert memory.room(budget=250, reserved=200) == 1
    nodes, weight = _matmul_chain(10), D * D * 4
    cuts = segments.find_cuts(nodes, 0, room=int(2.5 * weight))
    assert [b - a for a, b in zip([0, *cuts], [*cuts, len(nodes)])] == [2] * 5
    assert len(segments.find_cuts(nodes, 0, room=1)) == 9
    # one node holding five weights (a statistic beside it): a segment of its own, the others still within the room
    extra = {nodes[4]: 4 * weight}
    cuts = segments.find_cuts(nodes, 0, extra=extra, room=int(2.5 * weight))
    held = segments.held_bytes(nodes, extra)
    parts = [held[a:b] for a, b in zip([0, *cuts], [*cuts, len(nodes)])]
    assert len(parts) == 6 and all(sum(p) <= 2.5 * weight or len(p) == 1 for p in parts)


def test_a_budget_the_run_passed_is_reported(tmp_path):
    """The report gives the budget and the process's peak; a --max-memory the process passed gets a warning
    (1 MiB: anything passes it), and the model is still written."""
    import onnxbc
    from onnxbc.options import DataOptions

    root = Path(__file__).resolve().parents[1] / "models"
    data = DataOptions(path=root / "data" / "fashion_calib.npz", samples=32)
    options = CompressOptions(device=Device.CPU, max_memory=2**20)
    result = onnxbc.compress(root / "fashion_cnn.onnx", tmp_path / "o.onnx", data=data, options=options)
    assert result.report.memory["max_memory_bytes"] == 2**20 and result.report.memory["given"]
    assert result.report.memory["peak_rss_bytes"] > 2**20
    assert any("over --max-memory 1 MiB" in w for w in result.report.warnings)
    assert (tmp_path / "o.onnx").exists()
    default = onnxbc.compress(root / "fashion_cnn.onnx", tmp_path / "d.onnx", data=data)
    assert not default.report.memory["given"] and default.report.memory["max_memory_bytes"] >= 2**30
    assert not any("--max-memory" in w for w in default.report.warnings)


def test_a_given_budget_turns_the_memory_arena_and_repacking_off(monkeypatch):
    """Under --max-memory, sessions hand freed tensors back to the system (no CPU memory arena) and hold no
    repacked copy of their weights; by default they keep ONNX Runtime's arena and repacking. The outputs are the
    same."""
    from onnxbc.calibration import session as session_module

    arenas, real = [], session_module.ort.InferenceSession

    def spy(source, options, **kwargs):
        arenas.append((options.enable_cpu_mem_arena, _unpacked(options)))
        return real(source, options, **kwargs)

    monkeypatch.setattr(session_module.ort, "InferenceSession", spy)
    g = _Graph()
    g.op("Relu", ["x"], "y")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", D])
    model = g.model([x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", D])], infer=False)
    feeds = {"x": np.linspace(-1, 1, 4 * D, dtype=np.float32).reshape(4, D)}
    outputs = [
        SessionFactory(Device.CPU, max_memory=budget).create(model).run(["y"], feeds)[0] for budget in (None, 2**30)
    ]
    assert arenas == [(True, False), (False, True)]
    np.testing.assert_array_equal(*outputs)


def test_prices_are_measured_only_where_the_whole_model_fits(tmp_path):
    """Measured prices run the whole float model in one session: under a budget it passes they are left to the
    closed form, with a warning; ``--segments 1`` (whole graphs asked for) measures them anyway."""
    import onnxbc
    from onnxbc.options import ActivationType, DataOptions, WeightType

    root = Path(__file__).resolve().parents[1] / "models"
    data = DataOptions(path=root / "data" / "fashion_calib.npz", samples=32)
    priced = {}
    for count in (0, 1):  # 0: auto
        options = CompressOptions(
            device=Device.CPU,
            max_memory=2**20,
            segments=count,
            weights=WeightType.INT4,
            activations=ActivationType.NONE,
        )
        result = onnxbc.compress(root / "fashion_cnn.onnx", tmp_path / f"s{count}.onnx", data=data, options=options)
        warned = any(w.startswith("prices not measured") for w in result.report.warnings)
        priced[count] = warned, result.report.precision["keep_at_8"]["priced"]
    assert priced == {0: (True, "closed form"), 1: (False, "measured")}


def test_a_segmented_session_gives_the_outputs_of_a_whole_one(tmp_path):
    """``SegmentedSession`` (the model run segment by segment over the split, outputs kept) hands out, run after
    run, the outputs a whole session gives on the same feeds: in parts of 3 samples across runs of another size,
    and whole, to float tolerance."""
    from onnxbc.calibration import segmented

    model = resnet()
    data = _data(tmp_path, model, samples=13, batch_size=5, holdout=0.0)
    small = SessionFactory(Device.CPU, segments=0, max_memory=2**17)  # runs of 2 samples or fewer
    assert not collector.fits_whole(model, small)
    whole = SessionFactory(Device.CPU).create(model)
    assert collector.fits_whole(model, SessionFactory(Device.CPU, segments=0))
    for part in (3, None):
        parted = segmented.session(model, data, "fit", small)
        assert isinstance(parted, segmented.SegmentedSession)
        assert [o.name for o in parted.get_outputs()] == [o.name for o in whole.get_outputs()]
        for feeds in data.batches("fit"):
            n = len(feeds["x"])
            step = part or n
            for start in range(0, n, step):
                run = {"x": feeds["x"][start : start + step]}
                (got,) = parted.run(None, run)
                np.testing.assert_allclose(got, whole.run(None, run)[0], rtol=1e-5, atol=1e-5)
        with pytest.raises(RuntimeError, match="more samples than its split has"):
            parted.run(None, {"x": feeds["x"][:1]})


def test_a_model_over_the_budget_is_checked_segment_by_segment(tmp_path, monkeypatch):
    """Under a budget one session of the model passes, the held-out check runs every model segment by segment:
    the candidates' errors are those of whole sessions (forced here) to float tolerance, the same one is saved,
    and a warning says which whole-session checks were left out."""
    import onnxbc
    from onnxbc import pipeline
    from onnxbc.calibration import segmented

    made, real = [], segmented.SegmentedSession.__init__

    def spy(self, model, *args):
        made.append(model)
        real(self, model, *args)

    monkeypatch.setattr(segmented.SegmentedSession, "__init__", spy)
    root = Path(__file__).resolve().parents[1] / "models"
    data = DataOptions(path=root / "data" / "fashion_calib.npz", samples=32)
    options = CompressOptions(device=Device.CPU, max_memory=2**20, segments=0)
    results = []
    for whole in (False, True):
        if whole:
            monkeypatch.setattr(pipeline, "fits_whole", lambda model, sessions: True)
            monkeypatch.setattr(collector, "fits_whole", lambda model, sessions: True)
        out = tmp_path / f"{whole}.onnx"
        results.append(onnxbc.compress(root / "fashion_cnn.onnx", out, data=data, options=options).report)
    parted, whole = results
    assert len(made) == 1 + len(parted.compensation["candidates"])  # the float model, then each candidate
    assert any("held-out check ran it segment by segment" in w for w in parted.warnings)
    assert not any("segment by segment" in w for w in whole.warnings)
    assert parted.compensation["chosen"] == whole.compensation["chosen"]
    assert parted.compensation["candidates"].keys() == whole.compensation["candidates"].keys()
    for name, error in whole.compensation["candidates"].items():
        assert parted.compensation["candidates"][name] == pytest.approx(error, rel=1e-4)
    assert "onnxruntime_default_session" not in parted.outputs and "onnxruntime_default_session" in whole.outputs
    assert any(w.startswith("fusion audit skipped") for w in parted.warnings) and whole.fusion.get("summary")


def test_whether_the_model_fits_one_session_is_decided_once_after_loading(tmp_path, monkeypatch):
    """The choices that change the output (measured prices, the checks that need a whole session) follow one
    decision, taken by the memory resident after loading: here the process "grows" past the budget after that
    first look, and still the prices are measured, the default session checked and the fusion audit run, as a
    run whose memory stayed put would."""
    import onnxbc

    looks = []

    def resident() -> int:
        looks.append(None)
        return 0 if len(looks) == 1 else 2**40

    monkeypatch.setattr(memory, "resident_bytes", resident)
    root = Path(__file__).resolve().parents[1] / "models"
    data = DataOptions(path=root / "data" / "fashion_calib.npz", samples=32)
    options = CompressOptions(device=Device.CPU, max_memory=2**30, segments=0, weights=WeightType.INT4)
    report = onnxbc.compress(root / "fashion_cnn.onnx", tmp_path / "m.onnx", data=data, options=options).report
    assert len(looks) > 1  # later looks saw the process over the budget
    assert report.precision["keep_at_8"]["priced"] == "measured"
    assert not any("prices not measured" in w or "segment by segment" in w for w in report.warnings)
    assert "onnxruntime_default_session" in report.outputs and report.fusion.get("summary")


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads /proc/self/smaps (Linux)")
def test_parked_arrays_read_back_equal_and_leave_resident_memory_on_release(tmp_path):
    """``memory.Parking``: the values, read-only, from a few files (one of its own for an array over a file's
    size); not resident until read, and ``memory.release`` takes them out of this process's resident memory
    again (they are read again, unchanged). A file goes once no array of it is left."""
    import gc

    rng = np.random.default_rng(0)
    arrays = [rng.integers(-8, 8, shape).astype(np.int8) for shape in [(4096, 4096), (1000, 3), (3, 5, 7)] * 3]
    arrays.append(rng.standard_normal((5000, 5000)).astype(np.float32)[:, ::2])  # 50 MB, not contiguous
    parking = memory.Parking(tmp_path)
    parking.ARENA_BYTES = 40 * 2**20

    def resident() -> int:  # kB of the parking files' pages in this process
        lines = Path("/proc/self/smaps").read_text().splitlines()
        starts = [i for i, line in enumerate(lines) if str(tmp_path) in line]
        return sum(int(lines[i].split()[1]) for s in starts for i in range(s, s + 8) if lines[i].startswith("Rss:"))

    parked = [parking.park(a) for a in arrays]
    assert len(list(tmp_path.iterdir())) == 3  # 16 + 16 MiB, 16 MiB, the 50 MB array alone
    assert parking.park(parked[0]) is parked[0] and len(list(tmp_path.iterdir())) == 3  # parked already
    assert resident() < 1024  # written to the files, not through the mappings
    for a, p in zip(arrays, parked):
        assert not p.flags.writeable
        np.testing.assert_array_equal(p, a)  # reads every page

    assert resident() >= 90 * 1024
    memory.release()
    assert resident() < 1024
    for a, p in zip(arrays, parked):
        np.testing.assert_array_equal(p, a)
    del parked, parking, p
    gc.collect()
    assert resident() == 0  # unmapped


def test_a_tied_head_folds_its_own_copy_of_the_dequantized_table(tmp_path, monkeypatch):
    """A W4 model's tied LM head: the int4 embedding table's DequantizeLinear is read by the Gather first and by the
    head's Transpose last. Cut in three, the last segment makes its own copy of the table (nothing passes it on:
    it would be kept per run, 262 MB on a Llama-shaped model), it counts there again, and the logits equal the
    whole graph's; also where that segment holds more than the budget leaves and is not folded."""
    vocab = 32
    g = _Graph()
    codes = RNG.integers(-8, 8, (vocab, D))
    g.inits.append(helper.make_tensor("q", TensorProto.INT4, (vocab, D), codes.flatten().tolist()))
    g.op("DequantizeLinear", ["q", g.const("s", np.full(vocab, 0.1, np.float32))], "table", axis=0)
    h = g.op("Gather", ["table", "ids"], "embed")
    for i in range(3):
        h = g.op("MatMul", [h, g.weight(f"w{i}", (D, D))], f"h{i}")
    g.op("MatMul", [h, g.op("Transpose", ["table"], "head", perm=[1, 0])], "logits")
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 4])
    model = g.model([ids], [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4, vocab])], infer=True)

    np.savez(tmp_path / "d.npz", ids=RNG.integers(0, vocab, (10, 4)))
    data = open_data(DataOptions(path=tmp_path / "d.npz", batch_size=4), input_specs(model))
    whole = SessionFactory(Device.CPU).create(model)
    cut = segmented.SegmentedSession(model, data, "fit", SessionFactory(Device.CPU, segments=3))
    for feeds in data.batches("fit"):
        np.testing.assert_allclose(cut.run(None, feeds)[0], whole.run(None, feeds)[0], rtol=1e-5, atol=1e-6)

    # a budget whose room (3/4 of it, nothing resident) is 1.5 tables: the head's segment (its Transpose holds 3
    # tables and more) is not folded but computes the table and its transpose on every run, the same logits
    monkeypatch.setattr(memory, "resident_bytes", lambda: 0)
    factory, made = SessionFactory(Device.CPU, segments=0, max_memory=2 * vocab * D * 4), []
    real = factory.create

    def create(sub, **kwargs):
        made.append(("head" in [n.name for n in sub.graph], kwargs["fold"]))
        return real(sub, **kwargs)

    factory.create = create
    cut = segmented.SegmentedSession(model, data, "fit", factory)
    assert len(made) > 2 and all(fold is not head for head, fold in made)
    for feeds in data.batches("fit"):
        np.testing.assert_allclose(cut.run(None, feeds)[0], whole.run(None, feeds)[0], rtol=1e-5, atol=1e-6)

    nodes = segments.order(list(model.graph), [])
    held = dict(zip([n.name for n in nodes], segments.held_bytes(nodes)))
    table = vocab * D * 4
    assert held["head"] == 2 * table + (table + vocab * D + vocab * 4)  # its fold, and the table's again
    # room for less than the head's Transpose: it is not given a segment of its own (which would be a segment
    # of nothing but a copied node, and its copy in the next beside all that fits there), it goes with its reader
    at = [n.name for n in nodes].index("head")
    assert not {at, at + 1} <= set(segments.find_cuts(nodes, 0, room=table))
    parts = segments.split(model, nodes, [2, 4], list(model.graph.outputs))  # [dq, embed], [h0, h1], [h2, head...]
    assert len(parts) == 3
    assert all("table" not in p.inputs and "table" not in p.outputs for p in parts)
    assert [n.op_type for n in parts[-1].model.graph] == ["DequantizeLinear", "MatMul", "Transpose", "MatMul"]
