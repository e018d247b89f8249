"""Agreement between two models' outputs on the same inputs, accumulated batch by batch.

Per output: relative MSE ``sum (a - b)^2 / sum a^2`` (a = reference), mean per-sample cosine, max
absolute error, and for outputs of rank >= 2 the top-1 agreement of the argmax over the last axis
(meaningful for classifier logits and token predictions). Only sums are kept: memory does not depend on
the number of samples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import numpy as np
import onnxruntime as ort


@dataclasses.dataclass
class OutputAgreement:
    name: str
    err2: float = 0.0
    ref2: float = 0.0
    cos_sum: float = 0.0
    rows: int = 0
    max_abs: float = 0.0
    top1_same: int = 0
    top1_total: int = 0

    def update(self, ref: np.ndarray, test: np.ndarray) -> None:
        if ref.shape != test.shape:
            raise ValueError(f"output '{self.name}': shapes differ ({ref.shape} vs {test.shape})")
        a = ref.astype(np.float64)
        b = test.astype(np.float64)
        diff = a - b
        self.err2 += float(np.square(diff).sum())
        self.ref2 += float(np.square(a).sum())
        self.max_abs = max(self.max_abs, float(np.abs(diff).max(initial=0.0)))
        rows_a = a.reshape(a.shape[0], -1) if a.ndim else a.reshape(1, -1)
        rows_b = b.reshape(rows_a.shape)
        norms = np.linalg.norm(rows_a, axis=1) * np.linalg.norm(rows_b, axis=1)
        cos = np.where(norms > 0, (rows_a * rows_b).sum(axis=1) / np.where(norms > 0, norms, 1), 1.0)
        self.cos_sum += float(cos.sum())
        self.rows += len(cos)
        if a.ndim >= 2 and a.shape[-1] > 1:
            self.top1_same += int((a.argmax(axis=-1) == b.argmax(axis=-1)).sum())
            self.top1_total += int(np.prod(a.shape[:-1]))

    def as_dict(self) -> dict[str, float | None]:
        return {
            "rel_mse": self.err2 / self.ref2 if self.ref2 > 0 else float(self.err2 > 0),
            "cosine": self.cos_sum / self.rows if self.rows else None,
            "max_abs_error": self.max_abs,
            "top1_agreement": self.top1_same / self.top1_total if self.top1_total else None,
        }


def compare_sessions(
    reference: ort.InferenceSession,
    test: ort.InferenceSession,
    batches: Iterable[Mapping[str, np.ndarray]],
    advance=lambda: None,
) -> dict[str, OutputAgreement]:
    """Run both sessions on each batch and accumulate the agreement of every float output."""
    names = [o.name for o in reference.get_outputs()]
    stats = {n: OutputAgreement(n) for n in names}
    for feeds in batches:
        ref_out = reference.run(names, dict(feeds))
        test_out = test.run(names, dict(feeds))
        for name, a, b in zip(names, ref_out, test_out):
            if np.issubdtype(np.asarray(a).dtype, np.floating):
                stats[name].update(np.asarray(a), np.asarray(b))
        advance()
    return {n: s for n, s in stats.items() if s.rows}
