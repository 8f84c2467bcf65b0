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
faults its pages in again, which costs milliseconds against seconds of convolutions. Chunked calls on CPU
also trim inside a chunk, after each residual block and decoder stage (``StreamState.release_memory``):
one stage's freed activations otherwise stay resident under the next, larger stage's.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["libc_function", "release_freed_memory"]


@functools.cache
def libc_function(name: str, argtypes: tuple, restype=ctypes.c_int):
    """The C library's function ``name`` with its C signature, or None where the library lacks it (glibc's
    ``malloc_trim`` and ``mallopt`` exist neither on musl, macOS nor Windows)."""
    lib = ctypes.util.find_library("c")
    try:
        fn = getattr(ctypes.CDLL(lib), name) if lib else None
    except (OSError, AttributeError):
        return None
    if fn is not None:
        fn.argtypes, fn.restype = list(argtypes), restype
    return fn


def release_freed_memory() -> bool:
    """Return the C heap's free pages to the operating system; True if the C library could do it."""
    trim = libc_function("malloc_trim", (ctypes.c_size_t,))
    if trim is None:
        return False
    trim(0)
    return True
