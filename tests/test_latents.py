"""wfvae encode / decode / latent-stats on real files."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wfvae.cli import main as cli
from wfvae.data.synthetic import make_synthetic_video
from wfvae.data.video_read import read_video
from wfvae.data.video_write import write_video
from wfvae.inference.latents import LatentStatsConfig, latent_stats, load_latents, read_index
from wfvae.models import build_model

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("latents")
    torch.manual_seed(0)
    model_dir = base / "model"
    build_model(ROOT / "examples" / "configs" / "wfvae_tiny.json").save_pretrained(model_dir)
    videos = base / "videos"
    for i, sub in enumerate(["a", "a", "b"]):
        write_video(videos / sub / f"c{i}.mp4", make_synthetic_video(10, 32, 40, seed=i), fps=12)
    return base, model_dir, videos


def _encode(setup, out, *extra):
    base, model_dir, videos = setup
    return cli(["encode", "--video_path", str(videos), "--ckpt", str(model_dir), "--out", str(out),
                "--num_frames", "9", "--resolution", "32", "--device", "cpu", "--cache_dir", str(base / "cache"), *extra])


def test_encode_is_sharded_indexed_and_resumable(setup, tmp_path, capsys):
    base, model_dir, videos = setup
    out = tmp_path / "lat"
    assert _encode(setup, out, "--shard_size", "2", "--sample") == 0
    index = json.loads((out / "index.json").read_text())
    assert [r["source"] for r in index] == ["a/c0.mp4", "a/c1.mp4", "b/c2.mp4"]
    assert sorted(p.name for p in out.glob("shard-*.safetensors")) == ["shard-r0-00000.safetensors", "shard-r0-00001.safetensors"]
    r = index[0]
    assert r["latent_shape"] == [4, 3, 4, 4] and r["frames"] == 9 and r["fps"] == 12 and r["has_sample"]
    assert len(r["model_config_hash"]) == 16 and r["scale_shift_applied"] is False
    capsys.readouterr()
    # a new video appears; a second run encodes only that one
    write_video(videos / "b" / "new.mp4", make_synthetic_video(10, 32, 40, seed=9), fps=12)
    try:
        assert _encode(setup, out, "--shard_size", "2", "--sample") == 0
        assert "encoded 1 videos (3 already done)" in capsys.readouterr().out
        assert len(json.loads((out / "index.json").read_text())) == 4
    finally:
        (videos / "b" / "new.mp4").unlink()


def test_decode_round_trip_equals_reconstruct(setup, tmp_path, capsys):
    base, model_dir, videos = setup
    # the kernels of both paths must match for equal bits: under --max_memory_gb, reconstruct and decode run the
    # direct kernels, and a plain encode's --conv auto may time Winograd faster for a shape on a loaded machine
    assert _encode(setup, tmp_path / "lat", "--conv", "direct") == 0
    # --max_memory_gb: chunk sizes chosen from the budget (exact, so the videos still agree)
    assert cli(["decode", "--latents", str(tmp_path / "lat"), "--ckpt", str(model_dir), "--out",
                str(tmp_path / "dec"), "--format", "mkv", "--max_memory_gb", "0.5"]) == 0
    assert cli(["reconstruct", "--real_video_dir", str(videos), "--generated_video_dir", str(tmp_path / "rec"),
                "--ckpt", str(model_dir), "--num_frames", "9", "--resolution", "32", "--format", "mkv",
                "--device", "cpu", "--cache_dir", str(base / "cache"), "--max_memory_gb", "0.5"]) == 0
    capsys.readouterr()
    assert cli(["decode", "--latents", str(tmp_path / "lat"), "--ckpt", str(model_dir), "--out",
                str(tmp_path / "dec_small"), "--max_memory_gb", "1e-9"]) == 2
    assert "is too small to decode" in capsys.readouterr().err
    for rel in ["a/c0.mkv", "a/c1.mkv", "b/c2.mkv"]:
        decoded, recon = read_video(tmp_path / "dec" / rel), read_video(tmp_path / "rec" / rel)
        assert decoded.shape == recon.shape == (9, 32, 32, 3)
        np.testing.assert_array_equal(decoded, recon)


def test_latent_stats_match_direct_computation_and_scale_shift(setup, tmp_path, capsys):
    assert _encode(setup, tmp_path / "lat") == 0
    stats = latent_stats(LatentStatsConfig(latents=str(tmp_path / "lat")))
    allz = torch.cat([z.double().reshape(z.shape[0], -1) for _, z in load_latents(tmp_path / "lat")], dim=1)
    torch.testing.assert_close(torch.tensor(stats["mean"], dtype=torch.float64), allz.mean(1), atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.tensor(stats["std"], dtype=torch.float64), allz.std(1, correction=0), atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.tensor(stats["scale"], dtype=torch.float64), 1 / allz.std(1, correction=0), atol=1e-10, rtol=0)
    assert cli(["latent-stats", "--latents", str(tmp_path / "lat"), "--json", str(tmp_path / "s.json")]) == 0
    printed = capsys.readouterr().out
    assert '"scale": [' in printed and json.loads((tmp_path / "s.json").read_text())["videos"] == 3
    # stored with the config's scale/shift: the decoder-side inverse recovers the raw latents
    assert _encode(setup, tmp_path / "scaled", "--apply_scale_shift") == 0
    raw = {r["source"]: z for r, z in load_latents(tmp_path / "lat")}
    for r, z in load_latents(tmp_path / "scaled"):
        assert r["scale_shift_applied"]
        torch.testing.assert_close(z, raw[r["source"]] * 1.0, atol=1e-6, rtol=0)  # tiny config: scale 1, shift 0


def test_latent_stats_on_empty_folder_is_clear(tmp_path):
    with pytest.raises(ValueError, match="no latents"):
        latent_stats(LatentStatsConfig(latents=str(tmp_path)))


def _tamper_index(lat: Path, **fields) -> None:
    """Rewrite the first record of every index file of ``lat`` with ``fields``."""
    for part in [lat / "index.json", *lat.glob("index-r*.json")]:
        records = json.loads(part.read_text())
        records[0].update(fields)
        part.write_text(json.dumps(records))
    for part in lat.glob("index-r*.jsonl"):
        records = [json.loads(line) for line in part.read_text().splitlines()]
        records[0].update(fields)
        part.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.mark.parametrize("source", ["../escaped.mp4", "/ABS/escaped.mp4", "a/../../escaped.mp4", "..\\escaped.mp4"])
def test_decode_never_writes_outside_out(setup, tmp_path, capsys, source):
    base, model_dir, videos = setup
    lat = tmp_path / "lat"
    assert _encode(setup, lat) == 0
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()
    source = source.replace("/ABS", str(victim_dir))
    _tamper_index(lat, source=source)
    out = tmp_path / "work" / "out"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    capsys.readouterr()
    assert cli(["decode", "--latents", str(lat), "--ckpt", str(model_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "outside --out" in err and repr(source) in err and "Traceback" not in err
    # nothing was written anywhere: not the escaped file, not even the other records
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_decode_refuses_symlink_inside_out_and_shard_paths(setup, tmp_path, capsys):
    base, model_dir, videos = setup
    lat = tmp_path / "lat"
    assert _encode(setup, lat) == 0
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").symlink_to(outside, target_is_directory=True)  # a/c0.mp4 would land in outside/
    capsys.readouterr()
    assert cli(["decode", "--latents", str(lat), "--ckpt", str(model_dir), "--out", str(out)]) == 2
    assert "through a symlink" in capsys.readouterr().err
    assert list(outside.iterdir()) == []
    # a shard name that points elsewhere is refused the same way (it is read, never followed)
    (out / "a").unlink()
    _tamper_index(lat, shard="../../etc/passwd")
    assert cli(["decode", "--latents", str(lat), "--ckpt", str(model_dir), "--out", str(out)]) == 2
    assert "'..'" in capsys.readouterr().err


def test_safe_join_accepts_nested_names_and_refuses_escapes(tmp_path):
    from wfvae.errors import UnsafePathError
    from wfvae.utils.paths import safe_join

    assert safe_join(tmp_path, "a/b/c.mp4") == tmp_path / "a" / "b" / "c.mp4"
    assert safe_join(tmp_path, "./x.mp4") == tmp_path / "x.mp4"
    for bad in ["", "..", "a/../../b", "/etc/passwd", "C:\\x.mp4", "\\\\server\\share\\x", "a\x00b", "."]:
        with pytest.raises(UnsafePathError):
            safe_join(tmp_path, bad)


def test_older_json_index_and_a_torn_line_are_read_and_resumed(setup, tmp_path, capsys):
    """A folder an older version wrote (whole-file index-r0.json), plus the torn first append of a newer
    version killed after upgrading: both read, the fragment is cut away, the rerun adds only the new video."""
    base, model_dir, videos = setup
    out = tmp_path / "lat"
    assert _encode(setup, out, "--shard_size", "2") == 0
    part = out / "index-r0.jsonl"
    records = [json.loads(line) for line in part.read_text().splitlines()]
    assert len(records) == 3 and part.read_text().count("\n") == 3  # one line per video
    (out / "index-r0.json").write_text(json.dumps(records, indent=1))  # as the older version left it
    with open(out / "wfvae-outputs-r0.txt", "a") as f:  # which it had published (claimed) as its output
        f.write("index-r0.json\n")
    part.write_bytes(b'{"key": "v0000003r0", "shard": "shard-r0-000')  # killed inside its first append
    assert [r["source"] for r in read_index(out)] == ["a/c0.mp4", "a/c1.mp4", "b/c2.mp4"]
    capsys.readouterr()
    write_video(videos / "b" / "new.mp4", make_synthetic_video(10, 32, 40, seed=9), fps=12)
    try:
        assert _encode(setup, out, "--shard_size", "2") == 0
        assert "encoded 1 videos (3 already done)" in capsys.readouterr().out
    finally:
        (videos / "b" / "new.mp4").unlink()
    appended = [json.loads(line) for line in part.read_text().splitlines()]  # no fragment left
    assert [r["source"] for r in appended] == ["b/new.mp4"] and appended[0]["key"] not in {r["key"] for r in records}
    merged = json.loads((out / "index.json").read_text())
    assert [r["source"] for r in merged] == ["a/c0.mp4", "a/c1.mp4", "b/c2.mp4", "b/new.mp4"] == [
        r["source"] for r in read_index(out)]
    assert latent_stats(LatentStatsConfig(latents=str(out)))["videos"] == 4  # every record's tensor is there
