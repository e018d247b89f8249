"""The wheel, not the editable install: `passes/` must ship as `onnxbc.passes`, and the CLI must run."""

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_installs_in_a_fresh_venv(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "onnxbc", "passes"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(
            REPO / name,
            src / name,
            **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}),
        )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", src], check=True)
    wheel = next((tmp_path / "dist").glob("onnxbc-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "onnxbc/passes/qdq.py" in names and "onnxbc/solvers/bias.py" in names
    requires = [
        line.split()[1].split(">")[0].split("=")[0]
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:") and "extra" not in line
    ]
    assert {"onnx", "onnx-ir", "onnxscript", "onnxruntime-gpu", "numpy", "onnx-graphsurgeon", "typer", "rich"} <= set(
        requires
    )
    assert not {"torch", "transformers", "onnxruntime"} & set(requires)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    subprocess.run([*pip, "--python", python, "install", "--no-deps", "--no-index", wheel], check=True)
    # The dependencies come from this environment (already installed; no second download of onnxruntime):
    # a .pth line adds its site-packages after the new venv's own, where the wheel's onnxbc now lives.
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    probe = "import onnxbc, onnxbc.passes; from onnxbc.passes import InsertQDQPass; print(onnxbc.__file__)"
    result = subprocess.run([python, "-c", probe], capture_output=True, text=True, cwd=tmp_path)  # not the source tree
    assert result.returncode == 0, result.stderr
    where = result.stdout.strip()
    assert where.startswith(str(venv)), where
    help_text = subprocess.run(
        [venv / "bin" / "onnxbc", "compress", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--bias-correction" in help_text
