"""onnxbc: post-training quantization of ONNX models with closed-form bias compensation.

Python API (the CLI does the same)::

    import onnxbc
    result = onnxbc.compress("model.onnx", data=onnxbc.DataOptions(path="calib.npz"),
                             options=onnxbc.CompressOptions(weights=onnxbc.WeightType.INT4))
    print(result.output, result.report.outputs)
"""

__version__ = "0.1.0"

from onnxbc import options as _options
from onnxbc.bench import BenchOptions, BenchReport, bench
from onnxbc.calibration.preprocess import ImageFolder, TokenWindows
from onnxbc.compare import compare_models
from onnxbc.errors import OnnxbcError, UsageError
from onnxbc.options import *  # noqa: F403 (the typed options are the API: options.__all__)
from onnxbc.pipeline import CompressResult, compress
from onnxbc.validate import check

__all__ = [
    *_options.__all__,
    "BenchOptions",
    "BenchReport",
    "CompressResult",
    "ImageFolder",
    "TokenWindows",
    "OnnxbcError",
    "UsageError",
    "__version__",
    "bench",
    "check",
    "compare_models",
    "compress",
]
