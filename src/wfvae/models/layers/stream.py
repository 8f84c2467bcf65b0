"""Explicit causal cache for chunked (streaming) inference.

A :class:`StreamState` belongs to one ``encode``/``decode`` call, never to a module: every layer
that needs frames from earlier chunks reads and writes its own entry, keyed by the layer object.
Passing ``stream=None`` means "the whole sequence at once", which is also exactly what a stream of
one chunk with ``final=True`` computes.

Why chunked inference is lossless here: each temporal operation is written so that, given the
frames it has received so far, it emits exactly those output frames the full pass would produce
and that no longer depend on future input; everything else is carried in the state. Layers that
look one frame ahead (trilinear time upsampling) hold back their last output until the next chunk
or until ``final``. Where two branches with different hold-back meet, :func:`align` buffers the
branch that is ahead.
"""

from __future__ import annotations

from typing import Any

import torch

from wfvae.utils.memory import release_freed_memory


class StreamState:
    """Per-call carried frames for every causal layer, plus whether the current chunk is the last.

    Clip-level layers (GroupNorm over a whole clip, the legacy ``AttnBlock3D``) need information
    from every frame before they can emit anything exact. They are resolved by extra passes
    over the chunks: in each pass the first unresolved clip-level layer *collects* what it needs
    (statistics, or its whole low-resolution input) and stops the chunk there
    (:class:`StopChunk`); once every such layer is resolved, a final pass produces the output.
    Causal caches are per pass (:meth:`new_pass`); resolutions persist across passes.

    ``release_memory``: residual blocks and the decoder's full-resolution stages call
    :meth:`release_freed_memory` when they end, which hands the C heap's freed pages back to the operating
    system. Set for chunked calls on CPU, where glibc's heap keeps what one stage's activations freed while
    the next, larger stage grows it (``benchmarks/RESULTS.md``, "Chunked inference memory").
    """

    def __init__(self, release_memory: bool = False) -> None:
        self._entries: dict[Any, Any] = {}
        self.release_memory = release_memory
        self.final: bool = False
        self.resolved: dict[Any, Any] = {}
        self.collecting: Any = None
        self.collected: Any = None

    def get(self, key: Any, default: Any = None) -> Any:
        return self._entries.get(key, default)

    def set(self, key: Any, value: Any) -> None:
        self._entries[key] = value

    def release_freed_memory(self) -> None:
        """Return the C heap's free pages to the operating system if this call asked for it
        (``release_memory``); a no-op otherwise."""
        if self.release_memory:
            release_freed_memory()

    def new_pass(self) -> None:
        self._entries = {}
        self.final = False
        self.collecting = None
        self.collected = None

    def clip_level(self, layer: Any) -> str:
        """Role of a clip-level layer in this pass: "apply", "collect" or "skip"."""
        if layer in self.resolved:
            return "apply"
        if self.collecting is None:
            self.collecting = layer
        return "collect" if self.collecting is layer else "skip"


class StopChunk(Exception):
    """Raised by the collecting clip-level layer: the rest of this chunk's pass is not needed."""


def causal_time_window(
    x: torch.Tensor, stream: StreamState | None, key: Any, kernel: int, stride: int, silu: bool = False
) -> torch.Tensor:
    """Prepend the causal context for a temporal window of ``kernel`` frames moved by ``stride``.

    The first frame of the sequence is repeated ``kernel - 1`` times in front (the original
    WF-VAE's causal padding). In streaming mode the frames not yet consumed by a complete window
    are kept in ``stream`` and the returned tensor holds whole windows only, so
    ``conv(returned)`` yields exactly the outputs the full pass would give for these frames.

    Args:
        x: (B, C, T, H, W) new frames.
        silu: return the window of ``silu(x)`` instead, computed straight into the new buffer
            (no separate activation tensor; not differentiable, so only without gradients).
    Returns:
        (B, C, T', H, W) with ``(T' - kernel) % stride == 0`` when ``T' >= kernel``; ``T'`` may be
        smaller than ``kernel`` (no complete window yet) in streaming mode.
    """
    carried = stream.get(key) if stream is not None else None
    if x.shape[2] == 0 and carried is None:
        return x
    pad = carried.shape[2] if carried is not None else kernel - 1
    if pad == 0 and not silu:
        window = x
    else:
        b, c, t, h, w = x.shape
        window = torch.empty((b, c, pad + t, h, w), dtype=x.dtype, device=x.device, memory_format=padded_layout(x))
        if silu:
            torch.ops.aten.silu.out(x, out=window[:, :, pad:])
        else:
            window[:, :, pad:] = x
        if carried is not None:
            window[:, :, :pad] = carried
        elif pad:
            window[:, :, :pad] = window[:, :, pad : pad + 1]  # the first frame, repeated
    if stream is None:
        return window
    length = window.shape[2]
    num_windows = (length - kernel) // stride + 1 if length >= kernel else 0
    # clone: a view would keep the whole chunk alive and memory would grow with video length
    stream.set(key, window[:, :, num_windows * stride :].clone())
    if num_windows == 0:
        return window[:, :, :0]
    return window[:, :, : (num_windows - 1) * stride + kernel]


def padded_layout(x: torch.Tensor) -> torch.memory_format:
    """Memory format for a freshly allocated, causally padded copy of ``x`` (B, C, T, H, W).

    Channels-last whenever there is more than one channel: the copy is made anyway, and it
    lets the convolution that reads it run without a layout reorder.
    """
    return torch.channels_last_3d if x.shape[1] > 1 else torch.contiguous_format


def align(
    stream: StreamState | None, key: Any, a: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return equally long (dim 2) prefixes of two branches, buffering the surplus for later."""
    if stream is None:
        return a, b
    held = stream.get(key)
    if held is not None:
        a = torch.cat([held[0], a], dim=2)
        b = torch.cat([held[1], b], dim=2)
    n = min(a.shape[2], b.shape[2])
    stream.set(key, (a[:, :, n:].clone(), b[:, :, n:].clone()))
    return a[:, :, :n], b[:, :, :n]


def time_upsample_2x(
    x: torch.Tensor, mode: str, stream: StreamState | None, key: Any
) -> torch.Tensor:
    """Causal 2x temporal upsampling: frame 0 is kept once, frames 1.. are interpolated 2x.

    ``mode`` is ``"trilinear"`` or ``"nearest"`` (``F.interpolate`` with scale (2, 1, 1) and
    ``align_corners=False``). Trilinear output ``2j + 1`` blends input ``j`` and ``j + 1``, so in
    streaming mode the last output of each chunk is held back until the next chunk arrives (or
    the stream ends, where the full pass clamps at the border in the same way).
    """
    if stream is None:
        if x.shape[2] <= 1:
            return x
        rest = torch.nn.functional.interpolate(x[:, :, 1:], scale_factor=(2.0, 1.0, 1.0), mode=mode)
        return torch.cat([x[:, :, :1], rest], dim=2)

    state = stream.get(key) or {"started": False, "context": None}
    pieces = []
    if not state["started"] and x.shape[2] > 0:
        pieces.append(x[:, :, :1])
        x = x[:, :, 1:]
        state["started"] = True
    context = state["context"]
    if x.shape[2] > 0 or (stream.final and context is not None):
        window = x if context is None else torch.cat([context, x], dim=2)
        up = torch.nn.functional.interpolate(window, scale_factor=(2.0, 1.0, 1.0), mode=mode)
        # up[0] (with context) was emitted by the previous call; up[-1] still needs a later frame
        start = 0 if context is None else 1
        stop = up.shape[2] if stream.final else up.shape[2] - 1
        pieces.append(up[:, :, start:stop])
        state["context"] = window[:, :, -1:].clone()
    stream.set(key, state)
    if not pieces:
        return x[:, :, :0]
    return torch.cat(pieces, dim=2) if len(pieces) > 1 else pieces[0]
