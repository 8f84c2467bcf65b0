"""``chunk_size="auto"``: chunk sizes for encode/decode chosen from a memory budget.

How to use::

    chunk = choose_chunk_size(model, "decode", latents.shape, latents.dtype, max_memory_gb=2.0)
    estimate_call_bytes(model, "decode", latents.shape, latents.dtype, chunk)   # bytes the call holds at its peak

The cost model is computed, not guessed: a twin of the model is built on PyTorch's ``meta`` device (shapes
only, no memory, no arithmetic) and the chunked call runs on it at the real frame size for three chunks,
while a dispatch mode adds up the bytes of every tensor storage the call creates and subtracts them when
the storage is freed. The peak of that sum is the call's working set for that chunk size: activations, the
causal caches, the output so far. It follows the model's real code path (the same layers, the same
lifetimes), so it holds for WF-VAE and CausalVAE alike and needs no per-model table. The output of the
whole clip is added on top. What it does not count: the model's weights and input (already allocated
before the call), convolution libraries' scratch space and weight reorders (our Winograd kernel's buffers
are counted: the twin runs it on every eligible layer when the model's kernel mode is "auto" or
"winograd"), the stacked input of the small CPU convolutions that ``conv.conv3d_onednn`` hands to oneDNN
(meta tensors take the plain path; the stack is 2x that convolution's input, in place of PyTorch's 27x
column buffer, also uncounted), and memory the C allocator keeps after a free. Measured against the process's malloc peak and resident growth in
``benchmarks/RESULTS.md`` ("Chunked inference memory").

Chunking is exact, so the choice changes memory and the number of calls, never the result.
"""

from __future__ import annotations

import functools
import json
import math
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from wfvae.errors import ConfigError

__all__ = ["MemoryBudgetError", "check_budget", "choose_chunk_size", "estimate_call_bytes", "smallest_chunk"]

GB = 1e9


class MemoryBudgetError(ConfigError):
    """``max_memory_gb`` is below what the smallest chunk needs (a ValueError; commands exit 2 with it)."""


class _StorageBytes(TorchDispatchMode):
    """Live bytes of the tensor storages created under this mode (and their peak)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._tracked: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):
            return out  # a view or an in-place/out= result: memory that already exists (counted if created here)
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = id(storage)  # storages keep one Python object while they live
                if key not in self._tracked:
                    self._tracked.add(key)
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._freed, key, storage.nbytes())
        return out

    def _freed(self, key: int, nbytes: int) -> None:
        self._tracked.discard(key)
        self.live -= nbytes


@functools.lru_cache(maxsize=8)
def _meta_twin(cls: type, config_json: str, dtype: torch.dtype, kernels: str) -> torch.nn.Module:
    with torch.device("meta"):
        return cls.from_config(json.loads(config_json)).to(dtype).eval().set_conv_kernels(kernels)


def _twin(model) -> torch.nn.Module:
    """The model's architecture on the meta device, in its parameters' dtype and kernels (cached per config)."""
    dtype = next(model.parameters()).dtype
    return _meta_twin(type(model), json.dumps(model.config, sort_keys=True), dtype, _kernels(model))


def check_budget(max_memory_gb) -> None:
    """ValueError unless ``max_memory_gb`` is a positive, finite number (None is left to the caller)."""
    if isinstance(max_memory_gb, bool) or not isinstance(max_memory_gb, (int, float)) \
            or not math.isfinite(max_memory_gb) or max_memory_gb <= 0:
        raise ValueError(f"max_memory_gb must be a positive number of gigabytes, got {max_memory_gb!r}")


def smallest_chunk(model, kind: str) -> int:
    """The smallest chunk: one temporal factor of frames (encode), one latent frame (decode)."""
    return model.temporal_compression_ratio if kind == "encode" else 1


def _output_frames(model, kind: str, frames: int) -> int:
    tf = model.temporal_compression_ratio
    return 1 + (frames - 1) // tf if kind == "encode" else 1 + (frames - 1) * tf


def _kernels(model) -> str:
    """How the twin runs the convolutions: "winograd" when any of the model's may run Winograd (on CPU, in mode
    "auto" or "winograd", see ``set_conv_kernels``), so that its work buffers are counted (an upper bound under
    "auto", which may choose direct for some shapes); else "direct"."""
    if next(model.parameters()).device.type != "cpu":
        return "direct"  # Winograd runs on CPU only
    modes = {m.conv_kernel for m in model.modules() if hasattr(m, "conv_kernel")}
    return "direct" if modes <= {"direct"} else "winograd"


@functools.lru_cache(maxsize=256)
def _estimate(twin, kind: str, shape: tuple[int, ...], dtype: torch.dtype, chunk: int | None) -> int:
    b, c, t, h, w = shape
    if chunk is None:
        sim_t = t
    elif kind == "encode":
        sim_t = min(t, 1 + 3 * chunk)  # the first chunk carries the extra leading frame
    else:
        sim_t = min(t, 3 * chunk)
    x = torch.empty((b, c, sim_t, h, w), dtype=dtype, device="meta")
    tracker = _StorageBytes()
    with torch.inference_mode(), tracker:
        if kind == "encode":
            out = twin.encode(x, chunk_size=chunk).moments
        else:
            out = twin.decode(x, chunk_size=chunk)
    per_frame = out.untyped_storage().nbytes() // max(1, out.shape[2])
    del out
    # the whole clip's output instead of the simulated part's
    return tracker.peak + per_frame * (_output_frames(twin, kind, t) - _output_frames(twin, kind, sim_t))


def estimate_call_bytes(model, kind: str, shape, dtype: torch.dtype, chunk: int | None) -> int:
    """Bytes of tensors a ``model.encode`` / ``model.decode`` call holds at its peak (see module doc).

    Args:
        kind: "encode" (``shape`` is the video's) or "decode" (``shape`` is the latents').
        chunk: the chunk size, or None for the full pass.
    """
    if kind not in ("encode", "decode"):
        raise ValueError(f"kind must be 'encode' or 'decode', got {kind!r}")
    return _estimate(_twin(model), kind, tuple(int(s) for s in shape), dtype, chunk)


def _candidates(model, kind: str, frames: int) -> list[int]:
    """Chunk sizes worth trying, smallest first: 1, 2, 4, ... units up to the whole clip."""
    unit = smallest_chunk(model, kind)
    units = frames if kind == "decode" else max(1, (frames - 1) // unit)
    out, k = [], 1
    while k < units:
        out.append(k * unit)
        k *= 2
    return out


def choose_chunk_size(model, kind: str, shape, dtype: torch.dtype, max_memory_gb: float | None = None) -> int | None:
    """The chunk size for ``chunk_size="auto"``.

    Without a budget: the smallest chunk (:func:`smallest_chunk`), the least memory (exact streaming
    recomputes no convolution for small chunks). With ``max_memory_gb``: the largest chunk (powers of two of the
    smallest) whose estimated peak (:func:`estimate_call_bytes`) fits, or None (the full pass) when the
    full pass fits.

    Raises:
        ValueError: ``max_memory_gb`` not a positive number.
        MemoryBudgetError: even the smallest chunk does not fit (the message gives the estimate and what
            to do).
    """
    if max_memory_gb is None:
        return smallest_chunk(model, kind)
    check_budget(max_memory_gb)
    budget = max_memory_gb * GB
    frames = int(shape[2])
    if estimate_call_bytes(model, kind, shape, dtype, None) <= budget:
        return None
    best = None
    for chunk in _candidates(model, kind, frames):
        if estimate_call_bytes(model, kind, shape, dtype, chunk) > budget:
            break
        best = chunk
    if best is None:
        need = estimate_call_bytes(model, kind, shape, dtype, smallest_chunk(model, kind)) / GB
        raise MemoryBudgetError(
            f"max_memory_gb={max_memory_gb:g} is too small to {kind} {tuple(shape)}: the smallest chunk needs about "
            f"{need:.3g} GB at this frame size; raise the budget (--max_memory_gb), or, in the Python API, "
            "vae.enable_tiling() to work on smaller spatial tiles")
    return best
