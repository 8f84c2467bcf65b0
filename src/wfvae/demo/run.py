"""``wfvae demo``: the whole system on built-in clips, on a laptop CPU, with no data or network.

How to run::

    pip install -e . && wfvae demo                 # <= 5 minutes on 2 CPU cores; writes ./demo_out
    wfvae demo --out /tmp/demo --steps 3000        # a fixed number of steps instead of the time budget
    wfvae demo --train_seconds 600                 # a longer budget: more steps, better reconstructions
    wfvae demo --fast                              # seconds: a smoke test of every stage

Stages, each with the project's real code path:
  1. a small dataset of realistic clips (camera moves over photographs shipped with scikit-image,
     plus moving objects), with a held-out validation split of unseen photographs;
  2. a small WF-VAE trained by the real trainer (L2 + KL + wavelet loss, warm-up + cosine learning
     rate, EMA, validation, checkpoints) for as many steps as fit --train_seconds on this machine
     (measured before training starts; --steps N fixes the count instead); the GAN phase is opt-in
     with --gan_from, as a few minutes are too short for it to help;
  3. the held-out clips reconstructed before and after training (lossless FFV1 files + originals);
  4. PSNR / SSIM (and LPIPS / FVD when their weights are on disk; otherwise the demo says which
     file to provide) over the held-out set;
  5. an HTML report with frames, error maps, curves and tables.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from wfvae.data.datasets import VideoFolderDataset
from wfvae.demo.dataset import make_demo_dataset
from wfvae.errors import MissingWeightsError
from wfvae.evaluation.evaluate import EvalConfig, evaluate_folders
from wfvae.evaluation.fvd import load_i3d
from wfvae.inference.reconstruct import ReconstructConfig, run_reconstruct
from wfvae.models import build_model
from wfvae.networks.lpips import find_lpips_backbone
from wfvae.options import option, run_config, too_small
from wfvae.report.html import ReportConfig, build_report
from wfvae.training.trainer import main as train_main
from wfvae.utils.logging import setup_logging

logger = logging.getLogger(__name__)

#: Seconds of training the default demo aims for. The step count is fitted to this machine's measured
#: speed just before training (``--steps`` fixes it instead, ``--train_seconds`` changes the budget); the
#: dataset, the reconstructions, the evaluation and the report add well under a minute on 2 cores.
DEMO_TRAIN_SECONDS = 270.0
#: What the trainer adds (EMA, logging, validations, checkpoints) to the calibration's step, which already
#: reads its clips, as a factor on its time. Measured on a quiet 2-core Xeon: 0.96 (the trainer's warm steps
#: are a little faster than the calibration's first few); 1.05 keeps a margin (benchmarks/RESULTS.md).
TRAINER_OVERHEAD = 1.05


def _wfvae_config(latent_dim: int, base_channels: int) -> dict:
    """A WF-VAE in the original config format with WF-VAE-L's layout (a 3D Haar input transform, a 2D
    level 1 and a 2x-space-and-time level 2: 8x8 spatial, 4x temporal compression), narrow."""
    return {
        "_class_name": "WFVAEModel",
        "attention_type": "AttnBlock3DFix",
        "base_channels": base_channels,
        "connect_res_layer_num": 1,
        "decoder_energy_flow_hidden_size": 16,
        "decoder_num_resblocks": 1,
        "dropout": 0.0,
        "encoder_energy_flow_hidden_size": 16,
        "encoder_num_resblocks": 1,
        "l1_dowmsample_block": "Downsample",
        "l1_downsample_wavelet": "HaarWaveletTransform2D",
        "l1_upsample_block": "Upsample",
        "l1_upsample_wavelet": "InverseHaarWaveletTransform2D",
        "l2_dowmsample_block": "Spatial2xTime2x3DDownsample",
        "l2_downsample_wavelet": "HaarWaveletTransform3D",
        "l2_upsample_block": "Spatial2xTime2x3DUpsample",
        "l2_upsample_wavelet": "InverseHaarWaveletTransform3D",
        "latent_dim": latent_dim,
        "norm_type": "layernorm",
        "scale": [1.0] * latent_dim,
        "shift": [0.0] * latent_dim,
        "t_interpolation": "trilinear",
        "use_attention": True,
    }


#: The demo's model: WF-VAE-L's compression layout (8x8 spatial, 4x temporal) with 16 base channels and
#: 64 latent channels. Compression (input numbers per latent number, 3 * 8 * 8 * 4 / latent channels):
#: 12x here; WF-VAE-L has 16 latent channels, 48x (the 8-channel variants, 96x). The wide latent is what
#: lets a few CPU minutes reach sharp reconstructions: with 8 channels (96x) a hand-written loop with
#: this data plateaued near 15 dB held-out PSNR; 64 channels cost ~5 % more per step than 32 and were
#: ~0.3 dB ahead of them at every point of a 1200-step run (benchmarks/RESULTS.md, "wfvae demo").
DEMO_MODEL_CONFIG = _wfvae_config(latent_dim=64, base_channels=16)
#: ``--fast``'s model (a smoke test of every stage): the same layout with 8 latent channels (96x).
FAST_MODEL_CONFIG = _wfvae_config(latent_dim=8, base_channels=16)
#: Training clips of the default demo (17 frames at 64x64, every training photo, varied views and motions).
DEMO_TRAIN_CLIPS = 160
#: Peak learning rate of the default demo (AdamW, warm-up then cosine).
DEMO_LR = "2e-3"
#: Training clips are rendered at this side (the held-out clips at 64) and read in batches of DEMO_BATCH:
#: at the same cost per step, four times the clips of 64x64 batches of 2, which learned faster per second
#: in our runs. Rendering them at this size rather than letting the loader shrink 64x64 files cuts the
#: loader's CPU time per clip from ~9 ms to ~2.6 ms (benchmarks/RESULTS.md, "wfvae demo").
DEMO_TRAIN_RESOLUTION = 32
DEMO_BATCH = 8


@dataclass(kw_only=True)
class DemoConfig:
    """Settings of ``wfvae demo``."""

    ALLOW_ABBREV: ClassVar[bool] = True  # unique prefixes of a flag were accepted before; still are

    out: str = option("demo_out", "Output folder.")
    steps: int | None = option(None, "Training steps (default: as many as fit --train_seconds on this machine, "
                               "measured just before training).")
    train_seconds: float = option(DEMO_TRAIN_SECONDS, "Training time budget that chooses the number of steps "
                                  "when --steps is not given.")
    fast: bool = option(False, "Tiny everything: a smoke test that takes seconds.")
    gan_from: int | None = option(None, "Start the discriminator / adversarial loss at this step (default: no GAN "
                                  "phase).")
    seed: int = option(0, "Seed of the dataset, the model's initialisation and training.")

    def check(self) -> list[str]:
        errors = too_small(self, ("steps",), when_given=True)
        if not self.train_seconds > 0:
            errors.append(f"--train_seconds must be > 0, got {self.train_seconds}")
        return errors


def _stage(title: str) -> None:
    print(f"\n== {title}", flush=True)


def _optional_metrics(device: str) -> tuple[list[str], list[str]]:
    """LPIPS / FVD join the metrics when their weights are on disk or can be downloaded (not offline);
    otherwise the notes say what to provide."""
    extra, notes = [], []
    try:
        find_lpips_backbone("alex")
        extra.append("lpips")
    except MissingWeightsError as e:
        notes.append(f"LPIPS skipped: {e}")
    try:
        load_i3d("styleganv", device=device)
        extra.append("fvd")
    except MissingWeightsError as e:
        notes.append(f"FVD skipped: {e}")
    return extra, notes


def fit_steps(seconds: float, model_config: dict, num_frames: int, size: int, batch: int,
              repeats: int = 3, video_path: str | Path | None = None) -> tuple[int, float]:
    """How many training steps of ``model_config`` fit in ``seconds`` on this machine, as it is loaded now.

    Times ``repeats`` optimizer steps (after one warm-up step) with an L2 + KL loss on clips of the training
    shape: read from ``video_path`` by the trainer's own dataset class, in this process as the demo's trainer
    reads them (so the decoding cost is in the time), or random when None. The median is multiplied by
    :data:`TRAINER_OVERHEAD` for what the trainer adds. Returns ``(steps, seconds per step)``; at least 20 steps.
    """
    torch.manual_seed(0)
    model = build_model(model_config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dataset = None
    if video_path is not None:
        dataset = VideoFolderDataset(video_path, num_frames=num_frames, resolution=size, train=True,
                                     show_progress=False)
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        if dataset is None:
            video = torch.rand(batch, 3, num_frames, size, size) * 2 - 1
        else:
            video = torch.stack([dataset[(i * batch + k) % len(dataset)]["video"] for k in range(batch)])
        out = model(video)
        loss = (out.sample - video).square().mean() + out.posterior.kl().mean() * 1e-6
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - start)
    per_step = sorted(times)[len(times) // 2] * TRAINER_OVERHEAD
    return max(20, int(seconds / per_step)), per_step


def run_demo(cfg: DemoConfig) -> dict:
    """Run every stage; returns a summary (paths, metric values before/after training, steps and speed).

    ``cfg.steps``: training steps; None fits them to ``cfg.train_seconds`` here (:func:`fit_steps`).
    ``cfg.gan_from``: step at which the discriminator and adversarial loss start (default: never,
    except in ``fast`` mode, which starts it at step 3 to exercise the whole loop).
    """
    fast, seed, gan_from = cfg.fast, cfg.seed, cfg.gan_from
    out = Path(cfg.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    num_frames, size = (9, 32) if fast else (9, 64)
    train_size, batch = (32, 2) if fast else (DEMO_TRAIN_RESOLUTION, DEMO_BATCH)
    model_config = FAST_MODEL_CONFIG if fast else DEMO_MODEL_CONFIG
    started = time.time()

    _stage("1/5 making the demo dataset")
    # clips are longer than the training window, so every epoch samples new start frames
    data = make_demo_dataset(out / "data", n_train=4 if fast else DEMO_TRAIN_CLIPS, n_val=2 if fast else 6,
                             num_frames=9 if fast else 17, size=size, train_size=train_size, seed=seed)
    print(f"{len(data['train'])} training clips at {train_size}x{train_size} and {len(data['val'])} held-out clips "
          f"at {size}x{size}, {data['num_frames']} frames each, in {out / 'data'}")

    _stage("2/5 training a small WF-VAE with the real trainer")
    if fast:
        steps = 4
    elif cfg.steps is not None:
        steps = cfg.steps
    else:
        steps, per_step = fit_steps(cfg.train_seconds, model_config, num_frames, train_size, batch,
                                    video_path=out / "data" / "train")
        print(f"measured ~{per_step:.2f} s per training step here: {steps} steps fit the {cfg.train_seconds:.0f} s "
              f"training budget (--steps N to choose, --train_seconds S to change the budget)")
    disc_start = 3 if fast else (gan_from if gan_from is not None else steps + 1)
    (out / "model_config.json").write_text(json.dumps(model_config, indent=2) + "\n")
    torch.manual_seed(seed)
    initial = out / "initial_model"
    build_model(model_config).save_pretrained(initial)  # the "before" model, and the trainer's start
    eval_every = max(2, steps // 3)
    train_started = time.time()
    train_args = [
        "--exp_name", "demo", "--ckpt_dir", str(out / "runs"), "--seed", str(seed),
        "--video_path", str(out / "data" / "train"), "--eval_video_path", str(out / "data" / "val"),
        "--model_name", "WFVAE", "--model_config", str(out / "model_config.json"),
        "--pretrained_model_name_or_path", str(initial),
        # Training reads clips rendered at train_size (the same kind of views with a quarter of the pixels:
        # a quarter of the model's work per clip, and no resize in the loader); validation and the
        # before/after evaluation use the 64x64 held-out clips.
        "--num_frames", str(num_frames), "--resolution", str(train_size), "--sample_rate", "1",
        "--batch_size", str(batch), "--max_steps", str(steps), "--epochs", "100000",
        # Short CPU runs: a high peak learning rate, a short linear warm-up, then cosine decay to 0.
        "--lr", DEMO_LR, "--lr_scheduler", "constant" if fast else "cosine",
        "--lr_warmup_steps", "0" if fast else str(min(50, max(1, steps // 10))),
        # The EMA averages about the last 10 % of the steps (at most 100): the exported model is the EMA.
        "--ema", "--ema_decay", str(round(1 - 1 / max(2, min(100, steps // 10)), 4)),
        "--mix_precision", "fp32", "--device", "cpu", "--dataset_num_worker", "0",
        # The adversarial phase needs far more steps than a 5-minute CPU run has: started at 75 % of
        # 120 steps it lowered held-out PSNR (12.2 -> 9.6 dB in our calibration run). The default demo
        # therefore trains without it; --gan_from (and --fast, which exercises every code path) turn it on.
        "--disc_start", str(disc_start), "--disc_base_channels", "16", "--disc_num_layers", "2",
        # A squared-error pixel loss: what PSNR measures; it learned faster than L1 in our short runs
        # (--fast keeps L1, which moves a random model further in its four steps).
        "--perceptual_weight", "0", "--kl_weight", "1e-6", "--loss_type", "l1" if fast else "l2",
        "--wavelet_loss", "--wavelet_weight", "0.1",
        "--eval_steps", str(eval_every), "--eval_num_frames", str(num_frames), "--eval_resolution", str(size),
        "--eval_batch_size", "2", "--eval_subset_size", "0", "--eval_num_video_log", "2",
        "--save_ckpt_step", str(max(2, steps // 2)), "--keep_last_k", "2", "--log_steps", str(max(1, steps // 20)),
        "--report_to", "none",
    ]
    code = train_main(train_args)
    if code != 0:
        raise RuntimeError(f"training failed with exit code {code}; see the log above")
    train_seconds = time.time() - train_started
    trained = next((out / "runs").glob("demo-*/pretrained"))

    _stage("3/5 reconstructing the held-out clips before and after training")
    recon_dirs = {}
    for name, ckpt in (("before", initial), ("after", trained)):
        recon_dirs[name] = out / "reconstructions" / f"{name}_training"
        run_reconstruct(ReconstructConfig(
            real_video_dir=str(out / "data" / "val"), generated_video_dir=str(recon_dirs[name]), ckpt=str(ckpt),
            num_frames=num_frames, resolution=size, output_origin=True, format="mkv", device="cpu",
            metrics=["psnr", "ssim"],
        ))

    _stage("4/5 evaluating")
    extra, notes = _optional_metrics("cpu")
    metrics = ["psnr", "ssim", *extra]
    results = {}
    for name, folder in recon_dirs.items():
        res = evaluate_folders(EvalConfig(real_video_dir=str(folder / "origin"), generated_video_dir=str(folder),
                                          metric=metrics, num_frames=num_frames, resolution=size, device="cpu",
                                          num_workers=0))
        (folder / "evaluate.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
        results[name] = res["dataset"]
    for note in notes:
        print(note)

    _stage("5/5 writing the report")
    report = build_report(ReportConfig(run_dir=str(out), title="wfvae demo"))

    summary = {"out": str(out), "report": str(report), "trained_model": str(trained), "metrics": results,
               "minutes": round((time.time() - started) / 60, 2), "steps": steps,
               "training_seconds": round(train_seconds, 1),
               "training_steps_per_s": round(steps / max(train_seconds, 1e-9), 3), "notes": notes}
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n== done in {:.1f} min ({} training steps in {:.0f} s, {:.2f} steps/s)".format(
        summary["minutes"], steps, train_seconds, summary["training_steps_per_s"]))
    for metric in metrics:
        before, after = results["before"].get(metric), results["after"].get(metric)
        if before is not None and after is not None:
            print(f"{metric}: {before:.4f} before training -> {after:.4f} after")
    print(f"report:          {report}")
    print(f"trained model:   {trained}  (wfvae.load_model takes this folder)")
    print(f"reconstructions: {out / 'reconstructions'}")
    return summary


def _run(cfg: DemoConfig) -> int:
    setup_logging()
    run_demo(cfg)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_config(DemoConfig, _run, argv, "wfvae demo", __doc__)


if __name__ == "__main__":
    from wfvae.errors import run_command

    sys.exit(run_command("wfvae demo", main))
