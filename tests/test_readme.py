"""Every command and code block in README.md runs, so the README cannot rot; the demo meets its bar."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


COMMANDS = [line for block in blocks("console") for line in block.splitlines() if line.startswith("onnxbc ")]


def test_readme_has_commands():
    assert len(COMMANDS) >= 3 and any("make demo" in b for b in blocks("console"))


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_runs(command):
    (REPO / "build" / "readme").mkdir(parents=True, exist_ok=True)
    args = command.split()[1:]
    r = subprocess.run([sys.executable, "-m", "onnxbc", *args], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_readme_python_block_runs():
    (REPO / "build" / "readme").mkdir(parents=True, exist_ok=True)
    for code in blocks("python"):
        subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True)


def test_demo_w8a8_within_half_a_point_of_fp32(tmp_path):
    """The issue's bar for the bundled CNN: W8A8 top-1 within 0.5 points of FP32 on the eval split."""
    out = tmp_path / "cnn.int8.onnx"
    cmd = [
        sys.executable,
        "-m",
        "onnxbc",
        "compress",
        "models/fashion_cnn.onnx",
        "--data",
        "models/data/fashion_calib.npz",
        "-o",
        out,
    ]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    demo = subprocess.run(
        [sys.executable, "-m", "models.fashion_demo", "models/fashion_cnn.onnx", out],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    fp32, exact, fused = (float(v) for v in re.findall(r"top-1 ([\d.]+)%", demo.stdout))
    assert abs(exact - fp32) <= 0.5 and abs(fused - fp32) <= 0.5, demo.stdout
