"""Calibration sharded across Ray workers: what ``collect`` does when ``SessionFactory.ray`` is set.

Plain Ray actors, one per worker, rather than Ray Data's ``map_batches``: a worker keeps one calibration graph
and its ONNX Runtime sessions for all its batches and folds them into its own probe copies, and the collector
sizes its runs itself (fetch and memory budgets, segments); Ray Data would re-batch the rows its own way and
bring a heavy dependency for nothing used here.

1. The driver attaches the probes (``collector.calibration_graph``) and puts the graph's bytes in the object
   store once, and every batch (the splits in order, each batch in order; Ray spills them to disk beyond the
   store's memory), which the workers fetch as they read them.
2. The first batch runs alone, on worker 0, into ``blank()`` copies of the probes: it sets each histogram's
   grid, as it does in one process. The other batches are sharded deterministically, batch ``b`` of them to
   shard ``b % workers``, each shard folded by one worker (``collector.run``, segments included: each worker runs
   the segments over its own batches) into ``blank()`` copies of the first batch's probes, so that its
   histograms grow from the same start.
3. The driver merges the first batch's probes and then each shard's, in order, into the probes. Statistics
   equal the single-process run's: counts, extremes and histogram grids exactly, sums to float rounding
   (``solvers.ranges``, ``calibration.probes``).

A worker takes one CPU and runs ONNX Runtime on one thread (``SessionFactory.threads`` when set); the memory
budget (``--max-memory``) is each worker's own. Progress: each worker counts its batches; the driver polls them
and calls ``advance`` once per batch.

A worker that dies (its process or its node) takes its shard's partial sums with it, so Ray's own actor restart
would go on with wrong statistics: the driver starts a new worker and reruns the whole shard, up to ``RETRIES``
times, then stops with one line (OnnxbcError); so does a shard whose worker loses a batch it reads (a Ray error).
An error the collector raises inside a worker is raised as it is. Probes without ``blank``/``merge``, a graph
whose weights are over protobuf's limit (workers load it from bytes, external data read in), and histograms whose
grids cannot merge exactly (a first batch without a nonzero value of an activation, so that each shard starts its
own grid) are collected in one process instead, with a logged note: never an approximate result.
"""

from __future__ import annotations

import copy
import itertools
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any

from onnxbc import model_io
from onnxbc.calibration import collector, session
from onnxbc.calibration.data import CalibrationData
from onnxbc.calibration.session import SessionFactory
from onnxbc.errors import OnnxbcError, UsageError, one_line
from onnxbc.options import RAY_MISSING

logger = logging.getLogger(__name__)

RETRIES = 2  # new workers a shard may get after the first dies
POLL_S = 0.2  # how often the driver asks the workers how many batches they have done
CONNECT_S = 5.0  # how long a cluster's address may take to answer


def run(
    calibration: collector.Calibration,
    probes: Sequence[collector.Probe],
    data: CalibrationData,
    sessions: SessionFactory,
    splits: Sequence[str],
    advance: Callable[[], None],
    segments: int,
) -> None:
    """``collector.run`` sharded across Ray workers (module docstring)."""

    def alone(why: str, tick: Callable[[], None] = advance) -> None:
        logger.warning("Ray: %s; collecting in one process", why)
        collector.run(calibration, probes, data, sessions, splits, tick, segments)

    if not collector.mergeable(probes):
        return alone("a probe cannot be merged")
    if model_io.initializer_bytes(calibration.model) > model_io.PROTO_LIMIT_BYTES:
        return alone("the calibration graph's weights are over protobuf's limit, and workers load it from bytes")
    ray = connect(sessions.ray, sessions.workers)
    pool = _Pool(
        ray, model_io.to_bytes(calibration.model), calibration, sessions, (data.batched, tuple(splits), segments)
    )
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    workers = min(sessions.workers or cpus, cpus)  # a worker holds its CPU until the end: more would wait forever
    if sessions.workers and workers < sessions.workers:
        logger.warning("Ray: the cluster has %d CPUs: %d workers, not %d", cpus, workers, sessions.workers)
    batches = [(split, ray.put(feeds)) for split in splits for feeds in data.batches(split)]
    if not batches:  # (no worker started yet)
        return None
    try:
        first = pool.fold([_Shard(0, batches[:1], [p.blank() for p in probes])], advance)[0]
        rest = [_Shard(k, batches[1 + k :: workers], [p.blank() for p in first]) for k in range(workers)]
        parts = pool.fold([shard for shard in rest if shard.batches], advance)
    finally:
        pool.close()
    sessions.ran(pool.provider)
    try:
        for part in parts:
            for mine, theirs in zip(first, part):
                mine.merge(theirs)
    except ValueError as e:
        return alone(one_line(e), lambda: None)  # every batch has been counted already
    for probe, merged in zip(probes, first):
        probe.merge(merged)
    return None


def connect(address: str, workers: int | None):
    """The ``ray`` module, connected: to the cluster at ``address``; for "auto", to a running one if there is
    one, else to a new local one with ``workers`` CPUs (all of this machine's when None). A process already
    connected stays as it is."""
    try:
        import ray
    except ImportError:
        raise UsageError(RAY_MISSING) from None
    if ray.is_initialized():
        return ray
    if address != "auto":
        _answers(address)
    quiet = {"include_dashboard": False, "logging_level": logging.WARNING}
    try:
        if address == "auto":
            try:
                ray.init(address="auto", **quiet)
            except ConnectionError:  # no cluster running
                ray.init(num_cpus=workers, **quiet)
        else:
            ray.init(address=address, **quiet)
    except Exception as e:  # ray raises several types for an address it cannot reach
        raise OnnxbcError(f"--ray {address}: cannot connect to a Ray cluster: {one_line(e)}") from e
    return ray


def _answers(address: str) -> None:
    """A one-line error at once where nothing listens at ``address`` (HOST:PORT, or ray://HOST:PORT): Ray itself
    keeps trying for minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_S).close()
    except (OSError, ValueError) as e:
        raise OnnxbcError(
            f"--ray {address}: no Ray cluster answers there ({one_line(e, 100)}); start one (ray start --head) or "
            "use --ray auto"
        ) from e


class _Shard:
    """Batches (split, object reference) that worker ``index`` folds into ``probes``, blank copies."""

    def __init__(self, index: int, batches: list[tuple[str, Any]], probes: list[Any]) -> None:
        self.index, self.batches, self.probes = index, batches, probes


class _Pool:
    """One worker per shard index, started when first needed and replaced when it dies; ``run``: the
    arguments of every ``_Worker.fold`` after the shard's (the data's ``batched``, the splits, the segments)."""

    def __init__(self, ray, graph: bytes, calibration: collector.Calibration, sessions: SessionFactory, run) -> None:
        self._ray = ray
        self._worker = ray.remote(num_cpus=1, max_concurrency=2, max_restarts=0)(_Worker)
        threads = sessions.threads or 1
        self._args = (
            ray.put(graph),
            calibration.wanted,
            calibration.added,
            sessions.device,
            threads,
            sessions.max_memory,
            sessions.budget_given,
        )
        self._run = run
        self._actors: dict[int, Any] = {}
        self._calls = itertools.count()
        self.provider: str | None = None  # the execution provider the workers ran

    def fold(self, shards: list[_Shard], advance: Callable[[], None]) -> list[list[Any]]:
        """Each shard's probes, folded by its worker, calling ``advance`` once per batch; a shard whose worker
        dies is rerun on a new one, ``RETRIES`` times at most."""
        from ray.exceptions import RayError, RayTaskError

        results: dict[int, list[Any]] = {}
        failures, counted = [0] * len(shards), [0] * len(shards)  # counted: batches passed to ``advance``
        running: dict[Any, tuple[int, Any, int]] = {}  # a fold call's result -> (shard, worker, call)
        for i, shard in enumerate(shards):
            running.update(self._start(i, shard))
        while running:
            ready, _ = self._ray.wait(list(running), num_returns=1, timeout=POLL_S)
            for ref in ready:
                i = running.pop(ref)[0]
                try:
                    results[i], self.provider = _writable(self._ray.get(ref))
                    _advance(counted, i, len(shards[i].batches), advance)
                except RayError as e:
                    cause = e.cause if isinstance(e, RayTaskError) else e
                    if not isinstance(cause, RayError):  # raised by the collector: a rerun would raise it again
                        raise (cause if isinstance(cause, Exception) else e) from None
                    failures[i] += 1  # the worker died, or lost what it read
                    count = len(shards[i].batches)
                    where = f"calibration shard {shards[i].index + 1} ({count} batch{'es' if count > 1 else ''})"
                    if failures[i] > RETRIES:
                        raise OnnxbcError(f"Ray: {where} failed {failures[i]} times: {one_line(e, 200)}") from e
                    logger.warning("Ray: the worker of %s failed; rerunning the shard on a new worker", where)
                    self._ray.kill(self._actors.pop(shards[i].index))
                    running.update(self._start(i, shards[i]))
            self._poll(running, counted, advance)
        return [results[i] for i in range(len(shards))]

    def close(self) -> None:
        for actor in self._actors.values():
            self._ray.kill(actor)
        self._actors = {}

    def _start(self, i: int, shard: _Shard) -> dict[Any, tuple[int, Any, int]]:
        actor = self._actors.get(shard.index)
        if actor is None:
            actor = self._actors[shard.index] = self._worker.remote(*self._args)
        call = next(self._calls)
        return {actor.fold.remote(call, shard.probes, shard.batches, *self._run): (i, actor, call)}

    def _poll(self, running: dict[Any, tuple[int, Any, int]], counted: list[int], advance: Callable[[], None]) -> None:
        """``advance`` for the batches the running workers folded since the last poll."""
        from ray.exceptions import RayError

        calls = list(running.values())
        try:
            done = self._ray.get([actor.progress.remote(call) for _, actor, call in calls], timeout=10 * POLL_S)
        except RayError:  # a worker died (its fold call says so) or is slow to answer
            return
        for (i, _, _), n in zip(calls, done):
            _advance(counted, i, n, advance)


def _writable(objects):
    """A deep copy: arrays that come from Ray's object store are read-only."""
    return copy.deepcopy(objects)


def _advance(counted: list[int], i: int, done: int, advance: Callable[[], None]) -> None:
    while counted[i] < done:
        advance()
        counted[i] += 1


class _Worker:
    """A Ray actor: ``fold`` runs the collector over one shard's batches, on the calibration graph's bytes (loaded
    anew each time: a segmented run takes the graph apart)."""

    def __init__(self, graph: bytes, wanted, added, device, threads: int, max_memory: int, budget_given: bool) -> None:
        self._graph, self._wanted, self._added = graph, wanted, added
        logging.getLogger(session.__name__).setLevel(logging.ERROR)  # the driver reports the device (``ran``)
        self._sessions = SessionFactory(device, threads=threads, max_memory=max_memory)
        self._sessions.budget_given = budget_given  # as the driver's
        self._done: dict[int, int] = {}  # batches folded, by call

    def fold(self, call: int, probes, batches, batched: bool, splits, segments: int) -> tuple[list[Any], str | None]:
        self._done[call] = 0

        def advance() -> None:
            self._done[call] += 1

        calibration = collector.Calibration(model_io.from_bytes(self._graph), self._wanted, self._added)
        probes = _writable(probes)
        collector.run(calibration, probes, _Batches(batches, batched), self._sessions, splits, advance, segments)
        return probes, self._sessions.provider

    def progress(self, call: int) -> int:
        return self._done.get(call, 0)


class _Batches:
    """One shard's batches as ``collector.run`` reads data: (split, object reference) pairs, fetched when read."""

    def __init__(self, batches: list[tuple[str, Any]], batched: bool) -> None:
        self._batches, self.batched = batches, batched

    def count_batches(self, split: str) -> int:
        return sum(s == split for s, _ in self._batches)

    def batches(self, split: str):
        import ray

        for s, ref in self._batches:
            if s == split:
                yield ray.get(ref)
