"""Graph passes (onnx_ir): prepare a float model, insert quantizers, fold compensation biases."""

from onnxbc.passes.prepare import RaiseOpsetPass, prepare_passes, quantized_nodes
from onnxbc.passes.qdq import InsertQDQPass

__all__ = ["InsertQDQPass", "RaiseOpsetPass", "prepare_passes", "quantized_nodes"]
