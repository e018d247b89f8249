"""The rows of the matrix: which tool, with which options, for which settings and models."""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Mapping
from typing import Any

from benchmarks.settings import Setting

# nncf's ModelType.TRANSFORMER rows run on these models only
TRANSFORMERS = ("chargpt", "minilm", "smollm2")


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    tool: str  # module in benchmarks.tools
    requires: str  # the package that must be importable
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # keyword arguments of quantize()
    kind: str = "all"  # "a8": settings with int8 activations only; "weight_only"; "all"
    transformers_only: bool = False
    slow_on: tuple[str, ...] = ()  # models where this row belongs to the slow tier (run with --slow)
    description: str = ""

    def applies_to(self, setting: Setting) -> bool:
        return self.kind == "all" or (self.kind == "weight_only") == setting.weight_only

    def missing_package(self) -> str | None:
        try:
            found = importlib.util.find_spec(self.requires) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        return None if found else self.requires


FP32 = "fp32"
# One pass over the calibration data per wave of layers: 7-12 minutes per setting on PP-OCR (README).
SEQUENTIAL_SLOW_ON = ("ppocr_rec", "smollm2")

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "ort_static", "ort", "onnxruntime.quantization", {}, "a8", description="quantize_static, default op types"
        ),
        Method(
            "ort_static_weighted",
            "ort",
            "onnxruntime.quantization",
            {"op_types": ("Conv", "Gemm", "MatMul")},
            "a8",
            description="quantize_static, op_types_to_quantize=[Conv, Gemm, MatMul]",
        ),
        Method("ort_nbits", "ort", "onnxruntime.quantization", {}, "weight_only", description="MatMulNBitsQuantizer"),
        Method("nncf", "nncf_tool", "nncf", {}, "a8", description="nncf.quantize, defaults"),
        Method(
            "nncf_transformer",
            "nncf_tool",
            "nncf",
            {"model_type": "transformer"},
            "a8",
            transformers_only=True,
            description="nncf.quantize, model_type=TRANSFORMER",
        ),
        Method("nncf_cw", "nncf_tool", "nncf", {}, "weight_only", description="nncf.compress_weights INT4_SYM"),
        Method(
            "onnxbc_none", "onnxbc_tool", "onnxbc", {"bias_correction": "none"}, description="--bias-correction none"
        ),
        Method("onnxbc_independent", "onnxbc_tool", "onnxbc", {}, description="onnxbc defaults"),
        Method(
            "onnxbc_sequential",
            "onnxbc_tool",
            "onnxbc",
            {"bias_correction": "sequential"},
            slow_on=SEQUENTIAL_SLOW_ON,
            description="--bias-correction sequential",
        ),
        Method(
            "onnxbc_gptq",
            "onnxbc_tool",
            "onnxbc",
            {"rounding": "gptq"},
            kind="weight_only",
            description="--rounding gptq (MatMul/Gemm weights), independent compensation",
        ),
        Method(
            "onnxbc_position",
            "onnxbc_tool",
            "onnxbc",
            {"bias_shape": "position"},
            description="--bias-shape position",
        ),
    )
}

# The reference rows of a setting for the time and memory ratios: the first one that ran.
BASELINES = {"a8": ("ort_static", "ort_static_weighted"), "weight_only": ("ort_nbits",)}


def baselines(setting: Setting) -> tuple[str, ...]:
    return BASELINES["weight_only" if setting.weight_only else "a8"]
