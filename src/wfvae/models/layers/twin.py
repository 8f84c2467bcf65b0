"""Which device's kernels a layer follows: for the shapes-only twins of ``models/chunk_plan.py``.

Such a twin lives on PyTorch's ``meta`` device. Where a layer's code path depends on the device (the CPU's
two-group convolution for small inputs, GroupNorm's layout-keeping path on CUDA), the twin must take the
path of the device its model runs on, or the estimate counts another program. ``chunk_plan`` marks those
layers with :data:`STANDS_FOR` = the model's device type; everything else sees the tensor's own device.
"""

from __future__ import annotations

import torch
from torch import nn

STANDS_FOR = "meta_stands_for"


def kernel_device(x: torch.Tensor, layer: nn.Module) -> str:
    """The device type whose code path ``layer`` takes for ``x``: x's own, or, on meta, the marked one."""
    device = x.device.type
    if device == "meta":
        return getattr(layer, STANDS_FOR, device)
    return device


def autocast_enabled(device_type: str) -> bool:
    """``torch.is_autocast_enabled`` for a device type, False where autocast has no such device (meta)."""
    return device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type)
