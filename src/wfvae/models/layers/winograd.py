"""Winograd F(2x2, 3x3) convolution for CPU inference.

A 3x3 convolution (stride 1, padding 1) computes each 2x2 block of output pixels from a 4x4 input
tile. Winograd's minimal filtering algorithm does that with 16 multiplications per (input, output)
channel pair instead of 36: the tile and the filter are moved into a 4x4 "transform domain"
(``V = Bt d B``, ``U = G g Gt``), multiplied position by position, and moved back
(``Y = At M A``). Summed over input channels, the 16 position-wise products are 16 matrix
multiplications, so the work becomes 16 GEMMs of (pixels/4 x C_in) @ (C_in x C_out), 2.25x fewer
multiply-adds than the direct convolution. A time kernel of ``kt`` taps (the causal 3D convs) adds
``kt`` such GEMMs per output frame, accumulated in place.

The transforms only add, subtract and halve, so the result differs from the direct convolution
by float rounding alone (a few 1e-6 relative in float32, ~1e-15 in float64). The transformed input
is 4x the size of the input it comes from; frames are processed in blocks to bound that buffer.

Used by :class:`~wfvae.models.layers.conv.CausalConv3d` and
:class:`~wfvae.models.layers.conv.FrameConv2d` when the model's Winograd mode is on (see
``VideoAutoencoder.use_winograd_convolutions``): CPU, no gradients, float32/float64.
"""

from __future__ import annotations

import torch

# Winograd only pays when a call has at least this many output pixels (frames x H x W x batch)
MIN_OUTPUT_PIXELS = 8192
# elements of one block's transformed input (16 x frames x tiles x C_in); 2**25 floats = 128 MiB
BLOCK_ELEMENTS = 2**25


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
    """Whether a call with input ``x`` runs here: CPU float32/float64 without gradients, large enough.

    Each call transforms the weights (16 values per (out, in, time tap)) and its GEMMs have one
    row per 2x2 output tile, so small calls (WF-VAE-L's 8x8 and 16x16 levels at 64 px input)
    ran slower than oneDNN's direct kernel; those keep it.
    """
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or torch.is_grad_enabled():
        return False
    frames = x.shape[2] - kernel_t + 1 if x.dim() == 5 else 1
    return frames * x.shape[-2] * x.shape[-1] * x.shape[0] >= MIN_OUTPUT_PIXELS


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """``U = G g Gt`` for every (out, in, time tap): (Co, Ci, kt, 3, 3) -> (kt, 16, Ci, Co).

    ``G`` has rows (1, 0, 0), (1/2, 1/2, 1/2), (1/2, -1/2, 1/2), (0, 0, 1), applied to the kernel's
    rows and then to its columns.
    """
    co, ci, kt = weight.shape[:3]
    w = weight.permute(2, 3, 4, 1, 0)  # (kt, 3, 3, Ci, Co) view

    def g_times(k: torch.Tensor, dim: int) -> list[torch.Tensor]:
        k0, k1, k2 = k.unbind(dim)
        return [k0, (k0 + k1 + k2) * 0.5, (k0 - k1 + k2) * 0.5, k2]

    u = weight.new_empty((kt, 4, 4, ci, co))
    for i, row in enumerate(g_times(w, 1)):  # row: (kt, 3, Ci, Co)
        for j, value in enumerate(g_times(row, 1)):
            u[:, i, j] = value
    return u.view(kt, 16, ci, co)


def _taps(d: torch.Tensor, dim: int, n: int) -> list[torch.Tensor]:
    """The 4 rows (or columns) of every tile along ``dim``: views ``d[a : a + 2n - 1 : 2]``, a = 0..3."""
    return [d.narrow(dim, a, 2 * n - 1)[(slice(None),) * dim + (slice(None, None, 2),)] for a in range(4)]


def conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
           block_elements: int = BLOCK_ELEMENTS) -> torch.Tensor:
    """Convolve ``x`` (B, C, T, H, W) with ``weight`` (Co, C, kt, 3, 3): no time padding, 1 px in space.

    Returns (B, Co, T - kt + 1, H, W), channels-last 3D. Output frames are computed in blocks
    whose transformed input holds at most about ``block_elements`` values (at least one frame).
    """
    b, c, t, h, w = x.shape
    co, kt = weight.shape[0], weight.shape[2]
    t_out = t - kt + 1
    nh, nw = (h + 1) // 2, (w + 1) // 2
    u = transform_weight(weight)
    out = torch.empty((b, co, t_out, h, w), dtype=x.dtype, device=x.device, memory_format=torch.channels_last_3d)
    out_l = out.permute(0, 2, 3, 4, 1)  # (B, T, H, W, Co) view, contiguous
    x_l = x.permute(0, 2, 3, 4, 1)  # (B, T, H, W, C)
    frames_per_block = max(1, block_elements // (16 * nh * nw * c) - (kt - 1))
    for i in range(b):
        for t0 in range(0, t_out, frames_per_block):
            tb = min(frames_per_block, t_out - t0)
            v = _input_transform(x_l[i, t0 : t0 + tb + kt - 1], nh, nw)  # (16, tb+kt-1, nh*nw, C)
            m = x.new_empty((16, tb * nh * nw, co))
            for k in range(16):
                torch.mm(v[k, 0:tb].reshape(tb * nh * nw, c), u[0, k], out=m[k])
                for dt in range(1, kt):
                    m[k].addmm_(v[k, dt : dt + tb].reshape(tb * nh * nw, c), u[dt, k])
            del v
            _output_transform(m.view(4, 4, tb, nh, nw, co), out_l[i, t0 : t0 + tb], h, w)
    if bias is not None:
        out_l.add_(bias)
    return out


def _input_transform(frames: torch.Tensor, nh: int, nw: int) -> torch.Tensor:
    """(T, H, W, C) -> ``Bt d B`` of every 4x4 tile (stride 2), laid out (16, T, nh*nw, C)."""
    t, h, w, c = frames.shape
    padded = frames.new_zeros((t, 2 * nh + 2, 2 * nw + 2, c))
    padded[:, 1 : h + 1, 1 : w + 1] = frames
    d0, d1, d2, d3 = _taps(padded, 1, nh)  # (T, nh, W+2, C) each
    rows = (d0 - d2, d1 + d2, d2 - d1, d1 - d3)
    del padded, d0, d1, d2, d3
    v = frames.new_empty((16, t, nh, nw, c))
    for i, r in enumerate(rows):
        e0, e1, e2, e3 = _taps(r, 2, nw)  # (T, nh, nw, C) each
        torch.sub(e0, e2, out=v[4 * i + 0])
        torch.add(e1, e2, out=v[4 * i + 1])
        torch.sub(e2, e1, out=v[4 * i + 2])
        torch.sub(e1, e3, out=v[4 * i + 3])
    return v.view(16, t, nh * nw, c)


def _output_transform(m: torch.Tensor, out: torch.Tensor, h: int, w: int) -> None:
    """``At M A`` of (4, 4, T, nh, nw, Co) products into ``out`` (T, H, W, Co), cropping odd edges."""
    t, nh, nw, co = m.shape[2:]
    s0 = m[0] + m[1] + m[2]  # (4, T, nh, nw, Co): rows of At M
    s1 = m[1] - m[2] - m[3]
    if h % 2 == 0 and w % 2 == 0:
        target = out
    else:
        target = out.new_empty((t, 2 * nh, 2 * nw, co))
    for a, s in enumerate((s0, s1)):
        torch.add(s[0] + s[1], s[2], out=target[:, a::2, 0::2])
        torch.sub(s[1] - s[2], s[3], out=target[:, a::2, 1::2])
    if target is not out:
        out.copy_(target[:, :h, :w])
