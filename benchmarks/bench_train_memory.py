"""Training-step peak memory and time: ours with and without gradient checkpointing, against the original.

How to run::

    # tiny config, 9 frames at 64x64, fp32 on CPU, against a checkout of the original
    python benchmarks/bench_train_memory.py --frames 9 --size 64 --reference_repo /path/to/WF-VAE

    # WF-VAE-L 16-channel at 9x128x128, one timed step each
    python benchmarks/bench_train_memory.py --config examples/configs/wfvae-large-16chn.json --frames 9 \\
        --size 128 --repeats 1 --reference_repo /path/to/WF-VAE --json benchmarks/results/train_memory_large.json

    # GPU, bf16 autocast in all three
    python benchmarks/bench_train_memory.py --device cuda --dtype bf16 --frames 25 --size 256 \\
        --config examples/configs/wfvae-large-16chn.json --reference_repo /path/to/WF-VAE

The step is the generator's part of a training step, the part gradient checkpointing changes:
encode, sample the posterior, decode, L1 reconstruction + 1e-6 KL + 0.1 x the wavelet-coefficient L1
(the original's loss terms, without LPIPS and the discriminator, which are the same code and memory
with and without checkpointing and are measured by ``bench_train_step.py``), backward. Gradients are
set to ``None`` before each step, so every step allocates them as a training step does.

Variants: ``ours`` (plain backward), ``ours_ckpt`` (``enable_gradient_checkpointing()``) and, with
``--reference_repo``, ``original`` (the checkout's ``WFVAEModel``, loaded strictly with the same
weights) and ``original_fixed`` (the same, with our host-allocator setting). ``--dtype bf16`` runs all of
them under ``torch.autocast(bfloat16)``.

Host allocator (``--allocator``, CPU only: on CUDA every variant runs with glibc's defaults): ``fixed`` (default) runs ours as ``wfvae train --release_host_memory`` does,
with glibc's mmap threshold fixed (``wfvae.runtime.free_memory_promptly``) so freed activations leave the
process, and the original as its own trainer runs, with glibc's defaults; ``original_fixed`` separates the
allocator's share from the tensors'. ``default``: every variant with glibc's defaults (no ``original_fixed``).

* memory: one fresh process per variant loads the model and reads its resident set (the base),
  runs ``--memory_warmup`` steps (default none), then one step with the peak resident set (``VmHWM``) reset just before
  it; ``growth`` = that peak minus the base (activations, gradients, workspace and whatever the
  allocator kept from the warm-up: the weights are the same in all variants). On CUDA
  ``torch.cuda.max_memory_allocated`` of the step minus the memory allocated after loading.
* time: one process holds ours and the original (with ``--allocator fixed`` both under the fixed
  threshold, since it is per process), alternates ours, ours_ckpt, original for
  ``--repeats`` timed steps after ``--warmup`` (ours and ours_ckpt are one model, checkpointing
  switched on and off); medians. The first step's losses and gradients are compared: ours_ckpt
  against ours (max relative difference over parameters) and ours against the original (loss).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from machine import describe, machine_info
from wfvae.models.base import WEIGHTS_NAME
from wfvae.runtime import free_memory_promptly

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("ours", "ours_ckpt", "original", "original_fixed")


# --------------------------------------------------------------------------- worker side
def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _load(name: str, job: dict):
    from safetensors.torch import load_file

    if name.startswith("original"):
        sys.path.insert(0, job["reference_repo"])  # only this benchmark path sees the original
        from causalvideovae.model.vae.modeling_wfvae import WFVAEModel

        config = json.loads((Path(job["weights"]) / "config.json").read_text())
        model = WFVAEModel(**{k: v for k, v in config.items() if not k.startswith("_")})
        model.load_state_dict(load_file(str(Path(job["weights"]) / WEIGHTS_NAME)), strict=True)
    else:
        from wfvae.models import load_model

        model = load_model(job["weights"]).use_channels_last_weights()  # as `wfvae train` builds it (no --fsdp)
        model.set_conv_backward_layout(job.get("conv_backward", "channels_last"))  # wfvae train --conv_backward
    return model.to(job["device"]).train()


def _video(job) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    shape = (job["batch"], 3, job["frames"], job["size"], job["size"])
    return (torch.rand(shape, generator=g) * 2 - 1).to(job["device"])


def _step(name: str, model, video: torch.Tensor, job: dict) -> float:
    """One generator forward + loss + backward; returns the loss."""
    model.zero_grad(set_to_none=True)
    if not name.startswith("original"):
        if name == "ours_ckpt":
            model.enable_gradient_checkpointing()
        else:
            model.disable_gradient_checkpointing()
    torch.manual_seed(1234)  # the same posterior noise for every variant
    with torch.autocast(video.device.type, dtype=torch.bfloat16, enabled=job["dtype"] == "bf16"):
        out = model(video)
        if name.startswith("original"):
            recon, posterior, extra = out.sample, out.latent_dist, out.extra_output
        else:
            recon, posterior, extra = out.sample, out.posterior, out.extra
        bs = video.shape[0]
        loss = (recon.float() - video).abs().mean() + 1e-6 * posterior.kl().float().sum() / bs
        if extra is not None:
            wavelet = sum((a.float() - b.float()).abs().sum() for a, b in zip(extra[0::2], extra[1::2])) / bs
            loss = loss + 0.1 * wavelet
    loss.backward()
    return loss.item()


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def worker(job: dict) -> dict:
    torch.set_num_threads(job["threads"])
    name = job.get("variant")
    if job["allocator"] == "fixed" and name != "original":  # before anything large is allocated, as in training
        fixed = free_memory_promptly()
    else:
        fixed = False
    video = _video(job)
    if job["what"] == "memory":
        model = _load(name, job)
        # the base is taken before any step: memory the allocator keeps from a warm-up step (glibc does not
        # return every freed block) would otherwise hide part of the measured step's peak
        cuda = job["device"] == "cuda"
        base = torch.cuda.memory_allocated() / 2**20 if cuda else _rss_mb("VmRSS")
        for _ in range(job.get("memory_warmup", 0)):
            _step(name, model, video, job)
        model.zero_grad(set_to_none=True)
        gc.collect()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            _step(name, model, video, job)
            _sync(job["device"])
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
            _step(name, model, video, job)
            peak = _rss_mb("VmHWM")
        return {"peak_mb": peak, "base_mb": base, "growth_mb": peak - base, "mmap_threshold_fixed": fixed}

    models = {"ours": _load("ours", job)}
    models["ours_ckpt"] = models["ours"]  # the same module, checkpointing switched on for this variant
    if job["reference_repo"]:
        models["original"] = _load("original", job)
    times = {name: [] for name in models}
    cpu_times = {name: [] for name in models}  # process CPU time (all threads): less distorted by load than wall
    first_loss, first_grads = {}, {}
    for r in range(job["warmup"] + job["repeats"]):
        for name, model in models.items():
            _sync(job["device"])
            start, cpu_start = time.perf_counter(), time.process_time()
            loss = _step(name, model, video, job)
            _sync(job["device"])
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            print(f"  step {r} {name:9s} {elapsed:8.3f} s  loss {loss:.6g}", file=sys.stderr, flush=True)
            if r >= job["warmup"]:
                times[name].append(elapsed)
                cpu_times[name].append(cpu)
            if r == 0:
                first_loss[name] = loss
                if not name.startswith("original"):
                    first_grads[name] = {n: p.grad.detach().clone() for n, p in model.named_parameters()
                                         if p.grad is not None}
    rel = max(((first_grads["ours_ckpt"][k] - g).norm() / g.norm().clamp_min(1e-30)).item()
              for k, g in first_grads["ours"].items())
    result = {"times_s": times, "cpu_times_s": cpu_times, "first_loss": first_loss,
              "grad_max_rel_diff_ckpt_vs_plain": rel,
              "mmap_threshold_fixed": fixed, "loadavg_after": os.getloadavg()}
    if "original" in first_loss:
        result["loss_abs_diff_ours_vs_original"] = abs(first_loss["ours"] - first_loss["original"])
    return result


# --------------------------------------------------------------------------- driver side
def run_worker(job: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", json.dumps(job)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)  # stderr: live progress
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"worker failed ({proc.returncode}) for {job['what']} {job.get('variant', '')}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "examples/configs/wfvae_tiny.json"), help="a WF-VAE config.json")
    p.add_argument("--reference_repo", default=None, help="checkout of the original WF-VAE to compare against")
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--size", type=int, default=64, help="height = width in pixels")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="fp32, or bf16 autocast (all variants)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every process")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before the timed ones")
    p.add_argument("--memory_warmup", type=int, default=0,
                   help="steps before the measured one in the memory processes (0: the first step is measured; "
                        "more adds what glibc keeps from earlier steps to the peak)")
    p.add_argument("--allocator", default="fixed", choices=["fixed", "default"],
                   help="fixed: ours (and original_fixed) with the fixed glibc mmap threshold of wfvae train "
                        "--release_host_memory; default: glibc's defaults everywhere")
    p.add_argument("--conv_backward", default="channels_last", choices=["channels_last", "contiguous", "auto"],
                   help="ours: layout of the convolutions' backward pass (wfvae train --conv_backward). auto: the time "
                        "run goes first and its warm-up step times the layouts into a scratch cache that the memory "
                        "runs then read, so no timing falls into a measured step")
    p.add_argument("--skip_time", action="store_true")
    p.add_argument("--skip_memory", action="store_true")
    p.add_argument("--json", default=str(ROOT / "benchmarks/results/train_memory.json"))
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
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible")
    if args.device == "cuda":
        args.allocator = "default"  # glibc's mmap threshold is host memory: it has no say in a CUDA step's peak
    if args.conv_backward == "auto" and (args.skip_time or args.warmup < 1):
        p.error("--conv_backward auto needs the time run with --warmup >= 1: its warm-up step makes the choices "
                "that the memory runs read")

    from wfvae.models import build_model

    info = machine_info(args.threads)
    variants = [v for v in VARIANTS if (not v.startswith("original") or args.reference_repo)
                and (v != "original_fixed" or args.allocator == "fixed")]
    result = {"machine": info, "args": {k: v for k, v in vars(args).items() if not k.startswith("_")}}
    with tempfile.TemporaryDirectory(prefix="wfvae_bench_train_memory_") as scratch:
        torch.manual_seed(0)
        weights = build_model(args.config).save_pretrained(Path(scratch) / "weights")  # removed with `scratch`
        job = {"weights": str(weights), "reference_repo": args.reference_repo, "frames": args.frames,
               "size": args.size, "batch": args.batch, "dtype": args.dtype, "device": args.device,
               "threads": args.threads, "repeats": args.repeats, "warmup": args.warmup,
               "memory_warmup": args.memory_warmup, "allocator": args.allocator,
               "conv_backward": args.conv_backward}
        if args.conv_backward == "auto":  # the workers time and read the layouts here, not in the user's cache
            cache = Path(scratch) / "conv_kernels.json"
            os.environ["WFVAE_CONV_CACHE"] = str(cache)
            result["time"] = run_worker(dict(job, what="time"))
            entries = json.loads(cache.read_text())["entries"] if cache.exists() else {}
            result["conv_backward_choices"] = {k.rsplit(" | ", 1)[-1]: v for k, v in entries.items()
                                               if " | bwd" in k}
        if not args.skip_memory:
            result["memory"] = {}
            for v in variants:
                result["memory"][v] = run_worker(dict(job, what="memory", variant=v))
                print(f"memory {v:9s}: {result['memory'][v]}", flush=True)
        if not args.skip_time and "time" not in result:
            result["time"] = run_worker(dict(job, what="time"))
    info["loadavg_end"] = os.getloadavg()
    print(format_table(args, result, variants))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


def format_table(args, result: dict, variants: list[str]) -> str:
    mem, tim = result.get("memory", {}), result.get("time", {})
    med = {v: statistics.median(t) for v, t in tim.get("times_s", {}).items()}
    cpu = {v: statistics.median(t) for v, t in tim.get("cpu_times_s", {}).items()}
    ref = "original" if "original" in variants else "ours"
    lines = [f"{Path(args.config).name}, {args.frames}x{args.size}x{args.size}, batch {args.batch}, {args.dtype}, "
             f"{args.device}, allocator {args.allocator}, conv backward {args.conv_backward}; "
             f"{describe(result['machine'])}",
             f"| variant | peak growth MB | vs {ref} | step s (median) | vs {ref} | CPU s | vs {ref} |",
             "|---|---|---|---|---|---|---|"]
    for v in variants:
        g = mem.get(v, {}).get("growth_mb")
        g_ref = mem.get(ref, {}).get("growth_mb")
        t, t_ref = med.get(v), med.get(ref)
        lines.append(f"| {v} | {g:.0f} | {g / g_ref:.2f} | " if g is not None and g_ref else f"| {v} | - | - | ")
        lines[-1] += f"{t:.3f} | {t / t_ref:.2f} |" if t is not None and t_ref else "- | - |"
        c, c_ref = cpu.get(v), cpu.get(ref)
        lines[-1] += f" {c:.3f} | {c / c_ref:.2f} |" if c is not None and c_ref else " - | - |"
    if tim:
        lines.append(f"first step: gradients with checkpointing vs without, max relative difference "
                     f"{tim['grad_max_rel_diff_ckpt_vs_plain']:.1e}"
                     + (f"; loss ours vs original {tim['loss_abs_diff_ours_vs_original']:.1e}"
                        if "loss_abs_diff_ours_vs_original" in tim else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
