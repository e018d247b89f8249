"""Padding in token inputs: statistics over the real tokens only.

Text models are calibrated on padded batches: a ``[batch, tokens]`` integer ``attention_mask`` is 1 at real
tokens and 0 at padding. The model's outputs ignore what its layers compute at padded positions (attention
masks them out, pooling and the loss skip them), yet every layer still computes there, so a range, a mean
error or a compensation bias taken over every position is in good part a statistic of padding (the zoo's
sentence encoder: 64 % of its calibration positions). Probes of tensors indexed ``[batch, tokens, ...]`` like
the mask therefore count only the positions where it is nonzero.

The mask is a graph input whose name says so (``attention_mask``, ``input_mask``, ``padding_mask``), of rank 2
and an integer or boolean type; float masks are left alone, since additive masks use 0 for the tokens that
count. A tensor is indexed like it when its first two dimensions are the mask's (the same number, or the same
named symbolic dimension).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

MASK_NAME = re.compile(r"(attention|input|padding)_?mask", re.IGNORECASE)
MASK_TYPES = frozenset({"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"})

Dim = int | str | None  # a size, a symbolic dimension's name, or unknown


def is_mask(name: str, dtype: str, shape: Sequence[Dim] | None) -> bool:
    """Whether a graph input (its name, its element type's name as numpy spells it) looks like a padding mask."""
    return bool(MASK_NAME.search(name)) and dtype in MASK_TYPES and shape is not None and len(shape) == 2


def covers(mask: Sequence[Dim] | None, shape: Sequence[Dim] | None) -> bool:
    """Whether a tensor of ``shape`` is indexed ``[batch, tokens, ...]`` like a mask of shape ``mask`` (and has
    axes after them)."""
    if mask is None or shape is None or len(shape) < 3:
        return False
    return all(a == b and a is not None for a, b in zip(mask, shape[:2]))


def mask_input(graph: ir.Graph) -> ir.Value | None:
    """The graph input that marks real tokens, when exactly one input looks like a padding mask."""
    found = [v for v in graph.inputs if v.dtype is not None and is_mask(v.name or "", _dtype(v.dtype), dims(v))]
    return found[0] if len(found) == 1 else None


def dims(value: ir.Value) -> tuple[Dim, ...] | None:
    if value.shape is None:
        return None
    return tuple(d if isinstance(d, int) else d.value for d in value.shape.dims)


def _dtype(dtype: ir.DataType) -> str:
    try:
        return np.dtype(dtype.numpy()).name
    except (TypeError, ValueError):
        return ""
