"""Direct or Winograd: which kernel computes a 3x3 convolution, decided by timing both on this machine.

Which is faster depends on the CPU and the layer's shape: on an AVX2 machine without AVX-512 our
Winograd F(2x2, 3x3) (built from GEMMs) beat oneDNN's direct kernels on WF-VAE-L's wide layers,
while on CPUs with AVX-512/AMX oneDNN's direct kernels can win (``benchmarks/RESULTS.md`` keeps a
table per machine). No fixed default is right everywhere, so in ``"auto"`` mode the first call of
every convolution shape runs both kernels, keeps the faster one for that shape and returns its
result; later calls of the shape run the chosen kernel only (as ``torch.backends.cudnn.benchmark``
does on GPUs). Both kernels compute the same convolution (they differ by float rounding only).

The choices are kept for the process, and also on disk so that later runs on the same machine skip
the timing: in ``$WFVAE_CONV_CACHE`` if set (a file path; ``off`` keeps choices in memory only),
else ``conv_kernels.json`` in wfvae's user cache folder (``~/.cache/wfvae``, or ``$WFVAE_CACHE_DIR``; see
:func:`wfvae.downloads.default_cache_dir`). Entries are keyed by
the CPU model, the torch version, the thread count, any ISA caps in the environment (``ONEDNN_MAX_CPU_ISA``
...) and the call's shape, so a file copied to another machine or read by another torch is not reused, and
the file carries a version that changes with the kernels' code. A cached choice is never timed again behind
the user's back, so that runs on one machine compute the same bits. A choice timed while the machine was
oversubscribed (:func:`machine_busy`) is marked ``"busy": true`` in the file and a warning says so: delete
the file (or point ``$WFVAE_CONV_CACHE`` elsewhere) to measure again on a quiet machine. The same chooser and
file keep the layout chosen for each convolution's backward pass in CPU training
(:mod:`~wfvae.models.layers.conv_backward`, :meth:`KernelChooser.run_named`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import threading
import time
from pathlib import Path
from typing import Callable

import torch

from wfvae.downloads import default_cache_dir

logger = logging.getLogger(__name__)

MODES = ("auto", "direct", "winograd")
#: Every choice the cache may hold: forward kernels, and the layouts of a training convolution's backward pass
#: (:mod:`wfvae.models.layers.conv_backward`, keys of kind ``bwd2d``/``bwd3d``).
KERNEL_NAMES = ("direct", "winograd", "channels_last", "contiguous")
CACHE_ENV = "WFVAE_CONV_CACHE"
#: Version of the cache file; raised whenever a kernel's implementation changes, so that choices timed
#: against an older kernel are measured again (2: Winograd's weight transform and batched GEMMs; 3: small
#: float32 direct convolutions run by oneDNN instead of slow_conv3d, see ``conv.conv3d_onednn``).
_FORMAT_VERSION = 3
#: oneDNN's first call of a shape also creates its kernel, a one-off cost. When Winograd beats that first
#: (timed) direct call, direct is timed again if the lead is under this fraction of the call, or if the call
#: was short enough (``RECHECK_BELOW_S``) for the one-off cost to be most of it. A larger lead on a longer
#: call cannot come from that cost, and timing a wide layer again would add seconds to the first call.
RECHECK_LEAD = 0.25
RECHECK_BELOW_S = 0.05


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"conv kernel mode must be one of {MODES}; got {mode!r}")
    return mode


@functools.cache  # asked at every "auto" call; the CPU does not change under a running process
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: Environment variables that make oneDNN, MKL or ATen use fewer instruction sets than the CPU has; a choice
#: timed under such a cap is not the uncapped machine's choice.
ISA_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")


def isa_caps() -> dict[str, str]:
    """The ISA caps set in this process's environment (:data:`ISA_CAP_VARIABLES` -> value)."""
    return {v: os.environ[v] for v in ISA_CAP_VARIABLES if os.environ.get(v)}


def machine_key() -> str:
    """The part of every cache key that names this machine and software: CPU model, torch, threads, ISA caps."""
    key = f"{_cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads"
    caps = ",".join(f"{v}={value}" for v, value in isa_caps().items())
    return f"{key} | {caps}" if caps else key


def default_cache_path() -> Path | None:
    """``$WFVAE_CONV_CACHE`` (``off`` -> None), else ``conv_kernels.json`` in wfvae's user cache folder."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "off", "0", "none") else Path(value).expanduser()
    return default_cache_dir() / "conv_kernels.json"


class KernelChooser:
    """Per-shape kernel choices with the timings they were based on; one per process (:data:`CHOOSER`)."""

    def __init__(self) -> None:
        self._choices: dict[str, dict] = {}  # full key -> {"kernel", "<candidate>_s" per candidate timed, "busy"}
        self._loaded_from: Path | None = None
        self._warned_busy = False
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ the call
    def run(self, mode: str, call_key: str, direct: Callable[[], torch.Tensor],
            winograd: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Compute a convolution with the kernel ``mode`` names, or (``"auto"``) the one chosen for its shape."""
        if mode == "winograd":
            return winograd()
        if mode == "direct":
            return direct()
        key = f"{machine_key()} | {call_key}"
        self._load_disk_cache()
        entry = self._choices.get(key)
        if entry is not None:
            return winograd() if entry["kernel"] == "winograd" else direct()
        return self._measure(key, direct, winograd)

    def run_named(self, call_key: str, candidates: dict[str, Callable[[], object]]) -> object:
        """``"auto"`` of :meth:`run` for any set of interchangeable computations: the first call of ``call_key``
        runs every candidate, runs the slowest once more (its first time may hold oneDNN's one-off kernel
        creation), keeps the fastest for later calls and returns its result."""
        key = f"{machine_key()} | {call_key}"
        self._load_disk_cache()
        entry = self._choices.get(key)
        if entry is not None and entry["kernel"] in candidates:
            return candidates[entry["kernel"]]()
        times, outs = {}, {}
        for name, fn in candidates.items():
            times[name], outs[name] = _timed(fn)
        slowest = max(times, key=times.__getitem__)
        t_again, outs[slowest] = _timed(candidates[slowest])
        times[slowest] = min(times[slowest], t_again)
        best = min(times, key=times.__getitem__)
        self._record(key, best, times)
        return outs[best]

    def _measure(self, key: str, direct, winograd) -> torch.Tensor:
        t_direct, out_direct = _timed(direct)
        t_wino, out_wino = _timed(winograd)
        if t_wino < t_direct and (t_wino >= t_direct * (1 - RECHECK_LEAD) or t_direct < RECHECK_BELOW_S):
            # a narrow lead may be oneDNN's one-off kernel creation in the first call: time direct once more
            t_again, out_direct = _timed(direct)
            t_direct = min(t_direct, t_again)
        kernel = "winograd" if t_wino < t_direct else "direct"
        self._record(key, kernel, {"direct": t_direct, "winograd": t_wino})
        return out_wino if kernel == "winograd" else out_direct

    def _record(self, key: str, kernel: str, times: dict[str, float]) -> None:
        busy = machine_busy()
        self._choices[key] = {"kernel": kernel, **{f"{name}_s": round(t, 6) for name, t in times.items()},
                              "busy": busy}
        if busy and not self._warned_busy:
            self._warned_busy = True
            logger.warning("timing convolution kernels (--conv auto, --conv_backward auto) while the machine is oversubscribed (load "
                           "average %.1f on %d CPUs): the choices may be wrong for a quiet machine and are kept "
                           "in %s; delete that file to measure again", os.getloadavg()[0], os.cpu_count() or 1,
                           default_cache_path() or "memory")
        logger.debug("conv kernel for %s: %s (%s)", key, kernel, times)
        self._save_disk_cache(key)

    # ------------------------------------------------------------------ inspection
    def choices(self) -> dict[str, dict]:
        """Every choice known to this process (measured here or read from the disk cache)."""
        return dict(self._choices)

    def clear(self) -> None:
        """Forget the in-process choices (the disk cache is read again on the next ``auto`` call)."""
        self._choices.clear()
        self._loaded_from = None

    # ------------------------------------------------------------------ disk cache
    def _load_disk_cache(self) -> None:
        path = default_cache_path()
        if path is None or self._loaded_from == path:
            return
        self._loaded_from = path
        for key, entry in _read(path).items():
            self._choices.setdefault(key, entry)

    def _save_disk_cache(self, key: str) -> None:
        path = default_cache_path()
        if path is None:
            return
        with self._lock:
            try:
                entries = _read(path)  # merge: other processes may have added shapes meanwhile
                entries[key] = self._choices[key]
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
                tmp.write_text(json.dumps({"version": _FORMAT_VERSION, "entries": entries}, indent=1, sort_keys=True))
                os.replace(tmp, path)
            except OSError as e:  # a read-only home must not stop inference; the choice stays in memory
                logger.warning("could not write the convolution kernel cache %s: %s", path, e)


#: :func:`machine_busy` threshold: runnable tasks per CPU (the timing process's own threads count too).
BUSY_LOAD_PER_CPU = 1.5


def machine_busy() -> bool:
    """Whether the machine is oversubscribed now (1-minute load average above 1.5 x the CPU count), so that
    a timing taken now may reflect other processes more than the kernels. False where there is no load
    average. Machine-wide: a container is judged by its host's load."""
    try:
        return os.getloadavg()[0] > BUSY_LOAD_PER_CPU * (os.cpu_count() or 1)
    except (AttributeError, OSError):
        return False


def _timed(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _read(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        logger.warning("ignoring unreadable convolution kernel cache %s: %s", path, e)
        return {}
    if not isinstance(data, dict) or data.get("version") != _FORMAT_VERSION or not isinstance(data.get("entries"), dict):
        return {}
    return {k: v for k, v in data["entries"].items() if isinstance(v, dict) and v.get("kernel") in KERNEL_NAMES}


CHOOSER = KernelChooser()


def call_key(kind: str, x: torch.Tensor, weight: torch.Tensor) -> str:
    """What decides a convolution's speed: its kind, input shape, dtype and layouts, output channels, time taps."""
    x_layout = "cl" if x.dim() >= 4 and x.permute(0, *range(2, x.dim()), 1).is_contiguous() else "c"
    w_layout = "cl" if weight.permute(0, *range(2, weight.dim()), 1).is_contiguous() else "c"
    kt = weight.shape[2] if weight.dim() == 5 else 1
    return (f"{kind} x{tuple(x.shape)} {str(x.dtype).removeprefix('torch.')} {x_layout} -> {weight.shape[0]} "
            f"kt{kt} w{w_layout}")
