"""What the report says about a calibrated compress run, derived once from the saved ``Candidate``.

Nothing here decides: each layer record, note and report section is read off the winner (its plan, layer
errors, rewrite sites) and the measurements made on the way, so the report describes the file written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

from onnxbc import precision
from onnxbc.candidates import Candidate, Stopped, Weights, fit_biases, least
from onnxbc.options import BiasCorrection
from onnxbc.plan import WeightQuant
from onnxbc.report import LayerRecord, Report
from onnxbc.targets import Target, Targets


@dataclasses.dataclass(frozen=True)
class Decisions:
    """What was decided before the candidates were built, for the report."""

    notes: dict[str, list[str]]  # layer name -> notes from targets, precision and activation planning
    bias_skips: dict[str, str]  # layer name -> why it gets no compensation bias
    compensate: set[str]
    per_position: bool
    scores: dict[str, dict[str, dict[str, float]]]  # variants.choose: "weight_range"/"smoothing" -> key -> scores
    precision: dict  # precision.choose's report section
    uniform_bits: int | None  # a uniform-bits candidate was measured at these bits


def fill(
    rep: Report,
    targets: Targets,
    decisions: Decisions,
    winner: Candidate,
    candidates: list[Candidate],
    fusion: dict[str, dict] | None = None,
) -> None:
    """The report's layer records and its compensation, outputs, weight range, smoothing and precision sections;
    ``fusion``: the fusion audit of the winner's model by layer (``onnxbc.fusion``), when it ran."""
    rep.layers = layer_records(targets, decisions, winner)
    for rec in rep.layers:
        rec.fusion = (fusion or {}).get(rec.name)
    rep.compensation = compensation(winner, candidates, rep.outputs["evaluated_on"])
    rep.outputs.update(
        {c.name: {n: a.as_dict() for n, a in c.outputs.items()} for c in candidates if c.outputs is not None}
    )
    ranges = decisions.scores.get("weight_range", {})
    rep.weight_ranges = {k: {"chosen": winner.plan.weights[k].method, "rel_mse": s} for k, s in ranges.items()}
    rep.smoothing = {
        key: {
            "chosen": str(winner.plan.smoothing[key].alpha) if key in winner.plan.smoothing else "none",
            "rel_mse": scores,
            "site": winner.rewrite.smoothing.get(key),
        }
        for key, scores in decisions.scores.get("smoothing", {}).items()
    }
    rep.precision = {
        **decisions.precision,
        "layers": {name: precision.layer_entry(wq) for name, wq in winner.plan.weights.items()},
    }
    if decisions.uniform_bits is not None:
        uniform = winner.weights in (Weights.UNIFORM, Weights.UNIFORM_MINMAX)
        rep.precision["saved"] = f"uniform int{decisions.uniform_bits}" if uniform else "mixed"


def compensation(winner: Candidate, candidates: list[Candidate], split: str) -> dict:
    """``applied``, ``mode`` and ``chosen`` (the saved candidate), ``output_rel_mse`` (its error on ``split``);
    when compensation ran, the least error without and with it; every candidate's error, and for those stopped
    once they could not win (``candidates.measure``) their lower bound and where they stopped; ``close_call``:
    when the held-out samples could not tell the best from others, their errors on every sample, which decided
    (``candidates.undecided``), and ``close_call_stopped`` those of them stopped on the fit samples once they could
    not win (``candidates.measure_all``)."""
    section = {
        "applied": winner.compensated,
        "mode": winner.compensation.value,
        "chosen": winner.name,
        "weights": winner.weights.value,
        "description": winner.describe(),
        "output_rel_mse": winner.error,
        "decided_on": split,
        "candidates": {c.name: c.least_error for c in candidates},
        "close_call": {c.name: c.all_error for c in candidates if c.all_outputs is not None} or None,
        "stopped": _stopped({c.name: c.stopped for c in candidates}),
    }
    if any(c.all_stopped for c in candidates):
        section["close_call_stopped"] = _stopped({c.name: c.all_stopped for c in candidates})
    compensated = [c for c in candidates if c.compensated]
    if compensated:
        without = [c for c in candidates if not c.compensated]
        section["output_rel_mse_without"], section["output_rel_mse_without_is_bound"] = least(without)
        section["output_rel_mse_with"], section["output_rel_mse_with_is_bound"] = least(compensated)
    return section


def _stopped(stops: dict[str, Stopped | None]) -> dict[str, dict]:
    return {
        name: {"rel_mse_at_least": s.bound, "batches": s.batches, "of_batches": s.of, "beaten_by": s.by}
        for name, s in stops.items()
        if s is not None
    }


def layer_records(targets: Targets, decisions: Decisions, winner: Candidate) -> list[LayerRecord]:
    plan = winner.plan
    # an uncompensated winner: the biases compensation would have added, reported as not applied
    biases = plan.biases
    if not winner.compensated:
        biases = fit_biases(winner.probes.values(), decisions.compensate, decisions.per_position)
    records = []
    for t in targets.targets:
        weight = t.weight.source.name if t.weight is not None else None
        recurrence = t.recurrence.source.name if t.recurrence is not None else None
        inputs = [t.node.inputs[i].name for i in t.activation_inputs]
        notes = [*decisions.notes[t.name], *_derived_notes(t, weight, inputs, decisions, winner)]
        quantized = weight in plan.weights or recurrence in plan.weights or any(n in plan.activations for n in inputs)
        rec = LayerRecord(t.name, t.op, t.kind, "quantized" if quantized else "skipped", notes=notes)
        if not quantized:
            rec.reason = "; ".join(notes) or "nothing quantized"
        if weight in plan.weights:
            rec.weight = weight_record(plan.weights[weight])
        if recurrence in plan.weights:
            rec.recurrence = weight_record(plan.weights[recurrence])
        rec.activations = [_activation_record(plan.activations[n]) for n in inputs if n in plan.activations]
        fold = biases.get(t.name)
        probe = winner.probes.get(t.name)
        if probe is not None:
            rec.error = {
                split: {"rel_mse_before": m.rel_mse(), "rel_mse_after": m.rel_mse(fold.delta) if fold else None}
                for split, m in probe.moments.items()
                if not m.empty and not m.means_only  # the fit split gave a linear layer's mean error alone
            }
        if fold is not None:
            why = None if winner.compensated else "compensation as a whole did not lower the output error"
            rec.bias = bias_record(fold.delta, winner.compensated, winner.rewrite.biases.get(t.name), reason=why)
        elif t.name in decisions.bias_skips:
            rec.bias = {"applied": False, "reason": decisions.bias_skips[t.name]}
        records.append(rec)
    records.extend(skipped(targets))
    return records


def skipped(targets: Targets) -> Iterable[LayerRecord]:
    """Records of the nodes that were never targets, with the reason."""
    return (LayerRecord(s.name, s.op, "other", "skipped", reason=s.reason) for s in targets.skipped)


def _derived_notes(
    t: Target, weight: str | None, inputs: list[str], decisions: Decisions, winner: Candidate
) -> list[str]:
    """The notes the saved candidate implies for layer ``t``."""
    smoothing = winner.plan.smoothing
    notes = [f"input smoothed per channel (alpha {smoothing[n].alpha})" for n in inputs if n in smoothing]
    wq = winner.plan.weights.get(weight)
    if weight in winner.changed and winner.weight_note():
        notes.append(winner.weight_note())
    elif wq is not None and wq.method == "minmax" and weight in decisions.scores.get("weight_range", {}):
        notes.append("weight scales by min-max (measured better than mse)")
    if t.name in winner.rewrite.placement:
        notes.append(winner.rewrite.placement[t.name])
    if t.name in winner.rewrite.int32_biases:
        notes.append(f"bias stored as int32 codes ({winner.rewrite.int32_biases[t.name]})")
    why = winner.rewrite.float_biases.get(t.name)
    if why is not None and why != "no bias":
        notes.append(f"bias left float: {why}")
    return notes


def weight_record(wq: WeightQuant) -> dict:
    """A layer record's ``weight`` (docs/report-schema.md), from its quantized weight."""
    return {
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
        "params": int((wq.codes if wq.emulated is None else wq.emulated).size),  # not dequantized: a float copy
    }


def bias_record(delta: np.ndarray, applied: bool, site: str | None, **extra: str | None) -> dict:
    """A layer record's ``bias`` for a fitted bias ``delta``: where it went, its size, and ``extra`` (the reason
    it was not applied, or where it came from)."""
    return {
        "applied": applied,
        "site": site,
        "delta_norm": float(np.linalg.norm(delta)),
        "delta_max_abs": float(np.abs(delta).max()),
        **extra,
    }


def _activation_record(aq) -> dict:
    return {"name": aq.value, "dtype": aq.dtype.name, "scale": aq.scale, "amax": aq.amax, "range_method": aq.method}


def sequential_warning(winner: Candidate, mode: BiasCorrection) -> list[str]:
    if mode is BiasCorrection.SEQUENTIAL and winner.compensation is BiasCorrection.INDEPENDENT:
        return [
            "sequential compensation measured worse on held-out samples than independent compensation; "
            f"saved {winner.name.replace('_', ' ')}"
        ]
    return []
