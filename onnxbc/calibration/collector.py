"""One run of ONNX Runtime over the calibration data that feeds every declared statistic.

Each statistic is a *probe*: it adds what it needs to a copy of the model (a graph output, or small
in-graph reductions so that only vectors leave the device) and folds each batch into running sums.
All probes share one session and one pass over the data, and nothing grows with the number of
samples. The copy keeps only the nodes the probes read from (ONNX Runtime runs every node of a graph,
whatever is fetched): a sequential-compensation wave runs the model only up to its layers. The copy lives
in memory (or the system temp folder when it is too large for one protobuf), never in the working
directory.

Fetched tensors (whole activations, for histograms) can be large, and so can the intermediate tensors of a
graph that computes every layer's shadow beside the model: the collector splits batches so that one run
fetches at most ``FETCH_BUDGET_BYTES`` and its intermediate tensors take at most an eighth of the memory budget
(``--max-memory``, up to ``RUN_BUDGET_BYTES``), both sized for one sample by shape inference
(``calibration.footprint``); where that cannot size the fetched tensors, one sample is run first.

With ``segments=N`` the copy is cut into up to N consecutive segments (``calibration.segments``) that run one
after another over all batches, each in its own session, so that only one segment's weights are loaded at a
time; ``segments=0`` takes as many as the memory budget asks for (``calibration.memory``). The tensors a
segment passes to later ones are kept per run, in memory up to an eighth of the budget (up to
``BOUNDARY_MEMORY_BYTES``) and in ``.npy`` files in a private temporary folder beyond that, each dropped
after the last segment that reads it. A probe is updated when the last segment producing one of its values
runs; its values from earlier segments wait with the boundary tensors (they are in-graph reductions, small,
except for a histogram's whole activation, which the cut finder keeps from splitting by counting it as
crossing). Batches are split into the same runs as the whole graph's (every fetched value counts against the
budget, whichever segment makes it; the boundary tensors do not), where shape inference cannot size them
measured with one sample through every segment before the first batch.

With ``SessionFactory.ray`` the batches are sharded across Ray workers, each running this collector over its own
(``calibration.shards``); with ``SessionFactory.cache_dir`` each call's statistics are kept for a later run
(``calibration.cache``). Both rest on the probes' ``blank()``/``merge()`` (``calibration.probes``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from onnxbc.calibration import cache, footprint, memory
from onnxbc.calibration import segments as cutting
from onnxbc.calibration.data import CalibrationData
from onnxbc.calibration.session import SessionFactory
from onnxbc.calibration.stash import Stash
from onnxbc.errors import OnnxbcError, one_line
from onnxbc.passes.graph_utils import GraphBuilder

logger = logging.getLogger(__name__)

FETCH_BUDGET_BYTES = 512 * 2**20
RUN_BUDGET_BYTES = 1 * 2**30  # one run's intermediate tensors at once (estimated: calibration.footprint)
BOUNDARY_MEMORY_BYTES = 1 * 2**30  # boundary tensors held in memory, in all; more go to temporary files


class Probe(Protocol):
    """What the collector needs of a statistic. Probes that also have ``blank()`` and ``merge(other)`` (every probe
    of ``calibration.probes``) can be sharded across Ray workers and kept in ``--cache-dir``; the others are
    collected in one process, uncached."""

    def attach(self, builder: GraphBuilder) -> list[ir.Value]:
        """Add nodes to the calibration copy of the model; return the values to fetch."""

    def update(self, arrays: Sequence[np.ndarray], split: str) -> None:
        """Fold one batch of the fetched values (in ``attach`` order) into the statistic."""

    # Optional: ``finished()``, called once no more batches will come (a probe may then move its statistic out of
    # memory: ``MomentsProbe``); in segments, as soon as the probe's segment has run.


def collect(
    model: ir.Model,
    probes: Sequence[Probe],
    data: CalibrationData,
    sessions: SessionFactory,
    *,
    splits: Sequence[str] = ("fit",),
    advance: Callable[[], None] = lambda: None,
    segments: int | None = None,
) -> None:
    """Run ``model`` with every probe attached over the batches of ``splits``, calling ``advance`` once per
    batch; with ``segments`` (default: ``sessions.segments``) at least 2, segment by segment (0: as many as
    ``sessions.max_memory`` asks for); with ``sessions.ray``, sharded across Ray workers (``calibration.shards``);
    with ``sessions.cache_dir``, statistics collected before with the same graph, data and runs are taken from
    there (``calibration.cache``). Its sessions' memory goes back to the system at the end."""
    if not probes:
        return
    segments = sessions.segments if segments is None else segments
    folder = sessions.cache_dir
    if folder is not None and not mergeable(probes):
        logger.warning("a probe cannot be merged: collecting without the cache")
        folder = None
    try:
        calibration = calibration_graph(model, probes)
        if folder is None:
            _dispatch(calibration, probes, data, sessions, splits, advance, segments, finish=True)
        else:
            _cached(folder, calibration, probes, data, sessions, splits, advance, segments)
    finally:
        memory.release()


def mergeable(probes: Sequence[Probe]) -> bool:
    """Every probe has ``blank()`` and ``merge()``: it can be sharded (``calibration.shards``) and cached."""
    return all(hasattr(p, "blank") and hasattr(p, "merge") for p in probes)


def _dispatch(
    calibration: Calibration, probes: Sequence[Probe], data, sessions, splits, advance, segments, *, finish: bool
) -> None:
    """``run`` in this process, or sharded across Ray workers; ``finish``: the probes are ``finished`` after."""
    if sessions.ray is None:
        run(calibration, probes, data, sessions, splits, advance, segments, finish=finish)
    else:
        from onnxbc.calibration import shards  # imports ray: only when asked for

        shards.run(calibration, probes, data, sessions, splits, advance, segments)
        if finish:
            _finished(probes)


def _cached(folder: Path, calibration: Calibration, probes: Sequence[Probe], data, sessions, splits, advance, segments):
    """``_dispatch`` into ``blank()`` copies of the probes, kept in ``folder``, unless they are there already; then
    merged into the probes (into fresh probes: exact, as folding the batches into them)."""
    blanks = [p.blank() for p in probes]
    entry = cache.key(calibration.model, data, splits, (segments, sessions.max_memory), blanks)
    states = cache.load(folder, entry, probes)
    if states is None:
        states = blanks
        _dispatch(calibration, states, data, sessions, splits, advance, segments, finish=False)
        cache.save(folder, entry, states)
    else:
        for _ in range(sum(data.count_batches(split) for split in splits)):
            advance()
    for probe, state in zip(probes, states):
        probe.merge(state)
    _finished(probes)


@dataclasses.dataclass
class Calibration:
    """A copy of the model with the probes attached, keeping only what they read. ``wanted``: per probe, the
    names of the values it reads (its ``attach`` order), all of them graph outputs; ``added``: the positions of
    the nodes the probes added (the cut finder places them after what they read). Names and positions, not
    objects, so that a worker can load it from bytes (``calibration.shards``)."""

    model: ir.Model
    wanted: list[list[str]]
    added: list[int]


def calibration_graph(model: ir.Model, probes: Sequence[Probe]) -> Calibration:
    """``model`` with every probe attached, its outputs the values they read, pruned to what they read."""
    calib = model.clone()
    original = list(calib.graph)
    builder = GraphBuilder(calib)
    wanted: list[list[ir.Value]] = [probe.attach(builder) for probe in probes]
    fetch: dict[str, ir.Value] = {}
    for values in wanted:
        fetch.update((v.name, v) for v in values if v.name not in fetch)
    calib.graph.outputs[:] = list(fetch.values())  # ONNX Runtime runs every node of a graph, fetched or not:
    RemoveUnusedNodesPass()(calib)  # so the copy keeps only what the probes read
    kept = set(original)
    added = [i for i, node in enumerate(calib.graph) if node not in kept]
    return Calibration(calib, [[v.name for v in values] for values in wanted], added)


def run(
    calibration: Calibration,
    probes: Sequence[Probe],
    data: CalibrationData,
    sessions: SessionFactory,
    splits: Sequence[str],
    advance: Callable[[], None],
    segments: int,
    *,
    finish: bool = False,
) -> None:
    """``collect`` in this process, the probes attached (``calibration_graph``); a segmented run takes
    ``calibration.model`` apart. With ``finish``, each probe is ``finished`` once its statistic is complete (in
    segments, when its segment has run); not in a Ray worker or for the cache, whose probes are merged after."""
    calib = calibration.model
    fetch = {v.name: v for v in calib.graph.outputs}
    wanted = [[fetch[name] for name in names] for names in calibration.wanted]
    run_limit, boundary_limit = _limits(sessions)
    first = _first_batch(data, splits)
    most, fetched = _run_sizes(calib, first, run_limit)
    step = None if fetched is None else _within_budget(fetched, most)  # None: measured by running one sample
    extra = _statistic_bytes(probes, wanted)
    if segments == 0:  # auto: segments that each fit what the memory budget leaves
        held = cutting.held_bytes(list(calib.graph), extra)
        room = _room(sessions)
        logger.debug("the session holds %.0f MB of weights and statistics, %.0f MB fit", sum(held) / 1e6, room / 1e6)
        cut = sum(held) > room
    else:
        room, cut = None, segments > 1
    if cut and len(calib.graph) > 1:  # one node: nothing to cut
        every = list(calib.graph)
        nodes = cutting.order(every, [every[i] for i in calibration.added])
        cuts = cutting.find_cuts(nodes, segments, wanted, extra, room=room)
        logger.debug("%d segments", len(cuts) + 1)
        parts = cutting.split(calib, nodes, cuts, list(fetch.values()))
        _run_segments(
            parts,
            probes,
            calibration.wanted,
            fetch,
            data,
            sessions,
            splits,
            advance,
            first,
            most,
            step,
            boundary_limit,
            room,
            finish,
        )
        return
    session = sessions.create(calib)
    names = list(fetch)
    position = {name: i for i, name in enumerate(names)}
    index = [[position[name] for name in names_of] for names_of in calibration.wanted]
    for split in splits:
        for feeds in data.batches(split):
            if step is None:
                step = _samples_per_run(session, names, feeds, most) if data.batched else 0
            for part in _split(feeds, step):
                arrays = session.run(names, part)
                for probe, idx in zip(probes, index):
                    probe.update([arrays[i] for i in idx], split)
            advance()
    if finish:
        _finished(probes)


def _run_segments(
    parts: list[cutting.Segment],
    probes: Sequence[Probe],
    names: list[list[str]],
    fetch: dict[str, ir.Value],
    data: CalibrationData,
    sessions: SessionFactory,
    splits: Sequence[str],
    advance: Callable[[], None],
    first: dict[str, np.ndarray] | None,
    most: int | None,
    step: int | None,
    boundary_limit: int,
    room: int | None,
    finish: bool,
) -> None:
    """Each segment over every run of ``splits``, in turn; its boundary tensors kept for the later ones; with
    ``finish``, its probes ``finished`` after it. ``step``: samples a run, None to measure it on ``first``. A
    segment whose weights, folded, hold more than ``room`` (one node heavier than the room the budget leaves: a
    tied LM head's transposed table) computes them from the stored constants on every run instead
    (``SessionFactory.create_from``'s ``fold``)."""
    made = {name: k for k, part in enumerate(parts) for name in part.outputs}
    home = [max((made.get(n, 0) for n in probe_names), default=0) for probe_names in names]
    last: dict[str, int] = {}  # what a segment passes on -> the last segment that needs it
    for k, part in enumerate(parts):
        for name in part.inputs:
            if name in made:
                last[name] = k
    for probe_names, k in zip(names, home):
        for name in probe_names:
            if made.get(name, k) < k:
                last[name] = max(last.get(name, 0), k)
    constants = {v.name: v.const_value.numpy() for v in fetch.values() if v.is_initializer()}
    where = [
        f"calibration segment {k + 1} of {len(parts)} (nodes '{p.first}' to '{p.last}')" for k, p in enumerate(parts)
    ]
    folds = [room is None or sum(cutting.held_bytes(list(part.model.graph))) <= room for part in parts]
    for k in (k for k, fold in enumerate(folds) if not fold):
        logger.info("%s: its weights, folded, hold more than the budget leaves: computed on every run", where[k])
    if step is None:
        step = (
            _samples_per_segment_run(parts, first, sessions, constants, list(fetch), where, most, folds) if first else 0
        )
    boundaries = Stash(boundary_limit, "onnxbc-segments-")
    tick = _spread(advance, sum(data.count_batches(split) for split in splits), len(parts))
    try:
        for k, part in enumerate(parts):
            logger.info("%s: running over every batch", where[k])  # progress by segment (--verbose)
            session = _session(part, sessions, boundaries.dtypes, where[k], folds[k])
            keep = [n for n in part.outputs if n in last]
            done = [n for n, end in last.items() if end == k]
            mine = [(probe, probe_names) for probe, probe_names, h in zip(probes, names, home) if h == k]
            for split in splits:
                for b, feeds in enumerate(data.batches(split)):
                    for j, run in enumerate(_split(feeds, step)):
                        key = (split, b, j)
                        known = {**constants, **run, **boundaries.get(key)}
                        known.update(zip(part.outputs, _run(session, part, known, where[k])))
                        boundaries.put(key, {n: known[n] for n in keep})
                        for probe, probe_names in mine:
                            probe.update([known[n] for n in probe_names], split)
                        boundaries.drop(key, done)
                        del known  # ONNX Runtime's outputs keep their session's memory arena alive
                    tick()
            if finish:
                _finished([probe for probe, _ in mine])
            del session  # before the next segment's session is made
            memory.release()
    finally:
        boundaries.close()


def _statistic_bytes(probes: Sequence[Probe], wanted: Sequence[Sequence[ir.Value]]) -> dict[ir.Node, int]:
    """The bytes each probe's statistic holds while it is gathered (``held_bytes()``, where a probe has it), at the
    node that makes the last value it fetches: held with that node's segment, until the probe is ``finished``."""
    extra: dict[ir.Node, int] = {}
    for probe, values in zip(probes, wanted):
        producers = [v.producer() for v in values if v.producer() is not None]
        if hasattr(probe, "held_bytes") and producers:
            node = producers[-1]
            extra[node] = extra.get(node, 0) + probe.held_bytes()
    return extra


def _finished(probes: Sequence[Probe]) -> None:
    for probe in probes:
        if hasattr(probe, "finished"):
            probe.finished()


def _spread(advance: Callable[[], None], calls: int, per_call: int) -> Callable[[], None]:
    """A step that calls ``advance`` once every ``per_call`` steps (rounded), ``calls`` times over ``calls *
    per_call`` steps: the progress of each batch through all segments counts as one batch."""
    steps = done = 0

    def tick() -> None:
        nonlocal steps, done
        steps += 1
        while done < calls and done < steps // per_call:
            advance()
            done += 1

    return tick


def _samples_per_segment_run(
    parts: list[cutting.Segment],
    feeds: dict[str, np.ndarray],
    sessions: SessionFactory,
    known: dict[str, np.ndarray],
    fetched: list[str],
    where: list[str],
    most: int | None,
    folds: list[bool],
) -> int:
    """``_samples_per_run`` of the whole graph, so that segments make the same runs (histogram bins follow the
    runs), where shape inference does not size the fetched tensors: one sample of the first batch (``feeds``)
    through every segment first, one session at a time (so each session is made twice). ``known``: the fetched
    constants."""
    known = {**known, **{k: v[:1] for k, v in feeds.items()}}
    for part, at, fold in zip(parts, where, folds):
        session = _session(part, sessions, {n: a.dtype for n, a in known.items()}, at, fold)
        # copies: ONNX Runtime's outputs keep their session's memory arena alive
        known.update((n, np.array(a)) for n, a in zip(part.outputs, _run(session, part, known, at)))
        del session  # before the next segment's session is made
        memory.release()
    return _within_budget(sum(known[n].nbytes for n in fetched), most)


def _session(part: cutting.Segment, sessions: SessionFactory, dtypes: dict[str, np.dtype], where: str, fold: bool):
    """The segment's session, its weights not repacked (segments are cut to fit the weights once), and with
    ``fold=False`` not folded; boundary inputs whose type the model does not declare take the arrays' dtypes."""
    for v in part.model.graph.inputs:
        if v.type is None and v.name in dtypes:
            v.type = ir.TensorType(ir.DataType.from_numpy(dtypes[v.name]))
    try:
        return sessions.create(part.model, prepack=False, fold=fold)
    except Exception as e:
        raise OnnxbcError(f"{where} cannot be made: {one_line(e)}") from e


def _run(session, part: cutting.Segment, known: dict[str, np.ndarray], where: str) -> list[np.ndarray]:
    try:
        return session.run(part.outputs, {n: known[n] for n in part.inputs})
    except Exception as e:  # onnxruntime raises its own exception types
        raise OnnxbcError(f"{where} failed to run: {one_line(e)}") from e


def fits_whole(model: ir.Model, sessions: SessionFactory) -> bool:
    """Whether one session of all of ``model`` fits the memory budget beside this process (as ``collect``'s
    segments are decided; a single node always does); always with ``--segments 1`` (whole graphs asked for)."""
    held = cutting.held_bytes(list(model.graph))
    return sessions.segments == 1 or sum(held) <= max(_room(sessions), *held, 0)


def _room(sessions: SessionFactory) -> int:
    """``memory.room`` for one segment's weights, beside one run's tensors and the boundary tensors kept in memory
    (``_limits``)."""
    return memory.room(sessions.max_memory, sum(_limits(sessions)))


def samples_per_run(
    model: ir.Model, data: CalibrationData, split: str, sessions: SessionFactory, outputs_held: int = 1
) -> int | None:
    """The most samples of ``split`` a run of ``model`` may take for its intermediate tensors (its outputs counted
    ``outputs_held`` times) to stay within an eighth of the memory budget (as ``collect``'s runs); None when that
    is not known."""
    return _run_sizes(model, _first_batch(data, (split,)), _limits(sessions)[0], outputs_held)[0]


def _limits(sessions: SessionFactory) -> tuple[int, int]:
    """The bytes one run's intermediate tensors, and the boundary tensors held in memory, may take: an eighth of
    the memory budget each, up to ``RUN_BUDGET_BYTES`` and ``BOUNDARY_MEMORY_BYTES``."""
    share = sessions.max_memory // 8
    return min(RUN_BUDGET_BYTES, share), min(BOUNDARY_MEMORY_BYTES, share)


def _first_batch(data: CalibrationData, splits: Sequence[str]) -> dict[str, np.ndarray] | None:
    """The first batch of ``splits`` (None when there is none, or the data is not batched)."""
    return next((feeds for split in splits for feeds in data.batches(split)), None) if data.batched else None


def _run_sizes(
    calib: ir.Model, first: dict[str, np.ndarray] | None, limit: int, outputs_held: int = 1
) -> tuple[int | None, int | None]:
    """The most samples a run may take so that its intermediate tensors stay within ``limit`` bytes, and the
    bytes one sample fetches (``footprint``: estimated on one sample of ``first``, the first batch); each None
    when unknown or not batched."""
    sizes = None
    if first:
        sizes = footprint.peak_and_output_bytes(calib, {k: v[:1] for k, v in first.items()}, outputs_held)
    per_sample, fetched = sizes or (None, None)
    if not per_sample:
        return None, fetched
    logger.debug("intermediate tensors: %.1f MB a sample, runs of %d at most", per_sample / 1e6, limit // per_sample)
    return max(1, limit // per_sample), fetched


def _samples_per_run(session, names: list[str], feeds: dict[str, np.ndarray], most: int | None) -> int:
    """How many samples one run may take: the fetched tensors within the budget, and at most ``most``."""
    one = {k: v[:1] for k, v in feeds.items()}
    return _within_budget(sum(a.nbytes for a in session.run(names, one)), most)


def _within_budget(sample_bytes: int, most: int | None) -> int:
    """How many samples one run may take when one sample fetches ``sample_bytes``, and at most ``most``."""
    step = max(1, FETCH_BUDGET_BYTES // max(sample_bytes, 1))
    return step if most is None else min(step, most)


def _split(feeds: dict[str, np.ndarray], step: int):
    n = len(next(iter(feeds.values()))) if feeds else 0
    if step <= 0 or n <= step:
        yield feeds
        return
    for start in range(0, n, step):
        yield {k: v[start : start + step] for k, v in feeds.items()}
