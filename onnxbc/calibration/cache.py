"""Collected statistics kept in a folder (``--cache-dir``), so that a run stopped in the middle resumes without
running again the ``collect`` calls it finished.

One entry per ``collect`` call. Its key is a SHA-256 of the calibration graph's bytes (the model with every probe
attached: structure, weights and each probe's in-graph reductions), of every batch of the splits collected (each
array's name, dtype, shape and bytes: the data, its selection and its batching, read once more without running the
model), of what sizes the runs (segments, memory budget) and of the probes' ``blank()`` copies (what is
collected, and the histogram grids it starts from). Its value: the probes' statistics as ``blank()``
copies that folded every batch (``calibration.probes``), merged into the probes on a hit. Merging into fresh
probes is exact, so a run from the cache writes the bytes of the run that filled it. ``--ray``/``--workers`` are
not part of the key: their statistics are the same to float rounding.

Entries are pickles (the statistics are numpy arrays inside probe objects), written to a temporary file in the
folder and renamed into place. The folder is trusted as the user's own, as any pickle cache is; an entry that
cannot be read, holds another key or other probe kinds is ignored with a logged note (and rewritten). The unit is
one whole ``collect`` call: a segmented run does not resume segment by segment (its later segments would need
the boundary tensors too).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onnxbc import model_io
from onnxbc.calibration.data import CalibrationData
from onnxbc.errors import OnnxbcError, one_line

logger = logging.getLogger(__name__)

FORMAT = b"onnxbc-statistics-1"  # changes when what an entry holds changes


def key(model, data: CalibrationData, splits: Sequence[str], runs: Sequence[Any], blanks: Sequence[Any]) -> str:
    """The entry's key: the calibration ``model``, the batches of ``splits``, ``runs`` (what sizes the runs) and the
    ``blanks`` the statistics start from (their histogram grids: empty for fresh probes)."""
    h = hashlib.sha256(FORMAT)
    h.update(pickle.dumps(list(blanks), protocol=pickle.HIGHEST_PROTOCOL))
    with model_io.ort_source(model) as source:
        files = [] if isinstance(source, bytes) else sorted(Path(source).parent.iterdir())
        h.update(source if isinstance(source, bytes) else b"".join(f.name.encode() for f in files))
        for file in files:
            with open(file, "rb") as f:
                while chunk := f.read(1 << 24):
                    h.update(chunk)
    for split in splits:
        for feeds in data.batches(split):
            h.update(f"batch {split}".encode())
            for name in sorted(feeds):
                a = np.ascontiguousarray(feeds[name])
                h.update(f"{name} {a.dtype.str} {a.shape}".encode())
                h.update(a.data if a.size else b"")
    h.update(repr(tuple(runs)).encode())
    return h.hexdigest()


def load(folder: Path, key: str, probes: Sequence[Any]) -> list[Any] | None:
    """The statistics stored under ``key`` (``blank()`` copies of ``probes``' kinds), or None."""
    path = folder / f"{key}.pkl"
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            magic, stored, states = pickle.load(f)
    except Exception as e:  # a truncated or foreign file: unpickling raises about anything
        logger.warning("cache entry %s cannot be read (%s): collecting again", path, one_line(e, 100))
        return None
    if magic != FORMAT or stored != key or [type(s) for s in states] != [type(p) for p in probes]:
        logger.warning("cache entry %s holds other statistics: collecting again", path)
        return None
    logger.info("statistics from the cache: %s", path)
    return states


def save(folder: Path, key: str, states: Sequence[Any]) -> None:
    """Store ``states`` under ``key``: written to a temporary file in ``folder``, then renamed into place."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{key}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                pickle.dump((FORMAT, key, list(states)), f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(temporary, folder / f"{key}.pkl")
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
    except OSError as e:
        raise OnnxbcError(f"--cache-dir {folder}: cannot write: {one_line(e)}") from e
