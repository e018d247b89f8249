"""A Llama-shaped decoder with random weights, written with external data one tensor at a time (issue: scale).

    input_ids int64 [batch, seq] -> Gather(embedding) ->
    per layer: RMSNorm -> q, k, v MatMul -> heads -> causal softmax(q k^T / sqrt(d_head)) v -> o MatMul -> + residual
               RMSNorm -> down(SiLU(gate x) * up x) -> + residual
    -> RMSNorm -> MatMul with the embedding table transposed (tied LM head) -> logits float32 [batch, seq, vocab]

RMSNorm is written out (Mul, ReduceMean, Add, Sqrt, Div, Mul: opset 18 has no RMSNormalization). Weights are
normal with std 0.02 (the output projections scaled by 1 / sqrt(2 layers)), seeded; the norm gains are 1. No
rotary embedding: the attention, MLP and norm structure is what matters for memory and for quantization.

The default shape holds 3.1 GB of float32 weights (d 2048, 14 layers, MLP 5632, vocab 32000). The weights go
to ``NAME.onnx.data`` as they are made, so writing it never holds more than one tensor::

    python -m models.llama_shaped /tmp/llama/model.onnx            # 3.1 GB
    python -m models.llama_shaped /tmp/tiny.onnx --hidden 64 --layers 2 --mlp 128 --vocab 256 --heads 4
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper


@dataclasses.dataclass(frozen=True)
class Shape:
    hidden: int = 2048
    layers: int = 14
    mlp: int = 5632
    vocab: int = 32000
    heads: int = 16
    seed: int = 0

    @property
    def parameters(self) -> int:
        per_layer = 4 * self.hidden**2 + 3 * self.hidden * self.mlp + 2 * self.hidden
        return self.vocab * self.hidden + self.layers * per_layer + self.hidden


class _Writer:
    """Nodes, and initializers whose data is appended to one external file as they are made."""

    def __init__(self, path: Path, seed: int) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.location = path.name + ".data"
        self.data = open(path.parent / self.location, "wb")  # noqa: SIM115 (closed by write())
        self.rng = np.random.default_rng(seed)

    def weight(self, name: str, shape: tuple[int, ...], std: float | None = 0.02) -> str:
        """A float32 weight: normal with ``std``, or ones (``std=None``), straight to the data file."""
        a = np.ones(shape, np.float32) if std is None else (self.rng.standard_normal(shape, np.float32) * std)
        offset = self.data.tell()
        self.data.write(a.tobytes())
        t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=shape, data_location=TensorProto.EXTERNAL)
        for key, value in (("location", self.location), ("offset", str(offset)), ("length", str(a.nbytes))):
            t.external_data.add(key=key, value=value)
        self.inits.append(t)
        return name

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name


def _rms_norm(w: _Writer, x: str, name: str, hidden: int) -> str:
    square = w.op("Mul", [x, x], f"{name}/square")
    mean = w.op("ReduceMean", [square, "last_axis"], f"{name}/mean", keepdims=1)
    root = w.op("Sqrt", [w.op("Add", [mean, "eps"], f"{name}/add_eps")], f"{name}/root")
    return w.op("Mul", [w.op("Div", [x, root], f"{name}/normed"), w.weight(f"{name}.weight", (hidden,), None)], name)


def _attention(w: _Writer, x: str, p: str, s: Shape) -> str:
    d_head = s.hidden // s.heads
    split = []
    for proj in ("q", "k", "v"):
        y = w.op("MatMul", [x, w.weight(f"{p}.{proj}_proj.weight", (s.hidden, s.hidden))], f"{p}/{proj}_proj")
        heads = w.op("Reshape", [y, "heads_shape"], f"{p}/{proj}_heads")
        split.append(w.op("Transpose", [heads], f"{p}/{proj}_t", perm=[0, 2, 1, 3]))  # [b, h, t, d]
    q, k, v = split
    kt = w.op("Transpose", [k], f"{p}/k_transposed", perm=[0, 1, 3, 2])
    scores = w.op(
        "Div", [w.op("MatMul", [q, kt], f"{p}/qk"), w.const(f"{p}/scale", np.float32(math.sqrt(d_head)))], f"{p}/scores"
    )
    probs = w.op("Softmax", [w.op("Add", [scores, "causal_mask"], f"{p}/masked")], f"{p}/probs", axis=-1)
    context = w.op("Transpose", [w.op("MatMul", [probs, v], f"{p}/context")], f"{p}/context_t", perm=[0, 2, 1, 3])
    merged = w.op("Reshape", [context, "hidden_shape"], f"{p}/merged")
    std = 0.02 / math.sqrt(2 * s.layers)
    return w.op("MatMul", [merged, w.weight(f"{p}.o_proj.weight", (s.hidden, s.hidden), std)], f"{p}/o_proj")


def _mlp(w: _Writer, x: str, p: str, s: Shape) -> str:
    gate = w.op("MatMul", [x, w.weight(f"{p}.gate_proj.weight", (s.hidden, s.mlp))], f"{p}/gate_proj")
    silu = w.op("Mul", [gate, w.op("Sigmoid", [gate], f"{p}/sigmoid")], f"{p}/silu")
    up = w.op("MatMul", [x, w.weight(f"{p}.up_proj.weight", (s.hidden, s.mlp))], f"{p}/up_proj")
    both = w.op("Mul", [silu, up], f"{p}/gated")
    std = 0.02 / math.sqrt(2 * s.layers)
    return w.op("MatMul", [both, w.weight(f"{p}.down_proj.weight", (s.mlp, s.hidden), std)], f"{p}/down_proj")


def write(path: str | Path, shape: Shape = Shape()) -> Path:
    """Write the model to ``path`` and its weights to ``path.data`` (replacing both); return ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    s = shape
    w = _Writer(path, s.seed)
    try:
        w.const("last_axis", np.array([-1], np.int64))
        w.const("eps", np.float32(1e-5))
        w.const("heads_shape", np.array([0, 0, s.heads, s.hidden // s.heads], np.int64))
        w.const("hidden_shape", np.array([0, 0, s.hidden], np.int64))
        # causal mask [t, t] from the sequence length: 0 on and below the diagonal, -1e4 above
        seq = w.op("Shape", ["input_ids"], "seq_len", start=1, end=2)
        ones = w.op(
            "ConstantOfShape",
            [w.op("Concat", [seq, seq], "mask_shape", axis=0)],
            "ones",
            value=onnx.numpy_helper.from_array(np.array([1.0], np.float32)),
        )
        upper = w.op("Trilu", [ones, w.const("one_i64", np.array(1, np.int64))], "upper", upper=1)
        w.op("Mul", [upper, w.const("minus_big", np.float32(-1e4))], "causal_mask")
        table = w.weight("embed_tokens.weight", (s.vocab, s.hidden))
        h = w.op("Gather", [table, "input_ids"], "embed")
        for i in range(s.layers):
            p = f"layers.{i}"
            a = _attention(w, _rms_norm(w, h, f"{p}.input_layernorm", s.hidden), f"{p}.self_attn", s)
            h = w.op("Add", [h, a], f"{p}/attn_residual")
            m = _mlp(w, _rms_norm(w, h, f"{p}.post_attention_layernorm", s.hidden), f"{p}.mlp", s)
            h = w.op("Add", [h, m], f"{p}/mlp_residual")
        h = _rms_norm(w, h, "norm", s.hidden)
        head = w.op("Transpose", [table], "lm_head.weight", perm=[1, 0])  # tied to the embedding
        w.op("MatMul", [h, head], "logits")
    finally:
        w.data.close()
    graph = helper.make_graph(
        w.nodes,
        "llama_shaped",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", s.vocab])],
        w.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    onnx.save_model(model, path)  # the weights are already in the data file: only the graph is written here
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    defaults = Shape()
    for field in dataclasses.fields(Shape):
        parser.add_argument(f"--{field.name}", type=int, default=getattr(defaults, field.name))
    args = parser.parse_args(argv)
    shape = Shape(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Shape)})
    path = write(args.output, shape)
    data = path.parent / (path.name + ".data")
    print(f"wrote {path} and {data.name}: {shape.parameters:,} parameters, {data.stat().st_size / 1e9:.2f} GB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
