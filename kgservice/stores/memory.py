"""Giving the memory RocksDB freed back to the operating system (glibc's ``malloc_trim``)."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import cast


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return cast(Callable[[int], int], trim)


_malloc_trim = _find_malloc_trim()


def release_freed_memory() -> None:
    """Return the heap pages free()d by RocksDB to the OS (glibc's ``malloc_trim``).

    After a flush glibc keeps the freed memtables' pages in its arenas: the process's RSS stays at
    its high-water mark (1.2 GB after 20k cases, 40 MB once trimmed). The peak is bounded by the
    flushes; this brings an idle server back down to its live memory.
    """
    if _malloc_trim is not None:
        _malloc_trim(0)
