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

Pairing: videos are matched by relative path without extension (``a/b.mp4`` <-> ``a/b.mkv``), found
recursively. Two videos of one folder that differ only by extension (``a.mp4``, ``a.mkv``) keep it
in their key (``a.mp4``, ``a.mkv``), the rule ``wfvae reconstruct`` names its outputs by
(``a.mp4.mp4``, ``a.mkv.mp4``), so each still pairs with its own reconstruction. On the generated side, the ``origin/`` subfolder (where reconstruction saves the ground
truth) and the real folder itself, if it lies inside, are skipped. Any video without a partner is
an error that lists them.

Frames: real videos are read from frame 0 with step ``--sample_rate``; generated videos with step 1,
because reconstructions are already subsampled (this is what the original ``scripts/eval.py`` does).
``examples/eval.sh`` therefore passes ``--sample_rate 1`` when the real folder is the saved
``origin/``. Both sides are then resized (short side to ``--resolution``, in the decoder, exactly
as the training data pipeline does) and centre-cropped to a square; frames already of that size
are left untouched, so everything stays uint8 and lossless files compare exactly.

Aggregation: PSNR, SSIM and LPIPS are computed per video (over all its frames) and averaged over
videos. FVD is one Frechet distance between the I3D feature sets of all real and all generated
videos.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import numpy as np
import torch

from wfvae.data.manifest import is_manifest, output_key, read_manifest
from wfvae.data.transforms import RESIZE_MODES
from wfvae.errors import InputError, UserError
from wfvae.evaluation import metrics as M
from wfvae.layout import ORIGIN_DIR
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
    validate,
)
from wfvae.utils.device import resolve_device
from wfvae.utils.io import write_json_option
from wfvae.utils.logging import setup_logging
from wfvae.utils.output_folder import collision_free_stems

logger = logging.getLogger(__name__)

#: Metrics this module computes, in output order.
METRICS = ("psnr", "ssim", "lpips", "fvd")


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
        errors += [f"--{name} must be >= 1, got {getattr(self, name)}" for name in ("sample_rate", "batch_size")
                   if getattr(self, name) < 1]
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
# Pairing
# ----------------------------------------------------------------------------------------------


def _video_extensions() -> frozenset[str]:
    from wfvae.formats import VIDEO_EXTENSIONS

    return VIDEO_EXTENSIONS


def scan_videos(root: str | os.PathLike, exclude: Iterable[Path] = ()) -> dict[str, Path]:
    """Map ``relative/path/without/extension`` -> file for every video under ``root``.

    Files that differ only by extension keep it in their key (see
    :func:`wfvae.utils.output_folder.collision_free_stems`). ``root`` may also be a manifest
    (``.csv``, ``.jsonl``, ``.parquet``): its rows are the videos, keyed the same way by their
    path relative to the manifest's folder (absolute paths lose their leading ``/``, as
    ``wfvae reconstruct`` names its outputs).

    Raises:
        FileNotFoundError: ``root`` is not a directory (nor a manifest).
        InputError: the naming rule still gives two files one key; a manifest row is unusable
            or its file is missing.
    """
    root = Path(root)
    if is_manifest(root) and not root.is_dir():
        return _scan_manifest(root)
    if not root.is_dir():
        raise FileNotFoundError(f"video folder '{root}' does not exist or is not a directory")
    excluded = [Path(p).resolve() for p in exclude]
    exts = _video_extensions()
    files: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if (here / d).resolve() not in excluded)
        for name in sorted(filenames):
            path = here / name
            if path.suffix.lower() in exts:
                files[path.relative_to(root).as_posix()] = path
    stems = collision_free_stems(files)
    return {stems[rel]: path for rel, path in sorted(files.items())}


def _scan_manifest(file: Path) -> dict[str, Path]:
    manifest = read_manifest(file)  # ManifestError (an InputError) when unreadable as a whole
    problems = [f"  {label}: {reason}" for label, reason in manifest.bad]
    files: dict[str, Path] = {}
    for row in manifest.rows:
        path = manifest.root / row.path
        if not path.is_file():
            problems.append(f"  {row.path}: file does not exist (manifest row {row.row})")
        else:
            files[output_key(row.path)] = path
    if problems:
        raise InputError(f"manifest {file} has rows that cannot be evaluated:\n" + "\n".join(problems))
    stems = collision_free_stems(files)
    return {stems[rel]: path for rel, path in sorted(files.items())}


def pair_videos(real_dir: str | os.PathLike, generated_dir: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """Pair videos of two folders by relative path without extension.

    The generated side skips its ``origin/`` subfolder and, if nested inside it, the real folder.

    Returns:
        ``[(key, real_file, generated_file), ...]`` sorted by key.

    Raises:
        ValueError: some video has no partner (all are listed), or a folder has no videos.
    """
    real_dir, generated_dir = Path(real_dir), Path(generated_dir)
    skip = [generated_dir / ORIGIN_DIR]
    if real_dir.is_dir() and real_dir.resolve().is_relative_to(generated_dir.resolve()):
        skip.append(real_dir)
    real = scan_videos(real_dir)
    generated = scan_videos(generated_dir, exclude=skip)
    if not real:
        raise InputError(f"no videos found in --real_video_dir '{real_dir}'")
    if not generated:
        raise InputError(f"no videos found in --generated_video_dir '{generated_dir}' (its '{ORIGIN_DIR}/' is skipped)")
    only_real = sorted(set(real) - set(generated))
    only_generated = sorted(set(generated) - set(real))
    if only_real or only_generated:
        lines = ["videos without a partner (matched by relative path without extension):"]
        lines += [f"  only in real '{real_dir}': {_shown(real[k], real_dir)}" for k in only_real]
        lines += [f"  only in generated '{generated_dir}': {_shown(generated[k], generated_dir)}" for k in only_generated]
        raise InputError("\n".join(lines))
    return [(k, real[k], generated[k]) for k in sorted(real)]


def _shown(path: Path, root: Path) -> str:
    """``path`` relative to a folder, or to a manifest's folder (absolute when outside)."""
    base = root.parent if not root.is_dir() else root
    return path.relative_to(base).as_posix() if path.is_relative_to(base) else str(path)


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def center_crop(video: torch.Tensor, resolution: int | None) -> torch.Tensor:
    """Centred ``resolution x resolution`` crop of a ``(C, T, H, W)`` clip (no-op for ``None``/0).

    Uses the training data pipeline's centre rule (:func:`wfvae.data.transforms.crop_offsets`).
    """
    if not resolution:
        return video
    from wfvae.data.transforms import crop_offsets

    top, left = crop_offsets(video.shape[2], video.shape[3], resolution, resolution)
    return video[:, :, top : top + resolution, left : left + resolution]


class _PairDataset(torch.utils.data.Dataset):
    """Decodes one (real, generated) pair per item; worker processes parallelise decoding."""

    def __init__(self, pairs: Sequence[tuple[str, Path, Path]], cfg: EvalConfig):
        self.pairs = list(pairs)
        self.num_frames = cfg.num_frames or None
        self.sample_rate = cfg.sample_rate
        self.resolution = cfg.resolution or None
        self.resize = cfg.resize

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, path: Path, step: int) -> torch.Tensor:
        from wfvae.data.transforms import clip_indices, resize_crop, resized_size, to_model_tensor
        from wfvae.data.video_io import read_video

        # The same frames, resize and crop as the training/reconstruction data pipeline; frames
        # already at the target size are not touched, so lossless files compare exactly.
        fast = self.resize == "fast" or not self.resolution
        where = {"start": 0, "num_frames": self.num_frames, "step": step}
        if self.num_frames:
            where = {"indices": clip_indices(0, self.num_frames, step)}
        frames = read_video(path, short_side=self.resolution if fast else None, **where)
        if fast or resized_size(frames.shape[1], frames.shape[2], self.resolution) == frames.shape[1:3]:
            video = torch.from_numpy(frames).permute(3, 0, 1, 2)  # (3, T, H, W) uint8, exact
            return center_crop(video, self.resolution)
        return to_model_tensor(resize_crop(frames, self.resolution, self.resolution, self.resolution))

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One pair, or ``{"key", "error"}`` for a user-fixable problem: an exception raised in a
        DataLoader worker would reach the main process as a traceback text, not as itself."""
        key = self.pairs[index][0]
        try:
            return self._pair(index)
        except UserError as e:
            return {"key": key, "error": str(e)}

    def _pair(self, index: int) -> dict[str, Any]:
        key, real_path, gen_path = self.pairs[index]
        real = self._load(real_path, self.sample_rate)
        generated = self._load(gen_path, 1)
        if real.shape != generated.shape:
            raise InputError(
                f"'{key}': real {real_path} gives (C, T, H, W) {tuple(real.shape)} but generated "
                f"{gen_path} gives {tuple(generated.shape)}; set --num_frames / --resolution so both agree"
            )
        return {"key": key, "real": real, "generated": generated}


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
    real_dir, gen_dir = cfg.real_video_dir, cfg.generated_video_dir

    pairs = pair_videos(real_dir, gen_dir)
    if cfg.subset_size:
        if cfg.subset_size > len(pairs):
            logger.warning("--subset_size %d > %d pairs; using all", cfg.subset_size, len(pairs))
        pairs = pairs[: cfg.subset_size]
    logger.info("evaluating %s on %d video pairs", ",".join(wanted), len(pairs))
    if "fvd" in wanted and len(pairs) < 2:
        raise InputError(f"FVD needs at least 2 videos per set (a covariance), got {len(pairs)}")

    # Load networks before decoding anything, so a missing weight file fails immediately.
    lpips_net_module = None
    if "lpips" in wanted:
        if lpips_model is not None:
            lpips_net_module = lpips_model
        else:
            from wfvae.networks.lpips import load_lpips

            lpips_net_module = load_lpips(cfg.lpips_net, cfg.lpips_backbone_path, device=cfg.device,
                                          offline=cfg.offline or None)
    extractor = None
    if "fvd" in wanted:
        if fvd_extractor is not None:
            extractor = fvd_extractor
        else:
            from wfvae.evaluation.fvd import load_i3d

            extractor = load_i3d(cfg.fvd_variant, cfg.fvd_weights, device=cfg.device, offline=cfg.offline or None)

    loader = torch.utils.data.DataLoader(
        _PairDataset(pairs, cfg),
        batch_size=None,  # one pair per item: sizes may differ when resolution is 0
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
    )
    if progress:
        from tqdm import tqdm

        loader = tqdm(loader, total=len(pairs), desc="evaluate", disable=not sys.stdout.isatty())

    per_video: list[dict[str, Any]] = []
    real_feats: list[np.ndarray] = []
    gen_feats: list[np.ndarray] = []
    fvd_queue: list[tuple[torch.Tensor, torch.Tensor]] = []

    def flush_fvd() -> None:
        if not fvd_queue:
            return
        # Videos in one I3D batch must share a shape (they differ only when resolution is 0).
        groups: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for real_v, gen_v in fvd_queue:
            groups.setdefault(tuple(real_v.shape), []).append((real_v, gen_v))
        for items in groups.values():
            real_feats.append(extractor(torch.stack([r for r, _ in items])))
            gen_feats.append(extractor(torch.stack([g for _, g in items])))
        fvd_queue.clear()

    started = time.perf_counter()
    for item in loader:
        key = item["key"]
        if "error" in item:
            raise InputError(f"pair '{key}': {item['error']}")
        # (1, 3, T, H, W) uint8; PSNR/SSIM run on the device (float32 / exact integers)
        real = item["real"].unsqueeze(0).to(device, non_blocking=True)
        generated = item["generated"].unsqueeze(0).to(device, non_blocking=True)
        row: dict[str, Any] = {"path": key}
        if "psnr" in wanted:
            row["psnr"] = float(M.psnr(real, generated)[0])
        if "ssim" in wanted:
            row["ssim"] = float(M.ssim(real, generated)[0])
        if "lpips" in wanted:
            row["lpips"] = float(M.lpips(real, generated, lpips_net_module)[0])
        if extractor is not None:
            fvd_queue.append((real[0].cpu(), generated[0].cpu()))
            if len(fvd_queue) >= cfg.batch_size:
                flush_fvd()
        per_video.append(row)
    if extractor is not None:
        flush_fvd()
    elapsed = time.perf_counter() - started

    files = {k: (r, g) for k, r, g in pairs}
    for row in per_video:
        real_path, gen_path = files[row["path"]]
        row["real"], row["generated"] = str(real_path), str(gen_path)

    dataset: dict[str, float] = {}
    notes: list[str] = []
    for name in ("psnr", "ssim", "lpips"):
        if name in wanted:
            dataset[name] = float(np.mean([row[name] for row in per_video]))
    capped = 0
    if "psnr" in wanted:
        capped = sum(row["psnr"] >= M.PSNR_CAP_DB for row in per_video)
        if capped:
            notes.append(
                f"PSNR of identical videos is infinite and is reported as the cap {M.PSNR_CAP_DB:g} dB "
                f"({capped} of {len(per_video)} videos)"
            )
    if extractor is not None:
        from wfvae.evaluation.fvd import fvd_from_features

        real_all, gen_all = np.concatenate(real_feats), np.concatenate(gen_feats)
        dataset["fvd"] = fvd_from_features(real_all, gen_all)
        if len(real_all) < real_all.shape[1]:
            notes.append(
                f"FVD from {len(real_all)} videos (< {real_all.shape[1]} feature dimensions) is biased "
                f"and not comparable with published values"
            )
    logger.info("evaluated %d pairs in %.1f s", len(per_video), elapsed)
    return {
        "dataset": dataset,
        "per_video": per_video,
        "num_videos": len(per_video),
        "psnr_cap_db": M.PSNR_CAP_DB,
        "psnr_capped_videos": int(capped),
        "notes": notes,
        "config": {k: v for k, v in settings(cfg).items() if k not in _CLI_ONLY},
    }


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def format_results(result: dict[str, Any]) -> str:
    """The CLI's stdout: a per-video table, then one ``name: value`` line per metric, then notes."""
    names = [m for m in ("psnr", "ssim", "lpips") if m in result["dataset"]]
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
