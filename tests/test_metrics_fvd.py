"""FVD: Frechet distance against scipy and closed forms; I3D loading from files the tests write."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from scipy import linalg

from wfvae.errors import CheckpointError, MissingWeightsError
from wfvae.evaluation import fvd as fvd_mod
from wfvae.evaluation.fvd import (
    fvd_from_features,
    frechet_distance_from_stats,
    load_i3d,
)
from wfvae.networks.i3d import I3D_ENV_VAR, InceptionI3D


def _scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Textbook formula with scipy's general matrix square root."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(root)))


def test_frechet_matches_scipy_and_is_symmetric():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(64, 8))
    b = rng.normal(loc=0.3, scale=1.5, size=(80, 8)) @ rng.normal(size=(8, 8))
    ab, ba = fvd_from_features(a, b), fvd_from_features(b, a)
    assert ab == pytest.approx(_scipy_frechet(a, b), rel=1e-8)
    assert ab == pytest.approx(ba, rel=1e-10)
    assert ab > 1.0


def test_frechet_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)  # 5 + 1 + 0 + 4
    got = frechet_distance_from_stats(mu1, np.diag(v1), mu2, np.diag(v2))
    assert got == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(10.0)


def test_frechet_of_a_set_with_itself_is_zero_even_rank_deficient(caplog):
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(10, 64)) * 5.0  # N << D: singular covariance
    with caplog.at_level(logging.WARNING, logger="wfvae.evaluation.fvd"):
        value = fvd_from_features(feats, feats.copy())
    assert _near_zero(value, feats)
    assert "rank-deficient" in caplog.text
    with pytest.raises(ValueError, match="N >= 2"):
        fvd_from_features(feats[:1], feats[:1])


def _near_zero(value: float, feats: np.ndarray) -> bool:
    """|value| within rounding of the FVD scale (trace of the covariance)."""
    return abs(value) <= 1e-10 * max(1.0, float(np.trace(np.cov(feats, rowvar=False))))


def _randomised_i3d(seed: int = 0, calibration: torch.Tensor | None = None) -> InceptionI3D:
    """Random I3D. With ``calibration`` (preprocessed videos), BatchNorm statistics are set from
    one forward pass on them: without that, a random deep network maps every input to almost the
    same features (covariance ~1e-13) and FVD tests would prove nothing."""
    torch.manual_seed(seed)
    model = InceptionI3D()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    for bn in bns:
        bn.momentum = None  # cumulative average: after one batch, running stats = batch stats
        bn.reset_running_stats()
    if calibration is not None:
        model.train()
        with torch.no_grad():
            model(calibration)
    for bn in bns:
        bn.momentum = 0.001
    return model.eval()


def test_i3d_state_dict_layout_matches_videogpt_keys():
    keys = InceptionI3D().state_dict()
    # 344 tensors, named like VideoGPT's i3d_pretrained_400.pt.
    assert len(keys) == 344
    for key in (
        "Conv3d_1a_7x7.conv3d.weight",
        "Conv3d_1a_7x7.bn.running_var",
        "Conv3d_2c_3x3.bn.num_batches_tracked",
        "Mixed_3b.b1b.conv3d.weight",
        "Mixed_4f.b3b.bn.bias",
        "Mixed_5c.b2a.conv3d.weight",
        "logits.conv3d.weight",
        "logits.conv3d.bias",
    ):
        assert key in keys, key
    assert tuple(keys["Mixed_5c.b0.conv3d.weight"].shape) == (384, 832, 1, 1, 1)
    assert tuple(keys["logits.conv3d.weight"].shape) == (400, 1024, 1, 1, 1)


def test_videogpt_i3d_roundtrip_and_fvd_self_zero(tmp_path):
    torch.manual_seed(1)
    videos = torch.randint(0, 256, (3, 3, 9, 32, 40), dtype=torch.uint8)  # resized to 224 inside
    preprocess = fvd_mod.I3DFeatureExtractor("videogpt", torch.nn.Identity()).preprocess
    model = _randomised_i3d(calibration=preprocess(videos[2:]))
    path = tmp_path / "i3d_pretrained_400.pt"
    torch.save(model.state_dict(), path)

    extractor = load_i3d("videogpt", path)
    loaded_sd = extractor.model.state_dict()
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded_sd[key], tensor), key

    feats = extractor(videos)
    assert feats.shape == (3, 400) and feats.dtype == np.float64
    with torch.no_grad():
        direct = model(extractor.preprocess(videos[:1])).double().numpy()
    np.testing.assert_allclose(feats[:1], direct, rtol=1e-4, atol=1e-5)  # batch 3 vs 1: float32 conv order
    assert np.trace(np.cov(feats, rowvar=False)) > 0.1  # features really depend on the video
    assert _near_zero(fvd_from_features(feats, feats), feats)

    first, last = feats[:2], feats[1:]  # two overlapping but different sets
    assert fvd_from_features(first, last) == pytest.approx(fvd_from_features(last, first), rel=1e-8)
    assert fvd_from_features(first, last) > 0.1

    with pytest.raises(ValueError, match="at least 9 frames"):
        extractor(videos[:, :, :8])


def test_videogpt_i3d_rejects_mismatched_state_dict(tmp_path):
    state = InceptionI3D().state_dict()
    del state["Mixed_4b.b0.conv3d.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="Mixed_4b.b0.conv3d.weight"):
        load_i3d("videogpt", path)


def test_missing_detector_names_file_and_option(tmp_path, monkeypatch):
    monkeypatch.delenv(I3D_ENV_VAR, raising=False)
    with pytest.raises(MissingWeightsError, match=r"i3d_torchscript\.pt.*--fvd_weights"):
        load_i3d("styleganv")
    with pytest.raises(MissingWeightsError, match=r"--fvd_weights.*i3d_pretrained_400\.pt"):
        load_i3d("videogpt", tmp_path / "nope.pt")
    monkeypatch.setenv(I3D_ENV_VAR, str(tmp_path / "also_missing.pt"))
    with pytest.raises(MissingWeightsError, match=I3D_ENV_VAR):
        load_i3d("videogpt")


class _TinyDetector(torch.nn.Module):
    """Stands in for StyleGAN-V's TorchScript I3D: same call signature, 400-d output."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 400)

    def forward(self, x: torch.Tensor, rescale: bool = True, resize: bool = True, return_features: bool = False):
        assert not rescale and not resize and return_features
        pooled = x.mean(dim=(2, 3, 4))  # (B, 3)
        return self.proj(pooled) + x.std(dim=(2, 3, 4)).sum(dim=1, keepdim=True)


def test_styleganv_torchscript_loading(tmp_path, monkeypatch):
    torch.manual_seed(0)
    scripted = torch.jit.script(_TinyDetector())
    path = tmp_path / "i3d_torchscript.pt"
    scripted.save(str(path))
    monkeypatch.setenv(I3D_ENV_VAR, str(path))  # found through the environment variable
    extractor = load_i3d("styleganv")
    videos = torch.rand(4, 3, 5, 30, 50) * 2 - 1
    prepared = extractor.preprocess(videos)
    assert prepared.shape == (4, 3, 5, 224, 224)
    assert float(prepared.min()) >= -1.0 and float(prepared.max()) <= 1.0
    feats = extractor(videos)
    assert feats.shape == (4, 400)
    assert _near_zero(fvd_from_features(feats, feats), feats)

    # A plain state dict is not a TorchScript archive: clear error pointing to the other variant.
    sd_path = tmp_path / "i3d_pretrained_400.pt"
    torch.save({"w": torch.zeros(1)}, sd_path)
    with pytest.raises(CheckpointError, match="--fvd_variant videogpt"):
        load_i3d("styleganv", sd_path)


def test_preprocess_keeps_224_input_and_crops_center():
    extractor = fvd_mod.I3DFeatureExtractor("styleganv", torch.nn.Identity())
    video = torch.linspace(-1, 1, 224 * 224).view(1, 1, 1, 224, 224).expand(1, 3, 2, 224, 224)
    torch.testing.assert_close(extractor.preprocess(video), video.float(), atol=1e-6, rtol=0)
    wide = torch.zeros(1, 3, 2, 112, 224, dtype=torch.uint8)
    wide[..., 112:] = 255  # right half white: after 2x upscale and centre crop, still half/half
    out = extractor.preprocess(wide)
    assert out.shape == (1, 3, 2, 224, 224)
    assert float(out[..., :, :100].max()) == -1.0 and float(out[..., :, 124:].min()) == 1.0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_videogpt_i3d_cuda_matches_cpu(tmp_path):
    path = tmp_path / "i3d_pretrained_400.pt"
    torch.save(_randomised_i3d().state_dict(), path)
    videos = torch.randint(0, 256, (2, 3, 16, 64, 64), dtype=torch.uint8)
    cpu = load_i3d("videogpt", path, device="cpu")(videos)
    gpu = load_i3d("videogpt", path, device="cuda")(videos)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-4)
