"""One run of ONNX Runtime over the calibration data that feeds every declared statistic.

Each statistic is a *probe*: it adds what it needs to a copy of the model (a graph output, or small
in-graph reductions so that only vectors leave the device) and folds each batch into running sums.
All probes share one session and one pass over the data, and nothing grows with the number of
samples. The augmented model lives in memory (or the system temp folder when it is too large for one
protobuf), never in the working directory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import onnx_ir as ir

from onnxbc.calibration.data import CalibrationData
from onnxbc.calibration.session import SessionFactory
from onnxbc.passes.graph_utils import GraphBuilder


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
    fetch: dict[str, int] = {}
    for values in wanted:
        for v in values:
            if v.name not in fetch:
                fetch[v.name] = len(fetch)
                if not v.is_graph_output():
                    calib.graph.outputs.append(v)
    session = sessions.create(calib)
    names = list(fetch)
    index = [[fetch[v.name] for v in values] for values in wanted]
    for split in splits:
        for feeds in data.batches(split):
            arrays = session.run(names, feeds)
            for probe, idx in zip(probes, index):
                probe.update([arrays[i] for i in idx], split)
            advance()
