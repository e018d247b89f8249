"""The command line as a user meets it: one-line errors with exit codes 1/2, nothing written on failure,
the input never touched."""

import hashlib
import json
import logging
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

import onnxbc as onnxbc_api
from models import test_graphs
from onnxbc import cli
from onnxbc.calibration.session import cuda_works
from onnxbc.report import Report


def onnxbc(*args, cwd=None):
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run(
        [sys.executable, "-m", "onnxbc", *map(str, args)],
        capture_output=True,
        text=True,
        errors="surrogateescape",  # file names that are not UTF-8 come back as they are
        cwd=cwd,
        env=env,
    )


@pytest.fixture
def model(tmp_path):
    path = test_graphs.save(test_graphs.build("conv"), tmp_path / "conv.onnx")
    np.savez(tmp_path / "calib.npz", **test_graphs.build("conv").feeds(20, 0))
    return path


def files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_compress_prints_result_and_writes_report(model, tmp_path):
    r = onnxbc("compress", model, "--data", tmp_path / "calib.npz")
    assert r.returncode == 0, r.stderr
    assert "Wrote" in r.stdout and "conv.int8.onnx" in r.stdout and "Report:" in r.stdout
    report = json.loads((tmp_path / "conv.int8.report.json").read_text())
    assert report["device"] == "cpu" and report["passes_over_data"] == 2
    again = onnxbc("compress", model, "--data", tmp_path / "calib.npz")
    assert again.returncode == 2 and "--force" in again.stderr
    assert (
        onnxbc("compress", model, "--data", tmp_path / "calib.npz", "--force", "--quiet")
        .stdout.strip()
        .endswith("conv.int8.onnx")
    )


def bad_inputs(tmp_path, model):
    """(description, arguments, expected exit code, expected text in the error line)."""
    calib = tmp_path / "calib.npz"
    feeds = test_graphs.build("conv").feeds(8, 0)
    (tmp_path / "text.onnx").write_text("hello")
    (tmp_path / "truncated.onnx").write_bytes(model.read_bytes()[:300])
    broken = onnx.load(model)
    broken.graph.node[0].input[1] = "missing_weight"
    onnx.save(broken, tmp_path / "unchecked.onnx")
    test_graphs.save(test_graphs.build("quantized_qdq"), tmp_path / "qdq.onnx")
    np.savez(tmp_path / "noname.npz", image=feeds["x"])
    np.savez(tmp_path / "shape.npz", x=feeds["x"][:, :, :8])
    np.savez(tmp_path / "dtype.npz", x=feeds["x"].astype(np.float64))
    nan = feeds["x"].copy()
    nan[1, 0, 0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", x=nan)
    cases = [
        ("missing file", ["compress", tmp_path / "none.onnx", "--data", calib], 2, "no such file"),
        ("not ONNX", ["compress", tmp_path / "text.onnx", "--data", calib], 2, "not"),
        ("truncated", ["compress", tmp_path / "truncated.onnx", "--data", calib], 2, "truncated.onnx"),
        ("fails checker", ["compress", tmp_path / "unchecked.onnx", "--data", calib], 1, "fails onnx.checker"),
        ("already quantized", ["compress", tmp_path / "qdq.onnx", "--data", calib], 1, "already quantized"),
        (
            "missing input name",
            ["compress", model, "--data", tmp_path / "noname.npz"],
            2,
            "no array for model input 'x'",
        ),
        ("wrong shape", ["compress", model, "--data", tmp_path / "shape.npz"], 2, "dimension 2 must be 16"),
        (
            "wrong dtype",
            ["compress", model, "--data", tmp_path / "dtype.npz"],
            2,
            "expects float32, the data has float64",
        ),
        ("NaN values", ["compress", model, "--data", tmp_path / "nan.npz"], 2, "NaN or Inf"),
        ("output is input", ["compress", model, "--data", calib, "-o", model], 2, "is the input model"),
        ("missing folder", ["compress", model, "--data", calib, "-o", tmp_path / "no" / "o.onnx"], 2, "does not exist"),
        ("no data", ["compress", model], 2, "--data PATH"),
        ("bad option value", ["compress", model, "--data", calib, "--weights", "int5"], 2, "int5"),
        (
            "bad combination",
            ["compress", model, "--data", calib, "--target", "tensorrt", "--weights", "int4"],
            2,
            "blocks",
        ),
    ]
    if not cuda_works():
        cases.append(
            ("cuda without CUDA", ["compress", model, "--data", calib, "--device", "cuda"], 1, "--device cuda")
        )
    return cases


def test_bad_input_gives_one_line_and_writes_nothing(model, tmp_path):
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    for description, args, code, text in bad_inputs(tmp_path, model):
        before = files(tmp_path)
        r = onnxbc(*args)
        assert r.returncode == code, (description, r.returncode, r.stderr)
        assert "Traceback" not in r.stderr, description
        assert text in r.stderr, (description, r.stderr)
        ours = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        if "option" not in description:  # typer formats its own usage errors (Usage/Try/Error lines)
            assert len(ours) == 1 and r.stderr.strip().splitlines()[-1] == ours[0].strip(), (description, r.stderr)
        assert files(tmp_path) == before, description
        assert hashlib.sha256(model.read_bytes()).hexdigest() == digest


def test_verbose_adds_the_traceback(model, tmp_path):
    r = onnxbc("compress", tmp_path / "none.onnx", "--data", tmp_path / "calib.npz", "--verbose")
    assert r.returncode == 2 and "Traceback" in r.stderr and r.stderr.strip().splitlines()[-1].startswith("error:")


def test_verbose_prints_the_time_per_stage(model, tmp_path):
    r = onnxbc("compress", model, "--data", tmp_path / "calib.npz", "--verbose")
    assert r.returncode == 0, r.stderr
    line = next(line for line in r.stderr.splitlines() if line.startswith("time per stage: "))
    report = json.loads((tmp_path / "conv.int8.report.json").read_text())
    assert [part.split()[0] for part in line.removeprefix("time per stage: ").split(", ")] == list(report["timings_s"])
    assert "time per stage" not in onnxbc("compress", model, "--data", tmp_path / "calib.npz", "-f").stderr


def test_help_and_version():
    r = onnxbc("--help")
    assert r.returncode == 0 and "compress" in r.stdout
    r = onnxbc("compress", "--help")
    for option in ("--weights", "--activations", "--block-size", "--bias-correction", "--data", "--device", "--target"):
        assert option in r.stdout
    assert onnxbc("version").stdout.strip() == __import__("onnxbc").__version__


def test_activation_range_offers_only_what_it_accepts(model, tmp_path):
    # "auto" chooses weight scales; --activation-range must neither list it nor take it
    help_text = onnxbc("compress", "--help").stdout
    assert "--activation-range <minmax|percentile|mse>" in help_text
    r = onnxbc("compress", model, "--data", tmp_path / "calib.npz", "--activation-range", "auto")
    assert r.returncode == 2 and "'auto' is not one of" in r.stderr and "Traceback" not in r.stderr
    r = onnxbc(
        "compress", model, "--data", tmp_path / "calib.npz", "--activation-range", "minmax", "-o", tmp_path / "m.onnx"
    )
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert report["options"]["activation_range"] == "minmax"


def test_warnings_go_to_stderr_also_with_quiet(model, tmp_path, monkeypatch):
    real_compress = onnxbc_api.compress

    def compress_with_cuda_notice(*args, **kwargs):  # the notice session.py logs when CUDA fails to start
        logging.getLogger("onnxbc.calibration.session").warning("the CUDA execution provider did not start")
        return real_compress(*args, **kwargs)

    monkeypatch.setattr(onnxbc_api, "compress", compress_with_cuda_notice)
    for quiet in (["-q"], []):
        r = CliRunner().invoke(cli.app, ["compress", str(model), "--random-data", "--force", *quiet])
        assert r.exit_code == 0, r.output
        for warning in ("the CUDA execution provider did not start", "calibrated on random data"):
            assert f"warning: {warning}" in r.stderr, (quiet, r.stderr)
            assert warning not in r.stdout, (quiet, r.stdout)
        if quiet:
            assert r.stdout.strip() == str(tmp_path / "conv.int8.onnx")
            assert "Calibrating" not in r.stderr  # no progress with -q
        else:
            assert "Calibrating activation ranges" in r.stderr  # stderr is not a terminal: plain lines


def test_interrupt_leaves_nothing(model, tmp_path, monkeypatch):
    def interrupt(self):  # Ctrl-C while the report is made: the model is written by then, not yet in place
        raise KeyboardInterrupt

    monkeypatch.setattr(Report, "to_json", interrupt)
    before = files(tmp_path)
    r = CliRunner().invoke(cli.app, ["compress", str(model), "--data", str(tmp_path / "calib.npz")])
    assert r.exit_code == 130 and "interrupted; nothing was written" in r.stderr
    assert files(tmp_path) == before


def test_paths_that_are_not_utf8(model, tmp_path):
    odd = model.rename(os.fsdecode(os.fsencode(tmp_path) + b"/\xffconv.onnx"))  # byte 0xff: not UTF-8
    r = onnxbc("compress", odd, "--data", tmp_path / "calib.npz", "-q")
    assert r.returncode == 0, r.stderr
    written = odd.with_name(odd.name.replace(".onnx", ".int8.onnx"))
    assert written.is_file() and written.with_name(written.name.replace(".onnx", ".report.json")).is_file()
    for command in (["inspect", odd], ["inspect", written], ["check", written]):
        r = onnxbc(*command)
        assert r.returncode == 0 and "error" not in r.stderr, (command, r.stdout, r.stderr)
    r = onnxbc("compress", odd.with_name("\udcffmissing.onnx"), "--data", tmp_path / "calib.npz")
    assert r.returncode == 2 and r.stderr.strip().endswith("\\xffmissing.onnx: no such file"), r.stderr


def test_a_terminated_compress_removes_its_temporary_folders_and_writes_nothing(tmp_path):
    """SIGTERM (a pipeline's timeout) stops a compress as Ctrl-C does: exit 130, one line, no output, and the
    temporary folders (here the boundary tensors of segments, spilled under a 1 MB budget) removed."""
    import signal
    import time

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "out.onnx"
    args = ["compress", "models/fashion_cnn.onnx", "--data", "models/data/fashion_calib.npz", "-o", out]
    process = subprocess.Popen(
        [sys.executable, "-m", "onnxbc", *map(str, args), "--segments", "2", "--max-memory", "1MB"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    deadline = time.monotonic() + 120
    while not list(scratch.glob("onnxbc-segments-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(scratch.glob("onnxbc-segments-*")) and process.poll() is None  # stopped in the middle
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "interrupted; nothing was written" in stderr
    assert not out.exists() and not list(scratch.glob("onnxbc-*"))
