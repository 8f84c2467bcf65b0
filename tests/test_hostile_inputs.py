"""Hostile and careless input, table-driven: every command, every case, on real small files.

Each row is (command line, expected exit status, fragments the message must contain). A user
mistake must print one clear message and exit 2 with no traceback; every ``--option`` a message
names must exist on that command (and a value it suggests must be one of the option's choices).
The files are made here: a tiny model, real H.264 clips, a latents folder, corrupt and truncated
copies. ``test_hint_options_exist_everywhere`` checks every option named anywhere in the source.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from wfvae.cli import COMMANDS
from wfvae.cli import main as cli
from wfvae.data.synthetic import make_synthetic_video
from wfvae.data.video_write import write_video
from wfvae.models import build_model
from wfvae.models.base import WEIGHTS_NAME

ROOT = Path(__file__).parents[1]
TINY = ROOT / "examples" / "configs" / "wfvae_tiny.json"


# ------------------------------------------------------------------------------------------ files
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    model = build_model(TINY)
    w = {"base": base, "model": model.save_pretrained(base / "model"), "cache": base / "cache"}
    torch.manual_seed(1)
    w["model2"] = build_model(TINY).save_pretrained(base / "model2")  # same config, other weights
    videos = base / "videos"
    for i, sub in enumerate(["a", "b"]):
        write_video(videos / sub / f"c{i}.mp4", make_synthetic_video(10, 32, 40, seed=i), fps=12)
    w["videos"] = videos
    # weights with NaN: a diverged run's export
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    w["nan_model"] = model.save_pretrained(base / "nan_model")
    # a truncated safetensors file next to a good config
    trunc = base / "trunc"
    trunc.mkdir()
    (trunc / WEIGHTS_NAME).write_bytes((w["model"] / WEIGHTS_NAME).read_bytes()[:200])
    shutil.copy(w["model"] / "config.json", trunc / "config.json")
    w["trunc"] = trunc
    # model configs: negative, a word, zero, binary, no class name
    tiny = json.loads(TINY.read_text())
    for name, change in {"neg": {"base_channels": -8}, "word": {"base_channels": "eight"},
                         "zero": {"base_channels": 0}, "dropout": {"dropout": 2.0}}.items():
        d = base / f"cfg_{name}"
        d.mkdir()
        (d / "config.json").write_text(json.dumps({**tiny, **change}))
        shutil.copy(w["model"] / WEIGHTS_NAME, d / WEIGHTS_NAME)
        w[f"cfg_{name}"] = d
    d = base / "cfg_bin"
    d.mkdir()
    (d / "config.json").write_bytes(bytes(range(256)) * 4)
    shutil.copy(w["model"] / WEIGHTS_NAME, d / WEIGHTS_NAME)
    w["cfg_bin"] = d
    d = base / "cfg_noclass"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({k: v for k, v in tiny.items() if k != "_class_name"}))
    shutil.copy(w["model"] / WEIGHTS_NAME, d / WEIGHTS_NAME)
    w["cfg_noclass"] = d
    # folders: empty, only corrupt files, a dangling symlink
    (base / "empty").mkdir()
    w["empty"] = base / "empty"
    corrupt = base / "corrupt"
    corrupt.mkdir()
    (corrupt / "text.mp4").write_text("not a video")
    (corrupt / "empty.mp4").write_bytes(b"")
    w["corrupt"] = corrupt
    # one latents folder, encoded once; cases copy it before they damage it
    assert cli(["encode", "--video_path", str(videos), "--ckpt", str(w["model"]), "--out", str(base / "latents"),
                "--num_frames", "9", "--resolution", "32", "--device", "cpu", "--num_workers", "0",
                "--cache_dir", str(w["cache"])]) == 0
    w["latents"] = base / "latents"
    # one finished reconstruction; stale-output cases copy it
    assert cli(["reconstruct", "--real_video_dir", str(videos), "--generated_video_dir", str(base / "gen_done"),
                "--ckpt", str(w["model"]), "--num_frames", "9", "--resolution", "32", "--num_workers", "0",
                *_common(w)]) == 0
    w["gen_done"] = base / "gen_done"
    return w


def _copy_latents(w, tmp: Path) -> Path:
    return Path(shutil.copytree(w["latents"], tmp / "lat"))


def _common(w) -> list[str]:
    return ["--device", "cpu", "--cache_dir", str(w["cache"])]


def _recon(w, tmp, *extra, ckpt=None, src=None, out=None) -> list[str]:
    return ["reconstruct", "--real_video_dir", str(src or w["videos"]), "--generated_video_dir", str(out or tmp / "gen"),
            "--ckpt", str(ckpt or w["model"]), "--num_frames", "9", "--resolution", "32", "--num_workers", "0",
            *_common(w), *extra]


def _encode(w, tmp, *extra, ckpt=None, src=None, out=None) -> list[str]:
    return ["encode", "--video_path", str(src or w["videos"]), "--out", str(out or tmp / "lat_out"),
            "--ckpt", str(ckpt or w["model"]), "--num_frames", "9", "--resolution", "32", "--num_workers", "0",
            *_common(w), *extra]


def _decode(w, tmp, *extra, latents=None, ckpt=None, out=None) -> list[str]:
    return ["decode", "--latents", str(latents or w["latents"]), "--ckpt", str(ckpt or w["model"]),
            "--out", str(out or tmp / "dec"), "--device", "cpu", *extra]


def _evaluate(real, gen, *extra) -> list[str]:
    return ["evaluate", "--real_video_dir", str(real), "--generated_video_dir", str(gen), "--metric", "psnr,ssim",
            "--num_frames", "9", "--resolution", "32", "--device", "cpu", *extra]


def _train(w, tmp, *extra) -> list[str]:
    return ["train", "--model_name", "WFVAE", "--video_path", str(w["videos"]), "--num_frames", "9",
            "--resolution", "32", "--report_to", "none", "--ckpt_dir", str(tmp / "runs"), "--perceptual_weight", "0",
            "--check_only", *extra]


# ------------------------------------------------------------------------------------------ setups
def _finished(key: str, dest: str) -> Callable:
    """A setup that copies a finished output folder of the shared files (for stale-output cases)."""

    def setup(w, tmp):
        shutil.copytree(w[key], tmp / dest)

    return setup


def _legacy_outputs(w, tmp):
    """An output folder from an older version: outputs, no manifest, no claims."""
    for rel in ["a/c0.mp4", "b/c1.mp4"]:
        (tmp / "gen" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(w["videos"] / rel, tmp / "gen" / rel)


def _tamper(lat: Path, **fields) -> None:
    for part in [lat / "index.json", *lat.glob("index-r*.json")]:
        records = json.loads(part.read_text())
        records[0].update(fields)
        part.write_text(json.dumps(records))
    for part in lat.glob("index-r*.jsonl"):  # per-rank JSON Lines
        records = [json.loads(line) for line in part.read_text().splitlines()]
        records[0].update(fields)
        part.write_text("".join(json.dumps(r) + "\n" for r in records))


def _damaged_latents(kind: str) -> Callable:
    def setup(w, tmp):
        lat = _copy_latents(w, tmp)
        if kind == "index_garbage":
            for part in [lat / "index.json", *lat.glob("index-r*.json*")]:
                part.write_text("{ not json\n")
        elif kind == "index_not_records":
            for part in [lat / "index.json", *lat.glob("index-r*.json*")]:
                part.write_text(json.dumps({"videos": 2}) + "\n")
        elif kind == "missing_shard":
            for shard in lat.glob("shard-*.safetensors"):
                shard.unlink()
        elif kind == "truncated_shard":
            for shard in lat.glob("shard-*.safetensors"):
                shard.write_bytes(shard.read_bytes()[:64])
        elif kind.startswith("shard="):
            _tamper(lat, shard="../../etc/passwd")
        elif kind.startswith("source="):
            source = kind.removeprefix("source=").replace("ABS", str(tmp / "victim"))
            _tamper(lat, source=source)
        elif kind == "symlink_out":
            (tmp / "outside").mkdir()
            (tmp / "dec").mkdir()
            (tmp / "dec" / "a").symlink_to(tmp / "outside", target_is_directory=True)

    return setup


def _origin_subfolder(w, tmp):
    shutil.copytree(w["videos"], tmp / "src")
    shutil.copytree(w["videos"] / "a", tmp / "src" / "origin")


def _corrupt_pair(w, tmp):
    """Two real clips and their 'reconstructions', one of which is a text file named .mp4."""
    for folder in ("real", "gen"):
        for i in range(2):
            write_video(tmp / folder / f"v{i}.mp4", make_synthetic_video(9, 32, 32, seed=i), fps=12)
    (tmp / "gen" / "v1.mp4").write_text("garbage")


def _unpaired(w, tmp):
    write_video(tmp / "real" / "v0.mp4", make_synthetic_video(9, 32, 32, seed=0), fps=12)
    write_video(tmp / "gen" / "other.mp4", make_synthetic_video(9, 32, 32, seed=0), fps=12)


def _one_pair(w, tmp):
    for folder in ("real", "gen"):
        write_video(tmp / folder / "v0.mp4", make_synthetic_video(9, 32, 32, seed=0), fps=12)


def _dangling(w, tmp):
    shutil.copytree(w["videos"], tmp / "src")
    (tmp / "src" / "gone.mp4").symlink_to(tmp / "nowhere.mp4")


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")


@dataclass
class Case:
    id: str
    argv: Callable[[dict, Path], list[str]]
    fragments: list[str]
    rc: int = 2
    setup: Callable | None = None
    marks: list = field(default_factory=list)


CASES = [
    # ---------------------------------------------------------------- reconstruct
    Case("reconstruct-10-frames", lambda w, t: _recon(w, t, "--num_frames", "10"),
         ["--num_frames 10", "1 + 4k frames", "e.g. 9 or 13"]),
    Case("reconstruct-missing-ckpt", lambda w, t: _recon(w, t, ckpt=t / "nope"), ["--ckpt", "no model at"]),
    Case("reconstruct-truncated-safetensors", lambda w, t: _recon(w, t, ckpt=w["trunc"]),
         [WEIGHTS_NAME, "corrupt or truncated"]),
    Case("reconstruct-cuda-without-gpu", lambda w, t: _recon(w, t) + ["--device", "cuda"],
         ["--device cuda", "no CUDA device", "--device cpu"], marks=[NO_CUDA]),
    Case("reconstruct-config-negative", lambda w, t: _recon(w, t, ckpt=w["cfg_neg"]), ["base_channels: must be >= 1, got -8"]),
    Case("reconstruct-config-word", lambda w, t: _recon(w, t, ckpt=w["cfg_word"]), ["base_channels: expected an integer", "eight"]),
    Case("reconstruct-config-zero", lambda w, t: _recon(w, t, ckpt=w["cfg_zero"]), ["base_channels: must be >= 1, got 0"]),
    Case("reconstruct-config-dropout", lambda w, t: _recon(w, t, ckpt=w["cfg_dropout"]), ["dropout: must be in [0, 1)"]),
    Case("reconstruct-config-binary", lambda w, t: _recon(w, t, ckpt=w["cfg_bin"]), ["config.json", "not a JSON text file"]),
    Case("reconstruct-config-no-class", lambda w, t: _recon(w, t, ckpt=w["cfg_noclass"]), ["_class_name", "--model_name"]),
    Case("reconstruct-nan-weights", lambda w, t: _recon(w, t, ckpt=w["nan_model"]), ["NaN or Inf", "before the run diverged"]),
    Case("reconstruct-missing-input", lambda w, t: _recon(w, t, src=t / "nope"), ["--real_video_dir", "does not exist"]),
    Case("reconstruct-empty-folder", lambda w, t: _recon(w, t, src=w["empty"]), ["--real_video_dir", "no video files"]),
    Case("reconstruct-corrupt-folder", lambda w, t: _recon(w, t, src=w["corrupt"]),
         ["no usable video", "text.mp4", "empty.mp4", "wfvae data-check"]),
    Case("reconstruct-out-inside-input", lambda w, t: _recon(w, t, out=w["videos"] / "gen"),
         ["--generated_video_dir", "lies inside --real_video_dir"]),
    Case("reconstruct-out-is-input", lambda w, t: _recon(w, t, out=w["videos"]), ["lies inside --real_video_dir"]),
    Case("reconstruct-stale-resolution", lambda w, t: _recon(w, t)[:-6] + ["--resolution", "40", *_common(w)],
         ["--resolution: 32 there, 40 now", "--overwrite"], setup=_finished("gen_done", "gen")),
    Case("reconstruct-stale-checkpoint", lambda w, t: _recon(w, t, ckpt=w["model2"]),
         [f"--ckpt: {WEIGHTS_NAME} (sha256", "--overwrite"], setup=_finished("gen_done", "gen")),
    Case("reconstruct-stale-format", lambda w, t: _recon(w, t, "--format", "png"), ['--format: "mp4" there, "png" now'],
         setup=_finished("gen_done", "gen")),
    Case("reconstruct-legacy-outputs", lambda w, t: _recon(w, t), ["not written by", "--overwrite", "a/c0.mp4"],
         setup=_legacy_outputs),
    Case("reconstruct-origin-subfolder", lambda w, t: _recon(w, t, "--output_origin", src=t / "src"),
         ["subfolder 'origin/'", "--output_origin"], setup=_origin_subfolder),
    Case("reconstruct-bad-metric", lambda w, t: _recon(w, t, "--metrics", "psnr,flolpips"), ["--metrics flolpips", "psnr, ssim, lpips"]),
    Case("reconstruct-crop-larger", lambda w, t: _recon(w, t, "--crop_size", "64"), ["--crop_size 64", "--resolution 32"]),
    Case("reconstruct-zero-fps", lambda w, t: _recon(w, t, "--sample_fps", "0"), ["--sample_fps must be > 0"]),
    Case("reconstruct-unknown-option", lambda w, t: _recon(w, t, "--resolutoin", "32"), ["unknown argument '--resolutoin'; did you mean '--resolution'?"]),
    # ---------------------------------------------------------------- encode
    Case("encode-empty-folder", lambda w, t: _encode(w, t, src=w["empty"]), ["--video_path", "no video files"]),
    Case("encode-corrupt-folder", lambda w, t: _encode(w, t, src=w["corrupt"]), ["no usable video", "text.mp4"]),
    Case("encode-file-not-folder", lambda w, t: _encode(w, t, src=w["videos"] / "a" / "c0.mp4"), ["--video_path", "is not a folder"]),
    Case("encode-out-inside-input", lambda w, t: _encode(w, t, out=w["videos"] / "lat"), ["--out", "lies inside --video_path"]),
    Case("encode-10-frames", lambda w, t: _encode(w, t, "--num_frames", "10"), ["--num_frames 10", "1 + 4k"]),
    Case("encode-stale-settings", lambda w, t: _encode(w, t, "--sample"), ["--sample: false there, true now", "--overwrite"],
         setup=_finished("latents", "lat_out")),
    Case("encode-truncated-safetensors", lambda w, t: _encode(w, t, ckpt=w["trunc"]), ["corrupt or truncated"]),
    Case("encode-cuda-without-gpu", lambda w, t: _encode(w, t)[:-4] + ["--device", "cuda", "--cache_dir", str(w["cache"])],
         ["--device cuda", "no CUDA device"], marks=[NO_CUDA]),
    Case("encode-zero-shard-size", lambda w, t: _encode(w, t, "--shard_size", "0"), ["--shard_size must be >= 1"]),
    # ---------------------------------------------------------------- decode (item 1: nothing outside --out)
    Case("decode-empty-folder", lambda w, t: _decode(w, t, latents=w["empty"]), ["--latents", "no latents found"]),
    Case("decode-missing-folder", lambda w, t: _decode(w, t, latents=t / "nope"), ["--latents", "is not a folder"]),
    Case("decode-corrupt-index", lambda w, t: _decode(w, t, latents=t / "lat"), ["not a readable latents index"],
         setup=_damaged_latents("index_garbage")),
    Case("decode-index-not-records", lambda w, t: _decode(w, t, latents=t / "lat"), ["not a latents index written by"],
         setup=_damaged_latents("index_not_records")),
    Case("decode-missing-shard", lambda w, t: _decode(w, t, latents=t / "lat"), ["cannot read latent", "encode it again"],
         setup=_damaged_latents("missing_shard")),
    Case("decode-truncated-shard", lambda w, t: _decode(w, t, latents=t / "lat"), ["cannot read latent"],
         setup=_damaged_latents("truncated_shard")),
    Case("decode-source-dotdot", lambda w, t: _decode(w, t, latents=t / "lat"), ["outside --out", "'..'"],
         setup=_damaged_latents("source=../escaped.mp4")),
    Case("decode-source-absolute", lambda w, t: _decode(w, t, latents=t / "lat"), ["outside --out", "absolute path"],
         setup=_damaged_latents("source=ABS/escaped.mp4")),
    Case("decode-source-nested-dotdot", lambda w, t: _decode(w, t, latents=t / "lat"), ["outside --out"],
         setup=_damaged_latents("source=a/../../escaped.mp4")),
    Case("decode-source-backslash", lambda w, t: _decode(w, t, latents=t / "lat"), ["outside --out"],
         setup=_damaged_latents("source=..\\escaped.mp4")),
    Case("decode-shard-dotdot", lambda w, t: _decode(w, t, latents=t / "lat"), ["outside --out", "shard"],
         setup=_damaged_latents("shard=x")),
    Case("decode-symlinked-out-folder", lambda w, t: _decode(w, t, latents=w["latents"]), ["through a symlink"],
         setup=_damaged_latents("symlink_out")),
    Case("decode-config-no-class", lambda w, t: _decode(w, t, ckpt=w["cfg_noclass"]), ["_class_name", "--model_name"]),
    Case("decode-into-latents-folder", lambda w, t: _decode(w, t, latents=t / "lat", out=t / "lat"),
         ["written by `wfvae encode`", "--overwrite"], setup=_damaged_latents("none")),
    Case("decode-cuda-without-gpu", lambda w, t: _decode(w, t)[:-2] + ["--device", "cuda"], ["no CUDA device"], marks=[NO_CUDA]),
    Case("decode-nan-weights", lambda w, t: _decode(w, t, ckpt=w["nan_model"]), ["NaN or Inf"]),
    # ---------------------------------------------------------------- latent-stats
    Case("latent-stats-empty-folder", lambda w, t: ["latent-stats", "--latents", str(w["empty"])], ["no latents found"]),
    Case("latent-stats-missing-folder", lambda w, t: ["latent-stats", "--latents", str(t / "nope")], ["is not a folder"]),
    Case("latent-stats-corrupt-index", lambda w, t: ["latent-stats", "--latents", str(t / "lat")],
         ["not a readable latents index"], setup=_damaged_latents("index_garbage")),
    Case("latent-stats-json-unwritable", lambda w, t: ["latent-stats", "--latents", str(w["latents"]), "--json", str(w["empty"])],
         ["--json", "cannot write"]),
    # ---------------------------------------------------------------- data-check
    Case("data-check-json-unwritable", lambda w, t: ["data-check", "--video_path", str(w["videos"]), "--num_frames", "9",
                                                    "--cache_dir", str(w["cache"]), "--json", str(w["videos"] / "a" / "c0.mp4" / "r.json")],
         ["--json", "cannot write"]),
    Case("data-check-missing-folder", lambda w, t: ["data-check", "--video_path", str(t / "nope"), "--num_frames", "9"],
         ["--video_path", "is not a folder"]),
    Case("data-check-zero-frames", lambda w, t: ["data-check", "--video_path", str(w["videos"]), "--num_frames", "0"],
         ["--num_frames", "must be >= 1"]),
    Case("data-check-dangling-symlink", lambda w, t: ["data-check", "--video_path", str(t / "src"), "--num_frames", "9",
                                                     "--cache_dir", str(w["cache"])], ["gone.mp4"], rc=0, setup=_dangling),
    # ---------------------------------------------------------------- evaluate
    Case("evaluate-corrupt-video-in-worker", lambda w, t: _evaluate(t / "real", t / "gen", "--num_workers", "2"),
         ["pair 'v1'", "v1.mp4"], setup=_corrupt_pair),
    Case("evaluate-missing-folder", lambda w, t: _evaluate(t / "nope", w["videos"]), ["does not exist"]),
    Case("evaluate-unpaired", lambda w, t: _evaluate(t / "real", t / "gen"), ["without a partner", "other.mp4"], setup=_unpaired),
    Case("evaluate-crop-mismatch", lambda w, t: _evaluate(w["videos"], w["videos"], "--crop_size", "16"), ["--crop_size 16", "--resolution 32"]),
    Case("evaluate-bad-metric", lambda w, t: _evaluate(w["videos"], w["videos"])[:-2] + ["--metric", "flolpips"], ["choose from"]),
    Case("evaluate-json-unwritable", lambda w, t: _evaluate(w["videos"], w["videos"], "--num_workers", "0", "--json", str(w["empty"])),
         ["--json", "cannot write"]),
    Case("evaluate-cuda-without-gpu", lambda w, t: _evaluate(w["videos"], w["videos"])[:-2] + ["--device", "cuda"],
         ["no CUDA device"], marks=[NO_CUDA]),
    Case("evaluate-fvd-too-few", lambda w, t: _evaluate(t / "real", t / "gen")[:-2] + ["--metric", "fvd", "--device", "cpu"],
         ["FVD needs at least 2 videos"], setup=_one_pair),
    # ---------------------------------------------------------------- train
    Case("train-config-negative", lambda w, t: _train(w, t, "--model_config", str(w["cfg_neg"] / "config.json")),
         ["base_channels: must be >= 1"]),
    Case("train-config-binary", lambda w, t: _train(w, t, "--model_config", str(w["cfg_bin"] / "config.json")),
         ["not a JSON text file"]),
    Case("train-cuda-without-gpu", lambda w, t: [a for a in _train(w, t, "--model_config", str(TINY), "--max_steps", "1")
                                                 if a != "--check_only"] + ["--device", "cuda"],
         ["no CUDA device"], marks=[NO_CUDA]),
    # ---------------------------------------------------------------- report, demo
    Case("report-missing-folder", lambda w, t: ["report", str(t / "nope")], ["does not exist or is not a folder"]),
    Case("report-negative-max-videos", lambda w, t: ["report", str(w["videos"]), "--max_videos", "-1"],
         ["--max_videos"]),
    Case("demo-out-is-a-file", lambda w, t: ["demo", "--out", str(w["videos"] / "a" / "c0.mp4"), "--fast"],
         ["c0.mp4"]),
    # ---------------------------------------------------------------- the dispatcher
    Case("unknown-command", lambda w, t: ["reconstrcut"], ["unknown command", "reconstruct"]),
]


def _help_text(command: str, capsys) -> str:
    capsys.readouterr()
    try:
        cli([command, "--help"])
    except SystemExit:
        pass
    return capsys.readouterr().out


_OPTION = re.compile(r"(?<![\w-])--([a-z][a-z0-9_]*)(?: ([a-z][a-z0-9_]*))?")
_PROSE = {"to", "or", "and", "is", "must", "there", "now", "lies", "keeps", "with", "for", "the", "a", "needs",
          "when", "was", "only", "not", "has", "cannot", "in", "of", "if", "as", "where"}


def check_hints(command: str, message: str, capsys) -> None:
    """Every ``--option`` in ``message`` exists on ``command``; a value it suggests is among its choices."""
    # a suggested command line of another command (`wfvae data-check --video_path ...`) is checked against it
    for other, rest in re.findall(r"`wfvae ([a-z-]+)([^`]*)`", message):
        assert other in COMMANDS, f"message suggests an unknown command `wfvae {other}`: {message}"
        if other != command:
            check_hints(other, rest, capsys)
    message = re.sub(r"`wfvae ([a-z-]+)([^`]*)`", "", message)
    help_text = _help_text(command, capsys)
    for option, value in _OPTION.findall(message):
        assert re.search(rf"--{option}\b", help_text), f"`wfvae {command}` has no --{option}: {message}"
        choices = re.search(rf"--{option} \{{([^}}]*)\}}", help_text)
        if choices and value and value not in _PROSE:
            assert value in choices.group(1).split(","), f"--{option} {value}: not a choice of `wfvae {command}`"


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_hostile_input(case: Case, world, tmp_path, capsys):
    if case.setup is not None:
        case.setup(world, tmp_path)
    argv = case.argv(world, tmp_path)
    before = {p for p in world["base"].rglob("*") if "cache" not in p.parts}
    capsys.readouterr()
    try:
        rc = cli(argv)
    except SystemExit as e:  # argparse's own errors (unknown option)
        rc = e.code
    out, err = capsys.readouterr()
    message = err + out
    assert rc == case.rc, f"{case.id}: exit {rc}\n{message}"
    assert "Traceback" not in message, message
    for fragment in case.fragments:
        assert fragment in message, f"{case.id}: {fragment!r} not in:\n{message}"
    # the shared files are untouched, and nothing escaped to the shared folder
    after = {p for p in world["base"].rglob("*") if "cache" not in p.parts}
    assert after == before, sorted(map(str, after ^ before))
    if argv[0] in COMMANDS and rc == 2 and "unknown argument" not in message:
        check_hints(argv[0], message, capsys)
    if case.id.startswith("decode-source") or case.id == "decode-symlinked-out-folder":
        assert not (tmp_path / "escaped.mp4").exists() and not list(tmp_path.glob("victim/*"))
        assert not (tmp_path / "outside").exists() or list((tmp_path / "outside").iterdir()) == []


# ------------------------------------------------------------------------------------------ hints
def _string_constants(tree: ast.AST):
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.value


def test_hint_options_exist_everywhere(capsys):
    """Every ``--option`` written in a message string anywhere in the package is an option of some command."""
    known: set[str] = set()
    for command in COMMANDS:
        known |= set(re.findall(r"--([a-z][a-z0-9_]*)", _help_text(command, capsys)))
    known |= {"help", "nproc_per_node", "nnodes", "node_rank", "master_addr", "master_port",
              "standalone", "rdzv_endpoint", "rdzv_backend", "local_rank"}  # torchrun's, in launch hints
    missing = {}
    for path in sorted((ROOT / "src" / "wfvae").rglob("*.py")):
        for text in _string_constants(ast.parse(path.read_text())):
            if "var(--" in text or re.search(r"--[a-z-]+\s*:\s*#", text):
                continue  # CSS custom properties of the HTML report, not options
            # hyphenated names (--gpus-per-task) are other tools' options (SLURM, torchrun); ours use underscores
            for option in re.findall(r"(?<![\w-])--([a-z][a-z0-9_]*)(?![\w-])", text):
                if option not in known:
                    missing.setdefault(option, []).append(path.relative_to(ROOT).as_posix())
    assert not missing, f"messages name options no command has: {missing}"


def test_train_short_video_hint_names_an_existing_option(world, tmp_path, capsys):
    """The too-short reason of the dataset (train, reconstruct, encode) suggests options they all have."""
    from wfvae.data.datasets import VideoFolderDataset

    write_video(tmp_path / "v" / "short.mp4", make_synthetic_video(4, 32, 32, seed=1), fps=12)
    write_video(tmp_path / "v" / "ok.mp4", make_synthetic_video(12, 32, 32, seed=1), fps=12)
    ds = VideoFolderDataset(tmp_path / "v", 9, 1, 32, train=False, cache_dir=tmp_path / "c")
    (reason,) = [r for p, r in ds.skipped]
    for command in ("train", "reconstruct", "encode"):
        check_hints(command, reason, capsys)


def test_dangling_symlink_is_reported(world, tmp_path):
    from wfvae.data.index import build_index

    _dangling(world, tmp_path)
    entries, _ = build_index(tmp_path / "src", cache_dir=tmp_path / "c")
    bad = {e.path: e.error for e in entries if e.error}
    assert "dangling symbolic link" in bad["gone.mp4"]


def test_nan_weights_warn_on_load(world, caplog):
    from wfvae import load_model

    with caplog.at_level("WARNING"):
        load_model(world["nan_model"])
    assert "hold NaN or Inf" in caplog.text


def test_error_boundary_keeps_tracebacks_for_bugs():
    from wfvae.errors import ConfigError, run_command

    def bug(argv):
        raise KeyError("a genuine bug")

    def mistake(argv):
        raise ConfigError("--x must be >= 1")

    with pytest.raises(KeyError):
        run_command("wfvae t", bug, [])
    assert run_command("wfvae t", mistake, []) == 2
    assert os.EX_OK == 0
