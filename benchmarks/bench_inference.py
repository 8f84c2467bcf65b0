"""Inference time and peak memory of wfvae, optionally side by side with the original WF-VAE.

How to run::

    # WF-VAE-L 16-channel, round trip, 9 frames at 64x64, against a checkout of the original
    pip install diffusers einops            # the original needs them; benchmark-only
    python benchmarks/bench_inference.py --frames 9 --sizes 64 --reference_repo /path/to/WF-VAE

    # flat memory in video length: chunked round trip, ours only, memory only
    python benchmarks/bench_inference.py --frames 33 65 129 257 --sizes 32 --variants chunked \\
        --skip_time --json benchmarks/results/length_sweep.json

    # GPU, bf16 and fp32, encode / decode / round trip separately; --autocast runs bf16 the way
    # `wfvae reconstruct --dtype bf16` does (float32 weights under torch.autocast), not as bf16 weights
    python benchmarks/bench_inference.py --device cuda --dtypes fp32 bf16 --autocast --modes encode decode roundtrip \\
        --frames 33 --sizes 256 512 --reference_repo /path/to/WF-VAE

What is measured, per (mode, variant, dtype, frames, size):

* time: one fresh process holds both models on the same weights and input and alternates them
  (ours, original, ours, ...) for ``--repeats`` timed runs after one warm-up; medians are
  reported, with the ratio ours / original and the max-abs difference of the outputs.
* memory: one fresh process per implementation runs the operation once. On CPU the peak
  resident set (``VmHWM``, reset via ``/proc/self/clear_refs`` after the model and input are
  loaded) is read; ``act`` is that peak minus the resident set before the run (activations and
  workspace; the weights are identical in both). On CUDA ``torch.cuda.max_memory_allocated``.

Both implementations run under ``torch.inference_mode()`` with ``torch.set_num_threads(--threads)``.
Weights are a seeded random initialisation of ``--config`` (saved once, loaded by every process)
unless ``--weights`` names a ``save_pretrained`` folder. The original's code is imported from
``--reference_repo`` only when that flag is given; nothing of it is copied here. ``chunked``
variants run ours only (``encode(chunk_size=--enc_chunk)``, ``decode(chunk_size=--dec_chunk)``).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}


# --------------------------------------------------------------------------- worker side
def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> None:
    # writing 5 resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
    Path("/proc/self/clear_refs").write_text("5")


def _load_ours(job):
    from wfvae.inference.common import load_for_inference

    return load_for_inference(job["weights"], job.get("conv", "auto"))  # as the inference commands load it


def _load_reference(job):
    sys.path.insert(0, job["reference_repo"])  # only the reference benchmark path sees the original
    from safetensors.torch import load_file

    config = json.loads((Path(job["weights"]) / "config.json").read_text())
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    if config["_class_name"] in ("WFVAEModel", "WFVAE"):
        from causalvideovae.model.vae.modeling_wfvae import WFVAEModel as cls
    else:
        from causalvideovae.model.vae.modeling_causalvae import CausalVAEModel as cls
    model = cls(**kwargs)
    # save_pretrained's diffusers layout (benchmarks made before it wrote model.safetensors)
    weights = Path(job["weights"]) / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        weights = weights.with_name("model.safetensors")
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model.eval()


def _chunk(value: str) -> dict:
    return {"chunk_size": value if value == "auto" else int(value)}


def _operation(impl: str, model, job, video, latents):
    """A closure running the job's mode on ``model`` and returning the output tensor."""
    mode, chunked = job["mode"], job["variant"] == "chunked"
    budget = {"max_memory_gb": job["max_memory_gb"]} if job.get("max_memory_gb") else {}
    enc_kw = dict(_chunk(job["enc_chunk"]), **budget) if chunked else {}
    dec_kw = dict(_chunk(job["dec_chunk"]), **budget) if chunked else {}
    if impl == "ours":
        encode = lambda x: model.encode(x, **enc_kw).moments
        decode = lambda z: model.decode(z, **dec_kw)
        mean = lambda m: m[:, : model.latent_channels]
    else:
        encode = lambda x: model.encode(x).latent_dist.parameters
        decode = lambda z: model.decode(z).sample
        mean = lambda m: torch.chunk(m, 2, dim=1)[0]
    if mode == "encode":
        return lambda: encode(video)
    if mode == "decode":
        return lambda: decode(latents)
    return lambda: decode(mean(encode(video)))


def _inputs(job, device, dtype):
    """The same video (B=1, uniform in [-1, 1]) and latents (standard normal) in every process."""
    g = torch.Generator().manual_seed(0)
    t, s, tf = job["frames"], job["size"], job["temporal_compression_ratio"]
    video = (torch.rand(1, 3, t, s, s, generator=g) * 2 - 1).to(device, dtype)
    latents = torch.randn(1, job["latent_channels"], 1 + (t - 1) // tf, s // 8, s // 8, generator=g).to(device, dtype)
    return video, latents


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def worker(job: dict) -> dict:
    torch.set_num_threads(job["threads"])
    device, dtype = job["device"], DTYPES[job["dtype"]]
    what = job["what"]
    if job.get("free_promptly") == "both" or (job.get("free_promptly") == "ours" and what == "ours"):
        from wfvae.runtime import free_memory_promptly

        free_memory_promptly()  # as the inference commands do on CPU (process-wide glibc setting)
    models = {}
    if what in ("time", "ours"):
        models["ours"] = _load_ours(job)
    # the original has no exact chunked mode: against our chunked rows it runs its full pass (memory, too)
    if what == "reference" or (what == "time" and job["reference_repo"]):
        models["reference"] = _load_reference(job)
    # --autocast: half precision as the inference commands run it, float32 weights and input under autocast
    amp = bool(job.get("autocast")) and dtype in (torch.bfloat16, torch.float16)
    stored = torch.float32 if amp else dtype
    video, latents = _inputs(job, device, stored)
    for m in models.values():
        m.to(device, stored)
    ops = {name: _operation(name, m, job, video, latents) for name, m in models.items()}
    result = {"threads": torch.get_num_threads(), "autocast": amp}
    precision = torch.autocast(device, dtype=dtype) if amp else contextlib.nullcontext()
    with torch.inference_mode(), precision:
        if job["what"] == "time":
            times = {name: [] for name in ops}
            outputs = {}
            for r in range(job["repeats"] + job["warmup"]):
                for name, op in ops.items():
                    _sync(device)
                    start = time.perf_counter()
                    outputs[name] = op()
                    _sync(device)
                    if r >= job["warmup"]:
                        times[name].append(time.perf_counter() - start)
            result["times_s"] = times
            if job.get("conv") == "auto":
                from wfvae.models.layers.kernel_choice import CHOOSER

                # per layer shape: the kernel auto mode chose and the two times it chose by
                result["conv_kernels"] = {k.split(" | ")[-1]: v for k, v in CHOOSER.choices().items()}
            if "reference" in outputs:
                diff = (outputs["ours"].double() - outputs["reference"].double()).abs().max().item()
                result["max_abs_diff"] = diff
        else:
            (name, op), = ops.items()
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated() / 2**20
                op()
                _sync(device)
                peak = torch.cuda.max_memory_allocated() / 2**20
            else:
                base = _rss_mb("VmRSS")
                _reset_peak_rss()
                op()
                peak = _rss_mb("VmHWM")
            result.update(peak_mb=peak, base_mb=base, act_mb=peak - base)
    return result


# --------------------------------------------------------------------------- driver side
def run_workers(*jobs: dict) -> list[dict]:
    """Run one fresh worker process per job, all at the same time; their results in order."""
    procs = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--_worker", json.dumps(job)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for job in jobs]
    results = []
    for job, proc in zip(jobs, procs):
        out, err = proc.communicate()
        lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
        if not lines:
            raise RuntimeError(f"worker failed ({proc.returncode}) for {job}:\n{err[-3000:]}")
        results.append(json.loads(lines[-1][len("RESULT "):]))
    return results


def run_worker(job: dict) -> dict:
    return run_workers(job)[0]


def prepare_weights(args, scratch: Path) -> tuple[str, dict]:
    """The weights folder every process loads (``--weights``, or a seeded init saved under ``scratch``), and
    the model facts the workers need."""
    from wfvae.models import build_model, load_model

    if args.weights:
        directory, model = args.weights, load_model(args.weights)
    else:
        torch.manual_seed(0)
        model = build_model(args.config)
        directory = str(scratch / "weights")
        model.save_pretrained(directory)
    facts = {"latent_channels": model.latent_channels, "temporal_compression_ratio": model.temporal_compression_ratio}
    return directory, facts


def build_parser() -> argparse.ArgumentParser:
    """The command line (also used by ``gpu_check.py --dry_run`` to check its planned arguments)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "examples/configs/wfvae-large-16chn.json"))
    p.add_argument("--weights", default=None, help="save_pretrained folder; default: seeded random init of --config")
    p.add_argument("--reference_repo", default=None, help="checkout of the original WF-VAE to compare against")
    p.add_argument("--frames", type=int, nargs="+", default=[9])
    p.add_argument("--sizes", type=int, nargs="+", default=[64], help="height = width in pixels")
    p.add_argument("--modes", nargs="+", default=["roundtrip"], choices=["encode", "decode", "roundtrip"])
    p.add_argument("--variants", nargs="+", default=["full"], choices=["full", "chunked"])
    p.add_argument("--dtypes", nargs="+", default=["fp32"], choices=sorted(DTYPES))
    p.add_argument("--autocast", action="store_true",
                   help="run bf16/fp16 as the inference commands' --dtype does: float32 weights and input under "
                        "torch.autocast (default: weights and input converted to that dtype)")
    p.add_argument("--enc_chunk", default="8", help="frames per encoder chunk, or auto (chunked variant)")
    p.add_argument("--dec_chunk", default="2", help="latent frames per decoder chunk, or auto (chunked variant)")
    p.add_argument("--max_memory_gb", type=float, default=None, help="budget of auto chunk sizes (chunked variant)")
    p.add_argument("--free_promptly", default="none", choices=["none", "ours", "both"],
                   help="memory workers: apply wfvae.runtime.free_memory_promptly() (what the inference commands do "
                        "on CPU) in our process, or in both implementations' processes")
    p.add_argument("--conv", default="auto", choices=["auto", "direct", "winograd"],
                   help="our 3x3 convolutions: auto (as the inference commands: the faster of direct and Winograd "
                        "per layer shape, timed in this run's first call of each shape), oneDNN's direct kernels, "
                        "or Winograd F(2x2,3x3) (CPU only)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every process")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--skip_time", action="store_true")
    p.add_argument("--skip_memory", action="store_true")
    p.add_argument("--parallel_memory", action="store_true",
                   help="run our and the original's memory workers at the same time (peak memory is per process and "
                        "does not depend on load; halves the wall time on a machine with memory to spare)")
    p.add_argument("--json", default=str(ROOT / "benchmarks/results/inference.json"))
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)

    if args._worker:
        print("RESULT " + json.dumps(worker(json.loads(args._worker))), flush=True)
        return 0
    if args.reference_repo and not (Path(args.reference_repo) / "causalvideovae").is_dir():
        p.error(f"--reference_repo {args.reference_repo} has no causalvideovae/ package")

    info = machine_info(args.threads)
    # the seeded weights (1.2 GB for WF-VAE-L) live in a scratch folder that is removed however the run ends
    with tempfile.TemporaryDirectory(prefix="wfvae_bench_") as scratch:
        # --conv auto: the kernel choices of this run (made in the time worker's warm-up, reused by the memory
        # workers) live in the scratch folder, not in the user's cache
        os.environ["WFVAE_CONV_CACHE"] = str(Path(scratch) / "conv_kernels.json")
        weights, facts = prepare_weights(args, Path(scratch))
        rows = []
        header = (f"{'mode':9} {'variant':12} {'dtype':8} {'T':>4} {'px':>4} | {'ours s':>8} {'orig s':>8} {'ratio':>5} | "
                  f"{'ours MB':>8} {'orig MB':>8} {'ratio':>5} | {'ours act':>8} {'orig act':>8} {'ratio':>5} | max|diff|")
        print(header)
        print("-" * len(header))
        grid = itertools.product(args.modes, args.variants, args.dtypes, args.frames, args.sizes)
        for mode, variant, dtype, frames, size in grid:
            base = dict(facts, weights=weights, reference_repo=args.reference_repo, mode=mode, variant=variant,
                        dtype=dtype, frames=frames, size=size, enc_chunk=args.enc_chunk, dec_chunk=args.dec_chunk,
                        max_memory_gb=args.max_memory_gb, free_promptly=args.free_promptly,
                        conv=args.conv, device=args.device, threads=args.threads, repeats=args.repeats,
                        warmup=args.warmup, autocast=args.autocast and dtype in ("bf16", "fp16"))
            row = dict(base, weights=None)
            if not args.skip_time:
                row["time"] = run_worker(dict(base, what="time"))
            if not args.skip_memory and args.reference_repo and args.parallel_memory:
                # separate processes, so each peak is its own; only the wall time is shared
                row["memory_ours"], row["memory_reference"] = run_workers(dict(base, what="ours"),
                                                                          dict(base, what="reference"))
            elif not args.skip_memory:
                row["memory_ours"] = run_worker(dict(base, what="ours"))
                if args.reference_repo:
                    # the original has no exact chunked mode: its chunked row is its full pass,
                    # the way a user of the original would run the same job
                    row["memory_reference"] = run_worker(dict(base, what="reference"))
            rows.append(row)
            print(format_row(row), flush=True)
    info["loadavg_end"] = os.getloadavg()
    out = {"machine": info, "config": args.config, "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


def _ratio(a, b):
    return f"{a / b:5.2f}" if a is not None and b else "    -"


def _num(v, fmt):
    return format(v, fmt) if v is not None else "-".rjust(len(format(0.0, fmt)))


def format_row(row: dict) -> str:
    t = row.get("time", {}).get("times_s", {})
    t_ours = statistics.median(t["ours"]) if "ours" in t else None
    t_ref = statistics.median(t["reference"]) if "reference" in t else None
    m_ours, m_ref = row.get("memory_ours", {}), row.get("memory_reference", {})
    diff = row.get("time", {}).get("max_abs_diff")
    return (
        f"{row['mode']:9} {row['variant'] + {'winograd': '+wino', 'auto': '+auto'}.get(row.get('conv'), ''):12} "
        f"{row['dtype'] + ('@amp' if row.get('autocast') else ''):8} {row['frames']:4d} {row['size']:4d} | "
        f"{_num(t_ours, '8.2f')} {_num(t_ref, '8.2f')} {_ratio(t_ours, t_ref)} | "
        f"{_num(m_ours.get('peak_mb'), '8.0f')} {_num(m_ref.get('peak_mb'), '8.0f')} "
        f"{_ratio(m_ours.get('peak_mb'), m_ref.get('peak_mb'))} | "
        f"{_num(m_ours.get('act_mb'), '8.0f')} {_num(m_ref.get('act_mb'), '8.0f')} "
        f"{_ratio(m_ours.get('act_mb'), m_ref.get('act_mb'))} | "
        + (f"{diff:.2e}" if diff is not None else "-")
    )


if __name__ == "__main__":
    sys.exit(main())
