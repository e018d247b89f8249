"""Agreement between two models' outputs on the same inputs, accumulated batch by batch.

Per output: relative MSE ``sum (a - b)^2 / sum a^2`` (a = reference), mean per-sample cosine, max
absolute error, and for outputs of rank >= 2 the top-1 agreement of the argmax over the last axis
(meaningful for classifier logits and token predictions). Only sums are kept: memory does not depend on
the number of samples. ``onnxbc compare`` and ``onnxbc check --reference`` use the same numbers.

``Reference`` runs the reference model once per batch for any number of models compared against it: its float
outputs are kept after the first pass when they are small enough, else it runs again on each pass; or it takes
them from a collector run that fetched them on the same batches (``FloatOutputs``: compress's pass 2).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np
import onnxruntime as ort
from rich import box
from rich.console import Console
from rich.table import Table

from onnxbc import held
from onnxbc.calibration import tokens
from onnxbc.calibration.data import InputSpec, input_specs, open_data
from onnxbc.calibration.session import SessionFactory
from onnxbc.calibration.stash import Stash
from onnxbc.errors import UsageError
from onnxbc.held import ModelLike
from onnxbc.options import DataOptions, Device, ErrorMetric
from onnxbc.progress import Stages

BLOCK_VALUES = 2**22  # values of each output compared at a time (in float64: 32 MB an array)


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
    row_err2: list[float] = dataclasses.field(default_factory=list, repr=False)  # err2 of each row, in order

    def update(self, ref: np.ndarray, test: np.ndarray) -> None:
        """Fold one batch in: rows are samples (or real tokens); sums in float64, over blocks of at most
        ``BLOCK_VALUES`` values at a time (an LM's logits on a batch are hundreds of MB in float32)."""
        if ref.shape != test.shape:
            raise ValueError(f"output '{self.name}': shapes differ ({ref.shape} vs {test.shape})")
        rows_a = ref.reshape(ref.shape[0], -1) if ref.ndim else ref.reshape(1, -1)
        rows_b = test.reshape(rows_a.shape)
        n, m = rows_a.shape
        sums = np.zeros((4, n))  # per row: err2, a2, b2, ab
        step = max(1, BLOCK_VALUES // max(n, 1))
        for start in range(0, m, step):
            a = rows_a[:, start : start + step].astype(np.float64)
            b = rows_b[:, start : start + step].astype(np.float64)
            diff = a - b
            sums += [np.square(diff).sum(axis=1), np.square(a).sum(axis=1), np.square(b).sum(axis=1), (a * b).sum(1)]
            self.max_abs = max(self.max_abs, float(np.abs(diff).max(initial=0.0)))
        row_err2, a2, b2, ab = sums
        self.err2 += float(row_err2.sum())
        self.ref2 += float(a2.sum())
        norms = np.sqrt(a2) * np.sqrt(b2)
        cos = np.where(norms > 0, ab / np.where(norms > 0, norms, 1), 1.0)
        self.cos_sum += float(cos.sum())
        self.rows += len(cos)
        self.row_err2.extend(row_err2.tolist())
        if ref.ndim >= 2 and ref.shape[-1] > 1:
            self.top1_same += int((ref.argmax(axis=-1) == test.argmax(axis=-1)).sum())
            self.top1_total += int(np.prod(ref.shape[:-1]))

    def merged(self, other: OutputAgreement) -> OutputAgreement:
        """The agreement over both sets of samples (this one's rows first)."""
        return OutputAgreement(
            self.name,
            self.err2 + other.err2,
            self.ref2 + other.ref2,
            self.cos_sum + other.cos_sum,
            self.rows + other.rows,
            max(self.max_abs, other.max_abs),
            self.top1_same + other.top1_same,
            self.top1_total + other.top1_total,
            self.row_err2 + other.row_err2,
        )

    def as_dict(self) -> dict[str, float | None]:
        return {
            "rel_mse": self.err2 / self.ref2 if self.ref2 > 0 else float(self.err2 > 0),
            "cosine": self.cos_sum / self.rows if self.rows else None,
            "max_abs_error": self.max_abs,
            "top1_agreement": self.top1_same / self.top1_total if self.top1_total else None,
        }

    def error(self, metric: ErrorMetric) -> float:
        """The distance ``--metric`` names: 1 - cosine, relative MSE or max absolute error (NaN: unknown)."""
        values = self.as_dict()
        value = {
            ErrorMetric.COSINE: None if values["cosine"] is None else 1.0 - values["cosine"],
            ErrorMetric.REL_MSE: values["rel_mse"],
            ErrorMetric.MAX_ABS: values["max_abs_error"],
        }[metric]
        return float("nan") if value is None else float(value)


def compare_sessions(
    reference: ort.InferenceSession,
    test: ort.InferenceSession,
    batches: Iterable[Mapping[str, np.ndarray]],
    advance=lambda: None,
) -> dict[str, OutputAgreement]:
    """Run both sessions on each batch and accumulate the agreement of every float output."""
    return Reference(reference, lambda: batches).compare(test, advance)


Outputs = list[np.ndarray | None]  # a session's outputs on one batch, in ``Reference.names`` order; None: not float


class Reference:
    """The reference session's outputs on each run, for comparing other sessions against it.

    A run is a batch of ``feeds()``, or a part of one of at most ``most`` samples (the intermediate tensors and
    outputs of a whole batch of an LM's windows take GBs), so nothing here holds more than one run's outputs.
    ``runs()`` is one pass: each run's feeds with the reference's outputs on them. The first pass that completes
    keeps the float outputs when they total at most ``keep_bytes``; later passes reuse them instead of running
    the reference again (``kept`` says which happened; None before a pass completes). ``calls`` counts its
    session runs. ``feeds`` gives the same batches on every call.

    With ``remake`` (which makes the session again), every output is kept: beyond ``keep_bytes`` in temporary
    files (``calibration.stash``; an LM's logits on its held-out windows are GBs), read back one run at a time,
    and the session is let go after the first pass (``session`` makes it again when asked for), so that the
    sessions compared against the reference need not share memory with it. ``close()`` removes the files.

    Outputs indexed ``[batch, tokens, ...]`` like the model's padding mask (``calibration.tokens``) are compared
    at the real tokens only: what a model computes at padding is not part of its answer."""

    def __init__(
        self,
        session: ort.InferenceSession,
        feeds: Callable[[], Iterable[Mapping[str, np.ndarray]]],
        keep_bytes: int = 0,
        most: int | None = None,
        *,
        remake: Callable[[], ort.InferenceSession] | None = None,
    ) -> None:
        self._session: ort.InferenceSession | None = session
        self._remake = remake
        self.most = most  # samples a session run takes at most (a batch runs in parts; None: whole)
        self.names = [o.name for o in session.get_outputs()]
        masks = [i for i in session.get_inputs() if tokens.is_mask(i.name, i.type[7:-1], i.shape)]  # tensor(int64)
        self._mask = masks[0].name if len(masks) == 1 else None
        self._by_token = [len(masks) == 1 and tokens.covers(masks[0].shape, o.shape) for o in session.get_outputs()]
        self.kept: bool | None = None
        self.bytes = 0  # of its float outputs on all the batches (once a pass completed)
        self.calls = 0
        self._feeds = feeds
        self._keep_bytes = keep_bytes
        self._outputs: list[Outputs] | None = None
        self._stash: Stash | None = None

    @property
    def session(self) -> ort.InferenceSession:
        if self._session is None:
            self._session = self._remake()
        return self._session

    def runs(self) -> Iterator[tuple[bool, dict[str, np.ndarray], Outputs]]:
        """Each run: whether it ends its batch, its feeds, and the reference's outputs on it."""
        if self._stash is not None:
            for r, (ends, feeds) in enumerate(self._parts()):
                stored = self._stash.get(r)
                yield ends, feeds, [stored.get(str(i)) for i in range(len(self.names))]
                del stored  # its pages leave memory with the mapping
            return
        if self._outputs is not None:
            for (ends, feeds), outputs in zip(self._parts(), self._outputs, strict=True):
                yield ends, feeds, outputs
            return
        kept: list[Outputs] | None = []
        stash = None if self._remake is None else Stash(self._keep_bytes, "onnxbc-reference-")
        size = 0
        for r, (ends, feeds) in enumerate(self._parts()):
            self.calls += 1
            outputs = [a if np.issubdtype(a.dtype, np.floating) else None for a in self.session.run(self.names, feeds)]
            size += sum(a.nbytes for a in outputs if a is not None)
            if stash is not None:
                stash.put(r, {str(i): a for i, a in enumerate(outputs) if a is not None})
            elif kept is not None and size <= self._keep_bytes:
                kept.append(outputs)
            else:
                kept = None  # too big to keep: every pass runs the reference
            yield ends, feeds, outputs
        self.kept, self.bytes = stash is not None or kept is not None, size
        if stash is None:
            self._outputs = kept
        else:
            self._stash, self._session = stash, None  # all kept: the session goes (``session`` makes it again)

    def over(self, feeds: Callable[[], Iterable[Mapping[str, np.ndarray]]]) -> Reference:
        """A reference of the same model over other ``feeds``: its session shared (with ``remake``, made again
        only when it runs), nothing of this one's outputs kept."""
        other = copy.copy(self)
        other._feeds, other.kept, other.bytes, other.calls, other._outputs, other._stash = feeds, None, 0, 0, None, None
        return other

    def take(self, outputs: FloatOutputs, split: str) -> bool:
        """The float outputs pass 2 fetched on ``split`` (``FloatOutputs``), kept as a completed pass would keep
        them, when each of its runs was one of this reference's (every batch whole on both sides); else nothing
        changes (False). With ``remake``, the session goes, as after a pass."""
        runs, parts = outputs.runs.get(split), [ends for ends, _ in self._parts()]
        if self.kept is not None or runs is None or not all(parts) or len(runs) != len(parts):
            return False
        where = {name: i for i, name in enumerate(outputs.names)}
        self._outputs = [[run[where[n]] if n in where else None for n in self.names] for run in runs]
        self.kept, self.bytes = True, outputs.bytes[split]
        if self._remake is not None:
            self._session = None
        return True

    def store(self, advance: Callable[[], None] = lambda: None) -> None:
        """One pass of the reference alone (when none has completed), keeping its outputs; ``advance`` per batch."""
        if self.kept is None:
            for ends, _, _ in self.runs():
                if ends:
                    advance()

    def close(self) -> None:
        """Forget the kept outputs and remove their files (idempotent)."""
        if self._stash is not None:
            self._stash.close()
        self._stash = self._outputs = None
        self.kept = None

    def agreements(self) -> dict[str, OutputAgreement]:
        """Empty sums for one model compared against this reference (fill with ``update``)."""
        return {n: OutputAgreement(n) for n in self.names}

    def update(
        self, stats: dict[str, OutputAgreement], feeds: Mapping[str, np.ndarray], reference: Outputs, test: list
    ) -> None:
        """One run of a model (its outputs ``test``) against the reference's on the same ``feeds``, into ``stats``."""
        real = None if self._mask is None else np.asarray(feeds[self._mask]).astype(bool)
        for name, a, b, by_token in zip(self.names, reference, test, self._by_token):
            if a is None:
                continue
            b = np.asarray(b)
            if by_token and real.shape == a.shape[:2] == b.shape[:2]:
                a, b = a[real], b[real]
            stats[name].update(a, b)

    def measure(
        self, stats: dict[str, OutputAgreement], session: ort.InferenceSession, feeds: dict, reference: Outputs
    ) -> None:
        """``session`` against the reference on one run (of ``runs``), added to ``stats``."""
        self.update(stats, feeds, reference, session.run(self.names, feeds))

    def compare(
        self, test: ort.InferenceSession, advance: Callable[[], None] = lambda: None
    ) -> dict[str, OutputAgreement]:
        """``test`` against the reference on every batch: the agreement of each float output; ``advance`` per batch."""
        stats = self.agreements()
        for ends, feeds, outputs in self.runs():
            self.measure(stats, test, feeds, outputs)
            if ends:
                advance()
        return measured(stats)

    def _parts(self) -> Iterator[tuple[bool, dict[str, np.ndarray]]]:
        """Every batch of ``feeds()`` in runs of at most ``most`` samples (whole when it has no more), each with
        whether it is its batch's last."""
        for feeds in self._feeds():
            n = len(next(iter(feeds.values()))) if feeds else 0
            if self.most is None or n <= self.most:
                yield True, dict(feeds)
                continue
            for i in range(0, n, self.most):
                yield i + self.most >= n, {k: v[i : i + self.most] for k, v in feeds.items()}


class FloatOutputs:
    """A collector probe (``calibration.collector``): the model's float outputs on every run of each split, kept
    while they total at most ``keep_bytes`` a split (beyond, that split's are dropped). Pass 2 runs the float
    model beside the shadows, so the held-out check takes its outputs from there (``Reference.take``) instead of
    running the float model again. Not mergeable: collected in one process only (no shards, no cache)."""

    def __init__(self, names: list[str], keep_bytes: int) -> None:
        self.names = names
        self.keep_bytes = keep_bytes
        self.runs: dict[str, list[list[np.ndarray]] | None] = {}
        self.bytes: dict[str, int] = {}

    def attach(self, builder) -> list:
        return [builder.values[name] for name in self.names]

    def update(self, arrays: list[np.ndarray], split: str) -> None:
        runs = self.runs.setdefault(split, [])
        size = self.bytes.get(split, 0) + sum(a.nbytes for a in arrays)
        if runs is None or size > self.keep_bytes:
            self.runs[split] = None
            return
        runs.append(list(arrays))
        self.bytes[split] = size


def measured(stats: dict[str, OutputAgreement]) -> dict[str, OutputAgreement]:
    """The outputs that were compared (float ones)."""
    return {n: s for n, s in stats.items() if s.rows}


@dataclasses.dataclass(frozen=True)
class Comparison:
    """``onnxbc compare``: B against A (the reference) on the same samples, per session kind and output."""

    data: str
    device: str
    sessions: dict[str, dict[str, OutputAgreement]]  # "default" and, when asked, "exact"

    def print(self, console: Console) -> None:
        titles = {"default": "ONNX Runtime default session", "exact": "exact (QDQ fusions off)"}
        for kind, agreements in self.sessions.items():
            table = Table(title=titles[kind], title_justify="left", box=box.SIMPLE)
            for col in ("output", "cosine", "rel. MSE", "max abs error", "top-1 agreement"):
                table.add_column(col, justify="left" if col == "output" else "right")
            for name, agreement in agreements.items():
                m = agreement.as_dict()
                top1 = "-" if m["top1_agreement"] is None else f"{m['top1_agreement']:.1%}"
                cosine = "-" if m["cosine"] is None else f"{m['cosine']:.6f}"
                table.add_row(name, cosine, f"{m['rel_mse']:.3e}", f"{m['max_abs_error']:.4g}", top1)
            console.print(table)


def compare_models(
    a: ModelLike,
    b: ModelLike,
    data: DataOptions,
    *,
    device: Device = Device.AUTO,
    exact: bool = False,
    stages: Stages | None = None,
) -> Comparison:
    """Run A and B (paths, or models in memory: ``onnxbc.held``) in ONNX Runtime's default session and, with
    ``exact``, with its QDQ fusions off too."""
    stages = stages or Stages(enabled=False)
    data = data if isinstance(data, DataOptions) else DataOptions(source=data, holdout_fraction=0.0)
    first, second = held.read(a), held.read(b)
    specs = input_specs(first)
    if list(map(_signature, specs)) != list(map(_signature, input_specs(second))):
        described = [", ".join(f"'{s.name}' {s.describe()}" for s in input_specs(m)) for m in (first, second)]
        names = held.describe(a), held.describe(b)
        raise UsageError(f"{names[0]} and {names[1]} take different inputs: {described[0]} vs {described[1]}")
    samples = open_data(data, specs)
    sessions = SessionFactory(device)
    results = {}
    for kind in ("default", "exact") if exact else ("default",):
        reference = sessions.create(first, exact=kind == "exact")
        test = sessions.create(second, exact=kind == "exact")
        with stages.step(f"Comparing ({kind} session)", samples.count_batches("all")) as advance:
            results[kind] = compare_sessions(reference, test, samples.batches("all"), advance)
    return Comparison(samples.description, sessions.device_name, results)


def _signature(spec: InputSpec) -> tuple:
    """Name, type and fixed dimensions (named dimensions may differ between exports)."""
    dims = None if spec.shape is None else tuple(d if isinstance(d, int) else None for d in spec.shape)
    return spec.name, spec.dtype, dims
