"""What a run writes: the model and its report as one transaction (all or nothing, normal file modes, one-line
errors), output paths checked before any work, leftovers of killed runs removed, and a table that reads at 80
columns."""

import errno
import io
import json
import os
import re
import subprocess
import sys

import onnx
import onnx_ir as ir
import pytest
from rich.console import Console

from models import test_graphs
from onnxbc import model_io
from onnxbc.errors import OnnxbcError, UsageError
from onnxbc.report import LayerRecord, Report


@pytest.fixture
def conv(tmp_path):
    return test_graphs.save(test_graphs.build("conv"), tmp_path / "conv.onnx")


def files(folder):
    return sorted(p.name for p in folder.iterdir())


def new_file_mode(tmp_path):
    probe = tmp_path / "probe"
    probe.write_text("")
    mode = probe.stat().st_mode & 0o777
    probe.unlink()
    return mode


def test_prepare_outputs_resolves_and_accepts(conv, tmp_path):
    paths = model_io.prepare_outputs(conv, tmp_path / "." / "q.onnx", tmp_path / "q.json", force=False)
    assert paths == model_io.OutputPaths(tmp_path.resolve() / "q.onnx", tmp_path.resolve() / "q.json")
    assert files(tmp_path) == ["conv.onnx"]  # the writability probe leaves nothing


@pytest.mark.parametrize(
    ("output", "report", "text"),
    [
        ("ext.onnx", "r.json", "is the input model; choose another with -o"),
        ("ext.onnx.data", "r.json", "would overwrite the input's external data"),
        ("out.onnx", "out.onnx", "the report path is the output model; choose another with --report"),
        ("out.onnx", "out.onnx.data", "the report path is the output's external data; choose another with --report"),
        ("out.onnx", "ext.onnx", "the report path is the input model; choose another with --report"),
        ("out.onnx", "ext.onnx.data", "the report path is the input's external data; choose another with --report"),
        ("no/out.onnx", "r.json", "folder .* does not exist"),
        ("out.onnx", "no/r.json", "folder .* does not exist"),
        ("file/out.onnx", "r.json", "is not a folder"),
        ("out.onnx", "file/r.json", "is not a folder"),
        ("/proc/out.onnx", "r.json", "/proc/out.onnx: cannot write in /proc"),
        ("out.onnx", "/proc/r.json", "/proc/r.json: cannot write in /proc"),
        ("folder", "r.json", "folder: is a folder"),
    ],
)
def test_prepare_outputs_refuses(tmp_path, output, report, text):
    model = test_graphs.save(test_graphs.build("external_data"), tmp_path / "ext.onnx")
    (tmp_path / "file").write_text("")
    (tmp_path / "folder").mkdir()
    before = files(tmp_path)
    with pytest.raises(UsageError, match=text):
        model_io.prepare_outputs(model, tmp_path / output, tmp_path / report, force=True)
    assert files(tmp_path) == before


@pytest.mark.parametrize("existing", ["out.onnx", "out.onnx.data", "out.json"])
def test_existing_outputs_need_force(conv, tmp_path, existing):
    (tmp_path / existing).write_text("previous")
    with pytest.raises(UsageError, match=f"{existing}: already exists; pass --force"):
        model_io.prepare_outputs(conv, tmp_path / "out.onnx", tmp_path / "out.json", force=False)
    model_io.prepare_outputs(conv, tmp_path / "out.onnx", tmp_path / "out.json", force=True)


@pytest.mark.parametrize("external_data", [False, True])
def test_write_outputs_writes_model_and_report_with_normal_modes(conv, tmp_path, external_data):
    model = model_io.load(conv)
    paths = model_io.prepare_outputs(conv, tmp_path / "q.onnx", tmp_path / "q.json", force=False)
    seen = []

    def report(final, total):
        seen.append((final, total, files(tmp_path)))
        return json.dumps({"files": [str(f) for f in final], "bytes": total})

    written = model_io.write_outputs(model, paths, report, external_data=external_data)
    expected = [paths.model, tmp_path.resolve() / "q.onnx.data"] if external_data else [paths.model]
    assert written == expected
    final, total, during = seen[0]
    assert final == expected and total == sum(f.stat().st_size for f in expected)
    assert "q.onnx" not in during and "q.json" not in during  # nothing in place before the report is made
    assert json.loads(paths.report.read_text())["bytes"] == total
    assert files(tmp_path) == sorted(["conv.onnx", "q.json", *(f.name for f in expected)])
    for f in [*expected, paths.report]:
        assert f.stat().st_mode & 0o777 == new_file_mode(tmp_path), f
    onnx.checker.check_model(str(paths.model))


def test_report_write_has_a_normal_mode(tmp_path):
    path = tmp_path / "r.json"
    Report(tool_version="0", input={"path": "m.onnx"}, warnings=["w"]).write(path)
    assert path.stat().st_mode & 0o777 == new_file_mode(tmp_path)
    assert json.loads(path.read_text())["warnings"] == ["w"]
    assert files(tmp_path) == ["r.json"]


@pytest.mark.parametrize("error", [OnnxbcError("over the --max-size budget"), KeyboardInterrupt()])
def test_a_failing_report_leaves_nothing_new(conv, tmp_path, error):
    (tmp_path / "q.onnx").write_bytes(b"previous model")
    (tmp_path / "q.json").write_text("previous report")
    model = model_io.load(conv)
    paths = model_io.prepare_outputs(conv, tmp_path / "q.onnx", tmp_path / "q.json", force=True)

    def report(final, total):
        raise error

    with pytest.raises(type(error)):
        model_io.write_outputs(model, paths, report, external_data=True)
    assert files(tmp_path) == ["conv.onnx", "q.json", "q.onnx"]
    assert (tmp_path / "q.onnx").read_bytes() == b"previous model"
    assert (tmp_path / "q.json").read_text() == "previous report"


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("failing", ["model", "report"])
def test_disk_full_is_one_line_naming_the_path(conv, tmp_path, monkeypatch, failing):
    model = model_io.load(conv)
    paths = model_io.prepare_outputs(conv, tmp_path / "q.onnx", tmp_path / "q.json", force=False)
    if failing == "model":
        real_save = ir.save

        def save_then_fail(model, path, **kwargs):
            real_save(model, path, **kwargs)  # a partial file on disk, then the error
            no_space()

        monkeypatch.setattr(ir, "save", save_then_fail)
    else:
        monkeypatch.setattr(model_io.Path, "write_text", no_space)
    with pytest.raises(OnnxbcError) as e:
        model_io.write_outputs(model, paths, lambda final, total: "{}")
    destination = paths.model if failing == "model" else paths.report
    assert str(e.value) == f"{destination}: no space left on device"
    assert files(tmp_path) == ["conv.onnx"]


def test_stale_temporaries_of_killed_runs_are_removed(conv, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # exited: no process has this pid now (reuse within the test is unlikely)
    stale_folder = tmp_path / f".q.onnx.{pid}.0a1b2c3d.tmp"
    stale_folder.mkdir()
    (stale_folder / "q.onnx").write_bytes(b"half a model")
    stale_report = tmp_path / f".q.json.{pid}.0a1b2c3d.tmp"
    stale_report.write_text("{")
    running = tmp_path / f".q.onnx.{os.getpid()}.0a1b2c3d.tmp"  # a live process (this one) is writing it
    running.mkdir()
    other = tmp_path / f".other.onnx.{pid}.0a1b2c3d.tmp"  # not an output of this run
    other.write_text("")
    model_io.prepare_outputs(conv, tmp_path / "q.onnx", tmp_path / "q.json", force=False)
    assert files(tmp_path) == sorted(["conv.onnx", running.name, other.name])


def layer(name, op, weight, inputs, fit, holdout, delta):
    def error(before_after):
        return {"rel_mse_before": before_after[0], "rel_mse_after": before_after[1]}

    return LayerRecord(
        name,
        op,
        "weighted",
        "quantized",
        weight=weight,
        activations=[{"dtype": d} for d in inputs],
        error={"fit": error(fit), "holdout": error(holdout)},
        bias={"applied": True, "site": "Add 'a_rather_long_add_node_name' constant", "delta_norm": delta},
    )


def sample_report():
    layers = [
        layer(
            "/model/encoder/layers.11/self_attention/query_projection/MatMul",
            "MatMul",
            {"bits": 4, "granularity": "block128"},
            ["int8"],
            (3.0912e-2, 1.2345e-3),
            (3.3011e-2, 1.3456e-3),
            0.01234,
        ),
        layer(
            "decoder.up[0]",
            "ConvTranspose",
            {"bits": 8, "granularity": "channel"},
            ["int8", "int8"],
            (9.87e-5, 5.4321e-6),
            (1.0e-4, 6.0e-6),
            123.45,
        ),
    ]
    layers.append(LayerRecord("lstm", "LSTM", "other", "skipped", reason="recurrent [state] not quantized"))
    return Report(tool_version="0", input={"path": "m.onnx"}, layers=layers, warnings=["calibrated on random data"])


@pytest.mark.parametrize("width", [80, 100, 120, 200])
def test_layer_table_never_folds_numbers(width):
    console = Console(width=width, file=io.StringIO())
    sample_report().print_summary(console)
    text = console.file.getvalue()
    lines = text.splitlines()
    assert max(map(len, lines)) <= width
    numbers = re.findall(r"\d\.\d\de[-+]\d\d", text)
    for value in ("3.30e-02", "1.35e-03", "1.00e-04", "6.00e-06", "1.23e-02", "1.23e+02"):
        assert value in numbers, (value, text)
    for line in lines:  # a number cut at the edge of a cell would leave its head or tail
        assert not re.search(r"\d\.\d*(e[-+]?\d?)?…|\d\.\d\de[-+]?\d?(\s|│|$)", line), line
    assert "/model/encoder" in text and "decoder.up[0]" in text
    assert "left float lstm (LSTM): recurrent [state] not quantized" in text
    assert "warning" not in text  # the CLI prints warnings, on stderr
    if width >= 200:
        assert "3.09e-02 → 1.23e-03" in text and "Add 'a_rather_long_add_node_name' constant" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["-o", "/proc/out.onnx"], "/proc/out.onnx: cannot write in /proc"),
        (["-o", "{tmp}/m.onnx", "--report", "{tmp}/m.onnx"], "the report path is the output model"),
        (["-o", "{tmp}/m.onnx", "--report", "{model}"], "the report path is the input model"),
    ],
)
def test_compress_refuses_outputs_before_any_work(conv, tmp_path, args, message):
    """One error line, exit 2, no progress line (nothing was calibrated), and the folder as it was."""
    before = files(tmp_path)
    args = [a.format(tmp=tmp_path, model=conv) for a in args]
    r = subprocess.run(
        [sys.executable, "-m", "onnxbc", "compress", conv, "--random-data", "--samples", "4", *args],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.splitlines() == [r.stderr.splitlines()[-1]], r.stderr
    assert message in r.stderr and r.stderr.startswith("error: ")
    assert files(tmp_path) == before
