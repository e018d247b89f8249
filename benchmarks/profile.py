"""Where ``compress``'s time goes, per stage and per probe kind, in units of the float model's inference (issue 22).

    python -m benchmarks.profile                          # the fast tier -> results/profile.json + PROFILE.md
    python -m benchmarks.profile --models fashion --repeats 3 --repeats-large 1
    python -m benchmarks.profile one --model fashion --repeats 3 --result R.json   # one model's in-process part
    python -m benchmarks.profile render                   # PROFILE.md again from results/profile.json

Per model: W8A8 with onnxbc's defaults and ``device=cpu``, as the benchmark's ``onnxbc_independent`` row runs it
(``benchmarks.tools.onnxbc_tool``), on the zoo's ``calib.npz`` with every sample in it (20 % held out).

1. **compress** as the benchmark runs it (``runner.compress``: ``benchmarks.worker compress`` in a fresh
   process): the report's ``timings_s``, the call, the process wall clock and its peak RSS (``wait4``).
2. **In a second fresh process** (``one``), through onnxbc's own functions (``pipeline``'s private stages and the
   helpers they call, so the probes are the ones ``compress`` builds):

   - *the unit*: the float model's plain inference over the same batches (fit and held-out splits) in the session
     onnxbc uses for statistics (``SessionFactory.create``, ``exact=True``), the session's creation apart;
   - pass 1 and pass 2 whole (``_first_pass``, ``_second_pass``), then each probe kind alone through
     ``collect`` (layer errors as pass 2 collects them: the held-out samples, then the fit samples apart in a
     second session, ``pipeline._error_passes``); each pass split into building the calibration copies (clone,
     attach, prune; pass 2's first also making the variants), serializing them, creating the sessions,
     ``session.run`` and the probes' ``update`` (numpy; histograms apart), the rest being data loading, the
     loop and the probes' ``finished`` (the fit samples' mean errors: weights times input sums, in numpy);
   - the held-out check (``_choose``): the reference and candidate sessions' creation and runs.

Session timing wraps ``SessionFactory`` (the same two calls as ``SessionFactory.create``); update timing wraps the
probe classes' ``update`` in this process only. Nothing in onnxbc is changed. Each figure is from the repeat with
the median wall clock (the median call for ``compress``), so that its parts add up.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "profile.json"
MARKDOWN = REPO / "benchmarks" / "PROFILE.md"
FAST_TIER = ("fashion", "chargpt", "minilm", "ppocr_rec")
SMALL = ("fashion", "chargpt")  # these get --repeats, the others --repeats-large
SETTING, METHOD = "w8a8", "onnxbc_independent"
UNIT_REPEATS = 5  # the unit is cheap and, on the CNN, a few milliseconds: at least this many runs (median)
STAGES = (
    "load",
    "prepare",
    "ranges",
    "quantize_weights",
    "measure_sensitivity",
    "layer_errors",
    "rewrite",
    "sequential_compensation",
    "verify",
    "save",
)


# --------------------------------------------------------------------------- instrumentation


@dataclasses.dataclass
class SessionUse:
    """One session a ``TimedSessions`` created: the graph it got, and what it cost."""

    nodes: int
    outputs: int
    exact: bool
    started: float  # perf_counter when create() was called
    serialize_s: float
    create_s: float
    runs: int = 0
    run_s: float = 0.0
    fetched_bytes: int = 0


class _TimedSession:
    """An ``InferenceSession`` whose ``run`` calls are counted and timed."""

    def __init__(self, session: Any, use: SessionUse) -> None:
        self._session = session
        self._use = use

    def run(self, names, feeds, *args, **kwargs):
        start = time.perf_counter()
        arrays = self._session.run(names, feeds, *args, **kwargs)
        self._use.run_s += time.perf_counter() - start
        self._use.runs += 1
        self._use.fetched_bytes += sum(getattr(a, "nbytes", 0) for a in arrays)
        return arrays

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def timed_sessions(device: Any) -> Any:
    """A ``SessionFactory`` that records every session it creates (``.uses``)."""
    from onnxbc.calibration.session import SessionFactory, ort_input

    class TimedSessions(SessionFactory):
        def __init__(self) -> None:
            super().__init__(device)
            self.uses: list[SessionUse] = []

        def create(self, model, *, exact: bool = True, prepack: bool = True, fold: bool = True):
            """``SessionFactory.create``, timed in two steps: the model as ONNX Runtime takes it, the session."""
            start = time.perf_counter()
            options = self._options(exact, prepack, fold)
            with ort_input(model, options, self.apart_up_to) as source:
                serialized = time.perf_counter()
                session = self._start(source, options)
            done = time.perf_counter()
            use = SessionUse(
                nodes=sum(1 for _ in model.graph),
                outputs=len(model.graph.outputs),
                exact=exact,
                started=start,
                serialize_s=serialized - start,
                create_s=done - serialized,
            )
            self.uses.append(use)
            return _TimedSession(session, use)

    return TimedSessions()


class UpdateClock:
    """Seconds spent in the probes' ``update`` (numpy, outside ONNX Runtime), by class, while installed."""

    def __init__(self) -> None:
        from onnxbc.calibration import collector, probes
        from onnxbc.solvers import ranges

        # top level: everything a probe does with a fetched batch; nested: the histograms' counting within
        # RangeProbe (ranges.observe calls each histogram's _count per block), and the graphs collect builds
        self.top = {
            "RangeProbe": (probes.RangeProbe, "update"),
            "OutputPowerProbe": (probes.OutputPowerProbe, "update"),
            "MomentsProbe": (probes.MomentsProbe, "update"),
            "ErrorProbe": (probes.ErrorProbe, "update"),
            "MeanErrorProbe": (probes.MeanErrorProbe, "update"),
        }
        self.nested = {
            "AbsHistogram": (ranges.AbsHistogram, "_count"),
            "ChannelHistograms": (ranges.ChannelHistograms, "_count"),
            "build": (collector, "calibration_graph"),  # not an update: the graph each collect builds
        }
        self.seconds: dict[str, float] = {}
        self.builds: list[float] = []  # each calibration_graph call's seconds

    @contextlib.contextmanager
    def installed(self) -> Iterator[UpdateClock]:
        originals = []
        for key, (cls, attr) in {**self.top, **self.nested}.items():
            original = cls.__dict__[attr]
            originals.append((cls, attr, original))
            setattr(cls, attr, self._wrap(key, original))
        try:
            yield self
        finally:
            for cls, attr, original in originals:
                setattr(cls, attr, original)

    def _wrap(self, key: str, original: Callable) -> Callable:
        def update(probe, *args, **kwargs):
            start = time.perf_counter()
            try:
                return original(probe, *args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                self.seconds[key] = self.seconds.get(key, 0.0) + elapsed
                if key == "build":
                    self.builds.append(elapsed)

        return update

    def reset(self) -> None:
        self.seconds, self.builds = {}, []

    def total(self) -> float:
        return sum(self.seconds.get(k, 0.0) for k in self.top)


def _breakdown(wall: float, uses: Sequence[SessionUse], clock: UpdateClock, begun: float) -> dict[str, Any]:
    """One pass (its ``collect`` calls: pass 2 runs the fit samples apart where it can): where its wall clock went;
    the graphs' node and output counts summed over its sessions."""
    if not uses:
        raise RuntimeError("expected a calibration session, got none")
    total = lambda field: sum(getattr(u, field) for u in uses)  # noqa: E731
    parts = {
        # the first graph from the start; the later ones as timed (calibration_graph)
        # up to the first session (making the variants, the first graph), then the later collects' graphs
        "build_s": uses[0].started - begun + sum(clock.builds[1:]),
        "serialize_s": total("serialize_s"),
        "session_create_s": total("create_s"),
        "run_s": total("run_s"),
        "update_s": clock.total(),
    }
    return {
        "wall_s": wall,
        **parts,
        "other_s": wall - sum(parts.values()),  # data loading, batch splitting, the loop
        "histogram_s": clock.seconds.get("AbsHistogram", 0.0),
        "channel_histogram_s": clock.seconds.get("ChannelHistograms", 0.0),
        "runs": total("runs"),
        "sessions": len(uses),
        "graph_outputs": total("outputs"),
        "nodes": total("nodes"),
        "fetched_mb": total("fetched_bytes") / 1e6,
    }


# --------------------------------------------------------------------------- one model, in process


@dataclasses.dataclass
class Kind:
    """Probes of one kind, built fresh for each repeat (probes keep state)."""

    name: str
    build: Callable[[], list]
    splits: tuple[str, ...]
    note: str = ""


def compress_options() -> Any:
    """What ``benchmarks.tools.onnxbc_tool.quantize`` passes for W8A8 with its default arguments."""
    import onnxbc

    return onnxbc.CompressOptions(
        weights=onnxbc.WeightType.INT8,
        activations=onnxbc.ActivationType.INT8,
        block_size=0,
        bias_correction=onnxbc.BiasCorrection.INDEPENDENT,
        bias_shape=onnxbc.BiasShape.CHANNEL,
        rounding=onnxbc.Rounding.AUTO,
        device=onnxbc.Device.CPU,
    )


def open_job(bench: Any, out_dir: Path) -> tuple[Any, float]:
    """``pipeline.compress`` up to its stages: start, load + prepare, ``_open``; with a timed session factory.
    Also the seconds ``_open`` took."""
    from benchmarks.settings import calibration_arrays, sample_count
    from onnxbc import flow, pipeline, precision
    from onnxbc.options import DataOptions
    from onnxbc.progress import Stages

    options = compress_options()
    data = DataOptions(path=bench.calib_path, samples=sample_count(calibration_arrays(bench)))
    run = flow.start(
        bench.onnx_path,
        out_dir / "model.onnx",
        None,
        options=options,
        force=True,
        stages=Stages(enabled=False),
        extra_options={"data": data.describe()},
    )
    working = flow.load_prepared(run, precision.required_opset(options, None))
    start = time.perf_counter()
    job = pipeline._open(run, working, data, options, None, None)
    opened = time.perf_counter() - start  # targets, the data opened and checked: in no stage timer
    return dataclasses.replace(job, sessions=timed_sessions(options.device)), opened


def unit(job: Any) -> dict[str, Any]:
    """The float model's plain inference over every batch of the fit and held-out splits, in a fresh exact
    session (all its outputs fetched), as ``collect`` and ``compare_sessions`` feed them."""
    sessions = job.sessions
    session = sessions.create(job.model)
    use = sessions.uses[-1]
    result: dict[str, Any] = {"serialize_s": use.serialize_s, "session_create_s": use.create_s, "nodes": use.nodes}
    for split in ("fit", "holdout"):
        before, runs = use.run_s, use.runs
        start = time.perf_counter()
        for feeds in job.calib.batches(split):
            session.run(None, feeds)
        result[f"{split}_wall_s"] = time.perf_counter() - start  # data loading included
        result[f"{split}_s"] = use.run_s - before
        result[f"{split}_runs"] = use.runs - runs
    result["all_s"] = result["fit_s"] + result["holdout_s"]
    return result


def _collect_kind(job: Any, kind: Kind, clock: UpdateClock) -> dict[str, Any]:
    """One kind's probes collected as their pass collects them (layer errors: the fit samples apart where pass 2
    runs them so, ``pipeline._error_passes``)."""
    from onnxbc import pipeline
    from onnxbc.calibration.collector import collect
    from onnxbc.calibration.probes import LayerErrorProbe

    probes = kind.build()
    if not probes:
        return {"probes": 0}
    passes = [(probes, kind.splits)]
    if all(isinstance(p, LayerErrorProbe) for p in probes):
        passes = pipeline._error_passes(probes, job.calib.n_holdout > 0)
    clock.reset()
    first = len(job.sessions.uses)
    begun = time.perf_counter()
    for some, splits in passes:
        collect(job.model, some, job.calib, job.sessions, splits=splits)
    wall = time.perf_counter() - begun
    return {"probes": len(probes), **_breakdown(wall, job.sessions.uses[first:], clock, begun)}


def probe_kinds(job: Any, stats: Any, decided: Any) -> tuple[list[Kind], dict[str, float]]:
    """Each probe kind of the two passes, built as ``_first_pass`` and ``_second_pass`` build them; and the
    seconds ``_second_pass`` spends making each kind of variant (quantized weights, before its collect)."""
    from onnxbc import pipeline, placement, precision
    from onnxbc.calibration.probes import LayerErrorProbe, RangeProbe
    from onnxbc.options import BiasShape, Rounding
    from onnxbc.smoothing import channel_axis
    from onnxbc.variants import (
        VariantKind,
        smoothing_variants,
        trial_probes,
        uniform_variants,
        weight_range_variants,
    )

    options, targets, uses, smooth = job.options, job.targets, stats.uses, stats.smooth_axes

    def axis(name: str) -> int | None:  # as _first_pass
        axes = {channel_axis(t) for t, _ in uses[name] if t.weight is not None}
        return axes.pop() if len(axes) == 1 else None

    def ranges(names: Sequence[str], histograms: bool) -> Callable[[], list]:
        return lambda: [RangeProbe(n, axis(n), channel_histograms=histograms) for n in names]

    def stats_probes(which: int, **changes: Any) -> Callable[[], list]:
        opts = dataclasses.replace(options, **changes)
        return lambda: list(precision.stats_probes(targets, opts, job.overrides)[which])

    # pass 2, as _second_pass builds it, on a copy of the plan as _decide left it
    plan = copy.deepcopy(decided.plan)
    per_position = options.bias_shape is BiasShape.POSITION
    observed = [t for t in targets.targets if not t.in_subgraph and pipeline._is_quantized(t, plan)]
    by_name, layers = {t.name: t for t in observed}, {t.name for t in observed}
    timed: dict[str, float] = {}

    def made(name: str, build: Callable[[], list]) -> list:
        start = time.perf_counter()
        result = build()
        timed[name] = time.perf_counter() - start
        return result

    variants = made("weight_range", lambda: weight_range_variants(targets, plan, layers, options))
    variants += made("smoothing", lambda: smoothing_variants(targets, plan, layers, stats.ranges, smooth, options))
    variants += made("uniform", lambda: uniform_variants(targets, plan, layers, decided.choice.uniform, options))

    def trials(*kinds: VariantKind) -> Callable[[], list]:
        def build() -> list:
            chosen = [v for v in variants if v.kind in kinds]
            return [p for trial in trial_probes(chosen, by_name, per_position).values() for p in trial]

        return build

    sites = placement.find_sites(targets, uses, options)
    outputs = [n for n in (sites.own_ranges(smooth) if sites else []) if n not in uses]  # as _first_pass
    fit, both = ("fit",), ("fit", "holdout")
    default_power = stats_probes(0)
    default_moments = stats_probes(1)
    kinds = [
        Kind("ranges, no channel histograms: every layer input", ranges(list(uses), False), fit),
        Kind("ranges, no channel histograms: the smoothable inputs", ranges(list(smooth), False), fit),
        Kind("ranges with channel histograms: the smoothable inputs", ranges(list(smooth), True), fit),
        Kind("ranges of the placement's own sites", lambda: [RangeProbe(n) for n in outputs], fit),
        Kind(
            "output power",
            default_power if default_power() else stats_probes(0, scheme="auto"),
            fit,
            "" if default_power() else "not in the default run: built as --scheme auto builds them",
        ),
        Kind(
            "moments (GPTQ)",
            default_moments if default_moments() else stats_probes(1, rounding=Rounding.GPTQ),
            both,
            "" if default_moments() else "not in the default run: built as --rounding gptq builds them",
        ),
        Kind("layer-error shadows of the plan", lambda: [LayerErrorProbe(t, plan) for t in observed], both),
        Kind("variant trials: min-max weight scales", trials(VariantKind.WEIGHT_RANGE), both),
        Kind("variant trials: smoothing", trials(VariantKind.SMOOTHING), both),
        Kind("variant trials: uniform bits", trials(VariantKind.UNIFORM, VariantKind.UNIFORM_MINMAX), both),
    ]
    return kinds, timed


def _whole_pass(job: Any, clock: UpdateClock, call: Callable[[], Any], timer: str) -> tuple[Any, dict[str, Any]]:
    """One of the pipeline's passes as it runs: its wall clock, its timer's, and its collect's breakdown."""
    clock.reset()
    first = len(job.sessions.uses)
    begun = time.perf_counter()
    result = call()
    wall = time.perf_counter() - begun
    row = _breakdown(wall, job.sessions.uses[first:], clock, begun)
    row["timer_s"] = job.run.timer.durations[timer]  # the stage as the report times it
    return result, row


def _verify(job: Any, built: list, outputs: Any) -> tuple[dict[str, Any], Any]:
    """``_choose``: the reference session (its outputs, where pass 2 fetched them, ``outputs``, taken from there),
    one session per candidate, ONNX Runtime's default session."""
    from onnxbc import pipeline

    for c in built:
        c.outputs = c.stopped = None  # measure() skips measured and stopped candidates
    first = len(job.sessions.uses)
    begun = time.perf_counter()
    winner = pipeline._choose(job, built, outputs)
    wall = time.perf_counter() - begun
    uses = job.sessions.uses[first:]
    reference, rest = uses[0], uses[1:]
    candidates = [u for u in rest if u.exact]
    default = [u for u in rest if not u.exact]

    def total(group: list[SessionUse], field: str) -> float:
        return sum(getattr(u, field) for u in group)

    parts = {
        "reference_create_s": reference.serialize_s + reference.create_s,
        "reference_run_s": reference.run_s,
        "candidates_create_s": total(candidates, "serialize_s") + total(candidates, "create_s"),
        "candidates_run_s": total(candidates, "run_s"),
        "default_create_s": total(default, "serialize_s") + total(default, "create_s"),
        "default_run_s": total(default, "run_s"),
    }
    row = {
        "wall_s": wall,
        **parts,
        "other_s": wall - sum(parts.values()),  # comparing outputs (numpy), data loading, choosing
        "candidates": len(candidates),
        "reference_runs": reference.runs,
        "candidate_runs": int(total(candidates, "runs")),
    }
    return row, winner


def profile_model(name: str, repeats: int, cache: Path) -> dict[str, Any]:
    """The in-process part for one model (run it in a fresh process: ``python -m benchmarks.profile one``)."""
    from benchmarks.zoo import MODELS
    from onnxbc import pipeline, records, validate

    bench = MODELS[name].prepare(cache)
    clock = UpdateClock()
    with tempfile.TemporaryDirectory(prefix="onnxbc-profile-") as tmp, clock.installed():
        job, open_s = open_job(bench, Path(tmp))
        unit(job)  # warm-up: page cache, ONNX Runtime's first session
        units = [unit(job) for _ in range(max(UNIT_REPEATS, repeats))]
        pass1 = []
        for _ in range(repeats):
            stats, row = _whole_pass(job, clock, functools.partial(pipeline._first_pass, job), "ranges")
            pass1.append(row)
        start = time.perf_counter()
        decided = pipeline._decide(job, stats)
        decide_s = time.perf_counter() - start
        pristine, pass2 = copy.deepcopy(decided.plan), []
        for _ in range(repeats):  # _second_pass applies the per-layer choices to the plan: start from a copy
            decided = dataclasses.replace(decided, plan=copy.deepcopy(pristine))
            errors, row = _whole_pass(
                job, clock, functools.partial(pipeline._second_pass, job, stats, decided), "layer_errors"
            )
            pass2.append(row)
        kinds, variants_s = probe_kinds(job, stats, dataclasses.replace(decided, plan=pristine))
        per_kind = {k.name: [_collect_kind(job, k, clock) for _ in range(repeats)] for k in kinds}
        start = time.perf_counter()
        built = pipeline._candidates(job, stats, decided, errors)
        rewrite_s = time.perf_counter() - start
        verify = [_verify(job, built, errors.outputs) for _ in range(repeats)]
        winner = verify[-1][1]
        start = time.perf_counter()
        records.fill(job.run.report, job.targets, pipeline._decisions(job.options, decided, errors), winner, built)
        fill_s = time.perf_counter() - start
        start = time.perf_counter()
        validate.require(winner.model, job.options.target)
        validate_s = time.perf_counter() - start
        calib = job.calib
        return {
            "model": name,
            "repeats": repeats,
            "samples": {"fit": calib.n_fit, "holdout": calib.n_holdout, "batch_size": calib.batch_size},
            "batches": {s: calib.count_batches(s) for s in ("fit", "holdout")},
            "layers": len(job.targets.targets),
            "activations": len(stats.uses),
            "smoothable": len(stats.smooth_axes),
            "unit": _median(units, "all_s"),
            "pass1": _median(pass1),
            "decide_s": decide_s,
            "pass2": _median(pass2),
            "kinds": [
                {"kind": k.name, "splits": list(k.splits), "note": k.note, **_median(per_kind[k.name])} for k in kinds
            ],
            "rewrite_s": rewrite_s,
            "verify": _median([row for row, _ in verify]),
            # in no stage timer of compress: what "not in a stage" is made of
            "untimed": {
                "open_s": open_s,
                "pass2_outside_timer_s": _median(pass2)["wall_s"] - _median(pass2)["timer_s"],
                "variants_s": variants_s,
                "records_fill_s": fill_s,
                "validate_s": validate_s,
            },
        }


def _median(rows: list[dict[str, Any]], key: str = "wall_s") -> dict[str, Any]:
    """The repeat whose ``key`` is the median (the lower one of an even count), whole, so that its parts add up."""
    return sorted(rows, key=lambda r: r.get(key, 0.0))[(len(rows) - 1) // 2]


# --------------------------------------------------------------------------- all models


def compress_runs(name: str, repeats: int, cache: Path, work: Path) -> dict[str, Any]:
    """``compress`` as the benchmark runs it, ``repeats`` times in fresh processes; the run with the
    median call, and every run."""
    from benchmarks import runner

    runs = []
    for i in range(repeats):
        load = os.getloadavg()[0]
        row = runner.compress(name, SETTING, METHOD, work / f"{name}-{i}", cache=cache, timeout_s=1800)
        if row["status"] != "ok":
            raise RuntimeError(f"{name}: compress {row['status']}: {row.get('reason')}")
        runs.append({**row["compress"], "timings_s": row["info"]["timings_s"], "load_avg_1min": load})
    return {**_median(runs, "call_s"), "runs": runs}


def one_in_process(name: str, repeats: int, cache: Path, result: Path) -> dict[str, Any]:
    """``profile_model`` in a fresh process (its memory and ONNX Runtime's state are its own)."""
    argv = [sys.executable, "-m", "benchmarks.profile", "one", "--model", name, "--repeats", str(repeats)]
    argv += ["--cache", str(cache), "--result", str(result)]
    subprocess.run(argv, cwd=REPO, check=True)
    return json.loads(result.read_text())


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "cpu": cpu, "load_avg_at_start": os.getloadavg()}


def run(models: Sequence[str], repeats: int, repeats_large: int, cache: Path, command: str) -> dict[str, Any]:
    from benchmarks import runner

    started = time.perf_counter()
    results: dict[str, Any] = {
        "kind": "profile",
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": runner.source_state(),
        "machine": machine(),
        "packages": runner.package_versions(),
        "setting": SETTING,
        "method": METHOD,
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="onnxbc-profile-") as tmp:
        for name in models:
            n = repeats if name in SMALL else repeats_large
            print(f"{name}: compress x{n}", flush=True)
            model_started = time.perf_counter()
            compressed = compress_runs(name, n, cache, Path(tmp))
            print(f"{name}: stages and probe kinds x{n}", flush=True)
            inside = one_in_process(name, n, cache, Path(tmp) / f"{name}.json")
            inside["compress"] = compressed
            inside["profile_s"] = time.perf_counter() - model_started
            results["models"][name] = inside
    results["source_at_end"] = runner.source_state()  # others may commit meanwhile
    results["wall_s"] = time.perf_counter() - started
    return results


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    from benchmarks import profile_render
    from benchmarks.zoo import DEFAULT_CACHE, MODELS

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["one"]:
        parser = argparse.ArgumentParser(prog="python -m benchmarks.profile one")
        parser.add_argument("--model", required=True, choices=sorted(MODELS))
        parser.add_argument("--repeats", type=int, default=1)
        parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
        parser.add_argument("--result", type=Path, required=True)
        args = parser.parse_args(argv[1:])
        args.result.write_text(json.dumps(profile_model(args.model, args.repeats, args.cache), indent=2))
        return 0
    if argv[:1] == ["render"]:
        parser = argparse.ArgumentParser(prog="python -m benchmarks.profile render")
        parser.add_argument("--results", type=Path, default=RESULTS)
        parser.add_argument("--markdown", type=Path, default=MARKDOWN)
        args = parser.parse_args(argv[1:])
        profile_render.write(args.markdown, json.loads(args.results.read_text()))
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(FAST_TIER), help="comma-separated (default: the fast tier)")
    parser.add_argument("--repeats", type=int, default=3, help=f"runs of {', '.join(SMALL)} (median)")
    parser.add_argument("--repeats-large", type=int, default=1, help="runs of the other models")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--markdown", type=Path, default=MARKDOWN)
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {sorted(MODELS)}")
    command = "python -m benchmarks.profile" + ("" if not argv else " " + " ".join(argv))
    results = run(models, args.repeats, args.repeats_large, args.cache, command)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2))
    profile_render.write(args.markdown, results)
    print(f"wrote {args.results} and {args.markdown} ({results['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
