"""Feeds read once from a stream, written to ``.npz`` chunk files in a private temporary folder.

Calibration makes several passes over its data and needs the sample count before the first (for the held-out
split), but an iterator can be read only once and need not fit in memory. So each feed is written as it is
read: consecutive feeds of the same layout (``key``: which inputs hold whole feeds, and each input's per-sample
shape) are concatenated along axis 0 into one file of up to ``CHUNK_BYTES``, so one-sample feeds do not make one
file each. The files are plain ``.npz`` archives, read back like a folder of them.

The folder comes from ``tempfile`` (never the working directory) and is removed by ``close()``, when the
``Spill`` is garbage collected, or at interpreter exit, whichever comes first.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
import zipfile
from collections.abc import Hashable
from pathlib import Path

import numpy as np

CHUNK_BYTES = 64 * 2**20


class Spill:
    """A temporary folder that ``add`` fills with ``000000.npz``, ``000001.npz``, ... in stream order."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="onnxbc-data-"))
        self.files = 0
        self._remove = weakref.finalize(self, shutil.rmtree, self.path, ignore_errors=True)
        self._pending: list[dict[str, np.ndarray]] = []
        self._key: Hashable = None
        self._bytes = 0

    def add(self, arrays: dict[str, np.ndarray], key: Hashable) -> None:
        """Queue one feed; feeds are concatenated only with neighbours of the same ``key``."""
        if self._pending and key != self._key:
            self.flush()
        self._pending.append(arrays)
        self._key = key
        self._bytes += sum(a.nbytes for a in arrays.values())
        if self._bytes >= CHUNK_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write the queued feeds as one file."""
        if not self._pending:
            return
        merged = {k: np.concatenate([p[k] for p in self._pending]) for k in self._pending[0]}
        _write_npz(self.path / f"{self.files:06d}.npz", merged)
        self.files += 1
        self._pending, self._bytes = [], 0

    def close(self) -> None:
        """Remove the folder and its files (idempotent)."""
        self._pending = []
        self._remove()


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` without its keyword arguments, so that any input name (``file``, ``a/b``) is a key."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for name, array in arrays.items():
            with z.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)
