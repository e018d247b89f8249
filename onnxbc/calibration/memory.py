"""The memory a run may use (``--max-memory``), and how much of it one segment of a calibration graph may hold.

A calibration session holds the weights of its graph as ONNX Runtime keeps them: DequantizeLinear of a constant
is folded into a float weight (an int8 weight is held at 4 bytes a value), so an instrumented graph with every
layer's shadow and trials holds several float copies of the model. It is cut into segments whose weights each
fit the ``room`` the budget leaves after this process's resident memory and the collector's own buffers (one
run's tensors, the boundary tensors kept in memory). Segments do not change the statistics (to float
tolerance). The run size does change the activation histograms a little (their bins follow the runs): runs
take an eighth of the budget, up to 1 GiB, so the default budget gives the same runs, and the same model, on
every machine with 16 GiB of memory or more.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import sys
import tempfile
import weakref
from pathlib import Path

import numpy as np

DEFAULT_SHARE = 0.5  # of the machine's physical memory, when --max-memory is not given
FALLBACK_BYTES = 8 * 2**30  # ... where the physical memory cannot be read


def default_budget() -> int:
    """Half of the physical memory (8 GiB where it cannot be read)."""
    try:
        return int(DEFAULT_SHARE * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        return FALLBACK_BYTES


def resident_bytes() -> int:
    """This process's resident memory now (0 where it cannot be read: Linux only)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return 0


def release() -> None:
    """Hand the memory freed since (a session's weights and arena, a pass's arrays) back to the system, and the
    pages of parked arrays read since (``Parking``).

    glibc keeps freed blocks for reuse, and raises its threshold for serving large blocks from the heap once
    such blocks are freed, so a process that made and dropped sessions stays at its high-water mark (measured
    on MiniLM after pass 2: 581 MB resident, 319 MB after ``malloc_trim``). Nothing where there is no glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    for parking in list(_parkings):
        parking.drop()


class Parking:
    """Arrays kept in files in ``folder`` while unused (``park``), a few large files rather than one per array
    (each mapping holds a file descriptor, and a model has thousands of weights)."""

    ARENA_BYTES = 64 * 2**20  # one file's size (an array larger than that has a file of its own)

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._arena: mmap.mmap | None = None  # the file being filled
        self._path = ""  # its path
        self._used = 0
        self._arenas: weakref.WeakValueDictionary[int, mmap.mmap] = weakref.WeakValueDictionary()
        _parkings.add(self)

    def park(self, array: np.ndarray) -> np.ndarray:
        """``array``'s values, read-only, in a file mapped into memory: its pages are read when it is used, and
        ``release`` takes those read out of this process's resident memory (they stay in the system's page
        cache, and are read again from there). The file stays mapped while the array (or a view) is alive. An
        array in a mapped file already (parked) is returned as it is."""
        size = array.nbytes
        if size == 0 or _mapped(array):
            return array
        start = -(-self._used // 64) * 64
        if self._arena is None or start + size > len(self._arena):
            self._arena, start = self._new(max(self.ARENA_BYTES, size)), 0
        self._used = start + size
        with open(self._path, "r+b") as f:  # written to the file, not through the mapping: nothing made resident
            f.seek(start)
            f.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
        return np.frombuffer(self._arena, dtype=array.dtype, count=array.size, offset=start).reshape(array.shape)

    def drop(self) -> None:
        """Take the pages of the parked arrays out of this process's resident memory (Linux, macOS)."""
        if hasattr(mmap, "MADV_DONTNEED"):
            for arena in list(self._arenas.values()):
                arena.madvise(mmap.MADV_DONTNEED)

    def _new(self, size: int) -> mmap.mmap:
        fd, self._path = tempfile.mkstemp(suffix=".bin", dir=self.folder)
        try:
            os.ftruncate(fd, size)
            arena = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        self._arenas[id(arena)] = arena
        return arena


_parkings: weakref.WeakSet[Parking] = weakref.WeakSet()


def _mapped(array: np.ndarray) -> bool:
    """Whether ``array`` is (a view of) the contents of a memory-mapped file."""
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(base, mmap.mmap) or isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)


@functools.cache
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # another C library (musl)
        return None


def describe(size: int) -> str:
    """``size`` bytes in GiB, or MiB under one GiB."""
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"


def peak_resident_bytes() -> int | None:
    """This process's peak resident memory so far (``ru_maxrss``; None where there is none: Windows)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def room(budget: int, reserved: int) -> int:
    """The bytes one session's weights may take: ``budget`` less ``reserved`` and this process's resident memory
    (at least 1)."""
    return max(1, budget - reserved - resident_bytes())
