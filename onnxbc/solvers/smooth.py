"""Activation smoothing (SmoothQuant-style scale migration), numpy only.

For a layer ``y = x W`` (or a convolution), dividing input channel ``j`` of ``x`` by ``s_j`` and multiplying
the matching input channel of ``W`` by ``s_j`` leaves ``y`` unchanged in float, but moves per-channel range
differences out of the activation (quantized per tensor) into the weight (quantized per output channel):

    s_j = max|x_j|^alpha / max|W_j|^(1 - alpha)

(Xiao et al., SmoothQuant). ``alpha = 1`` equalizes every activation channel to the same range. Which alpha,
if any, is decided per activation by measuring each candidate's layer output error (see pipeline).
Grouped convolutions: input channel ``j`` of group ``g`` is weight row block ``g`` at column ``j mod C/g``.
"""

from __future__ import annotations

import numpy as np

ALPHAS = (0.5, 1.0)


def input_channel_max(w: np.ndarray, input_axis: int, groups: int = 1) -> np.ndarray:
    """``max |W|`` per input channel of the layer (length C = groups * w.shape[input_axis])."""
    a = np.abs(np.asarray(w, dtype=np.float32))
    if groups == 1:
        return np.moveaxis(a, input_axis, 0).reshape(a.shape[input_axis], -1).max(axis=1)
    out_ch, per_group = a.shape[0], a.shape[1]  # grouped Conv: [O, C/g, k...]
    return a.reshape(groups, out_ch // groups, per_group, -1).max(axis=(1, 3)).reshape(-1)


def per_input_channel(v: np.ndarray, shape: tuple[int, ...], input_axis: int, groups: int = 1) -> np.ndarray:
    """A per-input-channel vector laid out to broadcast against a weight of ``shape``."""
    v = np.asarray(v, dtype=np.float32)
    if groups == 1:
        view = [1] * len(shape)
        view[input_axis] = -1
        return v.reshape(view)
    out_ch, per_group = shape[0], shape[1]
    index = (np.arange(out_ch)[:, None] // (out_ch // groups)) * per_group + np.arange(per_group)[None, :]
    return v[index].reshape(out_ch, per_group, *([1] * (len(shape) - 2)))


def scale_input_channels(w: np.ndarray, s: np.ndarray, input_axis: int, groups: int = 1) -> np.ndarray:
    """``W`` with input channel ``j`` multiplied by ``s_j``."""
    w = np.asarray(w, dtype=np.float32)
    return w * per_input_channel(s, w.shape, input_axis, groups)


def smoothing_factors(act_max: np.ndarray, weight_max: np.ndarray, alpha: float) -> np.ndarray:
    """Per-channel ``s`` (float32, > 0); channels that never fire or have no weight keep ``s = 1``."""
    act_max = np.asarray(act_max, dtype=np.float64)
    weight_max = np.asarray(weight_max, dtype=np.float64)
    live = (act_max > 0) & (weight_max > 0)
    s = np.ones_like(act_max)
    s[live] = act_max[live] ** alpha / weight_max[live] ** (1.0 - alpha)
    s[live] /= np.exp(np.mean(np.log(s[live])))  # overall level is arbitrary: centre it on 1
    return np.clip(s, 1e-4, 1e4).astype(np.float32)
