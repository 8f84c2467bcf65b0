"""Choices that depend on the machine a command runs on: autocast precision, cuDNN/TF32 flags, and how
many threads each video decoder may use.

How to use::

    precision = resolve_precision("bf16", device)      # "fp32" on a pre-Ampere GPU; a warning on a CPU without bf16
    configure_backends(device, benchmark=True, allow_tf32=False)
    threads = decoder_threads(num_workers=4, local_world_size=8)

Every function takes what it decides from as arguments (with the live value as default), so the decisions
can be checked without the hardware they are about.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re

import torch

from wfvae.utils.memory import libc_function

logger = logging.getLogger(__name__)

__all__ = ["FSDP_MIN_TORCH", "available_cpus", "configure_backends", "cpu_has_bf16", "decoder_threads",
           "free_memory_promptly", "fsdp2_supported", "resolve_precision"]


#: the oldest PyTorch ``--fsdp`` is verified with (``tests/test_train_fsdp.py``'s 2-process run). Session 9 ran
#: it on 2.7.1 (saving the optimizer state: KeyError in ``get_optimizer_state_dict`` with ``ignored_params``)
#: and 2.9.1 (RuntimeError: tensor data not allocated) and both failed; session 13 ran it on 2.11.0 (the lent
#: GPU image's release), which fails as 2.9.1 does; 2.14.1 passes.
FSDP_MIN_TORCH = (2, 14)


def fsdp2_supported() -> bool:
    """Whether this PyTorch is one ``--fsdp`` is verified with (:data:`FSDP_MIN_TORCH` or newer). Pre-release
    and vendor builds count by their release number (``2.14.0a0+...`` is 2.14)."""
    match = re.match(r"(\d+)\.(\d+)", torch.__version__)
    return match is not None and (int(match[1]), int(match[2])) >= FSDP_MIN_TORCH


# FFmpeg's own ceiling for automatically chosen decoder threads
MAX_DECODER_THREADS = 16


def cpu_has_bf16() -> bool:
    """Whether oneDNN has fast bf16 kernels on this CPU (AVX512-BF16 or AMX; PyTorch's own test)."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(
    precision: str, device: torch.device, capability: tuple[int, int] | None = None, what: str = "--mix_precision",
    cpu_bf16: bool | None = None,
) -> str:
    """The autocast precision to use on ``device``: ``precision`` unless the GPU cannot run it.

    bf16 autocast needs an Ampere or newer NVIDIA GPU (compute capability 8.0); on older ones (V100: 7.0,
    T4: 7.5) ``torch.autocast`` raises. There the run falls back to fp32 and says so; fp16 (with a
    GradScaler) is the faster choice on such GPUs, but it is not chosen silently because it changes the
    numerics far more than fp32 does.

    CPU autocast runs bf16 on every CPU, but only CPUs with bf16 instructions (AVX512-BF16, AMX) have fast
    kernels for it: elsewhere a bf16 convolution is many times slower than fp32 (`benchmarks/RESULTS.md`,
    "bf16 on a CPU without bf16 instructions"). bf16 is kept, as asked, with a warning that names the fix.

    Args:
        precision: "fp32" | "bf16" | "fp16".
        device: where the model runs.
        capability: (major, minor) compute capability; None reads it from ``device``.
        what: the option name for the message.
        cpu_bf16: whether the CPU has bf16 instructions; None asks :func:`cpu_has_bf16`.
    """
    if precision == "bf16" and device.type == "cpu":
        if not (cpu_has_bf16() if cpu_bf16 is None else cpu_bf16):
            logger.warning("%s bf16 on this CPU: it has no bf16 instructions (AVX512-BF16 or AMX), so bf16 "
                           "convolutions run many times slower than fp32 here (a 3x3x3 convolution measured "
                           "48x on an AVX2 EPYC). Pass %s fp32 for speed.", what, what)
        return precision
    if precision != "bf16" or device.type != "cuda":
        return precision
    if capability is None:
        capability = torch.cuda.get_device_capability(device)
    if tuple(capability) >= (8, 0):
        return precision
    logger.warning("%s bf16 needs a GPU with compute capability >= 8.0 (Ampere or newer); this one is %d.%d. "
                   "Running in fp32 instead (pass %s fp16 for mixed precision with a GradScaler).",
                   what, capability[0], capability[1], what)
    return "fp32"


def configure_backends(device: torch.device, *, benchmark: bool, allow_tf32: bool) -> None:
    """Process-wide cuDNN/cuBLAS switches for a CUDA run (nothing happens on other devices).

    Args:
        benchmark: let cuDNN time its convolution algorithms on the first call of every input shape and
            keep the fastest. Pays off when shapes repeat (training with a fixed clip size); costs a
            search per new shape otherwise.
        allow_tf32: run float32 matmuls (attention, linear layers) in TF32 on Ampere or newer: about 10
            mantissa bits in the products, several times faster. Off by default, as in PyTorch, because it
            changes float32 results. Convolutions are left as PyTorch sets them (cuDNN may use TF32 for
            float32 convolutions by default, as it did for the original code); under bf16 autocast none
            of this matters for the bf16 layers.
    """
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = benchmark
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    logger.info("cuDNN benchmark %s, TF32 matmuls %s", "on" if benchmark else "off", "on" if allow_tf32 else "off")


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a SLURM or taskset allocation)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def decoder_threads(num_workers: int, local_world_size: int = 1, cpus: int | None = None) -> int:
    """Threads per FFmpeg video decoder so that all decoders on this node together fit its CPUs.

    Each of the ``local_world_size`` ranks on a node runs ``num_workers`` DataLoader workers (or decodes
    in its main process when 0), and each decoder would otherwise start about one thread per core:
    ranks x workers x cores threads fighting for the same cores.

    Args:
        num_workers: DataLoader workers per rank (0: the rank itself decodes).
        local_world_size: processes on this node (torchrun's ``LOCAL_WORLD_SIZE``).
        cpus: CPUs available to this process; None reads :func:`available_cpus`. The affinity mask is per
            process, but torchrun does not split it among ranks, so every rank sees the whole node.
    """
    if cpus is None:
        cpus = available_cpus()
    decoders = max(1, num_workers) * max(1, local_world_size)
    return max(1, min(MAX_DECODER_THREADS, cpus // decoders))


#: glibc's mallopt parameter number for the mmap threshold (malloc.h: M_MMAP_THRESHOLD)
_M_MMAP_THRESHOLD = -3
#: glibc's initial threshold; set explicitly it stays there instead of growing to 32 MiB
_MMAP_THRESHOLD_BYTES = 128 * 1024


def free_memory_promptly() -> bool:
    """Let this process return freed tensor memory to the OS at once (glibc only); True if applied.

    The inference commands call it on CPU when ``--max_memory_gb`` is given (``--release_host_memory`` in
    training); it is process-wide, so the Python API never does it by itself (call it yourself when the
    process is yours). glibc serves allocations below its mmap
    threshold from heaps that keep freed memory resident, and it raises that threshold up to 32 MiB as soon
    as a large block is freed, so most activation tensors end up in those heaps. Fixing the threshold at
    glibc's initial 128 KiB (``mallopt(M_MMAP_THRESHOLD)``, the same as ``MALLOC_MMAP_THRESHOLD_=131072``)
    gives every tensor above it its own mapping, unmapped when freed. Measured on a WF-VAE-L chunked round
    trip (``benchmarks/RESULTS.md``, "Chunked inference memory"): peak resident growth 259 instead of
    385-410 MB at 33x128x128, in 80.5 instead of 78.8 CPU-seconds (one profiled pair on a loaded machine).
    Every allocation of 128 KiB or more then costs a fresh mapping and its page faults, which weighs more
    in work made of many small tensors.
    """
    mallopt = libc_function("mallopt", (ctypes.c_int, ctypes.c_int))
    return mallopt is not None and bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))
