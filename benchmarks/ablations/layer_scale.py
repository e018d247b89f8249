"""One quantized layer taken apart: its input's smoothing factors and activation scale, and its error as that
scale varies, in two quantized models of the same FP32 model.

    python -m benchmarks.ablations.transformer_w8a8 --models minilm --out DIR
    python -m benchmarks.ablations.layer_scale --model minilm --layer node_MatMul_134 \\
        DIR/minilm/onnxbc_1.onnx DIR/minilm/nncf_5.onnx

(``onnxbc_1`` is ``onnxbc --no-quantize-attention``, ``nncf_5`` NNCF's symmetric transformer mode.) The layer
is a MatMul with a constant weight whose input is ``DequantizeLinear(QuantizeLinear(x * m))`` (``m``: the
smoothing factors, 1 without smoothing) and whose output may feed an Add with a constant bias. The layer is
recomputed in numpy from the FP32 model's input activation ``x`` on the eval split, so the error is the layer's
own, not what reaches it from earlier layers: ``DQ(Q(x * m)) @ DQ(W') + b'`` against ``x @ W + b``, relative
MSE over the real tokens (where the model has an ``attention_mask`` input, padded positions are left out:
they reach no output). Each model's own activation scale is then multiplied by a few factors, and the scale
of the real tokens' min-max (``max |x * m| / 127`` on the calibration split) is tried too. It also says how
much of the calibration data is padding and in how many input channels a padded position holds the
channel's maximum, since both tools take their statistics over every position.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx_ir as ir

from benchmarks.ablations.candidate_splits import run
from benchmarks.zoo import DEFAULT_CACHE, MODELS

SCALE_FACTORS = (0.75, 1.0, 1.25, 1.5, 2.0, 3.0)


def constant(value: ir.Value) -> np.ndarray | None:
    """A constant input's array (initializer or Constant node, or a DequantizeLinear of those), else None."""
    tensor = ir.convenience.get_const_tensor(value)
    if tensor is not None:
        return tensor.numpy()
    node = value.producer()
    if node is None or node.op_type != "DequantizeLinear":
        return None
    q, scale = constant(node.inputs[0]), constant(node.inputs[1])
    if q is None or scale is None:
        return None
    zero = constant(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    zero = np.zeros_like(scale) if zero is None else zero
    if scale.size > 1:  # per axis (1-D) or blocked (same rank as q) along ``axis``
        axis = node.attributes.get_int("axis", 1) % q.ndim
        block = node.attributes.get_int("block_size", 0)
        if block:
            scale, zero = (np.repeat(a, block, axis=axis).take(range(q.shape[axis]), axis=axis) for a in (scale, zero))
        else:
            view = [1] * q.ndim
            view[axis] = -1
            scale, zero = scale.reshape(view), zero.reshape(view)
    return (q.astype(np.float32) - zero.astype(np.float32)) * scale.astype(np.float32)


def layer_parts(path: Path, layer: str) -> dict:
    """Smoothing factors, activation scale and zero point, dequantized weight and bias of ``layer`` in ``path``."""
    graph = ir.load(path).graph
    node = next((n for n in graph if n.name == layer and n.op_type == "MatMul"), None)
    if node is None:
        raise SystemExit(f"{path}: no MatMul named {layer}")
    dq = node.inputs[0].producer()
    q = dq.inputs[0].producer() if dq is not None and dq.op_type == "DequantizeLinear" else None
    if q is None or q.op_type != "QuantizeLinear":
        raise SystemExit(f"{path}: the input of {layer} is not quantized (DequantizeLinear(QuantizeLinear(...)))")
    source, factors = q.inputs[0], np.float32(1.0)
    mul = source.producer()
    if mul is not None and mul.op_type == "Mul":
        const = [i for i in mul.inputs if constant(i) is not None]
        if len(const) == 1:
            factors = constant(const[0]).reshape(-1)
            source = next(i for i in mul.inputs if i is not const[0])
    weight = constant(node.inputs[1])
    if weight is None:
        raise SystemExit(f"{path}: the weight of {layer} is not a constant")
    zero = constant(dq.inputs[2]) if len(dq.inputs) > 2 and dq.inputs[2] is not None else None
    add = next((c for c, _ in node.outputs[0].uses() if c.op_type == "Add"), None)
    bias = None if add is None else constant(next(i for i in add.inputs if i is not node.outputs[0]))
    return {
        "input": source.name,
        "factors": factors,
        "scale": float(constant(dq.inputs[1])),
        "zero": float(zero) if zero is not None else 0.0,
        "signed": dq.inputs[0].dtype == ir.DataType.INT8,
        "weight": weight,
        "bias": 0.0 if bias is None else bias,
        "output": node.outputs[0].name if bias is None else add.outputs[0].name,
    }


def activations(fp32: ir.Model, path: Path, names: list[str]) -> tuple[list[np.ndarray], np.ndarray]:
    """``names`` from the FP32 model on a data file, flattened to [positions, channels], and the real-token mask."""
    with np.load(path) as data:
        feeds = {v.name: data[v.name] for v in fp32.graph.inputs}
    per_output = list(zip(*run(fp32, feeds, names), strict=True))[1:]  # [0] is the model's first output
    outs = [np.concatenate(parts) for parts in per_output]
    mask = feeds.get("attention_mask")
    flat = [o.reshape(-1, o.shape[-1]) for o in outs]
    real = mask.reshape(-1).astype(bool) if mask is not None else np.ones(len(flat[0]), dtype=bool)
    return flat, real


def quantize(x: np.ndarray, scale: float, zero: float, signed: bool) -> np.ndarray:
    low, high = (-128, 127) if signed else (0, 255)
    return (np.clip(np.round(x / scale) + zero, low, high) - zero) * scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", choices=sorted(MODELS))
    parser.add_argument("--layer", required=True, help="the MatMul's node name (the same in both models)")
    parser.add_argument("quantized", nargs="+", type=Path, help="quantized models of the FP32 model")
    args = parser.parse_args()
    bench = MODELS[args.model].prepare(DEFAULT_CACHE)
    fp32 = ir.load(bench.onnx_path)
    parts = {path: layer_parts(path, args.layer) for path in args.quantized}
    first = next(iter(parts.values()))
    names = [first["input"], first["output"]]
    (xc, _), real_c = activations(fp32, bench.calib_path, names)
    (x, y), real = activations(fp32, bench.eval_path, names)
    padded = np.abs(xc[~real_c]).max(axis=0) if (~real_c).any() else np.zeros(xc.shape[1])
    held = np.abs(xc[real_c]).max(axis=0)
    print(f"{args.model} {args.layer}: input {names[0]}, {xc.shape[1]} channels")
    print(
        f"calibration: {1 - real_c.mean():.0%} of positions are padding; padding holds the channel max in "
        f"{(padded > held).sum()} channels (up to {np.max(padded / np.maximum(held, 1e-30)):.1f}x the real tokens')"
    )
    x, y, xc = x[real], y[real], xc[real_c]
    power = float(np.mean(y**2))
    header = ["model", "factors min..max", "scale", *[f"scale x{f}" for f in SCALE_FACTORS], "real-token min-max"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for path, p in parts.items():

        def error(scale: float, p=p) -> float:
            out = quantize(x * p["factors"], scale, p["zero"], p["signed"]) @ p["weight"] + p["bias"]
            return float(np.mean((out - y) ** 2)) / power

        minmax = float(np.abs(xc * p["factors"]).max()) / (127 if p["signed"] else 255)
        cells = [f"{error(p['scale'] * f):.3g}" for f in SCALE_FACTORS] + [f"{error(minmax):.3g} ({minmax:.3g})"]
        m = np.atleast_1d(p["factors"])
        lines.append(f"| {path.stem} | {m.min():.3g}..{m.max():.3g} | {p['scale']:.3g} | " + " | ".join(cells) + " |")
    print("layer output rel. MSE on the eval split's real tokens, by activation scale:")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
