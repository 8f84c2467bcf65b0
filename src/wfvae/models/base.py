"""Shared machinery of the video autoencoders: config, weights I/O, input checks, chunking."""

from __future__ import annotations

import inspect
import json
import logging
import math
import typing
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from torch import nn

from wfvae import checkpoint_keys as K
from wfvae.errors import CheckpointError, ConfigError
from wfvae.utils.io import atomic_write_bytes

from .chunk_plan import check_budget, choose_chunk_size
from .layers import conv_backward, kernel_choice, winograd
from .layers.blocks import AttentionBase, AttnBlock3D, ResnetBlock2D, ResnetBlock3D
from .layers.checkpointing import is_checkpointable, set_gradient_checkpointing
from .layers.conv import CausalConv3d, FrameConv2d, to_channels_last
from .layers.norm import is_clip_level
from .layers.stream import StopChunk, StreamState
from .outputs import DiagonalGaussian, ModelOutput

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
#: Weights file of a model folder: the diffusers name, so the original code (a diffusers ModelMixin)
#: and other tools that read the diffusers layout load our folders.
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
#: Weights file name wfvae wrote before it switched to the diffusers layout; still read.
LEGACY_WEIGHTS_NAME = "model.safetensors"
#: ``_diffusers_version`` written into ``config.json``: diffusers records the version that wrote a
#: config; this layout has been stable across its releases, so any recent version reads it.
DIFFUSERS_VERSION = "0.30.0"


class VideoAutoencoder(nn.Module):
    """Base class: a causal video VAE built from an original-format ``config.json``.

    Subclasses define ``_encode_chunk`` / ``_decode_chunk`` (one pass over some frames, with an
    optional :class:`StreamState`), ``temporal_compression_ratio``, ``latent_channels`` and
    ``config_class_name`` (the ``_class_name`` written to ``config.json``).
    """

    config_class_name: str = ""
    spatial_compression_ratio: int = 8
    temporal_compression_ratio: int = 4
    latent_channels: int = 0
    #: Blocks that hold most of the parameters and do not nest: the units FSDP shards one at a time
    #: (``wfvae.training.parallel.wrap_generator``).
    shard_units: tuple[type[nn.Module], ...] = (ResnetBlock2D, ResnetBlock3D, AttentionBase)
    # spatial tiling (opt-in, see enable_tiling); plain attributes, checked by encode/decode
    use_tiling: bool = False
    tile_sample_min_size: int = 256  # pixels: frames larger than this (H or W) are tiled
    tile_overlap: float = 0.25  # fraction of a tile shared with its neighbour, blended linearly

    # ---------------------------------------------------------------- tiling
    def enable_tiling(self, tile_sample_min_size: int = 256, overlap: float = 0.25) -> None:
        """Encode/decode large frames as overlapping spatial tiles, blended linearly at the seams.

        Peak memory then depends on the tile size, not the frame size; combine it with
        ``chunk_size`` to bound memory in time as well. Tiling is not exact: each tile sees zeros
        beyond its border, and the blend hides most of that (the PSNR cost against the untiled
        result is measured in ``benchmarks/RESULTS.md``). Frames no larger than the tile run
        untiled, bit for bit as without tiling.

        Args:
            tile_sample_min_size: tile height and width in pixels (a multiple of the spatial
                compression ratio, 8).
            overlap: fraction of the tile shared with each neighbour, in [0, 1); the step between
                tiles is ``tile_sample_min_size * (1 - overlap)`` rounded down to a multiple of 8.
        Raises:
            ValueError: tile size not a positive multiple of 8, or overlap outside [0, 1).
        """
        sf = self.spatial_compression_ratio
        if tile_sample_min_size <= 0 or tile_sample_min_size % sf != 0:
            raise ValueError(
                f"tile_sample_min_size must be a positive multiple of {sf} pixels; got {tile_sample_min_size}"
            )
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap is a fraction of the tile in [0, 1); got {overlap}")
        self.use_tiling = True
        self.tile_sample_min_size = int(tile_sample_min_size)
        self.tile_overlap = float(overlap)

    def disable_tiling(self) -> None:
        """Go back to encoding and decoding whole frames."""
        self.use_tiling = False

    # ---------------------------------------------------------------- training memory
    def enable_gradient_checkpointing(self) -> VideoAutoencoder:
        """Recompute each ResNet, attention and up/down-sampling block in the backward pass; returns ``self``.

        Training then keeps only the blocks' inputs between forward and backward instead of every
        activation inside them, for the price of one extra forward pass per step (measured in
        ``benchmarks/RESULTS.md``). Gradients are unchanged (bit for bit on CPU); dropout masks and
        autocast are replayed exactly. Works with DDP, FSDP and bf16 autocast. Inference without
        gradients and chunked (streaming) calls are not affected. See
        :mod:`wfvae.models.layers.checkpointing`.
        """
        set_gradient_checkpointing(self, True)
        return self

    def disable_gradient_checkpointing(self) -> VideoAutoencoder:
        """Keep every activation for the backward pass again (the default); returns ``self``."""
        set_gradient_checkpointing(self, False)
        return self

    @property
    def is_gradient_checkpointing(self) -> bool:
        """Whether :meth:`enable_gradient_checkpointing` is in effect."""
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules() if is_checkpointable(m))

    # ---------------------------------------------------------------- weight layout
    def use_channels_last_weights(self) -> VideoAutoencoder:
        """Store every convolution weight channels-last, like the activations; returns ``self``.

        Activations run channels-last, so a convolution with an NCDHW weight first copies the
        weight into the input's layout on every call, forward and backward (its measured share of
        a WF-VAE-L round trip and training step is in ``benchmarks/RESULTS.md``); after this call
        that copy is gone. The inference commands and ``wfvae train`` (except under ``--fsdp``)
        call it. Outputs agree with the default
        layout to float rounding (oneDNN may pick a kernel with another summation order; 3.9e-7
        max-abs on a WF-VAE-L float32 round trip). ``load_state_dict`` and ``.to()`` keep the
        layout and ``save_pretrained`` writes contiguous tensors, but ``state_dict()`` then holds
        non-contiguous tensors: call ``.contiguous()`` on them before ``safetensors.save_file``.
        Optimizers and DDP keep each parameter's layout for its gradient and state; FSDP2 shards
        along dim 0 of the default layout, so ``--fsdp`` training leaves it.
        """
        for conv in self.modules():
            if isinstance(conv, (nn.Conv2d, nn.Conv3d)):
                conv.weight.data = to_channels_last(conv.weight.data)
        return self

    def set_conv_kernels(self, mode: str = "auto") -> VideoAutoencoder:
        """Choose how the 3x3 convolutions run in CPU inference; returns ``self``.

        Applies to every stride-1 convolution with a 3x3 spatial kernel (the causal 3x3x3 convs
        and the per-frame 3x3 convs, most of the model's work) when it runs on CPU in float32 or
        float64 without gradients; training, GPUs and bf16 always use PyTorch's kernels.

        Args:
            mode: ``"auto"`` (what the inference commands use): the first call of each
                convolution shape times oneDNN's direct kernel and our Winograd F(2x2, 3x3)
                (2.25x fewer multiply-adds, built from GEMMs) and keeps the faster for that
                shape, in memory and in a small cache file (see
                :mod:`wfvae.models.layers.kernel_choice`); which one wins depends on the CPU
                (``benchmarks/RESULTS.md`` has a table per machine). ``"winograd"`` or
                ``"direct"`` force one kernel (``"direct"`` is the default of a fresh model).

        Both kernels compute the same convolution up to float rounding (against a float64
        reference the Winograd float32 layer error was smaller than the direct kernel's).
        Winograd works in blocks of frames and tile rows (about 32 MiB of transformed input
        each), so its work buffers do not grow with the frame size; with the transformed weights of the
        widest layers they are ~150 MB for WF-VAE-L, which ``chunk_size="auto"`` counts against its
        budget (``wfvae.models.chunk_plan``).
        """
        kernel_choice.check_mode(mode)
        for module in self.modules():
            if isinstance(module, CausalConv3d) and winograd.supports(module.conv):
                module.conv_kernel = mode
            elif isinstance(module, FrameConv2d) and winograd.supports(module):
                module.conv_kernel = mode
        return self

    def set_conv_backward_layout(self, mode: str = "auto") -> VideoAutoencoder:
        """Choose the memory layout in which CPU float32 training computes the gradients of the 3x3(x3)
        convolutions (every ``CausalConv3d`` and ``FrameConv2d``; plain ``nn.Conv2d`` layers such as the
        stride-2 spatial downsampling keep PyTorch's backward); returns ``self``.

        The activations run channels-last, and oneDNN's channels-last backward kernels are slower than its
        default-layout ones on some CPUs (1.24-1.6x on an AVX2 Zen 3 for WF-VAE-L's 3x3x3 layers; measured in
        ``benchmarks/RESULTS.md``). ``"auto"`` times both on the first backward call of each convolution shape
        and keeps the faster (cached like :meth:`set_conv_kernels`' choices); ``"contiguous"`` always runs the
        backward in the default layout; ``"channels_last"`` (the default of a fresh model) is PyTorch's own.
        Gradients agree up to float rounding; GPUs, bf16 autocast and inference are not affected
        (:mod:`wfvae.models.layers.conv_backward`). ``wfvae train`` passes ``--conv_backward``.
        """
        conv_backward.check_mode(mode)
        for module in self.modules():
            if isinstance(module, (CausalConv3d, FrameConv2d)):
                module.backward_layout = mode
        return self

    def _tile_geometry(self) -> tuple[int, int]:
        """(tile, stride) in pixels; the stride is a positive multiple of the spatial ratio."""
        sf, tile = self.spatial_compression_ratio, self.tile_sample_min_size
        stride = max(sf, int(tile * (1.0 - self.tile_overlap)) // sf * sf)
        return tile, stride

    def _needs_tiles(self, size: torch.Size, latent: bool = False) -> bool:
        scale = self.spatial_compression_ratio if latent else 1
        return any(s * scale > self.tile_sample_min_size for s in size)

    def _tiled_encode(self, video: torch.Tensor, chunk_size: int | str | None, budget: float | None) -> torch.Tensor:
        sf = self.spatial_compression_ratio
        tile, stride = self._tile_geometry()
        return _run_tiles(lambda x: self._encode_untiled(x, chunk_size, budget), video, tile, stride, scale=1 / sf)

    def _tiled_decode(self, latents: torch.Tensor, chunk_size: int | str | None, budget: float | None) -> torch.Tensor:
        sf = self.spatial_compression_ratio
        tile, stride = self._tile_geometry()
        return _run_tiles(lambda z: self._decode_untiled(z, chunk_size, budget), latents, tile // sf, stride // sf,
                          scale=sf)

    # ---------------------------------------------------------------- config
    def _record_config(self, values: dict[str, Any]) -> None:
        self.config = {"_class_name": self.config_class_name, **values}

    @classmethod
    def config_keys(cls) -> list[str]:
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    @classmethod
    def from_config(cls, config: dict[str, Any] | str | Path) -> VideoAutoencoder:
        """Build a randomly initialised model from a config dict or ``config.json`` path.

        Keys starting with ``_`` (``_class_name``, ``_diffusers_version``) are ignored; any other
        unknown key is an error listing the valid ones.
        """
        if not isinstance(config, dict):
            config = read_config(config)
        kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
        unknown = sorted(set(kwargs) - set(cls.config_keys()))
        if unknown:
            raise ConfigError(
                f"{cls.__name__} config has unknown keys {unknown}; valid keys: {cls.config_keys()}"
            )
        problems = config_value_problems(cls, kwargs)
        if problems:
            raise ConfigError(f"{cls.__name__} config has invalid values: " + "; ".join(problems))
        try:
            return cls(**kwargs)
        except (ValueError, TypeError, RuntimeError) as e:  # e.g. an unknown block name, channels vs groups
            raise ConfigError(f"{cls.__name__} config cannot be built: {e}") from e

    # ---------------------------------------------------------------- weights
    def load_weights(
        self, state_dict: dict[str, torch.Tensor], strict: bool = True, ignore_mismatched_sizes: bool = False
    ) -> None:
        """Load an original-format state dict; every problem is listed in one error.

        Args:
            strict: missing or unexpected keys are an error (default). With ``strict=False`` they
                are logged instead.
            ignore_mismatched_sizes: keys whose shape differs from the model keep their fresh
                initialisation (logged) instead of raising.
        """
        self.load_state_dict(self.check_weights(state_dict, strict, ignore_mismatched_sizes), strict=False)

    def check_weights(
        self, state_dict: dict[str, torch.Tensor], strict: bool = True, ignore_mismatched_sizes: bool = False
    ) -> dict[str, torch.Tensor]:
        """The part of ``state_dict`` that :meth:`load_weights` loads (``module.`` prefixes removed, mismatched
        shapes dropped when ignored); raises CheckpointError listing every problem. Works on a model sharded
        with FSDP2 too (its tensors report their full shapes)."""
        state_dict = {k.removeprefix(K.MODULE_PREFIX): v for k, v in state_dict.items()}
        own = self.state_dict()
        mismatched = [
            f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
            for k, v in state_dict.items()
            if k in own and tuple(v.shape) != tuple(own[k].shape)
        ]
        if mismatched and ignore_mismatched_sizes:
            logger.warning("ignoring %d mismatched tensors: %s", len(mismatched), "; ".join(mismatched))
            state_dict = {k: v for k, v in state_dict.items() if not (k in own and v.shape != own[k].shape)}
            mismatched_keys = {m.split(":")[0] for m in mismatched}
        else:
            mismatched_keys = set()
        missing = sorted(set(own) - set(state_dict) - mismatched_keys)
        unexpected = sorted(set(state_dict) - set(own))
        problems = []
        if mismatched and not ignore_mismatched_sizes:
            problems.append(f"shape mismatches ({len(mismatched)}): " + "; ".join(mismatched))
        if strict and missing:
            problems.append(f"missing keys ({len(missing)}): {missing}")
        if strict and unexpected:
            problems.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
        if problems:
            raise CheckpointError(
                f"weights do not fit {type(self).__name__}:\n  " + "\n  ".join(problems)
                + ("\n(pass ignore_mismatched_sizes=True to keep fresh weights for mismatched shapes)" if mismatched else "")
            )
        if missing or unexpected:
            logger.warning("non-strict load: missing %s, unexpected %s", missing, unexpected)
        return state_dict

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the diffusers layout the original code and the released weights use.

        ``directory/config.json`` holds the constructor arguments plus ``_class_name``
        (``WFVAEModel`` / ``CausalVAEModel``, the original's class names) and
        ``_diffusers_version``; ``directory/diffusion_pytorch_model.safetensors`` the weights
        (float tensors as stored). A ``model.safetensors`` left by an older wfvae in the same folder
        is removed, so the folder holds one set of weights.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write_bytes(directory / WEIGHTS_NAME, save(tensors, metadata={"format": "pt"}))
        config = {**self.config, "_diffusers_version": DIFFUSERS_VERSION}
        atomic_write_bytes(directory / CONFIG_NAME, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
        (directory / LEGACY_WEIGHTS_NAME).unlink(missing_ok=True)
        return directory

    # ---------------------------------------------------------------- checks
    def clip_level_layers(self, part: nn.Module | None = None) -> list[nn.Module]:
        """Layers whose output depends on the whole clip (GroupNorm over T, legacy AttnBlock3D).

        Chunked inference stays exact with them, but needs one extra collecting pass per such
        layer (cost grows, memory stays flat). Layernorm WF-VAE configs have none.
        """
        part = self if part is None else part
        return [m for m in part.modules() if is_clip_level(m) or isinstance(m, AttnBlock3D)]

    def check_video(self, video: torch.Tensor) -> None:
        """Raise ValueError unless ``video`` is (B, 3, 1 + k*t, H, W) with H, W divisible by s."""
        if video.dim() != 5:
            raise ValueError(f"video must be 5-D (B, 3, T, H, W); got shape {tuple(video.shape)}")
        _, c, t, h, w = video.shape
        if c != 3:
            raise ValueError(f"video must have 3 channels (RGB) in dim 1; got {c} (shape {tuple(video.shape)})")
        tf, sf = self.temporal_compression_ratio, self.spatial_compression_ratio
        if (t - 1) % tf != 0:
            lower = (t - 1) // tf * tf + 1
            raise ValueError(
                f"got {t} frames; {type(self).__name__} needs 1 + {tf}k frames, e.g. {lower} or {lower + tf}"
            )
        for name, size in (("height", h), ("width", w)):
            if size % sf != 0 or size == 0:
                lower = max(sf, size // sf * sf)
                raise ValueError(
                    f"{name} {size} is not divisible by the spatial compression {sf}; use e.g. {lower} or {lower + sf}"
                )

    def check_latents(self, z: torch.Tensor) -> None:
        if z.dim() != 5:
            raise ValueError(f"latents must be 5-D (B, C, T, H, W); got shape {tuple(z.shape)}")
        if z.shape[1] != self.latent_channels:
            raise ValueError(f"latents must have {self.latent_channels} channels; got {z.shape[1]}")

    # ---------------------------------------------------------------- public API
    def encode(
        self, video: torch.Tensor, chunk_size: int | str | None = None, max_memory_gb: float | None = None
    ) -> DiagonalGaussian:
        """Encode a video into the posterior over latents.

        Args:
            video: (B, 3, 1 + k*t, H, W) in [-1, 1], H and W divisible by the spatial factor.
            chunk_size: if given, encode ``chunk_size`` frames at a time (a multiple of the
                temporal factor) with a causal cache; the result equals the full pass. ``"auto"``
                picks it (see ``max_memory_gb``).
            max_memory_gb: with ``chunk_size="auto"``: the gigabytes of tensors the call may hold
                at its peak beyond the weights and the input (activations, causal caches, output);
                the largest chunk whose computed estimate fits is used (the full pass if it fits).
                Without it, ``"auto"`` takes the smallest chunk (least memory). See
                :mod:`wfvae.models.chunk_plan`.
        Returns:
            DiagonalGaussian over latents of shape (B, C, 1 + k, H/s, W/s).
        Raises:
            ValueError: a bad chunk size or budget, or a budget too small for this frame size.
        """
        self.check_video(video)
        _check_chunk_args(chunk_size, max_memory_gb, self.temporal_compression_ratio, "frames")
        if self.use_tiling and self._needs_tiles(video.shape[-2:]):
            return DiagonalGaussian(self._tiled_encode(video, chunk_size, max_memory_gb))
        return DiagonalGaussian(self._encode_untiled(video, chunk_size, max_memory_gb))

    def _encode_untiled(self, video: torch.Tensor, chunk_size: int | str | None, budget: float | None) -> torch.Tensor:
        if chunk_size == "auto":
            chunk_size = choose_chunk_size(self, "encode", video.shape, video.dtype, budget)
        if chunk_size is None:
            return self._encode_chunk(to_channels_last(video), None)[0].contiguous()
        # first chunk carries the extra leading frame: [0, 1 + n), [1 + n, 1 + 2n), ...
        bounds = [0] + list(range(1 + chunk_size, video.shape[2], chunk_size)) + [video.shape[2]]
        frames = 1 + (video.shape[2] - 1) // self.temporal_compression_ratio
        return self._run_chunks(lambda x, s: self._encode_chunk(x, s)[0], video, bounds, frames)

    def decode(
        self, latents: torch.Tensor, chunk_size: int | str | None = None, max_memory_gb: float | None = None
    ) -> torch.Tensor:
        """Decode latents (B, C, T', H', W') into a video (B, 3, 1 + (T'-1)*t, H'*s, W'*s).

        Args:
            chunk_size: if given, decode ``chunk_size`` latent frames at a time (any value >= 1)
                with a causal cache; the result equals the full pass. ``"auto"`` picks it from
                ``max_memory_gb`` as in :meth:`encode` (without it: one latent frame at a time).
        """
        self.check_latents(latents)
        _check_chunk_args(chunk_size, max_memory_gb, 1, "latent frames")
        if self.use_tiling and self._needs_tiles(latents.shape[-2:], latent=True):
            return self._tiled_decode(latents, chunk_size, max_memory_gb)
        return self._decode_untiled(latents, chunk_size, max_memory_gb)

    def _decode_untiled(self, latents: torch.Tensor, chunk_size: int | str | None, budget: float | None) -> torch.Tensor:
        if chunk_size == "auto":
            chunk_size = choose_chunk_size(self, "decode", latents.shape, latents.dtype, budget)
        if chunk_size is None:
            return self._decode_chunk(to_channels_last(latents), None)[0].contiguous()
        bounds = list(range(0, latents.shape[2], chunk_size)) + [latents.shape[2]]
        frames = 1 + (latents.shape[2] - 1) * self.temporal_compression_ratio
        return self._run_chunks(lambda z, s: self._decode_chunk(z, s)[0], latents, bounds, frames)

    def forward(
        self, video: torch.Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None
    ) -> ModelOutput:
        """Encode, sample (or take the mean), decode. Returns a :class:`ModelOutput`."""
        self.check_video(video)
        moments, enc_extra = self._encode_chunk(to_channels_last(video), None)
        posterior = DiagonalGaussian(moments)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        recon, dec_extra = self._decode_chunk(z, None)
        extra = None
        if enc_extra is not None and dec_extra is not None:
            extra = (enc_extra[0], dec_extra[0], enc_extra[1], dec_extra[1])
        return ModelOutput(sample=recon, posterior=posterior, extra=extra)

    def get_last_layer(self) -> torch.Tensor:
        """Weight of the decoder's output conv (for the adaptive GAN weight)."""
        conv_out = self.decoder.conv_out
        return conv_out.conv.weight if hasattr(conv_out, "conv") else conv_out.weight

    # ---------------------------------------------------------------- latent scaling
    def latent_scale_shift(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (scale, shift) broadcastable to latents, from the config's lists.

        A list shorter than the latent channels (the original configs list 4 values) is
        broadcast when it has one distinct value; otherwise it is an error.
        """
        out = []
        for key, default in (("scale", 1.0), ("shift", 0.0)):
            values = list(self.config.get(key) or [default])
            if len(values) != self.latent_channels:
                if len(set(values)) != 1:
                    raise ConfigError(
                        f"config '{key}' has {len(values)} values but the model has {self.latent_channels} latent channels"
                    )
                values = values[:1] * self.latent_channels
            out.append(torch.tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1, 1))
        return out[0], out[1]

    # ---------------------------------------------------------------- internals
    @staticmethod
    def _run_chunks(fn, x: torch.Tensor, bounds: list[int], frames: int) -> torch.Tensor:
        """Run ``fn`` chunk by chunk into one contiguous output of ``frames`` frames.

        Extra passes first resolve clip-level layers (see StreamState). Each chunk is made channels-last on
        its own (at most a copy of one chunk; converting all of ``x`` first copied the whole clip, so the peak
        grew with its length). Each chunk's frames are copied
        into the output as they come (no list of pieces and no final concatenation, which would hold the
        output twice), and on CPU the memory the chunk freed goes back to the operating system before the
        next one (:func:`~wfvae.utils.memory.release_freed_memory`), and within a chunk after every residual
        block and decoder stage (``StreamState.release_memory``), so the peak is one stage's working set plus
        the causal caches and the output.
        """
        on_cpu = x.device.type == "cpu"
        stream = StreamState(release_memory=on_cpu)
        while True:
            stream.new_pass()
            out, filled = None, 0
            for i, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
                stream.final = i == len(bounds) - 2
                try:
                    piece = fn(to_channels_last(x[:, :, start:stop]), stream)
                except StopChunk:
                    continue
                if out is None:
                    out = piece.new_empty((piece.shape[0], piece.shape[1], frames, *piece.shape[3:]))
                if filled + piece.shape[2] > frames:
                    raise RuntimeError(f"chunked pass produced more than the {frames} frames expected")
                out[:, :, filled : filled + piece.shape[2]] = piece
                filled += piece.shape[2]
                del piece
                stream.release_freed_memory()
            if stream.collecting is None:
                if filled != frames:
                    raise RuntimeError(f"chunked pass produced {filled} frames, expected {frames}")
                return out
            stream.resolved[stream.collecting] = stream.collecting.resolve(stream.collected)

    def _encode_chunk(self, video, stream):  # pragma: no cover - abstract
        raise NotImplementedError

    def _decode_chunk(self, latents, stream):  # pragma: no cover - abstract
        raise NotImplementedError


def _check_chunk_args(chunk_size, max_memory_gb, unit: int, what: str) -> None:
    """ValueError unless ``chunk_size`` is None, "auto" or a positive multiple of ``unit``, and ``max_memory_gb``
    is None or (with "auto") a positive number."""
    if chunk_size == "auto":
        if max_memory_gb is not None:
            check_budget(max_memory_gb)
        return
    if max_memory_gb is not None:
        raise ValueError("max_memory_gb chooses the chunk size, so it needs chunk_size='auto'; "
                         f"got chunk_size={chunk_size!r}")
    if chunk_size is None:
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0 or chunk_size % unit:
        kind = f"a positive multiple of {unit} {what}" if unit > 1 else f">= 1 {what.removesuffix('s')}"
        raise ValueError(f"chunk_size must be {kind} (or 'auto'); got {chunk_size!r}")


def _tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Tile origins along one axis: the fewest tiles of ``tile`` every ``stride`` covering ``size``."""
    count = 1 + max(0, -(-(size - tile) // stride))  # ceil((size - tile) / stride) further tiles
    return [k * stride for k in range(count)]


def _blend(prev: torch.Tensor, cur: torch.Tensor, extent: int, dim: int) -> torch.Tensor:
    """Cross-fade the first ``extent`` rows (along ``dim``) of ``cur`` from the rows of ``prev``
    that cover the same pixels (``prev``'s rows ``stride .. stride + extent``, i.e. its last
    ``extent`` rows when ``prev`` is a full tile)."""
    if extent <= 0:
        return cur
    shape = [1] * cur.dim()
    shape[dim] = extent
    weight = (torch.arange(extent, dtype=cur.dtype, device=cur.device) / extent).view(shape)
    head = cur.narrow(dim, 0, extent)
    prev_tail = prev.narrow(dim, prev.shape[dim] - extent, extent)
    cur = cur.clone()
    cur.narrow(dim, 0, extent).copy_(prev_tail * (1 - weight) + head * weight)
    return cur


def _run_tiles(fn, x: torch.Tensor, tile: int, stride: int, scale: float) -> torch.Tensor:
    """Apply ``fn`` to overlapping (tile x tile) windows of x's last two dims and stitch the results.

    ``scale`` is the output/input size ratio of ``fn`` (1/8 for encode, 8 for decode). Each tile
    is blended with its upper and left neighbours over the overlap, then cut to its stride, as in
    diffusers' ``AutoencoderKL.tiled_encode``.
    """
    height, width = x.shape[-2:]
    out_stride, out_tile = round(stride * scale), round(tile * scale)
    extent = out_tile - out_stride  # overlap in output pixels
    rows_i, cols_j = _tile_starts(height, tile, stride), _tile_starts(width, tile, stride)
    rows, above = [], None
    for a, i in enumerate(rows_i):
        row, left = [], None
        for b, j in enumerate(cols_j):
            y = fn(x[..., i : i + tile, j : j + tile])
            if above is not None:
                y = _blend(above[b], y, extent, dim=-2)
            if left is not None:
                y = _blend(left, y, extent, dim=-1)
            row.append(y)
            left = y
        above = row
        last_row = a == len(rows_i) - 1
        kept = [t if b == len(cols_j) - 1 else t[..., :out_stride] for b, t in enumerate(row)]
        kept = [t if last_row else t[..., :out_stride, :] for t in kept]
        rows.append(torch.cat(kept, dim=-1))
    return torch.cat(rows, dim=-2)


def read_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"model config not found: {path}")
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"model config {path} is not a JSON text file ({e}); pass the model's config.json") from e
    if not isinstance(config, dict):
        raise ConfigError(f"model config {path} holds a JSON {type(config).__name__}, not an object of settings")
    return config


# Integer settings that may be 0 (counts of optional blocks); every other integer must be >= 1.
_MAY_BE_ZERO = {"encoder_num_resblocks", "decoder_num_resblocks", "num_res_blocks", "connect_res_layer_num"}


def _type_problem(value: Any, hint: Any) -> str | None:
    """Why ``value`` does not fit the annotation ``hint`` (None when it fits)."""
    origin = typing.get_origin(hint)
    if origin in (list, tuple, typing.Sequence) or str(origin) == "<class 'collections.abc.Sequence'>":
        if not isinstance(value, (list, tuple)):
            return f"expected a list, got {type(value).__name__} {value!r}"
        (inner,) = typing.get_args(hint)[:1] or (Any,)
        for item in value:
            problem = _type_problem(item, inner)
            if problem:
                return f"list item: {problem}"
        return None
    if hint is bool:
        return None if isinstance(value, bool) else f"expected true/false, got {value!r}"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else f"expected an integer, got {value!r}"
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"expected a number, got {value!r}"
    if hint is str:
        return None if isinstance(value, str) else f"expected a string, got {value!r}"
    return None


def config_value_problems(cls: type, values: dict[str, Any]) -> list[str]:
    """Type and range problems of a model config, checked against the constructor's annotations.

    Integers must be >= 1 (block counts >= 0), numbers finite, ``dropout`` in [0, 1). Runs before
    any layer is built, so ``base_channels: -8`` or ``"eight"`` is reported by name.
    """

    hints = typing.get_type_hints(cls.__init__)
    problems = []
    for key, value in values.items():
        hint = hints.get(key)
        if hint is None:
            continue
        problem = _type_problem(value, hint)
        if problem is None:
            items = value if isinstance(value, (list, tuple)) else [value]
            numbers = [v for v in items if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
                problem = f"must be finite, got {value!r}"
            elif key == "dropout" and not 0.0 <= value < 1.0:
                problem = f"must be in [0, 1), got {value!r}"
            elif any(isinstance(v, int) for v in numbers) and typing.get_args(hint) != (float,) and hint is not float:
                least = 0 if key in _MAY_BE_ZERO else 1
                if any(isinstance(v, int) and v < least for v in numbers):
                    problem = f"must be >= {least}, got {value!r}"
        if problem:
            problems.append(f"{key}: {problem}")
    return problems
