"""A MobileNetV2-like depthwise-separable CNN built in code, for the data-free mode's tests and benchmark.

    stem Conv 3x3 -> BN -> act
    per block (inverted residual): expand Conv 1x1 -> BN -> act -> depthwise Conv 3x3 -> BN -> act
                                   -> project Conv 1x1 -> BN (linear), + the block input when shapes agree
    last Conv 1x1 -> BN -> head act -> GlobalAveragePool -> Flatten -> Gemm (logits)

``act``: ``relu6`` (Clip 0..6, as MobileNetV2), ``hardswish`` or ``silu`` (Sigmoid and Mul); ``head``: ``relu``
(the last Conv and the Gemm form a DF-MPC pair) or any ``act`` (no pair anywhere). Weights are random (He
init, seeded); ``calibrate`` sets every BatchNormalization's running mean and variance to the statistics of
its input on given images, as training would, so that the BN statistics describe the data the model sees.
``fold`` folds every BatchNormalization into its Conv, as an exporter does: the statistics are then gone.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

__all__ = ["SMALL", "MOBILE", "build", "calibrate", "fold"]

# (expansion, output channels, stride) per block
SMALL = ((2, 8, 1),)
MOBILE = ((4, 24, 2), (4, 24, 1), (4, 32, 1), (4, 32, 1))


def build(
    act: str = "relu6",
    head: str = "relu",
    *,
    blocks: tuple[tuple[int, int, int], ...] = SMALL,
    channels: int = 3,
    stem: int = 8,
    last: int = 16,
    classes: int = 10,
    size: int = 16,
    seed: int = 0,
) -> onnx.ModelProto:
    """The CNN above, input ``x`` [N, channels, size, size], output ``y`` [N, classes], opset 17."""
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def init(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def conv(x: str, cin: int, cout: int, k: int, name: str, *, group: int = 1, stride: int = 1) -> str:
        w = rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / (cin // group * k * k))
        nodes.append(
            helper.make_node(
                "Conv",
                [x, init(f"{name}.w", w)],
                [name],
                name=name,
                kernel_shape=[k, k],
                pads=[k // 2] * 4,
                strides=[stride] * 2,
                group=group,
            )
        )
        c = len(nodes)
        params = [rng.uniform(0.5, 1.5, cout), rng.normal(0.3, 0.5, cout), np.zeros(cout), np.ones(cout)]
        names = [init(f"bn{c}.{p}", v) for p, v in zip(("scale", "B", "mean", "var"), params)]
        nodes.append(helper.make_node("BatchNormalization", [name, *names], [f"bn{c}"], name=f"bn{c}"))
        return f"bn{c}"

    def activation(x: str, kind: str) -> str:
        out = f"{x}_{kind}"
        if kind == "relu6":
            nodes.append(helper.make_node("Clip", [x, init(f"{out}.lo", 0.0), init(f"{out}.hi", 6.0)], [out], name=out))
        elif kind == "silu":
            nodes.append(helper.make_node("Sigmoid", [x], [f"{out}_gate"], name=f"{out}_gate"))
            nodes.append(helper.make_node("Mul", [x, f"{out}_gate"], [out], name=out))
        else:
            nodes.append(helper.make_node({"relu": "Relu", "hardswish": "HardSwish"}[kind], [x], [out], name=out))
        return out

    x = activation(conv("x", channels, stem, 3, "stem"), act)
    c = stem
    for i, (expand, cout, stride) in enumerate(blocks):
        h = activation(conv(x, c, c * expand, 1, f"block{i}.expand"), act)
        h = activation(conv(h, c * expand, c * expand, 3, f"block{i}.dw", group=c * expand, stride=stride), act)
        h = conv(h, c * expand, cout, 1, f"block{i}.project")
        if stride == 1 and cout == c:
            nodes.append(helper.make_node("Add", [x, h], [f"block{i}.add"], name=f"block{i}.add"))
            h = f"block{i}.add"
        x, c = h, cout
    x = activation(conv(x, c, last, 1, "last"), head)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"))
    fc = [init("fc.w", rng.standard_normal((classes, last)) / np.sqrt(last)), init("fc.b", np.zeros(classes))]
    nodes.append(helper.make_node("Gemm", ["flat", *fc], ["y"], name="fc", transB=1))
    graph = helper.make_graph(
        nodes,
        "dw_cnn",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", channels, size, size])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", classes])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def calibrate(model: onnx.ModelProto, x: np.ndarray) -> onnx.ModelProto:
    """A copy of ``model`` whose BatchNormalizations hold the mean and variance of their inputs on ``x``
    (per channel, over samples and positions), set in graph order so each sees the statistics before it."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {i.name: i for i in model.graph.initializer}
    for bn in [n for n in model.graph.node if n.op_type == "BatchNormalization"]:
        probe = onnx.ModelProto.FromString(model.SerializeToString())
        probe.graph.output.append(helper.make_tensor_value_info(bn.input[0], onnx.TensorProto.FLOAT, None))
        session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        z = session.run([bn.input[0]], {"x": x})[0].astype(np.float64)
        for name, value in ((bn.input[3], z.mean(axis=(0, 2, 3))), (bn.input[4], z.var(axis=(0, 2, 3)))):
            inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    return model


def fold(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every Conv -> BatchNormalization folded into the Conv (weight and a new bias)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    producers = {n.output[0]: n for n in model.graph.node}
    kept = []
    for node in model.graph.node:
        if node.op_type != "BatchNormalization":
            kept.append(node)
            continue
        conv = producers[node.input[0]]
        gamma, beta, mean, var = (inits[n] for n in node.input[1:5])
        k = gamma / np.sqrt(var + 1e-5)
        inits[conv.input[1]] = inits[conv.input[1]] * k[:, None, None, None]
        inits[f"{conv.name}.b"] = beta - mean * k
        del conv.input[2:]
        conv.input.append(f"{conv.name}.b")
        conv.output[0] = node.output[0]
    used = {i for n in kept for i in n.input}
    del model.graph.node[:]
    model.graph.node.extend(kept)
    del model.graph.initializer[:]
    model.graph.initializer.extend(
        numpy_helper.from_array(v.astype(np.float32), n) for n, v in inits.items() if n in used
    )
    return model
