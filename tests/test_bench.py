"""onnxbc bench: latency in ONNX Runtime's default session, the models interleaved on the same samples.

No assertion on how fast anything is (the machine is shared): only that the report is consistent with the runs
it counts, that the statistics are those of its latencies, and that bad input is one line with its exit code."""

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper
from typer.testing import CliRunner

import onnxbc
from onnxbc.bench import BenchOptions, parse_machine
from onnxbc.cli import app
from onnxbc.errors import OnnxbcError, UsageError
from onnxbc.options import CompressOptions, DataOptions, Device

FASHION = "models/fashion_cnn.onnx"
CALIB = "models/data/fashion_calib.npz"
EVAL = "models/data/fashion_eval.npz"
FAST = ["--rounds", 3, "--warmup", 1, "--samples", 32, "--batch-size", 8, "--device", "cpu", "-q"]


def onnxbc_cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """The bundled CNN, W8A8 on 32 calibration samples."""
    out = tmp_path_factory.mktemp("bench") / "cnn.int8.onnx"
    onnxbc.compress(FASHION, out, data=DataOptions(path=CALIB, samples=32), options=CompressOptions())
    return out


def one_line_error(result, code, text):
    assert result.exit_code == code, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]  # progress lines aside
    assert len(errors) == 1 and text in errors[0] and "Traceback" not in result.stderr, result.stderr


def test_cli_json_is_consistent_with_its_runs(quantized, tmp_path):
    path = tmp_path / "bench.json"
    r = onnxbc_cli("bench", FASHION, quantized, "--data", EVAL, *FAST, "--json", path)
    assert r.exit_code == 0, r.stderr
    report = json.loads(path.read_text())
    assert report["schema"] == "onnxbc.bench/1" and report["onnxruntime"]["session"] == "default"
    assert report["options"] == {"rounds": 3, "warmup": 1, "threads": 0, "device": "cpu"}
    assert report["data"] == {"source": EVAL, "samples_per_round": 32, "runs_per_round": 4, "batch_size": 8}
    assert set(report["machine"]) == {"cpu", "cores", "usable_cores", "vnni", "vnni_flags", "platform"}
    threads = report["onnxruntime"]["threads"]
    assert threads is None or 1 <= threads <= report["machine"]["cores"]  # ORT's default: one per physical core
    first, second = report["models"]
    assert [first["model"], second["model"]] == [FASHION, str(quantized)]
    assert first["ratio"] == 1.0
    assert second["ratio"] == pytest.approx(second["median_ms"] / first["median_ms"], rel=1e-3)
    for m in report["models"]:
        assert m["provider"] == "CPUExecutionProvider" and m["runs"] == 3 * 4
        assert m["min_ms"] <= m["q1_ms"] <= m["median_ms"] <= m["q3_ms"] <= m["max_ms"]
        assert m["iqr_ms"] == pytest.approx(m["q3_ms"] - m["q1_ms"], abs=2e-4)
        # throughput comes from the median round, 4 runs: between the fastest and the slowest possible round
        assert 32 / (4 * m["max_ms"] / 1e3) <= m["samples_per_s"] <= 32 / (4 * m["min_ms"] / 1e3)
    lines = r.stdout.splitlines()
    assert any(line.startswith(FASHION) and line.endswith("1.00x") for line in lines)
    assert "VNNI" in r.stdout and "default session, CPUExecutionProvider" in r.stdout
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("model ")) :]
    assert len(table) == 4 and max(map(len, table)) <= 80  # header, two models, the note on ratios


def test_cli_json_on_stdout_and_random_data():
    r = onnxbc_cli("bench", FASHION, "--random-data", "--samples", 10, "--batch-size", 4, "--json", "-", *FAST[:4])
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)  # the JSON alone, no table
    (model,) = report["models"]
    # the last batch of 2 is left out: one latency is always one batch size
    assert report["data"]["samples_per_round"] == 8 and report["data"]["runs_per_round"] == 2
    assert model["runs"] == 3 * 2 and report["data"]["source"].startswith("random data")


def test_long_model_names_keep_their_end(quantized, tmp_path):
    deep = tmp_path.joinpath(*["a_rather_long_folder_name"] * 4)
    deep.mkdir(parents=True)
    (deep / "cnn.int8.onnx").write_bytes(quantized.read_bytes())
    r = onnxbc_cli("bench", FASHION, deep / "cnn.int8.onnx", "--data", EVAL, *FAST)
    assert r.exit_code == 0, r.stderr
    (row,) = [line for line in r.stdout.splitlines() if line.startswith("...")]
    assert len(row) <= 80 and "/cnn.int8.onnx " in row


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["models/none.onnx", "--data", EVAL], 2, "no such file"),
        ([FASHION], 2, "pass --data PATH, or --random-data"),
        ([FASHION, "--data", EVAL, "--rounds", 0], 2, "--rounds must be at least 1"),
        ([FASHION, "--data", EVAL, "--warmup", -1], 2, "--warmup must be 0 or more"),
        ([FASHION, "--data", EVAL, "--threads", -2], 2, "--threads must be 0"),
        ([FASHION, "--data", "models/data/none.npz"], 2, "no such file or folder"),
        ([FASHION, "--data", EVAL, "--json", "no/such/folder/b.json"], 2, "does not exist"),
    ],
)
def test_cli_errors_are_one_line(args, code, text):
    one_line_error(onnxbc_cli("bench", *args, "--device", "cpu"), code, text)


def test_models_with_other_inputs_are_refused(zoo):
    other, _, _ = zoo("conv")
    r = onnxbc_cli("bench", FASHION, other, "--data", EVAL, "--device", "cpu")
    one_line_error(r, 2, "take different inputs")
    assert "'input' float32[N,1,28,28]" in r.stderr or "'input'" in r.stderr


def test_a_model_that_fails_at_run_time_is_named(tmp_path):
    """A Reshape to a fixed [2, 4] loads, and fails on a batch of 4: exit 1, the model named."""
    shape = helper.make_tensor("shape", onnx.TensorProto.INT64, [2], [2, 4])
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")],
        "fixed",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4])],
        [shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, tmp_path / "fixed.onnx")
    np.savez(tmp_path / "x.npz", x=np.ones((8, 4), np.float32))
    r = onnxbc_cli("bench", tmp_path / "fixed.onnx", "--data", tmp_path / "x.npz", "--batch-size", 4, "--device", "cpu")
    one_line_error(r, 1, "fixed.onnx: ONNX Runtime cannot run it")


def test_in_memory_models_through_the_python_api(quantized):
    float_model = onnx.load(FASHION)
    samples = np.load(EVAL)["input"][:24]
    report = onnxbc.bench(
        [float_model, ir.load(quantized)],
        {"input": samples},
        BenchOptions(rounds=4, warmup=0, threads=1, device=Device.CPU),
    )
    first, second = report.models
    assert [first.model, second.model] == ["<onnx.ModelProto in memory>", "<onnx_ir.Model in memory>"]
    assert report.threads == 1 and report.batch_size == 16 and first.samples_per_round == 16  # 24: one batch of 16
    for t in report.models:
        latencies = np.array(t.latencies_s)
        assert len(latencies) == 4 * t.runs_per_round == 4
        assert t.median_s == np.median(latencies) and t.iqr_s == pytest.approx(
            np.subtract(*np.percentile(latencies, [75, 25]))
        )
        assert t.throughput == pytest.approx(16 / np.median(latencies))
    assert report.ratio(first) == 1.0 and report.ratio(second) == second.median_s / first.median_s
    assert report.to_dict()["models"][1]["model"] == "<onnx_ir.Model in memory>"
    assert onnx.load(FASHION) == float_model  # the caller's model is not touched


@pytest.mark.parametrize("name", ["external_data", "recurrent_state", "if_conv", "constant_weights"])
def test_models_as_found_in_the_wild(zoo, name):
    """External data next to the model, whole feeds (one sample per run), weights in If branches and in
    Constant nodes: each model runs as ONNX Runtime loads it."""
    path, data, graph = zoo(name, samples=6)
    report = onnxbc.bench([path, path], DataOptions(path=data, batch_size=4), BenchOptions(rounds=2, warmup=1))
    runs = 1 if graph.batched else 6  # 6 samples: one batch of 4 (the last 2 left out), or 6 whole feeds
    assert report.batch_size == (4 if graph.batched else 1)
    assert [len(t.latencies_s) for t in report.models] == [2 * runs, 2 * runs]


def test_python_api_refuses_bad_arguments():
    with pytest.raises(UsageError, match="list of models"):
        onnxbc.bench(FASHION, DataOptions(path=EVAL))
    with pytest.raises(UsageError, match="list of models"):
        onnxbc.bench([], DataOptions(path=EVAL))
    once = BenchOptions(rounds=1, warmup=0, device=Device.CPU)
    assert (
        len(onnxbc.bench((m for m in [FASHION]), DataOptions(path=EVAL, samples=16), once).models) == 1
    )  # any iterable
    with pytest.raises(UsageError, match="--rounds"):
        BenchOptions(rounds=0)
    assert BenchOptions(device="cpu").device is Device.CPU
    assert issubclass(UsageError, OnnxbcError)


X86 = "fpu vme avx2 avx512f"
VNNI = ("avx512_vnni", "avx_vnni")
CPUINFO = "processor\t: 0\nmodel name\t: {name}\nflags\t\t: {flags}\n\nprocessor\t: 1\nmodel name\t: other\n"


@pytest.mark.parametrize(
    ("cpuinfo", "arch", "cpu", "vnni", "flags"),
    [
        (CPUINFO.format(name="Xeon", flags=f"{X86} avx512_vnni avx_vnni"), "x86_64", "Xeon", True, VNNI),
        (CPUINFO.format(name="Xeon", flags=f"{X86} avx_vnni"), "x86_64", "Xeon", True, ("avx_vnni",)),
        (CPUINFO.format(name="EPYC", flags=X86), "x86_64", "EPYC", False, ()),
        ("processor\t: 0\nFeatures\t: fp asimd asimddp\nCPU part\t: 0xd0c\n", "aarch64", None, None, ()),
        ("", "x86_64", None, None, ()),  # no /proc/cpuinfo: macOS, Windows
    ],
)
def test_machine_says_vnni_only_when_it_knows(cpuinfo, arch, cpu, vnni, flags):
    m = parse_machine(cpuinfo, arch, cores=4, usable_cores=2)
    assert (m.vnni, m.vnni_flags) == (vnni, flags)
    assert m.cpu == cpu if cpu else m.cpu  # elsewhere: the name Python knows, never empty
    expected = {True: f"VNNI yes ({', '.join(flags)})", False: "VNNI no", None: "VNNI unknown"}[vnni]
    assert m.describe().endswith(f"4 cores (2 usable), {expected}")
