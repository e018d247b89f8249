"""Latency of ONNX models as a user runs them: ONNX Runtime's default session, the same samples, interleaved.

Each model gets the session ``onnxruntime.InferenceSession(model)`` gives (all graph optimizations, QDQ
fusions into integer kernels on; not the exact sessions calibration uses) on ``device``, with ``threads``
intra-op threads (0: ONNX Runtime's default, one per physical core). Each of ``rounds`` rounds runs every model
over every batch in turn (A, B, C, A, B, C, ...), so that slow drift of the machine (clock speed, other load)
hits all models alike. A turn starts with ``warmup`` untimed runs: the first runs after another model pay for
the switch (caches, its thread pool asleep; measured on the bundled CNN at 2 threads: about 2x the steady
latency in the first run, still above it in the third), and the very first allocate the session's buffers.
A latency is the wall-clock time of one ``session.run`` on one batch, input and output copies included. Per model:

- median, min, max and interquartile range (q3 - q1, linear interpolation) of the per-batch latencies;
- throughput = samples per round / the median time of a round (the sum of its batches);
- ratio = the median over the first model's median (below 1: faster than the first model).

Limits: the batches are held in memory (the timed runs read no files), and every model's session is alive
at once (memory is the sum of the models). A last batch smaller than the others is left out, so that one
latency is always one batch size. The threads a default session starts are counted on Linux only (the
process's threads before and after creating the first session); elsewhere the report says unknown.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import platform
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

import onnxbc
from onnxbc import held
from onnxbc.calibration.data import InputSpec, input_specs, open_data
from onnxbc.calibration.session import CPU, SessionFactory
from onnxbc.check_report import printable
from onnxbc.compare import _signature
from onnxbc.errors import OnnxbcError, UsageError, one_line
from onnxbc.held import ModelLike
from onnxbc.options import DataOptions, Device, describe_source
from onnxbc.progress import Stages

SCHEMA = "onnxbc.bench/1"
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")  # /proc/cpuinfo names of the int8 dot-product instructions
WIDTH = 80  # the text table fits a terminal of this many columns


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    """How ``bench`` times the models (``onnxbc bench --rounds --warmup --threads --device``).

    Attributes:
        rounds: timed rounds; each runs every model over every batch once.
        warmup: untimed runs at the start of each model's turn in a round (the first of them pay for the switch
            from the previous model and, in the first round, for ONNX Runtime's buffer allocations).
        threads: intra-op threads of each session; 0 leaves ONNX Runtime's default.
        device: execution provider, as in the other commands (``auto`` takes CUDA when it really starts).
    """

    rounds: int = 10
    warmup: int = 3
    threads: int = 0
    device: Device = Device.AUTO

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", Device(self.device))
        if self.rounds < 1:
            raise UsageError(f"--rounds must be at least 1, got {self.rounds}")
        if self.warmup < 0:
            raise UsageError(f"--warmup must be 0 or more, got {self.warmup}")
        if self.threads < 0:
            raise UsageError(f"--threads must be 0 (ONNX Runtime's default) or more, got {self.threads}")


@dataclasses.dataclass(frozen=True)
class Machine:
    """The computer the numbers come from: latencies mean little without it."""

    cpu: str
    cores: int | None  # logical CPUs
    usable_cores: int | None  # of them, those this process may run on (affinity, containers)
    vnni: bool | None  # None: not an x86 CPU whose flags this platform shows
    vnni_flags: tuple[str, ...]
    platform: str

    def describe(self) -> str:
        vnni = {True: f"yes ({', '.join(self.vnni_flags)})", False: "no", None: "unknown"}[self.vnni]
        usable = "" if self.usable_cores in (None, self.cores) else f" ({self.usable_cores} usable)"
        return f"{self.cpu}, {self.cores or '?'} cores{usable}, VNNI {vnni}"


def machine() -> Machine:
    """This computer: from /proc/cpuinfo on Linux, from what Python knows elsewhere (``parse_machine``)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return parse_machine(cpuinfo, platform.machine(), cores=os.cpu_count(), usable_cores=usable)


def parse_machine(cpuinfo: str, arch: str, *, cores: int | None, usable_cores: int | None) -> Machine:
    """CPU name and VNNI from the text of /proc/cpuinfo (the first processor speaks for all). VNNI is an x86
    notion: on other CPUs, or without a flags line, it is unknown (ARM's dot-product instructions go by
    other names)."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    found = tuple(f for f in VNNI_FLAGS if f in flags)
    x86 = arch.lower() in ("x86_64", "amd64", "i386", "i686")
    return Machine(
        cpu=fields.get("model name") or platform.processor() or arch or "unknown",
        cores=cores,
        usable_cores=usable_cores,
        vnni=bool(found) if x86 and flags else None,
        vnni_flags=found,
        platform=platform.platform(),
    )


@dataclasses.dataclass(frozen=True)
class ModelTiming:
    """One model's timed runs, round by round and batch by batch, and the statistics of them."""

    model: str  # as messages name it: the path, or <onnx.ModelProto in memory>
    provider: str  # the execution provider that really ran it
    latencies_s: tuple[float, ...]
    runs_per_round: int
    samples_per_round: int

    @property
    def median_s(self) -> float:
        return float(np.median(self.latencies_s))

    @property
    def min_s(self) -> float:
        return min(self.latencies_s)

    @property
    def max_s(self) -> float:
        return max(self.latencies_s)

    @property
    def quartiles_s(self) -> tuple[float, float]:
        q1, q3 = np.percentile(self.latencies_s, [25, 75])
        return float(q1), float(q3)

    @property
    def iqr_s(self) -> float:
        q1, q3 = self.quartiles_s
        return q3 - q1

    @property
    def round_s(self) -> np.ndarray:
        """Time of each round: the sum of its batches."""
        return np.asarray(self.latencies_s).reshape(-1, self.runs_per_round).sum(axis=1)

    @property
    def throughput(self) -> float:
        """Samples per second in the median round."""
        return self.samples_per_round / float(np.median(self.round_s))


@dataclasses.dataclass(frozen=True)
class BenchReport:
    """``bench``'s result: per model timings, and what they were measured on (JSON schema: docs/bench-schema.md)."""

    models: tuple[ModelTiming, ...]
    machine: Machine
    onnxruntime: str  # version
    threads: int | None  # intra-op threads of each session (None: ONNX Runtime's default, not counted here)
    options: BenchOptions
    data: str
    batch_size: int  # samples per run

    def ratio(self, timing: ModelTiming) -> float:
        """``timing``'s median latency over the first model's."""
        return timing.median_s / self.models[0].median_s

    def to_dict(self) -> dict[str, Any]:
        first = self.models[0]
        return {
            "schema": SCHEMA,
            "tool_version": onnxbc.__version__,
            "machine": {
                "cpu": self.machine.cpu,
                "cores": self.machine.cores,
                "usable_cores": self.machine.usable_cores,
                "vnni": self.machine.vnni,
                "vnni_flags": list(self.machine.vnni_flags),
                "platform": self.machine.platform,
            },
            "onnxruntime": {
                "version": self.onnxruntime,
                "session": "default",
                "threads": self.threads,
                "threads_requested": self.options.threads,
            },
            "options": {
                "rounds": self.options.rounds,
                "warmup": self.options.warmup,
                "threads": self.options.threads,
                "device": self.options.device.value,
            },
            "data": {
                "source": printable(self.data),
                "samples_per_round": first.samples_per_round,
                "runs_per_round": first.runs_per_round,
                "batch_size": self.batch_size,
            },
            "models": [
                {
                    "model": printable(t.model),
                    "provider": t.provider,
                    "runs": len(t.latencies_s),
                    "median_ms": _round_ms(t.median_s),
                    "min_ms": _round_ms(t.min_s),
                    "max_ms": _round_ms(t.max_s),
                    "q1_ms": _round_ms(t.quartiles_s[0]),
                    "q3_ms": _round_ms(t.quartiles_s[1]),
                    "iqr_ms": _round_ms(t.iqr_s),
                    "samples_per_s": round(t.throughput, 1),
                    "ratio": round(self.ratio(t), 4),
                }
                for t in self.models
            ],
        }

    def to_text(self) -> str:
        """A table that fits 80 columns (long model names keep their ends), with what it was measured on."""
        providers = ", ".join(dict.fromkeys(t.provider for t in self.models))
        threads = (
            f"{self.threads} intra-op thread{'' if self.threads == 1 else 's'}"
            if self.threads is not None
            else "ONNX Runtime's default intra-op threads (count unknown here)"
        )
        first, o = self.models[0], self.options
        lines = [
            f"CPU: {self.machine.describe()}",
            f"ONNX Runtime {self.onnxruntime} default session, {providers}, {threads}",
            f"Data: {self.data}, {first.samples_per_round} samples; {o.rounds} round{'' if o.rounds == 1 else 's'}, "
            "the models in turn",
            f"Each turn: {o.warmup} untimed run{'' if o.warmup == 1 else 's'}, then {first.runs_per_round} timed "
            f"of {self.batch_size} sample{'' if self.batch_size == 1 else 's'}",
            "",
        ]
        numbers = ("median ms", "IQR ms", "min ms", "max ms", "samples/s", "ratio")
        widths = (9, 7, 7, 7, 9, 6)
        name_width = WIDTH - sum(widths) - len(widths)
        lines.append(f"{'model':<{name_width}}" + "".join(f" {h:>{w}}" for h, w in zip(numbers, widths)))
        for t in self.models:
            cells = (_ms(t.median_s), _ms(t.iqr_s), _ms(t.min_s), _ms(t.max_s), f"{t.throughput:.0f}")
            row = f"{_fit(printable(t.model), name_width):<{name_width}}"
            row += "".join(f" {c:>{w}}" for c, w in zip(cells, widths))
            lines.append(row + f" {self.ratio(t):>{widths[-1] - 1}.2f}x")
        lines.append("ratio: median latency over the first model's (below 1: faster)")
        return "\n".join(lines)


def bench(
    models: Sequence[ModelLike],
    data: DataOptions | Any,
    options: BenchOptions | None = None,
    *,
    stages: Stages | None = None,
) -> BenchReport:
    """Time ``models`` (paths, or models in memory: ``onnxbc.held``) on the same samples of ``data``
    (``DataOptions``, or what ``DataOptions(source=...)`` takes); the first model is the ratios' baseline."""
    options = options or BenchOptions()
    stages = stages or Stages(enabled=False)
    data = data if isinstance(data, DataOptions) else DataOptions(source=data, holdout_fraction=0.0)
    models = [] if isinstance(models, (str, os.PathLike)) else list(models)
    if not models:
        raise UsageError("bench takes a list of models (paths or models in memory), at least one")
    names = [held.describe(m) for m in models]
    factory = SessionFactory(options.device, threads=options.threads)
    sessions: list[ort.InferenceSession] = []
    threads: int | None = options.threads or None
    with stages.step("Loading models", len(models)) as advance:
        for i, (model, name) in enumerate(zip(models, names)):
            working = held.read(model)
            if i == 0:
                specs = input_specs(working)
                feeds, samples, batch_size, label = _feeds(data, specs)
            else:
                _same_inputs(specs, working, names[0], name)
            before = _thread_count()
            sessions.append(factory.create(working, exact=False))
            del working  # one model in memory at a time, besides the sessions
            if i == 0 and threads is None and before is not None and factory.provider == CPU:
                threads = _thread_count() - before + 1  # the pool's threads and the caller's
            advance()
    providers = [s.get_providers()[0] for s in sessions]
    latencies = _time(sessions, names, feeds, options, stages)
    timings = tuple(
        ModelTiming(name, provider, tuple(ts), len(feeds), samples)
        for name, provider, ts in zip(names, providers, latencies)
    )
    return BenchReport(timings, machine(), ort.__version__, threads, options, label, batch_size)


def _feeds(data: DataOptions, specs: list[InputSpec]) -> tuple[list[dict[str, np.ndarray]], int, int, str]:
    """Every batch in memory, the samples they hold, the samples per run, and a label for the data; a last
    batch smaller than the first is dropped (a latency is one batch size)."""
    with open_data(data, specs) as samples:
        feeds = [{k: np.ascontiguousarray(v) for k, v in f.items()} for f in samples.batches("all")]
        total, batch_size = samples.total, samples.total // len(feeds)  # whole feeds, or a fixed batch
        if samples.batched:
            rows = [len(next(iter(f.values()))) for f in feeds]
            batch_size = rows[0]
            if len(feeds) > 1 and rows[-1] < rows[0]:
                feeds.pop()
                total -= rows[-1]
    if data.random:
        label = "random data (standard normal / uniform integers)"
    elif data.path is not None:
        label = str(data.path)
    else:
        label = describe_source(data.source)
    return feeds, total, batch_size, label


def _same_inputs(specs: list[InputSpec], model: ir.Model, first: str, name: str) -> None:
    """Every model runs on the first one's feeds: the same input names, types and fixed sizes."""
    other = input_specs(model)
    if list(map(_signature, specs)) != list(map(_signature, other)):
        described = [", ".join(f"'{s.name}' {s.describe()}" for s in spec) for spec in (specs, other)]
        raise UsageError(f"{first} and {name} take different inputs: {described[0]} vs {described[1]}")


def _thread_count() -> int | None:
    """This process's threads (Linux: /proc/self/task); None where the platform does not show them."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def _time(
    sessions: list[ort.InferenceSession],
    names: list[str],
    feeds: list[dict[str, np.ndarray]],
    options: BenchOptions,
    stages: Stages,
) -> list[list[float]]:
    """Interleaved rounds; each model's per-batch latencies in seconds, in run order."""
    latencies: list[list[float]] = [[] for _ in sessions]
    with stages.step("Timing rounds", options.rounds) as advance, _gc_paused():
        for _ in range(options.rounds):
            for session, name, times in zip(sessions, names, latencies):
                _turn(session, name, feeds, options.warmup, times)
            advance()
    return latencies


def _turn(
    session: ort.InferenceSession, name: str, feeds: list[dict[str, np.ndarray]], warmup: int, times: list[float]
) -> None:
    """One model's turn in a round: ``warmup`` untimed runs, then every batch, timed into ``times``."""
    try:
        for i in range(warmup):
            session.run(None, feeds[i % len(feeds)])
        for feed in feeds:
            start = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - start)
    except Exception as e:  # onnxruntime raises its own exception types
        raise OnnxbcError(f"{name}: ONNX Runtime cannot run it: {one_line(e)}") from e


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No garbage collection inside the timed runs, as ``timeit`` does: its pauses would land on one run."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _round_ms(seconds: float) -> float:
    return round(seconds * 1e3, 4)  # 0.1 us: below what perf_counter around a Python call resolves


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 10 else f"{ms:.2f}" if ms < 100 else f"{ms:.1f}" if ms < 1e4 else f"{ms:.0f}"


def _fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` from the left: the file name at the end says most."""
    return text if len(text) <= width else "..." + text[-(width - 3) :]
