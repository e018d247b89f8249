"""Measured output sensitivity: the model's output error when one weight alone takes a candidate's values.

The closed-form prices of ``onnxbc.precision`` are relative errors at each layer's own output, and they
add up across layers as if every layer's error reached the model output with the same gain. It does
not: on the real models of the benchmarks a 2-bit MLP weight hurts the output far more than its layer
error says, and an allocation by layer errors sends exactly those large layers to 2 or 3 bits. So under
a budget each weight's candidates are also *run*: one ONNX Runtime session computes the float model
with the measured weights made overridable inputs, and each candidate's dequantized values are fed in
place of the float ones (every other weight float, activations float) on a few held-out samples. The
measured output error (relative MSE, averaged over the float outputs as the final check averages it)
is what that weight costs at the model output; errors of different weights add up there far better
than at their layers.

Only the best closed-form option of each bit width is run; other schemes of that width keep their
closed-form ratio to it (the closed form ranks options within a weight well, ``tests/test_precision.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxbc.calibration.data import CalibrationData
from onnxbc.calibration.session import SessionFactory

SAMPLES = 16  # held-out samples each candidate is run on
REFERENCE_BUDGET_BYTES = 256 * 2**20  # the float outputs kept to compare against (fewer samples when larger)
FEEDABLE = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE)


def measurable(model: ir.Model, name: str) -> bool:
    """An initializer of the main graph that ONNX Runtime can take as a fed input."""
    value = model.graph.initializers.get(name)
    return value is not None and value.dtype in FEEDABLE and not value.is_graph_input()


def output_errors(
    model: ir.Model,
    trials: Mapping[str, Sequence[Callable[[], np.ndarray]]],
    calib: CalibrationData,
    sessions: SessionFactory,
    advance: Callable[[], None] = lambda: None,
) -> dict[str, list[float]]:
    """For each weight name, the model's output rel. MSE with each trial's values in its place (the
    callables give the values, built one at a time). Weights that are not ``measurable`` are left out."""
    names = [n for n in trials if measurable(model, n)]
    if not names:
        return {}
    feedable = model.clone()
    for name in names:
        feedable.graph.inputs.append(feedable.graph.initializers[name])
    dtypes = {n: feedable.graph.initializers[n].dtype.numpy() for n in names}
    session = sessions.create(feedable)
    outputs = [o.name for o in session.get_outputs()]
    batches = list(_reference(session, outputs, calib))
    errors: dict[str, list[float]] = {}
    for name in names:
        errors[name] = []
        for values in trials[name]:
            override = {name: np.asarray(values(), dtype=dtypes[name])}
            err2 = np.zeros(len(outputs))
            ref2 = np.zeros(len(outputs))
            for feeds, reference in batches:
                for i, (ref, out) in enumerate(zip(reference, session.run(outputs, {**feeds, **override}))):
                    if ref is not None:
                        err2[i] += float(np.square(out.astype(np.float64) - ref).sum())
                        ref2[i] += float(np.square(ref.astype(np.float64)).sum())
            kept = ref2 > 0
            errors[name].append(float(np.mean(err2[kept] / ref2[kept])) if kept.any() else 0.0)
            advance()
    return errors


def _reference(
    session, outputs: list[str], calib: CalibrationData
) -> Iterator[tuple[dict[str, np.ndarray], list[np.ndarray | None]]]:
    """Held-out feeds (fit feeds without held-out samples) and the float model's float outputs on them:
    up to ``SAMPLES`` samples, fewer when the outputs would pass ``REFERENCE_BUDGET_BYTES``."""
    split = "holdout" if calib.n_holdout else "fit"
    samples = kept = 0
    for feeds in calib.batches(split):
        reference = [
            a if np.issubdtype(a.dtype, np.floating) else None for a in map(np.asarray, session.run(outputs, feeds))
        ]
        yield feeds, reference
        samples += len(next(iter(feeds.values()))) if calib.batched and feeds else 1
        kept += sum(a.nbytes for a in reference if a is not None)
        if samples >= SAMPLES or kept >= REFERENCE_BUDGET_BYTES:
            return
