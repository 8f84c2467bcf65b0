"""Process-group set-up and the few collectives the trainer needs, device-agnostic.

How to use::

    env = init_distributed("auto")    # reads RANK / LOCAL_RANK / WORLD_SIZE (set by torchrun)
    if env.is_main: ...
    all_reduce_sum_(tensor, env)      # no-op in a plain single process
    cleanup(env)

Backend: nccl on CUDA, gloo on CPU. Without torchrun (no ``WORLD_SIZE``) or with one process, no process
group is created and every helper is a no-op; this is the only module that reads these variables.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from wfvae.utils.device import resolve_device

logger = logging.getLogger(__name__)

__all__ = [
    "DistEnv",
    "all_gather_object",
    "all_reduce_sum_",
    "barrier",
    "broadcast_object",
    "cleanup",
    "cuda_index_for",
    "init_distributed",
]


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None  # None when no process group exists
    local_world_size: int = 1  # processes on this node


    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as e:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from e


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistEnv:
    """Create the process group (if launched with more than one process) and pick this process's device.

    Args:
        device: ``"auto"`` (CUDA when visible, else CPU), ``"cuda"`` or ``"cpu"``.
        timeout_s: collective timeout; a hung rank surfaces as an error after this long.
    """
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    world_size = _env_int("WORLD_SIZE", 1)
    use_cuda = resolve_device(device).type == "cuda"
    if use_cuda:
        index = cuda_index_for(local_rank, torch.cuda.device_count())
        torch.cuda.set_device(index)
        dev = torch.device("cuda", index)
    else:
        dev = torch.device("cpu")
    backend = None
    if world_size > 1:
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s),
                                **({"device_id": dev} if use_cuda else {}))
        logger.info("process group up: backend=%s rank=%d/%d device=%s", backend, rank, world_size, dev)
    local_world_size = _env_int("LOCAL_WORLD_SIZE", world_size)
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world_size, device=dev, backend=backend,
                   local_world_size=local_world_size)


def cuda_index_for(local_rank: int, device_count: int) -> int:
    """The CUDA device a process with ``local_rank`` uses when it sees ``device_count`` GPUs.

    torchrun shows every process all GPUs of the node: process ``LOCAL_RANK`` takes GPU ``LOCAL_RANK``.
    A launcher that binds one GPU per task (SLURM ``--gpus-per-task=1``, or ``CUDA_VISIBLE_DEVICES`` set
    per process) shows each process exactly one GPU, whatever its local rank: it takes that one, GPU 0.

    Raises:
        RuntimeError: more than one GPU is visible but fewer than ``local_rank + 1``, so processes would
            have to share GPUs.
    """
    if local_rank < device_count:
        return local_rank
    if device_count == 1:
        logger.info("LOCAL_RANK=%d sees one GPU (one GPU per process, e.g. CUDA_VISIBLE_DEVICES or SLURM "
                    "--gpus-per-task=1): using cuda:0", local_rank)
        return 0
    raise RuntimeError(f"LOCAL_RANK={local_rank} but only {device_count} GPUs are visible to this process; "
                       "launch at most one process per GPU (torchrun --nproc_per_node <= number of GPUs), or "
                       "give each process exactly one GPU")


def cleanup(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def all_reduce_sum_(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """In-place sum over ranks (a device sync point on CUDA only when the caller reads the result)."""
    if env.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_object(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` without a process group)."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, env: DistEnv, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
