"""Whole-model candidates: the model as the per-layer plan says, and the alternatives measured beside it.

Per-layer errors do not always add up, so ``compress`` builds a few whole models and saves the one with the
least output error on held-out samples (``choose``):

- ``PLAN``: the per-layer choices, without and with compensation.
- ``MINMAX``: min-max scales for every weight the per-layer choice gave mse scales, compensated (measured on
  the bundled CNN at W4A8: each layer's held-out error was lower with mse scales, yet the whole model with
  min-max scales everywhere and compensation had half the output error).
- ``UNIFORM`` (under a size budget): every weight at the most bits that fit the budget uniformly, without and
  with compensation; ``UNIFORM_MINMAX`` the same with min-max scales, compensated (measured on PP-OCR at
  W4A8: the priced mixed bits read 6.5 % of the lines, uniform int4 77.5 %). With ``--weights intN`` and
  weights the plan keeps at 8 bits (``precision.keep_at_8``): strict int-N, the same three ways.
- ``NEAREST`` (``--rounding auto``): every weight GPTQ rounds in the plan rounded to nearest instead,
  compensated (uncompensated when nothing is): GPTQ is chosen per layer on held-out layer errors, and this
  checks it end to end.
- ``--bias-correction sequential``: the biases refitted wave by wave, starting from the compensated candidate
  that measures best (``onnxbc.compensation.sequential``).

``measure`` runs the float model once per batch for all candidates and stops measuring one once it cannot win.

A ``Candidate`` holds its whole plan (weights, activations, smoothing, biases), its layer errors, its model and
where the rewrite passes put things. Everything reported about the saved model derives from the winner.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import enum
import functools
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from onnxbc import model_io
from onnxbc.calibration import memory, segmented
from onnxbc.calibration.data import CalibrationData
from onnxbc.calibration.probes import ErrorProbe, LayerErrorProbe
from onnxbc.calibration.session import SessionFactory
from onnxbc.compare import FloatOutputs, OutputAgreement, Reference, measured
from onnxbc.compensation import fold_for, sequential
from onnxbc.options import BiasCorrection, CompressOptions
from onnxbc.options import Target as Runtime
from onnxbc.passes.bias_int32 import QuantizeBiasPass
from onnxbc.passes.fold_bias import FoldBiasPass
from onnxbc.passes.gelu_form import GeluFormPass
from onnxbc.passes.qdq import InsertQDQPass
from onnxbc.passes.smooth import SmoothPass
from onnxbc.placement import Placement
from onnxbc.plan import BiasFold, QuantPlan, WeightQuant
from onnxbc.progress import Stages
from onnxbc.targets import Target
from onnxbc.variants import Variant, VariantKind


class Weights(str, enum.Enum):
    """Which weights a candidate quantizes with."""

    PLAN = "plan"  # the per-layer choices
    MINMAX = "minmax"  # min-max scales wherever the per-layer choice kept mse scales
    UNIFORM = "uniform"  # under a budget: the most bits that fit uniformly (with --weights intN: N everywhere)
    UNIFORM_MINMAX = "uniform_minmax"  # the same with min-max scales
    NEAREST = "nearest"  # --rounding auto: no GPTQ


@dataclasses.dataclass
class Rewrite:
    """Where the rewrite passes put things in a candidate's model (layer or activation name -> site)."""

    smoothing: dict[str, str] = dataclasses.field(default_factory=dict)
    biases: dict[str, str] = dataclasses.field(default_factory=dict)
    int32_biases: dict[str, str] = dataclasses.field(default_factory=dict)
    float_biases: dict[str, str] = dataclasses.field(default_factory=dict)  # --int32-bias: why left float
    placement: dict[str, str] = dataclasses.field(default_factory=dict)  # ONNX Runtime placement: layer -> note
    gelus: dict[str, str] = dataclasses.field(default_factory=dict)  # ONNX Runtime: GELUs rewritten (Erf name -> how)
    placed: frozenset[str] = frozenset()  # layers whose output it quantized for an integer kernel


@dataclasses.dataclass(frozen=True)
class Stopped:
    """A candidate whose measurement stopped once it could not win: its output error is at least ``bound``."""

    bound: float
    batches: int  # it was measured on this many batches of the split
    of: int  # the split's batches
    by: str  # the candidate whose error it exceeded


@dataclasses.dataclass
class Candidate:
    weights: Weights
    compensation: BiasCorrection
    plan: QuantPlan  # everything the model's rewrite applies, biases included
    probes: dict[str, ErrorProbe]  # each measured layer's error in this candidate
    changed: frozenset[str] = frozenset()  # weights quantized otherwise than the per-layer plan
    uniform_bits: int | None = None
    model: ir.Model | None = None
    rewrite: Rewrite = dataclasses.field(default_factory=Rewrite)
    outputs: dict[str, OutputAgreement] | None = None  # against FP32, once measured to the end
    stopped: Stopped | None = None  # or: measured only until it could not win (``measure``)
    all_outputs: dict[str, OutputAgreement] | None = None  # on every sample, for a close call (``measure_all``)
    all_stopped: Stopped | None = None  # or: measured on the fit samples only until it could not win

    @property
    def compensated(self) -> bool:
        return self.compensation is not BiasCorrection.NONE

    @property
    def name(self) -> str:
        """Its key in the report: ``without_compensation``, ``with_compensation``, ``minmax_with_compensation``,
        ``uniform_int4``, ``uniform_int4_minmax_with_compensation``, ``nearest_with_compensation``,
        ``sequential_with_compensation``, ..."""
        weights = {
            Weights.PLAN: "",
            Weights.MINMAX: "minmax",
            Weights.UNIFORM: f"uniform_int{self.uniform_bits}",
            Weights.UNIFORM_MINMAX: f"uniform_int{self.uniform_bits}_minmax",
            Weights.NEAREST: "nearest",
        }[self.weights]
        if not self.compensated:
            return weights or "without_compensation"
        sequential_ = "sequential" if self.compensation is BiasCorrection.SEQUENTIAL else ""
        return "_".join(part for part in (weights, sequential_, "with_compensation") if part)

    def describe(self) -> str:
        """In words, for the terminal: what is saved."""
        weights = {
            Weights.PLAN: f"the per-layer choices{self._widths()}",
            Weights.MINMAX: f"min-max scales for every weight smoothing and GPTQ left alone{self._widths()}",
            Weights.UNIFORM: f"uniform int{self.uniform_bits} weights",
            Weights.UNIFORM_MINMAX: f"uniform int{self.uniform_bits} weights with min-max scales",
            Weights.NEAREST: f"the per-layer choices rounded to nearest (no GPTQ){self._widths()}",
        }[self.weights]
        how = {
            BiasCorrection.NONE: "no compensation",
            BiasCorrection.INDEPENDENT: "compensation fitted per layer",
            BiasCorrection.SEQUENTIAL: "compensation fitted wave by wave",
        }[self.compensation]
        return f"{weights}, {how}"

    def _widths(self) -> str:
        """`` (int4 weights, 14 at int8)`` when its weights have several bit widths (the first holding the most
        parameters), else nothing."""
        counts = collections.Counter(wq.bits for wq in self.plan.weights.values())
        if len(counts) < 2:
            return ""
        params = collections.Counter()
        for wq in self.plan.weights.values():
            params[wq.bits] += wq.codes.size
        most = params.most_common(1)[0][0]
        rest = ", ".join(f"{n} at int{bits}" for bits, n in sorted(counts.items()) if bits != most)
        return f" (int{most} weights, {rest})"

    def weight_note(self) -> str | None:
        """The note a layer whose weight this candidate changed gets, when it is saved."""
        if self.weights is Weights.MINMAX:
            return "weight scales by min-max (min-max wherever possible measured better end to end)"
        if self.weights in (Weights.UNIFORM, Weights.UNIFORM_MINMAX):
            minmax = " (min-max scales)" if self.weights is Weights.UNIFORM_MINMAX else ""
            return f"uniform int{self.uniform_bits} everywhere measured better end to end than the mixed bits{minmax}"
        if self.weights is Weights.NEAREST:
            return "rounded to nearest: the model with GPTQ's rounding measured worse end to end"
        return None

    @property
    def error(self) -> float:
        """Mean relative MSE of the outputs against FP32 (once measured)."""
        if self.outputs is None:
            raise RuntimeError(f"candidate {self.name} was {'stopped' if self.stopped else 'not measured'}")
        return mean_rel_mse(self.outputs)

    @property
    def all_error(self) -> float:
        """Its error on every sample, fit and held-out (a finalist of a close call)."""
        if self.all_outputs is None:
            raise RuntimeError(f"candidate {self.name} was not measured on every sample")
        return mean_rel_mse(self.all_outputs)

    @functools.cached_property
    def file_bytes(self) -> int:
        """The size of its model's file (serialized once; measure and choose both ask under a size budget)."""
        return model_io.serialized_bytes(self.model)

    def fits(self, max_size: int | None) -> bool:
        return max_size is None or self.file_bytes <= max_size

    @property
    def least_error(self) -> float:
        """Its error, or for a stopped candidate the least its error can be."""
        return self.stopped.bound if self.stopped is not None else self.error


def mean_rel_mse(agreements: dict[str, OutputAgreement]) -> float:
    values = [a.as_dict()["rel_mse"] for a in agreements.values()]
    return float(np.mean(values)) if values else 0.0


def fit_biases(probes: Iterable[ErrorProbe], compensate: set[str], per_position: bool) -> dict[str, BiasFold]:
    """Each compensated layer's bias: its mean output error on the fit samples."""
    return {
        p.target.name: fold_for(p.target, p.moments["fit"], per_position)
        for p in probes
        if p.target.name in compensate and not p.moments["fit"].empty
    }


@dataclasses.dataclass(frozen=True)
class Trials:
    """What pass 2 measured besides the plan's own layers: each variant and its layers' probes."""

    variants: list[Variant]
    probes: dict[int, list[LayerErrorProbe]]  # by the variant's index

    def of(self, *kinds: VariantKind) -> list[tuple[Variant, list[LayerErrorProbe]]]:
        """The variants of ``kinds`` (in that order) with their probes."""
        return [(v, self.probes[i]) for kind in kinds for i, v in enumerate(self.variants) if v.kind is kind]


def build(
    plan: QuantPlan,
    probes: dict[str, ErrorProbe],
    unchosen: QuantPlan,
    unchosen_probes: dict[str, ErrorProbe],
    trials: Trials,
    uses: dict[str, list[tuple[Target, int]]],
    compensate: set[str],
    per_position: bool,
    uniform_bits: int | None,
) -> list[Candidate]:
    """The candidates, in the order that wins ties: the plan without compensation, with it, min-max scales
    compensated, no GPTQ compensated, then uniform bits without and with compensation, and uniform bits with
    min-max scales compensated. ``unchosen``/``unchosen_probes``: the plan's weights and layer errors before the
    per-layer choices changed them (the uniform trials ran beside those)."""

    def compensated(c: Candidate) -> list[Candidate]:
        biases = fit_biases(c.probes.values(), compensate, per_position)
        plan = dataclasses.replace(c.plan, biases=biases)
        return [dataclasses.replace(c, compensation=BiasCorrection.INDEPENDENT, plan=plan)] if biases else []

    base = Candidate(Weights.PLAN, BiasCorrection.NONE, plan, probes)
    result = [base, *compensated(base)]
    minmax = _minmax(plan, probes, trials, compensate)
    if minmax is not None:
        result += compensated(minmax)
    nearest = _nearest(plan, probes, trials)
    if nearest is not None:
        result += compensated(nearest) or [nearest]
    if uniform_bits is None or not trials.of(VariantKind.UNIFORM):
        return result
    uniform = _uniform(plan, unchosen, unchosen_probes, probes, trials.of(VariantKind.UNIFORM), uses, uniform_bits)
    result += [uniform, *compensated(uniform)]
    if trials.of(VariantKind.UNIFORM_MINMAX):
        kinds = trials.of(VariantKind.UNIFORM, VariantKind.UNIFORM_MINMAX)
        both = _uniform(plan, unchosen, unchosen_probes, probes, kinds, uses, uniform_bits)
        result += compensated(dataclasses.replace(both, weights=Weights.UNIFORM_MINMAX))
    return result


def _minmax(plan: QuantPlan, probes: dict[str, ErrorProbe], trials: Trials, compensate: set[str]) -> Candidate | None:
    """Min-max scales for every weight the per-layer choice kept otherwise, uncompensated, from the pass-2
    trials (no extra pass), or None when nothing would change or no changed layer is compensated (it is only
    measured compensated). Weights of smoothed layers keep their scales (smoothing chose among candidates
    with them)."""
    weights: dict[str, WeightQuant] = {}
    own: dict[str, ErrorProbe] = {}
    for v, trial in trials.of(VariantKind.WEIGHT_RANGE):
        smoothed = any(value in plan.smoothing for value in v.plan.activations)
        if plan.weights[v.key].method == v.label or smoothed:
            continue
        weights.update(v.plan.weights)
        own.update({p.target.name: p for p in trial})
    if not weights or not compensate & set(own):
        return None
    minmax = dataclasses.replace(plan, weights={**plan.weights, **weights})
    return Candidate(Weights.MINMAX, BiasCorrection.NONE, minmax, {**probes, **own}, frozenset(weights))


def _nearest(plan: QuantPlan, probes: dict[str, ErrorProbe], trials: Trials) -> Candidate | None:
    """Every weight the plan still rounds by GPTQ (smoothing may have replaced some) rounded to nearest,
    uncompensated, from the pass-2 trials; None when there is none."""
    weights: dict[str, WeightQuant] = {}
    own: dict[str, ErrorProbe] = {}
    for v, trial in trials.of(VariantKind.NEAREST):
        if plan.weights[v.key].rounding == "gptq":
            weights.update(v.plan.weights)
            own.update({p.target.name: p for p in trial})
    if not weights:
        return None
    nearest = dataclasses.replace(plan, weights={**plan.weights, **weights})
    return Candidate(Weights.NEAREST, BiasCorrection.NONE, nearest, {**probes, **own}, frozenset(weights))


def _uniform(
    plan: QuantPlan,
    unchosen: QuantPlan,
    unchosen_probes: dict[str, ErrorProbe],
    probes: dict[str, ErrorProbe],
    trials: list[tuple[Variant, list[LayerErrorProbe]]],
    uses: dict[str, list[tuple[Target, int]]],
    bits: int,
) -> Candidate:
    """Uniform bits, uncompensated, from the pass-2 trials (later ones override earlier ones). The trials ran
    before smoothing was chosen, so the inputs they read unsmoothed are taken back unsmoothed, with every
    weight that reads them as it was before the choice (and its layer error from before)."""
    weights: dict[str, WeightQuant] = {}
    own: dict[str, ErrorProbe] = {}
    activations = {}
    for v, trial in trials:
        weights.update(v.plan.weights)
        own.update({p.target.name: p for p in trial})
        activations.update({k: a for k, a in v.plan.activations.items() if k in plan.smoothing})
    for value in activations:
        for t, _ in uses[value]:
            source = t.weight.source.name if t.weight is not None else None
            if source in unchosen.weights and source not in weights:
                weights[source] = unchosen.weights[source]
            if t.name in unchosen_probes:
                own.setdefault(t.name, unchosen_probes[t.name])
    uniform = dataclasses.replace(
        plan,
        weights={**plan.weights, **weights},
        activations={**plan.activations, **activations},
        smoothing={k: s for k, s in plan.smoothing.items() if k not in activations},
        biases={},
    )
    return Candidate(Weights.UNIFORM, BiasCorrection.NONE, uniform, {**probes, **own}, frozenset(weights), bits)


def realize(candidate: Candidate, float_model: ir.Model, options: CompressOptions, placement: Placement | None) -> None:
    """Build the candidate's model from a copy of ``float_model``: its plan with the target's placement
    (``onnxbc.placement``: output quantizers, smoothing folded into layers), smoothing, Q/DQ, the biases folded
    in, and the target's last rewrites (``finish``), so that the model measured is the one saved. The
    candidate's plan stays as decided (weights, biases and layer errors in the float model's units); only the
    model carries the placement."""
    plan = placement.apply(candidate.plan) if placement is not None else candidate.plan
    model, candidate.rewrite = quantize(float_model.clone(), plan)
    if placement is not None:
        candidate.rewrite.placement, candidate.rewrite.placed = placement.describe(plan)
    if plan.biases:
        folded = FoldBiasPass(plan.biases)(model)
        candidate.rewrite.biases = folded.sites
    finish(candidate, model, options)


def quantize(model: ir.Model, plan: QuantPlan) -> tuple[ir.Model, Rewrite]:
    """Smoothing, then Q/DQ, on ``model`` in place."""
    smoothed = SmoothPass(plan.smoothing, plan.activation_uses)(model)
    return InsertQDQPass(plan)(smoothed.model).model, Rewrite(smoothing=dict(smoothed.sites))


def finish(candidate: Candidate, model: ir.Model, options: CompressOptions) -> None:
    """``--int32-bias``: the biases stored as int32 codes (rounded once); ``--target onnxruntime``: erf GELUs in
    the op order its Gelu fusion matches (``passes.gelu_form``)."""
    if options.int32_bias:
        result = QuantizeBiasPass()(model)
        candidate.rewrite.int32_biases = dict(result.sites)
        candidate.rewrite.float_biases = dict(result.skipped)
    if options.target is Runtime.ONNXRUNTIME:
        candidate.rewrite.gelus = dict(GeluFormPass()(model).sites)
    candidate.model = model


def sequential_candidate(
    start: Candidate,
    float_model: ir.Model,
    layers: list[Target],
    compensate: set[str],
    calib: CalibrationData,
    sessions: SessionFactory,
    stages: Stages,
    per_position: bool,
    options: CompressOptions,
    placement: Placement | None,
) -> tuple[Candidate, int]:
    """Compensation refitted wave by wave on ``start``'s weights; also the passes over the data it took.

    The refit compares each layer's output with the float model's, so it runs on the placement without the
    smoothing folded into layers (which divides their outputs); the candidate is then built with all of it."""
    plan = dataclasses.replace(start.plan, biases={})
    base, _ = quantize(float_model.clone(), placement.apply(plan, fold=False) if placement is not None else plan)
    _, probes, biases, _, passes = sequential(
        float_model, base, layers, compensate, calib, sessions, stages, per_position=per_position
    )
    candidate = dataclasses.replace(
        start,
        compensation=BiasCorrection.SEQUENTIAL,
        plan=dataclasses.replace(start.plan, biases=biases),
        probes={**start.probes, **probes},
        outputs=None,
    )
    realize(candidate, float_model, options, placement)
    return candidate, passes


CLOSE_SE = 2.0  # held-out error differences under this many standard errors are a close call (``undecided``)
CLOSE_MIN = 0.05  # ... unless under this fraction of the best error
KEEP_REFERENCE_BYTES = 256 * 2**20  # the float model's outputs on the split kept in memory (more: in files)
MARGIN = 1e-9  # relative: a re-run reference's sums may differ in the last bits (GPU kernels need not repeat)


def reference(
    session: Callable[[], ort.InferenceSession], calib: CalibrationData, most: int | None = None
) -> Reference:
    """The float model's outputs on the split candidates are measured on (``evaluated_on``), all kept: up to
    ``KEEP_REFERENCE_BYTES`` in memory, the rest in temporary files; ``session`` makes the float model's session
    (again, when it is needed after its outputs are kept). Every session runs ``most`` samples at a time at
    most."""
    split = evaluated_on(calib)
    return Reference(session(), lambda: calib.batches(split), KEEP_REFERENCE_BYTES, most, remake=session)


def measure(
    candidates: list[Candidate],
    reference: Reference,
    calib: CalibrationData,
    sessions: SessionFactory,
    stages: Stages,
    max_size: int | None = None,
) -> None:
    """Each candidate neither measured nor stopped: its outputs against FP32 on the held-out samples (the fit
    samples when none are held out). The float model runs once, alone, first (``Reference.store``: its outputs
    kept, beyond ``KEEP_REFERENCE_BYTES`` in temporary files; not at all when pass 2's outputs were taken,
    ``Reference.take``), then the candidates one session at a time, so
    that no two models' sessions share memory; a model that does not fit the memory budget in one session runs
    segment by segment (``calibration.segmented``).

    A candidate stops as soon as it cannot win. Its error is the mean over outputs of ``err2 / ref2``, where
    ``ref2`` (the float output's sum of squares over the split) is the same for every candidate and ``err2``
    only grows batch by batch; so ``err2`` so far over a measured candidate's ``ref2`` bounds its error from
    below (exactly, also in floating point: sums of non-negative terms, a division and a mean are monotone).
    Once the bound exceeds the least error measured, it is stopped (``Stopped``). Only candidates whose file fits
    ``max_size`` stop others, so the best that fits, and the least error of all, are always measured."""
    todo = [c for c in candidates if c.outputs is None and c.stopped is None]
    total = calib.count_batches(evaluated_on(calib))
    first = total if reference.kept is None else 0
    with stages.step("Checking outputs against FP32", first + total * len(todo)) as advance:
        reference.store(advance)
        for c in todo:
            best = min((c for c in candidates if c.outputs is not None and c.fits(max_size)), key=_error, default=None)
            session = segmented.session(c.model, calib, evaluated_on(calib), sessions)
            _measure(c, best, reference, session, total, advance)
            del session
            memory.release()  # its session


def _measure(
    candidate: Candidate,
    best: Candidate | None,
    reference: Reference,
    session,
    total: int,
    advance: Callable[[], None],
) -> None:
    """``candidate`` (its ``session``) against ``reference`` batch by batch, stopped once it cannot beat ``best``."""

    def beaten(stats: dict[str, OutputAgreement]) -> float | None:
        return None if best is None else _beyond(measured(stats), best.outputs, best.error)

    stats, done, bound = _until_beaten(reference, session, total, advance, beaten)
    if bound is not None:
        candidate.stopped = Stopped(bound, done, total, best.name)
    else:
        candidate.outputs = measured(stats)


def _until_beaten(
    reference: Reference,
    session,
    total: int,
    advance: Callable[[], None],
    beaten: Callable[[dict[str, OutputAgreement]], float | None],
) -> tuple[dict[str, OutputAgreement], int, float | None]:
    """``session`` against ``reference`` batch by batch (``total`` of them); after each but the last, ``beaten`` gives
    the lower bound of its error that shows it cannot win, or None. The agreement so far, the batches measured, and
    the bound it stopped at (None: measured to the end)."""
    stats, done = reference.agreements(), 0
    for ends, feeds, outputs in reference.runs():
        reference.measure(stats, session, feeds, outputs)
        if not ends:
            continue
        done += 1
        advance()
        if done < total and (bound := beaten(stats)) is not None:
            return stats, done, bound
    return stats, done, None


def _beyond(so_far: dict[str, OutputAgreement], whole: dict[str, OutputAgreement], least: float) -> float | None:
    """``_bound`` when it exceeds ``least`` (the best error, up to ``MARGIN``): the candidate cannot win; else None."""
    bound = _bound(so_far, whole)
    return bound if bound > least * (1 + MARGIN) else None


def _bound(so_far: dict[str, OutputAgreement], whole: dict[str, OutputAgreement]) -> float:
    """The least the error of a candidate measured on some batches can be: its error sums ``so_far`` over the
    reference sums of all the samples, which ``whole`` (a candidate measured on all of them) has."""
    return mean_rel_mse({n: dataclasses.replace(a, ref2=whole[n].ref2) for n, a in so_far.items()})


def _error(c: Candidate) -> float:
    return c.error


def evaluated_on(calib: CalibrationData) -> str:
    return "holdout" if calib.n_holdout else "fit"


def undecided(
    candidates: list[Candidate], max_size: int | None, reference: Reference, calib: CalibrationData
) -> list[Candidate]:
    """The best measured candidate whose file fits ``max_size`` and those the held-out samples (``reference``'s)
    cannot tell from it, best first; empty when there are none, when no samples were held out, and when the
    float model's outputs on the fit samples would be too big to keep (``KEEP_REFERENCE_BYTES``: SmolLM2's
    logits on its 13 fit samples are 1.3 GB a model; a run that compared them peaked at 22 GB).

    A candidate is told apart when its error exceeds the best's by ``CLOSE_SE`` standard errors of their paired
    difference (rows: samples, or the real tokens of token outputs) or more, or by at most ``CLOSE_MIN`` of the
    best's error (either will do). Measured on PP-OCR at W4A8 with 13 held-out samples: the best held-out error
    (0.0781) was 1.4 standard errors below the runner-up's (0.0974), which had the lower error on the 51 fit
    samples (0.0717 vs 0.0836), on all 64 and on the 200-line eval split (0.0755 vs 0.0963: 89.5 % of the lines
    read against 76.5 %)."""
    if (
        not calib.n_holdout
        or reference.bytes > KEEP_REFERENCE_BYTES
        or reference.bytes * calib.n_fit > KEEP_REFERENCE_BYTES * calib.n_holdout
    ):
        return []
    ranked = sorted((c for c in candidates if c.outputs is not None and c.fits(max_size)), key=_error)
    close = [c for c in ranked[1:] if _close(ranked[0], c)]
    return [ranked[0], *close] if close else []


def _close(best: Candidate, other: Candidate) -> bool:
    gap = other.error - best.error
    if gap <= CLOSE_MIN * best.error:
        return False
    variance = 0.0
    for name, a in best.outputs.items():
        b = other.outputs[name]
        if a.ref2 <= 0 or len(a.row_err2) < 2 or len(a.row_err2) != len(b.row_err2):
            return False
        d = (np.asarray(b.row_err2) - np.asarray(a.row_err2)) / a.ref2
        variance += len(d) * d.var(ddof=1)  # of the sum of ``d`` over the rows
    return gap < CLOSE_SE * np.sqrt(variance) / len(best.outputs)


def measure_all(
    finalists: list[Candidate],
    reference: Reference,
    calib: CalibrationData,
    sessions: SessionFactory,
    stages: Stages,
    outputs: FloatOutputs | None = None,
) -> None:
    """Each finalist of a close call (``undecided``, best first) against FP32 (``reference``'s session, or the
    float outputs pass 2 fetched: ``outputs``) on the fit samples too, one session at a time: ``all_outputs`` is
    its agreement over every sample. As in ``measure``, a finalist stops once its error on every sample can no
    longer be the least (``all_stopped``): its error so far over the float outputs' sums on every sample (known
    once the first finalist is measured) bounds it from below. At W8A8 the uncompensated finalist stops after 2
    of PP-OCR's 4 fit batches (at least 3.07e-2 against the best's 2.06e-2) and after 6 of MiniLM's 7; the
    saved models are the same."""
    fit = reference.over(lambda: calib.batches("fit"))
    if outputs is not None:
        fit.take(outputs, "fit")  # pass 2 ran the float model on the fit samples too: its session is not made
    batches = calib.count_batches("fit")
    with (
        contextlib.closing(fit),
        stages.step(
            "Held-out samples too few to decide: checking the closest on the fit samples", batches * len(finalists)
        ) as advance,
    ):
        for c in finalists:
            best = min((f for f in finalists if f.all_outputs is not None), key=_all_error, default=None)

            def beaten(stats: dict[str, OutputAgreement], c=c, best=best) -> float | None:
                if best is None or not fit.kept:  # the float outputs' sums on every sample not known yet
                    return None
                return _beyond(_merged(c.outputs, measured(stats)), best.all_outputs, best.all_error)

            session = sessions.create(c.model)
            stats, done, bound = _until_beaten(fit, session, batches, advance, beaten)
            if bound is not None:
                c.all_stopped = Stopped(bound, done, batches, best.name)
            else:
                c.all_outputs = _merged(c.outputs, measured(stats))
            del session
            memory.release()  # its session


def _merged(held: dict[str, OutputAgreement], fit: dict[str, OutputAgreement]) -> dict[str, OutputAgreement]:
    return {n: a.merged(fit[n]) if n in fit else a for n, a in held.items()}


def _all_error(c: Candidate) -> float:
    return c.all_error


def choose(
    candidates: list[Candidate], max_size: int | None, split: str, finalists: Sequence[Candidate] = ()
) -> tuple[Candidate, list[str]]:
    """The measured candidate with the least error (ties keep the earlier) whose file fits ``max_size`` (new
    biases take bytes the allocation did not count), and warnings for the user; with ``finalists`` (a close
    call, measured on every sample: ``measure_all``) the one of them with the least error on every sample.
    Stopped candidates cannot win (``measure``)."""
    ranked = sorted((c for c in candidates if c.outputs is not None), key=_error)  # stable: ties keep the earlier
    fits = (c for c in ranked if c.fits(max_size))
    best = next(fits, ranked[0])  # none fits: the size check of the written file says so
    warnings = []
    if best is not ranked[0]:
        warnings.append(
            f"the model with {ranked[0].describe()} (least error) would pass --max-size {max_size} bytes: "
            f"saved the one with {best.describe()}"
        )
    if finalists:
        measured_ = (c for c in finalists if c.all_outputs is not None)  # a stopped one cannot win
        return min(measured_, key=_all_error), warnings  # the close call says why (report, terminal)
    compensated = [c for c in candidates if c.compensated]
    if compensated and not ranked[0].compensated:
        without = min(c.error for c in ranked if not c.compensated)
        with_, bound = least(compensated)
        warnings.append(
            f"compensation raised the {split} output error ({without:.3e} -> {'at least ' if bound else ''}"
            f"{with_:.3e}); saved without it"
        )
    return best, warnings


def least(candidates: list[Candidate]) -> tuple[float, bool]:
    """The least error among ``candidates``, and whether it is only a lower bound (a stopped candidate's)."""
    lowest = min(candidates, key=lambda c: (c.least_error, c.stopped is not None))
    return lowest.least_error, lowest.stopped is not None
