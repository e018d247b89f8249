"""PP-OCRv4 rec at W4A8: uniform int4 against ``--avg-bits 4.5`` with measured and with layer (closed-form) prices.

    python -m benchmarks.ppocr_mixed     # about 20 min on 2 cores -> results/ppocr_mixed.json

Measured as ``benchmarks.mixed`` measures (the zoo's evaluation, the graph computed as written). The README's
PP-OCR mixed-precision finding comes from this script.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import onnxbc
from benchmarks import runner
from benchmarks.mixed import average_bits, measure, weight_bits
from benchmarks.settings import calibration_arrays, sample_count
from benchmarks.zoo import DEFAULT_CACHE, MODELS

VARIANTS = {
    "int4": {"weights": onnxbc.WeightType.INT4},
    "mixed4.5-measured": {"avg_bits": 4.5},
    "mixed4.5-closed-form": {"avg_bits": 4.5, "price_measured": False},
}


def main() -> None:
    module = MODELS["ppocr_rec"]
    bench = module.prepare(DEFAULT_CACHE)
    data = onnxbc.DataOptions(path=bench.calib_path, samples=sample_count(calibration_arrays(bench)))
    rows = {}
    with tempfile.TemporaryDirectory(prefix="onnxbc-ppocr-") as tmp:
        work = Path(tmp)
        reference = work / "fp32.npy"
        rows["fp32"] = measure(module, bench, bench.onnx_path, reference, save=True)
        for key, options in VARIANTS.items():
            start = time.perf_counter()
            options = onnxbc.CompressOptions(device=onnxbc.Device.CPU, **options)
            result = onnxbc.compress(bench.onnx_path, work / f"{key}.onnx", data=data, options=options, force=True)
            report = result.report.to_dict()
            row = measure(module, bench, result.output, reference)
            row.update(
                compress_s=round(time.perf_counter() - start, 1),
                avg_bits=average_bits(weight_bits(report)[0]),
                saved=report["compensation"].get("chosen", report["compensation"]["applied"]),
            )
            row.pop("path", None)
            rows[key] = row
            print(key, row["metrics"], f"rel. MSE {row['rel_mse']:.3g}", row["saved"], flush=True)
    out = runner.RESULTS_DIR / "ppocr_mixed.json"
    out.write_text(json.dumps({"source": runner.source_state(), "rows": rows}, indent=1, default=str) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
