"""Models as callers hold them: a file path, an ``onnx.ModelProto``, an ``onnx_ir.Model`` or an
onnx-graphsurgeon ``gs.Graph`` (``onnxbc.graphsurgeon``).

``read`` gives onnxbc's working copy (the caller's object is never changed); ``give_back`` returns a model in
the kind the caller handed in. Paths are read by ``model_io.load``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import onnx_ir as ir

from onnxbc import graphsurgeon, model_io
from onnxbc.errors import UsageError, display_path

# a path, an onnx.ModelProto, an onnx_ir.Model or a gs.Graph
ModelLike = Union[str, os.PathLike, ir.Model, Any]  # noqa: UP007


def is_path(model: ModelLike) -> bool:
    return isinstance(model, (str, os.PathLike))


def describe(model: ModelLike) -> str:
    """How messages and the report name the model."""
    if is_path(model):
        return display_path(Path(model))
    return f"<{_kind(model)} in memory>"


def read(model: ModelLike, *, check: bool = True) -> ir.Model:
    """The working copy of ``model`` (checked by onnx.checker unless ``check=False``)."""
    if is_path(model):
        return model_io.load(model, check=check)
    if isinstance(model, ir.Model):
        return model.clone()
    if model_io.is_proto(model):
        return model_io.from_proto(model, check=check)
    if graphsurgeon.is_graph(model):
        return model_io.from_proto(graphsurgeon.to_proto(model), check=check)
    raise UsageError(
        f"a model is a path, an onnx.ModelProto, an onnx_ir.Model or an onnx-graphsurgeon Graph, not {type(model)}"
    )


def give_back(model: ir.Model, like: ModelLike) -> Any:
    """``model`` in the kind of ``like`` (an onnx_ir model for a path)."""
    if model_io.is_proto(like):
        return model_io.to_proto(model)
    if graphsurgeon.is_graph(like):
        return graphsurgeon.from_proto(model_io.to_proto(model))
    return model


def _kind(model: ModelLike) -> str:
    if isinstance(model, ir.Model):
        return "onnx_ir.Model"
    if model_io.is_proto(model):
        return "onnx.ModelProto"
    if graphsurgeon.is_graph(model):
        return "gs.Graph"
    return type(model).__name__
