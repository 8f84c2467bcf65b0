"""Latents for diffusion training: ``wfvae encode``, ``wfvae decode`` and ``wfvae latent-stats``.

How to run::

    wfvae encode --video_path data/train --ckpt runs/exp/model --out latents/ --num_frames 33 --resolution 256
    torchrun --nproc_per_node 8 -m wfvae.inference.latents encode ...     # sharded over processes
    wfvae latent-stats --latents latents/ --json latent_stats.json           # per-channel scale/shift
    wfvae decode --latents latents/ --ckpt runs/exp/model --out decoded/ --format mkv

Layout of a latents folder::

    latents/
      shard-r0-00000.safetensors   # tensors "<key>.mean" (and "<key>.sample" with --sample), float32
      index-r0.json                # one record per video written by rank 0 (see ``LatentRecord``)
      index.json                   # all records, merged at the end of a run

Encoding is resumable: videos already listed in any ``index-r*.json`` are skipped, and each shard
is written (atomically) before its records are added to the index, so an interruption loses at
most one unfinished shard. ``--apply_scale_shift`` stores ``(z - shift) * scale`` with the
config's values; the records say whether it was applied so ``decode`` can undo it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from wfvae.inference.reconstruct import FORMATS, add_conv_argument, load_for_inference, to_uint8_frames, write_output
from wfvae.errors import UnsafePathError
from wfvae.utils.io import atomic_write_bytes
from wfvae.utils.paths import check_relative, safe_join

logger = logging.getLogger(__name__)


@dataclass
class LatentRecord:
    """One encoded video."""

    key: str            # tensor name prefix inside the shard
    shard: str          # shard file name
    source: str         # video path relative to --video_path
    frames: int         # frames that were encoded
    fps: float          # frame rate of the source
    sample_rate: int    # frame interval used when reading
    resolution: int     # short side after resizing
    latent_shape: list  # (C, T', H', W')
    model_config_hash: str
    scale_shift_applied: bool
    has_sample: bool


def config_hash(config: dict) -> str:
    """Short, stable hash of a model config (to tell latents of different models apart)."""
    text = json.dumps({k: v for k, v in config.items() if not k.startswith("_")}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_index(latents_dir: Path) -> list[dict]:
    """All records of a latents folder (from the per-rank index files)."""
    records = []
    for part in sorted(latents_dir.glob("index-r*.json")):
        records.extend(json.loads(part.read_text()))
    if not records and (latents_dir / "index.json").is_file():
        records = json.loads((latents_dir / "index.json").read_text())
    return sorted(records, key=lambda r: r["source"])


def _write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())


# ------------------------------------------------------------------------------ encode
def encode_folder(
    video_path: str, ckpt: str, out: str, num_frames: int = 33, sample_rate: int = 1, resolution: int = 256,
    crop_size: int | None = None, sample: bool = False, apply_scale_shift: bool = False, shard_size: int = 64,
    chunk_size: int | None = None, device: str = "auto", config: str | None = None, cache_dir: str | None = None,
    seed: int = 0, conv: str = "winograd",
) -> dict:
    """Encode every usable video below ``video_path`` into ``out``. Returns a summary dict."""
    from safetensors.torch import save

    from wfvae.data.datasets import VideoFolderDataset
    from wfvae.training.distributed import all_gather_object, barrier, cleanup, init_distributed

    env = init_distributed(device)
    try:
        model = load_for_inference(ckpt, conv, config=config, device=env.device)
        sf = model.spatial_compression_ratio
        model.check_video(torch.zeros(1, 3, num_frames, sf, sf))
        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        dataset = VideoFolderDataset(video_path, num_frames, sample_rate, resolution, train=False,
                                     crop_size=crop_size, cache_dir=cache_dir, show_progress=env.is_main)
        done = {r["source"] for r in read_index(out_dir)}
        barrier(env)  # every rank has read the index before anyone appends to it
        todo = [i for i in range(len(dataset)) if dataset.videos[i].path not in done][env.rank :: env.world_size]
        index_path = out_dir / f"index-r{env.rank}.json"
        records = json.loads(index_path.read_text()) if index_path.is_file() else []
        existing = sorted(out_dir.glob(f"shard-r{env.rank}-*.safetensors"))
        shard_no = int(existing[-1].stem.rsplit("-", 1)[1]) + 1 if existing else 0
        generator = torch.Generator(device=env.device).manual_seed(seed + env.rank)
        chash = config_hash(model.config)
        scale = shift = None
        pending_tensors: dict[str, torch.Tensor] = {}
        pending_records: list[LatentRecord] = []

        def flush():
            nonlocal shard_no, pending_tensors, pending_records
            if not pending_records:
                return
            name = f"shard-r{env.rank}-{shard_no:05d}.safetensors"
            for r in pending_records:
                r.shard = name
            atomic_write_bytes(out_dir / name, save(pending_tensors))
            records.extend(asdict(r) for r in pending_records)
            _write_json(index_path, records)  # after the shard: the index never points at a missing file
            shard_no += 1
            pending_tensors, pending_records = {}, []

        for i in todo:
            item = dataset[i]
            video = item["video"].unsqueeze(0).to(env.device)
            with torch.inference_mode():
                posterior = model.encode(video, chunk_size=chunk_size)
                tensors = {"mean": posterior.mean}
                if sample:
                    tensors["sample"] = posterior.sample(generator)
                if apply_scale_shift:
                    if scale is None:
                        scale, shift = model.latent_scale_shift(posterior.mean)
                    tensors = {k: (v - shift) * scale for k, v in tensors.items()}
            key = f"v{len(records) + len(pending_records):07d}r{env.rank}"
            for name, t in tensors.items():
                pending_tensors[f"{key}.{name}"] = t[0].float().contiguous().cpu()
            info = dataset.videos[i].info
            pending_records.append(LatentRecord(
                key=key, shard="", source=item["path"], frames=int(video.shape[2]), fps=float(info.fps),
                sample_rate=sample_rate, resolution=resolution, latent_shape=list(tensors["mean"].shape[1:]),
                model_config_hash=chash, scale_shift_applied=apply_scale_shift, has_sample=sample,
            ))
            if len(pending_records) >= shard_size:
                flush()
        flush()
        counts = all_gather_object(len(todo), env)
        barrier(env)
        if env.is_main:
            _write_json(out_dir / "index.json", read_index(out_dir))
        return {"encoded": sum(counts), "already_done": len(done), "skipped_inputs": dataset.skipped, "out": str(out_dir)}
    finally:
        cleanup(env)


def load_latents(latents_dir: str | Path, which: str = "mean"):
    """Yield (record, latent (C, T', H', W')) for every video of a latents folder."""
    from safetensors import safe_open

    latents_dir = Path(latents_dir)
    for record in read_index(latents_dir):
        with safe_open(str(safe_join(latents_dir, record["shard"], "shard")), framework="pt") as f:
            yield record, f.get_tensor(f"{record['key']}.{which}")


# ------------------------------------------------------------------------------ decode
def decode_folder(latents: str, ckpt: str, out: str, fmt: str = "mp4", fps: float | None = None,
                  chunk_size: int | None = None, device: str = "cpu", config: str | None = None,
                  conv: str = "winograd") -> int:
    """Decode every latent of a latents folder into ``out/<source path>``; returns the count.

    Output names come from the index's ``source`` fields, which are data, not trusted: every record
    is checked before anything is loaded or written, and one that would land outside ``out``
    (absolute, ``..``, a symlink inside ``out``) stops the command with UnsafePathError.
    """
    targets = _decode_targets(Path(latents), Path(out), fmt)
    model = load_for_inference(ckpt, conv, config=config, device=device)
    count = 0
    for record, z in load_latents(latents):
        if record["model_config_hash"] != config_hash(model.config):
            logger.warning("%s was encoded by a model with another config (hash %s)", record["source"], record["model_config_hash"])
        z = z.unsqueeze(0).to(device)
        if record["scale_shift_applied"]:
            scale, shift = model.latent_scale_shift(z)
            z = z / scale + shift
        with torch.inference_mode():
            video = model.decode(z, chunk_size=chunk_size).float().clamp(-1, 1)
        path = targets[record["key"]]
        write_output(path, to_uint8_frames(video[0]), fmt, fps or record["fps"] or 24.0, is_image=False)
        count += 1
    return count


def _decode_targets(latents_dir: Path, out_dir: Path, fmt: str) -> dict[str, Path]:
    """Output path of every record (by key), after checking all of them; lists every bad record."""
    problems, targets = [], {}
    for record in read_index(latents_dir):
        try:
            check_relative(record["shard"], "shard")
            stem = check_relative(record["source"], "source").with_suffix("")
            targets[record["key"]] = safe_join(out_dir, f"{stem}{FORMATS[fmt]}", "source")
        except UnsafePathError as e:
            problems.append(f"  record {record.get('key')!r}: {e}")
    if problems:
        raise UnsafePathError(
            f"{latents_dir / 'index.json'} has records that would be written outside --out {out_dir}; "
            "nothing was decoded. Re-create the index with `wfvae encode`, or fix these records:\n"
            + "\n".join(problems))
    return targets


# ------------------------------------------------------------------------------ statistics
def latent_stats(latents: str, which: str = "mean") -> dict:
    """Per-channel mean/std over every latent element of a folder, and the matching scale/shift.

    Accumulates per-channel (count, mean, M2) in float64 and merges videos with Chan's parallel
    formula, so the result equals the statistics of all latents concatenated. ``scale = 1/std``
    and ``shift = mean`` are what a diffusion model uses as ``(z - shift) * scale`` to get unit
    variance, zero mean latents (the config's ``scale`` / ``shift`` fields).
    """
    n, mean, m2, videos, applied = 0, None, None, 0, set()
    for record, z in load_latents(latents, which):
        applied.add(record["scale_shift_applied"])
        x = z.double().reshape(z.shape[0], -1)  # (C, T'*H'*W')
        nb = x.shape[1]
        var_b, mean_b = torch.var_mean(x, dim=1, correction=0)
        if n == 0:
            n, mean, m2 = nb, mean_b, var_b * nb
        else:
            total = n + nb
            delta = mean_b - mean
            mean = mean + delta * nb / total
            m2 = m2 + var_b * nb + delta.pow(2) * n * nb / total
            n = total
        videos += 1
    if videos == 0:
        raise ValueError(f"no latents found in {latents} (expected index-r*.json written by `wfvae encode`)")
    std = (m2 / n).sqrt()
    if applied != {False}:
        logger.warning("some latents already had scale/shift applied; statistics describe the stored values")
    return {"videos": videos, "elements_per_channel": n, "mean": mean.tolist(), "std": std.tolist(),
            "scale": (1.0 / std).tolist(), "shift": mean.tolist()}


# ------------------------------------------------------------------------------ CLI
def _encode_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wfvae encode", description="Encode a video folder into latent shards.")
    p.add_argument("--video_path", required=True)
    p.add_argument("--ckpt", required=True, help="model dir or weights file (see wfvae.load_model)")
    p.add_argument("--config", default=None)
    p.add_argument("--out", required=True, help="latents folder (created; resumable)")
    p.add_argument("--num_frames", type=int, default=33)
    p.add_argument("--sample_rate", type=int, default=1)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--crop_size", type=int, default=None)
    p.add_argument("--sample", action="store_true", help="also store one posterior sample per video")
    p.add_argument("--apply_scale_shift", action="store_true", help="store (z - shift) * scale using the config's values")
    p.add_argument("--shard_size", type=int, default=64, help="videos per safetensors shard")
    p.add_argument("--chunk_size", type=int, default=None, help="encode this many frames at a time (exact)")
    add_conv_argument(p)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--cache_dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    return p


def encode_main(argv: list[str] | None = None) -> int:
    from wfvae.utils.logging import setup_logging

    setup_logging()
    summary = encode_folder(**vars(_encode_parser().parse_args(argv)))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"encoded {summary['encoded']} videos ({summary['already_done']} already done) -> {summary['out']}")
        for path, reason in summary["skipped_inputs"]:
            print(f"skipped input {path}: {reason}")
    return 0


def decode_main(argv: list[str] | None = None) -> int:
    from wfvae.utils.logging import setup_logging

    setup_logging()
    p = argparse.ArgumentParser(prog="wfvae decode", description="Decode a latents folder back into videos.")
    p.add_argument("--latents", required=True)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--config", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--format", dest="fmt", choices=["mp4", "mkv", "png"], default="mp4")
    p.add_argument("--fps", type=float, default=None)
    p.add_argument("--chunk_size", type=int, default=None, help="decode this many latent frames at a time (exact)")
    add_conv_argument(p)
    p.add_argument("--device", default="cpu")
    try:
        n = decode_folder(**vars(p.parse_args(argv)))
    except UnsafePathError as e:
        print(f"wfvae decode: {e}", file=sys.stderr)
        return 2
    print(f"decoded {n} videos")
    return 0


def stats_main(argv: list[str] | None = None) -> int:
    from wfvae.utils.logging import setup_logging

    setup_logging()
    p = argparse.ArgumentParser(prog="wfvae latent-stats", description=latent_stats.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latents", required=True, help="folder written by `wfvae encode`")
    p.add_argument("--which", choices=["mean", "sample"], default="mean")
    p.add_argument("--json", default=None, help="write the statistics here")
    args = p.parse_args(argv)
    stats = latent_stats(args.latents, args.which)
    print(f"{stats['videos']} videos, {stats['elements_per_channel']} values per channel")
    print(f"{'channel':>7} {'mean':>10} {'std':>10}")
    for c, (m, s) in enumerate(zip(stats["mean"], stats["std"])):
        print(f"{c:>7} {m:>10.5f} {s:>10.5f}")
    print(json.dumps({"scale": [round(v, 6) for v in stats["scale"]], "shift": [round(v, 6) for v in stats["shift"]]}))
    if args.json:
        Path(args.json).write_text(json.dumps(stats, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m wfvae.inference.latents encode|decode|latent-stats ...`` (for torchrun)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"encode": encode_main, "decode": decode_main, "latent-stats": stats_main}
    if not argv or argv[0] not in commands:
        print(f"usage: python -m wfvae.inference.latents {{{','.join(commands)}}} ...", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    from wfvae.errors import run_command

    sys.exit(run_command("python -m wfvae.inference.latents", main))
