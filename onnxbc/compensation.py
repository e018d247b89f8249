"""Bias compensation: which layers get a bias, and how the biases are fitted.

- ``independent`` (the Bias Compensation paper's code): each layer's quantized shadow reads the float
  model's input; one pass gives every layer's mean output error at once (``LayerErrorProbe``).
- ``sequential`` (Gauss-Seidel): the target is still the float output, but the layer reads the input of the
  quantized model in which every layer upstream is already compensated, so error accumulated upstream is
  corrected too. Layers are grouped in topological *waves* (a layer's wave is the largest number of
  compensated layers on any path from the inputs to it): the layers of one wave do not feed each other, so
  one pass over the data fits a whole wave. Updating all layers at once (Jacobi) diverges
  (docs/algorithms: each layer re-corrects error its upstream layers also correct).

Layers that get no bias, with the reason: activation x activation MatMuls (nothing to fold), recurrent layers
(LSTM/GRU/RNN: the closed form is for a layer whose output error is ``dW x`` alone; a recurrent layer's error
goes round through its state), layers inside subgraphs (no statistics), attention key projections (softmax
ignores a per-channel bias on K).
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir

from onnxbc.calibration.collector import collect
from onnxbc.calibration.data import CalibrationData
from onnxbc.calibration.probes import PairedErrorProbe
from onnxbc.calibration.session import SessionFactory
from onnxbc.passes.fold_bias import FoldBiasPass
from onnxbc.passes.graph_utils import pair_models
from onnxbc.plan import BiasFold
from onnxbc.progress import Stages
from onnxbc.solvers.bias import ErrorMoments, solve_bias
from onnxbc.targets import Target

QUANTIZED_PREFIX = "onnxbc_quantized/"


def bias_skip_reason(t: Target) -> str | None:
    """Why layer ``t`` gets no compensation bias (None: it gets one)."""
    if t.weight is None:
        return "activation x activation MatMul: no bias to fold"
    if t.recurrence is not None:
        return (
            "no compensation for recurrent layers: the closed-form bias is for Conv/Gemm/MatMul outputs; "
            f"the {t.op}'s error goes round through its state"
        )
    if t.in_subgraph:
        return "inside a subgraph: no calibration statistics"
    return _attention_key(t)


def fold_for(t: Target, fit: ErrorMoments, per_position: bool) -> BiasFold:
    return BiasFold(t.name, solve_bias(fit), t.output_channel_axis, per_position)


def waves(model: ir.Model, layers: Sequence[Target]) -> list[list[Target]]:
    """Group ``layers`` (of ``model``'s main graph) so that no layer feeds another of its own wave."""
    by_node = {t.name: t for t in layers}
    depth: dict[str, int] = {}  # value name -> compensated layers on the longest path to it
    seen = 0  # for values inside subgraphs: the deepest value so far (conservative)
    result: dict[int, list[Target]] = {}
    for node in model.graph:
        inputs = [depth.get(v.name, 0) for v in node.inputs if v is not None]
        level = max(inputs, default=0)
        if any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values()):
            level = max(level, seen)
        if node.name in by_node:
            result.setdefault(level, []).append(by_node[node.name])
            level += 1
        for out in node.outputs:
            depth[out.name] = level
        seen = max(seen, level)
    return [result[k] for k in sorted(result)]


def sequential(
    float_model: ir.Model,
    quantized: ir.Model,
    layers: Sequence[Target],
    compensate: set[str],
    calib: CalibrationData,
    sessions: SessionFactory,
    stages: Stages,
    *,
    per_position: bool = False,
) -> tuple[ir.Model, dict[str, PairedErrorProbe], dict[str, BiasFold], dict[str, str], int]:
    """Fit biases wave by wave on the quantized model; return the compensated model, the probes (errors
    before/after per layer), the biases, where each was folded, and the number of passes over the data."""
    current = quantized.clone()
    probes: dict[str, PairedErrorProbe] = {}
    folds: dict[str, BiasFold] = {}
    sites: dict[str, str] = {}
    groups = waves(float_model, layers)
    with stages.step(f"Sequential compensation ({len(groups)} waves)", len(groups)) as advance:
        for wave in groups:
            paired = pair_models(float_model, current, QUANTIZED_PREFIX)
            wave_probes = [PairedErrorProbe(t, QUANTIZED_PREFIX, per_position=per_position) for t in wave]
            collect(paired, wave_probes, calib, sessions, splits=("fit", "holdout"))
            wave_folds = {}
            for probe in wave_probes:
                probes[probe.target.name] = probe
                if probe.target.name in compensate and not probe.moments["fit"].empty:
                    wave_folds[probe.target.name] = fold_for(probe.target, probe.moments["fit"], per_position)
            folds.update(wave_folds)
            sites.update(FoldBiasPass(wave_folds)(current).sites)
            advance()
    return current, probes, folds, sites, len(groups)


def _attention_key(t: Target) -> str | None:
    """A reason to skip the layer if it projects attention keys: softmax ignores a per-row constant."""
    value = t.node.outputs[0]
    for _ in range(8):
        uses = value.uses()
        if len(uses) != 1:
            return None
        node, idx = uses[0]
        if node.op_type == "MatMul" and idx == 1 and not node.inputs[0].is_initializer():
            scores = node.outputs[0]
            for _ in range(4):
                consumers = scores.uses()
                if len(consumers) != 1:
                    return None
                nxt = consumers[0].node
                if nxt.op_type == "Softmax":
                    return "attention key projection: softmax ignores a per-channel bias on K (no effect)"
                if nxt.op_type not in ("Mul", "Div", "Add", "Where"):
                    return None
                scores = nxt.outputs[0]
            return None
        if node.op_type not in ("Add", "Reshape", "Transpose", "Mul", "Div", "Cast"):
            return None
        value = node.outputs[0]
    return None
