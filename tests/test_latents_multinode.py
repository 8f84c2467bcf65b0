"""``wfvae encode`` under torchrun on a manifest: 2 gloo ranks, one killed midway, a rerun completes
with every video exactly once and every record pointing at a tensor that exists."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open

from train_utils import TINY_WFVAE, free_port, subprocess_env
from wfvae.data.manifest import write_manifest
from wfvae.data.synthetic import make_synthetic_video
from wfvae.data.video_write import write_video
from wfvae.inference.latents import read_index

N_VIDEOS = 8


def _torchrun(script, tmp_path, *args, **env) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), str(script), *map(str, args)]
    return subprocess.run(cmd, env={**subprocess_env(), **env}, capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)


@pytest.mark.slow
def test_encode_two_ranks_killed_midway_then_resumed(tmp_path):
    from wfvae.models import build_model

    data = tmp_path / "data"
    for i in range(N_VIDEOS):
        write_video(data / f"g{i % 3}" / f"v{i}.mp4", make_synthetic_video(9, 32, 32, seed=i), fps=12)
    manifest = write_manifest(tmp_path / "train.jsonl",
                              [{"path": f"data/g{i % 3}/v{i}.mp4", "num_frames": 9, "fps": 12, "height": 32,
                                "width": 32} for i in range(N_VIDEOS)])
    torch.manual_seed(0)
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY_WFVAE))
    build_model(cfg).save_pretrained(tmp_path / "model")
    out = tmp_path / "lat"
    encode = ["encode", "--video_path", manifest, "--ckpt", tmp_path / "model", "--out", out, "--num_frames", "9",
              "--resolution", "32", "--device", "cpu", "--shard_size", "1", "--cache_dir", tmp_path / "cache"]

    # Rank 1 is killed (SIGKILL, no clean-up) in the middle of appending its second shard's record:
    # the shard is on disk, half of its index line is.
    script = tmp_path / "encode_with_fault.py"
    script.write_text(textwrap.dedent("""
        import json, os, signal, sys
        from wfvae.inference import latents

        rank = int(os.environ["RANK"])
        kill_after = int(os.environ.get("KILL_RANK1_AFTER_SHARDS", "0"))
        appended = []
        real = latents._RankIndex.append

        def torn(self, records):  # the test's fault: rank 1 dies half way through its N-th index append
            appended.append(records)
            if rank == 1 and kill_after and len(appended) == kill_after:
                data = "".join(json.dumps(r) + "\\n" for r in records).encode()
                with open(self.path, "ab") as f:
                    f.write(data[: len(data) // 2])
                    f.flush()
                    os.fsync(f.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
            real(self, records)

        latents._RankIndex.append = torn
        sys.exit(latents.main(sys.argv[1:]))
    """))
    first = _torchrun(script, tmp_path, *encode, KILL_RANK1_AFTER_SHARDS="2")
    assert first.returncode != 0, "the killed run should fail"
    assert not (out / "index-r1.jsonl").read_bytes().endswith(b"\n")  # the fault happened: a torn last line
    partial = read_index(out)
    assert 0 < len(partial) < N_VIDEOS, [r["source"] for r in partial]
    assert len([r for r in partial if "-r1-" in r["shard"]]) == 1  # the torn record is not one

    second = _torchrun(script, tmp_path, *encode)
    assert second.returncode == 0, second.stderr[-3000:]
    records = json.loads((out / "index.json").read_text())
    sources = [r["source"] for r in records]
    assert sorted(sources) == sorted(f"data/g{i % 3}/v{i}.mp4" for i in range(N_VIDEOS))  # no gaps, no duplicates
    assert {r["key"] for r in partial} <= {r["key"] for r in records}  # finished work was kept, not redone
    assert {r["shard"].split("-")[1] for r in records} == {"r0", "r1"}  # both ranks wrote shards
    assert sorted(records, key=lambda r: r["source"]) == read_index(out)
    for part in out.glob("index-r*.jsonl"):  # the torn fragment was cut away before appending again
        assert all(json.loads(line) for line in part.read_text().splitlines())
    for r in records:
        with safe_open(str(out / r["shard"]), framework="pt") as f:
            assert f.get_tensor(f"{r['key']}.mean").shape[0] == TINY_WFVAE["latent_dim"]
