"""Calibration sharded across Ray workers (``calibration.shards``), on a local Ray with 2 CPUs: every probe's
statistics equal the single-process run's (counts exactly, sums to float tolerance), whole-graph and segmented;
``advance`` ticks once per batch; a worker that dies has its shard rerun, and one that always dies stops the run
with one line."""

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import ray
from onnx import numpy_helper
from test_segments import D, T, _assert_same, _data, _pass_one, _plan, resnet, transformer
from typer.testing import CliRunner

from models import test_graphs
from onnxbc import cli, model_io
from onnxbc.calibration import collector
from onnxbc.calibration.collector import collect
from onnxbc.calibration.data import input_specs, open_data
from onnxbc.calibration.probes import LayerErrorProbe, RangeProbe
from onnxbc.calibration.session import SessionFactory
from onnxbc.errors import OnnxbcError, UsageError
from onnxbc.options import CompressOptions, DataOptions, Device
from onnxbc.targets import find_targets

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    """A local Ray whose workers import this checkout (and this folder: ``_Dies``)."""
    paths = [str(ROOT), str(ROOT / "tests"), os.getenv("PYTHONPATH")]
    with pytest.MonkeyPatch.context() as env:  # the workers' environment is the one ray.init sees
        env.setenv("PYTHONPATH", os.pathsep.join(filter(None, paths)))
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


def _collect(model, probes, data, *, workers=None, segments=1, here=False):
    """The probes, collected in this process or on ``workers`` Ray workers (then this process runs nothing unless
    ``here``)."""
    ticks = []
    sessions = SessionFactory(Device.CPU, ray="auto" if workers else None, workers=workers)
    if workers and not here:
        sessions.create = None
    splits = ("fit", "holdout")
    collect(model, probes, data, sessions, splits=splits, advance=lambda: ticks.append(1), segments=segments)
    assert len(ticks) == sum(data.count_batches(s) for s in splits)
    return probes


@pytest.mark.parametrize(("build", "segments", "external"), [(transformer, 1, True), (resnet, 2, False)])
def test_sharded_statistics_equal_the_single_process_run(cluster, tmp_path, build, segments, external):
    """Pass 1 (histograms, channel histograms, GPTQ moments, output power) and pass 2 (shadow errors), whole graph
    (a model read from a file with external data) and in segments, over 2 workers."""
    model = build()
    if external:
        ir.save(model, tmp_path / "m.onnx", external_data="m.onnx.data")
        model = model_io.load(tmp_path / "m.onnx")
        assert model_io.has_external_tensors(model)
    data = _data(tmp_path, model, samples=24, batch_size=3)
    whole = _collect(model, _pass_one(model), data)
    sharded = _collect(model, _pass_one(model), data, workers=2, segments=segments)
    _assert_same(whole, sharded)
    hist = next(p for p in sharded if isinstance(p, RangeProbe)).hist
    assert hist.total > 0
    plan = _plan(model, {p.value: p for p in whole if isinstance(p, RangeProbe)})
    layers = [t for t in find_targets(model).targets if t.weight is not None]
    errors = _collect(model, [LayerErrorProbe(t, plan) for t in layers], data)
    assert errors[0].moments["holdout"].count > 0
    _assert_same(errors, _collect(model, [LayerErrorProbe(t, plan) for t in layers], data, workers=2))


class _Dies(RangeProbe):
    """A range probe whose worker process exits at its ``at``-th batch while ``marker`` is missing (creating it
    first when ``once``): a worker killed in the middle of its shard, its partial sums lost with it."""

    def __init__(self, value, marker, *, at=1, once=True):
        super().__init__(value)
        self.marker, self.at, self.once, self.seen = marker, at, once, 0

    def update(self, arrays, split):
        self.seen += 1
        if self.seen == self.at and not Path(self.marker).exists():
            if self.once:
                Path(self.marker).touch()
            os._exit(1)
        super().update(arrays, split)


def test_a_dead_worker_has_its_shard_rerun(cluster, tmp_path):
    """A worker dies in the middle of its shard (the third batch its probes see, counting the first batch's): the
    shard reruns from blank statistics on a new worker, and everything equals the single-process run; ``advance``
    still ticks once per batch."""
    model = transformer()
    data = _data(tmp_path, model, samples=24, batch_size=3)
    names = [p.value for p in _pass_one(model) if isinstance(p, RangeProbe)]
    whole = _collect(model, [RangeProbe(n) for n in names], data)
    dies = [_Dies(n, str(tmp_path / "died"), at=3) for n in names]
    sharded = _collect(model, dies, data, workers=2)
    assert (tmp_path / "died").exists()
    _assert_same(whole, [_plain(p) for p in sharded])


def test_a_worker_that_always_dies_stops_the_run_in_one_line(cluster, tmp_path):
    model = transformer()
    data = _data(tmp_path, model, samples=6, batch_size=3)
    probe = _Dies(next(p.value for p in _pass_one(model)), str(tmp_path / "never"), once=False)
    with pytest.raises(OnnxbcError, match=r"^Ray: calibration shard 1 \(1 batch\) failed 3 times: [^\n]*$"):
        collect(model, [probe], data, SessionFactory(Device.CPU, ray="auto", workers=2))


class _Refuses(RangeProbe):
    def update(self, arrays, split):
        raise OnnxbcError(f"activation '{self.value}' refused")


def test_an_error_raised_in_a_worker_is_raised_as_it_is(cluster, tmp_path, caplog):
    """Not a dead worker: no rerun, the collector's own one-line error."""
    model = transformer()
    data = _data(tmp_path, model, samples=6, batch_size=3)
    with (
        caplog.at_level(logging.WARNING, logger="onnxbc"),
        pytest.raises(OnnxbcError, match="^activation 'x' refused$"),
    ):
        collect(model, [_Refuses("x")], data, SessionFactory(Device.CPU, ray="auto", workers=2))
    assert "rerunning" not in caplog.text


def _plain(probe):
    """A ``_Dies`` probe's statistics as a plain ``RangeProbe``'s."""
    out = RangeProbe(probe.value)
    vars(out).update({k: v for k, v in vars(probe).items() if k in vars(out)})
    return out


def _numbers(x, path=""):
    """Every value of a report, by path (times, memory, output paths and the options themselves left out)."""
    if isinstance(x, dict):
        skip = {"timings_s", "memory", "options", "output"}
        return {k: v for key, val in x.items() if key not in skip for k, v in _numbers(val, f"{path}.{key}").items()}
    if isinstance(x, list):
        return {k: v for i, val in enumerate(x) for k, v in _numbers(val, f"{path}[{i}]").items()}
    return {path: x}


def test_compress_on_ray_writes_what_a_run_without_writes(cluster, tmp_path, monkeypatch):
    """``--ray auto --workers 2`` (joining the running Ray; this process collects nothing itself), sequential
    compensation (range, shadow and paired error probes): the same report numbers (held-out errors, per-layer
    errors and bias norms) and the same weights, to float tolerance; the quantized codes exactly."""
    graph = test_graphs.build("attention")
    path = test_graphs.save(graph, tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", **graph.feeds(40, 0))
    base = ["compress", str(path), "--data", str(tmp_path / "calib.npz"), "--batch-size", "4", "--quiet"]
    base += ["--bias-correction", "sequential"]
    result = CliRunner().invoke(cli.app, [*base, "-o", str(tmp_path / "a.onnx")])
    assert result.exit_code == 0, result.output
    monkeypatch.setattr(collector, "run", None)
    result = CliRunner().invoke(cli.app, [*base, "--ray", "auto", "--workers", "2", "-o", str(tmp_path / "b.onnx")])
    assert result.exit_code == 0, result.output
    a, b = (_numbers(json.loads((tmp_path / f"{n}.report.json").read_text())) for n in "ab")
    assert a.keys() == b.keys() and any("heldout" in k or "holdout" in k for k in a)
    for key, value in a.items():
        if isinstance(value, float):
            assert b[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
        else:
            assert b[key] == value, key
    ma, mb = (onnx.load(tmp_path / f"{n}.onnx") for n in "ab")
    for x, y in zip(ma.graph.initializer, mb.graph.initializer):
        assert x.name == y.name
        u, v = numpy_helper.to_array(x), numpy_helper.to_array(y)
        if np.issubdtype(u.dtype, np.integer):
            np.testing.assert_array_equal(u, v, err_msg=x.name)
        else:
            np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-9, err_msg=x.name)


def test_ray_flags_are_checked_before_any_work(monkeypatch):
    with pytest.raises(UsageError, match="--workers sets the Ray workers: add --ray auto"):
        CompressOptions(workers=2)
    with pytest.raises(UsageError, match="--workers must be 1 or more"):
        CompressOptions(ray="auto", workers=0)
    with pytest.raises(UsageError, match="--ray takes auto or a Ray cluster's address, HOST:PORT"):
        CompressOptions(ray="localhost")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find_spec(name, *a))
    with pytest.raises(UsageError, match=r"^--ray needs the ray extra: pip install 'onnxbc\[ray\]'$"):
        CompressOptions(ray="auto")


def test_histograms_that_cannot_merge_exactly_are_collected_in_one_process(cluster, tmp_path, caplog):
    """A first batch of zeros sets no histogram grid: each shard would start its own, so the run falls back to one
    process (with a note) rather than merge approximately."""
    model = transformer()
    _data(tmp_path, model, samples=24, batch_size=3)
    feeds = dict(np.load(tmp_path / "d.npz"))
    feeds["x"][:3] = 0.0
    np.savez(tmp_path / "d.npz", **feeds)
    data = open_data(DataOptions(path=tmp_path / "d.npz", holdout_fraction=0.3, batch_size=3), input_specs(model))
    whole = _collect(model, [RangeProbe("x")], data)
    assert whole[0].hist.counts[0] >= 3 * T * D and whole[0].hist.top > 0
    with caplog.at_level(logging.WARNING, logger="onnxbc"):
        sharded = _collect(model, [RangeProbe("x")], data, workers=2, here=True)
    assert "collecting in one process" in caplog.text and "different starting ranges" in caplog.text
    _assert_same(whole, sharded)


def test_an_address_where_no_cluster_answers_is_one_line_at_once(tmp_path):
    """Ray itself would retry for minutes; a process not yet connected checks the address first."""
    out = tmp_path / "out.onnx"
    model, data = ROOT / "models" / "fashion_cnn.onnx", ROOT / "models" / "data" / "fashion_calib.npz"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = ["compress", model, "--data", data, "-o", out, "--ray", "127.0.0.1:1", "--workers", "2"]
    r = subprocess.run([sys.executable, "-m", "onnxbc", *map(str, args)], capture_output=True, text=True, env=env)
    assert r.returncode == 1 and not out.exists() and not list(tmp_path.iterdir())
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == [line for line in r.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("error: --ray 127.0.0.1:1: no Ray cluster answers there"), r.stderr


def test_without_ray_flags_ray_is_never_imported(tmp_path):
    """The base install has no ray: a compress without ``--ray`` must not import it."""
    graph = test_graphs.build("conv")
    path = test_graphs.save(graph, tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", **graph.feeds(8, 0))
    code = (
        "import sys, onnxbc\n"
        f"onnxbc.compress({str(path)!r}, data=onnxbc.DataOptions(path={str(tmp_path / 'calib.npz')!r}))\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
