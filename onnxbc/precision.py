"""Each weight's precision: the policy's overrides, the scheme, the rounding and, under a size budget, the bits
that cost the least output error (AutoQNN's QPL and QSS without training; ../shared/docs/algorithms.md §1, §3).

**Pricing.** A weight ``W`` quantized to ``W_hat`` adds ``dW x`` to its layer's output. Per output position,
with the input's per-channel mean ``mu`` and variance ``v`` (pass 1), and rounding errors taken as
independent across weight elements (their cross terms average out; GPTQ's are not, see below):

    e_raw  = sum_o [ sum_j dW_oj^2 v_j + (sum_j dW_oj mu_j)^2 ]
    e_comp = sum_o   sum_j dW_oj^2 v_j            (bias compensation removes the mean error dW mu)

Where GPTQ may round a weight the full input covariance ``C`` is known and used, for either rounding:
``tr(dW C dW^T)`` (+ ``||dW mu||^2``), on the held-out samples (GPTQ fits the fit samples' ``C``; priced
there it looks better than it is).
Each error is divided by the layer output's power per position (pass 1), which makes it relative and lets
errors of different layers add up. A weight without input statistics (read by several inputs, an embedding
table) is priced by its relative weight error ``sum dW^2 / sum W^2``. ``tests/test_precision.py`` checks
the prices against the errors measured after compensation.

**Measured gain** (default under a budget and for ``keep_at_8``; ``--closed-form-prices`` turns it off). Layer
errors do not reach the model output with the same gain, so each weight's best option per bit width is run alone
in the float model on held-out samples (``onnxbc.sensitivity``), and ``measured output error / raw closed
form`` scales every option of that weight and width. Compensation stays in the loop through the closed
form's ``e_comp / e_raw`` ratio. ``tests/test_sensitivity.py`` checks the summed prices against the
written model's output error.

**Allocation.** ``--avg-bits X`` (logical bits per quantized weight) or ``--max-size SIZE`` (the written file):
``solvers.allocate`` picks one (bits, scheme) per weight among ``--candidates`` to minimize the summed price
within the budget. For ``--max-size`` the bytes outside the quantized weights are measured: the model with
every weight at its smallest option is serialized, activation quantizers and smoothing factors are added
from above, and the allocation is repeated a few bytes tighter until the chosen weights, serialized, fit.
New compensation biases are not counted: the pipeline keeps compensation only when its file fits. The
written file is checked against the budget after. Under any budget the pipeline also measures the model with
every weight at the most bits that fit uniformly (``Precision.uniform``) end to end, and saves it when the
mixed model is worse on held-out samples.

**Kept at 8 bits** (``--weights intN``, N < 8, no budget). Some weights cost the model far more than their
bytes at N bits: layers with few inputs per output (depthwise and grouped convolutions, a 3-channel stem),
whose rounding errors do not average out, and whose error the next layers amplify (on PP-OCR's recognizer
at 4 bits a 5x5 depthwise convolution with 0.2 % of the weights gave 12 % of the summed output error when
run alone, its layer error being below the median; the closed form alone does not see it, the measured
gain does). Each weight's N-bit options are priced as under a budget (measured gain), its 8-bit price is
that over ``4^(8-N)`` (each bit halves the rounding step), and ``solvers.allocate.keep_at_8`` keeps at 8 bits
the weights whose error saved per byte added is at least ``KEEP_RATIO`` times the int-N model's error per
byte, densest first, while all of them add at most ``KEEP_BYTES`` to the int-N weight bytes. (5x: a weight
must pay for its bytes five times better than int8 everywhere would, which doubles the bytes to remove the
whole error; measured on PP-OCR at W4A8, 10x kept 11 weights and read 83 % of the lines, 5x 17 and 89.5 %,
both under 3 % more bytes. 5 %: the depthwise convolutions of MobileNet-like models are 2-5 % of their
weights.) Strict int-N is measured end to end beside it (``Precision.uniform``, as under a budget), so the
saved model is the one that measures better; a policy rule giving the layers bits (``pattern = ".*"``,
``bits = 4``) forces strict int-N.

**Rounding** (``--rounding auto``, the default). Where GPTQ can round a weight (``gptq_reason``) at
``AUTO_GPTQ_BITS`` or fewer bits, the uniform options are rounded both ways and each keeps the lower priced
on held-out second moments (GPTQ's fit error is no guide). GPTQ costs about ``in^3`` operations for the
inverse Cholesky factor of the ``in x in`` second moments and ``out x in^2`` for its updates (3e10 for the
bundled CNN's 3136-input classifier, seconds); weights past ``AUTO_GPTQ_MAX_OPS`` (a 4096 x 4096 projection
is 1.4e11) are rounded to nearest (``--rounding gptq`` rounds them too). At 8 bits it is not tried:
measured weight-only, it lowered the error of char-GPT from 7.3e-6 to 1.8e-6 and of MiniLM from 1.05e-3 to
4.3e-4, below a tenth of their W8A8 activation error, for 1.2-6x the compress time. The model with every
GPTQ weight rounded to nearest is measured end to end beside the plan (``Precision.nearest``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable

import ml_dtypes
import numpy as np

from onnxbc import model_io
from onnxbc.calibration.probes import MomentsProbe, OutputPowerProbe, RangeProbe
from onnxbc.errors import OnnxbcError, UsageError
from onnxbc.options import CompressOptions, Rounding, Target, WeightType
from onnxbc.plan import WeightQuant
from onnxbc.policy import LayerOverride, Policy
from onnxbc.quantizers import (
    representable_scale,
    unsupported_weight,
    weight_format,
    weight_granularity,
    weight_quant,
)
from onnxbc.smoothing import groups as conv_groups
from onnxbc.solvers.allocate import (
    Allocation,
    LayerChoices,
    Option,
    allocate,
    keep_at_8,
    stored_bytes,
    upgrade_ratios,
)
from onnxbc.solvers.gptq import SecondMoments, gptq_quantize
from onnxbc.solvers.schemes import Scheme, quantize_scheme
from onnxbc.solvers.smooth import per_input_channel
from onnxbc.targets import Targets, WeightGroup, weight_array

logger = logging.getLogger(__name__)

# Bytes from above, besides names (counted apiece): an activation's Q and DQ nodes, scale, zero point and two
# output types; a smoothing factor's Mul node and tensor.
ACTIVATION_PROTO, FACTOR_PROTO = 320, 128
# weight name -> candidate values (built on call) -> the model's output error with each in its place
Measure = Callable[[dict[str, list[Callable[[], np.ndarray]]]], dict[str, list[float]]]
FIT_TRIES = 4  # allocations under --max-size until the measured file fits (each a few bytes tighter)
# --weights intN (N < 8), no budget: which weights stay at 8 bits (keep_at_8, module docstring)
KEEP_RATIO = 5.0  # output error per byte saved, against the int-N model's
KEEP_BYTES = 0.05  # what the 8-bit weights may add to the int-N weight bytes, all together
# --rounding auto: GPTQ is tried at this many bits and fewer, on weights whose GPTQ costs at most this many
# operations (in^3 + out * in^2: 4096 x 4096 is past it)
AUTO_GPTQ_BITS = 4
AUTO_GPTQ_MAX_OPS = 5e10


@dataclasses.dataclass
class InputStats:
    """What pricing knows of one weight's input (``None``: not collected)."""

    mean: np.ndarray | None = None  # E[x] per input channel, laid out to broadcast against the weight
    variance: np.ndarray | None = None  # Var(x) likewise
    moments: SecondMoments | None = None  # full second moments (GPTQ layers): features = weight input axis
    holdout_moments: SecondMoments | None = None  # the same on held-out samples: GPTQ is priced on them
    output_power: float | None = None  # E[||y||^2] per output position


@dataclasses.dataclass
class Precision:
    """What ``choose`` decided: the quantized weights, notes per weight, and the report section."""

    weights: dict[str, WeightQuant]
    notes: dict[str, list[str]]
    skipped_layers: set[str]
    report: dict
    # Under a budget, the most bits every weight can have at once within it (the policy's pins kept), and the
    # weights whose option differs from the allocation's then: measured end to end against the mixed model.
    uniform_bits: int | None = None
    uniform: dict[str, WeightQuant] = dataclasses.field(default_factory=dict)
    # --rounding auto: the weights GPTQ rounds, rounded to nearest instead (measured end to end against the plan)
    nearest: dict[str, WeightQuant] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Priced:
    """One candidate of one weight and its prices."""

    quant: WeightQuant
    closed_form: float  # at its layer, after compensation or before it (``--compensated-prices``)
    raw: float  # at its layer, before compensation
    error: float = dataclasses.field(init=False)  # what the allocation uses: the closed form, scaled when measured
    other: _Priced | None = dataclasses.field(default=None, init=False)  # --rounding auto: the other rounding

    def __post_init__(self) -> None:
        self.error = self.closed_form


def budget_of(options: CompressOptions, policy: Policy | None) -> tuple[float | None, int | None]:
    """``(avg_bits, max_size)``: the command line's budget, else the policy's (either may be None)."""
    if options.budget or policy is None:
        return options.avg_bits, options.max_size
    return policy.avg_bits, policy.max_size


def required_opset(options: CompressOptions, policy: Policy | None) -> int:
    """The opset the weights need, the policy's bits and budget included."""
    low = policy is not None and (
        any(r.bits is not None and r.bits <= 4 for r in policy.rules)
        or (budget_of(options, policy) != (None, None) and min(options.candidates) <= 4)
    )
    return max(options.required_opset, 21 if low else 0)


def resolve(
    options: CompressOptions, policy: Policy | None, targets: Targets
) -> tuple[dict[str, LayerOverride], list[str]]:
    """The policy's per-layer overrides (by layer name), and its warnings."""
    if policy is None:
        return {}, []
    overrides, warnings = policy.resolve(t.name for t in targets.targets)
    for override in overrides.values():
        if override.bits is not None and override.bits not in options.candidates and options.budget:
            raise UsageError(f"{policy.source}: a rule sets {override.bits} bits, not among --candidates")
    return overrides, warnings


def stats_probes(
    targets: Targets, options: CompressOptions, overrides: dict[str, LayerOverride], policy: Policy | None = None
) -> tuple[list[OutputPowerProbe], list[MomentsProbe]]:
    """Pass-1 probes pricing needs beyond the input ranges: each layer's output power (with a budget,
    ``--scheme auto``, ``--weights`` below 8 bits, or where GPTQ is tried) and the input second moments of the
    layers GPTQ may round (``tries_gptq``)."""
    budget = budget_of(options, policy) != (None, None)
    priced = budget or options.scheme == "auto" or _keeps_at_8(options, budget)
    power, moments = [], {}  # moments by input: Q, K and V projections share one
    for group in targets.weights.values():
        gptq = tries_gptq(group, _group_override(group, overrides, {}), options, budget)
        if gptq:
            t = group.targets[0]
            x = t.node.inputs[t.activation_inputs[0]].name
            moments.setdefault(x, MomentsProbe(x, int(group.source.const_value.shape[t.weight.input_axis])))
        if (priced or gptq) and _priced_by_input(group):
            power.append(OutputPowerProbe(group.targets[0]))
    return power, list(moments.values())


def tries_gptq(group: WeightGroup, override: LayerOverride, options: CompressOptions, budget: bool) -> bool:
    """Whether GPTQ may round ``group``: with ``--rounding gptq`` wherever it can (``gptq_reason``); with
    ``auto`` where it can at ``AUTO_GPTQ_BITS`` or fewer bits (``--weights``, the policy's bits, or the lowest
    budget candidate) within ``AUTO_GPTQ_MAX_OPS``."""
    rounding = override.rounding or options.rounding
    if rounding is Rounding.NEAREST or options.weights is WeightType.NONE or gptq_reason(group) is not None:
        return False
    if rounding is Rounding.GPTQ:
        return True
    bits = (override.bits,) if override.bits is not None else options.candidates if budget else (options.weights.bits,)
    features = group.source.const_value.shape[group.targets[0].weight.input_axis]
    ops = features**3 + group.source.const_value.size * features
    return min(bits) <= AUTO_GPTQ_BITS and ops <= AUTO_GPTQ_MAX_OPS


def gptq_reason(group: WeightGroup) -> str | None:
    """Why GPTQ cannot round this weight (None: it can): 2-D weights of one MatMul/Gemm reading features on
    its input's last axis."""
    t = group.targets[0]
    if len(group.targets) != 1 or group.gathers or t.in_subgraph or not t.activation_inputs:
        return "GPTQ needs a weight read by one layer of the main graph: rounded to nearest"
    if t.op not in ("MatMul", "Gemm") or len(group.source.const_value.shape) != 2 or t.weight.input_axis is None:
        return "GPTQ here covers 2-D MatMul/Gemm weights: rounded to nearest"
    if t.op == "MatMul" and t.weight.input_index != 1 or t.op == "Gemm" and t.node.attributes.get_int("transA", 0):
        return "GPTQ needs the input's features on its last axis: rounded to nearest"
    return None


def input_stats(
    targets: Targets,
    ranges: dict[str, RangeProbe],
    power: list[OutputPowerProbe],
    moments: list[MomentsProbe],
) -> dict[str, InputStats]:
    """Per weight group, the statistics pass 1 gathered for pricing and GPTQ."""
    out_power = {p.target.name: p.mean_square() for p in power}
    full = {p.value: p for p in moments}
    result = {}
    for name, group in targets.weights.items():
        t = group.targets[0]
        stats = InputStats()
        if _priced_by_input(group):
            probe = ranges.get(t.node.inputs[t.activation_inputs[0]].name)
            mean = probe.channel_mean() if probe is not None else None
            shape = tuple(group.source.const_value.shape)
            channels = shape[t.weight.input_axis] * conv_groups(t)
            if mean is not None and mean.shape == (channels,):
                variance = np.maximum(probe.channel_power() - mean**2, 0.0)
                stats.mean = per_input_channel(mean, shape, t.weight.input_axis, conv_groups(t))
                stats.variance = per_input_channel(variance, shape, t.weight.input_axis, conv_groups(t))
            if t.name in out_power:
                stats.output_power = out_power[t.name] * shape[t.weight.channel_axis]
        probe = full.get(t.node.inputs[t.activation_inputs[0]].name) if gptq_reason(group) is None else None
        if probe is not None:
            stats.moments, stats.holdout_moments = probe.moments, probe.holdout
        result[name] = stats
    return result


def price(group: WeightGroup, wq: WeightQuant, stats: InputStats, compensated: bool) -> float:
    """The relative output error ``wq`` adds to its layer (module docstring), summed over chunks of its output
    channels (``WeightQuant.dequantized_parts``), so that no float copy of a whole weight is made."""
    weight, t = weight_array(group), group.targets[0]
    out_axis, in_axis = t.weight.channel_axis, t.weight.input_axis
    moments = None
    if stats.moments is not None:
        # GPTQ fits the fit samples' moments; on them it would look better than it generalizes (and nearest
        # rounding is priced on the same samples, so that --rounding auto compares like with like)
        held = stats.holdout_moments if stats.holdout_moments is not None and stats.holdout_moments.count else None
        moments = held or stats.moments
    closed = stats.output_power is not None and stats.output_power > 0
    closed = closed and (stats.variance is not None or moments is not None)
    xx = moments.sum_of_squares() if closed and moments is not None else None  # [in, in], not copied
    second = mean2 = ref2 = 0.0  # sum over the output rows of E[(dw . x)^2] (or dw^2), of E[dw . x]^2, and w^2
    for index, values in wq.dequantized_parts(out_axis):
        w = np.asarray(weight[index], np.float64)
        dw = w - values
        if not closed:
            second, ref2 = second + float(np.sum(dw**2)), ref2 + float(np.sum(w**2))
        elif xx is not None:
            d2 = np.moveaxis(dw, in_axis, -1).reshape(-1, dw.shape[in_axis])
            second += float(np.sum((d2 @ xx) * d2)) / moments.count
            mean2 += float(np.sum((d2 @ moments.mean()) ** 2))
        else:
            others = tuple(i for i in range(w.ndim) if i != out_axis)
            second += float(np.sum(dw**2 * _rows(stats.variance, out_axis, index)))
            mean2 += float(np.sum(np.sum(dw * _rows(stats.mean, out_axis, index), axis=others) ** 2))
    if not closed:
        return second / max(ref2, 1e-30)
    if xx is not None:  # E[(dw x)^2] = dw Cov dw^T + (dw E[x])^2: compensation removes the second term
        error = second - mean2 if compensated else second
    else:  # the diagonal form: the spread from the variance, the mean error apart
        error = second if compensated else second + mean2
    return error / stats.output_power


def _rows(per_input: np.ndarray, axis: int, index: tuple[slice, ...]) -> np.ndarray:
    """The part of a per-input-channel array (``per_input_channel``) for the weight's ``index`` along ``axis``:
    all of it where it does not vary along ``axis``, as it does for grouped convolutions."""
    return per_input[index] if per_input.ndim > axis and per_input.shape[axis] > 1 else per_input


def choose(
    targets: Targets,
    options: CompressOptions,
    importance: dict[str, np.ndarray],
    stats: dict[str, InputStats],
    overrides: dict[str, LayerOverride],
    policy: Policy | None,
    extra_bytes: int,
    size_of: Callable[[dict[str, WeightQuant]], int] | None,
    advance: Callable[[], None] = lambda: None,
    measure: Measure | None = None,
    park: Callable[[WeightQuant], WeightQuant] = lambda wq: wq,
) -> Precision:
    """Quantize every weight: at ``--weights`` bits, or under the budget at the bits the allocation picks;
    the policy's overrides first. With ``--weights intN`` (N < 8) and no budget, the weights whose N bits
    cost the model far more than their bytes stay at 8 bits (``keep_at_8``). With a ``--max-size`` budget,
    ``size_of`` gives the written size of the model with the given weights quantized (nothing else), which
    makes the bytes outside the weights exact, and ``extra_bytes`` (``extra_bytes()``) bounds from above what
    activation quantizers and smoothing may add. ``measure``: the model's output error with each given
    weight's candidate values alone in its place (``onnxbc.sensitivity.output_errors``), which scales the
    closed-form prices (under a budget, and for ``keep_at_8``). ``park`` moves each option's codes out of memory
    (``WeightQuant.parked``) once priced."""
    notes: dict[str, list[str]] = {}
    skipped = {name for name, o in overrides.items() if o.skip}
    avg_bits, max_size = budget_of(options, policy)
    budget = avg_bits is not None or max_size is not None
    keep = _keeps_at_8(options, budget)
    candidates = tuple(sorted(options.candidates)) if budget else (options.weights.bits,)
    chosen: dict[str, _Priced] = {}  # weights with one bit width
    priced: dict[str, list[_Priced]] = {}  # weights whose bits are still to choose
    pinned: dict[str, int] = {}
    upgrades: dict[str, Callable] = {}  # --weights intN: each weight's 8-bit options (and why none)
    for name, group in targets.weights.items():
        advance()
        override = _group_override(group, overrides, notes)
        if override.skip or options.weights is WeightType.NONE:
            continue
        rounding = override.rounding or options.rounding
        rounder = _gptq_rounder(group, stats[name], rounding)
        if rounding is Rounding.GPTQ and rounder is None:
            notes.setdefault(name, []).append(gptq_reason(group) or "no input statistics for GPTQ: rounded to nearest")
        priced_at = functools.partial(
            _options, group, options, override, importance.get(name), stats[name], rounding, rounder
        )
        choices, reasons = priced_at((override.bits,) if override.bits is not None else candidates)
        model_io.release_value(group.source)  # read to quantize it: unmapped (read again when needed)
        for c in [*choices, *(c.other for c in choices if c.other is not None)]:
            c.quant = park(c.quant)
        if not choices:
            notes.setdefault(name, []).append(reasons[0] if reasons else "no candidate precision")
            continue
        if budget:
            priced[name] = choices
            if len(choices) == 1:
                pinned[name] = 0
        elif keep and override.bits is None:
            priced[name] = choices
            upgrades[name] = functools.partial(priced_at, (8,))
        else:
            chosen[name] = min(choices, key=lambda c: c.closed_form)  # one bit width: least error scheme
    report: dict = {}
    uniform_bits, uniform = None, {}
    if budget:
        index, report, uniform_bits, uniform = _allocated(
            targets, options, priced, pinned, avg_bits, max_size, extra_bytes, size_of, measure
        )
        chosen.update({name: priced[name][i] for name, i in index.items()})
    elif priced:
        kept, report["keep_at_8"] = _kept_at_8(targets, options, priced, upgrades, measure, notes)
        chosen.update({name: min(choices, key=lambda c: c.error) for name, choices in priced.items()})
        uniform = {name: chosen[name].quant for name in kept}  # strict int-N, measured beside the plan
        chosen.update(kept)
        uniform_bits = options.weights.bits
    rounding_report, nearest = _roundings(chosen, notes)
    report["layers"] = {name: layer_entry(c.quant) for name, c in chosen.items()}
    if rounding_report:
        report["rounding"] = rounding_report
    quants = {name: c.quant for name, c in chosen.items()}
    return Precision(quants, notes, skipped, report, uniform_bits if uniform else None, uniform, nearest)


def layer_entry(wq: WeightQuant) -> dict:
    """A weight's entry in the report's ``precision.layers``."""
    return {"bits": wq.bits, "scheme": wq.scheme, "rounding": wq.rounding}


def measures_prices(options: CompressOptions, policy: Policy | None) -> bool:
    """Whether ``choose`` runs the model to measure prices (its ``measure``): under a budget, and for
    ``keep_at_8``; not with ``--closed-form-prices``."""
    budget = any(b is not None for b in budget_of(options, policy))
    return options.price_measured and (budget or _keeps_at_8(options, budget))


def _keeps_at_8(options: CompressOptions, budget: bool) -> bool:
    """``--weights intN`` with N < 8 and no budget: a weight may stay at 8 bits (``keep_at_8``); not for
    TensorRT, whose low-bit weights are weight-only int4 blocks (int8 weights take no blocks there)."""
    low = options.weights is not WeightType.NONE and options.weights.bits < 8
    return low and not budget and options.target is not Target.TENSORRT


def _options(
    group: WeightGroup,
    options: CompressOptions,
    override: LayerOverride,
    importance: np.ndarray | None,
    stats: InputStats,
    rounding: Rounding,
    rounder: Callable | None,
    bits_choices: tuple[int, ...],
) -> tuple[list[_Priced], list[str]]:
    """Every (scale layout, bits, scheme) option of ``group`` at ``bits_choices``, priced, and why some bits
    were refused. A uniform option that GPTQ can round is rounded by it with ``--rounding gptq``; with
    ``auto`` (at ``AUTO_GPTQ_BITS`` and fewer) both ways, and the lower priced is kept (``_better``)."""
    choices, reasons = [], []
    for group_options in _layouts(group, options, override):
        for bits in bits_choices:
            reason = unsupported_weight(group, group_options, bits)
            if reason:
                reasons.append(reason)
                continue
            for scheme in _schemes(override.scheme or options.scheme, bits, options):
                gptq = rounder is not None and scheme is Scheme.UNIFORM
                if gptq and rounding is Rounding.GPTQ:
                    wq = _quantize(group, group_options, bits, scheme, importance, rounder)
                    choices.append(_priced(group, wq, stats, options.price_compensated))
                    continue
                wq = _quantize(group, group_options, bits, scheme, importance, None)
                priced = _priced(group, wq, stats, options.price_compensated)
                if gptq and bits <= AUTO_GPTQ_BITS:  # the same scales, rounded by GPTQ
                    codes = rounder(weight_array(group), wq.scale, weight_format(group_options, bits), wq.granularity)
                    by_gptq = dataclasses.replace(wq, codes=codes, rounding="gptq")
                    priced = _better(priced, _priced(group, by_gptq, stats, options.price_compensated))
                choices.append(priced)
    return choices, reasons


def _priced(group: WeightGroup, wq: WeightQuant, stats: InputStats, compensated: bool) -> _Priced:
    return _Priced(wq, price(group, wq, stats, compensated), price(group, wq, stats, False))


def _better(nearest: _Priced, gptq: _Priced) -> _Priced:
    """``--rounding auto``: the lower priced of the two roundings, holding the other (for the report and the
    whole-model check of GPTQ, ``Precision.nearest``)."""
    best, other = (gptq, nearest) if gptq.closed_form < nearest.closed_form else (nearest, gptq)
    best.other = other
    return best


_ROUNDING = {"gptq": "GPTQ rounding", "nearest": "rounding to nearest"}


def _roundings(chosen: dict[str, _Priced], notes: dict[str, list[str]]) -> tuple[dict, dict[str, WeightQuant]]:
    """``--rounding auto``: the report's account of each weight rounded both ways, a note for each, and the
    nearest-rounded twin of each weight GPTQ rounds (the whole-model candidate without GPTQ)."""
    layers, nearest = {}, {}
    for name, c in chosen.items():
        if c.other is None:
            continue
        by = {c.quant.rounding: c.closed_form, c.other.quant.rounding: c.other.closed_form}
        layers[name] = {"chosen": c.quant.rounding, "layer_error": by}
        if c.quant.rounding == "gptq":
            nearest[name] = c.other.quant
        other = "nearest" if c.quant.rounding == "gptq" else "gptq"
        notes.setdefault(name, []).append(
            f"{_ROUNDING[c.quant.rounding]} in the per-layer plan: held-out layer error {by[c.quant.rounding]:.2e}, "
            f"{by[other]:.2e} {_ROUNDING[other]}"
        )
    if not layers:
        return {}, {}
    return {"mode": "auto", "gptq_bits": AUTO_GPTQ_BITS, "gptq": len(nearest), "layers": layers}, nearest


def _kept_at_8(
    targets: Targets,
    options: CompressOptions,
    priced: dict[str, list[_Priced]],
    upgrades: dict[str, Callable],
    measure: Measure | None,
    notes: dict[str, list[str]],
) -> tuple[dict[str, _Priced], dict]:
    """``--weights intN`` (N < 8), no budget: the weights ``keep_at_8`` sends to 8 bits (module docstring),
    each at its least priced 8-bit option, and the report's account. Prices are measured at the model output
    unless ``--closed-form-prices``; a weight's 8-bit price is its N-bit one over ``4^(8-N)`` (each bit halves
    the rounding step), so only the weights kept are quantized at 8 bits."""
    bits = options.weights.bits
    # every weight is run: the model's error per byte, the yardstick, sums them all
    measured = _measure(priced, {}, measure) if measure is not None else {}
    layers = []
    for name, choices in priced.items():
        c = min(choices, key=lambda c: c.error)
        if c.quant.emulated is None and c.quant.zero_point is None:  # codes x scales: 8 bits, the same scales
            scale_bytes = _scale_bytes(targets.weights[name])
            sizes = (
                _stored_bytes(c.quant, scale_bytes),
                stored_bytes(c.quant.codes.size, 8, c.quant.scale.size, scale_bytes),
            )
            layers.append(
                LayerChoices(name, (Option(bits, sizes[0], c.error), Option(8, sizes[1], c.error * 4.0 ** (bits - 8))))
            )
    by_name = {layer.name: layer for layer in layers}
    low, high = dict.fromkeys(by_name, 0), dict.fromkeys(by_name, 1)
    ratios = upgrade_ratios(layers, low, high)
    kept, report = {}, {}
    for name in keep_at_8(layers, low, high, KEEP_BYTES, KEEP_RATIO):
        at_8 = upgrades[name]()[0]
        if not at_8:
            continue
        kept[name] = min(at_8, key=lambda c: c.closed_form)
        n_bits, eight = by_name[name].options
        extra = eight.size - n_bits.size
        report[name] = {"error": n_bits.error, "extra_bytes": extra, "ratio": ratios[name]}
        notes.setdefault(name, []).append(
            f"int8 in the per-layer plan: at int{bits} it would cost the model {ratios[name]:.0f}x the "
            f"int{bits} model's error per byte, for {extra} bytes more (uniform int{bits} measured too)"
        )
    return kept, {
        "rule": f"a weight stays at 8 bits when its int{bits} output error per byte that 8 bits add is at least "
        f"{KEEP_RATIO:g}x the int{bits} model's error per byte, most such error per byte first, while the 8-bit "
        f"weights add at most {KEEP_BYTES:.0%} to the int{bits} weight bytes",
        "bits": bits,
        "priced": "measured" if measured else "closed form",
        "measured": measured or None,
        "weights_bytes": sum(layer.options[0].size for layer in layers),
        "extra_bytes": sum(k["extra_bytes"] for k in report.values()),
        "layers": report,
        "ratios": ratios,  # every weight's, kept or not
    }


def _scale_bytes(group: WeightGroup) -> int:
    """Bytes a scale of ``group`` takes: float16 scales for a float16 weight, else float32."""
    return 2 if group.source.const_value.dtype.itemsize == 2 else 4


def _layer_choices(targets: Targets, name: str, choices: list[_Priced]) -> LayerChoices:
    scale_bytes = _scale_bytes(targets.weights[name])
    options = tuple(
        # an emulated scheme stores float weights: 32 bits against --avg-bits too
        Option(
            32 if c.quant.emulated is not None else c.quant.bits,
            _stored_bytes(c.quant, scale_bytes),
            c.error,
            c.quant.scheme,
        )
        for c in choices
    )
    return LayerChoices(name, options, params=int(targets.weights[name].source.const_value.size))


def _allocated(
    targets: Targets,
    options: CompressOptions,
    priced: dict[str, list[_Priced]],
    pinned: dict[str, int],
    avg_bits: float | None,
    max_size: int | None,
    extra_bytes: int,
    size_of: Callable[[dict[str, WeightQuant]], int] | None,
    measure: Measure | None,
) -> tuple[dict[str, int], dict, int | None, dict[str, WeightQuant]]:
    """Under a budget: each weight's option index, the report section, and the uniform alternative (the most
    bits every weight can take within the budget, and the weights whose option differs then)."""
    measured = _measure(priced, pinned, measure) if measure is not None else {}
    layers = [_layer_choices(targets, name, choices) for name, choices in priced.items()]
    quants = {name: [c.quant for c in choices] for name, choices in priced.items()}
    weights_budget = None
    if max_size is not None:
        if size_of is None:
            raise ValueError("a --max-size budget needs size_of")
        smallest = {
            layer.name: pinned.get(layer.name, min(range(len(layer.options)), key=lambda i: layer.options[i].size))
            for layer in layers
        }
        smallest_bytes = sum(layer.options[smallest[layer.name]].size for layer in layers)
        outside = size_of({name: quants[name][i] for name, i in smallest.items()}) - smallest_bytes + extra_bytes
        weights_budget = max_size - outside
        if smallest_bytes > weights_budget:
            raise UsageError(
                f"--max-size {max_size} bytes is too small: with these candidates the smallest file is about "
                f"{smallest_bytes + outside} bytes"
            )
    allocation = allocate(layers, max_bytes=weights_budget, avg_bits=avg_bits, pinned=pinned)
    # the uniform alternative takes the --block-size layout, as the smallest options did when the bytes outside
    # the weights were measured; the tightening below is for the allocation's own layouts (block_size
    # attributes), not for it, and the held-out check measures its file anyway
    uniform_budget = weights_budget
    for _ in range(FIT_TRIES if max_size is not None else 0):
        # the bytes outside the weights move a little with the options (length fields, block_size attributes)
        over = size_of({name: quants[name][i] for name, i in allocation.index.items()}) + extra_bytes - max_size
        if over <= 0:
            break
        weights_budget -= over
        allocation = allocate(layers, max_bytes=weights_budget, avg_bits=avg_bits, pinned=pinned)
    layouts = {name: weight_granularity(targets.weights[name], options)[0] for name in priced}
    uniform_bits, index = _uniform(layers, priced, pinned, avg_bits, uniform_budget, layouts)
    uniform = {
        layer.name: quants[layer.name][index[layer.name]]
        for layer in layers
        if index and index[layer.name] != allocation.index[layer.name]
    }
    report = _report(allocation, layers, avg_bits, max_size, weights_budget, options, priced, measured)
    return allocation.index, report, uniform_bits, uniform


def _uniform(
    layers: list[LayerChoices],
    priced: dict[str, list[_Priced]],
    pinned: dict[str, int],
    avg_bits: float | None,
    weights_budget: int | None,
    layouts: dict[str, object],
) -> tuple[int | None, dict[str, int]]:
    """The most bits every weight can take at once within the budget (in the scale ``layouts`` that
    ``--block-size`` gives, the least priced scheme; pinned weights keep their option), and each weight's
    option index then."""
    params = sum(layer.params for layer in layers)
    for bits in sorted({o.bits for layer in layers for o in layer.options if o.bits <= 8}, reverse=True):
        index = {}
        for layer in layers:
            same = [
                i
                for i, (o, c) in enumerate(zip(layer.options, priced[layer.name]))
                if o.bits == bits and c.quant.granularity == layouts[layer.name]
            ]
            if layer.name not in pinned and not same:
                break
            index[layer.name] = pinned.get(layer.name, min(same or [0], key=lambda i: layer.options[i].error))
        else:
            chosen = [layer.options[index[layer.name]] for layer in layers]
            fits_bytes = weights_budget is None or sum(o.size for o in chosen) <= weights_budget
            fits_bits = (
                avg_bits is None or sum(o.bits * layer.params for o, layer in zip(chosen, layers)) <= avg_bits * params
            )
            if fits_bytes and fits_bits:
                return bits, index
    return None, {}


def _measure(
    priced: dict[str, list[_Priced]],
    pinned: dict[str, int],
    measure: Measure,
) -> dict:
    """Scale each weight's closed-form prices to the model output (``onnxbc.sensitivity``): per bit width
    its best closed-form option is run, and ``measured / raw closed form`` is that width's gain. A weight
    that cannot be run takes the median gain. Returns the report's account of the measurement."""
    run: dict[str, list[int]] = {}
    for name, choices in priced.items():
        if name in pinned:
            continue  # nothing to choose
        best: dict[int, int] = {}
        for i, c in enumerate(choices):
            if c.quant.bits not in best or c.closed_form < choices[best[c.quant.bits]].closed_form:
                best[c.quant.bits] = i
        run[name] = sorted(best.values())
    errors = measure({name: [priced[name][i].quant.dequantized for i in picked] for name, picked in run.items()})
    gains: dict[tuple[str, int], float] = {}
    for name, measured in errors.items():
        for i, error in zip(run[name], measured):
            c = priced[name][i]
            gains[name, c.quant.bits] = error / c.raw if c.raw > 0 else 1.0
    typical = float(np.median(list(gains.values()))) if gains else 1.0
    for name, choices in priced.items():
        for c in choices:
            c.error = gains.get((name, c.quant.bits), typical) * c.closed_form
    return {
        "weights": len(errors),
        "runs": sum(len(v) for v in errors.values()),
        "median_gain": typical,
        "not_run": sorted(set(run) - set(errors)),
    }


def extra_bytes(targets: Targets, activations: list[str], smoothable: dict[str, int]) -> int:
    """From above, what the written file may hold beyond the prepared model with quantized weights: quantizer
    nodes for the ``activations`` and the factors of every activation that may be smoothed. (New compensation
    biases are not counted: under ``--max-size`` compensation is kept only when its file fits.)"""
    extra = sum(ACTIVATION_PROTO + 16 * len(name) for name in activations)
    uses = targets.activation_uses()
    for name in smoothable:
        t = next(t for t, _ in uses[name] if t.weight is not None)
        channels = t.weight.source.const_value.shape[t.weight.input_axis] * conv_groups(t)
        extra += 4 * channels + FACTOR_PROTO + 8 * len(name)
    return extra


def check_size(path_bytes: int, options: CompressOptions, policy: Policy | None) -> None:
    max_size = budget_of(options, policy)[1]
    if max_size is not None and path_bytes > max_size:
        raise OnnxbcError(f"the written model has {path_bytes} bytes, over --max-size {max_size}; nothing kept")


def _priced_by_input(group: WeightGroup) -> bool:
    t = group.targets[0]
    alone = len(group.targets) == 1 and not group.gathers and not t.in_subgraph
    return alone and bool(t.activation_inputs) and t.weight.input_axis is not None


def _group_override(
    group: WeightGroup, overrides: dict[str, LayerOverride], notes: dict[str, list[str]]
) -> LayerOverride:
    """A weight shared by several layers takes the first layer's rule (and says so when they differ)."""
    found = [overrides[t.name] for t in group.targets if t.name in overrides]
    if not found:
        return LayerOverride()
    if any(dataclasses.replace(o, rules=()) != dataclasses.replace(found[0], rules=()) for o in found[1:]):
        notes.setdefault(group.name, []).append(
            "policy rules differ between the layers sharing this weight: the first applies"
        )
    return found[0]


def _layouts(group: WeightGroup, options: CompressOptions, override: LayerOverride) -> list[CompressOptions]:
    """The options for each scale layout the weight may take: the policy's blocks, else ``--block-candidates``
    (under ``--max-size``), else ``--block-size``; layouts that come out the same (blocks along an axis that
    cannot be traced fall back to per channel) are tried once."""
    blocks = (
        (override.block_size,) if override.block_size is not None else options.block_candidates or (options.block_size,)
    )
    layouts: dict[object, CompressOptions] = {}
    for block in blocks:
        block_options = dataclasses.replace(options, block_size=block)
        layouts.setdefault(weight_granularity(group, block_options)[0], block_options)
    return list(layouts.values())


def _schemes(scheme: Scheme | str, bits: int, options: CompressOptions) -> list[Scheme]:
    """The schemes tried at ``bits``: the one asked for (if defined there), or with ``auto`` every scheme
    written as QDQ (and, with ``--emulate``, the emulated ones)."""
    if scheme != "auto":
        scheme = Scheme(scheme)
        if not scheme.qdq and not options.emulate:
            raise UsageError(f"--scheme {scheme.value} is not integer codes x scale: add --emulate (float weights)")
        return [scheme] if bits in scheme.bit_widths or scheme is Scheme.UNIFORM else []
    pool = [s for s in Scheme if bits in s.bit_widths and (s.qdq or options.emulate)]
    if options.target is Target.TENSORRT:
        pool = [s for s in pool if s is not Scheme.AFFINE]  # TensorRT: zero points must be 0
    return pool


def _quantize(
    group: WeightGroup,
    options: CompressOptions,
    bits: int,
    scheme: Scheme,
    importance: np.ndarray | None,
    rounder: Callable | None,
) -> WeightQuant:
    """``group`` at ``bits`` with ``scheme``: uniform through the measured scales (and GPTQ), the others by
    their formulas (``solvers.schemes``)."""
    w = weight_array(group)
    if scheme is Scheme.UNIFORM:
        wq = weight_quant(group, w, options, importance, bits=bits, rounding=rounder)
        return dataclasses.replace(wq, rounding="gptq") if rounder is not None else wq
    gran, _ = weight_granularity(group, options)
    q = quantize_scheme(w, scheme, bits, gran)
    dtype = group.source.const_value.dtype
    if not q.qdq:
        return WeightQuant(group.name, q.codes, q.scale, gran, bits, scheme.value, scheme.value, emulated=q.dequantized)
    scale = representable_scale(q.scale, dtype)
    if q.zero_point is not None:  # affine: unsigned codes with a zero point
        storage = np.dtype(np.uint8) if bits > 4 else np.dtype(ml_dtypes.uint4)
        return WeightQuant(
            group.name,
            q.codes.astype(storage),
            scale,
            gran,
            bits,
            scheme.value,
            scheme.value,
            zero_point=q.zero_point.astype(storage),
        )
    return WeightQuant(group.name, q.codes.astype(q.fmt.storage), scale, gran, bits, scheme.value, scheme.value)


def _gptq_rounder(group: WeightGroup, stats: InputStats, rounding: Rounding) -> Callable | None:
    """GPTQ with the fit samples' second moments, or None: no moments, or ``auto`` without held-out moments
    to price it on (on the samples it fits it would always look better)."""
    held = stats.holdout_moments is not None and stats.holdout_moments.count
    if stats.moments is None or not stats.moments.count or (rounding is Rounding.AUTO and not held):
        return None
    axis = group.targets[0].weight.input_axis

    def rounder(w, scale, fmt, gran):  # the [in, in] matrix read when used: rounders are kept (``upgrades``)
        return gptq_quantize(w, stats.moments.sum_of_squares(), scale, fmt, gran, input_axis=axis)  # any multiple

    return rounder


def _stored_bytes(wq: WeightQuant, scale_bytes: int) -> int:
    """What ``wq`` takes in the file: codes (int4 packs two a byte), scales and zero points."""
    if wq.emulated is not None:  # float values of the model's float type
        return stored_bytes(wq.emulated.size, 8 * scale_bytes, 0)
    zero = 0 if wq.zero_point is None else stored_bytes(wq.zero_point.size, wq.stored_bits, 0)
    return stored_bytes(wq.codes.size, wq.stored_bits, wq.scale.size, scale_bytes) + zero


def _report(
    allocation: Allocation,
    layers: list[LayerChoices],
    avg_bits: float | None,
    max_size: int | None,
    weights_budget: int | None,
    options: CompressOptions,
    priced: dict[str, list[_Priced]],
    measured: dict,
) -> dict:
    params = sum(layer.params for layer in layers)
    return {
        "budget": {"avg_bits": avg_bits}
        if avg_bits is not None
        else {"max_size": max_size, "weights_bytes": weights_budget},
        "priced": "after compensation" if options.price_compensated else "before compensation",
        "measured": measured or None,  # None: closed-form layer errors only (--closed-form-prices)
        "candidates": sorted(options.candidates),
        "method": allocation.method,
        "chosen": {
            "weights_bytes": allocation.size_bytes,
            "avg_bits": allocation.avg_bits(layers),
            "error": allocation.error,
        },
        "curve": [
            {
                "cost": p.cost,
                "unit": allocation.unit,
                "avg_bits": p.cost / params if allocation.unit == "bits" and params else None,
                "error": p.error,
            }
            for p in allocation.curve
        ],
        "options": {
            layer.name: [
                {
                    "bits": o.bits,
                    "scheme": o.scheme,
                    "block_size": c.quant.granularity.block_size,
                    "bytes": o.size,
                    "error": o.error,
                    "layer_error": c.closed_form,
                }
                for o, c in zip(layer.options, priced[layer.name])
            ]
            for layer in layers
        },
    }
