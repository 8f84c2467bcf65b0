"""What every benchmark records about the machine it ran on: CPU model, ISA flags, load, torch.

Numbers measured on one CPU do not carry to another (oneDNN picks AVX2, AVX-512 or AMX kernels by
what the CPU offers), so each benchmark's JSON holds :func:`machine_info` and its tables name the
CPU they came from.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from wfvae.models.layers.kernel_choice import isa_caps

# /proc/cpuinfo flags that decide which convolution / GEMM kernels oneDNN and MKL can use
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_bf16", "amx_int8")


def cpu_model_and_flags() -> tuple[str, list[str]]:
    """The CPU's model name and which of :data:`ISA_FLAGS` it reports (Linux ``/proc/cpuinfo``)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and value.strip():
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return model, [f for f in ISA_FLAGS if f in flags]


def cpu_model() -> str:
    """The CPU's model name alone (see :func:`cpu_model_and_flags`)."""
    return cpu_model_and_flags()[0]


def has_bf16_instructions() -> bool:
    """Whether the CPU has native bf16 arithmetic (AVX512-BF16 or AMX-BF16)."""
    _, flags = cpu_model_and_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def machine_info(threads: int | None = None) -> dict:
    model, flags = cpu_model_and_flags()
    info = {
        # environment variables capping the instruction sets ATen, oneDNN and MKL use (emulating an older CPU)
        "cpu": model, "isa_flags": flags, "isa_caps": isa_caps(),
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpus": os.cpu_count(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "loadavg_start": os.getloadavg(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def describe(info: dict) -> str:
    """One line for a table caption: CPU, flags, threads, load."""
    load = info.get("loadavg_start"), info.get("loadavg_end")
    caps = info.get("isa_caps")
    capped = f", capped by {' '.join(f'{k}={v}' for k, v in caps.items())}" if caps else ""
    return (f"{info['cpu']} ({', '.join(info['isa_flags']) or 'no AVX2'}{capped}), {info['threads']} threads, "
            f"torch {info['torch']}, "
            f"load average {load[0][0]:.1f} at start" + (f", {load[1][0]:.1f} at end" if load[1] else ""))
