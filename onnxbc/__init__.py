"""onnxbc: post-training quantization of ONNX models with closed-form bias compensation.

Python API (the CLI does the same)::

    import onnxbc
    result = onnxbc.compress("model.onnx", data=onnxbc.DataOptions(path="calib.npz"),
                             options=onnxbc.CompressOptions(weights=onnxbc.WeightType.INT4))
    print(result.output, result.report.outputs)
"""

__version__ = "0.1.0"

from onnxbc.errors import OnnxbcError, UsageError
from onnxbc.options import (
    ActivationType,
    BiasCorrection,
    BiasShape,
    CheckOptions,
    CompressOptions,
    DataOptions,
    Device,
    ErrorMetric,
    OutputFormat,
    RangeMethod,
    Rounding,
    Target,
    WeightType,
)
from onnxbc.pipeline import CompressResult, compress
from onnxbc.validate import check

__all__ = [
    "ActivationType",
    "BiasCorrection",
    "BiasShape",
    "CheckOptions",
    "CompressOptions",
    "CompressResult",
    "DataOptions",
    "Device",
    "ErrorMetric",
    "OnnxbcError",
    "OutputFormat",
    "RangeMethod",
    "Rounding",
    "Target",
    "UsageError",
    "WeightType",
    "__version__",
    "check",
    "compress",
]
