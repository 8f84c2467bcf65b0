"""Latents for diffusion training: ``wfvae encode``, ``wfvae decode`` and ``wfvae latent-stats``.

How to run::

    wfvae encode --video_path data/train --ckpt runs/exp/model --out latents/ --num_frames 33 --resolution 256
    torchrun --nproc_per_node 8 -m wfvae.inference.latents encode ...     # sharded over processes
    wfvae latent-stats --latents latents/ --json latent_stats.json           # per-channel scale/shift
    wfvae decode --latents latents/ --ckpt runs/exp/model --out decoded/ --format mkv

Layout of a latents folder::

    latents/
      shard-r0-00000.safetensors   # tensors "<key>.mean" (and "<key>.sample" with --sample), float32
      index-r0.jsonl               # one line (record) per video written by rank 0 (see ``LatentRecord``)
      index.json                   # all records, merged at the end of a run

Encoding is resumable: videos already listed in any per-rank index are skipped, and each shard is
written (atomically) before its records are appended (and fsynced) to the rank's index, so an
interruption loses at most one unfinished shard; a record line cut short by a kill is dropped on
reading and truncated away by the next run. Each shard appends only its own records (older
versions rewrote a whole ``index-r<N>.json`` per shard; such folders are still read and resumed).
``wfvae-manifest.json`` records the checkpoint and the settings; a rerun with other settings stops and names the differences (``--overwrite`` starts again).
Decoding resumes the same way (see :mod:`wfvae.utils.output_folder`); its output names are
checked to stay inside ``--out`` whatever the index says, and two sources that differ only by
extension (``a.mp4``, ``a.mkv``) keep it in their names (``a.mp4.mp4``, ``a.mkv.mp4``). ``--apply_scale_shift`` stores ``(z - shift) * scale`` with the
config's values; the records say whether it was applied so ``decode`` can undo it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch
from safetensors import safe_open
from safetensors.torch import save

from wfvae.data.datasets import VideoFolderDataset
from wfvae.data.manifest import is_manifest, output_key
from wfvae.distributed import (
    all_gather_object,
    barrier,
    broadcast_object,
    cleanup,
    init_distributed,
)
from wfvae.errors import InputError, OutputError, UnsafePathError
from wfvae.formats import OUTPUT_FORMATS
from wfvae.inference.common import (
    DecodedItems,
    check_num_frames,
    config_hash,
    load_for_command,
    model_identity,
    to_uint8_frames,
    write_output,
)
from wfvae.options import (
    REQUIRED,
    ClipOptions,
    DecodeWorkerOptions,
    EncodeChunkOptions,
    IndexCacheOptions,
    MemoryBudgetOptions,
    ModelOptions,
    OverwriteOptions,
    VideoFormatOptions,
    option,
    run_config,
    too_small,
    validate,
)
from wfvae.utils.device import resolve_device
from wfvae.utils.io import write_json_option
from wfvae.utils.logging import setup_logging
from wfvae.utils.output_folder import (
    OutputFolder,
    check_not_nested,
    collision_free_stems,
)
from wfvae.utils.paths import check_relative, safe_join
from wfvae.utils.writer import BackgroundWriter

logger = logging.getLogger(__name__)

_RECORD_KEYS = ("key", "shard", "source", "fps", "scale_shift_applied", "model_config_hash")


@dataclass
class LatentRecord:
    """One encoded video."""

    key: str            # tensor name prefix inside the shard
    shard: str          # shard file name
    source: str         # video path relative to --video_path (or to its manifest's folder; a row outside it: its absolute path without the leading "/")
    frames: int         # frames that were encoded
    fps: float          # frame rate of the source
    sample_rate: int    # frame interval used when reading
    resolution: int     # short side after resizing
    latent_shape: list  # (C, T', H', W')
    model_config_hash: str
    scale_shift_applied: bool
    has_sample: bool


@dataclass(kw_only=True)
class EncodeConfig(ModelOptions, ClipOptions, EncodeChunkOptions, MemoryBudgetOptions, OverwriteOptions,
                   DecodeWorkerOptions, IndexCacheOptions):
    """Settings of ``wfvae encode``."""

    ALLOW_ABBREV: ClassVar[bool] = True  # unique prefixes of a flag were accepted before; still are

    video_path: str = option(REQUIRED, "Video folder (searched recursively) or manifest (.csv/.jsonl/.parquet).")
    out: str = option(REQUIRED, "Latents folder (created; resumable).")
    sample: bool = option(False, "Also store one posterior sample per video.")
    apply_scale_shift: bool = option(False, "Store (z - shift) * scale using the config's values.")
    shard_size: int = option(64, "Videos per safetensors shard.")
    seed: int = option(0, "Seed of the posterior samples (--sample); rank r uses seed + r.")

    def check(self) -> list[str]:
        return too_small(self, ("shard_size",)) + self.budget_errors()


@dataclass(kw_only=True)
class DecodeConfig(ModelOptions, VideoFormatOptions, MemoryBudgetOptions, OverwriteOptions):
    """Settings of ``wfvae decode``."""

    ALLOW_ABBREV: ClassVar[bool] = True  # unique prefixes of a flag were accepted before; still are

    latents: str = option(REQUIRED, "Folder written by `wfvae encode`.")
    out: str = option(REQUIRED, "Video folder (created; resumable).")
    fps: float | None = option(None, "Frame rate of the videos (default: the source's).")
    chunk_size: int | None = option(None, "Decode this many latent frames at a time (exact).")

    def check(self) -> list[str]:
        return too_small(self, ("chunk_size",), when_given=True) + self.budget_errors()


@dataclass(kw_only=True)
class LatentStatsConfig:
    """Settings of ``wfvae latent-stats``."""

    ALLOW_ABBREV: ClassVar[bool] = True  # unique prefixes of a flag were accepted before; still are

    latents: str = option(REQUIRED, "Folder written by `wfvae encode`.")
    which: Literal["mean", "sample"] = option("mean", "Statistics of the stored posterior means or samples.")
    json: str | None = option(None, "Write the statistics here.")


def _check_records(path: Path, records) -> list[dict]:
    if not isinstance(records, list) or not all(isinstance(r, dict) and all(k in r for k in _RECORD_KEYS)
                                                 for r in records):
        raise InputError(f"{path} is not a latents index written by `wfvae encode` (records with "
                         f"{', '.join(_RECORD_KEYS)}); encode the folder again")
    return records


def _read_records(path: Path) -> list[dict]:
    """A whole-file JSON index: ``index.json``, or a per-rank ``index-r<N>.json`` of older versions."""
    try:
        records = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path} is not a readable latents index ({e}); encode the folder again with "
                         "`wfvae encode --overwrite`") from e
    return _check_records(path, records)


def _read_jsonl(path: Path) -> tuple[list[dict], int]:
    """A per-rank JSON Lines index: (records, byte length of its complete lines).

    A last line without its newline is an append cut short by a kill: it is not a record (its
    shard then has no complete record set and is re-encoded), and the writer truncates it away
    before appending again. A damaged complete line is an error.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path} is not a readable latents index ({e}); encode the folder again with "
                         "`wfvae encode --overwrite`") from e
    complete = data.rfind(b"\n") + 1
    records = []
    for number, line in enumerate(data[:complete].splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"{path} is not a readable latents index (line {number}: {e}); encode the folder "
                             "again with `wfvae encode --overwrite`") from e
    return _check_records(path, records), complete


def read_index(latents_dir: Path) -> list[dict]:
    """All records of a latents folder: the per-rank indexes (``index-r<N>.jsonl``, and the
    ``index-r<N>.json`` files older versions wrote), else the merged ``index.json``.

    Raises:
        InputError: an index file is unreadable or not a list of records.
    """
    latents_dir = Path(latents_dir)
    records = []
    for part in sorted(latents_dir.glob("index-r*.json")):
        records.extend(_read_records(part))
    for part in sorted(latents_dir.glob("index-r*.jsonl")):
        records.extend(_read_jsonl(part)[0])
    if not records and (latents_dir / "index.json").is_file():
        records = _read_records(latents_dir / "index.json")
    return sorted(records, key=lambda r: str(r["source"]))


class _RankIndex:
    """This rank's records, appended to ``index-r<rank>.jsonl``: one fsynced append per shard, so
    writing N records costs O(N) in all (the whole-file ``index-r<rank>.json`` of older versions
    was rewritten at every shard: O(N^2)). Records of an older ``.json`` index stay valid and are
    read alongside."""

    def __init__(self, folder: OutputFolder, rank: int) -> None:
        self.folder = folder
        self.name = f"index-r{rank}.jsonl"
        self.path = folder.root / self.name
        old = folder.root / f"index-r{rank}.json"
        self.records = _read_records(old) if old.is_file() else []
        self._claimed = False
        if self.path.is_file():
            records, complete = _read_jsonl(self.path)
            self.records += records
            if complete < self.path.stat().st_size:  # a kill cut the last append short: drop the fragment
                os.truncate(self.path, complete)

    def append(self, records: list[dict]) -> None:
        if not self._claimed:  # listed as this folder's output (for --overwrite and the foreign check)
            self.folder.claim(self.name)
            self._claimed = True
        data = "".join(json.dumps(r) + "\n" for r in records).encode()
        with open(self.path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self.records.extend(records)


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=1) + "\n").encode()


def _publish_bytes(folder: OutputFolder, rel: str, data: bytes) -> None:
    tmp = folder.temporary_path(rel)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    folder.publish(tmp, rel)


def _prepare_on_rank0(folder: OutputFolder, overwrite: bool, env) -> None:
    """``folder.prepare`` on rank 0; every rank raises its error (no rank waits at a barrier alone)."""
    problem = None
    if env.is_main:
        try:
            folder.prepare(overwrite=overwrite)
        except OutputError as e:
            problem = str(e)
    problem = broadcast_object(problem, env)
    if problem:
        raise OutputError(problem)


# ------------------------------------------------------------------------------ encode
def encode_folder(cfg: EncodeConfig) -> dict:
    """Encode every usable video below ``video_path`` into ``out``. Returns a summary dict.

    Videos are decoded by ``num_workers`` DataLoader processes (page-locked on CUDA) and shards
    are written by a background thread, so the accelerator keeps working meanwhile.
    """

    video_path, ckpt, num_frames, sample_rate, resolution = (cfg.video_path, cfg.ckpt, cfg.num_frames,
                                                              cfg.sample_rate, cfg.resolution)
    sample, apply_scale_shift, seed, overwrite = cfg.sample, cfg.apply_scale_shift, cfg.seed, cfg.overwrite
    src, out_dir = Path(video_path), Path(cfg.out)
    if is_manifest(src) and not src.is_dir():
        if not src.is_file():
            raise InputError(f"--video_path {video_path}: manifest file not found")
        # a manifest lists its videos: latents next to it are never read as inputs
    elif not src.is_dir():
        raise InputError(f"--video_path {video_path} is not a folder (nor a .csv/.jsonl/.parquet manifest); "
                         "pass the folder of videos to encode or its manifest")
    else:
        check_not_nested(src, out_dir, "--video_path", "--out")
    validate(cfg)
    env = init_distributed(cfg.device)
    try:
        model = load_for_command(cfg, env.device)
        check_num_frames(model, num_frames)
        try:
            dataset = VideoFolderDataset(video_path, num_frames, sample_rate, resolution, train=False,
                                         crop_size=cfg.crop_size, cache_dir=cfg.cache_dir, show_progress=env.is_main,
                                         across_ranks=env.distributed)
        except ValueError as e:  # no usable video: the message lists the reasons
            raise InputError(f"--video_path {video_path}: {e}") from e
        folder = OutputFolder(out_dir, "encode", {
            "ckpt": model_identity(ckpt, model), "video_path": os.path.realpath(src), "num_frames": num_frames,
            "sample_rate": sample_rate, "resolution": resolution, "crop_size": cfg.crop_size, "sample": sample,
            "apply_scale_shift": apply_scale_shift, "seed": seed,
        }, rank=env.rank, output_option="--out")
        _prepare_on_rank0(folder, overwrite, env)
        if not overwrite and env.is_main:
            folder.check_no_foreign(p.name for p in [*out_dir.glob("index*.json"), *out_dir.glob("index-r*.jsonl"),
                                                     *out_dir.glob("shard-r*.safetensors")])
        done = {r["source"] for r in read_index(out_dir)}
        # sources are relative names: a manifest row outside the manifest's folder is named by its absolute
        # path without the leading "/" (as reconstruct names its outputs), so decode can place it under --out
        sources = [output_key(v.path) for v in dataset.videos]
        barrier(env)  # every rank has read the index before anyone appends to it
        todo = [i for i in range(len(dataset)) if sources[i] not in done][env.rank :: env.world_size]
        index = _RankIndex(folder, env.rank)
        referenced = {r["shard"] for r in index.records}
        for orphan in out_dir.glob(f"shard-r{env.rank}-*.safetensors"):  # written, then killed before the index
            if orphan.name not in referenced:
                orphan.unlink()
        existing = sorted(out_dir.glob(f"shard-r{env.rank}-*.safetensors"))
        shard_no = int(existing[-1].stem.rsplit("-", 1)[1]) + 1 if existing else 0
        next_key = len(index.records)
        generator = torch.Generator(device=env.device).manual_seed(seed + env.rank)
        chash = config_hash(model.config)
        scale = shift = None
        pending_tensors: dict[str, torch.Tensor] = {}
        pending_records: list[LatentRecord] = []

        def write_shard(name: str, tensors: dict, new_records: list[dict]) -> None:
            """Runs on the writer thread: the shard first, then the index records that point at it."""
            _publish_bytes(folder, name, save(tensors))
            index.append(new_records)

        failed = []
        loader = torch.utils.data.DataLoader(DecodedItems(dataset, todo), batch_size=None,
                                             num_workers=cfg.num_workers if len(todo) > 1 else 0,
                                             pin_memory=env.device.type == "cuda")
        with BackgroundWriter(max_pending=2) as writer:

            def flush():
                nonlocal shard_no, pending_tensors, pending_records
                if not pending_records:
                    return
                name = f"shard-r{env.rank}-{shard_no:05d}.safetensors"
                for r in pending_records:
                    r.shard = name
                writer.submit(write_shard, name, pending_tensors, [asdict(r) for r in pending_records])
                shard_no += 1
                pending_tensors, pending_records = {}, []

            for item in loader:
                i = item["index"]
                if "error" in item:
                    logger.warning("skipping %s: %s", dataset.videos[i].path, item["error"])
                    failed.append((dataset.videos[i].path, item["error"]))
                    continue
                video = item["video"].unsqueeze(0).to(env.device, non_blocking=True)
                with torch.inference_mode():
                    posterior = model.encode(video, **cfg.chunking(cfg.chunk_size))
                    tensors = {"mean": posterior.mean}
                    if sample:
                        tensors["sample"] = posterior.sample(generator)
                    if apply_scale_shift:
                        if scale is None:
                            scale, shift = model.latent_scale_shift(posterior.mean)
                        tensors = {k: (v - shift) * scale for k, v in tensors.items()}
                key = f"v{next_key:07d}r{env.rank}"
                next_key += 1
                for name, t in tensors.items():
                    pending_tensors[f"{key}.{name}"] = t[0].float().contiguous().cpu()
                info = dataset.videos[i].info
                pending_records.append(LatentRecord(
                    key=key, shard="", source=sources[i], frames=int(video.shape[2]), fps=float(info.fps),
                    sample_rate=sample_rate, resolution=resolution, latent_shape=list(tensors["mean"].shape[1:]),
                    model_config_hash=chash, scale_shift_applied=apply_scale_shift, has_sample=sample,
                ))
                if len(pending_records) >= cfg.shard_size:
                    flush()
            flush()
        counts = all_gather_object(len(todo) - len(failed), env)
        failed_all = [f for part in all_gather_object(failed, env) for f in part]
        barrier(env)
        if env.is_main:
            _publish_bytes(folder, "index.json", _json_bytes(read_index(out_dir)))
        return {"encoded": sum(counts), "already_done": len(done),
                "skipped_inputs": list(dataset.skipped) + failed_all, "out": str(out_dir)}
    finally:
        cleanup(env)


def load_latents(latents_dir: str | Path, which: str = "mean", records: list[dict] | None = None):
    """Yield (record, latent (C, T', H', W')) for every video of a latents folder (or of ``records``).

    Raises:
        InputError: a shard is missing, corrupt, or lacks the record's tensor.
    """
    latents_dir = Path(latents_dir)
    for record in read_index(latents_dir) if records is None else records:
        shard = safe_join(latents_dir, record["shard"], "shard")
        try:
            with safe_open(str(shard), framework="pt") as f:
                tensor = f.get_tensor(f"{record['key']}.{which}")
        except Exception as e:  # SafetensorError / OSError for a missing, truncated or foreign shard
            raise InputError(f"{shard}: cannot read latent {record['key']}.{which} of {record['source']!r} ({e}); "
                             "the latents folder is damaged: encode it again with `wfvae encode`") from e
        yield record, tensor


# ------------------------------------------------------------------------------ decode
def decode_folder(cfg: DecodeConfig) -> dict:
    """Decode every latent of a latents folder into ``out/<source path>``; returns a summary dict.

    Output names come from the index's ``source`` fields, which are data, not trusted: every record
    is checked before anything is loaded or written, and one that would land outside ``out``
    (absolute, ``..``, a symlink inside ``out``) stops the command with UnsafePathError. Videos
    are written by a background thread; a killed run resumes (see :mod:`wfvae.utils.output_folder`).
    """
    latents, ckpt, fmt, fps, overwrite = cfg.latents, cfg.ckpt, cfg.format, cfg.fps, cfg.overwrite
    latents_dir, out_dir = Path(latents), Path(cfg.out)
    if not latents_dir.is_dir():
        raise InputError(f"--latents {latents} is not a folder; pass a folder written by `wfvae encode`")
    records = read_index(latents_dir)
    if not records:
        raise InputError(f"--latents {latents}: no latents found (expected index.json written by `wfvae encode`)")
    targets = _decode_targets(records, latents_dir, out_dir, fmt)
    dev = resolve_device(cfg.device)
    model = load_for_command(cfg, dev)
    folder = OutputFolder(out_dir, "decode", {
        "ckpt": model_identity(ckpt, model), "latents": os.path.realpath(latents_dir), "format": fmt, "fps": fps,
    }, output_option="--out")
    folder.prepare(overwrite=overwrite)
    if not overwrite:
        folder.check_no_foreign(targets.values())
    done = folder.done_outputs()
    todo = [r for r in records if targets[r["key"]] not in done]
    foreign_models = sorted({r["source"] for r in todo if r["model_config_hash"] != config_hash(model.config)})
    if foreign_models:
        logger.warning("%d latents were encoded by a model with another config (e.g. %s); their videos will "
                       "not match the originals", len(foreign_models), foreign_models[0])
    count = 0
    with BackgroundWriter(max_pending=2) as writer:
        for record, z in load_latents(latents_dir, records=todo):
            z = z.unsqueeze(0).to(dev)
            if record["scale_shift_applied"]:
                scale, shift = model.latent_scale_shift(z)
                z = z / scale + shift
            with torch.inference_mode():
                video = model.decode(z, **cfg.chunking(cfg.chunk_size)).float().clamp(-1, 1)
            writer.submit(write_output, folder, targets[record["key"]], to_uint8_frames(video[0]), fmt,
                          fps or record["fps"] or 24.0, False)
            count += 1
    return {"decoded": count, "already_done": len(records) - len(todo), "out": str(out_dir)}


def _decode_targets(records: list[dict], latents_dir: Path, out_dir: Path, fmt: str) -> dict[str, str]:
    """Output path (relative to ``out_dir``) of every record, by key, after checking all of them.

    Raises:
        UnsafePathError: some records would be written outside ``out_dir``; all are listed.
    """
    problems, sources = [], {}
    for record in records:
        try:
            check_relative(record["shard"], "shard")
            sources[record["key"]] = check_relative(record["source"], "source").as_posix()
        except UnsafePathError as e:
            problems.append(f"  record {record.get('key')!r}: {e}")
    targets = {}
    if not problems:
        stems = collision_free_stems(sources.values())
        for key, source in sources.items():
            rel = f"{stems[source]}{OUTPUT_FORMATS[fmt]}"
            try:
                safe_join(out_dir, rel, "source")
                targets[key] = rel
            except UnsafePathError as e:
                problems.append(f"  record {key!r}: {e}")
    if problems:
        raise UnsafePathError(
            f"{latents_dir / 'index.json'} has records that would be written outside --out {out_dir}; "
            "nothing was decoded. Re-create the index with `wfvae encode`, or fix these records:\n"
            + "\n".join(problems))
    return targets


# ------------------------------------------------------------------------------ statistics
def latent_stats(cfg: LatentStatsConfig) -> dict:
    """Per-channel mean/std over every latent element of a folder, and the matching scale/shift.

    Accumulates per-channel (count, mean, M2) in float64 and merges videos with Chan's parallel
    formula, so the result equals the statistics of all latents concatenated. ``scale = 1/std``
    and ``shift = mean`` are what a diffusion model uses as ``(z - shift) * scale`` to get unit
    variance, zero mean latents (the config's ``scale`` / ``shift`` fields).
    """
    latents, which = cfg.latents, cfg.which
    if not Path(latents).is_dir():
        raise InputError(f"--latents {latents} is not a folder; pass a folder written by `wfvae encode`")
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
        raise InputError(f"--latents {latents}: no latents found (expected index-r*.jsonl written by `wfvae encode`)")
    std = (m2 / n).sqrt()
    if applied != {False}:
        logger.warning("some latents already had scale/shift applied; statistics describe the stored values")
    return {"videos": videos, "elements_per_channel": n, "mean": mean.tolist(), "std": std.tolist(),
            "scale": (1.0 / std).tolist(), "shift": mean.tolist()}


# ------------------------------------------------------------------------------ CLI
def run_encode(cfg: EncodeConfig) -> int:
    setup_logging()
    summary = encode_folder(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"encoded {summary['encoded']} videos ({summary['already_done']} already done) -> {summary['out']}")
        for path, reason in summary["skipped_inputs"]:
            print(f"skipped input {path}: {reason}")
    return 0


def run_decode(cfg: DecodeConfig) -> int:
    setup_logging()
    summary = decode_folder(cfg)
    print(f"decoded {summary['decoded']} videos ({summary['already_done']} already done) -> {summary['out']}")
    return 0


def run_stats(cfg: LatentStatsConfig) -> int:
    setup_logging()
    stats = latent_stats(cfg)
    print(f"{stats['videos']} videos, {stats['elements_per_channel']} values per channel")
    print(f"{'channel':>7} {'mean':>10} {'std':>10}")
    for c, (m, s) in enumerate(zip(stats["mean"], stats["std"])):
        print(f"{c:>7} {m:>10.5f} {s:>10.5f}")
    print(json.dumps({"scale": [round(v, 6) for v in stats["scale"]], "shift": [round(v, 6) for v in stats["shift"]]}))
    if cfg.json:
        write_json_option(cfg.json, stats, "--json")
    return 0


def encode_main(argv: list[str] | None = None) -> int:
    return run_config(EncodeConfig, run_encode, argv, "wfvae encode", "Encode a video folder into latent shards.")


def decode_main(argv: list[str] | None = None) -> int:
    return run_config(DecodeConfig, run_decode, argv, "wfvae decode", "Decode a latents folder back into videos.")


def stats_main(argv: list[str] | None = None) -> int:
    return run_config(LatentStatsConfig, run_stats, argv, "wfvae latent-stats", latent_stats.__doc__)


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
