"""Hundreds of training steps of our trainer and of the original's, side by side, from the same start.

How to run::

    pip install diffusers einops            # the original's imports; benchmark-only
    python benchmarks/bench_train_parity.py --reference_repo /path/to/WF-VAE \\
        --json benchmarks/results/train_parity.json

What runs: ours is a real :class:`wfvae.training.trainer.Trainer` (single process), stepped through its own
generator and discriminator updates and validated with its own ``validate()``; the original is its
``WFVAEModel`` + ``LPIPSWithDiscriminator3D`` stepped as its ``train_ddp.py`` does (the
``OriginalTrainer`` of ``bench_train_step.py``: requires_grad toggling, ``optimizer_idx`` 0 / 1, the
always-on ``GradScaler``, AdamW, no gradient clipping). Both start from our initial weights (the original
loads our generator and loss/discriminator state dicts strictly), take the same batch at every step (real
video files written here, read once by our dataset in a fixed shuffled order) and the same posterior noise
(``torch.manual_seed(1000 + step)`` before each step). Steps before ``--disc_start`` are generator updates;
from it on, odd steps update the discriminator, as in the original. Defaults: the tiny config, 5x32x32
clips, 300 steps with the adversarial phase switched on at step 150, wavelet loss 0.1, no LPIPS (its VGG16
trunk would dominate the time and has no weights on a test machine), lr 1e-4, fp32 on CPU.

Validation: every ``--eval_every`` steps, PSNR of the posterior-mean reconstruction of the held-out clips
(clamped to [-1, 1], one MSE per video, averaged over videos): ours by ``Trainer.validate()``, the
original's model by the same rule written here. The original's own ``valid()`` differs in ways that are
not training (it feeds its validation clips in [0, 1] because its ``ValidVideoDataset`` has no ``* 2 - 1``,
samples the posterior and averages per-frame PSNR), so it is not used.

Output: a figure of the rec (NLL), KL, wavelet, adversarial-generator and discriminator losses and of the
validation PSNR against step, both runs in each panel (``--plot``), the largest relative difference of
each curve before and after the adversarial phase starts, and ``--json`` with every value.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import OriginalTrainer, machine_info, ours_step  # noqa: E402  (same folder)

ROOT = Path(__file__).resolve().parents[1]
CURVES = ("nll", "kl", "wavelet", "g_adv", "d_loss")
LABELS = {"nll": "rec (NLL: L1 summed per frame)", "kl": "KL", "wavelet": "wavelet", "g_adv": "adversarial (G)",
          "d_loss": "discriminator", "val_psnr": "validation PSNR (dB)"}


def build_ours(args, workdir: Path):
    from wfvae.config import parse_train_config
    from wfvae.data.synthetic import write_synthetic_dataset
    from wfvae.distributed import DistEnv
    from wfvae.training.trainer import Trainer, preflight

    train_dir, val_dir = workdir / "train", workdir / "val"
    if not train_dir.is_dir():  # written once by the parent process when the runs are parallel
        write_synthetic_dataset(train_dir, n_videos=args.num_train_videos, num_frames=args.frames + 8,
                                height=args.size, width=args.size * 3 // 2, seed=0)
        write_synthetic_dataset(val_dir, n_videos=args.num_val_videos, num_frames=args.frames, height=args.size,
                                width=args.size * 3 // 2, seed=1000)
    argv = [
        "--ckpt_dir", str(workdir / f"runs_{os.getpid()}"),
        "--model_name", "WFVAE", "--model_config", args.config, "--video_path", str(train_dir),
        "--num_frames", str(args.frames), "--resolution", str(args.size), "--sample_rate", "1",
        "--batch_size", str(args.batch), "--mix_precision", "fp32", "--device", "cpu",
        "--report_to", "none", "--dataset_num_worker", "0",
        "--disc_start", str(args.disc_start), "--disc_weight", "0.5", "--kl_weight", "1e-6",
        "--perceptual_weight", str(args.perceptual_weight), "--loss_type", "l1",
        "--wavelet_loss", "true", "--wavelet_weight", "0.1", "--lr", str(args.lr), "--weight_decay", "1e-4",
        "--perceptual_random_backbone", "--seed", "1234",
        "--eval_video_path", str(val_dir), "--eval_num_frames", str(args.frames), "--eval_resolution", str(args.size),
        "--eval_batch_size", "1", "--eval_subset_size", "0", "--eval_num_video_log", "0",
    ]
    cfg = parse_train_config(argv)
    cfg.validate()
    preflight(cfg)
    env = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), backend=None)
    return Trainer(cfg, env)


def training_batches(trainer, steps: int, batch: int) -> list[torch.Tensor]:
    """``steps`` batches from our dataset: a fresh shuffle (and clip starts) every epoch, fixed by the seed."""
    ds = trainer.dataset
    out: list[torch.Tensor] = []
    epoch = 0
    while len(out) < steps:
        ds.set_epoch(epoch)
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(epoch)).tolist()
        for i in range(0, len(order) - batch + 1, batch):
            out.append(torch.stack([ds[j]["video"] for j in order[i : i + batch]]))
            if len(out) == steps:
                break
        epoch += 1
    return out


@torch.no_grad()
def validation_psnr(model, clips: list[torch.Tensor]) -> float:
    """The rule of ``Trainer.validate()``: posterior mean, clamp, one MSE per video on [0, 1], mean of PSNRs."""
    was_training = model.training
    model.eval()
    values = []
    for video in clips:
        recon = model(video, sample_posterior=False).sample.float().clamp(-1.0, 1.0)
        mse = ((video.double() - recon.double()) / 2.0).square().mean()
        values.append(10.0 * torch.log10(1.0 / mse).item())
    model.train(was_training)
    return float(np.mean(values))


def max_rel_diff(a: list[float], b: list[float], steps: list[int], lo: int, hi: int) -> float | None:
    pairs = [(x, y) for x, y, s in zip(a, b, steps) if lo <= s < hi and x is not None and y is not None]
    if not pairs:
        return None
    return max(abs(x - y) / max(abs(y), 1e-12) for x, y in pairs)


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="wfvae_bench_parity_"))
    try:
        return _run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def train_one(args, workdir: Path, name: str) -> dict:
    """One run (``ours``, ``original`` or ``original_1ulp``) from the shared start, on the shared batches."""
    trainer = build_ours(args, workdir)  # our trainer also provides the initial weights and the batches
    if name == "ours":
        step_fn, model = (lambda v, s: ours_step(trainer, v, s)), trainer.model
    else:
        original = OriginalTrainer(args, trainer, torch.device("cpu"))
        if name == "original_1ulp":  # the float-noise floor: every initial weight moved by one ulp
            with torch.no_grad():
                for p in original.model.parameters():
                    p.copy_(torch.nextafter(p, torch.full_like(p, float("inf"))))
        step_fn, model = original.step, original.model
    batches = training_batches(trainer, args.steps, args.batch)
    val_clips = [b["video"][None] for b in trainer.val_loader.dataset]  # (1, 3, T, H, W) each
    out = {"losses": {k: [] for k in CURVES}, "val_step": [], "val": [], "val_by_rule": [], "train_time_s": 0.0}

    def validate(step: int) -> None:
        value = trainer.validate()["val/psnr"] if name == "ours" else validation_psnr(model, val_clips)
        out["val_step"].append(step)
        out["val"].append(value)
        out["val_by_rule"].append(validation_psnr(model, val_clips))
        print(f"[{name}] step {step:4d}  val PSNR {value:.4f} dB", flush=True)

    validate(0)
    for step in range(args.steps):
        torch.manual_seed(1000 + step)  # the same posterior noise (and dropout, if any) in every run
        t0 = time.perf_counter()
        values = step_fn(batches[step], step)
        out["train_time_s"] += time.perf_counter() - t0
        for k in CURVES:
            out["losses"][k].append(values.get(k))
        if step % 25 == 0:
            print(f"[{name}] step {step:4d}  {values}", flush=True)
        if (step + 1) % args.eval_every == 0 or step == args.steps - 1:
            validate(step + 1)
    trainer.close()
    return out


def _run(args, workdir: Path) -> dict:
    names = ["ours", "original"] + (["original_1ulp"] if args.noise_floor else [])
    if args.jobs <= 1:
        runs = {name: train_one(args, workdir, name) for name in names}
    else:
        # One process per run, each on its own core(s); the parent writes the data once.
        build_ours(args, workdir).close()
        procs = {}
        for name in names:
            cmd = [sys.executable, __file__, *args.argv, "--_only", name, "--_workdir", str(workdir),
                   "--threads", str(max(1, args.threads // len(names)))]
            procs[name] = subprocess.Popen(cmd)
        runs = {}
        for name, proc in procs.items():
            if proc.wait() != 0:
                raise RuntimeError(f"the {name} run failed (exit code {proc.returncode}); see its output above")
            runs[name] = json.loads((workdir / f"{name}.json").read_text())
    log = {name: r["losses"] for name, r in runs.items()}
    val = {"step": runs["ours"]["val_step"], "ours_by_rule": runs["ours"]["val_by_rule"],
           **{name: r["val"] for name, r in runs.items()}}
    times = {name: r["train_time_s"] for name, r in runs.items()}

    steps = list(range(args.steps))
    def phases(a, b, xs, shift=0):
        return {"before_gan": max_rel_diff(a, b, xs, 0, args.disc_start + shift),
                "gan_phase": max_rel_diff(a, b, xs, args.disc_start + shift, args.steps + 1)}

    diffs, floor = {}, {}
    for k in CURVES:
        diffs[k] = phases(log["ours"][k], log["original"][k], steps)
        if args.noise_floor:
            floor[k] = phases(log["original_1ulp"][k], log["original"][k], steps)
    diffs["val_psnr"] = phases(val["ours"], val["original"], val["step"], shift=1)
    if args.noise_floor:
        floor["val_psnr"] = phases(val["original_1ulp"], val["original"], val["step"], shift=1)
    return {"steps": args.steps, "disc_start": args.disc_start, "losses": log, "validation": val,
            "max_rel_diff": diffs, "noise_floor_max_rel_diff": floor, "train_time_s": times,
            "final_val_psnr_ours": val["ours"][-1], "final_val_psnr_reference": val["original"][-1],
            "final_val_psnr_diff_db": val["ours"][-1] - val["original"][-1]}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    steps = np.arange(result["steps"])
    for ax, k in zip(axes.flat, CURVES + ("val_psnr",)):
        if k == "val_psnr":
            v = result["validation"]
            ax.plot(v["step"], v["original"], "-", color="tab:orange", lw=3, alpha=0.6, label="original")
            ax.plot(v["step"], v["ours"], "--", color="tab:blue", lw=1.2, label="ours")
            if v.get("original_1ulp"):
                ax.plot(v["step"], v["original_1ulp"], ":", color="gray", lw=1, label="original, 1-ulp start")
        else:
            for name, style, color, lw, alpha in (("original", "-", "tab:orange", 3, 0.6), ("ours", "--", "tab:blue", 1.2, 1),
                                                  ("original_1ulp", ":", "gray", 1, 1)):
                if name not in result["losses"]:
                    continue
                ys = result["losses"][name][k]
                mask = np.array([y is not None for y in ys])
                ax.plot(steps[mask], np.array([y for y in ys if y is not None], dtype=float), style, color=color,
                        lw=lw, alpha=alpha, label=name)
            if k in ("nll", "wavelet"):
                ax.set_yscale("log")
        ax.axvline(result["disc_start"], color="gray", ls=":", lw=1)
        d = result["max_rel_diff"][k]
        f = result["noise_floor_max_rel_diff"].get(k)
        fmt = lambda x: "-" if x is None else f"{x:.1e}"  # noqa: E731
        title = f"{LABELS[k]}\nours vs original: max rel diff {fmt(d['before_gan'])} | {fmt(d['gan_phase'])}"
        if f:
            title += f"\n1-ulp start (noise floor): {fmt(f['before_gan'])} | {fmt(f['gan_phase'])}"
        ax.set_title(title + "  (before | after GAN on)", fontsize=8)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.suptitle(f"Training parity, ours vs the original: {result['steps']} steps, adversarial phase from step "
                 f"{result['disc_start']} (dotted); final val PSNR {result['final_val_psnr_ours']:.3f} vs "
                 f"{result['final_val_psnr_reference']:.3f} dB", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference_repo", required=True, help="checkout of the original WF-VAE")
    p.add_argument("--config", default=str(ROOT / "examples/configs/wfvae_tiny.json"))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--disc_start", type=int, default=None, help="adversarial phase from this step (default: steps // 2)")
    p.add_argument("--frames", type=int, default=5)
    p.add_argument("--size", type=int, default=32, help="clip height = width in pixels")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--perceptual_weight", type=float, default=0.0, help="LPIPS weight (random trunk in both)")
    p.add_argument("--num_train_videos", type=int, default=24)
    p.add_argument("--num_val_videos", type=int, default=4)
    p.add_argument("--eval_every", type=int, default=25)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--noise_floor", action=argparse.BooleanOptionalAction, default=True,
                   help="also run the original from weights moved by one ulp: how far float noise alone takes it")
    p.add_argument("--plot", default=str(ROOT / "benchmarks/results/train_parity.png"))
    p.add_argument("--json", default=None, help="write every value here")
    p.add_argument("--jobs", type=int, default=None,
                   help="processes: one per run by default (the runs are independent after the shared start)")
    p.add_argument("--_only", default=None, help=argparse.SUPPRESS)  # worker process: this run only
    p.add_argument("--_workdir", default=None, help=argparse.SUPPRESS)
    raw = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(raw)
    args.argv = [a for a in raw]
    if not (Path(args.reference_repo) / "causalvideovae").is_dir():
        p.error(f"--reference_repo {args.reference_repo} has no causalvideovae/ package")
    if args.disc_start is None:
        args.disc_start = args.steps // 2
    # what OriginalTrainer reads besides the above
    args.dtype, args.no_wavelet_loss, args.ema = "fp32", False, False

    if args.jobs is None:
        args.jobs = 3 if args.noise_floor else 2
    if args._only:
        torch.set_num_threads(args.threads)
        result = train_one(args, Path(args._workdir), args._only)
        (Path(args._workdir) / f"{args._only}.json").write_text(json.dumps(result))
        return 0

    info = machine_info(argparse.Namespace(device="cpu"))
    t0 = time.perf_counter()
    result = run(args)
    info["loadavg_end"] = os.getloadavg()
    info["wall_s"] = time.perf_counter() - t0
    plot(result, Path(args.plot))
    print(f"\n{result['steps']} steps ({result['disc_start']} generator-only, then G/D alternating); "
          f"wall {info['wall_s']:.0f} s; training time ours {result['train_time_s']['ours']:.1f} s, "
          f"original {result['train_time_s']['original']:.1f} s")
    fmt = lambda x: "-" if x is None else f"{x:.2e}"  # noqa: E731
    floor = result["noise_floor_max_rel_diff"]
    print("| curve | ours vs original, before GAN | ours vs original, GAN phase | original vs original 1-ulp, "
          "before GAN | original vs original 1-ulp, GAN phase |\n|---|---|---|---|---|")
    for k, d in result["max_rel_diff"].items():
        f = floor.get(k, {"before_gan": None, "gan_phase": None})
        print(f"| {LABELS[k]} | {fmt(d['before_gan'])} | {fmt(d['gan_phase'])} | {fmt(f['before_gan'])} | "
              f"{fmt(f['gan_phase'])} |")
    print(f"final validation PSNR: ours {result['final_val_psnr_ours']:.4f} dB, original "
          f"{result['final_val_psnr_reference']:.4f} dB, difference {result['final_val_psnr_diff_db']:+.4f} dB "
          f"(target |diff| <= 0.3)")
    print(f"wrote {args.plot}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": info, "args": vars(args), **result}, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
