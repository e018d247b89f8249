"""``--cache-dir``: each ``collect`` call's statistics are kept (``calibration.cache``); the same compress again
writes the same bytes without running the collector, a run stopped in its second pass resumes from its first,
and a corrupt entry is ignored."""

import numpy as np
import pytest
from typer.testing import CliRunner

from models import test_graphs
from onnxbc import cli
from onnxbc.calibration import collector
from onnxbc.options import CompressOptions


@pytest.fixture
def compress(tmp_path, monkeypatch):
    """``compress(name, *flags)`` -> (exit code, output bytes or None, collector runs)."""
    graph = test_graphs.build("attention")
    path = test_graphs.save(graph, tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", **graph.feeds(24, 0))
    real = collector.run

    def run(name, *flags, fail_at=None):
        runs = []

        def counted(*args, **kwargs):
            runs.append(1)
            if len(runs) == fail_at:
                raise KeyboardInterrupt  # Ctrl-C in the middle of a later pass
            return real(*args, **kwargs)

        monkeypatch.setattr(collector, "run", counted)
        out = tmp_path / f"{name}.onnx"
        args = ["compress", str(path), "--data", str(tmp_path / "calib.npz"), "--batch-size", "4", "-o", str(out)]
        result = CliRunner().invoke(cli.app, [*args, "--bias-correction", "sequential", "--quiet", *flags])
        return result.exit_code, out.read_bytes() if out.exists() else None, len(runs)

    return run


def test_the_same_run_again_collects_nothing_and_writes_the_same_bytes(compress, tmp_path):
    code, plain, runs = compress("plain")
    assert code == 0 and runs >= 4  # pass 1, pass 2, the sequential waves
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert compress("first", *cache) == (0, plain, runs)  # filling the cache changes nothing
    assert len(list((tmp_path / "cache").glob("*.pkl"))) == runs
    assert compress("second", *cache) == (0, plain, 0)


def test_a_run_stopped_in_its_second_pass_resumes_from_the_first(compress, tmp_path):
    code, plain, runs = compress("plain")
    cache = ["--cache-dir", str(tmp_path / "cache")]
    code, written, _ = compress("stopped", *cache, fail_at=2)
    assert code == 130 and written is None
    assert len(list((tmp_path / "cache").glob("*"))) == 1  # pass 1's entry, no temporary left
    assert compress("resumed", *cache) == (0, plain, runs - 1)


def test_a_corrupt_or_foreign_entry_is_ignored(compress, tmp_path):
    cache = ["--cache-dir", str(tmp_path / "cache")]
    code, plain, runs = compress("first", *cache)
    entries = sorted((tmp_path / "cache").glob("*.pkl"))
    entries[0].write_bytes(b"not a pickle")
    entries[1].write_bytes(entries[2].read_bytes())  # another call's statistics
    assert compress("again", *cache) == (0, plain, 2)


def test_cache_dir_must_be_a_folder(tmp_path):
    (tmp_path / "file").write_text("")
    result = CliRunner().invoke(cli.app, ["compress", "m.onnx", "--cache-dir", str(tmp_path / "file")])
    assert result.exit_code == 2 and "--cache-dir" in result.output and "not a folder" in result.output
    assert CompressOptions(cache_dir=str(tmp_path)).cache_dir == tmp_path  # the API may give text
