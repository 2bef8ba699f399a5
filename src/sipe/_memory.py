"""Returning freed heap memory to the operating system (CPU inference between scales and images)."""

from __future__ import annotations

import ctypes
import ctypes.util


def _load_libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


_LIBC = _load_libc()


def release_memory() -> None:
    """Return freed memory to the operating system.

    CPU: glibc keeps freed blocks below its (adaptive) mmap threshold in the heap, so a large
    intermediate freed at one scale still counts in the resident size when the next, larger scale
    peaks; ``malloc_trim`` hands them back (about 3 ms; a no-op where the C library is not glibc).
    CUDA memory stays in PyTorch's cache, where reusing it is cheaper than returning it.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
