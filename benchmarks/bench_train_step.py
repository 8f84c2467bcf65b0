"""Time of one GAN training step (generator update + discriminator update), optionally against the original.

How to run::

    # WF-VAE tiny config, 9 frames at 64x64, batch 1, fp32 on CPU, against a checkout of the original
    pip install diffusers einops            # the original needs them; benchmark-only
    python benchmarks/bench_train_step.py --frames 9 --size 64 --reference_repo /path/to/WF-VAE

    # WF-VAE-L 16-channel, two timed step pairs
    python benchmarks/bench_train_step.py --config examples/configs/wfvae-large-16chn.json --repeats 2 \\
        --reference_repo /path/to/WF-VAE --json benchmarks/results/train_step_large16_9x64.json

    # GPU, bf16 autocast (both implementations), bigger clips
    python benchmarks/bench_train_step.py --device cuda --dtype bf16 --frames 25 --size 256 \\
        --config examples/configs/wfvae-large-16chn.json --reference_repo /path/to/WF-VAE

What one "step" is here: both training loops alternate a generator update (even steps) and a discriminator
update (odd steps, from ``--disc_start`` on), each on its own batch; a step below is one of each, so
``s/step = G + D`` and ``clips/s = 2 * batch / (G + D)``. Defaults follow the original's
``examples/train_ddp.sh``: ``--disc_start 0`` (adversarial term and its adaptive weight on from the first
step), ``--wavelet_loss`` with weight 0.1, LPIPS weight 1.0, L1 pixel loss, AdamW lr 1e-5, no EMA
(``--ema`` turns it on for both).

* ours: a real :class:`wfvae.training.trainer.Trainer` is built from a ``TrainConfig`` (single process, no
  DDP wrapper, as ``wfvae train`` does with one process; its dataset is a small synthetic folder it never
  reads here), and its own ``_generator_step`` / ``_discriminator_step`` run on the benchmark's input. So the
  measured code is the trainer's: forward, ``VAEGANLoss`` (built by the trainer's ``build_loss``), backward,
  gradient clipping, the finiteness check, AdamW, EMA.
* original (``--reference_repo``): its ``WFVAEModel`` and ``LPIPSWithDiscriminator3D`` are imported from the
  checkout, loaded with our generator and loss/discriminator state dicts (both load strictly: the keys are
  identical), and stepped with the sequence of its ``train_ddp.py``: toggle the generator's
  ``requires_grad``, forward under autocast, ``loss(optimizer_idx=0)`` -> ``scaler.scale().backward()`` ->
  ``scaler.step(gen_optimizer)`` on even steps, ``loss(optimizer_idx=1)`` -> backward -> ``unscale_`` ->
  ``scaler.step(disc_optimizer)`` on odd steps, ``GradScaler`` always enabled, as it does. Differences that
  cannot be kept in one process: no DDP wrapper (ours has none either with one process), and autocast uses
  the benchmark's device type (the original hard-codes ``"cuda"``, which does nothing on CPU).

LPIPS: no VGG16 weights are on the benchmark machine and nothing is downloaded. Ours is built with
``--perceptual_random_backbone`` (random trunk, calibrated linear heads from the ``lpips`` package). The
original's ``LPIPS()`` downloads torchvision's VGG16 and its ``vgg.pth``; inside this benchmark only, its
``load_from_pretrained`` is patched to do nothing and ``torchvision.models.vgg16`` to build without weights
while the loss is constructed; then our loss state dict (trunk + heads + discriminator) is loaded into it, so
both compute the same (meaningless but identical) perceptual distance. Timing is unaffected by the values.

Both run in one process, interleaved (ours G, original G, ours D, original D, ...) for ``--repeats`` timed
step pairs after ``--warmup`` pairs; medians are reported. The first generator loss of each (same weights,
same input, same RNG seed for the posterior sample and the discriminator's dropout) is compared: max-abs
difference of the total generator loss and of its reconstruction (NLL) part, and of the first
discriminator loss.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch
from machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
PRECISION = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- ours
def build_ours(args, workdir: Path):
    """A real single-process Trainer (dataset: a tiny synthetic folder it builds an index of, never iterates)."""
    from wfvae.config import parse_train_config
    from wfvae.data.synthetic import write_synthetic_dataset
    from wfvae.distributed import DistEnv
    from wfvae.training.trainer import Trainer, preflight

    data = workdir / "videos"
    write_synthetic_dataset(data, n_videos=max(2, args.batch), num_frames=args.frames, height=args.size,
                            width=args.size, seed=0)
    argv = [
        "--model_name", "WFVAE", "--model_config", args.config, "--video_path", str(data),
        "--num_frames", str(args.frames), "--resolution", str(args.size), "--sample_rate", "1",
        "--batch_size", str(args.batch), "--mix_precision", args.dtype, "--device", args.device,
        "--report_to", "none", "--ckpt_dir", str(workdir / "runs"), "--dataset_num_worker", "0",
        "--disc_start", str(args.disc_start), "--disc_weight", "0.5", "--kl_weight", "1e-6",
        "--perceptual_weight", str(args.perceptual_weight), "--loss_type", "l1",
        "--wavelet_loss", str(not args.no_wavelet_loss).lower(), "--wavelet_weight", "0.1",
        "--lr", str(args.lr), "--weight_decay", "1e-4", "--perceptual_random_backbone", "--ema", str(args.ema).lower(),
        "--seed", "1234",
    ]
    cfg = parse_train_config(argv)
    cfg.validate()
    preflight(cfg)
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    env = DistEnv(rank=0, local_rank=0, world_size=1, device=device, backend=None)  # one process, no group
    trainer = Trainer(cfg, env)
    return trainer


def ours_step(trainer, video: torch.Tensor, step: int) -> dict:
    """One update of the trainer, chosen by the step number exactly as ``Trainer.train`` does."""
    trainer.progress.step = step
    disc_turn = step % 2 == 1 and step >= trainer.cfg.disc_start
    status, parts = trainer.discriminator_step(video) if disc_turn else trainer.generator_step(video)
    if status != "ok":
        raise RuntimeError(f"our step {step} was skipped ({status})")
    if disc_turn:
        return {"d_loss": parts["loss_d"].item()}
    return {"g_loss": parts["loss_g_total"].item(), "nll": parts["loss_nll"].item(), "kl": parts["loss_kl"].item(),
            "wavelet": parts["loss_wavelet"].item(), "g_adv": parts["loss_g_adv"].item()}


# --------------------------------------------------------------------------- original
@contextlib.contextmanager
def _original_lpips_without_download():
    """While the original's loss is constructed: no VGG16 ImageNet weights, no vgg.pth download."""
    import causalvideovae.model.losses.lpips as original_lpips

    real_vgg16 = original_lpips.models.vgg16  # torchvision.models.vgg16 (``models`` is torchvision.models)

    def vgg16_random(pretrained=False, **_kwargs):
        return real_vgg16(weights=None)

    with mock.patch.object(original_lpips.LPIPS, "load_from_pretrained", lambda self, name="vgg_lpips": None), \
            mock.patch.object(original_lpips.models, "vgg16", vgg16_random):
        yield


class OriginalTrainer:
    """The state and one-step logic of the original ``train_ddp.py`` (single process, no DDP)."""

    def __init__(self, args, trainer, device: torch.device):
        sys.path.insert(0, args.reference_repo)  # only this benchmark path sees the original
        from causalvideovae.model import ModelRegistry
        from causalvideovae.model.ema_model import EMA
        from causalvideovae.model.losses import LPIPSWithDiscriminator3D

        config = json.loads(Path(args.config).read_text())
        model = ModelRegistry.get_model("WFVAE")(**{k: v for k, v in config.items() if not k.startswith("_")})
        model.load_state_dict(trainer.model.state_dict(), strict=True)
        with _original_lpips_without_download():
            disc = LPIPSWithDiscriminator3D(
                disc_start=args.disc_start, disc_weight=0.5, kl_weight=1e-6, logvar_init=0.0,
                perceptual_weight=args.perceptual_weight, loss_type="l1", wavelet_weight=0.1)
        disc.load_state_dict(trainer.loss_fn.state_dict(), strict=True)
        self.model, self.disc = model.to(device), disc.to(device)
        self.device, self.wavelet_loss = device, not args.no_wavelet_loss
        self.precision = PRECISION[args.dtype]
        self.modules_to_train = list(model.get_decoder()) + list(model.get_encoder())
        params = [p for m in self.modules_to_train for p in m.parameters() if p.requires_grad]
        self.gen_optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
        self.disc_optimizer = torch.optim.AdamW(
            [p for p in disc.discriminator.parameters() if p.requires_grad], lr=args.lr, weight_decay=1e-4)
        self.scaler = torch.amp.GradScaler(device.type)  # always on in the original, whatever the precision
        for m in self.modules_to_train:
            m.train()
        self.ema = None
        if args.ema:
            self.ema = EMA(model, 0.999)
            self.ema.register()

    def _autocast(self):
        # The original: torch.amp.autocast('cuda', dtype=precision); fp32 autocast is a no-op there.
        enabled = self.precision != torch.float32
        return torch.amp.autocast(self.device.type, dtype=self.precision, enabled=enabled)

    def step(self, inputs: torch.Tensor, current_step: int) -> dict:
        step_dis = current_step % 2 == 1 and current_step >= self.disc.discriminator_iter_start
        for m in self.modules_to_train:
            m.requires_grad_(not step_dis)
        with self._autocast():
            outputs = self.model(inputs)
            recon, posterior = outputs.sample, outputs.latent_dist
            wavelet_coeffs = None
            if outputs.extra_output is not None and self.wavelet_loss:
                wavelet_coeffs = outputs.extra_output
        if not step_dis:
            with self._autocast():
                g_loss, g_log = self.disc(inputs, recon, posterior, optimizer_idx=0, global_step=current_step,
                                          last_layer=self.model.get_last_layer(), wavelet_coeffs=wavelet_coeffs,
                                          split="train")
            self.gen_optimizer.zero_grad()
            self.scaler.scale(g_loss).backward()
            self.scaler.step(self.gen_optimizer)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update()
            return {"g_loss": g_loss.item(), "nll": g_log["train/nll_loss"].item(),
                    "kl": g_log["train/kl_loss"].item(), "wavelet": g_log["train/wl_loss"].item(),
                    "g_adv": g_log["train/g_loss"].item()}
        with self._autocast():
            d_loss, _ = self.disc(inputs, recon, posterior, optimizer_idx=1, global_step=current_step,
                                  last_layer=None, split="train")
        self.disc_optimizer.zero_grad()
        self.scaler.scale(d_loss).backward()
        self.scaler.unscale_(self.disc_optimizer)
        self.scaler.step(self.disc_optimizer)
        self.scaler.update()
        return {"d_loss": d_loss.item()}


# --------------------------------------------------------------------------- driver
def run(args) -> dict:
    torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="wfvae_bench_train_"))
    try:
        return _run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # clips, run folder and checkpoints of this benchmark only


def _run(args, workdir: Path) -> dict:
    trainer = build_ours(args, workdir)
    device = trainer.device
    impls = {"ours": lambda video, step: ours_step(trainer, video, step)}
    if args.reference_repo:
        original = OriginalTrainer(args, trainer, device)
        impls["original"] = original.step

    g = torch.Generator().manual_seed(0)
    shape = (args.batch, 3, args.frames, args.size, args.size)
    # one batch per update, the same batches for both implementations
    videos = [(torch.rand(shape, generator=g) * 2 - 1).to(device) for _ in range(2 * (args.warmup + args.repeats))]

    first_step = args.disc_start + (args.disc_start % 2)  # an even step >= disc_start: G, then D at +1
    times = {name: {"g": [], "d": [], "step": []} for name in impls}
    warmup_times = {name: {"g": [], "d": []} for name in impls}  # kept in the JSON, not in the medians
    first = {name: {} for name in impls}
    cuda_mem: dict[str, dict[str, float]] = {}  # per implementation, max over its steps (CUDA only)
    for r in range(args.warmup + args.repeats):
        step_g = first_step + 2 * r
        pair = {name: 0.0 for name in impls}
        for kind, step, video in (("g", step_g, videos[2 * r]), ("d", step_g + 1, videos[2 * r + 1])):
            for name, fn in impls.items():
                torch.manual_seed(1000 + step)  # same posterior noise and dropout masks for both
                _sync(device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                    resident = torch.cuda.memory_allocated(device)
                start = time.perf_counter()
                values = fn(video, step)
                _sync(device)
                elapsed = time.perf_counter() - start
                if device.type == "cuda":  # both models stay resident: the step's own memory is peak - resident
                    mem = cuda_mem.setdefault(name, {"peak_mb": 0.0, "step_mb": 0.0})
                    peak = torch.cuda.max_memory_allocated(device)
                    mem["peak_mb"] = max(mem["peak_mb"], peak / 2**20)
                    mem["step_mb"] = max(mem["step_mb"], (peak - resident) / 2**20)
                pair[name] += elapsed
                if r == 0:
                    first[name].update(values)
                (times if r >= args.warmup else warmup_times)[name][kind].append(elapsed)
                print(f"  repeat {r} {kind} {name:8s} {elapsed:8.3f} s  {values}", flush=True)
        if r >= args.warmup:
            for name in impls:
                times[name]["step"].append(pair[name])

    result = {"times_s": times, "warmup_times_s": warmup_times, "first_losses": first,
              "medians_s": {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}}
    if cuda_mem:
        result["cuda_memory_mb"] = cuda_mem  # torch.cuda.max_memory_allocated
    if "original" in impls:
        o, ref = first["ours"], first["original"]
        result["max_abs_diff"] = {k: abs(o[k] - ref[k]) for k in ("g_loss", "nll", "d_loss")}
    trainer.close()
    return result


def format_table(args, result: dict) -> str:
    med = result["medians_s"]
    rows = ["| impl | G step s | D step s | s/step (G + D) | clips/s |", "|---|---|---|---|---|"]
    for name, m in med.items():
        rows.append(f"| {name} | {m['g']:.3f} | {m['d']:.3f} | {m['step']:.3f} | {2 * args.batch / m['step']:.3f} |")
    if "original" in med:
        o, ref = med["ours"], med["original"]
        rows.append(f"| ratio ours/original | {o['g'] / ref['g']:.2f} | {o['d'] / ref['d']:.2f} | "
                    f"**{o['step'] / ref['step']:.2f}** | |")
        d = result["max_abs_diff"]
        rows.append("")
        rows.append(f"first-step max-abs diff: generator loss {d['g_loss']:.2e} (of {result['first_losses']['ours']['g_loss']:.4g}), "
                    f"NLL part {d['nll']:.2e}, discriminator loss {d['d_loss']:.2e}")
    if "cuda_memory_mb" in result:
        rows.append("")
        rows.append("peak CUDA memory (max_memory_allocated, MB; step = peak - resident): " + ", ".join(
            f"{name} {m['peak_mb']:.0f} (step {m['step_mb']:.0f})" for name, m in result["cuda_memory_mb"].items()))
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    """The command line (also used by ``gpu_check.py --dry_run`` to check its planned arguments)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "examples/configs/wfvae_tiny.json"))
    p.add_argument("--reference_repo", default=None, help="checkout of the original WF-VAE to compare against")
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--size", type=int, default=64, help="height = width in pixels")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="fp32", choices=sorted(PRECISION), help="fp32, or bf16 autocast (both impls)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--repeats", type=int, default=3, help="timed step pairs (G + D)")
    p.add_argument("--warmup", type=int, default=1, help="untimed step pairs first (the first gives the loss diff)")
    p.add_argument("--disc_start", type=int, default=0, help="as the original's train_ddp.sh; steps start here")
    p.add_argument("--perceptual_weight", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate of both (the original's default)")
    p.add_argument("--no_wavelet_loss", action="store_true", help="drop the wavelet loss (on by default)")
    p.add_argument("--ema", action="store_true", help="EMA update after each generator step (both impls)")
    p.add_argument("--json", default=str(ROOT / "benchmarks/results/train_step.json"))
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.reference_repo and not (Path(args.reference_repo) / "causalvideovae").is_dir():
        p.error(f"--reference_repo {args.reference_repo} has no causalvideovae/ package")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible")
    if args.warmup < 1:
        p.error("--warmup must be >= 1 (the first pair gives the loss comparison)")

    info = machine_info(args.threads)
    print(f"config {args.config}: {args.frames}x{args.size}x{args.size}, batch {args.batch}, {args.dtype}, "
          f"{args.device}; LPIPS trunk random in both (no VGG16 weights on this machine)", flush=True)
    result = run(args)
    info["loadavg_end"] = os.getloadavg()
    print(format_table(args, result))
    out = {"machine": info, "args": vars(args), "lpips": "random VGG16 trunk (same weights in both), calibrated heads",
           "step_definition": "one generator update + one discriminator update; clips/s = 2 * batch / (G + D)",
           **result}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
