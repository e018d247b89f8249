"""``compress --data-free``: DF-MPC compensation and data-free bias correction, with no data and no model run.

load -> prepare (BatchNormalization folded into the layers, its statistics kept) -> targets -> pairs
(``onnxbc.pairs``) -> per pair: fold a BatchNormalization still in the graph into the low layer, quantize it at
``--weights``, closed-form factors ``c`` (``solvers.dfmpc``), each kept only where the expected error of the
low layer's output, modelled from the statistics of its input, is lower with it (no statistics: none where
per-channel scales would absorb them, all where they would not), moved into the low layer's bias and the next
layer's input channels -> quantize every other layer at ``--next-weights`` (mse weight scale) -> data-free
bias correction of every layer whose input moments are modelled from BatchNormalization statistics
(``pairs.input_moments``: through ReLU, ReLU6/Clip, HardSwish, SiLU, ..., pools and residual Adds) -> rewrite
(``RescalePairsPass``, ``InsertQDQPass``, ``FoldBiasPass``) -> static checks -> write model and report as one
transaction. The front (output paths, load, prepare) and the back (write) are ``onnxbc.flow``'s.

Any CNN: a layer in no pair (ReLU6, HardSwish, a BatchNormalization folded at export, ...) gets plain
data-free rounding, with bias correction where its input has statistics; each says which in a note. Only a
model with nothing to quantize is refused.

Precision: the low layer of each pair takes ``--weights``; every other layer (the next layers, and layers in
no pair, which nothing compensates) takes ``--next-weights``. Weight-only: activation ranges need data.
``--bias-correction none`` keeps the same precision layout and BN folding but sets every factor to 1 and
skips the bias correction: plain data-free rounding, for comparison.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from onnxbc import flow, validate
from onnxbc.errors import OnnxbcError
from onnxbc.flow import CompressResult
from onnxbc.held import ModelLike
from onnxbc.options import BiasCorrection, CompressOptions, WeightType
from onnxbc.options import Target as Runtime
from onnxbc.pairs import InputModel, Pair, Unused, batchnorm_params, find_pairs, input_moments
from onnxbc.passes.dfmpc import PairEdit, RescalePairsPass
from onnxbc.passes.fold_bias import FoldBiasPass
from onnxbc.passes.fold_bn import FoldedBatchNorm
from onnxbc.passes.gelu_form import GeluFormPass
from onnxbc.passes.qdq import InsertQDQPass
from onnxbc.plan import BiasFold, QuantPlan, WeightQuant
from onnxbc.progress import Stages
from onnxbc.quantizers import unsupported_weight, weight_quant
from onnxbc.records import bias_record, skipped, weight_record
from onnxbc.report import LayerRecord, Report
from onnxbc.solvers import dfmpc
from onnxbc.solvers.quant import dequantize
from onnxbc.targets import Target, Targets, find_targets, weight_array

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class _Layer:
    """What the solver decided for one target layer."""

    target: Target
    weight: np.ndarray  # float weight as the rewritten graph holds it (BN folded, factors applied)
    quant: WeightQuant | None = None
    recurrence: WeightQuant | None = None  # LSTM/GRU/RNN: R, at the width of W
    role: str = "unpaired"  # "low" | "next" | "unpaired"
    pair: Pair | None = None
    input_scale: np.ndarray | None = None  # per input feature: the graph feeds x / input_scale (next layers)
    notes: list[str] = dataclasses.field(default_factory=list)
    weight_error: tuple[float, float] | None = None  # low layers: before / after the factors
    factors: np.ndarray | None = None  # low layers: c per output channel (1 where not kept)
    check: dict | None = None  # low layers: the factors' validation, for the report
    no_pair: str | None = None  # unpaired layers: why no pair starts at it
    low_bias: np.ndarray | None = None  # low layers: folded bias / c
    bias: BiasFold | None = None
    bias_skip: str | None = None


def compress(
    model: ModelLike,
    output: str | Path | None = None,
    *,
    options: CompressOptions,
    report: str | Path | None = None,
    force: bool = False,
    stages: Stages | None = None,
) -> CompressResult:
    """Quantize ``model`` data-free (see the module docstring) and write it and its report."""
    stages = stages or Stages(enabled=False)
    run = flow.start(model, output, report, options=options, force=force, stages=stages)
    rep = run.report
    rep.data = {"source": "none (--data-free)", "fit_samples": 0, "holdout_samples": 0, "random": False}
    rep.device = "none (data-free: the model is never run)"
    prepared = flow.load_and_prepare(run, options.required_opset)
    working, statistics = prepared.model, prepared.folds.batchnorms
    targets = find_targets(working, quantize_attention=False)
    pairs, unused = find_pairs(working, targets, statistics)
    compensate = options.bias_correction is not BiasCorrection.NONE
    with stages.step("Solving DF-MPC factors and data-free bias correction", len(targets.targets)) as advance:
        layers = _solve(targets, pairs, unused, statistics, options, compensate, advance)
    if not any(layer.quant is not None for layer in layers.values()):
        why = "; ".join(f"{n}: {'; '.join(layer.notes)}" for n, layer in list(layers.items())[:2])
        raise OnnxbcError(
            f"{run.name}: --data-free found nothing to quantize: "
            f"{why or 'no Conv, ConvTranspose, Gemm or MatMul with a constant weight'}"
        )

    plan = QuantPlan()
    for layer in layers.values():
        for quant in (layer.quant, layer.recurrence):
            if quant is not None:
                plan.weights[quant.source] = quant
        if layer.bias is not None:
            plan.biases[layer.target.name] = layer.bias
    edits = [_edit(p, layers) for p in pairs]
    with run.timer("rewrite"):
        working = RescalePairsPass(edits)(working).model
        working = InsertQDQPass(plan)(working).model
        folded = FoldBiasPass(plan.biases)(working)
        if options.target is Runtime.ONNXRUNTIME:
            rep.fusion = {"gelu_form": GeluFormPass()(folded.model).sites}
    validate.require(folded.model, options.target)
    rep.compensation = _compensation_report(pairs, unused, layers, compensate)
    rep.layers = _records(targets, layers, folded.sites)
    rep.warnings.extend(_warnings(pairs, layers, options, compensate))
    return flow.write(run, folded.model)


def _warnings(pairs: list[Pair], layers: dict[str, _Layer], options: CompressOptions, compensate: bool) -> list[str]:
    found = []
    if not pairs:
        bits = (
            f"; --weights ({options.weights.value}) applies to no layer"
            if options.weights != options.next_weights
            else ""
        )
        found.append(
            f"no DF-MPC pair (low Conv/Gemm -> [BatchNormalization] -> ReLU -> next layer): every layer gets plain "
            f"data-free rounding at --next-weights ({options.next_weights.value}){bits}"
        )
    if compensate and not any(layer.bias is not None for layer in layers.values()):
        factors = "; DF-MPC factors cannot be checked (see each pair's validation)" if pairs else ""
        found.append(
            "no BatchNormalization statistics for any layer's input (folded at export?): no data-free bias "
            f"correction{factors}"
        )
    return found


def _solve(
    targets: Targets,
    pairs: list[Pair],
    unused: list[Unused],
    statistics: dict[str, FoldedBatchNorm],
    options: CompressOptions,
    compensate: bool,
    advance,
) -> dict[str, _Layer]:
    layers = {t.name: _Layer(t, weight_array(t.weight)) for t in targets.targets if t.weight is not None}
    for u in unused:
        if u.low in layers:
            layers[u.low].no_pair = u.reason
    models = {name: input_moments(layer.target, statistics) for name, layer in layers.items()}
    low_options = dataclasses.replace(options, data_free=False)
    high = options.next_weights  # none: the other layers stay float (no options to quantize them)
    high_options = None if high is WeightType.NONE else dataclasses.replace(options, data_free=False, weights=high)
    for p in pairs:  # 1. low layers: fold BN, quantize, factors
        layer = layers[p.low.name]
        layer.role, layer.pair = "low", p
        group = targets.weights[p.low.weight.source.name]
        w = np.moveaxis(layer.weight, group.channel_axis, 0)
        bias = _bias(p.low)
        if p.batchnorm is not None:
            w, h = dfmpc.fold_batchnorm(w, bias, *batchnorm_params(p.batchnorm))
            layer.notes.append(f"BatchNormalization '{p.batchnorm.name}' folded in")
        else:
            h = np.zeros(len(w), np.float32) if bias is None else bias
            layer.notes.append(
                f"BatchNormalization '{p.folded.name}' folded in by the prepare passes"
                if p.folded is not None
                else "no BatchNormalization after it (folded at export, or none)"
            )
        layer.weight = np.moveaxis(w, 0, group.channel_axis)
        layer.quant = weight_quant(group, layer.weight, low_options)
        w_hat = np.moveaxis(
            dequantize(layer.quant.codes, layer.quant.scale, layer.quant.granularity), group.channel_axis, 0
        )
        c = np.ones(len(w))
        if compensate:
            gran = layer.quant.granularity  # one scale per output channel absorbs the factors
            absorbed = gran.axis == group.channel_axis and not gran.block_size
            c, layer.check = _choose_factors(layer, w, w_hat, dfmpc.factors(w, w_hat), models[p.low.name], absorbed)
            layer.notes.append(f"DF-MPC factors: {layer.check['decision']}")
        layer.weight_error = (dfmpc.weight_error(w, w_hat), dfmpc.weight_error(w, w_hat, c))
        layer.factors, layer.low_bias = c, np.asarray(h, np.float64) / c
        layer.notes.append(f"low-bit layer of pair {p.name}")
        nxt = layers[p.next.name]
        nxt.role, nxt.pair = "next", p
        nxt.input_scale = np.repeat(c, p.repeat)
        shape = [1] * nxt.weight.ndim
        shape[targets.weights[p.next.weight.source.name].input_axis] = -1
        nxt.weight = (nxt.weight * nxt.input_scale.reshape(shape)).astype(np.float32)
        nxt.notes.append(f"next layer of pair {p.name}: input channels multiplied by the factors")
    for layer in layers.values():  # 2. every other layer at the higher width
        advance()
        group = targets.weights.get(layer.target.weight.source.name)
        if layer.role == "low" or group is None:
            continue
        if high_options is None:
            layer.notes.append("--next-weights none: left float")
            continue
        unsupported = unsupported_weight(group, high_options)
        if unsupported:
            layer.notes.append(unsupported)
            continue
        layer.quant = weight_quant(group, layer.weight, high_options)
        r = layer.target.recurrence
        if r is not None and r.source.name in targets.weights:
            layer.recurrence = weight_quant(targets.weights[r.source.name], weight_array(r), high_options)
    for name, layer in layers.items():  # 3. data-free bias correction
        if layer.quant is None:
            continue
        if compensate:
            _correct_bias(layer, models[name], targets)
        else:
            layer.bias_skip = "compensation off (--bias-correction none)"
        if layer.role == "unpaired":  # its precision comes from --next-weights: nothing compensates it
            how = (
                f"+ bias correction from BatchNormalization statistics ({models[name].describe()})"
                if layer.bias is not None
                else f"only ({layer.bias_skip})"
            )
            rounding = f"int{layer.quant.bits}, {layer.quant.method} scale"
            layer.notes.append(f"no DF-MPC pair: {layer.no_pair}; data-free rounding ({rounding}) {how}")
    return layers


def _choose_factors(
    layer: _Layer, w: np.ndarray, w_hat: np.ndarray, c: np.ndarray, model: InputModel | str, absorbed: bool
) -> tuple[np.ndarray, dict]:
    """The DF-MPC factors to apply and the check for the report (errors relative to the modelled output power).

    With statistics for the low layer's input (``model``), each factor is kept only where it lowers the expected
    error of its output channel (``dfmpc.check_factors``). Without them nothing can be checked: where one scale
    per output channel would absorb the factors (``absorbed``), they would only refit scales the mse search
    chose, and none is applied (on PP-OCR they cost line accuracy); where it would not (one scale per tensor,
    or blocks), the weights alone decide, as in the paper."""
    proposed = {"min": float(c.min()), "max": float(c.max())}
    if isinstance(model, str):
        if absorbed:
            why = f"not applied: no statistics to check them ({model}), and per-channel scales would absorb them"
            return np.ones(len(w)), {"decision": why, "proposed": proposed}
        why = f"applied unchecked: no statistics ({model}); one scale per tensor or block cannot absorb them"
        return c, {"decision": why, "proposed": proposed}
    group = layer.target.node.attributes.get_int("group", 1) if layer.target.op == "Conv" else 1
    if len(model.var) != w.shape[1] * group:
        reason = f"{len(model.var)} modelled input features, the weight reads {w.shape[1] * group}"
        return np.ones(len(w)), {"decision": f"not applied: {reason}", "proposed": proposed}
    kept, plain, scaled = dfmpc.check_factors(w, w_hat, c, model.var, group)
    power = float(dfmpc.expected_error(w, np.zeros_like(w_hat), np.ones(len(w)), model.var, group).sum()) or 1.0
    n = int((kept != 1.0).sum())
    decision = "applied" if n == len(w) else f"kept on {n} of {len(w)} channels" if n else "not applied"
    return kept, {
        "decision": f"{decision} (expected output error, input from {model.describe()})",
        "channels": len(w),
        "kept": n,
        "proposed": proposed,
        "expected_rel_error_plain": float(plain.sum()) / power,
        "expected_rel_error_factors": float(scaled.sum()) / power,
        "expected_rel_error_chosen": float(np.minimum(plain, scaled).sum()) / power,
    }


def _correct_bias(layer: _Layer, model: InputModel | str, targets: Targets) -> None:
    """Data-free bias correction of one quantized layer: ``-(W_hat - W) . E[x]`` from the modelled input mean."""
    if layer.target.op not in ("Conv", "Gemm", "MatMul"):
        layer.bias_skip = f"no data-free bias correction for {layer.target.op}"
        return
    if isinstance(model, str):
        layer.bias_skip = f"no BatchNormalization statistics: {model}"
        return
    shape = layer.target.node.inputs[layer.target.activation_inputs[0]].shape
    if layer.target.op == "MatMul" and (shape is None or len(shape) != 2):
        layer.bias_skip = "MatMul input is not 2-D: BatchNormalization channels are not its features"
        return
    group = targets.weights[layer.target.weight.source.name]
    features = None if group.input_axis is None else layer.weight.shape[group.input_axis]
    if layer.target.op == "Conv" and features is not None:
        features *= layer.target.node.attributes.get_int("group", 1)
    if features != len(model.mean):
        layer.bias_skip = f"{len(model.mean)} modelled input features, the weight reads {features}"
        return
    mean = model.mean if layer.input_scale is None else model.mean / layer.input_scale
    layer.bias = BiasFold(layer.target.name, -_shift(layer, targets, mean), layer.target.output_channel_axis)
    if layer.role != "unpaired":  # an unpaired layer's note says it with the rounding
        layer.notes.append(f"data-free bias correction from {model.describe()} (normal model)")


def _shift(layer: _Layer, targets: Targets, mean: np.ndarray) -> np.ndarray:
    """Expected output shift ``(W_hat - W) . E[x]`` of a quantized layer, per output channel."""
    group = targets.weights[layer.target.weight.source.name]
    q = layer.quant
    dw = dequantize(q.codes, q.scale, q.granularity) - layer.weight
    if layer.role == "low":  # the graph's output is the float output divided by c
        reference = np.moveaxis(layer.weight, group.channel_axis, 0) / layer.factors.reshape(-1, *[1] * (dw.ndim - 1))
        dw = np.moveaxis(dequantize(q.codes, q.scale, q.granularity), group.channel_axis, 0) - reference
        dw = np.moveaxis(dw, 0, group.channel_axis)
    if layer.target.op == "Conv":
        return dfmpc.conv_shift(dw, mean, layer.target.node.attributes.get_int("group", 1))
    return dfmpc.linear_shift(np.moveaxis(dw, group.channel_axis, 0), mean)


def _bias(t: Target) -> np.ndarray | None:
    value = t.node.inputs[2] if len(t.node.inputs) > 2 else None
    if value is None:
        return None
    return np.asarray(value.const_value.numpy(), np.float32).reshape(-1)


def _edit(p: Pair, layers: dict[str, _Layer]) -> PairEdit:
    low, nxt = layers[p.low.name], layers[p.next.name]
    return PairEdit(
        p.low.name,
        p.batchnorm.name if p.batchnorm is not None else None,
        p.next.name,
        low.weight / _along(low.factors, low.weight.ndim, p.low.weight.channel_axis),
        low.low_bias.astype(np.float32),
        nxt.weight,
    )


def _along(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """``v`` shaped to broadcast along ``axis`` of an ``ndim``-D array."""
    shape = [1] * ndim
    shape[axis] = -1
    return np.asarray(v).reshape(shape)


def _compensation_report(pairs: list[Pair], unused, layers: dict[str, _Layer], compensate: bool) -> dict:
    rows = []
    for p in pairs:
        low = layers[p.low.name]
        before, after = low.weight_error
        rows.append(
            {
                "low": p.low.name,
                "next": p.next.name,
                "batchnorm": p.batchnorm_name,
                "activation": p.activation.op_type,
                "path": [n.op_type for n in p.path],
                "low_bits": low.quant.bits,
                "next_bits": layers[p.next.name].quant.bits if layers[p.next.name].quant else None,
                "factors": {
                    "min": float(low.factors.min()),
                    "max": float(low.factors.max()),
                    "mean": float(low.factors.mean()),
                },
                "validation": low.check,
                "weight_rel_error_before": before,
                "weight_rel_error_after": after,
                "expected_error_reduction": 1.0 - after / before if before > 0 else 0.0,
            }
        )
    corrected = [n for n, layer in layers.items() if layer.bias is not None]
    unpaired = {n: layer for n, layer in layers.items() if layer.role == "unpaired" and layer.quant is not None}
    return {
        "applied": compensate,
        "method": "dfmpc" if compensate else "none (plain data-free rounding)",
        "pairs": rows,
        "unused_pairs": [dataclasses.asdict(u) for u in unused],
        "fallback": {  # quantized layers in no pair: plain data-free rounding, bias correction where possible
            n: "bias correction from BatchNormalization statistics" if layer.bias is not None else layer.bias_skip
            for n, layer in unpaired.items()
        },
        "bias_correction": {
            "layers": corrected,
            "skipped": {n: layer.bias_skip for n, layer in layers.items() if layer.bias_skip},
        },
        "expected_error_reduction_note": "weight space: ||W - c W_hat||^2 vs ||W - W_hat||^2 of the low-bit layers "
        "(c: the factors applied); validation: the expected squared error of the low layer's outputs after bias "
        "correction, sum_j Var(x_j) (w_ij - c_i w_hat_ij)^2, relative to sum_j Var(x_j) w_ij^2",
    }


def _records(targets: Targets, layers: dict[str, _Layer], sites: dict[str, str]) -> list[LayerRecord]:
    records = []
    for t in targets.targets:
        layer = layers.get(t.name)
        q = layer.quant if layer else None
        rec = LayerRecord(t.name, t.op, t.kind, "quantized" if q else "skipped", notes=layer.notes if layer else [])
        if q is None:
            rec.reason = "; ".join(rec.notes) or "activation x activation MatMul: data-free mode is weight-only"
        else:
            rec.weight = {**weight_record(q), "role": layer.role}
            rec.recurrence = weight_record(layer.recurrence) if layer.recurrence is not None else None
        if layer is not None and layer.weight_error is not None:
            before, after = layer.weight_error
            rec.error = {"weight_space": {"rel_mse_before": before, "rel_mse_after": after}}
        if layer is not None and layer.bias is not None:
            source = "data-free (BatchNormalization statistics)"
            rec.bias = bias_record(layer.bias.delta, True, sites.get(t.name), source=source)
        elif layer is not None and layer.bias_skip:
            rec.bias = {"applied": False, "reason": layer.bias_skip}
        records.append(rec)
    records.extend(skipped(targets))
    return records


def summary(rep: Report) -> list[str]:
    """Lines the CLI prints after a data-free run."""
    comp = rep.compensation
    lines = []
    for row in comp.get("pairs", []):
        f, check = row["factors"], row.get("validation") or {}
        factors = f"factors {f['min']:.3f}..{f['max']:.3f}" if f["min"] != f["max"] else f"factors {f['min']:.3f}"
        if "expected_rel_error_plain" in check:
            factors += (
                f" (kept on {check['kept']}/{check['channels']} channels; expected error "
                f"{check['expected_rel_error_plain']:.3e} -> {check['expected_rel_error_chosen']:.3e})"
            )
        elif check:
            factors += f" ({check['decision']})"
        lines.append(
            f"Pair {row['low']} (int{row['low_bits']}) -> {row['next']}: {factors}, "
            f"low-layer weight error {row['weight_rel_error_before']:.3e} -> {row['weight_rel_error_after']:.3e}"
        )
    corrected = comp.get("bias_correction", {}).get("layers", [])
    fallback = comp.get("fallback", {})
    lines.append(
        f"Data-free ({comp.get('method')}): {len(comp.get('pairs', []))} pairs, {len(fallback)} layers in no pair "
        f"(plain data-free rounding), bias correction on {len(corrected)} layers; "
        "no data was read and the model was never run"
    )
    return lines
