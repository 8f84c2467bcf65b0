"""Exponential moving average of a model's trainable parameters.

How to use::

    ema = EMA(model, decay=0.999)      # snapshot of every parameter with requires_grad=True
    ...; optimizer.step(); ema.update(model)
    with ema.swapped_into(model):      # validate with the averaged weights, then restore
        evaluate(model)
    ckpt["ema_state_dict"] = ema.state_dict()

Update rule (per parameter ``p`` and shadow ``s``): ``s <- decay * s + (1 - decay) * p``.

Checkpoint compatibility: the original trainer kept the shadow of the DDP-wrapped model, so its keys carry a
``module.`` prefix (``module.encoder.conv_in.weight``), and tools that read ``ema_state_dict`` strip it. We
write the same prefix and accept keys with or without it on load.

Under ``--fsdp`` the shadows are sharded like the parameters they follow (DTensors, 1/world_size each);
:meth:`state_dict` gathers them (a collective: every rank calls it) and :meth:`load_state_dict` takes full
tensors and keeps this rank's shard, so the checkpoint layout does not depend on the parallelism.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from wfvae.checkpoint_keys import MODULE_PREFIX
from wfvae.training.parallel import full_tensor, is_sharded, shard_like

__all__ = ["EMA"]


class EMA:
    """Shadow copy of the trainable parameters of ``model`` (names as in ``model.named_parameters()``)."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.reset(model)

    def reset(self, model: nn.Module) -> None:
        """Start the average over from the current trainable parameters of ``model``."""
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad
        }

    def _pairs(self, model: nn.Module):
        params = dict(model.named_parameters())
        names = list(self.shadow)
        missing = [n for n in names if n not in params]
        if missing:
            raise KeyError(f"EMA tracks parameters the model does not have, e.g. {missing[:3]}")
        return names, [params[n] for n in names]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move every shadow tensor toward the current parameter value."""
        names, params = self._pairs(model)
        # lerp(s, p, 1 - d) = s + (1 - d)(p - s) = d*s + (1 - d)*p, one fused kernel per tensor type (under
        # FSDP sharded DTensors and the replicated last layer cannot share one foreach call).
        groups: dict[bool, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        for n, p in zip(names, params):
            shadows, values = groups.setdefault(is_sharded(p), ([], []))
            shadows.append(self.shadow[n])
            values.append(p.detach())
        for shadows, values in groups.values():
            torch._foreach_lerp_(shadows, values, 1.0 - self.decay)

    @contextlib.contextmanager
    def swapped_into(self, model: nn.Module) -> Iterator[None]:
        """Temporarily copy the shadow weights into ``model`` (e.g. for validation); restore on exit."""
        names, params = self._pairs(model)
        backup = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, n in zip(params, names):
                p.copy_(self.shadow[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(params, backup):
                    p.copy_(b)

    def to(self, device) -> EMA:
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Shadow tensors keyed ``module.<param name>`` (the original's layout), full and on CPU: one host copy
        each (``.cpu()`` of a GPU shadow is already a copy; a CPU shadow is cloned, so training goes on
        without changing the saved values)."""
        state = {}
        for k, v in self.shadow.items():
            full = full_tensor(v.detach())
            state[MODULE_PREFIX + k] = full.clone() if full.device.type == "cpu" else full.cpu()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True) -> None:
        """Load shadows saved by :meth:`state_dict` or by the original trainer.

        With ``strict`` every tracked parameter must be present with the same shape. Extra keys (e.g. encoder
        shadows when the encoder is now frozen) are ignored.
        """
        stripped = {(k.removeprefix(MODULE_PREFIX)): v for k, v in state.items()}
        missing = [k for k in self.shadow if k not in stripped]
        if strict and missing:
            raise KeyError(f"EMA state lacks {len(missing)} tracked parameters, e.g. {missing[:3]}")
        for name, current in self.shadow.items():
            if name not in stripped:
                continue
            value = stripped[name]
            if value.shape != current.shape:  # a DTensor's .shape is the full (global) shape
                raise ValueError(f"EMA shadow {name!r} has shape {tuple(value.shape)}, model has {tuple(current.shape)}")
            self.shadow[name] = shard_like(value, current).clone()
