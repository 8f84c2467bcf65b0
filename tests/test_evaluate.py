"""`wfvae evaluate` and examples/eval.sh on small folders of real video files."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from wfvae.cli import main as cli_main
from wfvae.data.synthetic import make_synthetic_video
from wfvae.data.transforms import clip_indices
from wfvae.data.video_read import read_video
from wfvae.data.video_write import write_video
from wfvae.evaluation import evaluate as E
from wfvae.evaluation.fvd import I3DFeatureExtractor, fvd_from_features
from wfvae.evaluation.loading import center_crop
from wfvae.evaluation.pairing import pair_videos
from wfvae.evaluation.metrics import PSNR_CAP_DB
from wfvae.networks.lpips import load_lpips

REPO = Path(__file__).resolve().parents[1]
NUM_FRAMES, SIZE = 9, 32



def _cfg(real, gen, metrics: str, **settings) -> E.EvalConfig:
    """An evaluation config as the Python API takes it (decoding in this process: cheap on a shared CPU)."""
    return E.EvalConfig(real_video_dir=str(real), generated_video_dir=str(gen), metric=metrics.split(","),
                        num_workers=0, **settings)

def _perturb(frames: np.ndarray, seed: int) -> np.ndarray:
    """A deterministic 'reconstruction': blocky noise of a few levels."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(-12, 13, size=(frames.shape[0], frames.shape[1] // 4, frames.shape[2] // 4, 3))
    noise = noise.repeat(4, axis=1).repeat(4, axis=2)
    return np.clip(frames.astype(np.int16) + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """gen/ holds lossless .mkv reconstructions plus origin/ with lossless .mp4 ground truth.

    One reconstruction is identical to its ground truth (PSNR cap), the others differ.
    """
    root = tmp_path_factory.mktemp("eval")
    gen = root / "gen"
    real = gen / "origin"
    keys = ["a", "sub/b", "sub/c"]
    for i, key in enumerate(keys):
        clip = make_synthetic_video(NUM_FRAMES, SIZE, SIZE, seed=i)
        write_video(real / f"{key}.mp4", clip, lossless=True)
        recon = clip if key == "a" else _perturb(clip, seed=10 + i)
        write_video(gen / f"{key}.mkv", recon, lossless=True)
    return real, gen, keys


def _expected(real: Path, gen: Path, key: str) -> tuple[np.ndarray, np.ndarray]:
    return read_video(real / f"{key}.mp4"), read_video(gen / f"{key}.mkv")


def test_psnr_ssim_dataset_values_match_skimage(folders):
    real, gen, keys = folders
    result = E.evaluate_folders(_cfg(real, gen, "psnr,ssim", num_frames=NUM_FRAMES, resolution=SIZE))
    assert [row["path"] for row in result["per_video"]] == keys  # origin/ was not paired with itself
    psnrs, ssims = [], []
    for key, row in zip(keys, result["per_video"]):
        a, b = _expected(real, gen, key)
        if key == "a":
            assert np.array_equal(a, b)
            psnrs.append(PSNR_CAP_DB)
        else:
            psnrs.append(peak_signal_noise_ratio(a, b, data_range=255))
        ssims.append(
            np.mean(
                [
                    structural_similarity(
                        a[t], b[t], gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                        data_range=255, channel_axis=-1,
                    )
                    for t in range(len(a))
                ]
            )
        )
        assert row["psnr"] == pytest.approx(psnrs[-1], abs=1e-9)
        assert row["ssim"] == pytest.approx(ssims[-1], abs=1e-6)  # float32 SSIM (issue 18): within 1e-6 of float64
    assert result["dataset"]["psnr"] == pytest.approx(np.mean(psnrs), abs=1e-9)
    assert result["dataset"]["ssim"] == pytest.approx(np.mean(ssims), abs=1e-6)
    assert result["psnr_capped_videos"] == 1
    assert result["psnr_cap_db"] == PSNR_CAP_DB
    assert any("100 dB" in note for note in result["notes"])


def test_lpips_and_fvd_are_dataset_level(folders):
    real, gen, keys = folders
    torch.manual_seed(0)
    lpips_model = load_lpips("alex", random_backbone=True)
    extractor = I3DFeatureExtractor("videogpt", _FeatureNet(), "cpu")
    result = E.evaluate_folders(
        _cfg(real, gen, "lpips,fvd", num_frames=NUM_FRAMES, resolution=SIZE, batch_size=2),
        lpips_model=lpips_model, fvd_extractor=extractor,
    )
    # LPIPS: mean over frames per video, then over videos.
    per_video = []
    for key in keys:
        a, b = _expected(real, gen, key)
        x = torch.from_numpy(a).permute(0, 3, 1, 2).float() / 127.5 - 1  # (T, 3, H, W)
        y = torch.from_numpy(b).permute(0, 3, 1, 2).float() / 127.5 - 1
        per_video.append(float(lpips_model(x, y).mean()))
    assert [row["lpips"] for row in result["per_video"]] == pytest.approx(per_video, abs=1e-6)
    assert per_video[0] == pytest.approx(0.0, abs=1e-7)
    assert result["dataset"]["lpips"] == pytest.approx(np.mean(per_video), abs=1e-6)
    # FVD: one Frechet distance over all videos' features (not a mean of per-batch values).
    to_video = lambda arr: torch.from_numpy(arr).permute(3, 0, 1, 2)  # noqa: E731
    real_feats = extractor(torch.stack([to_video(_expected(real, gen, k)[0]) for k in keys]))
    gen_feats = extractor(torch.stack([to_video(_expected(real, gen, k)[1]) for k in keys]))
    assert result["dataset"]["fvd"] == pytest.approx(fvd_from_features(real_feats, gen_feats), rel=1e-9)
    assert "fvd" not in result["per_video"][0]
    assert any("FVD from 3 videos" in note for note in result["notes"])


class _FeatureNet(torch.nn.Module):
    """Cheap deterministic stand-in for I3D (the real network is tested in test_metrics_fvd.py)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.nn.functional.adaptive_avg_pool3d(x, (1, 4, 4)).flatten(1)  # (B, 48)
        return torch.cat([pooled, pooled.square()], dim=1)  # (B, 96)


def test_sample_rate_applies_to_real_side_and_resize_crop(tmp_path):
    clip = make_synthetic_video(2 * NUM_FRAMES, 40, 56, seed=5)  # 18 frames, non-square
    write_video(tmp_path / "raw" / "v.mkv", clip, lossless=True)
    # Reconstruction of the frames the original samples with sample_rate 2 (linspace(0, 17, 9): 0, 2, ..., 14,
    # 17), already subsampled, same 40x56 size.
    write_video(tmp_path / "gen" / "v.mkv", clip[clip_indices(0, NUM_FRAMES, 2)], lossless=True)
    result = E.evaluate_folders(_cfg(tmp_path / "raw", tmp_path / "gen", "psnr", num_frames=NUM_FRAMES, sample_rate=2, resolution=32))
    assert result["dataset"]["psnr"] == PSNR_CAP_DB  # exact frame correspondence through resize + crop
    shifted = E.evaluate_folders(_cfg(tmp_path / "raw", tmp_path / "gen", "psnr", num_frames=NUM_FRAMES, sample_rate=1, resolution=32))
    assert shifted["dataset"]["psnr"] < 40


def test_center_crop_geometry():
    video = torch.arange(4 * 6, dtype=torch.uint8).view(1, 1, 4, 6).expand(3, 2, 4, 6)
    torch.testing.assert_close(center_crop(video, 4), video[:, :, :, 1:5])
    torch.testing.assert_close(center_crop(video, 0), video)
    with pytest.raises(ValueError, match="does not fit"):
        center_crop(video, 5)


def test_pairing_errors(tmp_path, folders):
    real, gen, _ = folders
    clip = make_synthetic_video(NUM_FRAMES, SIZE, SIZE, seed=0)
    extra = tmp_path / "gen"
    for key in ("a", "sub/b", "sub/c", "unmatched_gen"):
        write_video(extra / f"{key}.mkv", clip, lossless=True)
    with pytest.raises(ValueError, match=r"only in generated .*unmatched_gen\.mkv"):
        pair_videos(real, extra)
    with pytest.raises(ValueError, match=r"only in real .*sub/c\.mp4"):
        pair_videos(real, gen / "sub")
    # a.mp4 next to a.mkv: two videos, keyed a.mp4 / a.mkv, neither is taken for real a.mp4's partner
    write_video(extra / "a.mp4", clip, lossless=True)
    with pytest.raises(ValueError, match=r"(?s)only in generated .*a\.mkv.*a\.mp4"):
        pair_videos(real, extra)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pair_videos(tmp_path / "missing", gen)


def test_short_video_and_bad_metric_are_errors(folders, tmp_path):
    real, gen, _ = folders
    with pytest.raises(Exception, match="requested frames"):
        E.evaluate_folders(_cfg(real, gen, "psnr", num_frames=NUM_FRAMES + 1, resolution=SIZE))
    with pytest.raises(ValueError, match="choose from psnr, ssim, lpips, fvd"):
        E.evaluate_folders(_cfg(real, gen, "psnr,flolpips"))


def test_cli_prints_table_and_writes_json(folders, tmp_path, capsys):
    real, gen, keys = folders
    out_json = tmp_path / "m.json"
    rc = cli_main([
        "evaluate", "--real_video_dir", str(real), "--generated_video_dir", str(gen), "--metric", "psnr,ssim",
        "--num_frames", str(NUM_FRAMES), "--resolution", str(SIZE), "--num_workers", "0", "--json", str(out_json),
    ])
    assert rc == 0
    stdout = capsys.readouterr().out
    data = json.loads(out_json.read_text())  # strict JSON: no NaN / Infinity
    assert re.search(rf"^psnr: {data['dataset']['psnr']:.4f}$", stdout, re.M)
    assert re.search(rf"^ssim: {data['dataset']['ssim']:.4f}$", stdout, re.M)
    assert "psnr_cap_db: 100" in stdout
    assert all(key in stdout for key in keys)
    assert [row["path"] for row in data["per_video"]] == keys


def test_cli_fvd_without_weights_names_the_option(folders, monkeypatch, capsys):
    real, gen, _ = folders
    monkeypatch.delenv("WFVAE_I3D_PATH", raising=False)
    rc = cli_main(["evaluate", "--real_video_dir", str(real), "--generated_video_dir", str(gen), "--metric", "fvd",
                   "--num_frames", str(NUM_FRAMES), "--resolution", str(SIZE), "--device", "cpu"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--fvd_weights" in err and "i3d_torchscript.pt" in err and "WFVAE_I3D_PATH" in err


def test_eval_sh_end_to_end(tmp_path, alexnet_checkpoint):
    """The example script with spec-style variables on a video_gen/<name>/ + origin/ layout."""
    exp_dir = tmp_path / "video_gen" / f"smoke_sr1_nf{NUM_FRAMES}_res{SIZE}_subset0"
    for i, key in enumerate(["x", "y"]):
        clip = make_synthetic_video(NUM_FRAMES + 3, SIZE, SIZE, seed=20 + i)
        write_video(exp_dir / "origin" / f"{key}.mp4", clip, lossless=True)
        write_video(exp_dir / f"{key}.mkv", _perturb(clip, seed=i), lossless=True)
    env = {
        **os.environ,
        "EXP_NAME": "smoke", "NUM_FRAMES": str(NUM_FRAMES), "RESOLUTION": str(SIZE),
        "METRIC": "psnr,lpips", "PYTHON": sys.executable, "NUM_WORKERS": "0", "DEVICE": "cpu",
        "WFVAE_LPIPS_BACKBONE": str(alexnet_checkpoint),
    }
    proc = subprocess.run(
        ["bash", str(REPO / "examples" / "eval.sh")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    psnr_line = re.search(r"^psnr: (\d+\.\d{4})$", proc.stdout, re.M)
    lpips_line = re.search(r"^lpips: (\d+\.\d{4})$", proc.stdout, re.M)
    assert psnr_line and lpips_line, proc.stdout
    expected = E.evaluate_folders(_cfg(exp_dir / "origin", exp_dir, "psnr", num_frames=NUM_FRAMES, resolution=SIZE))
    assert float(psnr_line.group(1)) == pytest.approx(expected["dataset"]["psnr"], abs=1e-4)
    report = json.loads((exp_dir / "metrics_psnr_lpips.json").read_text())
    assert report["num_videos"] == 2 and 0 < report["dataset"]["lpips"] < 1


@pytest.fixture
def alexnet_checkpoint(tmp_path):
    import torchvision

    torch.manual_seed(0)
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    return path


def test_generated_origin_subfolder_is_skipped_even_when_real_is_elsewhere(folders, tmp_path):
    real, gen, keys = folders

    elsewhere = shutil.copytree(real, tmp_path / "real_copy")
    pairs = pair_videos(elsewhere, gen)
    assert [key for key, _, _ in pairs] == keys
    assert all("origin" not in gen_file.relative_to(gen).parts for _, _, gen_file in pairs)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_evaluate_on_cuda_1_opens_no_context_on_gpu_0(folders):
    """`--device cuda:1` scores on GPU 1 only: the loader's page-locked buffers and its pin thread
    follow the current device, which evaluate sets for the scoring and restores afterwards."""
    real, gen, _ = folders
    script = (
        "import json, sys, torch\n"
        "from wfvae.evaluation import evaluate as E\n"
        "cfg = E.EvalConfig(real_video_dir=sys.argv[1], generated_video_dir=sys.argv[2], metric=['psnr', 'ssim'],\n"
        f"                  num_frames={NUM_FRAMES}, resolution={SIZE}, num_workers=1, device=sys.argv[3])\n"
        "result = E.evaluate_folders(cfg)\n"
        "print(json.dumps({'dataset': result['dataset'], 'gpu0': bool(torch._C._cuda_hasPrimaryContext(0)),\n"
        "                  'gpu1': bool(torch._C._cuda_hasPrimaryContext(1))}))\n"
    )
    runs = {}
    for device in ("cuda:1", "cpu"):
        proc = subprocess.run([sys.executable, "-c", script, str(real), str(gen), device],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        runs[device] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert runs["cuda:1"]["gpu1"] and not runs["cuda:1"]["gpu0"]
    for name, value in runs["cpu"]["dataset"].items():
        assert runs["cuda:1"]["dataset"][name] == pytest.approx(value, rel=1e-5)
