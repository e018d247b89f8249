"""``compress``: the whole flow, in one direction, as named stages.

start (outputs checked) -> load + prepare (BatchNorm folded) -> targets -> pass 1: activation ranges and input
statistics (and the ranges of the target's placement sites, ``onnxbc.placement``) -> decide: each weight's
precision and each activation's quantizer -> pass 2: every quantized layer's output error, beside the
variants' (min-max scales, smoothing, uniform bits) -> per-layer choices -> candidates: whole models with and
without compensation, each built with the target's placement (``onnxbc.candidates``; sequential compensation
refits one) -> choose: the least output error against FP32 on held-out samples -> ONNX Runtime: the fusion
audit (``onnxbc.fusion``) -> report (``onnxbc.records``) -> check -> write model and report as one
transaction. ``--data-free`` runs ``onnxbc.datafree`` between the same front
and back stages (``onnxbc.flow``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxbc import (
    candidates,
    datafree,
    flow,
    fusion,
    held,
    model_io,
    placement,
    precision,
    records,
    sensitivity,
    validate,
)
from onnxbc.calibration import memory, segmented, tokens
from onnxbc.calibration.collector import Probe, collect, fits_whole, samples_per_run
from onnxbc.calibration.data import CalibrationData, input_specs, open_data
from onnxbc.calibration.probes import ChannelTrialProbe, ErrorProbe, LayerErrorProbe, MomentsProbe, RangeProbe
from onnxbc.calibration.session import SessionFactory
from onnxbc.candidates import Candidate, Trials
from onnxbc.compare import FloatOutputs, Reference
from onnxbc.compensation import bias_skip_reason
from onnxbc.errors import OnnxbcError, UsageError
from onnxbc.flow import CompressResult, Run
from onnxbc.held import ModelLike
from onnxbc.options import ActivationType, BiasCorrection, BiasShape, CompressOptions, DataOptions, Rounding
from onnxbc.options import Target as Runtime
from onnxbc.placement import Placement
from onnxbc.plan import QuantPlan, WeightQuant
from onnxbc.policy import LayerOverride, Policy, load_policy
from onnxbc.progress import Stages
from onnxbc.quantizers import activation_quant, weight_granularity
from onnxbc.sizing import FileSize
from onnxbc.smoothing import channel_axis, smoothable
from onnxbc.targets import FLOAT_TYPES, Target, Targets, find_targets
from onnxbc.variants import (
    VariantKind,
    foldable,
    nearest_variants,
    power_importance,
    smoothing_variants,
    trial_probes,
    uniform_variants,
    weight_range_variants,
)
from onnxbc.variants import choose as choose_variants

logger = logging.getLogger(__name__)

# A model file whose weights (held in memory once read from its protobuf) take this share of the memory budget or
# more has them moved to a temporary file and read on demand, as external data is (``model_io.spill``).
SPILL_SHARE = 0.05
CHECK_OUTPUTS_HELD = 4  # the held-out check's runs: outputs held at once per run (``_reference``)

__all__ = ["CompressResult", "compress"]


def compress(
    model: ModelLike,
    output: str | Path | None = None,
    *,
    data: DataOptions | Any = None,
    options: CompressOptions | None = None,
    report: str | Path | None = None,
    force: bool = False,
    stages: Stages | None = None,
) -> CompressResult:
    """Quantize ``model`` and write the result and its report (see the module docstring).

    ``model``: a path, or a model in memory (``onnx.ModelProto``, ``onnx_ir.Model``, onnx-graphsurgeon
    ``gs.Graph``); for one in memory with no ``output``, ``result.model`` is the quantized model of the same
    kind and no file is written (but ``report``, if given). ``data``: ``DataOptions``, or the samples themselves
    (a dict of arrays, an iterable of feed dicts, a CalibrationDataReader: ``DataOptions(source=...)``)."""
    options, stages = options or CompressOptions(), stages or Stages(enabled=False)
    if options.data_free:
        if data is not None:
            raise UsageError("--data-free uses no calibration data: drop --data / --random-data")
        return datafree.compress(model, output, options=options, report=report, force=force, stages=stages)
    if data is None:
        raise UsageError("calibration data is needed: pass --data PATH (or --random-data, or --data-free)")
    data = data if isinstance(data, DataOptions) else DataOptions(source=data)
    policy = load_policy(options.policy) if options.policy is not None else None
    run = flow.start(
        model,
        output,
        report,
        options=options,
        force=force,
        stages=stages,
        extra_options={"data": data.describe()},
    )
    working = flow.load_prepared(run, precision.required_opset(options, policy))
    with tempfile.TemporaryDirectory(prefix="onnxbc-weights-", ignore_cleanup_errors=True) as weights:
        parking = _read_on_demand(run, working, Path(weights), held.is_path(model))
        job = _open(run, working, data, options, policy, parking)
        with contextlib.closing(job.calib):  # a spilled source's temporary folder goes at the end
            stats = _first_pass(job)
            decided = _decide(job, stats)
            model_io.release(job.model)  # the weights read to quantize them: mapped again when needed
            memory.release()
            errors = _second_pass(job, stats, decided)
            for probe in stats.ranges.values():
                probe.channels = None  # per-channel histograms ([channels, 2048] counts each) serve pass 2 only
            built = _candidates(job, stats, decided, errors)
            model_io.release(job.model)
            memory.release()
            winner = _choose(job, built, errors.outputs)
        audit = _audit(job, winner)
        _memory(job)
        records.fill(run.report, job.targets, _decisions(options, decided, errors), winner, built, audit)
        validate.require(winner.model, options.target)
        result = flow.write(run, winner.model, lambda size: precision.check_size(size, options, policy))
        model_io.release(winner.model)  # unmapped before the temporary file goes
        return result


def _read_on_demand(run: Run, model: ir.Model, folder: Path, from_file: bool) -> memory.Parking | None:
    """Where the weights take ``SPILL_SHARE`` of the memory budget or more: those ``model`` holds in memory (read
    from its file; a model handed in memory is its caller's) moved to a file in ``folder``, and files there for
    the quantized weights to be parked in (``WeightQuant.parked``); else None."""
    if model_io.initializer_bytes(model) < SPILL_SHARE * (run.options.max_memory or memory.default_budget()):
        return None
    if from_file and model_io.held_bytes(model):
        run.report.input["weights_read_on_demand"] = model_io.spill(model, folder)
    return memory.Parking(folder)


@dataclasses.dataclass(frozen=True)
class _Job:
    """What every stage after load works with."""

    run: Run
    model: ir.Model  # the prepared float model (never rewritten in place)
    targets: Targets
    calib: CalibrationData
    sessions: SessionFactory
    options: CompressOptions
    policy: Policy | None
    overrides: dict[str, LayerOverride]
    parking: memory.Parking | None  # where quantized weights are kept while unused; None: in memory
    whole: bool  # whether one session of the whole model fits the budget (decided once: ``_open``)

    def park(self, wq: WeightQuant) -> WeightQuant:
        return wq if self.parking is None else wq.parked(self.parking)


@dataclasses.dataclass(frozen=True)
class _Statistics:
    """Pass 1: activation histograms, and the input statistics that weight scales and prices use."""

    uses: dict[str, list[tuple[Target, int]]]  # layer input -> the layers (and input index) that read it
    smooth_axes: dict[str, int]  # inputs that may be smoothed -> their channel axis
    ranges: dict[str, RangeProbe]
    power: list[Probe]
    moments: list[Probe]
    placement: Placement | None  # int8 activations: the target's placement (onnxbc.placement)


@dataclasses.dataclass(frozen=True)
class _Decided:
    """Each weight's precision and each activation's quantizer (before the per-layer variants)."""

    plan: QuantPlan
    choice: precision.Precision
    notes: dict[str, list[str]]


@dataclasses.dataclass(frozen=True)
class _LayerErrors:
    """Pass 2 and the per-layer choices made on it."""

    observed: list[Target]  # quantized layers whose error was measured
    compensate: set[str]
    bias_skips: dict[str, str]
    probes: dict[str, ErrorProbe]  # after the per-layer choices
    unchosen: QuantPlan  # the plan's weights before the choices
    unchosen_probes: dict[str, ErrorProbe]
    trials: Trials
    scores: dict[str, dict[str, dict[str, float]]]
    outputs: FloatOutputs | None  # the float model's outputs pass 2 fetched (for the held-out check)


def _open(
    run: Run,
    working: ir.Model,
    data: DataOptions,
    options: CompressOptions,
    policy: Policy | None,
    parking: memory.Parking | None,
) -> _Job:
    """Targets, calibration data and the session factory."""
    targets = find_targets(working, quantize_attention=options.quantize_attention)
    if not targets.targets:
        reasons = "; ".join(f"{s.name}: {s.reason}" for s in targets.skipped[:3])
        raise OnnxbcError(
            f"{run.name}: nothing to quantize "
            "(no Conv/ConvTranspose/Gemm/MatMul/LSTM/GRU/RNN with a constant weight)"
            + (f": {reasons}" if reasons else "")
        )
    calib = open_data(data, input_specs(working))
    rep = run.report
    rep.data = {
        "source": calib.description,
        "fit_samples": calib.n_fit,
        "holdout_samples": calib.n_holdout,
        "batch_size": calib.batch_size,
        "random": data.random,
        "ignored_arrays": calib.ignored,
        "token_mask": getattr(tokens.mask_input(working.graph), "name", None),
    }
    if data.random:
        rep.warnings.append("calibrated on random data: ranges and compensation may not match real inputs")
    if calib.n_holdout == 0:
        rep.warnings.append("no held-out samples: errors and the compensation decision use the calibration samples")
    overrides, policy_warnings = precision.resolve(options, policy, targets)
    rep.warnings.extend(policy_warnings)
    sessions = SessionFactory(
        options.device,
        segments=options.segments,
        max_memory=options.max_memory,
        ray=options.ray,
        workers=options.workers,
        cache_dir=options.cache_dir,
    )
    # Decided once, here, by the memory resident after loading: every choice that changes the output (measured
    # prices, the close-call re-check) follows it, so the same command gives the same model; asked later, as the
    # process's resident memory moves, the answer flipped between runs of one command.
    return _Job(
        run, working, targets, calib, sessions, options, policy, overrides, parking, fits_whole(working, sessions)
    )


def _first_pass(job: _Job) -> _Statistics:
    """Pass 1: per layer input, a histogram of ``|x|`` and (for weighted layers) its per-channel mean and mean
    square; per-channel histograms too for inputs that may be smoothed; and the precision's probes."""
    options, targets, calib = job.options, job.targets, job.calib
    uses = targets.activation_uses()
    uniform = options.scheme == "uniform" and options.rounding is not Rounding.GPTQ
    quantized = options.activations is not ActivationType.NONE
    smooth_axes = smoothable(targets, uses) if options.smoothing and quantized and uniform else {}
    power, moments = precision.stats_probes(targets, options, job.overrides, job.policy)
    ranges = {}
    for name, readers in uses.items():
        axes = {channel_axis(t) for t, _ in readers if t.weight is not None}
        ranges[name] = RangeProbe(name, axes.pop() if len(axes) == 1 else None, channel_histograms=name in smooth_axes)
    sites = placement.find_sites(targets, uses, options)
    outputs = {
        name: RangeProbe(name) for name in (sites.own_ranges(smooth_axes) if sites else []) if name not in ranges
    }
    if uses:
        # Second moments are also taken on held-out samples (GPTQ is priced there); the rest on fit samples only.
        gptq = any(isinstance(p, MomentsProbe) for p in moments) and calib.n_holdout
        splits = ("fit", "holdout") if gptq else ("fit",)
        total = sum(calib.count_batches(s) for s in splits)
        with job.run.timer("ranges"), job.run.stages.step("Calibrating activation ranges", total) as advance:
            probes = [*ranges.values(), *outputs.values(), *power, *moments]
            collect(job.model, probes, calib, job.sessions, splits=splits, advance=advance)
        job.run.report.passes_over_data += 1
    layout = None
    if sites is not None:
        histograms = {name: (p.hist, p.dtype) for name, p in {**ranges, **outputs}.items()}
        layout = Placement(sites, {t.name: t for t in targets.targets}, histograms, options)
    return _Statistics(uses, smooth_axes, ranges if uses else {}, power, moments, layout)


def _decide(job: _Job, stats: _Statistics) -> _Decided:
    """Each weight's precision (``precision.choose``) and each float layer input's quantizer."""
    options, targets, run = job.options, job.targets, job.run
    quantize_activations = options.activations is not ActivationType.NONE
    with run.timer("quantize_weights"), run.stages.step("Quantizing weights", len(targets.weights)) as advance:
        extra = precision.extra_bytes(targets, list(stats.uses) if quantize_activations else [], stats.smooth_axes)
        size_of = FileSize(job.model, lambda model, plan: candidates.quantize(model, plan)[0])
        choice = precision.choose(
            targets,
            options,
            power_importance(targets, stats.ranges),
            precision.input_stats(targets, stats.ranges, stats.power, stats.moments),
            job.overrides,
            job.policy,
            extra,
            size_of,
            advance,
            _sensitivity(job) if precision.measures_prices(options, job.policy) and _measurable(job) else None,
            job.park,
        )
    plan = QuantPlan(weights=dict(choice.weights))
    notes = {t.name: list(t.notes) for t in targets.targets}
    for group in targets.weights.values():
        granularity = weight_granularity(group, options)[1] if group.name in plan.weights else None
        for t in group.targets:  # a recurrent layer is in two groups (W and R): each note once
            more = choice.notes.get(group.name, []) + ([granularity] if granularity else [])
            if t.name in choice.skipped_layers:
                more.append("left float by the policy (skip = true)")
            notes[t.name].extend(n for n in more if n not in notes[t.name])
    if quantize_activations:
        live = {n: [(t, i) for t, i in u if t.name not in choice.skipped_layers] for n, u in stats.uses.items()}
        _plan_activations(stats.ranges, {n: u for n, u in live.items() if u}, plan, options, notes, run.report)
    else:
        for t in targets.targets:
            if t.weight is None:
                notes[t.name].append("weight-only mode: activation x activation MatMul left float")
    if not plan.weights and not plan.activations:
        reasons = sorted({n for t in targets.targets for n in notes[t.name]})
        raise OnnxbcError(
            f"{run.name}: nothing to quantize with these options" + (f" ({'; '.join(reasons[:2])})" if reasons else "")
        )
    return _Decided(plan, choice, notes)


def _measurable(job: _Job) -> bool:
    """Whether measured prices fit the memory budget: they run the whole float model in one session."""
    if job.whole:
        return True
    job.run.report.warnings.append(
        "prices not measured: measuring them runs the whole model in one ONNX Runtime session, more than "
        "--max-memory leaves; the closed-form prices decide (--segments 1 measures them anyway)"
    )
    return False


def _sensitivity(job: _Job) -> Callable[[dict[str, list[Callable[[], np.ndarray]]]], dict[str, list[float]]]:
    def measure(trials: dict[str, list[Callable[[], np.ndarray]]]) -> dict[str, list[float]]:
        runs = sum(len(t) for t in trials.values())
        with job.run.timer("measure_sensitivity"), job.run.stages.step("Measuring output sensitivity", runs) as step:
            return sensitivity.output_errors(job.model, trials, job.calib, job.sessions, step)

    return measure


def _plan_activations(
    ranges: dict[str, RangeProbe],
    uses: dict[str, list[tuple[Target, int]]],
    plan: QuantPlan,
    options: CompressOptions,
    notes: dict[str, list[str]],
    rep,
) -> None:
    """A per-tensor quantizer for every float layer input, from its pass-1 histogram."""
    for name, probe in ranges.items():
        if name not in uses:
            continue
        if probe.dtype is None or not np.issubdtype(probe.dtype, np.floating):
            for t, _ in uses[name]:
                notes[t.name].append(f"input '{name}' is {probe.dtype}: left unquantized")
            continue
        if probe.hist.nonfinite:
            rep.warnings.append(f"activation '{name}' had {probe.hist.nonfinite} non-finite values during calibration")
        plan.activations[name] = activation_quant(name, probe.hist, probe.dtype, options)
        plan.activation_uses[name] = [(t.name, i) for t, i in uses[name]]


def _second_pass(job: _Job, stats: _Statistics, decided: _Decided) -> _LayerErrors:
    """Pass 2: each quantized layer's output error (its shadow reads the float input), beside every variant's;
    then the per-layer choices among the variants (``variants.choose``), which update the plan."""
    options, targets, plan = job.options, job.targets, decided.plan
    per_position = options.bias_shape is BiasShape.POSITION
    quantized = [t for t in targets.targets if _is_quantized(t, plan)]
    observed = [t for t in quantized if t.observable]
    bias_skips = {t.name: reason for t in quantized if (reason := bias_skip_reason(t))}
    if options.bias_correction is BiasCorrection.NONE:
        bias_skips.update({t.name: "compensation off (--bias-correction none)" for t in observed})
    compensate = {t.name for t in observed} - set(bias_skips)
    by_name = {t.name: t for t in observed}
    layers, run = set(by_name), job.run
    with run.timer("variants"), run.stages.step("Quantizing per-layer alternatives", None):
        variants = weight_range_variants(targets, plan, layers, options, job.park)
        variants += smoothing_variants(targets, plan, layers, stats.ranges, stats.smooth_axes, options, job.park)
        variants += uniform_variants(targets, plan, layers, decided.choice.uniform, options, job.park)
        variants += nearest_variants(targets, plan, layers, decided.choice.nearest)
    shadows = [LayerErrorProbe(t, plan, per_position=per_position) for t in observed]
    trials = trial_probes(variants, by_name, per_position, {p.target.name: p for p in shadows})
    every = list(dict.fromkeys(shadows + [p for trial in trials.values() for p in trial]))  # a shadow once
    outputs = _float_outputs(job)
    extra = [outputs] if outputs else []
    total = sum(job.calib.count_batches(s) for s in ("fit", "holdout"))
    with run.timer("layer_errors"), run.stages.step("Measuring layer errors", total) as advance:
        for probes, splits in _error_passes(every, job.calib.n_holdout > 0):
            collect(job.model, probes + extra, job.calib, job.sessions, splits=splits, advance=advance)
    run.report.passes_over_data += 1
    for probe in every:
        if isinstance(probe, ChannelTrialProbe):
            probe.complete()
    probes: dict[str, ErrorProbe] = {p.target.name: p for p in shadows}
    unchosen, unchosen_probes = QuantPlan(weights=dict(plan.weights)), dict(probes)
    scores = choose_variants(variants, trials, probes, plan, compensate, foldable(job.model, variants))
    # the candidates are built from the other kinds: the smoothing variants' quantized weights go now
    kept = [i for i, v in enumerate(variants) if v.kind is not VariantKind.SMOOTHING]
    measured = Trials([variants[i] for i in kept], {k: trials[i] for k, i in enumerate(kept)})
    return _LayerErrors(observed, compensate, bias_skips, probes, unchosen, unchosen_probes, measured, scores, outputs)


def _error_passes(probes: list[LayerErrorProbe], held_out: bool) -> list[tuple[list[Probe], tuple[str, ...]]]:
    """Pass 2's runs: with held-out samples, those with every probe whole, then the fit samples apart, where a
    linear layer's probe needs only its mean error (``LayerErrorProbe.means``: its input's sums instead of the layer
    again); else one run over both splits."""
    floats: dict = {}  # the float weights' products, made once per layer
    fit = [p.means(floats) or p for p in probes]
    if not held_out or all(a is b for a, b in zip(fit, probes)):
        return [(probes, ("fit", "holdout"))]
    return [(probes, ("holdout",)), (fit, ("fit",))]  # the larger session first: what it leaves is not under it


def _float_outputs(job: _Job) -> FloatOutputs | None:
    """A probe of the model's float outputs for pass 2, where it runs in this process, whole and uncached, and
    every output is a node's of a known type."""
    sessions, outputs = job.sessions, job.model.graph.outputs
    if not job.whole or sessions.ray is not None or sessions.cache_dir is not None:
        return None
    if any(v.producer() is None or v.dtype is None for v in outputs):
        return None
    names = list(dict.fromkeys(v.name for v in outputs if v.dtype in FLOAT_TYPES))
    return FloatOutputs(names, candidates.KEEP_REFERENCE_BYTES) if names else None


def _is_quantized(t: Target, plan: QuantPlan) -> bool:
    return any(s.source.name in plan.weights for s in t.sites) or any(
        t.node.inputs[i].name in plan.activations for i in t.activation_inputs
    )


def _candidates(job: _Job, stats: _Statistics, decided: _Decided, errors: _LayerErrors) -> list[Candidate]:
    """The whole-model candidates, built; with ``--bias-correction sequential`` also the compensation refitted
    wave by wave from the compensated candidate that measures best."""
    options, run = job.options, job.run
    per_position = options.bias_shape is BiasShape.POSITION
    built = candidates.build(
        decided.plan,
        errors.probes,
        errors.unchosen,
        errors.unchosen_probes,
        errors.trials,
        stats.uses,
        errors.compensate,
        per_position,
        decided.choice.uniform_bits,
    )
    with run.timer("rewrite"), run.stages.step("Building candidate models", len(built)) as advance:
        for c in built:
            candidates.realize(c, job.model, options, stats.placement)
            advance()
    compensated = [c for c in built if c.compensated]
    if options.bias_correction is BiasCorrection.SEQUENTIAL and compensated:
        with run.timer("sequential_compensation"):
            if len(compensated) > 1:
                budget = precision.budget_of(options, job.policy)[1]  # as _choose: a stopped one cannot win there
                with contextlib.closing(_reference(job, job.whole, errors.outputs)) as reference:
                    candidates.measure(compensated, reference, job.calib, job.sessions, run.stages, budget)
                start = min((c for c in compensated if c.outputs is not None), key=lambda c: c.error)  # not stopped
            else:
                start = compensated[0]
            refit, passes = candidates.sequential_candidate(
                start,
                job.model,
                errors.observed,
                errors.compensate,
                job.calib,
                job.sessions,
                run.stages,
                per_position,
                options,
                stats.placement,
            )
        built.append(refit)
        run.report.passes_over_data += passes
    return built


def _choose(job: _Job, built: list[Candidate], outputs: FloatOutputs | None) -> Candidate:
    """Measure every candidate against FP32 and keep the best that fits the budget; then say what ONNX
    Runtime's default session (fused integer kernels) makes of it."""
    rep, calib, sessions = job.run.report, job.calib, job.sessions
    split = candidates.evaluated_on(calib)
    whole = job.whole
    if not whole:
        rep.warnings.append(
            "the model does not fit --max-memory in one ONNX Runtime session: the held-out check ran it segment by "
            "segment, and the checks that need a whole session (a close call re-checked on the fit samples, ONNX "
            "Runtime's default session) were left out"
        )
    with job.run.timer("verify"), contextlib.closing(_reference(job, whole, outputs)) as reference:
        budget = precision.budget_of(job.options, job.policy)[1]
        candidates.measure(built, reference, calib, sessions, job.run.stages, budget)
        finalists = candidates.undecided(built, budget, reference, calib) if whole else []
        if finalists:
            candidates.measure_all(finalists, reference, calib, sessions, job.run.stages, outputs)
        winner, warnings = candidates.choose(built, budget, split, finalists)
        rep.warnings.extend(warnings + records.sequential_warning(winner, job.options.bias_correction))
        rep.device = sessions.device_name
        rep.outputs = {"evaluated_on": split}
        if not whole:
            return winner
        try:
            default_session = sessions.create(winner.model, exact=False)
        except OnnxbcError as e:  # its graph optimizers can fail where the graph is valid (seen: uint4 into MaxPool)
            rep.warnings.append(
                f"ONNX Runtime's default session cannot load the output ({e}); it runs with "
                "graph_optimization_level ORT_ENABLE_BASIC or the QDQ optimizers off (session.disable_quant_qdq)"
            )
            return winner
        deployed = reference.compare(default_session)  # the float outputs measure kept
    rep.outputs["onnxruntime_default_session"] = {n: a.as_dict() for n, a in deployed.items()}
    fused = candidates.mean_rel_mse(deployed)
    if fused > 3 * winner.error and fused > 1e-4:
        rep.warnings.append(
            f"ONNX Runtime's default {sessions.device_name} kernels give {fused:.2e} output error where the graph "
            f"gives {winner.error:.2e}; on x86 CPUs without VNNI its u8s8 integer kernels saturate: "
            "if you deploy on such CPUs, compress with --reduce-range (7-bit weights)"
        )
    return winner


def _reference(job: _Job, whole: bool, outputs: FloatOutputs | None) -> Reference:
    """The float model's outputs on the split candidates are measured on, its runs sized like the collector's with
    the outputs counted four times (a candidate's beside the float model's read back, and for padded text both
    again at the real tokens); ``whole``: in one session, else segment by segment (``calibration.segmented``).
    Those pass 2 fetched on the same runs (``outputs``) are taken: the float model does not run again."""
    split = candidates.evaluated_on(job.calib)
    most = samples_per_run(job.model, job.calib, split, job.sessions, outputs_held=CHECK_OUTPUTS_HELD)
    reference = candidates.reference(
        lambda: segmented.session(job.model, job.calib, split, job.sessions, whole), job.calib, most
    )
    if outputs is not None:
        reference.take(outputs, split)
    return reference


def _memory(job: _Job) -> None:
    """The memory budget and the process's peak so far into the report; a warning when a budget the user set
    was passed (it bounds the calibration sessions, runs and boundary tensors, not yet the rest)."""
    rep, budget = job.run.report, job.sessions.max_memory
    peak = memory.peak_resident_bytes()
    rep.memory = {"max_memory_bytes": budget, "given": job.options.max_memory is not None, "peak_rss_bytes": peak}
    if job.options.max_memory is not None and peak is not None and peak > budget:
        rep.warnings.append(
            f"this process peaked at {memory.describe(peak)}, over --max-memory {memory.describe(budget)}: the budget "
            "sizes the sessions (one segment at a time), their runs and the tensors kept between segments; what the "
            "process holds beside them (ONNX Runtime's own buffers, the weight being quantized, a model that fits "
            "whole by the estimate) is not bounded by it yet"
        )


def _audit(job: _Job, winner: Candidate) -> dict[str, dict] | None:
    """--target onnxruntime: which quantized layers ONNX Runtime runs as integer kernels (``onnxbc.fusion``),
    by layer; the summary into the report, and a warning for each layer placed for a kernel that did not fuse."""
    if job.options.target is not Runtime.ONNXRUNTIME:
        return None
    rep = job.run.report
    rep.fusion = {"gelu_form": winner.rewrite.gelus}
    if not job.whole:  # its session folds the weights back to float: about the float model's
        rep.warnings.append(
            "fusion audit skipped: it builds ONNX Runtime's session of the whole model, more than --max-memory "
            "leaves (onnxbc check --target onnxruntime runs it)"
        )
        return None
    with job.run.timer("fusion_audit"):
        try:
            audit = fusion.audit(winner.model, job.sessions.apart_up_to)
        except OnnxbcError as e:
            rep.warnings.append(f"fusion audit skipped: {e}")
            return None
    rep.fusion.update((k, v) for k, v in audit.as_dict().items() if k != "layers")
    missed = [f.name for f in audit.unfused if f.name in winner.rewrite.placed]
    if missed:
        rep.warnings.append(
            f"ONNX Runtime runs {len(missed)} layer(s) placed for its integer kernels as float ops "
            f"({', '.join(missed[:5])}{', ...' if len(missed) > 5 else ''}): onnxbc check --target onnxruntime says why"
        )
    return audit.by_layer()


def _decisions(options: CompressOptions, decided: _Decided, errors: _LayerErrors) -> records.Decisions:
    return records.Decisions(
        decided.notes,
        errors.bias_skips,
        errors.compensate,
        options.bias_shape is BiasShape.POSITION,
        errors.scores,
        decided.choice.report,
        decided.choice.uniform_bits,
    )
