"""``--device``: the one rule every command uses to turn the option into a ``torch.device``."""

from __future__ import annotations

import torch

from wfvae.errors import ConfigError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when visible, else CPU; ``"cpu"`` / ``"cuda"`` / ``"cuda:N"`` checked.

    The one rule every command uses for ``--device``.

    Raises:
        ConfigError: an unknown device name, or CUDA asked for where none is visible.
    """
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name}: not a device name; use auto, cpu or cuda") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name}: only auto, cpu and cuda are supported")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: no CUDA device is visible to this process "
                              "(torch.cuda.is_available() is False); use --device cpu or --device auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA devices are visible")
    return dev
