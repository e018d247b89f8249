"""One run of ONNX Runtime over the calibration data that feeds every declared statistic.

Each statistic is a *probe*: it adds what it needs to a copy of the model (a graph output, or small
in-graph reductions so that only vectors leave the device) and folds each batch into running sums.
All probes share one session and one pass over the data, and nothing grows with the number of
samples. The copy keeps only the nodes the probes read from (ONNX Runtime runs every node of a graph,
whatever is fetched): a sequential-compensation wave runs the model only up to its layers. The copy lives
in memory (or the system temp folder when it is too large for one protobuf), never in the working
directory.

Fetched tensors (whole activations, for histograms) can be large: the collector runs one sample first,
and splits batches so that one run fetches at most ``FETCH_BUDGET_BYTES``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from onnxbc.calibration.data import CalibrationData
from onnxbc.calibration.session import SessionFactory
from onnxbc.passes.graph_utils import GraphBuilder

FETCH_BUDGET_BYTES = 512 * 2**20


class Probe(Protocol):
    def attach(self, builder: GraphBuilder) -> list[ir.Value]:
        """Add nodes to the calibration copy of the model; return the values to fetch."""

    def update(self, arrays: Sequence[np.ndarray], split: str) -> None:
        """Fold one batch of the fetched values (in ``attach`` order) into the statistic."""


def collect(
    model: ir.Model,
    probes: Sequence[Probe],
    data: CalibrationData,
    sessions: SessionFactory,
    *,
    splits: Sequence[str] = ("fit",),
    advance: Callable[[], None] = lambda: None,
) -> None:
    """Run ``model`` with every probe attached over the batches of ``splits``."""
    if not probes:
        return
    calib = model.clone()
    builder = GraphBuilder(calib)
    wanted: list[list[ir.Value]] = [probe.attach(builder) for probe in probes]
    fetch: dict[str, ir.Value] = {}
    for values in wanted:
        fetch.update((v.name, v) for v in values if v.name not in fetch)
    calib.graph.outputs[:] = list(fetch.values())  # ONNX Runtime runs every node of a graph, fetched or not:
    RemoveUnusedNodesPass()(calib)  # so the copy keeps only what the probes read
    session = sessions.create(calib)
    names = list(fetch)
    position = {name: i for i, name in enumerate(names)}
    index = [[position[v.name] for v in values] for values in wanted]
    step = None
    for split in splits:
        for feeds in data.batches(split):
            if step is None:
                step = _samples_per_run(session, names, feeds) if data.batched else 0
            for part in _split(feeds, step):
                arrays = session.run(names, part)
                for probe, idx in zip(probes, index):
                    probe.update([arrays[i] for i in idx], split)
            advance()


def _samples_per_run(session, names: list[str], feeds: dict[str, np.ndarray]) -> int:
    """How many samples one run may take so that the fetched tensors stay within the budget."""
    one = {k: v[:1] for k, v in feeds.items()}
    fetched = sum(a.nbytes for a in session.run(names, one))
    return max(1, FETCH_BUDGET_BYTES // max(fetched, 1))


def _split(feeds: dict[str, np.ndarray], step: int):
    n = len(next(iter(feeds.values()))) if feeds else 0
    if step <= 0 or n <= step:
        yield feeds
        return
    for start in range(0, n, step):
        yield {k: v[start : start + step] for k, v in feeds.items()}
