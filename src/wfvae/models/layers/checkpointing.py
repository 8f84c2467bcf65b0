"""Activation (gradient) checkpointing of single blocks.

A block whose ``forward`` is decorated with :func:`checkpointable` keeps only its input for the
backward pass when its ``gradient_checkpointing`` attribute is true: the activations inside the
block are dropped after the forward and recomputed, block by block, when the backward pass reaches
it (``torch.utils.checkpoint`` in its non-reentrant form). Peak training memory then holds the
block inputs plus one block's inner activations instead of every activation of the model, for the
price of about one extra forward pass.

What stays exact:

* Gradients: the recomputation runs the same operations on the same values, so on CPU the
  gradients equal those of the plain backward bit for bit.
* Randomness: ``torch.utils.checkpoint`` restores the RNG state (CPU, and CUDA when used) before
  recomputing, so a dropout layer draws the same mask twice.
* Autocast: the recomputation runs under the autocast state of the original forward.
* Streaming state: chunked inference passes a :class:`~wfvae.models.layers.stream.StreamState`
  that the layers update as they run. A recomputation would update it a second time, so blocks are
  never checkpointed when a stream is given (chunked inference runs without gradients anyway);
  only ``stream=None`` calls (the training forward) are.

FSDP2 composes with this: the checkpoint sits inside ``forward``, so FSDP's hooks around the module
gather the parameters before the forward and again (pre-backward) before the recomputation.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["checkpointable", "is_checkpointable", "set_gradient_checkpointing"]

_MARK = "_wfvae_checkpointable"


def checkpointable(forward: Callable) -> Callable:
    """Decorate a block's ``forward(self, x, stream=None)`` so it can be recomputed in the backward pass.

    The module checkpoints itself when ``self.gradient_checkpointing`` is true, gradients are being
    recorded and no stream is given; otherwise the call is unchanged.
    """

    @functools.wraps(forward)
    def wrapper(self: nn.Module, x: torch.Tensor, stream=None) -> torch.Tensor:
        if stream is None and getattr(self, "gradient_checkpointing", False) and torch.is_grad_enabled():
            return checkpoint(forward, self, x, None, use_reentrant=False)
        return forward(self, x, stream)

    setattr(wrapper, _MARK, True)
    return wrapper


def is_checkpointable(module: nn.Module) -> bool:
    """Whether ``module``'s forward is decorated with :func:`checkpointable`."""
    return getattr(type(module).forward, _MARK, False)


def set_gradient_checkpointing(model: nn.Module, enabled: bool) -> int:
    """Switch checkpointing on or off for every checkpointable block in ``model``; returns how many there are."""
    blocks = [m for m in model.modules() if is_checkpointable(m)]
    for block in blocks:
        block.gradient_checkpointing = enabled
    return len(blocks)
