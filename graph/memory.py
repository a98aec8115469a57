"""Handing memory a process has freed back to the system.

A read or write of a million rows frees most of what it took when it ends, but the C
allocator (and Arrow's pool) keep freed memory for later rather than return it, scattered
over heaps that the next large call does not reuse whole. A GLAN-scale benchmark process
held 550 MB so, more than its store's page cache, before planning a job over the whole
store; planning then peaked at 2.15 GB, and at 1.6 GB when the allocator had handed that
back first. So the embedded driver calls `give_back` after every `ROWS` rows it has moved
(bound to its statements or read from them) and when it closes, and a syllabus index once
it is made. It costs about a millisecond, and 30 ms when it returns 300 MB.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from typing import Any

import pyarrow as pa

#: rows moved through the driver between two calls of give_back
ROWS = 200_000


def _trimmer() -> Any:
    """The C library's malloc_trim where there is one (glibc), else None."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_malloc_trim = _trimmer()


def give_back() -> bool:
    """Return the memory Arrow's pool and the C allocator hold free to the system; whether
    the C allocator could be asked (glibc)."""
    pa.default_memory_pool().release_unused()
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


class Moved:
    """Rows moved since memory was last given back; gives it back every ROWS of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows = 0

    def add(self, rows: int) -> None:
        with self._lock:
            self._rows += rows
            due = self._rows >= ROWS
            if due:
                self._rows = 0
        if due:
            give_back()
