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
whole clip is added on top. The twin of a CPU model also stacks the input of the small float32
convolutions that ``conv.conv3d_onednn`` hands to oneDNN, as the CPU does; our Winograd kernel's work
buffers are counted when the model's kernel mode is "auto" or "winograd" (the twin runs Winograd on every
eligible layer: an upper bound for "auto"). Inside ``torch.autocast`` (``--dtype bf16``) autocast's per-call
casts are counted, and on CPU the twin of a model without group norms runs in bf16
(:func:`estimate_call_bytes`). What it does not count:
the model's weights and input (already allocated before the call), convolution libraries' scratch space and
weight reorders, the extra outputs held while ``set_conv_kernels("auto")`` times a new shape for the first
time on a machine (measured: up to 10% of a WF-VAE-L encode's working set, once per shape), and memory the
C allocator keeps after a free. Measured against the process's malloc peak and resident growth in
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
from torch.utils._pytree import tree_leaves

from wfvae.errors import ConfigError
from wfvae.models.layers.twin import STANDS_FOR, autocast_enabled

__all__ = ["MemoryBudgetError", "check_budget", "choose_chunk_size", "estimate_call_bytes", "smallest_chunk"]

GB = 1e9
_CAUSAL_PAD = 2  # frames a causal 3-tap convolution puts before its input


class MemoryBudgetError(ConfigError):
    """``max_memory_gb`` is below what the smallest chunk needs (a ValueError; commands exit 2 with it)."""


# the ops autocast runs in its lower precision (bf16/fp16), casting their float32 arguments for the call
_AUTOCAST_CASTING_OPS = frozenset(f"aten::{name}" for name in (
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "convolution",
    "_convolution", "linear", "matmul", "mm", "bmm", "baddbmm", "addmm", "addbmm"))


class _StorageBytes(TorchDispatchMode):
    """Live bytes of the tensor storages created under this mode (and their peak).

    Autocast's per-call casts, for a twin that runs without autocast: while an op autocast runs in lower
    precision runs, a cast copy of each argument it would cast is counted as live, as on the real model.
    ``autocast_cast``: tensors (the twin's weights and buffers, already in the autocast dtype) that autocast would
    cast from float32. ``cast_float32_to``: for a float32 twin, every float32 argument of such an op, counted
    at this dtype's size.
    """

    def __init__(self, autocast_cast: tuple[torch.Tensor, ...] = (),
                 cast_float32_to: torch.dtype | None = None) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._tracked: set[int] = set()
        self._cast_ids = {id(t) for t in autocast_cast}
        self._cast_to = cast_float32_to

    def _cast_bytes(self, args) -> int:
        total = 0
        for a in args:
            if not isinstance(a, torch.Tensor):
                continue
            if id(a) in self._cast_ids:
                total += a.untyped_storage().nbytes()
            elif self._cast_to is not None and a.dtype == torch.float32:
                total += a.numel() * self._cast_to.itemsize
        return total

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        cast = 0
        if (self._cast_ids or self._cast_to is not None) and func._schema.name in _AUTOCAST_CASTING_OPS:
            cast = self._cast_bytes(args)
            self.live += cast
            self.peak = max(self.peak, self.live)
        out = func(*args, **(kwargs or {}))
        self._count(func, args, kwargs, out)  # the output is allocated while the casts live
        self.live -= cast
        return out

    def _count(self, func, args, kwargs, out) -> None:
        # an op that may return an alias (a view, an in-place or out= result, ``to``) adds memory only where its
        # result is not stored in one of its inputs' storages: ``to(dtype)`` copies, a view does not
        aliasing = any(r.alias_info is not None for r in func._schema.returns)
        inputs = {id(a.untyped_storage()) for a in tree_leaves((args, kwargs))
                  if isinstance(a, torch.Tensor)} if aliasing else set()
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = id(storage)  # storages keep one Python object while they live
                if key not in self._tracked and key not in inputs:
                    self._tracked.add(key)
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._freed, key, storage.nbytes())

    def _freed(self, key: int, nbytes: int) -> None:
        self._tracked.discard(key)
        self.live -= nbytes


@functools.lru_cache(maxsize=8)
def _meta_twin(cls: type, config_json: str, dtype: torch.dtype, kernels: str, host: str) -> torch.nn.Module:
    with torch.device("meta"):
        twin = cls.from_config(json.loads(config_json)).to(dtype).eval().set_conv_kernels(kernels)
    # the layers whose code path depends on the device take the model's (layers/twin.py): on the CPU small
    # float32 convolutions stack their input for oneDNN (counted); on CUDA GroupNorm keeps channels-last
    for module in twin.modules():
        if isinstance(module, (torch.nn.Conv3d, torch.nn.GroupNorm)):
            setattr(module, STANDS_FOR, host)
    return twin


def _twin(model, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """The model's architecture on the meta device (cached per config), in ``dtype`` (default: its parameters')
    and its kernels; in an autocast dtype, always with direct kernels (Winograd does not run under autocast)."""
    kernels = _kernels(model) if dtype is None else "direct"
    param = next(model.parameters())
    return _meta_twin(type(model), json.dumps(model.config, sort_keys=True), dtype or param.dtype, kernels,
                      param.device.type)


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The lower precision of an enclosing ``torch.autocast`` region on ``device_type``, or None outside one."""
    if not autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def _low_precision_twin_holds(model, low: torch.dtype) -> bool:
    """Whether a twin stored in ``low`` reproduces the autocast call (measured, ``tests/test_chunk_budget.py``):
    on CPU in bf16 without group norms (LayerNorm keeps bf16 there). Not on CUDA, whose autocast runs norms in
    float32, nor with ``ClipGroupNorm``, whose affine step (bf16 times its float32 weight) promotes to float32."""
    return (next(model.parameters()).device.type == "cpu" and low == torch.bfloat16
            and not any(isinstance(m, torch.nn.GroupNorm) for m in model.modules()))


def _autocast_weight_cache(model, low: torch.dtype) -> int:
    """Bytes of autocast's cache of cast weights: outside inference mode autocast keeps the low-precision copy
    of every float32 leaf parameter that requires grad for the whole region (``torch.no_grad`` does not stop it)."""
    if torch.is_inference_mode_enabled() or not torch.is_autocast_cache_enabled():
        return 0
    return sum(p.numel() for p in model.parameters() if p.requires_grad and p.dtype == torch.float32) * low.itemsize


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


def _estimate(twin, kind: str, shape: tuple[int, ...], dtype: torch.dtype, chunk: int | None,
              autocast: torch.dtype | None = None) -> int:
    """The twin's peak; ``autocast``: the dtype of an autocast region to emulate (its per-call casts)."""
    # the CPU rule of conv3d_onednn reads oneDNN's switch: part of the cached estimate's key
    return _estimate_cached(twin, kind, shape, dtype, chunk, autocast, torch.backends.mkldnn.enabled)


@functools.lru_cache(maxsize=256)
def _estimate_cached(twin, kind: str, shape: tuple[int, ...], dtype: torch.dtype, chunk: int | None,
                     autocast: torch.dtype | None, onednn: bool) -> int:
    b, c, t, h, w = shape
    if chunk is None:
        sim_t = t
    elif kind == "encode":
        sim_t = min(t, 1 + 3 * chunk)  # the first chunk carries the extra leading frame
    else:
        sim_t = min(t, 3 * chunk)
    x = torch.empty((b, c, sim_t, h, w), dtype=dtype, device="meta")
    if autocast is None:
        tracker = _StorageBytes()
    elif dtype == autocast:  # a twin stored in the autocast dtype: its weights and buffers stand for the casts
        tracker = _StorageBytes(autocast_cast=tuple(twin.parameters()) + tuple(twin.buffers()))
    else:  # a float32 twin: every float32 argument of a casting op
        tracker = _StorageBytes(cast_float32_to=autocast)
    # the twin runs outside any autocast region of the caller: its dtype already says what autocast would do
    with torch.inference_mode(), torch.autocast("cpu", enabled=False), tracker:
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

    Inside a ``torch.autocast`` region on the model's device (``--dtype bf16``) autocast casts the arguments of
    its lower-precision ops (convolutions, matrix products) for each call; those casts are counted, live while
    the op runs. On CPU in bf16, for models without group norms (WF-VAE's LayerNorm keeps bf16 there), the twin
    runs in bf16, with direct kernels, plus the first convolution's causally padded input, which exists in the
    input's ``dtype`` before autocast casts it. Elsewhere (CUDA, whose autocast runs norms in float32; models
    with group norms, whose affine step promotes bf16 to float32; every CausalVAE has one) the twin runs in
    float32 with the casts added: an upper bound of the autocast call. Outside inference mode, autocast's cache
    of cast weights comes on top (every float32 parameter that requires grad: an upper bound).

    Args:
        kind: "encode" (``shape`` is the video's) or "decode" (``shape`` is the latents').
        dtype: the input's dtype (under autocast, float32 or the autocast dtype).
        chunk: the chunk size, or None for the full pass.
    """
    if kind not in ("encode", "decode"):
        raise ValueError(f"kind must be 'encode' or 'decode', got {kind!r}")
    shape = tuple(int(s) for s in shape)
    param = next(model.parameters())
    low = _autocast_dtype(param.device.type)
    if low is None:
        return _estimate(_twin(model), kind, shape, dtype, chunk)
    if param.dtype != torch.float32:
        # autocast leaves weights in another precision (bf16, float64) alone and casts a float32 input to them
        padded_input = _padded_input(kind, shape, chunk, dtype) if dtype != param.dtype else 0
        return _estimate(_twin(model), kind, shape, param.dtype, chunk) + padded_input
    cache = _autocast_weight_cache(model, low)
    if not _low_precision_twin_holds(model, low):
        return _estimate(_twin(model, torch.float32), kind, shape, torch.float32, chunk, autocast=low) + cache
    padded_input = _padded_input(kind, shape, chunk, dtype) if dtype != low else 0
    return _estimate(_twin(model, low), kind, shape, low, chunk, autocast=low) + padded_input + cache


def _padded_input(kind: str, shape: tuple[int, ...], chunk: int | None, dtype: torch.dtype) -> int:
    """Bytes of the longest (first) chunk of the input, causally padded, in ``dtype``."""
    b, c, t, h, w = shape
    first = t if chunk is None else min(t, chunk + (kind == "encode"))
    return b * c * (first + _CAUSAL_PAD) * h * w * dtype.itemsize


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
