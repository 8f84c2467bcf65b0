"""Hugging Face Hub ids in ``load_model`` and the commands: a local folder laid out like the Hub cache
(``models--owner--name/{refs,snapshots}``), and a stand-in for the download function; no network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wfvae import load_model
from wfvae.downloads import hub_snapshot, parse_hub_id
from wfvae.errors import MissingWeightsError
from wfvae.models import build_model
from wfvae.models.loading import MODEL_FILES, resolve_pretrained

ROOT = Path(__file__).parents[1]
TINY = ROOT / "examples" / "configs" / "wfvae_tiny.json"
MAIN, TAGGED = "1" * 40, "2" * 40  # commit hashes of two snapshots


def _hub_cache(root: Path, repo: str = "owner/tiny-vae") -> tuple[Path, dict[str, torch.nn.Module]]:
    """A Hub cache holding two revisions of ``repo``: 'main' and the tag 'v1' (different weights)."""
    folder = root / f"models--{repo.replace('/', '--')}"
    models = {}
    for seed, (ref, commit) in enumerate((("main", MAIN), ("v1", TAGGED))):
        torch.manual_seed(seed)
        models[ref] = build_model(TINY)
        models[ref].save_pretrained(folder / "snapshots" / commit)
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / ref).write_text(commit)
    return root, models


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_hub_id_classification():
    assert parse_hub_id("chestnutlzj/WF-VAE-L-16Chn") == ("chestnutlzj/WF-VAE-L-16Chn", None)
    assert parse_hub_id("chestnutlzj/WF-VAE-L-16Chn@v1.0") == ("chestnutlzj/WF-VAE-L-16Chn", "v1.0")
    for local_looking in ("runs/exp/model.ckpt", "./owner/name", "~/models/x", "/abs/path", "a/b/c",
                          "name", "weights.safetensors", "out/model.safetensors", "a/b@"):
        assert parse_hub_id(local_looking) is None, local_looking


def test_existing_local_path_wins_over_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(3)
    local = build_model(TINY)
    local.save_pretrained(tmp_path / "owner" / "tiny-vae")  # a folder that looks like a Hub id
    assert resolve_pretrained("owner/tiny-vae") == Path("owner/tiny-vae")
    assert _same(load_model("owner/tiny-vae"), local)
    with pytest.raises(FileNotFoundError, match="not an existing local path, nor a Hub id"):
        load_model("runs/missing/model.ckpt")
    with pytest.raises(ValueError, match="applies to Hub ids"):
        load_model("owner/tiny-vae", revision="v1")


def test_cache_hit_revision_and_offline_miss_from_the_hub_cache(tmp_path):
    cache, models = _hub_cache(tmp_path / "hub")
    # offline: served from the cache, by branch, tag (@ or revision=) and commit
    assert hub_snapshot("owner/tiny-vae", files=MODEL_FILES, offline=True, cache_dir=cache).name == MAIN
    assert hub_snapshot("owner/tiny-vae@v1", files=MODEL_FILES, offline=True, cache_dir=cache).name == TAGGED
    assert hub_snapshot("owner/tiny-vae", "v1", files=MODEL_FILES, offline=True, cache_dir=cache).name == TAGGED
    assert hub_snapshot(f"owner/tiny-vae@{TAGGED}", files=MODEL_FILES, offline=True, cache_dir=cache).name == TAGGED
    with pytest.raises(ValueError, match="two revisions"):
        hub_snapshot("owner/tiny-vae@v1", "main", files=MODEL_FILES, offline=True, cache_dir=cache)
    with pytest.raises(MissingWeightsError) as info:
        hub_snapshot("owner/other-vae", files=MODEL_FILES, offline=True, cache_dir=cache)
    message = str(info.value)
    assert "owner/other-vae" in message and "--offline" in message and "HF_HUB_OFFLINE" in message
    with pytest.raises(MissingWeightsError, match="revision 'v2'"):
        hub_snapshot("owner/tiny-vae@v2", files=MODEL_FILES, offline=True, cache_dir=cache)


def test_load_model_with_a_hub_id_reads_the_hub_cache_and_never_the_network(tmp_path, monkeypatch):
    import huggingface_hub.constants

    cache, models = _hub_cache(tmp_path / "hub")
    # what HF_HUB_CACHE=<cache> sets when huggingface_hub starts (the CLI test below uses the variable)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert _same(load_model("owner/tiny-vae"), models["main"])
    assert _same(load_model("owner/tiny-vae@v1"), models["v1"])
    assert _same(load_model("owner/tiny-vae", revision="v1"), models["v1"])
    with pytest.raises(MissingWeightsError, match="'owner/absent' is not a local path and is not in the Hugging Face"):
        load_model("owner/absent")  # conftest's WFVAE_OFFLINE=1: the cache or nothing


def test_only_config_and_safetensors_are_requested(tmp_path, monkeypatch):
    """The download function is replaced by one that plays a Hub repository from a local folder."""
    import fnmatch

    import huggingface_hub

    torch.manual_seed(0)
    repos = {"owner/safetensors-vae": tmp_path / "repo1", "owner/ckpt-only": tmp_path / "repo2"}
    build_model(TINY).save_pretrained(repos["owner/safetensors-vae"])
    for name in ("pytorch_model.bin", "preview.mp4", "checkpoint-100.ckpt"):
        (repos["owner/safetensors-vae"] / name).write_bytes(b"x")
    repos["owner/ckpt-only"].mkdir()
    (repos["owner/ckpt-only"] / "config.json").write_text(TINY.read_text())
    model = build_model(TINY)
    torch.save({"state_dict": {"gen_model": model.state_dict()}}, repos["owner/ckpt-only"] / "checkpoint-7.ckpt")
    (repos["owner/ckpt-only"] / "optimizer.bin").write_bytes(b"x")
    calls = []

    def fake_snapshot_download(repo_id, *, revision=None, allow_patterns=None, local_files_only=False, **kw):
        calls.append((repo_id, revision, tuple(allow_patterns), local_files_only))
        out = tmp_path / "snapshots" / repo_id.replace("/", "--")
        out.mkdir(parents=True, exist_ok=True)
        for f in repos[repo_id].iterdir():
            if any(fnmatch.fnmatch(f.name, p) for p in allow_patterns):
                (out / f.name).write_bytes(f.read_bytes())
        return str(out)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    folder = hub_snapshot("owner/safetensors-vae@main", files=MODEL_FILES, offline=False)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert calls == [("owner/safetensors-vae", "main", ("config.json", "diffusion_pytorch_model.safetensors",
                                                        "model.safetensors"), False)]
    # no safetensors: the .ckpt (read weights-only) is fetched, never the pickled .bin
    loaded = load_model("owner/ckpt-only", offline=False)
    assert _same(loaded, model)
    assert sorted(p.name for p in (tmp_path / "snapshots" / "owner--ckpt-only").iterdir()) == [
        "checkpoint-7.ckpt", "config.json"]
    with pytest.raises(MissingWeightsError, match="allow_ckpt=False"):
        hub_snapshot("owner/ckpt-only", files=MODEL_FILES, offline=False, allow_ckpt=False)


def test_commands_accept_a_hub_id(tmp_path, video_dir):
    """`wfvae encode --ckpt owner/name --offline` reads the Hub cache (fresh process, real CLI)."""
    cache, _ = _hub_cache(tmp_path / "hub")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "PYTHONPATH": str(ROOT / "src")}
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("WFVAE_OFFLINE", None)
    cmd = [sys.executable, "-m", "wfvae", "encode", "--video_path", str(video_dir), "--ckpt", "owner/tiny-vae@v1",
           "--out", str(tmp_path / "latents"), "--num_frames", "5", "--resolution", "16", "--device", "cpu",
           "--offline"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(json.loads((tmp_path / "latents" / "index.json").read_text())) == 4
    missing = subprocess.run([*cmd[:7], "owner/absent", *cmd[8:]], env=env, capture_output=True, text=True,
                             timeout=900)
    assert missing.returncode == 2
    assert "owner/absent" in missing.stderr and "--offline was given" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_train_accepts_a_hub_id_as_pretrained_model(tmp_path, monkeypatch, video_dir, capsys):
    import huggingface_hub.constants

    from wfvae.training.trainer import main

    cache, _ = _hub_cache(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    argv = ["--model_name", "WFVAE", "--video_path", str(video_dir), "--num_frames", "9", "--resolution", "16",
            "--report_to", "none", "--perceptual_weight", "0", "--ckpt_dir", str(tmp_path / "ckpt"), "--check_only"]
    assert main([*argv, "--pretrained_model_name_or_path", "owner/tiny-vae@v1"]) == 0
    assert main([*argv, "--pretrained_model_name_or_path", "owner/absent"]) == 2  # offline (conftest), not cached
    assert main([*argv, "--pretrained_model_name_or_path", "no/such/folder"]) == 2
    err = capsys.readouterr().err
    assert "'owner/absent' is not a local path" in err and "is not a Hub id" in err
