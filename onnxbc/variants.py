"""Quantization choices that onnxbc measures instead of guessing.

A *variant* quantizes a few layers differently from the base plan:

- ``weight_range``: a weight's scales by min-max instead of the (input-weighted) MSE search
  (``--weight-range auto``). Neither wins everywhere: measured at int4 on the bundled CNN min-max did
  better, on MiniLM and the char-GPT the MSE search did.
- ``smoothing``: an activation divided per channel before the layers that read it (``smoothing``).
- ``uniform``: under a size budget, a weight at the uniform bit width that fits the budget instead of the bits
  the allocation gave it (``uniform_minmax``: with min-max scales), and with ``--weights intN`` a weight kept
  at 8 bits back at N; these are not chosen per layer but make whole-model candidates, checked end to end
  against the plan (``onnxbc.candidates``).
- ``nearest``: with ``--rounding auto``, a weight GPTQ rounds rounded to nearest instead; a whole-model
  candidate too.

Pass 2 runs every variant's shadows beside the base shadows. Each choice keeps the variant with the least
error summed over the layers it changes, on held-out samples (on the fit samples when none are held out),
after their compensation bias fitted on the fit samples: the factors, ranges and biases all come from the
fit samples, so only held-out data shows whether a choice generalizes. For a layer that feeds one pointwise
activation the error is taken after it (a ReLU discards the errors of negative outputs; measured on the
bundled CNN, scoring before it picked the scales that were worse end to end). A smoothing that needs an extra Mul
(not foldable into its producer) must cut that error by ``MUL_GAIN`` to be kept.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping

import numpy as np
import onnx_ir as ir

from onnxbc import model_io
from onnxbc.calibration.probes import ChannelTrialProbe, ErrorProbe, LayerErrorProbe, RangeProbe, by_channel
from onnxbc.options import CompressOptions, RangeMethod
from onnxbc.passes.graph_utils import main_values
from onnxbc.passes.smooth import fold_site
from onnxbc.plan import QuantPlan, WeightQuant
from onnxbc.quantizers import like, weight_quant
from onnxbc.smoothing import candidate_plans, groups
from onnxbc.solvers.smooth import per_input_channel
from onnxbc.targets import Target, Targets, weight_array

MUL_GAIN = 0.9  # a smoothing that adds a Mul must cut its readers' error by at least 10 %
PARTIAL_MOST = 0.5  # a trial changing at most this share of a layer's output channels measures those alone


Park = Callable[[WeightQuant], WeightQuant]


class VariantKind(str, enum.Enum):
    WEIGHT_RANGE = "weight_range"
    SMOOTHING = "smoothing"
    UNIFORM = "uniform"
    UNIFORM_MINMAX = "uniform_minmax"
    NEAREST = "nearest"


@dataclasses.dataclass
class Variant:
    kind: VariantKind
    key: str  # the weight group or the activation it is about
    label: str  # "minmax", the smoothing alpha, or "uniform"
    plan: QuantPlan  # the changed layers, fully quantized
    layers: tuple[str, ...]


def weight_range_variants(
    targets: Targets, plan: QuantPlan, observed: set[str], options: CompressOptions, park: Park = lambda wq: wq
) -> list[Variant]:
    """With ``--weight-range auto``: min-max scales for each uniform, nearest-rounded weight whose readers are
    all measured (``park`` takes each out of memory as it is made: ``WeightQuant.parked``)."""
    result = []
    for name in targets.weights:
        base = plan.weights.get(name)
        if base is None or not _measured(targets, name, observed):
            continue
        minmax = _minmax(targets, base, options, park)
        if minmax is not None:
            result.append(_weight_variant(VariantKind.WEIGHT_RANGE, "minmax", targets, plan, minmax))
    return result


def uniform_variants(
    targets: Targets,
    plan: QuantPlan,
    observed: set[str],
    weights: dict[str, WeightQuant],
    options: CompressOptions,
    park: Park = lambda wq: wq,
) -> list[Variant]:
    """One variant per weight of ``weights``, or none when some layer of them cannot be measured (in a
    subgraph): the alternative is all of them or nothing, or it could leave the budget. With ``--weight-range
    auto`` also each uniform, nearest-rounded one with min-max scales (``uniform_minmax``), as ``--weights``
    alone would measure it."""
    result = []
    for name, wq in weights.items():
        if not _measured(targets, name, observed):
            return []
        result.append(_weight_variant(VariantKind.UNIFORM, "uniform", targets, plan, wq))
        minmax = _minmax(targets, wq, options, park)
        if minmax is not None:
            result.append(_weight_variant(VariantKind.UNIFORM_MINMAX, "minmax", targets, plan, minmax))
    return result


def nearest_variants(
    targets: Targets, plan: QuantPlan, observed: set[str], weights: dict[str, WeightQuant]
) -> list[Variant]:
    """One variant per weight of ``weights`` (GPTQ's, rounded to nearest), or none when some layer of them
    cannot be measured: the whole-model candidate without GPTQ is all of them or nothing."""
    if not all(_measured(targets, name, observed) for name in weights):
        return []
    return [_weight_variant(VariantKind.NEAREST, "nearest", targets, plan, wq) for wq in weights.values()]


def _minmax(targets: Targets, wq: WeightQuant, options: CompressOptions, park: Park) -> WeightQuant | None:
    """``wq`` with min-max scales (same bits and blocks), or None: not ``--weight-range auto``, or not a uniform,
    nearest-rounded weight. The float weight read for it is unmapped after (``model_io.release_value``)."""
    if options.weight_range is not RangeMethod.AUTO or (wq.scheme, wq.rounding) != ("uniform", "nearest"):
        return None
    group = targets.weights[wq.source]
    minmax = weight_quant(group, weight_array(group), like(wq, options), method=RangeMethod.MINMAX, bits=wq.bits)
    model_io.release_value(group.source)
    return park(minmax)


def _measured(targets: Targets, weight: str, observed: set[str]) -> bool:
    """Whether pass 2 measures every layer reading ``weight`` (one in a subgraph is not)."""
    return {t.name for t in targets.weights[weight].targets} <= observed


def _weight_variant(kind: VariantKind, label: str, targets: Targets, plan: QuantPlan, wq: WeightQuant) -> Variant:
    """A variant with one weight quantized as ``wq``, its layers' inputs as in ``plan``."""
    group = targets.weights[wq.source]
    variant = QuantPlan(weights={wq.source: wq})
    for t in group.targets:
        for i in t.activation_inputs:
            value = t.node.inputs[i].name
            if value in plan.activations:
                variant.activations[value] = plan.activations[value]
                variant.smoothing.update({value: plan.smoothing[value]} if value in plan.smoothing else {})
    return Variant(kind, wq.source, label, variant, tuple(t.name for t in group.targets))


def smoothing_variants(
    targets: Targets,
    plan: QuantPlan,
    observed: set[str],
    probes: dict[str, RangeProbe],
    axes: dict[str, int],
    options: CompressOptions,
    park: Park = lambda wq: wq,
) -> list[Variant]:
    """One variant per alpha for each smoothable activation whose readers are all measured (``park`` takes each
    smoothed weight, quantized, out of memory as it is made; the float weights read for them are unmapped after).
    """
    uses = targets.activation_uses()
    result = []
    for name, axis in axes.items():
        layers = tuple(t.name for t, _ in uses[name])
        if name not in plan.activations or not set(layers) <= observed:
            continue
        for alpha, variant in candidate_plans(name, axis, uses[name], probes[name], targets, plan, options).items():
            variant.weights = {source: park(wq) for source, wq in variant.weights.items()}
            result.append(Variant(VariantKind.SMOOTHING, name, str(alpha), variant, layers))
        for t, _ in uses[name]:
            if t.weight is not None:  # read to smooth it: unmapped (read again when needed)
                model_io.release_value(t.weight.source)
    return result


def trial_probes(
    variants: list[Variant],
    by_name: dict[str, Target],
    per_position: bool,
    shadows: Mapping[str, LayerErrorProbe] = {},
) -> dict[int, list[LayerErrorProbe]]:
    """The pass-2 probes of each variant (keyed by its index). A layer the variant quantizes exactly as its shadow
    in ``shadows`` does (min-max scales that the search also chose, channel for channel) gets that shadow: the same
    numbers, measured once (char-GPT at W8A8: 10 of 17 min-max trials, PP-OCR 17 of 47); one it quantizes
    otherwise on a few output channels only gets a trial of those channels (``ChannelTrialProbe``, completed from
    the shadow after the pass: ``complete``)."""
    return {
        i: [_trial(by_name[layer], v.plan, shadows.get(layer), per_position) for layer in v.layers]
        for i, v in enumerate(variants)
    }


def _trial(t: Target, plan: QuantPlan, shadow: LayerErrorProbe | None, per_position: bool) -> LayerErrorProbe:
    """``t``'s probe in a variant that quantizes it as ``plan`` says: its ``shadow`` when that computes the same
    numbers, a trial of the output channels whose weight scales differ alone (``ChannelTrialProbe``: at most
    ``PARTIAL_MOST`` of them, on a layer ``by_channel`` can measure so), or a whole trial."""
    if shadow is None or not _inputs_alike(t, plan, shadow.plan):
        return LayerErrorProbe(t, plan, per_position=per_position)
    channels = _changed_channels(t, plan, shadow.plan)
    if channels is not None and not len(channels):
        return shadow
    if channels is not None and not per_position and by_channel(t):
        if len(channels) <= PARTIAL_MOST * t.weight.source.const_value.shape[t.weight.channel_axis]:
            return ChannelTrialProbe(t, plan, shadow, channels)
    return LayerErrorProbe(t, plan, per_position=per_position)


def _inputs_alike(t: Target, a: QuantPlan, b: QuantPlan) -> bool:
    """Whether ``a`` and ``b`` quantize (and smooth) ``t``'s activation inputs alike."""
    for i in t.activation_inputs:
        name = t.node.inputs[i].name
        if a.activations.get(name) != b.activations.get(name) or a.smoothing.get(name) is not b.smoothing.get(name):
            return False
    return True


def _changed_channels(t: Target, a: QuantPlan, b: QuantPlan) -> np.ndarray | None:
    """The output channels (indices) on which ``a`` and ``b`` quantize ``t``'s weight otherwise, when that follows
    from their scales (rounded to nearest from the same float weight, per channel: equal scales give equal codes;
    empty for none or the same quantizer); else None."""
    if t.weight is None:
        return np.zeros(0, np.int64)
    x, y = a.weights.get(t.weight.source.name), b.weights.get(t.weight.source.name)
    if x is y:
        return np.zeros(0, np.int64)
    if not (
        x is not None
        and y is not None
        and (x.scheme, x.rounding) == (y.scheme, y.rounding) == ("uniform", "nearest")
        and x.zero_point is None
        and y.zero_point is None
        and x.emulated is None
        and y.emulated is None
        and (x.bits, x.granularity, x.codes.dtype) == (y.bits, y.granularity, y.codes.dtype)
    ):
        return None
    if np.array_equal(x.scale, y.scale):
        return np.zeros(0, np.int64)
    g = x.granularity
    if g.block_size or g.axis is None or g.axis % x.codes.ndim != t.weight.channel_axis % x.codes.ndim:
        return None
    return np.flatnonzero(np.asarray(x.scale).reshape(-1) != np.asarray(y.scale).reshape(-1))


def score(probes: list[ErrorProbe], biased: set[str]) -> float:
    """Summed relative error of layers on held-out samples (fit samples when none are held out), after the
    pointwise activation a layer feeds when it feeds one (what the next layer sees), less the mean error
    fitted on the fit samples for the layers in ``biased`` (those that get a compensation bias)."""
    total = 0.0
    for probe in probes:
        # After an activation, the mean error fitted there stands in for what the folded bias corrects.
        moments = probe.after if probe.after is not None else probe.moments
        fit, held = moments["fit"], moments["holdout"]
        bias = fit.mean_error() if probe.target.name in biased and not fit.empty else None
        total += (fit if held.empty else held).rel_mse(bias)
    return float(total)


def foldable(model: ir.Model, variants: list[Variant]) -> dict[str, bool]:
    """Per smoothed activation: whether its division folds into its producer (else it costs a Mul)."""
    values = {v.name: v for v in main_values(model.graph)}
    result = {}
    for v in variants:
        if v.kind is VariantKind.SMOOTHING and v.key not in result:
            sm = v.plan.smoothing[v.key]
            result[v.key] = fold_site(values[v.key], sm.channel_axis, len(sm.factors), len(v.layers)) is not None
    return result


def choose(
    variants: list[Variant],
    trials: dict[int, list[LayerErrorProbe]],
    probes: dict[str, ErrorProbe],
    plan: QuantPlan,
    biased: set[str],
    foldable: dict[str, bool],
) -> dict[str, dict[str, dict[str, float]]]:
    """Apply the winning variants to ``plan`` and ``probes``; return each choice's scores (label -> summed
    error of the layers it changes), by kind and key, for the report.

    Weight ranges are chosen first; smoothing is then weighed against the base with the chosen ranges.
    """
    scores_of: dict[str, dict[str, dict[str, float]]] = {VariantKind.WEIGHT_RANGE.value: {}, "smoothing": {}}
    for kind in (VariantKind.WEIGHT_RANGE, VariantKind.SMOOTHING):
        for key in dict.fromkeys(v.key for v in variants if v.kind is kind):
            options = [i for i, v in enumerate(variants) if v.kind is kind and v.key == key]
            layers = variants[options[0]].layers
            base_label = plan.weights[key].method if kind is VariantKind.WEIGHT_RANGE else "none"
            scores = {base_label: score([probes[n] for n in layers], biased)}
            scores.update({variants[i].label: score(trials[i], biased) for i in options})
            scores_of[kind.value][key] = scores
            best = min(options, key=lambda i: scores[variants[i].label])
            gain = MUL_GAIN if kind is VariantKind.SMOOTHING and not foldable[key] else 1.0
            if not scores[variants[best].label] < scores[base_label] * gain:
                continue
            v = variants[best]
            plan.weights.update(v.plan.weights)
            if kind is VariantKind.SMOOTHING:
                plan.activations[key] = v.plan.activations[key]
                plan.smoothing[key] = v.plan.smoothing[key]
            probes.update({probe.target.name: probe for probe in trials[best]})
    return scores_of


def power_importance(targets: Targets, probes: dict[str, RangeProbe]) -> dict[str, np.ndarray]:
    """Per weight group read by exactly one measured activation: the mean square of the input each weight
    element multiplies, laid out to broadcast against the weight (for the input-weighted mse search)."""
    result = {}
    for name, group in targets.weights.items():
        reads = {t.node.inputs[i].name for t in group.targets for i in t.activation_inputs}
        t = group.targets[0]
        probe = probes.get(next(iter(reads))) if len(reads) == 1 else None
        power = probe.channel_power() if probe is not None else None
        if power is None or group.gathers or t.weight.input_axis is None:
            continue
        shape = tuple(group.source.const_value.shape)
        channels = shape[t.weight.input_axis] * groups(t)
        if power.shape == (channels,):
            result[name] = per_input_channel(power, shape, t.weight.input_axis, groups(t))
    return result
