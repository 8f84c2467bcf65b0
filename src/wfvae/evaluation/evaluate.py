"""Dataset-level PSNR / SSIM / LPIPS / FVD between a folder of real videos and their reconstructions.

How to run::

    wfvae evaluate --real_video_dir video_gen/test_sr1_nf33_res256_subset0/origin \\
        --generated_video_dir video_gen/test_sr1_nf33_res256_subset0 \\
        --metric psnr,ssim,lpips --num_frames 33 --resolution 256 --json metrics.json

    # FVD's I3D detector is downloaded on first use; a local file can be given instead:
    wfvae evaluate ... --metric fvd --fvd_variant styleganv --fvd_weights /weights/i3d_torchscript.pt

    # from Python
    from wfvae.evaluation.evaluate import EvalConfig, evaluate_folders
    result = evaluate_folders(EvalConfig(real_video_dir="real/", generated_video_dir="recon/",
                                         metric=["psnr", "ssim"]))
    result["dataset"]["psnr"]

The steps live in their own modules: :mod:`~wfvae.evaluation.pairing` matches videos by relative path
without extension (``a/b.mp4`` <-> ``a/b.mkv``; the generated side's ``origin/`` is skipped);
:mod:`~wfvae.evaluation.loading` reads both sides with the training pipeline's frames, resize and crop (real
videos with step ``--sample_rate``, generated ones with step 1, as the original ``scripts/eval.py``, so
``examples/eval.sh`` passes ``--sample_rate 1`` when the real folder is the saved ``origin/``);
:mod:`~wfvae.evaluation.scoring` computes PSNR, SSIM and LPIPS per video (averaged over videos) and FVD
between the I3D features of all real and all generated videos. This module holds the command.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch
from tqdm import tqdm

from wfvae.data.transforms import RESIZE_MODES
from wfvae.errors import InputError
from wfvae.evaluation import metrics as M
from wfvae.evaluation.fvd import load_i3d
from wfvae.evaluation.loading import PairDataset
from wfvae.evaluation.pairing import pair_videos
from wfvae.evaluation.registry import METRICS, PER_VIDEO_METRICS, Networks, needed_networks
from wfvae.evaluation.scoring import FvdFeatures, dataset_values, score_pairs
from wfvae.layout import ORIGIN_DIR
from wfvae.networks.lpips import load_lpips
from wfvae.options import (
    REQUIRED,
    ClipOptions,
    DecodeWorkerOptions,
    LpipsOptions,
    OfflineOptions,
    ResizeOptions,
    option,
    run_config,
    settings,
    too_small,
    validate,
)
from wfvae.utils.device import resolve_device
from wfvae.utils.io import write_json_option
from wfvae.utils.logging import setup_logging

logger = logging.getLogger(__name__)

#: Metrics this module computes, in output order.


@dataclass(kw_only=True)
class EvalConfig(ClipOptions, ResizeOptions, DecodeWorkerOptions, LpipsOptions, OfflineOptions):
    """Settings of one evaluation run (``wfvae evaluate``; the original eval.sh flags keep their names).

    ``num_frames`` 0 compares all frames (both sides must then match); ``resolution`` 0 keeps frames as they
    are; ``crop_size`` is accepted for the original eval.sh and must equal ``resolution`` (frames are resized
    and centre-cropped to a square)."""

    real_video_dir: str = option(REQUIRED, "Ground-truth videos: a folder (searched recursively) or a manifest "
                                 "(.csv/.jsonl/.parquet).")
    generated_video_dir: str = option(REQUIRED, f"Reconstructions: a folder (searched recursively, {ORIGIN_DIR}/ "
                                      "skipped) or a manifest.")
    metric: list[str] = option(["lpips"], f"Comma list of {', '.join(METRICS)}.")
    subset_size: int = option(0, "Evaluate only the first N pairs in sorted path order; 0 = all.")
    device: str | None = option(None, "Torch device for the metrics, LPIPS and I3D: auto, cpu, cuda or cuda:N "
                                "(default: cuda if available, else cpu).")
    batch_size: int = option(4, "Videos per I3D forward pass (memory only; does not change results).")
    fvd_variant: Literal["styleganv", "videogpt"] = option(
        "styleganv", "I3D detector: styleganv (TorchScript i3d_torchscript.pt) or videogpt (i3d_pretrained_400.pt).",
        aliases=("--fvd_method",))
    fvd_weights: str | None = option(None, "I3D detector file (else $WFVAE_I3D_PATH, else downloaded once into the "
                                     "user cache).")
    json: str | None = option(None, "Write per-video and dataset values here.")

    def check(self) -> list[str]:
        errors = []
        if not self.metric or any(m not in METRICS for m in self.metric):
            errors.append(f"--metric {','.join(self.metric) or '(empty)'}: choose from {', '.join(METRICS)}")
        errors += too_small(self, ("sample_rate", "batch_size"))
        if self.num_frames is not None and self.num_frames < 0:
            errors.append(f"--num_frames must be >= 0 (0 = all frames), got {self.num_frames}")
        if self.resolution is not None and self.resolution < 0:
            errors.append(f"--resolution must be >= 0 (0 = keep size), got {self.resolution}")
        if self.crop_size is not None and self.crop_size != self.resolution:
            errors.append(f"--crop_size {self.crop_size} must equal --resolution {self.resolution} (frames are "
                          "resized and centre-cropped to a square); drop --crop_size")
        if self.subset_size < 0:
            errors.append(f"--subset_size must be >= 0 (0 = all), got {self.subset_size}")
        if self.lpips_net not in ("alex", "vgg"):
            errors.append(f"--lpips_net must be alex or vgg, got {self.lpips_net}")
        if self.resize not in RESIZE_MODES:
            errors.append(f"--resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize}")
        if self.fvd_variant not in ("styleganv", "videogpt"):
            errors.append(f"--fvd_variant must be styleganv or videogpt, got {self.fvd_variant}")
        return errors


#: Settings of the command line only; the result's "config" leaves them out.
_CLI_ONLY = ("crop_size", "json")


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def evaluate_folders(
    cfg: EvalConfig,
    *,
    lpips_model: torch.nn.Module | None = None,
    fvd_extractor: Any | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Compare every generated video with its real counterpart.

    Args:
        cfg: folders, metrics, frames and networks; see :class:`EvalConfig` and the module docstring
            for pairing and frame selection.
        lpips_model: an already loaded LPIPS module (reused by training); overrides
            ``cfg.lpips_net`` / ``cfg.lpips_backbone_path``.
        fvd_extractor: an already loaded :class:`wfvae.evaluation.fvd.I3DFeatureExtractor`.
        progress: show a tqdm bar.

    Returns:
        ``{"dataset": {metric: value}, "per_video": [{"path": key, "real": file,
        "generated": file, metric: value, ...}], "num_videos": N, "psnr_cap_db": cap,
        "psnr_capped_videos": k, "notes": [...], "config": {...}}``. FVD appears only in
        ``dataset``.

    Raises:
        ConfigError: a setting out of range (all are listed).
        ValueError: unpaired videos, mismatched shapes, too few videos for FVD.
        MissingWeightsError: LPIPS trunk or I3D detector not on disk and not downloadable.
        VideoDecodeError: a video cannot be decoded or is too short.
    """
    validate(cfg)
    device = resolve_device(cfg.device or "auto")
    cfg = dataclasses.replace(cfg, metric=list(dict.fromkeys(cfg.metric)), num_frames=cfg.num_frames or None,
                              resolution=cfg.resolution or None, device=str(device))
    wanted = [m for m in METRICS if m in cfg.metric]
    pairs = pair_videos(cfg.real_video_dir, cfg.generated_video_dir)
    if cfg.subset_size:
        if cfg.subset_size > len(pairs):
            logger.warning("--subset_size %d > %d pairs; using all", cfg.subset_size, len(pairs))
        pairs = pairs[: cfg.subset_size]
    logger.info("evaluating %s on %d video pairs", ",".join(wanted), len(pairs))
    if "fvd" in wanted and len(pairs) < 2:
        raise InputError(f"FVD needs at least 2 videos per set (a covariance), got {len(pairs)}")

    # Load networks before decoding anything, so a missing weight file fails immediately.
    needs = needed_networks(wanted)
    if "lpips" in needs and lpips_model is None:
        lpips_model = load_lpips(cfg.lpips_net, cfg.lpips_backbone_path, device=cfg.device, offline=cfg.offline or None)
    fvd = None
    if "i3d" in needs:
        if fvd_extractor is None:
            fvd_extractor = load_i3d(cfg.fvd_variant, cfg.fvd_weights, device=cfg.device, offline=cfg.offline or None)
        fvd = FvdFeatures(fvd_extractor, cfg.batch_size)
    loader = torch.utils.data.DataLoader(
        PairDataset(pairs, cfg),
        batch_size=None,  # one pair per item: sizes may differ when resolution is 0
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
    )
    if progress:
        loader = tqdm(loader, total=len(pairs), desc="evaluate", disable=not sys.stdout.isatty())

    started = time.perf_counter()
    # The loader's page-locked buffers and pin thread use the current CUDA device, so cuda:N is made current
    # while it runs (restored after); otherwise they open a context on GPU 0. The networks above name their device.
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        per_video = score_pairs(loader, wanted, device, Networks(lpips=lpips_model), fvd)
    elapsed = time.perf_counter() - started
    files = {k: (r, g) for k, r, g in pairs}
    for row in per_video:
        real_path, gen_path = files[row["path"]]
        row["real"], row["generated"] = str(real_path), str(gen_path)
    dataset, notes, capped = dataset_values(per_video, wanted, fvd)
    logger.info("evaluated %d pairs in %.1f s", len(per_video), elapsed)
    return {
        "dataset": dataset,
        "per_video": per_video,
        "num_videos": len(per_video),
        "psnr_cap_db": M.PSNR_CAP_DB,
        "psnr_capped_videos": capped,
        "notes": notes,
        "config": {k: v for k, v in settings(cfg).items() if k not in _CLI_ONLY},
    }


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def format_results(result: dict[str, Any]) -> str:
    """The CLI's stdout: a per-video table, then one ``name: value`` line per metric, then notes."""
    names = [m for m in PER_VIDEO_METRICS if m in result["dataset"]]
    lines: list[str] = []
    if names:
        width = max(12, *(len(r["path"]) for r in result["per_video"]))
        lines.append(f"{'video'.ljust(width)}  " + "  ".join(n.rjust(10) for n in names))
        for row in result["per_video"]:
            lines.append(f"{row['path'].ljust(width)}  " + "  ".join(f"{row[n]:10.4f}" for n in names))
        lines.append("")
    lines.append(f"videos: {result['num_videos']}")
    for name in METRICS:
        if name in result["dataset"]:
            lines.append(f"{name}: {result['dataset'][name]:.4f}")
    if "psnr" in result["dataset"]:
        lines.append(f"psnr_cap_db: {result['psnr_cap_db']:g} (identical videos: {result['psnr_capped_videos']})")
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines)


def run_evaluate(cfg: EvalConfig) -> int:
    """``wfvae evaluate`` on a parsed config: the table on stdout, the full result to ``--json``."""
    setup_logging()
    result = evaluate_folders(cfg, progress=True)
    print(format_results(result))
    if cfg.json:
        logger.info("wrote %s", write_json_option(cfg.json, result, "--json"))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``wfvae evaluate``; user mistakes raise :class:`wfvae.errors.UserError` (exit 2 at the boundary)."""
    return run_config(EvalConfig, run_evaluate, argv, "wfvae evaluate",
                      "PSNR / SSIM / LPIPS / FVD between a folder of real videos and a folder of reconstructions.")


if __name__ == "__main__":
    from wfvae.errors import run_command

    sys.exit(run_command("wfvae evaluate", main))
