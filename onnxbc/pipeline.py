"""``compress``: the whole flow, in one direction.

load -> prepare -> find targets -> quantize weights -> pass 1: activation ranges -> pass 2: per-layer
output error of each quantized shadow -> solve compensation biases -> rewrite (QDQ + bias folds, all at
once) -> measure the output against FP32 on held-out samples, with and without compensation, and keep
compensation only if it helps -> check -> save atomically + report. With ``--bias-correction sequential``
the biases are then fitted again, one pass per wave of layers (see ``compensation``), starting from the
weights whose independent compensation measures best end to end, and the held-out check sees both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

import onnxbc
from onnxbc import model_io, precision, sensitivity, validate
from onnxbc.calibration.collector import Probe, collect
from onnxbc.calibration.data import CalibrationData, input_specs, open_data
from onnxbc.calibration.probes import ErrorProbe, LayerErrorProbe, MomentsProbe, RangeProbe
from onnxbc.calibration.session import SessionFactory
from onnxbc.compare import OutputAgreement, compare_sessions
from onnxbc.compensation import bias_skip_reason, fold_for, sequential
from onnxbc.errors import OnnxbcError, UsageError
from onnxbc.options import (
    ActivationType,
    BiasCorrection,
    BiasShape,
    CompressOptions,
    DataOptions,
    Rounding,
    WeightType,
)
from onnxbc.passes.bias_int32 import QuantizeBiasPass
from onnxbc.passes.fold_bias import FoldBiasPass
from onnxbc.passes.prepare import prepare_passes, quantized_nodes
from onnxbc.passes.qdq import InsertQDQPass
from onnxbc.passes.smooth import SmoothPass
from onnxbc.plan import ActivationQuant, BiasFold, QuantPlan, WeightQuant
from onnxbc.policy import load_policy
from onnxbc.progress import Stages
from onnxbc.quantizers import activation_quant, weight_granularity
from onnxbc.report import LayerRecord, Report
from onnxbc.smoothing import channel_axis, smoothable
from onnxbc.targets import Target as Layer
from onnxbc.targets import Targets, find_targets
from onnxbc.variants import (
    Variant,
    choose,
    power_importance,
    smoothing_variants,
    trial_probes,
    uniform_variants,
    weight_range_variants,
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CompressResult:
    output: Path
    report_path: Path
    report: Report


def default_output(model_path: Path, options: CompressOptions) -> Path:
    """``model.onnx`` -> ``model.int8.onnx`` (W8A8), ``model.w4a8.onnx``, ``model.w4.onnx`` (weight-only),
    ``model.mixed4.5a8.onnx`` (--avg-bits 4.5), ..."""
    w = "" if options.weights is WeightType.NONE else f"w{options.weights.bits}"
    if options.budget:
        w = f"mixed{options.avg_bits:g}" if options.avg_bits is not None else "mixed"
    a = "" if options.activations is ActivationType.NONE else f"a{options.activations.bits}"
    tag = "int8" if (w, a) == ("w8", "a8") else w + a
    return model_path.with_name(f"{model_path.stem}.{tag}.onnx")


def default_report(output: Path) -> Path:
    return output.with_name(f"{output.stem}.report.json")


def compress(
    model: str | Path,
    output: str | Path | None = None,
    *,
    data: DataOptions | None = None,
    options: CompressOptions | None = None,
    report: str | Path | None = None,
    force: bool = False,
    stages: Stages | None = None,
) -> CompressResult:
    """Quantize ``model`` and write the result and its report; see the module docstring for the flow
    (``options.data_free``: ``onnxbc.datafree``, which takes no ``data``)."""
    options = options or CompressOptions()
    if options.data_free:
        if data is not None:
            raise UsageError("--data-free uses no calibration data: drop --data / --random-data")
        from onnxbc import datafree  # here: datafree imports this module

        return datafree.compress(model, output, options=options, report=report, force=force, stages=stages)
    if data is None:
        raise UsageError("calibration data is needed: pass --data PATH (or --random-data, or --data-free)")
    stages = stages or Stages(enabled=False)
    model_path = Path(model)
    out = model_io.check_output_path(model_path, output or default_output(model_path, options), force=force)
    report_path = model_io.check_output_path(model_path, report or default_report(out), force=force)
    timer = _Timer()
    rep = Report(tool_version=onnxbc.__version__, input={"path": str(model_path)})
    rep.options = {**dataclasses.asdict(options), "data": dataclasses.asdict(data)}

    with timer("load"):
        working = model_io.load(model_path)
        rep.input["bytes"] = model_io.file_bytes(model_path)
    refuse_quantized(working, model_path)
    rep.opset["before"] = working.opset_imports.get("", 0)
    policy = load_policy(options.policy) if options.policy is not None else None
    with timer("prepare"):
        needed = precision.required_opset(options, policy)
        min_opset = max(needed, options.opset or 0, 19 if _has_half_floats(working) else 0)
        working = prepare_passes(min_opset)(working).model
    rep.opset["after"] = working.opset_imports.get("", 0)
    targets = find_targets(working, quantize_attention=options.quantize_attention)
    if not targets.targets:
        reasons = "; ".join(f"{s.name}: {s.reason}" for s in targets.skipped[:3])
        raise OnnxbcError(
            f"{model_path}: nothing to quantize (no Conv/ConvTranspose/Gemm/MatMul with a constant weight)"
            + (f": {reasons}" if reasons else "")
        )
    calib = open_data(data, input_specs(working))
    rep.data = {
        "source": calib.description,
        "fit_samples": calib.n_fit,
        "holdout_samples": calib.n_holdout,
        "batch_size": calib.batch_size,
        "random": data.random,
        "ignored_arrays": calib.ignored,
    }
    if data.random:
        rep.warnings.append("calibrated on random data: ranges and compensation may not match real inputs")
    if calib.n_holdout == 0:
        rep.warnings.append("no held-out samples: errors and the compensation decision use the calibration samples")
    sessions = SessionFactory(options.device)
    overrides, policy_warnings = precision.resolve(options, policy, targets)
    rep.warnings.extend(policy_warnings)

    plan = QuantPlan()
    notes: dict[str, list[str]] = {t.name: list(t.notes) for t in targets.targets}
    quantize_activations = options.activations is not ActivationType.NONE
    uses = targets.activation_uses()
    uniform = options.scheme == "uniform" and options.rounding is Rounding.NEAREST
    smooth_axes = smoothable(targets, uses) if options.smoothing and quantize_activations and uniform else {}
    ranges: dict[str, RangeProbe] = {}
    power, moments = precision.stats_probes(targets, options, overrides)
    if uses:  # pass 1: activation histograms, and the input statistics that weight scales and prices use
        with timer("ranges"):
            ranges = _first_pass(working, uses, smooth_axes, [*power, *moments], calib, sessions, stages)
        rep.passes_over_data += 1

    with timer("quantize_weights"), stages.step("Quantizing weights", len(targets.weights)) as advance:
        extra = precision.extra_bytes(targets, list(uses) if quantize_activations else [], smooth_axes)

        def size_of(weights: dict[str, WeightQuant]) -> int:
            return model_io.serialized_bytes(_quantize(working.clone(), QuantPlan(weights=weights))[0])

        stats = precision.input_stats(targets, ranges, power, moments)
        importance = power_importance(targets, ranges)
        measure = None
        if options.price_measured:

            def measure(trials: dict[str, list[Callable[[], np.ndarray]]]) -> dict[str, list[float]]:
                runs = sum(len(t) for t in trials.values())
                with timer("measure_sensitivity"), stages.step("Measuring output sensitivity", runs) as step:
                    return sensitivity.output_errors(working, trials, calib, sessions, step)

        choice = precision.choose(
            targets, options, importance, stats, overrides, policy, extra, size_of, advance, measure
        )
        plan.weights.update(choice.weights)
    for group in targets.weights.values():
        granularity_note = weight_granularity(group, options)[1] if group.name in plan.weights else None
        for t in group.targets:
            notes[t.name].extend(choice.notes.get(group.name, []) + ([granularity_note] if granularity_note else []))
            if t.name in choice.skipped_layers:
                notes[t.name].append("left float by the policy (skip = true)")
    rep.precision = choice.report
    if quantize_activations:
        live = {n: [(t, i) for t, i in u if t.name not in choice.skipped_layers] for n, u in uses.items()}
        _plan_activations(ranges, {n: u for n, u in live.items() if u}, plan, options, notes, rep)
    else:
        for t in targets.targets:
            if t.weight is None:
                notes[t.name].append("weight-only mode: activation x activation MatMul left float")
    if not plan.weights and not plan.activations:
        reasons = sorted({n for t in targets.targets for n in notes[t.name]})
        raise OnnxbcError(
            f"{model_path}: nothing to quantize with these options"
            + (f" ({'; '.join(reasons[:2])})" if reasons else "")
        )
    per_position = options.bias_shape is BiasShape.POSITION
    mode = options.bias_correction
    observed = [t for t in targets.targets if not t.in_subgraph and _is_quantized(t, plan)]
    bias_skips = {t.name: reason for t in observed if (reason := bias_skip_reason(t))}
    if mode is BiasCorrection.NONE:
        bias_skips = {t.name: "compensation off (--bias-correction none)" for t in observed}
    compensate = {t.name for t in observed} - set(bias_skips)
    probes: dict[str, ErrorProbe] = {}
    alternatives: dict[str, _Alternative] = {}  # whole-model alternatives to the plan, by label
    by_name = {t.name: t for t in observed}
    variants = weight_range_variants(targets, plan, set(by_name), options)
    variants += smoothing_variants(targets, plan, set(by_name), ranges, smooth_axes, options)
    variants += uniform_variants(targets, plan, set(by_name), choice.uniform, options)
    shadows = [LayerErrorProbe(t, plan, per_position=per_position) for t in observed]  # pass 2: every layer's error
    trials = trial_probes(variants, by_name, per_position)
    every = shadows + [p for trial in trials.values() for p in trial]
    with timer("layer_errors"), stages.step("Measuring layer errors", calib.count_batches("all")) as advance:
        collect(working, every, calib, sessions, splits=("fit", "holdout"), advance=advance)
    rep.passes_over_data += 1
    probes = {p.target.name: p for p in shadows}
    weights_before = dict(plan.weights)  # smoothing and min-max scales change them
    choices = choose(working, variants, trials, probes, plan, compensate, notes)
    rep.weight_ranges, rep.smoothing = choices["weight_range"], choices["smoothing"]
    plan.biases.update(_fit_biases(probes.values(), compensate, per_position))
    minmax = _minmax_alternative(variants, trials, plan, compensate, per_position)
    if minmax is not None:
        alternatives["minmax_with_compensation"] = minmax
    if any(v.kind == "uniform" for v in variants):  # under a budget: uniform bits, measured as the plan is
        label = f"uniform_int{choice.uniform_bits}"
        alternatives[label] = _uniform_alternative(variants, trials, plan, weights_before, shadows, uses, ("uniform",))
        measured = {label: alternatives[label]}
        if any(v.kind == "uniform_minmax" for v in variants):  # and with min-max scales, as --weights alone is
            kinds = ("uniform", "uniform_minmax")
            measured[label + "_minmax"] = _uniform_alternative(
                variants, trials, plan, weights_before, shadows, uses, kinds
            )
        for name, alternative in measured.items():
            biases = {**plan.biases, **_fit_biases(alternative.probes.values(), compensate, per_position)}
            if biases:
                alternatives[name + "_with_compensation"] = dataclasses.replace(alternative, biases=biases)

    names = {t.name: _LayerNames.of(t) for t in targets.targets}  # before the rewrite rewires them
    with timer("rewrite"):
        float_model = working.clone()
        quantized, smooth_sites = _quantize(working, plan)
        for name, site in smooth_sites.items():
            rep.smoothing[name]["site"] = site
        compensated, sites = _fold(quantized.clone(), plan.biases) if plan.biases else (None, {})
        for alternative in alternatives.values():
            other, _ = _quantize(float_model.clone(), alternative.plan(plan))
            alternative.model, alternative.sites = (
                _fold(other, alternative.biases) if alternative.biases else (other, {})
            )
    if mode is BiasCorrection.SEQUENTIAL and compensated is not None:
        with timer("sequential_compensation"):
            start = _sequential_start(float_model, compensated, alternatives, calib, sessions, stages)
            base = alternatives.get(start)
            base_model = quantized if base is None else _quantize(float_model.clone(), base.plan(plan))[0]
            model, layer_probes, biases, folded, passes = sequential(
                float_model, base_model, observed, compensate, calib, sessions, stages, per_position=per_position
            )
        fitted = base or _Alternative({}, {}, {})
        alternatives[start.removesuffix("with_compensation") + "sequential_with_compensation"] = dataclasses.replace(
            fitted, biases=biases, probes=layer_probes, model=model, sites=folded
        )
        rep.passes_over_data += passes
    rep.device = sessions.device_name
    int32: dict[int, QuantizeBiasPass] = {}  # by id of the model: the bias is rounded once, and measured
    for model in (quantized, compensated, *(a.model for a in alternatives.values())):
        if options.int32_bias and model is not None:
            int32[id(model)] = QuantizeBiasPass()
            int32[id(model)](model)

    with timer("verify"):
        models = {label: a.model for label, a in alternatives.items()}
        max_size = precision.budget_of(options, policy)[1]
        label = _evaluate(float_model, quantized, compensated, models, calib, sessions, stages, rep, max_size)
        keep_bias = _compensated(label)
        saved = {"without_compensation": quantized, "with_compensation": compensated, **models}[label]
        if label in alternatives:  # the layers' records follow the model that is saved
            chosen = alternatives[label]
            plan.weights.update(chosen.weights)
            plan.activations.update(chosen.activations)
            for key in chosen.unsmoothed:
                del plan.smoothing[key]
                rep.smoothing[key].update(chosen="none", site=None)
            plan.biases = dict(chosen.biases)
            probes.update(chosen.probes)
            sites = chosen.sites
            if "minmax" in label:
                for key in chosen.weights.keys() & rep.weight_ranges.keys():
                    rep.weight_ranges[key]["chosen"] = "minmax"
                note = "weight scales by min-max (min-max everywhere measured better end to end)"
            if label.startswith("uniform"):
                for key, wq in chosen.weights.items():
                    rep.precision["layers"][key] = precision.layer_entry(wq)
                note = f"uniform int{choice.uniform_bits} everywhere measured better end to end than the mixed bits"
                note += " (min-max scales)" if "minmax" in label else ""
            for layer in chosen.probes:
                if names[layer].weight in chosen.weights:
                    notes[layer].append(note)
        if mode is BiasCorrection.SEQUENTIAL and keep_bias and "sequential" not in label:
            rep.warnings.append(
                f"sequential compensation measured worse on held-out samples than independent compensation; "
                f"saved {label.replace('_', ' ')}"
            )
        if choice.uniform_bits is not None:
            rep.precision["saved"] = f"uniform int{choice.uniform_bits}" if label.startswith("uniform") else "mixed"
        validate.require(saved, options.target)
        if id(saved) in int32:
            for layer, site in int32[id(saved)].sites.items():
                notes.get(layer, []).append(f"bias stored as int32 codes ({site})")
            for layer, why in int32[id(saved)].skipped.items():
                if why != "no bias":
                    notes.get(layer, []).append(f"bias left float: {why}")

    with timer("save"):
        files = model_io.save(saved, out, external_data=bool(model_io.external_data_files(model_path)) or None)
    rep.output = {"path": str(out), "files": [str(f) for f in files], "bytes": model_io.file_bytes(out)}
    try:
        precision.check_size(rep.output["bytes"], options, policy)
    except OnnxbcError:
        for f in files:
            Path(f).unlink(missing_ok=True)
        raise
    rep.timings_s = timer.durations
    rep.layers = _layer_records(targets, names, plan, probes, notes, bias_skips, sites, keep_bias)
    rep.write(report_path)
    return CompressResult(out, report_path, rep)


def refuse_quantized(model: ir.Model, path: Path) -> None:
    found = quantized_nodes(model)
    if found:
        first = found[0]
        more = f" and {len(found) - 1} more quantized nodes" if len(found) > 1 else ""
        raise OnnxbcError(
            f"{path}: already quantized (node '{first.name}' is {first.op_type}{more}); onnxbc needs the float model"
        )


def _has_half_floats(model: ir.Model) -> bool:
    """Float16/bfloat16 tensors need opset 19 QuantizeLinear/DequantizeLinear."""
    half = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
    values = [*model.graph.inputs, *model.graph.initializers.values()]
    return any(v.dtype in half for v in values)


def _first_pass(
    model: ir.Model,
    uses: dict[str, list[tuple[Layer, int]]],
    smooth_axes: dict[str, int],
    extra: list[Probe],
    calib: CalibrationData,
    sessions: SessionFactory,
    stages: Stages,
) -> dict[str, RangeProbe]:
    """Pass 1: per layer input, a histogram of ``|x|`` and (for weighted layers) its per-channel mean and
    mean square; per-channel histograms too for inputs that may be smoothed; and the ``extra`` probes."""
    probes = {}
    for name, readers in uses.items():
        axes = {channel_axis(t) for t, _ in readers if t.weight is not None}
        axis = axes.pop() if len(axes) == 1 else None
        probes[name] = RangeProbe(name, axis, channel_histograms=name in smooth_axes)
    # Second moments are also taken on held-out samples (GPTQ is priced there); the rest on fit samples only.
    splits = ("fit", "holdout") if any(isinstance(p, MomentsProbe) for p in extra) and calib.n_holdout else ("fit",)
    with stages.step("Calibrating activation ranges", sum(calib.count_batches(s) for s in splits)) as advance:
        collect(model, [*probes.values(), *extra], calib, sessions, splits=splits, advance=advance)
    return probes


def _plan_activations(
    ranges: dict[str, RangeProbe],
    uses: dict[str, list[tuple[Layer, int]]],
    plan: QuantPlan,
    options: CompressOptions,
    notes: dict[str, list[str]],
    rep: Report,
) -> None:
    """A per-tensor quantizer for every float layer input, from its pass-1 histogram."""
    for name, probe in ranges.items():
        if probe.dtype is None or not np.issubdtype(probe.dtype, np.floating):
            for t, _ in uses[name]:
                notes[t.name].append(f"input '{name}' is {probe.dtype}: left unquantized")
            continue
        if probe.hist.nonfinite:
            rep.warnings.append(f"activation '{name}' had {probe.hist.nonfinite} non-finite values during calibration")
        plan.activations[name] = activation_quant(name, probe.hist, probe.dtype, options)
        plan.activation_uses[name] = [(t.name, i) for t, i in uses[name]]


@dataclasses.dataclass(frozen=True)
class _LayerNames:
    """A layer's weight and activation names, taken before the rewrite renames and rewires them."""

    weight: str | None
    activations: tuple[str, ...]

    @classmethod
    def of(cls, t: Layer) -> _LayerNames:
        weight = t.weight.source.name if t.weight is not None else None
        return cls(weight, tuple(t.node.inputs[i].name for i in t.activation_inputs))

    def quantized(self, plan: QuantPlan) -> bool:
        return self.weight in plan.weights or any(a in plan.activations for a in self.activations)


def _is_quantized(t: Layer, plan: QuantPlan) -> bool:
    return _LayerNames.of(t).quantized(plan)


def _quantize(model: ir.Model, plan: QuantPlan) -> tuple[ir.Model, dict[str, str]]:
    """Smoothing, then Q/DQ, on ``model`` in place; also where each smoothing was folded."""
    smooth = SmoothPass(plan.smoothing, plan.activation_uses)
    return InsertQDQPass(plan)(smooth(model).model).model, smooth.sites


def _fold(model: ir.Model, biases: dict[str, BiasFold]) -> tuple[ir.Model, dict[str, str]]:
    """The compensation biases folded into ``model`` in place; also where each went."""
    fold = FoldBiasPass(biases)
    return fold(model).model, fold.sites


def _fit_biases(probes: Iterable[ErrorProbe], compensate: set[str], per_position: bool) -> dict[str, BiasFold]:
    """Each compensated layer's bias: its mean output error on the fit samples."""
    return {
        p.target.name: fold_for(p.target, p.moments["fit"], per_position)
        for p in probes
        if p.target.name in compensate and not p.moments["fit"].empty
    }


@dataclasses.dataclass
class _Alternative:
    """Weights quantized otherwise than the plan says, with the compensation fitted for them, measured end to
    end beside the plan: min-max scales for every weight the per-layer choice gave mse scales (measured on
    the bundled CNN at W4A8: each layer's held-out error was lower with mse scales, yet the whole model with
    all min-max scales and compensation had half the output error), or under a size budget uniform bits for
    every weight (measured on PP-OCR at W4A8: the priced mixed bits read 6.5 % of the lines, uniform int4
    77.5 %). Per-layer errors do not always add up. Sequential compensation is one more alternative."""

    weights: dict[str, WeightQuant]  # those that differ from the plan's
    biases: dict[str, BiasFold]  # every bias folded into its model (none: uncompensated)
    probes: dict[str, ErrorProbe]  # the layer errors measured for it, where they differ from the plan's
    activations: dict[str, ActivationQuant] = dataclasses.field(default_factory=dict)
    unsmoothed: set[str] = dataclasses.field(default_factory=set)  # inputs whose smoothing it takes back
    model: ir.Model | None = None
    sites: dict[str, str] = dataclasses.field(default_factory=dict)

    def plan(self, base: QuantPlan) -> QuantPlan:
        return dataclasses.replace(
            base,
            weights={**base.weights, **self.weights},
            activations={**base.activations, **self.activations},
            smoothing={k: s for k, s in base.smoothing.items() if k not in self.unsmoothed},
        )


def _minmax_alternative(
    variants: list[Variant],
    trials: dict[int, list[LayerErrorProbe]],
    plan: QuantPlan,
    compensate: set[str],
    per_position: bool,
) -> _Alternative | None:
    """The min-max alternative from the pass-2 trials (no extra pass), or None when nothing would change.
    Weights of smoothed layers keep their scales (smoothing chose among candidates with them)."""
    weights, probes = {}, {}
    for i, v in enumerate(variants):
        smoothed = any(value in plan.smoothing for value in v.plan.activations)
        if v.kind != "weight_range" or plan.weights[v.key].method == v.label or smoothed:
            continue
        weights.update(v.plan.weights)
        probes.update({p.target.name: p for p in trials[i]})
    if not weights or not compensate & set(probes):
        return None
    return _Alternative(weights, {**plan.biases, **_fit_biases(probes.values(), compensate, per_position)}, probes)


def _uniform_alternative(
    variants: list[Variant],
    trials: dict[int, list[LayerErrorProbe]],
    plan: QuantPlan,
    weights_before: dict[str, WeightQuant],
    shadows: list[ErrorProbe],
    uses: dict[str, list[tuple[Layer, int]]],
    kinds: tuple[str, ...],
) -> _Alternative:
    """The uniform-bits alternative, uncompensated, from the pass-2 trials of ``kinds`` (later kinds override
    earlier ones). Its trials ran before smoothing was chosen, so the inputs pass 2 smoothed that its weights
    read are taken back unsmoothed, with every weight that reads them as it was before the choice (and its
    shadow from before)."""
    weights, probes, activations = {}, {}, {}
    for i in [i for kind in kinds for i, v in enumerate(variants) if v.kind == kind]:
        weights.update(variants[i].plan.weights)
        probes.update({p.target.name: p for p in trials[i]})
        activations.update({k: a for k, a in variants[i].plan.activations.items() if k in plan.smoothing})
    unshadowed = {p.target.name: p for p in shadows}
    for value in activations:
        for t, _ in uses[value]:
            source = t.weight.source.name if t.weight is not None else None
            if source in weights_before and source not in weights:
                weights[source] = weights_before[source]
            if t.name in unshadowed:
                probes.setdefault(t.name, unshadowed[t.name])
    return _Alternative(weights, {}, probes, activations, set(activations))


def _compensated(label: str) -> bool:
    return label == "with_compensation" or label.endswith("_with_compensation")


def _sequential_start(
    float_model: ir.Model,
    compensated: ir.Model,
    alternatives: dict[str, _Alternative],
    calib: CalibrationData,
    sessions: SessionFactory,
    stages: Stages,
) -> str:
    """The label of the compensated candidate with the least held-out output error (``with_compensation``:
    the plan's own weights): sequential compensation starts from its weights."""
    candidates = {"with_compensation": compensated, **{k: a.model for k, a in alternatives.items() if a.biases}}
    if len(candidates) == 1:
        return "with_compensation"
    reference = sessions.create(float_model)
    title = "Choosing where sequential compensation starts"
    errors = _output_errors(reference, candidates, calib, sessions, stages, title)
    return min(errors, key=lambda label: _mean_rel_mse(errors[label]))


def _output_errors(
    reference: ort.InferenceSession,
    candidates: dict[str, ir.Model],
    calib: CalibrationData,
    sessions: SessionFactory,
    stages: Stages,
    title: str,
) -> dict[str, dict[str, OutputAgreement]]:
    """Each candidate's outputs against FP32 on the held-out samples (the fit samples when none are held out)."""
    split = "holdout" if calib.n_holdout else "fit"
    results: dict[str, dict[str, OutputAgreement]] = {}
    with stages.step(title, calib.count_batches(split) * len(candidates)) as advance:
        for label, candidate in candidates.items():  # one candidate session alive at a time (big models)
            results[label] = compare_sessions(reference, sessions.create(candidate), calib.batches(split), advance)
    return results


def _evaluate(
    float_model: ir.Model,
    quantized: ir.Model,
    compensated: ir.Model | None,
    alternatives: dict[str, ir.Model],
    calib: CalibrationData,
    sessions: SessionFactory,
    stages: Stages,
    rep: Report,
    max_size: int | None = None,
) -> str:
    """Compare outputs with FP32 on held-out samples and return the label of the candidate with the least
    error: compensation is kept only if it lowers the error (and an alternative only if it lowers it more),
    and under ``--max-size`` only if its file fits (new biases take bytes the allocation did not count)."""
    split = "holdout" if calib.n_holdout else "fit"
    candidates = {"without_compensation": quantized}
    if compensated is not None:
        candidates["with_compensation"] = compensated
    candidates.update(alternatives)
    reference = sessions.create(float_model)
    results = _output_errors(reference, candidates, calib, sessions, stages, "Checking outputs against FP32")
    rep.outputs = {label: {n: a.as_dict() for n, a in r.items()} for label, r in results.items()}
    rep.outputs["evaluated_on"] = split
    errors = {label: _mean_rel_mse(r) for label, r in results.items()}
    ranked = sorted(errors, key=errors.get)  # ties keep the earlier: no compensation, then the per-layer choice
    fits = (label for label in ranked if max_size is None or model_io.serialized_bytes(candidates[label]) <= max_size)
    best = next(fits, ranked[0])  # the least error that fits; none fits: the size check after saving says so
    if best != ranked[0]:
        rep.warnings.append(
            f"the model {ranked[0].replace('_', ' ')} (least error) would pass --max-size {max_size} bytes: "
            f"saved {best.replace('_', ' ')}"
        )
    rep.compensation = {"applied": _compensated(best)}
    if alternatives:
        rep.compensation["alternatives"] = {label: errors[label] for label in alternatives}
        rep.compensation["chosen"] = best
    if compensated is not None:
        before, after = errors["without_compensation"], errors["with_compensation"]
        rep.compensation.update(output_rel_mse_without=before, output_rel_mse_with=after, decided_on=split)
        if ranked[0] == "without_compensation":
            rep.warnings.append(
                f"compensation raised the {split} output error ({before:.3e} -> {after:.3e}); saved without it"
            )
    chosen = candidates[best]
    # What ONNX Runtime's default session (fused integer kernels) makes of the chosen graph here.
    try:
        default_session = sessions.create(chosen, exact=False)
    except OnnxbcError as e:  # its graph optimizers can fail where the graph is valid (seen: uint4 into MaxPool)
        rep.warnings.append(
            f"ONNX Runtime's default session cannot load the output ({e}); it runs with "
            "graph_optimization_level ORT_ENABLE_BASIC or the QDQ optimizers off (session.disable_quant_qdq)"
        )
        return best
    deployed = compare_sessions(reference, default_session, calib.batches(split))
    rep.outputs["onnxruntime_default_session"] = {n: a.as_dict() for n, a in deployed.items()}
    exact_err = errors[best]
    fused_err = _mean_rel_mse(deployed)
    if fused_err > 3 * exact_err and fused_err > 1e-4:
        rep.warnings.append(
            f"ONNX Runtime's default {sessions.device_name} kernels give {fused_err:.2e} output error where the graph "
            f"gives {exact_err:.2e}; on x86 CPUs without VNNI its u8s8 integer kernels saturate: "
            "if you deploy on such CPUs, compress with --reduce-range (7-bit weights)"
        )
    return best


def _mean_rel_mse(agreements: dict[str, OutputAgreement]) -> float:
    values = [a.as_dict()["rel_mse"] for a in agreements.values()]
    return float(np.mean(values)) if values else 0.0


def _layer_records(
    targets: Targets,
    names: dict[str, _LayerNames],
    plan: QuantPlan,
    probes: dict[str, ErrorProbe],
    notes: dict[str, list[str]],
    bias_skips: dict[str, str],
    fold_sites: dict[str, str],
    keep_bias: bool,
) -> list[LayerRecord]:
    records = []
    for t in targets.targets:
        probe = probes.get(t.name)
        wq = plan.weights.get(names[t.name].weight)
        fold = plan.biases.get(t.name)
        rec = LayerRecord(
            t.name,
            t.op,
            t.kind,
            "quantized" if names[t.name].quantized(plan) else "skipped",
            notes=notes[t.name],
        )
        if rec.status == "skipped":
            rec.reason = "; ".join(notes[t.name]) or "nothing quantized"
        if wq is not None:
            rec.weight = {
                "name": wq.source,
                "bits": wq.bits,
                "stored_bits": wq.stored_bits,
                "granularity": wq.granularity.describe(),
                "axis": wq.granularity.axis,
                "block_size": wq.granularity.block_size,
                "scale_method": wq.method,
                "scheme": wq.scheme,
                "rounding": wq.rounding,
                "emulated": wq.emulated is not None,
                "params": int(wq.dequantized().size),
            }
        for name in names[t.name].activations:
            aq = plan.activations.get(name)
            if aq is not None:
                rec.activations.append(
                    {
                        "name": aq.value,
                        "dtype": aq.dtype.name,
                        "scale": aq.scale,
                        "amax": aq.amax,
                        "range_method": aq.method,
                    }
                )
        if probe is not None:
            rec.error = {}
            for split, m in probe.moments.items():
                if not m.empty:
                    after = m.rel_mse(fold.delta) if fold is not None else None
                    rec.error[split] = {"rel_mse_before": m.rel_mse(), "rel_mse_after": after}
        if fold is not None:
            rec.bias = {
                "applied": keep_bias,
                "site": fold_sites.get(t.name),
                "delta_norm": float(np.linalg.norm(fold.delta)),
                "delta_max_abs": float(np.abs(fold.delta).max()),
                "reason": None if keep_bias else "compensation as a whole did not lower the held-out output error",
            }
        elif t.name in bias_skips:
            rec.bias = {"applied": False, "reason": bias_skips[t.name]}
        records.append(rec)
    records.extend(LayerRecord(s.name, s.op, "other", "skipped", reason=s.reason) for s in targets.skipped)
    return records


class _Timer:
    def __init__(self) -> None:
        self.durations: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.durations[name] = round(time.perf_counter() - start, 3)
