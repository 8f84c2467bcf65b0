"""Where the memory of one round trip goes: malloc live bytes against resident memory, per stage.

How to run::

    # a seeded WF-VAE-L saved once (bench_inference.py builds the same weights: torch.manual_seed(0))
    python -c "import torch; from wfvae.models import build_model; torch.manual_seed(0); \
        build_model('examples/configs/wfvae-large-16chn.json').save_pretrained('/tmp/wfl')"
    python benchmarks/profile_memory.py --weights /tmp/wfl --frames 33 --size 128 --enc_chunk 8 --dec_chunk 1
    # the same with glibc's mmap threshold fixed (what wfvae.runtime.free_memory_promptly sets)
    MALLOC_MMAP_THRESHOLD_=131072 python benchmarks/profile_memory.py --weights /tmp/wfl ...

One process, one encode + decode (chunked unless ``--enc_chunk 0``), CPU, under
``torch.inference_mode()``. After every ATen operator (a ``TorchDispatchMode``) it samples

* ``live``: bytes glibc's malloc has handed out and not taken back (``mallinfo2``: ``uordblks``
  in the heaps plus ``hblkhd`` in separate mappings), i.e. tensors, oneDNN scratch and weight
  reorders, Python objects;
* ``rss``: the resident set (``/proc/self/statm``), which also holds freed memory glibc keeps;

each relative to the values after the model and input are loaded. It prints the peak of both, the
module (dotted name) and operator where each peak happened, per-stage maxima (top-level modules
and, for the decoder, its children), and the bytes held by the causal stream state at the end of
each chunk; ``vmhwm_growth_mb`` is the kernel's peak resident growth (VmHWM reset after loading).
``bench_inference.py`` gives the fresh-process numbers without the sampler that the tables use.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from machine import machine_info
from wfvae.utils.memory import libc_function

PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 2**20


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


_mallinfo2 = libc_function("mallinfo2", (), _Mallinfo2)  # glibc >= 2.33 only; this profiler needs it


def live_bytes() -> int:
    m = _mallinfo2()
    return m.uordblks + m.hblkhd


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class Sampler(TorchDispatchMode):
    """After each operator: live malloc bytes and RSS, attributed to the innermost running module."""

    def __init__(self, base_live: int, base_rss: int):
        super().__init__()
        self.base_live, self.base_rss = base_live, base_rss
        self.stack: list[str] = []
        self.peak_live = (0, "", "")
        self.peak_rss = (0, "", "")
        self.per_stage = defaultdict(lambda: [0, 0])  # stage -> [max live, max rss]
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        live, rss = live_bytes() - self.base_live, rss_bytes() - self.base_rss
        where = self.stack[-1] if self.stack else "<top>"
        if live > self.peak_live[0]:
            self.peak_live = (live, where, str(func))
        if rss > self.peak_rss[0]:
            self.peak_rss = (rss, where, str(func))
        for depth in (2, 3):
            stage = ".".join(where.split(".")[:depth])
            entry = self.per_stage[stage]
            entry[0], entry[1] = max(entry[0], live), max(entry[1], rss)
        return out


def stream_bytes(stream) -> int:
    """Bytes of the tensors a StreamState holds (causal caches, held-back frames)."""
    total, seen = 0, set()

    def visit(v):
        nonlocal total
        if isinstance(v, torch.Tensor):
            key = v.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += v.untyped_storage().nbytes()
        elif isinstance(v, (tuple, list)):
            for x in v:
                visit(x)
        elif isinstance(v, dict):
            for x in v.values():
                visit(x)

    visit(stream._entries)
    return total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True, help="save_pretrained folder (e.g. a seeded WF-VAE-L)")
    p.add_argument("--frames", type=int, default=33)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--enc_chunk", default="8", help="frames per encoder chunk, 0 = full pass, or auto")
    p.add_argument("--dec_chunk", default="2", help="latent frames per decoder chunk, 0 = full pass, or auto")
    p.add_argument("--max_memory_gb", type=float, default=None, help="budget for auto chunk sizes")
    p.add_argument("--conv", default="direct", choices=["auto", "direct", "winograd"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from wfvae.inference.common import load_for_inference

    model = load_for_inference(args.weights, args.conv)
    g = torch.Generator().manual_seed(0)
    video = torch.rand(1, 3, args.frames, args.size, args.size, generator=g) * 2 - 1

    def chunk(value):
        return None if value == "0" else (value if value == "auto" else int(value))

    kwargs = {} if args.max_memory_gb is None else {"max_memory_gb": args.max_memory_gb}
    names = {m: n for n, m in model.named_modules()}
    base_live, base_rss = live_bytes(), rss_bytes()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS (Linux >= 4.0)
    sampler = Sampler(base_live, base_rss)

    def pre(module, _inputs):
        sampler.stack.append(names[module])

    def post(module, _inputs, _output):
        sampler.stack.pop()

    hooks = [m.register_forward_pre_hook(pre) for m in model.modules()]
    hooks += [m.register_forward_hook(post) for m in model.modules()]

    # the stream state's size at the end of each chunk: wrap the chunk functions
    cache_sizes = {"encode": [], "decode": []}

    def recording(kind, chunk_fn):
        def run(x, s):
            out = chunk_fn(x, s)
            if s is not None:
                cache_sizes[kind].append(stream_bytes(s) / MB)
                cache_sizes.setdefault(f"{kind}_live", []).append((live_bytes() - base_live) / MB)
            return out
        return run

    model._encode_chunk = recording("encode", model._encode_chunk)
    model._decode_chunk = recording("decode", model._decode_chunk)
    marks = {}
    with torch.inference_mode(), sampler:
        posterior = model.encode(video, chunk_size=chunk(args.enc_chunk), **kwargs)
        marks["after_encode"] = (live_bytes() - base_live, rss_bytes() - base_rss)
        z = posterior.mode()
        del posterior
        recon = model.decode(z, chunk_size=chunk(args.dec_chunk), **kwargs)
        marks["after_decode"] = (live_bytes() - base_live, rss_bytes() - base_rss)
    for h in hooks:
        h.remove()
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))
    result = {
        "machine": machine_info(args.threads), "args": vars(args), "ops": sampler.ops,
        "base_rss_mb": base_rss / MB, "base_live_mb": base_live / MB,
        "peak_live_mb": sampler.peak_live[0] / MB, "peak_live_at": sampler.peak_live[1:],
        "peak_rss_mb": sampler.peak_rss[0] / MB, "peak_rss_at": sampler.peak_rss[1:],
        "vmhwm_growth_mb": (hwm - base_rss) / MB,
        "output_mb": recon.untyped_storage().nbytes() / MB,
        "marks_mb": {k: (a / MB, b / MB) for k, (a, b) in marks.items()},
        "stream_mb_per_chunk": cache_sizes,
        "per_stage_mb": {k: (v[0] / MB, v[1] / MB) for k, v in sorted(sampler.per_stage.items())},
    }
    print(f"base RSS {result['base_rss_mb']:.0f} MB, malloc live {result['base_live_mb']:.0f} MB; {sampler.ops} ops")
    print(f"peak live +{result['peak_live_mb']:.0f} MB at {sampler.peak_live[1]} ({sampler.peak_live[2]})")
    print(f"peak RSS  +{result['peak_rss_mb']:.0f} MB at {sampler.peak_rss[1]} ({sampler.peak_rss[2]}); "
          f"VmHWM growth {result['vmhwm_growth_mb']:.0f} MB; output {result['output_mb']:.0f} MB")
    for k, (a, b) in result["marks_mb"].items():
        print(f"{k}: live +{a:.0f} MB, RSS +{b:.0f} MB")
    for k, v in cache_sizes.items():
        print(f"stream state after each {k} chunk (MB): " + " ".join(f"{x:.0f}" for x in v))
    print(f"{'stage':45} {'max live MB':>11} {'max RSS MB':>11}")
    for k, (a, b) in result["per_stage_mb"].items():
        print(f"{k:45} {a:11.0f} {b:11.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
