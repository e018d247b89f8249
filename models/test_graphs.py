"""A zoo of small ONNX graphs, built in code, one for each kind of graph onnxbc must handle.

Every graph is a `TestGraph`: the model plus a `feeds(n, seed)` function that makes inputs for `n` samples.
`build(name)` makes one, `names()` lists them, `save()` writes one (with external data when the graph asks).

Feeds are prefix-stable: `feeds(m, seed)` holds the first m samples of `feeds(n, seed)` for m <= n.

Conventions: default opset 17 with the lowest IR version that opset needs (onnxruntime rejects the IR version
that recent onnx writes by default); the batch dim is the symbolic dim `N`, sequence dims are `T` (feeds use
T = 8); every node has a unique name; weights are float32 He-init (`randn * sqrt(2 / fan_in)`), biases
small and nonzero; all randomness comes from `np.random.default_rng`, so a builder returns the same bytes
every time.

The graphs cover what real exports do and toy models do not (see docs/data.md): weights in `Constant` nodes,
in `If`/`Loop` subgraphs, behind `Transpose`/`Reshape`, shared or tied; attention; RNNs; fp16; old opsets;
external data; and already-quantized models the tool must refuse.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["BUILDERS", "OPSET", "SEQ_LEN", "TestGraph", "build", "names", "save"]

OPSET = 17
SEQ_LEN = 8  # the `T` the feeds use

Feeds = Callable[[int, int], dict[str, np.ndarray]]
Shape = Sequence[int | str]


@dataclasses.dataclass(frozen=True)
class TestGraph:
    """One model of the zoo and the inputs that go with it."""

    __test__ = False  # not a pytest test class, despite the name

    name: str
    model: onnx.ModelProto
    feeds: Callable[[int, int], dict[str, np.ndarray]]  # feeds(n, seed) -> inputs for n samples
    batched: bool = True  # False when some input is not batched on axis 0 (recurrent state etc.)
    quantized: bool = False  # True for the already-quantized graphs the tool must refuse
    external_data: bool = False  # True when the model must be saved with external data (see save())


def build(name: str) -> TestGraph:
    """Build the graph called `name` (a fresh ModelProto each call, so callers may edit it)."""
    try:
        builder = BUILDERS[name]
    except KeyError:
        raise KeyError(f"no test graph named {name!r}; known: {', '.join(BUILDERS)}") from None
    return builder()


def names(*, quantized: bool | None = None) -> list[str]:
    """All graph names in BUILDERS order, or only the (not) already-quantized ones."""
    return [n for n in BUILDERS if quantized is None or build(n).quantized == quantized]


def save(graph: TestGraph, path: pathlib.Path) -> pathlib.Path:
    """Write `graph.model` to `path` and return the path.

    With `graph.external_data`, every weight goes to `<path.name>.data` in the same folder.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not graph.external_data:
        onnx.save_model(graph.model, path)
        return path
    location = f"{path.name}.data"
    # onnx appends to an existing data file, and moves the weights out of the proto it is given.
    path.with_name(location).unlink(missing_ok=True)
    model = onnx.ModelProto()
    model.CopyFrom(graph.model)
    onnx.save_model(
        model,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=0,
    )
    return path


# ------------------------------------------------------------------------------------------------------------
# Helpers: a small graph builder, value infos, feeds, and the layers that repeat across graphs.


class _Builder:
    """Collects the nodes and initializers of one graph and names every node and value uniquely.

    Subgraphs (If branches, Loop bodies) come from `sub()`: they share the random generator and the name
    space of their parent, so names stay unique across the whole model.
    """

    def __init__(self, seed: int = 0, dtype: type = np.float32, *, parent: _Builder | None = None):
        self.rng = parent.rng if parent else np.random.default_rng(seed)
        self.dtype = parent.dtype if parent else np.dtype(dtype)
        self._taken: set[str] = parent._taken if parent else set()
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def sub(self) -> _Builder:
        return _Builder(parent=self)

    def fresh(self, base: str) -> str:
        name, i = base, 0
        while name in self._taken:
            i += 1
            name = f"{base}_{i}"
        self._taken.add(name)
        return name

    # weights
    def he(self, shape: Sequence[int], fan_in: int, gain: float = 1.0) -> np.ndarray:
        """He-init weights in the builder's float type."""
        w = self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in) * gain
        return w.astype(self.dtype)

    def small(self, shape: Sequence[int], scale: float = 0.05) -> np.ndarray:
        """Small nonzero values (biases, BN shifts)."""
        return (self.rng.standard_normal(shape) * scale).astype(self.dtype)

    def uniform(self, shape: Sequence[int], bound: float) -> np.ndarray:
        return self.rng.uniform(-bound, bound, size=shape).astype(self.dtype)

    def init(self, name: str, array: np.ndarray | float | int) -> str:
        """Add an initializer; returns its name."""
        name = self.fresh(name)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def constant(self, name: str, array: np.ndarray | float | int) -> str:
        """Add a Constant node holding `array` (the Paddle way of storing weights); returns its output."""
        value = numpy_helper.from_array(np.asarray(array), name)
        return self.op("Constant", [], name=f"{name}/Constant", out=name, value=value)

    # nodes
    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        *,
        name: str | None = None,
        out: str | Sequence[str | None] | None = None,
        n_out: int = 1,
        domain: str | None = None,
        **attrs: object,
    ) -> str | tuple[str, ...]:
        """Add a node; returns its output name (a tuple when it has several).

        `out` names the outputs (graph outputs; "" for an omitted optional output); outputs it leaves out or
        gives as None get made-up names. Attributes that are None are left out.
        """
        node_name = self.fresh(name or op_type)
        wanted = [None] * n_out if out is None else [out] if isinstance(out, str) else list(out)
        outs = []
        for i, o in enumerate(wanted):
            if o is None:
                o = self.fresh(f"{node_name}_out" if len(wanted) == 1 else f"{node_name}_out{i}")
            elif o:
                if o in self._taken:
                    raise ValueError(f"value name {o!r} is already used")
                self._taken.add(o)
            outs.append(o)
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=node_name, domain=domain, **attrs))
        return outs[0] if len(outs) == 1 else tuple(outs)

    # graphs
    def graph(self, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]):
        return helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.initializers)

    def model(
        self,
        name: str,
        inputs: list[onnx.ValueInfoProto],
        outputs: list[onnx.ValueInfoProto],
        *,
        opset: int = OPSET,
        extra_opsets: Sequence[tuple[str, int]] = (),
    ) -> onnx.ModelProto:
        opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, v) for d, v in extra_opsets)]
        return helper.make_model(
            self.graph(name, inputs, outputs),
            opset_imports=opsets,
            ir_version=helper.find_min_ir_version_for(opsets, ignore_unknown=True),
            producer_name="onnxbc-test-graphs",
        )


def _value(name: str, dtype: type, shape: Shape | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape)


def _f32(name: str, shape: Shape | None) -> onnx.ValueInfoProto:
    return _value(name, np.float32, shape)


def _normal_feeds(shape: Shape, *, name: str = "x", dtype: type = np.float32) -> Feeds:
    """Feeds of N(0, 1) values, shape (n, *shape): images and hidden-state sequences."""

    def feeds(n: int, seed: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        return {name: rng.standard_normal((n, *shape)).astype(dtype)}

    return feeds


def _token_feeds(vocab: int, *, name: str = "ids", dtype: type = np.int64) -> Feeds:
    """Feeds of token ids in [0, vocab), shape (n, T)."""

    def feeds(n: int, seed: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        return {name: rng.integers(0, vocab, size=(n, SEQ_LEN), dtype=dtype)}

    return feeds


def _conv(
    g: _Builder,
    x: str,
    cin: int,
    cout: int,
    k: int,
    *,
    name: str,
    group: int = 1,
    stride: int = 1,
    pad: int = 0,
    bias: bool = True,
    gain: float = 1.0,
    const: bool = False,
    out: str | None = None,
) -> str:
    """Conv, He-init weight [cout, cin/group, k, k], optional bias; `const` puts them in Constant nodes."""
    store = g.constant if const else g.init
    fan_in = cin // group * k * k
    inputs = [x, store(f"{name}.weight", g.he((cout, cin // group, k, k), fan_in, gain))]
    if bias:
        inputs.append(store(f"{name}.bias", g.small((cout,))))
    return g.op(
        "Conv",
        inputs,
        name=name,
        out=out,
        kernel_shape=[k, k],
        strides=[stride, stride],
        pads=[pad] * 4,
        group=group,
    )


def _conv_transpose(
    g: _Builder,
    x: str,
    cin: int,
    cout: int,
    k: int,
    *,
    name: str,
    stride: int = 1,
    pad: int = 0,
    group: int = 1,
    out: str | None = None,
) -> str:
    """ConvTranspose; its weight is [cin, cout/group, k, k] (the transpose of Conv's layout)."""
    w = g.init(f"{name}.weight", g.he((cin, cout // group, k, k), cin // group * k * k))
    b = g.init(f"{name}.bias", g.small((cout,)))
    return g.op(
        "ConvTranspose",
        [x, w, b],
        name=name,
        out=out,
        kernel_shape=[k, k],
        strides=[stride, stride],
        pads=[pad] * 4,
        group=group,
    )


def _linear(
    g: _Builder,
    x: str,
    fin: int,
    fout: int,
    *,
    name: str,
    bias: bool = True,
    const: bool = False,
    out: str | None = None,
) -> str:
    """MatMul(x, W[fin, fout]) then Add(b) as its own node: how exporters write nn.Linear on 3-D inputs."""
    store = g.constant if const else g.init
    w = store(f"{name}.weight", g.he((fin, fout), fin))
    if not bias:
        return g.op("MatMul", [x, w], name=f"{name}/MatMul", out=out)
    h = g.op("MatMul", [x, w], name=f"{name}/MatMul")
    return g.op("Add", [h, store(f"{name}.bias", g.small((fout,)))], name=f"{name}/Add", out=out)


def _gemm(
    g: _Builder,
    x: str,
    fin: int,
    fout: int,
    *,
    name: str,
    bias: bool = True,
    trans_b: bool = True,
    alpha: float | None = None,
    beta: float | None = None,
    out: str | None = None,
) -> str:
    """Gemm with B stored [fout, fin] (transB=1, torch's layout) or [fin, fout] (transB=0)."""
    shape = (fout, fin) if trans_b else (fin, fout)
    inputs = [x, g.init(f"{name}.weight", g.he(shape, fin))]
    if bias:
        inputs.append(g.init(f"{name}.bias", g.small((fout,))))
    return g.op("Gemm", inputs, name=name, out=out, transB=int(trans_b), alpha=alpha, beta=beta)


def _batch_norm(g: _Builder, x: str, channels: int, *, name: str) -> str:
    """Inference-mode BatchNormalization with nontrivial scale, shift, running mean and variance."""
    params = {
        "weight": g.rng.uniform(0.5, 1.5, channels),
        "bias": g.rng.normal(0.0, 0.1, channels),
        "running_mean": g.rng.normal(0.0, 0.2, channels),
        "running_var": g.rng.uniform(0.5, 2.0, channels),
    }
    inputs = [x, *(g.init(f"{name}.{k}", v.astype(g.dtype)) for k, v in params.items())]
    return g.op("BatchNormalization", inputs, name=name, epsilon=1e-5)


def _layer_norm(g: _Builder, x: str, dim: int, *, name: str, out: str | None = None) -> str:
    """LayerNorm over the last axis, decomposed as older exporters write it."""
    mean = g.op("ReduceMean", [x], name=f"{name}/ReduceMean", axes=[-1], keepdims=1)
    centered = g.op("Sub", [x, mean], name=f"{name}/Sub")
    squared = g.op("Pow", [centered, g.init(f"{name}.pow_exponent", np.float32(2.0))], name=f"{name}/Pow")
    var = g.op("ReduceMean", [squared], name=f"{name}/ReduceMean_var", axes=[-1], keepdims=1)
    var = g.op("Add", [var, g.init(f"{name}.eps", np.float32(1e-5))], name=f"{name}/AddEps")
    normed = g.op("Div", [centered, g.op("Sqrt", [var], name=f"{name}/Sqrt")], name=f"{name}/Div")
    gamma = g.init(f"{name}.weight", (1.0 + g.small((dim,), 0.1)).astype(np.float32))
    scaled = g.op("Mul", [normed, gamma], name=f"{name}/Mul")
    return g.op("Add", [scaled, g.init(f"{name}.bias", g.small((dim,)))], name=f"{name}/Add", out=out)


def _pow2_scale(absmax: np.ndarray | float, qmax: int) -> np.ndarray:
    """Power-of-two quantization scale covering `absmax`: keeps the quantized graphs' arithmetic exact, so
    onnxruntime and onnx.reference agree bit for bit even where rounding meets a tie."""
    return (2.0 ** np.ceil(np.log2(np.asarray(absmax) / qmax))).astype(np.float32)


def _quantize(w: np.ndarray, scale: np.ndarray, dtype: type, zero_point: int = 0) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(np.rint(w / scale) + zero_point, info.min, info.max).astype(dtype)


# ------------------------------------------------------------------------------------------------------------
# Weighted layers


def _conv_stack(g: _Builder, x: str, *, bias: bool = True, out: str | None = None) -> str:
    """x[N,3,16,16] -> Conv 3x3 (8) -> Relu -> Conv 3x3 stride 2 (4) -> [N,4,8,8]."""
    h = _conv(g, x, 3, 8, 3, pad=1, bias=bias, name="conv1")
    h = g.op("Relu", [h], name="relu1")
    return _conv(g, h, 8, 4, 3, stride=2, pad=1, bias=bias, name="conv2", out=out)


def _conv_graph(name: str, *, bias: bool = True, dtype: type = np.float32, opset: int = OPSET) -> TestGraph:
    g = _Builder(dtype=dtype)
    _conv_stack(g, "x", bias=bias, out="y")
    model = g.model(name, [_value("x", dtype, ["N", 3, 16, 16])], [_value("y", dtype, ["N", 4, 8, 8])], opset=opset)
    return TestGraph(name, model, _normal_feeds((3, 16, 16), dtype=dtype))


def conv() -> TestGraph:
    """Two plain Conv layers with bias: the common CNN case."""
    return _conv_graph("conv")


def conv_nobias() -> TestGraph:
    """Convs without a bias input (Conv then BN in the source framework): compensation must add one."""
    return _conv_graph("conv_nobias", bias=False)


def conv_grouped() -> TestGraph:
    """Grouped Conv (ResNeXt-style): per-channel scales and bias terms follow the group layout."""
    g = _Builder()
    h = _conv(g, "x", 8, 8, 3, group=2, pad=1, name="conv1")
    h = g.op("Relu", [h], name="relu1")
    _conv(g, h, 8, 6, 1, group=2, name="conv2", out="y")
    model = g.model("conv_grouped", [_f32("x", ["N", 8, 16, 16])], [_f32("y", ["N", 6, 16, 16])])
    return TestGraph("conv_grouped", model, _normal_feeds((8, 16, 16)))


def conv_depthwise() -> TestGraph:
    """Depthwise 3x3 + pointwise 1x1 (MobileNet block): depthwise weights have 9 values per channel."""
    g = _Builder()
    h = _conv(g, "x", 8, 8, 3, group=8, pad=1, name="dw")
    h = g.op("Relu", [h], name="relu1")
    _conv(g, h, 8, 16, 1, name="pw", out="y")
    model = g.model("conv_depthwise", [_f32("x", ["N", 8, 16, 16])], [_f32("y", ["N", 16, 16, 16])])
    return TestGraph("conv_depthwise", model, _normal_feeds((8, 16, 16)))


def conv_transpose() -> TestGraph:
    """ConvTranspose (decoders, upsampling): output channels on weight axis 1; the second one grouped."""
    g = _Builder()
    h = _conv_transpose(g, "x", 8, 4, 2, stride=2, name="up1")  # [N,4,16,16]
    h = g.op("Relu", [h], name="relu1")
    _conv_transpose(g, h, 4, 6, 3, pad=1, group=2, name="up2", out="y")  # weight [4,3,3,3] -> [N,6,16,16]
    model = g.model("conv_transpose", [_f32("x", ["N", 8, 8, 8])], [_f32("y", ["N", 6, 16, 16])])
    return TestGraph("conv_transpose", model, _normal_feeds((8, 8, 8)))


def _gemm_graph(name: str, *, opset: int = OPSET) -> TestGraph:
    g = _Builder()
    h = _gemm(g, "x", 32, 16, name="fc1")
    h = g.op("Relu", [h], name="relu1")
    # alpha/beta other than 1 catch tools that fold or compensate as if they were 1.
    _gemm(g, h, 16, 10, name="fc2", trans_b=False, alpha=0.5, beta=2.0, out="y")
    model = g.model(name, [_f32("x", ["N", 32])], [_f32("y", ["N", 10])], opset=opset)
    return TestGraph(name, model, _normal_feeds((32,)))


def gemm() -> TestGraph:
    """Two Gemm layers (torch's nn.Linear on 2-D input); the second has transB=0, alpha=0.5, beta=2."""
    return _gemm_graph("gemm")


def gemm_nobias() -> TestGraph:
    """A Gemm without C."""
    g = _Builder()
    _gemm(g, "x", 32, 10, name="fc", bias=False, trans_b=False, out="y")
    model = g.model("gemm_nobias", [_f32("x", ["N", 32])], [_f32("y", ["N", 10])])
    return TestGraph("gemm_nobias", model, _normal_feeds((32,)))


def matmul_add() -> TestGraph:
    """Transformer MLP: MatMul with the bias as a separate Add, as exporters write nn.Linear on 3-D input."""
    g = _Builder()
    h = _linear(g, "x", 32, 64, name="fc1")
    h = g.op("Relu", [h], name="relu1")
    _linear(g, h, 64, 32, name="fc2", out="y")
    model = g.model("matmul_add", [_f32("x", ["N", "T", 32])], [_f32("y", ["N", "T", 32])])
    return TestGraph("matmul_add", model, _normal_feeds((SEQ_LEN, 32)))


def matmul_nobias() -> TestGraph:
    """A bare weight MatMul (no bias anywhere): compensation must add an Add."""
    g = _Builder()
    _linear(g, "x", 32, 16, name="proj", bias=False, out="y")
    model = g.model("matmul_nobias", [_f32("x", ["N", "T", 32])], [_f32("y", ["N", "T", 16])])
    return TestGraph("matmul_nobias", model, _normal_feeds((SEQ_LEN, 32)))


def attention() -> TestGraph:
    """A 2-head self-attention block as exporters write it: 4 weight MatMuls, 2 activation x activation
    MatMuls (Q K^T and P V), a residual Add and a decomposed LayerNorm."""
    g = _Builder()
    dim, heads, head_dim = 32, 2, 16
    split = g.init("attn.split_heads_shape", np.array([0, 0, heads, head_dim], np.int64))
    merge = g.init("attn.merge_heads_shape", np.array([0, 0, dim], np.int64))

    def project(name: str, perm: list[int]) -> str:
        h = _linear(g, "x", dim, dim, name=name)
        h = g.op("Reshape", [h, split], name=f"{name}/Reshape")  # [N,T,heads,head_dim]
        return g.op("Transpose", [h], name=f"{name}/Transpose", perm=perm)

    q = project("attn.q_proj", [0, 2, 1, 3])  # [N,heads,T,head_dim]
    k_t = project("attn.k_proj", [0, 2, 3, 1])  # K transposed: [N,heads,head_dim,T]
    v = project("attn.v_proj", [0, 2, 1, 3])
    scores = g.op("MatMul", [q, k_t], name="attn/MatMul_qk")
    scores = g.op("Mul", [scores, g.init("attn.scale", np.float32(1.0 / np.sqrt(head_dim)))], name="attn/Mul")
    probs = g.op("Softmax", [scores], name="attn/Softmax", axis=-1)
    context = g.op("MatMul", [probs, v], name="attn/MatMul_pv")
    context = g.op("Transpose", [context], name="attn/Transpose_merge", perm=[0, 2, 1, 3])
    context = g.op("Reshape", [context, merge], name="attn/Reshape_merge")
    h = _linear(g, context, dim, dim, name="attn.out_proj")
    h = g.op("Add", ["x", h], name="residual")
    _layer_norm(g, h, dim, name="ln", out="y")
    model = g.model("attention", [_f32("x", ["N", "T", dim])], [_f32("y", ["N", "T", dim])])
    return TestGraph("attention", model, _normal_feeds((SEQ_LEN, dim)))


def gelu_mlp() -> TestGraph:
    """BERT MLP with the exact GELU spelled out: x * 0.5 * (1 + erf(x / sqrt 2))."""
    g = _Builder()
    h = _linear(g, "x", 32, 64, name="fc1")
    e = g.op("Div", [h, g.init("gelu.sqrt2", np.float32(np.sqrt(2.0)))], name="gelu/Div")
    e = g.op("Erf", [e], name="gelu/Erf")
    e = g.op("Add", [e, g.init("gelu.one", np.float32(1.0))], name="gelu/Add")
    e = g.op("Mul", [h, e], name="gelu/Mul")
    e = g.op("Mul", [e, g.init("gelu.half", np.float32(0.5))], name="gelu/Mul_half")
    _linear(g, e, 64, 32, name="fc2", out="y")
    model = g.model("gelu_mlp", [_f32("x", ["N", "T", 32])], [_f32("y", ["N", "T", 32])])
    return TestGraph("gelu_mlp", model, _normal_feeds((SEQ_LEN, 32)))


def batchnorm_conv() -> TestGraph:
    """Conv -> BatchNormalization kept as its own node (unfused export), then a classifier head."""
    g = _Builder()
    h = _conv(g, "x", 3, 8, 3, pad=1, name="conv1")
    h = g.op("Relu", [_batch_norm(g, h, 8, name="bn1")], name="relu1")
    h = _conv(g, h, 8, 16, 3, stride=2, pad=1, name="conv2")
    h = g.op("Relu", [_batch_norm(g, h, 16, name="bn2")], name="relu2")
    h = g.op("GlobalAveragePool", [h], name="pool")
    h = g.op("Flatten", [h], name="flatten", axis=1)
    _gemm(g, h, 16, 10, name="fc", out="y")
    model = g.model("batchnorm_conv", [_f32("x", ["N", 3, 16, 16])], [_f32("y", ["N", 10])])
    return TestGraph("batchnorm_conv", model, _normal_feeds((3, 16, 16)))


def hardswish_cnn() -> TestGraph:
    """MobileNetV3 block: Conv -> HardSwish -> Conv -> squeeze-excite (GAP, 1x1 Convs, HardSigmoid, Mul)."""
    g = _Builder()
    h = _conv(g, "x", 3, 16, 3, stride=2, pad=1, name="stem")
    h = g.op("HardSwish", [h], name="stem_act")
    h = _conv(g, h, 16, 16, 3, pad=1, name="conv")
    s = g.op("GlobalAveragePool", [h], name="se/pool")
    s = g.op("Relu", [_conv(g, s, 16, 4, 1, name="se.fc1")], name="se/relu")
    s = _conv(g, s, 4, 16, 1, name="se.fc2")
    s = g.op("HardSigmoid", [s], name="se/gate", alpha=1.0 / 6.0, beta=0.5)  # torch's Hardsigmoid
    g.op("Mul", [h, s], name="se/scale", out="y")
    model = g.model("hardswish_cnn", [_f32("x", ["N", 3, 16, 16])], [_f32("y", ["N", 16, 8, 8])])
    return TestGraph("hardswish_cnn", model, _normal_feeds((3, 16, 16)))


# ------------------------------------------------------------------------------------------------------------
# Real-world structure


def constant_weights() -> TestGraph:
    """Paddle-style export: Conv and MatMul weights and biases in Constant nodes; no initializers at all."""
    g = _Builder()
    h = _conv(g, "x", 3, 8, 3, pad=1, name="conv", const=True)
    h = g.op("Relu", [h], name="relu")
    h = g.op("GlobalAveragePool", [h], name="pool")
    h = g.op("Flatten", [h], name="flatten", axis=1)
    _linear(g, h, 8, 10, name="fc", const=True, out="y")
    model = g.model("constant_weights", [_f32("x", ["N", 3, 16, 16])], [_f32("y", ["N", 10])])
    return TestGraph("constant_weights", model, _normal_feeds((3, 16, 16)))


def if_conv() -> TestGraph:
    """Convs inside If branches (some audio models hold every Conv there); branch A keeps its weights as
    subgraph initializers, branch B in Constant nodes; one more Conv in the main graph after the If.
    feeds: `use_a` is True for even seeds, False for odd ones, so two seeds cover both branches."""
    g = _Builder()

    def branch(tag: str, const: bool) -> onnx.GraphProto:
        b = g.sub()
        h = _conv(b, "x", 3, 8, 3, pad=1, name=f"{tag}.conv", const=const)  # x from the outer scope
        b.op("Relu", [h], name=f"{tag}.relu", out=f"{tag}_out")
        return b.graph(f"{tag}_branch", [], [_f32(f"{tag}_out", ["N", 8, 16, 16])])

    h = g.op("If", ["use_a"], name="if", then_branch=branch("a", False), else_branch=branch("b", True))
    _conv(g, h, 8, 4, 3, stride=2, pad=1, name="conv_out", out="y")
    inputs = [_f32("x", ["N", 3, 16, 16]), _value("use_a", np.bool_, [])]
    model = g.model("if_conv", inputs, [_f32("y", ["N", 4, 8, 8])])
    images = _normal_feeds((3, 16, 16))

    def feeds(n: int, seed: int) -> dict[str, np.ndarray]:
        return {**images(n, seed), "use_a": np.array(seed % 2 == 0)}

    return TestGraph("if_conv", model, feeds, batched=False)


def loop_matmul() -> TestGraph:
    """A Loop (constant trip count 3) whose body applies h = tanh(h @ W + b), W and b captured from the
    outer scope: the same weight used at every iteration, invisible to a top-level-only scan."""
    g = _Builder()
    w = g.init("cell.weight", g.he((32, 32), 32))
    b = g.init("cell.bias", g.small((32,)))
    body = g.sub()
    h = body.op("MatMul", ["h_in", w], name="cell/MatMul")
    h = body.op("Add", [h, b], name="cell/Add")
    body.op("Tanh", [h], name="cell/Tanh", out="h_out")
    body.op("Identity", ["cond_in"], name="cell/cond", out="cond_out")
    body_graph = body.graph(
        "loop_body",
        [_value("iteration", np.int64, []), _value("cond_in", np.bool_, []), _f32("h_in", ["N", 32])],
        [_value("cond_out", np.bool_, []), _f32("h_out", ["N", 32])],
    )
    trips = g.constant("trip_count", np.int64(3))
    keep_going = g.constant("keep_going", np.array(True))
    g.op("Loop", [trips, keep_going, "x"], name="loop", out="y", body=body_graph)
    model = g.model("loop_matmul", [_f32("x", ["N", 32])], [_f32("y", ["N", 32])])
    return TestGraph("loop_matmul", model, _normal_feeds((32,)))


def external_data() -> TestGraph:
    """The `conv` graph plus a MatMul head, saved with its weights in `<name>.onnx.data` (large models)."""
    g = _Builder()
    h = _conv_stack(g, "x")
    h = g.op("Flatten", [h], name="flatten", axis=1)  # [N,256]
    _linear(g, h, 4 * 8 * 8, 10, name="head", out="y")
    model = g.model("external_data", [_f32("x", ["N", 3, 16, 16])], [_f32("y", ["N", 10])])
    return TestGraph("external_data", model, _normal_feeds((3, 16, 16)), external_data=True)


def transpose_weight() -> TestGraph:
    """A weight stored [out, in] and transposed at run time: MatMul(x, Transpose(W))."""
    g = _Builder()
    w = g.init("proj.weight", g.he((16, 32), 32))
    w_t = g.op("Transpose", [w], name="proj/Transpose", perm=[1, 0])
    g.op("MatMul", ["x", w_t], name="proj/MatMul", out="y")
    model = g.model("transpose_weight", [_f32("x", ["N", "T", 32])], [_f32("y", ["N", "T", 16])])
    return TestGraph("transpose_weight", model, _normal_feeds((SEQ_LEN, 32)))


def tied_embedding() -> TestGraph:
    """Tied embeddings (GPT-2, SmolLM): one initializer E feeds both Gather (embedding) and, through
    Transpose, the lm-head MatMul."""
    g = _Builder()
    vocab, dim = 50, 32
    table = g.init("embed.weight", (g.rng.standard_normal((vocab, dim)) * 0.2).astype(np.float32))
    h = g.op("Gather", [table, "ids"], name="embed", axis=0)
    h = _linear(g, h, dim, dim, name="fc")
    h = g.op("Relu", [h], name="relu")
    table_t = g.op("Transpose", [table], name="lm_head/Transpose", perm=[1, 0])
    g.op("MatMul", [h, table_t], name="lm_head/MatMul", out="logits")
    model = g.model("tied_embedding", [_value("ids", np.int64, ["N", "T"])], [_f32("logits", ["N", "T", vocab])])
    return TestGraph("tied_embedding", model, _token_feeds(vocab))


def reshape_weight() -> TestGraph:
    """A weight stored in another shape and reshaped at run time: MatMul(x, Reshape(W[4,8,16], [32,16]))."""
    g = _Builder()
    w = g.init("proj.weight", g.he((4, 8, 16), 32))
    w = g.op("Reshape", [w, g.init("proj.weight_shape", np.array([32, 16], np.int64))], name="proj/Reshape")
    g.op("MatMul", ["x", w], name="proj/MatMul", out="y")
    model = g.model("reshape_weight", [_f32("x", ["N", 32])], [_f32("y", ["N", 16])])
    return TestGraph("reshape_weight", model, _normal_feeds((32,)))


def shared_weight() -> TestGraph:
    """One initializer read by two MatMuls on different branches: a per-layer weight edit changes both."""
    g = _Builder()
    w = g.init("shared.weight", g.he((32, 16), 32))
    a = g.op("MatMul", ["x", w], name="branch_a/MatMul")
    r = g.op("Relu", ["x"], name="branch_b/Relu")
    b = g.op("MatMul", [r, w], name="branch_b/MatMul")
    g.op("Add", [a, b], name="merge", out="y")
    model = g.model("shared_weight", [_f32("x", ["N", 32])], [_f32("y", ["N", 16])])
    return TestGraph("shared_weight", model, _normal_feeds((32,)))


def recurrent_state() -> TestGraph:
    """Bidirectional GRU (linear_before_reset, as torch exports it) with the initial state h0[2,N,24] as an
    input and the final state as a second output; h0 is batched on axis 1, hence batched=False."""
    g = _Builder()
    size, hidden, dirs = 16, 24, 2
    bound = 1.0 / np.sqrt(hidden)  # torch's GRU init
    xt = g.op("Transpose", ["x"], name="to_time_major", perm=[1, 0, 2])  # [T,N,16]
    weights = [
        g.init("gru.W", g.uniform((dirs, 3 * hidden, size), bound)),
        g.init("gru.R", g.uniform((dirs, 3 * hidden, hidden), bound)),
        g.init("gru.B", g.uniform((dirs, 6 * hidden), bound)),
    ]
    y, _ = g.op(
        "GRU",
        [xt, *weights, "", "h0"],
        name="gru",
        out=[None, "h_n"],
        hidden_size=hidden,
        direction="bidirectional",
        linear_before_reset=1,
    )  # y: [T,2,N,24]
    y = g.op("Transpose", [y], name="to_batch_major", perm=[2, 0, 1, 3])  # [N,T,2,24]
    y = g.op("Reshape", [y, g.init("merge_dirs_shape", np.array([0, 0, dirs * hidden], np.int64))], name="merge")
    _linear(g, y, dirs * hidden, 5, name="head", out="y")
    model = g.model(
        "recurrent_state",
        [_f32("x", ["N", "T", size]), _f32("h0", [dirs, "N", hidden])],
        [_f32("y", ["N", "T", 5]), _f32("h_n", [dirs, "N", hidden])],
    )

    def feeds(n: int, seed: int) -> dict[str, np.ndarray]:
        x = np.random.default_rng(seed).standard_normal((n, SEQ_LEN, size)).astype(np.float32)
        # drawn sample-major, then moved to axis 1, so the first m samples do not depend on n
        h0 = np.tanh(np.random.default_rng([seed, 1]).standard_normal((n, dirs, hidden)))
        return {"x": x, "h0": h0.transpose(1, 0, 2).astype(np.float32)}

    return TestGraph("recurrent_state", model, feeds, batched=False)


def lstm() -> TestGraph:
    """Forward LSTM (initial state omitted, so zeros) between time-major transposes, then a MatMul head."""
    g = _Builder()
    size, hidden = 16, 20
    bound = 1.0 / np.sqrt(hidden)
    xt = g.op("Transpose", ["x"], name="to_time_major", perm=[1, 0, 2])
    weights = [
        g.init("lstm.W", g.uniform((1, 4 * hidden, size), bound)),
        g.init("lstm.R", g.uniform((1, 4 * hidden, hidden), bound)),
        g.init("lstm.B", g.uniform((1, 8 * hidden), bound)),
    ]
    y = g.op("LSTM", [xt, *weights], name="lstm", hidden_size=hidden)  # [T,1,N,20]
    y = g.op("Squeeze", [y, g.init("lstm.dir_axis", np.array([1], np.int64))], name="drop_dir")
    y = g.op("Transpose", [y], name="to_batch_major", perm=[1, 0, 2])
    _linear(g, y, hidden, 5, name="head", out="y")
    model = g.model("lstm", [_f32("x", ["N", "T", size])], [_f32("y", ["N", "T", 5])])
    return TestGraph("lstm", model, _normal_feeds((SEQ_LEN, size)))


def fp16_conv() -> TestGraph:
    """The `conv` graph entirely in float16 (input, weights, output)."""
    return _conv_graph("fp16_conv", dtype=np.float16)


def integer_input() -> TestGraph:
    """A byte-level model: uint8 ids -> Cast -> Gather embedding -> MLP, then a Reshape whose target shape
    is computed by Shape -> Gather -> Mul -> Unsqueeze -> Concat: integer shape tensors to leave alone."""
    g = _Builder()
    table = g.init("embed.weight", (g.rng.standard_normal((256, 32)) * 0.2).astype(np.float32))
    ids = g.op("Cast", ["ids"], name="ids_to_int64", to=onnx.TensorProto.INT64)
    h = g.op("Gather", [table, ids], name="embed", axis=0)  # [N,T,32]
    h = g.op("Relu", [_linear(g, h, 32, 32, name="fc1")], name="relu")
    h = _linear(g, h, 32, 16, name="fc2")  # [N,T,16]

    shape = g.op("Shape", ["ids"], name="shape")
    axis0 = g.init("axis0", np.array([0], np.int64))
    n = g.op("Gather", [shape, g.init("index_batch", np.int64(0))], name="shape/batch", axis=0)
    t = g.op("Gather", [shape, g.init("index_time", np.int64(1))], name="shape/time", axis=0)
    flat = g.op("Mul", [t, g.init("features", np.int64(16))], name="shape/flat")
    dims = [g.op("Unsqueeze", [d, axis0], name=f"shape/unsqueeze_{i}") for i, d in enumerate([n, flat])]
    target = g.op("Concat", dims, name="shape/concat", axis=0)
    g.op("Reshape", [h, target], name="flatten", out="y")  # [N, T*16]
    model = g.model("integer_input", [_value("ids", np.uint8, ["N", "T"])], [_f32("y", ["N", "TF"])])
    return TestGraph("integer_input", model, _token_feeds(256, dtype=np.uint8))


def opset11_conv() -> TestGraph:
    """The `conv` graph at opset 11 (IR version 6): old exports the tool must upgrade or handle as is."""
    return _conv_graph("opset11_conv", opset=11)


def opset13_gemm() -> TestGraph:
    """The `gemm` graph at opset 13 (IR version 7): the first opset with per-axis QuantizeLinear."""
    return _gemm_graph("opset13_gemm", opset=13)


def multi_output() -> TestGraph:
    """One input, two outputs: classifier logits and an auxiliary Conv feature map (`aux`)."""
    g = _Builder()
    h = g.op("Relu", [_conv(g, "x", 3, 8, 3, pad=1, name="stem")], name="stem_relu")
    _conv(g, h, 8, 4, 1, name="aux_head", out="aux")
    p = g.op("GlobalAveragePool", [h], name="pool")
    p = g.op("Flatten", [p], name="flatten", axis=1)
    _gemm(g, p, 8, 10, name="classifier", out="logits")
    outputs = [_f32("logits", ["N", 10]), _f32("aux", ["N", 4, 16, 16])]
    model = g.model("multi_output", [_f32("x", ["N", 3, 16, 16])], outputs)
    return TestGraph("multi_output", model, _normal_feeds((3, 16, 16)))


def concat_conv() -> TestGraph:
    """Inception-style: two Conv branches with different ranges (branch B is 3x larger) -> Concat(axis 1) ->
    Conv; under TensorRT rules the Concat inputs must share one quantization scale."""
    g = _Builder()
    a = g.op("Relu", [_conv(g, "x", 3, 4, 3, pad=1, name="branch_a")], name="branch_a/relu")
    b = g.op("Relu", [_conv(g, "x", 3, 4, 1, gain=3.0, name="branch_b")], name="branch_b/relu")
    h = g.op("Concat", [a, b], name="concat", axis=1)
    _conv(g, h, 8, 6, 3, pad=1, name="fuse", out="y")
    model = g.model("concat_conv", [_f32("x", ["N", 3, 16, 16])], [_f32("y", ["N", 6, 16, 16])])
    return TestGraph("concat_conv", model, _normal_feeds((3, 16, 16)))


# ------------------------------------------------------------------------------------------------------------
# Already quantized (the tool must refuse these). Activation scales are powers of two; see _pow2_scale.

_X_SCALE = np.float32(2.0**-5)  # uint8 with zero point 128 covers [-4, 4): N(0, 1) inputs
_X_ZERO_POINT = np.uint8(128)
# int8 weights use 7 bits (ORT's reduce_range): ORT's u8 x s8 kernels on AVX2 without VNNI add pairs of
# products in int16 and saturate when weights use the full int8 range, giving results that are off by steps.
_WEIGHT_QMAX = 63


def _quantized_conv(g: _Builder, cout: int, cin: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-output-channel symmetric 7-bit int8 weight, its scales, and the float bias of one Conv."""
    w = g.he((cout, cin, k, k), cin * k * k)
    scale = _pow2_scale(np.abs(w).reshape(cout, -1).max(axis=1), _WEIGHT_QMAX)
    return _quantize(w, scale.reshape(-1, 1, 1, 1), np.int8), scale, g.small((cout,))


def quantized_qdq() -> TestGraph:
    """ORT quantize_static QDQ form (opset 13): Q/DQ on the input, on the Conv output and on the weight
    (per channel); int32 bias through DequantizeLinear."""
    g = _Builder()
    x_scale, x_zp = g.init("x_scale", _X_SCALE), g.init("x_zero_point", _X_ZERO_POINT)
    x = g.op("QuantizeLinear", ["x", x_scale, x_zp], name="x_quantize")
    x = g.op("DequantizeLinear", [x, x_scale, x_zp], name="x_dequantize")
    w_q, w_scale, bias = _quantized_conv(g, 8, 3, 3)
    w = g.op(
        "DequantizeLinear",
        [
            g.init("conv.weight_quantized", w_q),
            g.init("conv.weight_scale", w_scale),
            g.init("conv.weight_zero_point", np.zeros(8, np.int8)),
        ],
        name="conv.weight_dequantize",
        axis=0,
    )
    b_scale = _X_SCALE * w_scale
    b = g.op(
        "DequantizeLinear",
        [
            g.init("conv.bias_quantized", _quantize(bias, b_scale, np.int32)),
            g.init("conv.bias_scale", b_scale),
        ],
        name="conv.bias_dequantize",
        axis=0,
    )
    h = g.op("Conv", [x, w, b], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    h = g.op("Relu", [h], name="relu")
    y_scale, y_zp = g.init("y_scale", np.float32(2.0**-4)), g.init("y_zero_point", np.uint8(0))
    h = g.op("QuantizeLinear", [h, y_scale, y_zp], name="y_quantize")
    g.op("DequantizeLinear", [h, y_scale, y_zp], name="y_dequantize", out="y")
    model = g.model("quantized_qdq", [_f32("x", ["N", 3, 16, 16])], [_f32("y", ["N", 8, 16, 16])], opset=13)
    return TestGraph("quantized_qdq", model, _normal_feeds((3, 16, 16)), quantized=True)


def quantized_qlinear() -> TestGraph:
    """Operator-oriented form: QuantizeLinear -> QLinearConv -> QLinearMatMul -> DequantizeLinear."""
    g = _Builder()
    x_scale, x_zp = g.init("x_scale", _X_SCALE), g.init("x_zero_point", _X_ZERO_POINT)
    x = g.op("QuantizeLinear", ["x", x_scale, x_zp], name="x_quantize")
    w_q, w_scale, bias = _quantized_conv(g, 8, 3, 3)
    c_scale, c_zp = g.init("conv_scale", np.float32(2.0**-4)), g.init("conv_zero_point", np.uint8(128))
    conv_inputs = [
        x,
        x_scale,
        x_zp,
        g.init("conv.weight_quantized", w_q),
        g.init("conv.weight_scale", w_scale),
        g.init("conv.weight_zero_point", np.zeros(8, np.int8)),
        c_scale,
        c_zp,
        g.init("conv.bias_quantized", _quantize(bias, _X_SCALE * w_scale, np.int32)),
    ]
    h = g.op("QLinearConv", conv_inputs, name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])  # [N,8,16,16]
    fc = g.he((16, 10), 16)
    fc_scale = _pow2_scale(np.abs(fc).max(), _WEIGHT_QMAX)
    y_scale, y_zp = g.init("y_scale", np.float32(2.0**-3)), g.init("y_zero_point", np.uint8(128))
    matmul_inputs = [
        h,
        c_scale,
        c_zp,
        g.init("fc.weight_quantized", _quantize(fc, fc_scale, np.int8)),
        g.init("fc.weight_scale", fc_scale),
        g.init("fc.weight_zero_point", np.int8(0)),
        y_scale,
        y_zp,
    ]
    h = g.op("QLinearMatMul", matmul_inputs, name="fc")  # [N,8,16,10]
    g.op("DequantizeLinear", [h, y_scale, y_zp], name="y_dequantize", out="y")
    model = g.model("quantized_qlinear", [_f32("x", ["N", 3, 16, 16])], [_f32("y", ["N", 8, 16, 10])], opset=13)
    return TestGraph("quantized_qlinear", model, _normal_feeds((3, 16, 16)), quantized=True)


def quantized_convinteger() -> TestGraph:
    """Integer Conv: QuantizeLinear -> ConvInteger (uint8 weight, zero point 128) -> Cast -> Mul(per-channel
    scale) -> Add(bias) -> Relu."""
    g = _Builder()
    x_zp = g.init("x_zero_point", _X_ZERO_POINT)
    x = g.op("QuantizeLinear", ["x", g.init("x_scale", _X_SCALE), x_zp], name="x_quantize")
    w = g.he((8, 3, 3, 3), 27)
    w_scale = _pow2_scale(np.abs(w).reshape(8, -1).max(axis=1), 127)
    inputs = [
        x,
        g.init("conv.weight_quantized", _quantize(w, w_scale.reshape(-1, 1, 1, 1), np.uint8, 128)),
        x_zp,
        g.init("conv.weight_zero_point", np.uint8(128)),
    ]
    h = g.op("ConvInteger", inputs, name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])  # int32
    h = g.op("Cast", [h], name="conv/Cast", to=onnx.TensorProto.FLOAT)
    h = g.op("Mul", [h, g.init("conv.scale", (_X_SCALE * w_scale).reshape(1, -1, 1, 1))], name="conv/Mul")
    h = g.op("Add", [h, g.init("conv.bias", g.small((1, 8, 1, 1)))], name="conv/Add")
    g.op("Relu", [h], name="relu", out="y")
    model = g.model("quantized_convinteger", [_f32("x", ["N", 3, 16, 16])], [_f32("y", ["N", 8, 16, 16])], opset=13)
    return TestGraph("quantized_convinteger", model, _normal_feeds((3, 16, 16)), quantized=True)


def quantized_dynamic() -> TestGraph:
    """ORT quantize_dynamic form: DynamicQuantizeLinear -> MatMulInteger (int8 weight) -> Cast ->
    Mul(x_scale * w_scale) -> Add(bias)."""
    g = _Builder()
    x_q, x_scale, x_zp = g.op("DynamicQuantizeLinear", ["x"], name="x_quantize", n_out=3)
    w = g.he((32, 16), 32)
    w_scale = np.float32(np.abs(w).max() / _WEIGHT_QMAX)
    inputs = [
        x_q,
        g.init("fc.weight_quantized", _quantize(w, w_scale, np.int8)),
        x_zp,
        g.init("fc.weight_zero_point", np.int8(0)),
    ]
    h = g.op("MatMulInteger", inputs, name="fc/MatMulInteger")
    h = g.op("Cast", [h], name="fc/Cast", to=onnx.TensorProto.FLOAT)
    scale = g.op("Mul", [x_scale, g.init("fc.weight_scale", w_scale)], name="fc/scale")
    h = g.op("Mul", [h, scale], name="fc/Mul")
    g.op("Add", [h, g.init("fc.bias", g.small((16,)))], name="fc/Add", out="y")
    model = g.model("quantized_dynamic", [_f32("x", ["N", "T", 32])], [_f32("y", ["N", "T", 16])], opset=13)
    return TestGraph("quantized_dynamic", model, _normal_feeds((SEQ_LEN, 32)), quantized=True)


def quantized_matmulnbits() -> TestGraph:
    """Weight-only 4-bit: com.microsoft MatMulNBits (block 32, default zero point 8) + Add bias, as ORT's
    MatMulNBitsQuantizer writes it. A contrib op: onnx has no schema for it and onnx.reference cannot run it.
    B is [N, blocks, block_size/2] uint8, two 4-bit values a byte, low nibble first."""
    g = _Builder()
    k, n, block = 32, 16, 32
    w = g.he((n, k), k)  # MatMulNBits stores the weight transposed: [N, K]
    blocks = w.reshape(n, k // block, block)
    scale = (np.abs(blocks).max(axis=2) / 7).astype(np.float32)  # [N, blocks]
    q = _quantize(blocks, scale[..., None], np.uint8, 8)  # |w / scale| <= 7: codes in [1, 15]
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
    inputs = ["x", g.init("fc.weight_quantized", packed), g.init("fc.weight_scale", scale.reshape(-1))]
    h = g.op(
        "MatMulNBits",
        inputs,
        name="fc/MatMulNBits",
        domain="com.microsoft",
        K=k,
        N=n,
        bits=4,
        block_size=block,
    )
    g.op("Add", [h, g.init("fc.bias", g.small((n,)))], name="fc/Add", out="y")
    model = g.model(
        "quantized_matmulnbits",
        [_f32("x", ["N", "T", k])],
        [_f32("y", ["N", "T", n])],
        extra_opsets=[("com.microsoft", 1)],
    )
    return TestGraph("quantized_matmulnbits", model, _normal_feeds((SEQ_LEN, k)), quantized=True)


BUILDERS: dict[str, Callable[[], TestGraph]] = {
    # weighted layers
    "conv": conv,
    "conv_nobias": conv_nobias,
    "conv_grouped": conv_grouped,
    "conv_depthwise": conv_depthwise,
    "conv_transpose": conv_transpose,
    "gemm": gemm,
    "gemm_nobias": gemm_nobias,
    "matmul_add": matmul_add,
    "matmul_nobias": matmul_nobias,
    "attention": attention,
    "gelu_mlp": gelu_mlp,
    "batchnorm_conv": batchnorm_conv,
    "hardswish_cnn": hardswish_cnn,
    # real-world structure
    "constant_weights": constant_weights,
    "if_conv": if_conv,
    "loop_matmul": loop_matmul,
    "external_data": external_data,
    "transpose_weight": transpose_weight,
    "tied_embedding": tied_embedding,
    "reshape_weight": reshape_weight,
    "shared_weight": shared_weight,
    "recurrent_state": recurrent_state,
    "lstm": lstm,
    "fp16_conv": fp16_conv,
    "integer_input": integer_input,
    "opset11_conv": opset11_conv,
    "opset13_gemm": opset13_gemm,
    "multi_output": multi_output,
    "concat_conv": concat_conv,
    # already quantized
    "quantized_qdq": quantized_qdq,
    "quantized_qlinear": quantized_qlinear,
    "quantized_convinteger": quantized_convinteger,
    "quantized_dynamic": quantized_dynamic,
    "quantized_matmulnbits": quantized_matmulnbits,
}
