"""onnxbc check from the command line on the models a CI gate meets besides quantized ones: a float model
(passes, with a warning that nothing is quantized), a file that cannot be read (a failing report in the
asked format all the same, exit code 2) and a path that is not UTF-8."""

import json
import os
import shutil
import xml.etree.ElementTree as ET

import onnx
import pytest
from typer.testing import CliRunner

from models import test_graphs
from onnxbc import validate
from onnxbc.cli import app
from onnxbc.options import CheckOptions, Target
from onnxbc.validate import Status


def onnxbc_cli(*args):
    return CliRunner().invoke(app, [os.fsdecode(a) if isinstance(a, os.PathLike) else str(a) for a in args])


def float_model(tmp_path):
    return test_graphs.save(test_graphs.build("conv"), tmp_path / "float.onnx")


def junit_cases(text):
    suite = ET.fromstring(text).find("testsuite")
    return suite, {c.get("name"): c for c in suite.findall("testcase")}


# ------------------------------------------------------------------------------------------------------------
# A float model: every rule passes, model.quantized warns


def test_float_model_warns_in_every_format(tmp_path):
    path = float_model(tmp_path)
    text = onnxbc_cli("check", path, "--target", "tensorrt")
    assert text.exit_code == 0, text.stdout
    assert "  WARN  model.quantized\n        no QuantizeLinear/DequantizeLinear" in text.stdout
    assert "nothing is quantized" in text.stdout and text.stdout.strip().endswith("1 warned, 0 failed, 3 skipped")
    assert "model.quantized" not in text.stderr  # said once, in the report
    quiet = onnxbc_cli("check", path, "--output", tmp_path / "r.txt", "--quiet")
    assert quiet.exit_code == 0 and quiet.stdout.startswith("PASSED: ")
    assert "warning: model.quantized: no QuantizeLinear" in quiet.stderr  # survives --quiet
    assert "WARN  model.quantized" in (tmp_path / "r.txt").read_text()

    js = onnxbc_cli("check", path, "--target", "tensorrt", "--format", "json")
    assert js.exit_code == 0
    report = json.loads(js.stdout)
    assert report["passed"] is True and report["summary"]["warned"] == 1
    (rule,) = [r for r in report["rules"] if r["id"] == "model.quantized"]
    assert rule["status"] == "warned" and rule["profile"] == "model"
    (finding,) = rule["findings"]
    assert finding["failed"] is False and "nothing is quantized" in finding["message"]
    assert "warning: model.quantized: no QuantizeLinear" in js.stderr  # CI logs see it though stdout is JSON

    junit = onnxbc_cli("check", path, "--target", "tensorrt", "--format", "junit")
    assert junit.exit_code == 0
    suite, cases = junit_cases(junit.stdout)
    assert suite.get("failures") == "0"
    case = cases["model.quantized"]
    assert case.find("failure") is None and case.find("skipped") is None
    assert case.find("system-err").text.startswith("warning: no QuantizeLinear/DequantizeLinear")


def test_quantized_model_does_not_warn(tmp_path):
    path = test_graphs.save(test_graphs.build("quantized_qdq"), tmp_path / "q.onnx")
    report = validate.check(path)
    assert next(r for r in report.results if r.rule.id == "model.quantized").status is Status.PASSED
    assert report.warnings == []


def test_ignore_model_quantized(tmp_path):
    r = onnxbc_cli("check", float_model(tmp_path), "--ignore", "model.quantized", "--format", "json")
    assert r.exit_code == 0 and "model.quantized" not in r.stderr
    assert json.loads(r.stdout)["summary"]["warned"] == 0


# ------------------------------------------------------------------------------------------------------------
# A model file that cannot be read: a report all the same, exit code 2


def _truncated(tmp_path):
    whole = test_graphs.save(test_graphs.build("conv"), tmp_path / "whole.onnx").read_bytes()
    return whole[: len(whole) // 2]


UNREADABLE = {
    "missing": (None, "no such file"),
    "garbage": (lambda tmp: os.urandom(4096), "not a readable ONNX model"),
    "text": (lambda tmp: b"hello, this is not a model\n", "not"),
    "truncated": (_truncated, "not a readable ONNX model"),
    "empty": (lambda tmp: b"", "not an ONNX model"),
    "folder": ("folder", "not a file"),
}


def unreadable(tmp_path, kind):
    make, named = UNREADABLE[kind]
    path = tmp_path / "model.onnx"
    if make == "folder":
        path.mkdir()
    elif make is not None:
        path.write_bytes(make(tmp_path))
    return path, named


@pytest.mark.parametrize("kind", UNREADABLE)
def test_unreadable_model_is_a_failing_json_report(tmp_path, kind):
    path, named = unreadable(tmp_path, kind)
    r = onnxbc_cli("check", path, "--target", "tensorrt", "--format", "json")
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert "internal error" not in r.stderr
    report = json.loads(r.stdout)
    assert report["passed"] is False and report["model"] == str(path)
    rules = {rule["id"]: rule for rule in report["rules"]}
    assert list(rules) == list(validate.RULE_IDS)
    load = rules["model.load"]
    assert load["status"] == "failed" and len(load["findings"]) == 1 and load["findings"][0]["failed"]
    assert named in load["findings"][0]["message"] and str(path) in load["findings"][0]["message"]
    assert report["summary"] == {"passed": 0, "warned": 0, "failed": 1, "skipped": len(rules) - 1}
    reasons = {rule["reason"] for i, rule in rules.items() if i != "model.load"}
    assert reasons == {"model.load failed", "target is tensorrt", "no --reference"}


@pytest.mark.parametrize("kind", ["missing", "garbage", "truncated"])
def test_unreadable_model_is_a_failing_junit_report_in_the_output_file(tmp_path, kind):
    path, named = unreadable(tmp_path, kind)
    out = tmp_path / "check.xml"
    r = onnxbc_cli("check", path, "--format", "junit", "--output", out)
    assert r.exit_code == 2, r.stderr
    assert "FAIL  model.load" in r.stdout  # the text report goes to the log
    suite, cases = junit_cases(out.read_text())
    assert list(cases) == list(validate.RULE_IDS)
    assert suite.get("failures") == "1" and suite.get("skipped") == str(len(cases) - 1)
    failure = cases["model.load"].find("failure")
    assert failure.get("type") == "model.load" and named in failure.get("message")


def test_unreadable_model_text_report(tmp_path):
    r = onnxbc_cli("check", tmp_path / "none.onnx")
    assert r.exit_code == 2
    assert f"  FAIL  model.load\n        {tmp_path / 'none.onnx'}: no such file" in r.stdout
    assert "  skip  onnx.checker (model.load failed)" in r.stdout
    assert r.stdout.strip().endswith(f"FAILED: 0 passed, 0 warned, 1 failed, {len(validate.RULE_IDS) - 1} skipped")


def test_model_load_cannot_be_ignored(tmp_path):
    r = onnxbc_cli("check", tmp_path / "none.onnx", "--ignore", "model.load")
    assert r.exit_code == 2 and "model.load cannot be ignored" in r.stderr and not r.stdout


def test_python_api_returns_the_failing_report(tmp_path):
    report = validate.check(tmp_path / "none.onnx", CheckOptions(target=Target.TENSORRT))
    assert not report.passed and report.exit_code == 2
    assert [r.rule.id for r in report.results if r.status is Status.FAILED] == ["model.load"]


def test_a_failing_rule_exits_1_and_an_unreadable_file_2(tmp_path):
    path = test_graphs.save(test_graphs.build("quantized_qdq"), tmp_path / "q.onnx")
    assert validate.check(path, CheckOptions(target=Target.TENSORRT)).exit_code == 1
    assert validate.check(path).exit_code == 0


# ------------------------------------------------------------------------------------------------------------
# Paths that are not UTF-8


@pytest.fixture
def odd_folder(tmp_path):
    folder = tmp_path / os.fsdecode(b"d\xff")
    try:
        folder.mkdir()
    except (OSError, UnicodeEncodeError):
        pytest.skip("the file system takes only UTF-8 names")
    return folder


def test_model_under_a_non_utf8_path(odd_folder, tmp_path):
    path = odd_folder / os.fsdecode(b"\xffm.onnx")
    shutil.copy(test_graphs.save(test_graphs.build("quantized_qdq"), tmp_path / "q.onnx"), path)
    report = validate.check(path, CheckOptions(target=Target.TENSORRT))
    statuses = {r.rule.id: r.status for r in report.results}
    assert statuses["model.load"] is statuses["onnx.checker"] is statuses["onnx.shape-inference"] is Status.PASSED
    assert statuses["trt.zero-point"] is Status.FAILED  # the rules ran on the model
    shown = report.model
    assert shown.endswith("d\\xff/\\xffm.onnx")

    for fmt, read in (
        ("text", lambda out: out),
        ("json", lambda out: json.loads(out)["model"]),
        ("junit", lambda out: ET.fromstring(out).find("testsuite").get("name")),
    ):
        r = onnxbc_cli("check", path, "--target", "tensorrt", "--format", fmt)
        assert r.exit_code == 1, (fmt, r.stdout, r.stderr)
        assert "internal error" not in r.stderr and "TypeError" not in r.stdout + r.stderr
        assert shown in read(r.stdout), fmt
    out = odd_folder / os.fsdecode(b"r\xff.json")
    r = onnxbc_cli("check", path, "--format", "json", "--output", out, "--quiet")
    assert r.exit_code == 0, r.stderr
    assert json.loads(out.read_text(encoding="utf-8"))["model"] == shown


def test_missing_model_under_a_non_utf8_path(odd_folder):
    path = odd_folder / os.fsdecode(b"\xffnone.onnx")
    r = onnxbc_cli("check", path, "--format", "json")
    assert r.exit_code == 2 and "internal error" not in r.stderr, r.stderr
    load = json.loads(r.stdout)["rules"][0]
    assert load["id"] == "model.load" and load["findings"][0]["message"].endswith("\\xffnone.onnx: no such file")


def test_checker_failure_is_still_a_rule_not_a_load_failure(tmp_path):
    """A model that onnx.checker rejects is read all the same: onnx.checker says why, exit code 1."""
    model = onnx.load(test_graphs.save(test_graphs.build("conv"), tmp_path / "conv.onnx"))
    model.graph.node[0].input[0] = "nowhere"
    onnx.save(model, tmp_path / "broken.onnx")
    r = onnxbc_cli("check", tmp_path / "broken.onnx", "--format", "json")
    assert r.exit_code == 1
    statuses = {rule["id"]: rule["status"] for rule in json.loads(r.stdout)["rules"]}
    assert statuses["model.load"] == "passed" and statuses["onnx.checker"] == "failed"
