"""Downloads on first use, against a real HTTP server on 127.0.0.1 (tests never reach the internet).

The server serves files the tests make, honours ``Range: bytes=N-`` with 206 answers, and can cut
the connection in the middle of a file (once, or always) to simulate a broken transfer.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import torch

from wfvae.downloads import (
    REMOTE_FILES,
    DownloadError,
    RemoteFile,
    fetch_file,
    fetch_torch_hub_checkpoint,
)
from wfvae.errors import MissingWeightsError


class _Server:
    """Threaded HTTP server; ``files`` maps URL path -> bytes, ``cut`` URL path -> times to cut."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                owner.requests.append((self.path, self.headers.get("Range")))
                body = owner.files.get(self.path)
                if body is None:
                    self.send_error(404, "no such file")
                    return
                start = 0
                range_header = self.headers.get("Range")
                if range_header and range_header.startswith("bytes=") and range_header.endswith("-"):
                    start = int(range_header[len("bytes="):-1])
                    if start >= len(body):
                        self.send_error(416, "range not satisfiable")
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                rest = body[start:]
                self.send_header("Content-Length", str(len(rest)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if owner.cut.get(self.path, 0) > 0:
                    owner.cut[self.path] -= 1
                    self.wfile.write(rest[: len(rest) // 2])  # half the promised bytes, then hang up
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(rest)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def gets(self, path: str) -> list[str | None]:
        return [rng for p, rng in self.requests if p == path]


@pytest.fixture
def server():
    s = _Server()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture
def online(monkeypatch):
    """Downloads allowed (conftest turns them off for every other test)."""
    monkeypatch.delenv("WFVAE_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def _remote(server: _Server, name: str, data: bytes, sha256: str | None = "auto", **kw) -> RemoteFile:
    server.files[f"/{name}"] = data
    digest = hashlib.sha256(data).hexdigest() if sha256 == "auto" else sha256
    return RemoteFile(filename=name, urls=(server.url(f"/{name}"),), what="a test file", sha256=digest,
                      option="--test_weights", env_var="TEST_WEIGHTS_PATH", **kw)


def test_download_is_verified_cached_and_not_fetched_again(server, online, tmp_path):
    data = bytes(range(256)) * 4000  # ~1 MB
    remote = _remote(server, "w.bin", data)
    path = fetch_file(remote, cache_dir=tmp_path, progress=False)
    assert path == tmp_path / "w.bin" and path.read_bytes() == data
    assert (tmp_path / "w.bin.sha256").read_text().split()[0] == hashlib.sha256(data).hexdigest()
    assert not (tmp_path / "w.bin.part").exists()
    assert fetch_file(remote, cache_dir=tmp_path, progress=False) == path
    assert server.gets("/w.bin") == [None]  # one request in all: the second call used the cache


def test_broken_transfer_is_resumed_with_a_range_request(server, online, tmp_path):
    data = bytes(range(256)) * 3000
    remote = _remote(server, "r.bin", data)
    server.cut["/r.bin"] = 1  # the first transfer stops half way
    path = fetch_file(remote, cache_dir=tmp_path, progress=False)
    assert path.read_bytes() == data
    half = len(data) // 2
    assert server.gets("/r.bin") == [None, f"bytes={half}-"]


def test_partial_file_survives_a_failed_call_and_the_next_call_resumes(server, online, tmp_path):
    data = b"0123456789abcdef" * 20000
    remote = _remote(server, "p.bin", data)
    server.cut["/p.bin"] = 1
    with pytest.raises(DownloadError, match=r"partial file .*p\.bin\.part.* is kept") as info:
        fetch_file(remote, cache_dir=tmp_path, progress=False, attempts=1)
    assert "--test_weights" in str(info.value) and "TEST_WEIGHTS_PATH" in str(info.value)
    assert (tmp_path / "p.bin.part").stat().st_size == len(data) // 2
    assert not (tmp_path / "p.bin").exists()
    assert fetch_file(remote, cache_dir=tmp_path, progress=False).read_bytes() == data
    assert server.gets("/p.bin")[-1] == f"bytes={len(data) // 2}-"


def test_hash_mismatch_is_refused_and_nothing_is_cached(server, online, tmp_path):
    remote = _remote(server, "bad.bin", b"tampered bytes" * 100, sha256="0" * 64)
    with pytest.raises(DownloadError, match=r"refused .*bad\.bin.*SHA-256 .* differs .*Nothing was cached"):
        fetch_file(remote, cache_dir=tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == []
    # a failed verification by the loader is refused the same way
    remote = _remote(server, "unloadable.pt", b"not a checkpoint", sha256=None)

    def must_load(path: Path) -> None:
        torch.load(path, weights_only=True)

    with pytest.raises(DownloadError, match="does not load as a test file"):
        fetch_file(remote, cache_dir=tmp_path, verify=must_load, progress=False)
    assert not (tmp_path / "unloadable.pt").exists() and not (tmp_path / "unloadable.pt.part").exists()


def test_offline_never_touches_the_network(server, tmp_path, monkeypatch):
    remote = _remote(server, "o.bin", b"x" * 10)
    # conftest sets WFVAE_OFFLINE=1; the message names the file, the option, the variables
    with pytest.raises(MissingWeightsError) as info:
        fetch_file(remote, cache_dir=tmp_path)
    message = str(info.value)
    for word in ("o.bin", "--test_weights", "TEST_WEIGHTS_PATH", "WFVAE_OFFLINE=1 is set", "--offline",
                 "$HF_HUB_OFFLINE", str(tmp_path / "o.bin")):
        assert word in message, word
    monkeypatch.delenv("WFVAE_OFFLINE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError, match="HF_HUB_OFFLINE=1 is set"):
        fetch_file(remote, cache_dir=tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(MissingWeightsError, match="--offline was given"):
        fetch_file(remote, cache_dir=tmp_path, offline=True)
    assert server.requests == []
    # a cached file is used offline
    (tmp_path / "o.bin").write_bytes(b"x" * 10)
    assert fetch_file(remote, cache_dir=tmp_path, offline=True) == tmp_path / "o.bin"


def test_http_errors_name_the_url_and_the_manual_way(server, online, tmp_path):
    remote = RemoteFile(filename="gone.bin", urls=(server.url("/gone.bin"),), what="a test file",
                        option="--test_weights")
    with pytest.raises(DownloadError, match=r"HTTP 404[\s\S]*--test_weights PATH"):
        fetch_file(remote, cache_dir=tmp_path, progress=False)
    assert len(server.requests) == 1  # a server's 'no' is not retried


def test_second_url_is_used_when_the_first_fails(server, online, tmp_path):
    data = b"mirror" * 1000
    server.files["/mirror/m.bin"] = data
    remote = RemoteFile(filename="m.bin", urls=(server.url("/missing/m.bin"), server.url("/mirror/m.bin")),
                        what="a test file", sha256=hashlib.sha256(data).hexdigest())
    assert fetch_file(remote, cache_dir=tmp_path, progress=False).read_bytes() == data


def test_torch_hub_checkpoint_hash_prefix_checked_and_cached_in_torch_home(server, online, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    data = b"trunk weights" * 1000
    prefix = hashlib.sha256(data).hexdigest()[:8]
    server.files["/good.pth"] = data
    good = RemoteFile(filename=f"trunk-{prefix}.pth", urls=(server.url("/good.pth"),), what="a trunk",
                      option="--lpips_backbone_path")
    path = fetch_torch_hub_checkpoint(good, progress=False)
    assert path == tmp_path / "torch_home" / "hub" / "checkpoints" / f"trunk-{prefix}.pth"
    assert path.read_bytes() == data
    bad = RemoteFile(filename="trunk-deadbeef.pth", urls=(server.url("/good.pth"),), what="a trunk")
    with pytest.raises(DownloadError, match="refused .*trunk-deadbeef.pth"):
        fetch_torch_hub_checkpoint(bad, progress=False)
    assert not (path.parent / "trunk-deadbeef.pth").exists()
    assert not [p for p in path.parent.iterdir() if p.name not in (path.name,) and not p.name.endswith(".lock")]


def test_registry_entries_are_replaced_for_a_block_only():
    original = REMOTE_FILES["i3d_styleganv"]
    stand_in = RemoteFile(filename="i3d_torchscript.pt", urls=("http://127.0.0.1:9/x",), what="x")
    with REMOTE_FILES.replaced(i3d_styleganv=stand_in):
        assert REMOTE_FILES["i3d_styleganv"] is stand_in
    assert REMOTE_FILES["i3d_styleganv"] is original
    with pytest.raises(KeyError, match="unknown remote files"):
        with REMOTE_FILES.replaced(not_a_file=stand_in):
            pass
    # the defaults point at the public locations
    assert REMOTE_FILES["lpips_vgg"].urls == ("https://download.pytorch.org/models/vgg16-397923af.pth",)
    assert REMOTE_FILES["i3d_styleganv"].urls[0].startswith("https://www.dropbox.com/")


# ---------------------------------------------------------------------------------------------
# The weights of the metrics, end to end: `wfvae evaluate --metric lpips,fvd` with nothing placed
# ---------------------------------------------------------------------------------------------


class _TinyDetector(torch.nn.Module):
    """Stands in for StyleGAN-V's TorchScript I3D: same call signature, 400-d output."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 400)

    def forward(self, x: torch.Tensor, rescale: bool = True, resize: bool = True, return_features: bool = False):
        return self.proj(x.mean(dim=(2, 3, 4))) + x.std(dim=(2, 3, 4)).sum(dim=1, keepdim=True)


def _metric_weights_server(server: _Server, tmp_path: Path) -> dict[str, RemoteFile]:
    """Serve a TorchScript detector and an AlexNet trunk (random values, real formats)."""
    import io

    import torchvision

    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(_TinyDetector()), buffer)
    server.files["/i3d_torchscript.pt"] = buffer.getvalue()
    trunk = {k: v for k, v in torchvision.models.alexnet(weights=None).state_dict().items()
             if k.startswith("features.")}
    buffer = io.BytesIO()
    torch.save(trunk, buffer)
    data = buffer.getvalue()
    name = f"alexnet-test-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    server.files["/" + name] = data
    return {
        "i3d_styleganv": RemoteFile(filename="i3d_torchscript.pt", urls=(server.url("/i3d_torchscript.pt"),),
                                    what=REMOTE_FILES["i3d_styleganv"].what, option="--fvd_weights",
                                    env_var="WFVAE_I3D_PATH"),
        "lpips_alex": RemoteFile(filename=name, urls=(server.url("/" + name),), what=REMOTE_FILES["lpips_alex"].what,
                                 option="--lpips_backbone_path", env_var="WFVAE_LPIPS_BACKBONE"),
    }


def test_evaluate_lpips_fvd_downloads_on_first_use_and_fails_clearly_offline(
    server, video_dir, tmp_path, monkeypatch, capsys
):
    from wfvae.cli import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("WFVAE_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("WFVAE_I3D_PATH", "WFVAE_LPIPS_BACKBONE", "WFVAE_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    argv = ["evaluate", "--real_video_dir", str(video_dir), "--generated_video_dir", str(video_dir),
            "--metric", "lpips,fvd", "--num_frames", "5", "--resolution", "32", "--subset_size", "2", "--num_workers", "0",
            "--device", "cpu"]
    with REMOTE_FILES.replaced(**_metric_weights_server(server, tmp_path)):
        # offline first: nothing cached, a clear message, no request
        assert main([*argv, "--offline"]) == 2  # a user-fixable error: one line, exit 2
        err = capsys.readouterr().err
        assert "alexnet-test-" in err and "--lpips_backbone_path" in err and "WFVAE_OFFLINE" in err
        assert "--offline was given" in err and server.requests == []
        # online: both files are downloaded and the metrics computed
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "lpips: 0.0000" in out and "fvd: " in out
        assert (tmp_path / "cache" / "i3d_torchscript.pt").is_file()
        assert len(list((tmp_path / "torch_home" / "hub" / "checkpoints").glob("alexnet-test-*.pth"))) == 1
        fetched = len(server.requests)
        assert fetched == 2
        # offline again: the cached copies serve, the network is not touched
        monkeypatch.setenv("WFVAE_OFFLINE", "1")
        assert main(argv) == 0
        assert len(server.requests) == fetched


def test_detector_download_that_does_not_load_is_refused(server, tmp_path, monkeypatch, online):
    from wfvae.evaluation.fvd import load_i3d

    monkeypatch.setenv("WFVAE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("WFVAE_I3D_PATH", raising=False)
    server.files["/i3d_pretrained_400.pt"] = b"<html>a login page, not weights</html>"
    stand_in = RemoteFile(filename="i3d_pretrained_400.pt", urls=(server.url("/i3d_pretrained_400.pt"),),
                          what="the VideoGPT I3D detector", option="--fvd_weights")
    with REMOTE_FILES.replaced(i3d_videogpt=stand_in):
        with pytest.raises(DownloadError, match="does not load as the VideoGPT I3D detector"):
            load_i3d("videogpt")
    assert not (tmp_path / "cache" / "i3d_pretrained_400.pt").exists()
    # an explicit path wins over the cache and never triggers a download
    with pytest.raises(MissingWeightsError, match="from --fvd_weights"):
        load_i3d("videogpt", tmp_path / "typo.pt")
    assert len(server.requests) == 1


def test_training_with_perceptual_weight_downloads_the_vgg_trunk(server, tmp_path, monkeypatch, online):
    """`wfvae train --perceptual_weight 1` on a machine where torchvision's URL is reachable."""
    import io

    from train_utils import base_args, make_data, read_metrics, run_dir

    from wfvae.networks.lpips import load_lpips
    from wfvae.training.trainer import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("WFVAE_LPIPS_BACKBONE", raising=False)
    torch.manual_seed(0)
    # a torchvision-layout VGG16 trunk ("features.<i>.*") with random values
    trunk = {f"features.{k.split('.', 2)[1]}.{k.split('.', 2)[2]}": v
             for k, v in load_lpips("vgg", random_backbone=True).net.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(trunk, buffer)
    data = buffer.getvalue()
    name = f"vgg16-test-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    server.files["/" + name] = data
    stand_in = RemoteFile(filename=name, urls=(server.url("/" + name),), what="VGG16 trunk",
                          option="--lpips_backbone_path")
    paths = make_data(tmp_path / "data")
    argv = base_args(paths, tmp_path / "ckpt", perceptual_weight=1.0, max_steps=1, eval_video_path=None)
    with REMOTE_FILES.replaced(lpips_vgg=stand_in):
        assert main([*argv, "--offline"]) == 2  # nothing cached and downloads off: a clear refusal
        assert server.requests == []
        assert main(argv) == 0
    assert (tmp_path / "torch_home" / "hub" / "checkpoints" / name).is_file()
    record = next(r for r in read_metrics(run_dir(tmp_path / "ckpt")) if "train/loss" in r)
    assert record["train/loss_lpips"] > 0  # the downloaded trunk is in use
