"""Winograd F(2x2, 3x3) convolution for CPU inference.

A 3x3 convolution (stride 1, padding 1) computes each 2x2 block of output pixels from a 4x4 input
tile. Winograd's minimal filtering algorithm does that with 16 multiplications per (input, output)
channel pair instead of 36: the tile and the filter are moved into a 4x4 "transform domain"
(``V = Bt d B``, ``U = G g Gt``), multiplied position by position, and moved back
(``Y = At M A``). Summed over input channels, the 16 position-wise products are 16 matrix
multiplications, so the work becomes 16 GEMMs of (pixels/4 x C_in) @ (C_in x C_out), 2.25x fewer
multiply-adds than the direct convolution (run as one batched GEMM). A time kernel of ``kt`` taps
(the causal 3D convs) adds ``kt`` such batched GEMMs, accumulated in place.

The transforms only add, subtract and halve, so the result differs from the direct convolution
by float rounding alone (a few 1e-6 relative in float32, ~1e-15 in float64). The transformed input
is 4x the size of the input it comes from; the output is computed in blocks of frames and tile rows to
bound that buffer and the GEMM products.

Used by :class:`~wfvae.models.layers.conv.CausalConv3d` and
:class:`~wfvae.models.layers.conv.FrameConv2d` when the model's Winograd mode is on (see
``VideoAutoencoder.set_conv_kernels``, which in "auto" mode times it against the direct kernel per
shape, see :mod:`~wfvae.models.layers.kernel_choice`): CPU, no gradients, float32/float64.
"""

from __future__ import annotations

import torch

# Winograd only pays when a call has at least this many output pixels (frames x H x W x batch); below
# it oneDNN's direct kernel was faster on WF-VAE-L's shapes (measurements: benchmarks/RESULTS.md).
MIN_OUTPUT_PIXELS = 1024
# values of one block's transformed input (16 x frames x tiles x C_in); 2**23 floats = 32 MiB: about as
# fast as larger blocks with far less transient memory, while much smaller blocks are slower (small
# GEMMs); bench_conv --block_elements measures it, the numbers are in benchmarks/RESULTS.md.
BLOCK_ELEMENTS = 2**23


def supports(conv: torch.nn.Conv2d | torch.nn.Conv3d) -> bool:
    """True for the convolutions this module computes: 3x3 in space, stride 1, padding 1, one group."""
    if isinstance(conv.padding, str) or conv.groups != 1 or conv.padding_mode != "zeros":
        return False
    kernel, padding = tuple(conv.kernel_size), tuple(conv.padding)
    return (
        kernel[-2:] == (3, 3) and padding[-2:] == (1, 1) and padding[:-2] in ((), (0,))
        and all(v == 1 for v in conv.stride) and all(v == 1 for v in conv.dilation)
    )


def applies(x: torch.Tensor, kernel_t: int) -> bool:
    """Whether a call with input ``x`` runs here: CPU float32/float64 without gradients or autocast, large enough.

    Each call transforms the weights (16 values per (out, in, time tap)) and its GEMMs have one
    row per 2x2 output tile, so small calls (a few frames of 8x8 or 16x16 pixels) run slower than
    oneDNN's direct kernel; those keep it.
    """
    # "meta": the shapes-only twin of ``chunk_plan``, which runs Winograd to count its work buffers
    if x.device.type not in ("cpu", "meta") or x.dtype not in (torch.float32, torch.float64) \
            or torch.is_grad_enabled():
        return False
    if torch.is_autocast_enabled("cpu"):  # bf16 autocast: oneDNN's low-precision kernels, not float32 GEMMs
        return False
    frames = x.shape[2] - kernel_t + 1 if x.dim() == 5 else 1
    return frames * x.shape[-2] * x.shape[-1] * x.shape[0] >= MIN_OUTPUT_PIXELS


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """``U = G g Gt`` of one time tap for every (out, in) pair: (Co, Ci, 3, 3) -> (16, Co, Ci).

    ``G`` has rows (1, 0, 0), (1/2, 1/2, 1/2), (1/2, -1/2, 1/2), (0, 0, 1). Entry ``(i, j)`` of ``U`` is
    ``sum_ab G[i, a] G[j, b] g[a, b]``, so all 16 are one product with the 16 x 9 matrix ``kron(G, G)``:
    a batched GEMM over the output channels, reading the 9 taps of each (out, in) pair as a (9, Ci)
    matrix. With channels-last weights (Ci fastest) that matrix is a view of the weight; the result
    is a (16, Co, Ci) view of a (Co, 16, Ci) tensor, and the GEMMs read ``U[k]`` transposed. Against
    applying ``G`` to rows and then columns, only the order of the float additions differs.
    """
    co, ci = weight.shape[:2]
    taps = weight.permute(0, 2, 3, 1).reshape(co, 9, ci)  # a view for channels-last weights
    return torch.matmul(_kron_g(weight.dtype, weight.device), taps).transpose(0, 1)


_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def _kron_g(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``kron(G, G)``, 16 x 9: row ``4i + j``, column ``3a + b``."""
    g = torch.tensor(_G, dtype=dtype, device=device)
    return torch.kron(g, g)


def _taps(d: torch.Tensor, dim: int, n: int) -> list[torch.Tensor]:
    """The 4 rows (or columns) of every tile along ``dim``: views ``d[a : a + 2n - 1 : 2]``, a = 0..3."""
    return [d.narrow(dim, a, 2 * n - 1)[(slice(None),) * dim + (slice(None, None, 2),)] for a in range(4)]


def plan_blocks(t_out: int, kernel_t: int, nh: int, nw: int, channels: int,
                block_elements: int = BLOCK_ELEMENTS) -> tuple[int, int]:
    """``(output frames, tile rows)`` per block, so that a block's transformed input
    (16 x input frames x tile rows x ``nw`` x ``channels`` values) stays within ``block_elements``.

    All frames with as many tile rows as fit, or (long clips) one tile row with as many frames as fit;
    at least one output frame and one tile row. Splitting frames re-transforms ``kernel_t - 1`` frames
    per block; splitting rows costs nothing but smaller GEMMs, so rows are split first.
    """
    t_in = t_out + kernel_t - 1
    budget = max(1, block_elements // (16 * nw * channels))  # input frames x tile rows
    if budget >= t_in:
        return t_out, min(nh, budget // t_in)
    return max(1, budget - (kernel_t - 1)), 1


def conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
           block_elements: int = BLOCK_ELEMENTS) -> torch.Tensor:
    """Convolve ``x`` (B, C, T, H, W) with ``weight`` (Co, C, kt, 3, 3): no time padding, 1 px in space.

    Returns (B, Co, T - kt + 1, H, W), channels-last 3D. The output is computed in blocks of frames and
    rows of 2x2 tiles (:func:`plan_blocks`), so the buffers of one block (its transformed input and
    its 16 GEMM products) stay near ``block_elements`` values each whatever the frame size.
    """
    b, c, t, h, w = x.shape
    co, kt = weight.shape[0], weight.shape[2]
    t_out = t - kt + 1
    nh, nw = (h + 1) // 2, (w + 1) // 2
    out = torch.empty((b, co, t_out, h, w), dtype=x.dtype, device=x.device, memory_format=torch.channels_last_3d)
    out_l = out.permute(0, 2, 3, 4, 1)  # (B, T, H, W, Co) view, contiguous
    x_l = x.permute(0, 2, 3, 4, 1)  # (B, T, H, W, C)
    frames_per_block, rows_per_block = plan_blocks(t_out, kt, nh, nw, c, block_elements)
    one_block = b == 1 and frames_per_block >= t_out and rows_per_block >= nh
    # Several blocks share the transformed weights of all taps (16/9 of the weight's size); a single
    # block transforms one tap at a time, which keeps the transient small for the widest layers.
    taps = None if one_block else [transform_weight(weight[:, :, dt]) for dt in range(kt)]
    blocks = [(i, t0, r0) for i in range(b) for t0 in range(0, t_out, frames_per_block)
              for r0 in range(0, nh, rows_per_block)]
    if x.device.type == "meta":
        # chunk_plan's shapes-only twin: blocks run one after another, the first is the largest and only the
        # last can be cropped (its own output buffer), so these two hold the call's peak; the blocks between
        # would only repeat the first (slowly, on meta)
        blocks = blocks[:1] + blocks[1:][-1:]
    for i, t0, r0 in blocks:
        tb = min(frames_per_block, t_out - t0)
        rb = min(rows_per_block, nh - r0)
        v = _input_transform(x_l[i, t0 : t0 + tb + kt - 1], r0, rb, nw)  # (16, tb+kt-1, rb*nw, C)
        m = x.new_empty((16, tb * rb * nw, co))
        for dt in range(kt):  # the 16 transform positions as one batched GEMM per time tap
            u = taps[dt] if taps is not None else transform_weight(weight[:, :, dt])
            rows = v[:, dt : dt + tb].reshape(16, tb * rb * nw, c)
            if dt == 0:
                torch.bmm(rows, u.transpose(1, 2), out=m)
            else:
                m.baddbmm_(rows, u.transpose(1, 2))
        del v, u, rows
        _output_transform(m.view(4, 4, tb, rb, nw, co), out_l[i, t0 : t0 + tb], 2 * r0)
        del m  # before the next block's input transform: one block's buffers alive at a time
    if bias is not None:
        out_l.add_(bias)
    return out


def _input_transform(frames: torch.Tensor, r0: int, rb: int, nw: int) -> torch.Tensor:
    """(T, H, W, C) -> ``Bt d B`` of tile rows ``r0 .. r0+rb-1`` (4x4 tiles, stride 2, 1 px of zero
    padding around the frame), laid out (16, T, rb*nw, C)."""
    t, h, w, c = frames.shape
    # tile row r reads frame rows 2r-1 .. 2r+2; rows outside the frame are the zero padding
    first, last = 2 * r0 - 1, 2 * (r0 + rb)  # inclusive
    lo, hi = max(first, 0), min(last + 1, h)
    padded = frames.new_zeros((t, 2 * rb + 2, 2 * nw + 2, c))
    padded[:, lo - first : hi - first, 1 : w + 1] = frames[:, lo:hi]
    d0, d1, d2, d3 = _taps(padded, 1, rb)  # (T, rb, 2nw+2, C) each
    rows = (d0 - d2, d1 + d2, d2 - d1, d1 - d3)
    del padded, d0, d1, d2, d3
    v = frames.new_empty((16, t, rb, nw, c))
    for i, r in enumerate(rows):
        e0, e1, e2, e3 = _taps(r, 2, nw)  # (T, rb, nw, C) each
        torch.sub(e0, e2, out=v[4 * i + 0])
        torch.add(e1, e2, out=v[4 * i + 1])
        torch.sub(e2, e1, out=v[4 * i + 2])
        torch.sub(e1, e3, out=v[4 * i + 3])
    return v.view(16, t, rb * nw, c)


def _output_transform(m: torch.Tensor, out: torch.Tensor, row0: int) -> None:
    """``At M A`` of (4, 4, T, rb, nw, Co) products into rows ``row0 ..`` of ``out`` (T, H, W, Co),
    cropping what falls outside the frame (odd height or width)."""
    t, rb, nw, co = m.shape[2:]
    h, w = out.shape[1:3]
    s0 = m[0] + m[1] + m[2]  # (4, T, rb, nw, Co): rows of At M
    s1 = m[1] - m[2] - m[3]
    rows = min(2 * rb, h - row0)
    cropped = rows < 2 * rb or w < 2 * nw  # the last tile row or column reaches past the frame
    target = out.new_empty((t, 2 * rb, 2 * nw, co)) if cropped else out[:, row0 : row0 + rows]
    for a, s in enumerate((s0, s1)):
        torch.add(s[0] + s[1], s[2], out=target[:, a::2, 0::2])
        torch.sub(s[1] - s[2], s[3], out=target[:, a::2, 1::2])
    if cropped:
        out[:, row0 : row0 + rows].copy_(target[:, :rows, :w])
