"""Data parallelism for the generator: DDP (every rank holds the whole model) or FSDP2 (``--fsdp``: every rank
holds 1/world_size of the parameters, gradients and optimizer state), plus the full-state checkpoint I/O that
keeps one checkpoint layout for both.

How to use (the trainer does this)::

    model_fwd = wrap_generator(model, env, fsdp=cfg.fsdp)     # DDP wrapper, or `model` sharded in place
    replicated = replicated_generator_params(model, cfg.fsdp) # grads to all-reduce by hand (see below)
    ...
    state = full_model_state_dict(model, fsdp)                # original keys, full tensors, on rank 0
    opt_state = full_optimizer_state_dict(model, opt, fsdp)   # integer-keyed, as opt.state_dict()
    load_optimizer_state_dict(model, opt, opt_state, fsdp)    # reshards a full state under FSDP

What ``--fsdp`` shards (FSDP2, ``torch.distributed.fsdp.fully_shard``; works with gloo on CPU and nccl on GPU):
every ResNet and attention block is its own unit, so only one block's parameters are gathered at a time; the
root unit holds the remaining convs (in/out, up/down-sampling, wavelet connections). By default parameters stay
fp32 and ``--mix_precision bf16`` works through the same ``torch.autocast`` region as under DDP, so both paths
compute the same thing. ``--fsdp_param_dtype bf16`` adds an FSDP ``MixedPrecisionPolicy``: parameters are
gathered in bf16 (half the all-gather traffic), gradients are still reduced in fp32. fp16 is rejected by
``TrainConfig.validate``: ``GradScaler.unscale_`` fails on a mix of DTensor and plain gradients ("got mixed
torch.Tensor and DTensor"), and each rank's scaler would only see the infs of its own shard.

The decoder's last layer is *not* sharded: the adaptive GAN weight needs ``d loss / d W`` for the plain
tensor ``model.get_last_layer()`` (``torch.autograd.grad`` inside the loss). Left out of FSDP
(``ignored_params``), that layer is an ordinary replicated parameter -- a few thousand to a few ten thousand
values -- so the gradient is taken against the real weight, locally on each rank exactly as under DDP, and
its ``.grad`` is averaged over ranks by the trainer (the same explicit all-reduce as the discriminator's).

The discriminator is not sharded: it runs twice per step and is frozen (``requires_grad_(False)``) in generator
steps, and it is small next to the generator; it stays replicated with explicitly all-reduced gradients.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from wfvae.distributed import DistEnv, all_gather_object

logger = logging.getLogger(__name__)

__all__ = [
    "clip_grad_norm_",
    "full_model_state_dict",
    "full_optimizer_state_dict",
    "full_tensor",
    "is_sharded",
    "load_model_state_dict",
    "load_optimizer_state_dict",
    "replicas_identical",
    "replicated_generator_params",
    "shard_like",
    "wrap_generator",
]


def is_sharded(t: Any) -> bool:
    """Whether ``t`` is an FSDP shard (a DTensor)."""
    from torch.distributed.tensor import DTensor  # lazy: only under --fsdp

    return isinstance(t, DTensor)


def replicated_generator_params(model: nn.Module, fsdp: bool) -> list[nn.Parameter]:
    """Parameters FSDP leaves unsharded: those of the module that owns ``model.get_last_layer()``.

    Empty without ``--fsdp`` (DDP reduces every generator gradient itself).
    """
    if not fsdp:
        return []
    last = model.get_last_layer()
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if any(p is last for p in own):
            return own
    raise ValueError("model.get_last_layer() is not a parameter of the model")


def wrap_generator(model: nn.Module, env: DistEnv, *, fsdp: bool, find_unused_parameters: bool = False,
                   param_dtype: torch.dtype | None = None) -> nn.Module:
    """The module to call for training forward passes.

    Without a process group: ``model`` itself. DDP: a wrapper (``model`` stays a plain module). FSDP: ``model``
    sharded in place (its parameters become DTensors; it is also what to call).

    Args:
        param_dtype: FSDP only: gather parameters in this dtype for forward and backward
            (``MixedPrecisionPolicy(param_dtype, reduce_dtype=float32)``); None keeps them fp32. The shards the
            optimizer updates stay fp32 either way, and the replicated last layer is not cast.
    """
    if not env.distributed:
        if fsdp:
            logger.info("--fsdp with a single process: nothing to shard, training the plain model")
        return model
    if not fsdp:
        # broadcast_buffers=False: the generator's buffers are constants (wavelet filters).
        # gradient_as_bucket_view: each .grad is a view into DDP's all-reduce buckets (in the parameter's own
        # strides, channels-last included) instead of a second copy of every gradient beside them.
        return DDP(model, device_ids=[env.device.index] if env.device.type == "cuda" else None,
                   find_unused_parameters=find_unused_parameters, broadcast_buffers=False,
                   gradient_as_bucket_view=True)

    from torch.distributed.device_mesh import init_device_mesh  # lazy: only under --fsdp
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # Our loss never modifies the model's output in place, which is what this FSDP2 warning is about (the
    # decoder returns a slice of its last activation).
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(env.device.type, (env.world_size,))
    units = [m for m in model.modules() if isinstance(m, model.shard_units)]
    # reduce_dtype fp32: gradients are averaged over ranks in fp32 whatever dtype they were computed in
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for unit in units:  # blocks do not nest, so order does not matter; children must precede the root
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    replicated = set(replicated_generator_params(model, fsdp=True))
    # reshard_after_forward=True also for the root (FSDP2 otherwise keeps the root's parameters gathered after
    # a forward until the next backward): forwards without backward (discriminator steps, validation) would
    # leave them gathered, and EMA, checkpointing and the optimizer expect shards.
    fully_shard(model, mesh=mesh, ignored_params=replicated, reshard_after_forward=True, mp_policy=policy)
    in_units = sum(p.numel() for u in units for p in u.parameters())
    total = sum(p.numel() for p in model.parameters())
    logger.info("FSDP: generator sharded over %d ranks in %d block units + root (%.0f%% of the parameters in "
                "blocks); %d replicated parameter tensors (the decoder's last layer); parameters gathered in %s, "
                "gradients reduced in float32", env.world_size, len(units), 100.0 * in_units / max(total, 1),
                len(replicated), str(param_dtype or torch.float32).removeprefix("torch."))
    return model


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor shard (a collective: every rank must call it); other tensors unchanged."""
    return t.full_tensor() if is_sharded(t) else t


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` laid out like ``like``: this rank's shard when ``like`` is a DTensor (no communication; every
    rank must hold the same ``full``), else a copy of ``full`` with ``like``'s device, dtype and strides (a
    channels-last parameter gets a channels-last copy of a contiguous tensor from an original checkpoint)."""
    if is_sharded(like):
        from torch.distributed.tensor import distribute_tensor  # lazy: only under --fsdp

        return distribute_tensor(full.to(device=like.device, dtype=like.dtype), like.device_mesh, like.placements,
                                 src_data_rank=None)
    return torch.empty_like(like).copy_(full)


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions  # lazy: only under --fsdp

    return StateDictOptions(**kw)


def full_model_state_dict(model: nn.Module, fsdp: bool) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with full tensors and the original keys (collective under FSDP; only rank 0 gets
    the tensors there, other ranks an empty dict)."""
    if not fsdp or not any(is_sharded(p) for p in model.parameters()):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict  # lazy: only under --fsdp

    return get_model_state_dict(model, options=_options(full_state_dict=True, cpu_offload=True))


def load_model_state_dict(model: nn.Module, state: dict[str, torch.Tensor], fsdp: bool,
                          ignore_mismatched_sizes: bool = False) -> None:
    """Load a full state dict (every rank passes the same one); resharded under FSDP. Strict: every key must
    match, except that ``ignore_mismatched_sizes`` keeps the model's tensor where the shapes differ."""
    if not fsdp or not any(is_sharded(p) for p in model.parameters()):
        model.load_weights(state, strict=True, ignore_mismatched_sizes=ignore_mismatched_sizes)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict  # lazy: only under --fsdp

    # The same checks and the same one-error-listing-every-problem as the unsharded path (CheckpointError).
    kept = model.check_weights(state, strict=True, ignore_mismatched_sizes=ignore_mismatched_sizes)
    strict = len(kept) == len(state)  # else: the mismatched tensors keep the model's values
    set_model_state_dict(model, kept, options=_options(full_state_dict=True, strict=strict))


def _param_names(model: nn.Module, opt: torch.optim.Optimizer) -> list[str]:
    """Names of the optimizer's parameters in its own order (the order of the integer keys of its state)."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [name_of[id(p)] for group in opt.param_groups for p in group["params"]]


def full_optimizer_state_dict(model: nn.Module, opt: torch.optim.Optimizer, fsdp: bool) -> dict:
    """``opt.state_dict()`` in its usual integer-keyed layout with full tensors (collective under FSDP; the
    tensors are on rank 0 only there, other ranks get an empty dict)."""
    if not fsdp or not any(is_sharded(p) for p in model.parameters()):
        return opt.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict  # lazy: only under --fsdp

    by_name = get_optimizer_state_dict(model, opt, options=_options(full_state_dict=True, cpu_offload=True))
    if not by_name.get("state") and not by_name.get("param_groups"):
        return {}
    # torch.distributed.checkpoint keys the state by parameter name; convert back to opt.state_dict()'s integer
    # ids so a checkpoint written under FSDP is the same file as one written under DDP.
    index = {name: i for i, name in enumerate(_param_names(model, opt))}
    return {
        "state": {index[name]: st for name, st in by_name["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in by_name["param_groups"]],
    }


def load_optimizer_state_dict(model: nn.Module, opt: torch.optim.Optimizer, state: dict, fsdp: bool) -> None:
    """Load an integer-keyed full ``opt.state_dict()`` (every rank passes the same one); resharded under FSDP."""
    if not fsdp or not any(is_sharded(p) for p in model.parameters()):
        opt.load_state_dict(state)
        _state_in_parameter_layout(opt)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict  # lazy: only under --fsdp

    names = _param_names(model, opt)
    n_saved = sum(len(g["params"]) for g in state["param_groups"])
    if n_saved != len(names):
        raise ValueError(f"optimizer state holds {n_saved} parameters, the optimizer has {len(names)}")
    by_name = {
        "state": {names[int(i)]: st for i, st in state["state"].items()},
        "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in state["param_groups"]],
    }
    set_optimizer_state_dict(model, opt, by_name, options=_options(full_state_dict=True, strict=True))


def _state_in_parameter_layout(opt: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor (Adam's moments) its parameter's strides.

    ``Optimizer.load_state_dict`` keeps the saved layout: moments from an original checkpoint are contiguous
    while our conv weights are channels-last, and mixed layouts take the optimizers' slower per-tensor path.
    """
    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state.get(p, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def clip_grad_norm_(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` that also takes a mix of sharded (DTensor) and replicated gradients.

    The global norm is ``sqrt(|sharded|^2 + |replicated|^2)``: the sharded part is reduced over ranks, the
    replicated part is the same on every rank (already all-reduced). Returns the pre-clip norm (plain tensor).
    """
    grads = [p.grad for p in params if p.grad is not None]
    sharded = [g for g in grads if is_sharded(g)]
    if not sharded:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    plain = [g for g in grads if not is_sharded(g)]
    norms = [full_tensor(torch.nn.utils.get_total_norm(sharded))]
    if plain:
        norms.append(torch.nn.utils.get_total_norm(plain))
    total = torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]))
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for group in (sharded, plain):
        if group:
            torch._foreach_mul_([g.to_local() if is_sharded(g) else g for g in group], coef.to(group[0].device))
    return total


def replicas_identical(modules: list[nn.Module], env: DistEnv) -> bool:
    """Whether every rank holds the same weights in ``modules`` (collective).

    All-reduced gradients are identical on every rank, so replicated weights must be bit-identical; a difference
    means a rank skipped or repeated an update. FSDP shards are left out (each rank holds a different one).
    """
    params = [p for m in modules for p in m.parameters() if not is_sharded(p)]
    fingerprint = torch.stack([p.detach().double().sum() for p in params]).cpu()
    gathered = all_gather_object(fingerprint, env)
    return all(torch.equal(gathered[0], g) for g in gathered[1:])
