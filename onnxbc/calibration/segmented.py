"""A whole model's outputs, for a model whose session does not fit the memory budget: ``SegmentedSession``.

The held-out check runs each model on the held-out batches and compares its outputs with the float model's,
batch by batch, in one ONNX Runtime session per model. A model that does not fit the budget in one session (its
weights as ONNX Runtime holds them, ``collector.fits_whole``) is run by the collector instead, segment by
segment over every batch (``calibration.segments``), its outputs kept per run (in memory up to an eighth of the
budget, the rest in temporary files). ``SegmentedSession`` then stands in for the session: ``run`` hands out
those outputs in order, as many rows as the feeds it is given have, so it must be run on the batches of its
split in their order (in parts or whole). The outputs equal a whole session's to float tolerance
(``tests/test_segments.py``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxbc.calibration import collector, memory
from onnxbc.calibration.data import CalibrationData
from onnxbc.calibration.session import SessionFactory
from onnxbc.calibration.stash import Stash
from onnxbc.passes.graph_utils import GraphBuilder

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Arg:
    """A graph input or output as ONNX Runtime's ``NodeArg`` describes it."""

    name: str
    type: str  # "tensor(float)"
    shape: list[int | str | None] | None


def session(model: ir.Model, data: CalibrationData, split: str, sessions: SessionFactory, whole: bool | None = None):
    """An ONNX Runtime session of ``model``, or a ``SegmentedSession`` on ``split`` where one does not fit
    (``whole``: decided already; None: ``collector.fits_whole``)."""
    if whole is None:
        whole = collector.fits_whole(model, sessions)
    return sessions.create(model) if whole else SegmentedSession(model, data, split, sessions)


class SegmentedSession:
    """``model``'s outputs on the batches of ``split``, run segment by segment when made (module docstring)."""

    def __init__(self, model: ir.Model, data: CalibrationData, split: str, sessions: SessionFactory) -> None:
        self._inputs = [_arg(v) for v in model.graph.inputs if not v.is_initializer()]
        self._outputs = [_arg(v) for v in model.graph.outputs]
        self._batched = data.batched
        self._store = Stash(sessions.max_memory // 8, "onnxbc-outputs-")
        probe = _Outputs(self._store)
        logger.info("the model does not fit the memory budget in one session: running it segment by segment")
        try:
            calibration = collector.calibration_graph(model, [probe])
            collector.run(calibration, [probe], data, sessions, (split,), lambda: None, sessions.segments)
        finally:
            memory.release()
        self._runs = probe.runs
        self._next = 0  # the stored run rows are handed out from
        self._offset = 0  # rows of it handed out

    def get_inputs(self) -> list[Arg]:
        return list(self._inputs)

    def get_outputs(self) -> list[Arg]:
        return list(self._outputs)

    def run(self, names: Sequence[str] | None, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs ``names`` (None: all) on the next rows: as many as ``feeds`` has samples."""
        index = {a.name: str(i) for i, a in enumerate(self._outputs)}
        keys = [index[n] for n in names] if names is not None else list(index.values())
        if not self._batched:  # a run is one feed
            return [self._take(None)[k] for k in keys]
        rows = len(next(iter(feeds.values())))
        parts = []
        while rows > 0:
            part = self._take(rows)
            rows -= len(next(iter(part.values())))
            parts.append(part)
        return [np.concatenate([p[k] for p in parts]) if len(parts) > 1 else np.asarray(parts[0][k]) for k in keys]

    def _take(self, rows: int | None) -> dict[str, np.ndarray]:
        """Up to ``rows`` rows of the stored run due (its rest; None: all of it), moving on once it is used up."""
        if self._next >= self._runs:
            raise RuntimeError("SegmentedSession: run on more samples than its split has")
        stored = self._store.get(self._next)
        size = len(next(iter(stored.values()))) if self._batched else None
        end = size if rows is None or size is None else min(size, self._offset + rows)
        part = {k: a[self._offset : end] for k, a in stored.items()} if size is not None else stored
        if size is None or end == size:
            self._store.drop(self._next, list(stored))
            self._next, self._offset = self._next + 1, 0
        else:
            self._offset = end
        return part


class _Outputs:
    """The graph outputs of every run, kept in ``store`` under the run's number."""

    def __init__(self, store: Stash) -> None:
        self.store = store
        self.runs = 0

    def attach(self, builder: GraphBuilder) -> list[ir.Value]:
        return list(builder.graph.outputs)

    def update(self, arrays: Sequence[np.ndarray], split: str) -> None:
        self.store.put(self.runs, {str(i): a for i, a in enumerate(arrays)})
        self.runs += 1


def _arg(value: ir.Value) -> Arg:
    dtype = np.dtype(value.dtype.numpy()).name if value.dtype is not None else "undefined"
    dims = None if value.shape is None else [d if isinstance(d, int) else d.value for d in value.shape.dims]
    return Arg(value.name, f"tensor({_ORT_NAMES.get(dtype, dtype)})", dims)


_ORT_NAMES = {"float32": "float", "float64": "double", "float16": "float16"}
