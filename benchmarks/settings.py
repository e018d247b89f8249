"""The quantization settings every tool is asked for, and the calibration samples they all share."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from benchmarks.zoo.common import BenchModel


@dataclasses.dataclass(frozen=True)
class Setting:
    """One column of the matrix: weight bits and granularity, with or without int8 activations."""

    name: str
    weight_bits: int  # 8, 4 or 3; always symmetric
    block_size: int  # 0 = one scale per output channel; N = blocks of N along the weight's input dim
    activations: bool  # int8 activations (per tensor) or weight-only
    description: str

    @property
    def weight_only(self) -> bool:
        return not self.activations


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting("w8a8", 8, 0, True, "int8 weights per channel + int8 activations"),
        Setting("w4a8", 4, 0, True, "int4 weights per channel + int8 activations"),
        Setting("w4a8-b128", 4, 128, True, "int4 weights in blocks of 128 input features + int8 activations"),
        Setting("w4-b128", 4, 128, False, "int4 weights in blocks of 128 input features, weight-only"),
        Setting("w3", 3, 0, False, "3-bit weights per channel, weight-only"),
    )
}


def calibration_arrays(bench: BenchModel) -> dict[str, np.ndarray]:
    """The calibration samples of ``bench`` (the model's inputs only; axis 0 counts samples)."""
    names = bench.input_names()
    with np.load(bench.calib_path, allow_pickle=False) as data:
        missing = [n for n in names if n not in data.files]
        if missing:
            raise KeyError(f"{bench.calib_path}: no array for model input(s) {missing}")
        return {n: data[n] for n in names}


def sample_count(arrays: dict[str, np.ndarray]) -> int:
    return len(next(iter(arrays.values())))


def with_calibration(bench: BenchModel, calib_path: Path | None) -> BenchModel:
    """``bench`` with another calibration file (the scaling check), or unchanged."""
    return dataclasses.replace(bench, calib_path=Path(calib_path)) if calib_path else bench
