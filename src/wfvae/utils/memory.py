"""Giving freed CPU memory back to the operating system between the chunks of a chunked call.

How to use::

    for chunk in chunks:
        out = run(chunk)
        release_freed_memory()   # glibc: malloc_trim(0); elsewhere nothing

Why: PyTorch allocates CPU tensors with ``malloc``. glibc serves allocations below its mmap threshold
(which grows on its own up to 32 MiB) from heaps that only shrink from the top, so the activations
freed after one chunk stay resident, fragmented, and the next chunk's different-sized tensors add to
them. Measured on WF-VAE-L (``benchmarks/RESULTS.md``, "Chunked inference memory"), that retention
was about half of the peak resident growth of a chunked round trip. ``malloc_trim(0)`` hands every
free page of every heap back (``madvise``) without changing any allocator setting; the next chunk
faults its pages in again, which costs milliseconds against seconds of convolutions.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["release_freed_memory"]


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        trim = libc.malloc_trim if libc is not None else None
    except (OSError, AttributeError):
        return None
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_freed_memory() -> bool:
    """Return the C heap's free pages to the operating system; True if the C library could do it."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
