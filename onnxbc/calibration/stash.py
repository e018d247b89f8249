"""Arrays kept for later, in memory up to a limit and in temporary ``.npy`` files beyond it: the tensors the
collector's segments pass on (``collector``), and the float model's outputs the held-out check compares every
candidate against (``compare.Reference``)."""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np


class Stash:
    """Arrays kept by key (a run, a batch) and name: in memory up to ``limit`` bytes in all, in ``.npy`` files in
    a private temporary folder (made when first needed, removed by ``close()`` or when collected) beyond that, read
    back memory-mapped."""

    def __init__(self, limit: int, prefix: str = "onnxbc-stash-") -> None:
        self._limit = limit
        self._prefix = prefix  # of the folder's name
        self._held: dict[Hashable, dict[str, np.ndarray | Path]] = {}
        self.dtypes: dict[str, np.dtype] = {}
        self._bytes = 0
        self._folder: Path | None = None
        self._files = 0
        self._remove: weakref.finalize | None = None

    def put(self, key: Hashable, arrays: dict[str, np.ndarray]) -> None:
        held = self._held.setdefault(key, {})
        for name, array in arrays.items():
            self.dtypes.setdefault(name, array.dtype)
            if self._bytes + array.nbytes <= self._limit:
                # a copy: ONNX Runtime's outputs keep their session's memory arena alive
                held[name] = np.array(array)
                self._bytes += array.nbytes
            else:
                held[name] = self._write(array)

    def get(self, key: Hashable) -> dict[str, np.ndarray]:
        held = self._held.get(key, {})
        return {n: np.load(a, mmap_mode="r") if isinstance(a, Path) else a for n, a in held.items()}

    def drop(self, key: Hashable, names: Sequence[str]) -> None:
        held = self._held.get(key, {})
        for name in names:
            a = held.pop(name, None)
            if isinstance(a, Path):
                a.unlink()
            elif a is not None:
                self._bytes -= a.nbytes
        if not held:
            self._held.pop(key, None)

    def close(self) -> None:
        """Forget every array and remove the folder (idempotent)."""
        self._held, self._bytes = {}, 0
        if self._remove is not None:
            self._remove()

    def _write(self, array: np.ndarray) -> Path:
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix=self._prefix))
            self._remove = weakref.finalize(self, shutil.rmtree, self._folder, ignore_errors=True)
        path = self._folder / f"{self._files:06d}.npy"
        self._files += 1
        np.save(path, array, allow_pickle=False)
        return path
