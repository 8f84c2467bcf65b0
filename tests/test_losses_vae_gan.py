"""VAE-GAN loss and 3D discriminator: key names of the original checkpoints and the loss arithmetic.

The reference values are computed here from the formulas written out independently (not by calling the
code under test), so a wrong reduction, weight or sign fails.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wfvae.losses.discriminator import NLayerDiscriminator3D
from wfvae.networks.lpips import load_lpips
from wfvae.losses.vae_gan_loss import (
    PerceptualLoss,
    VAEGANLoss,
    adaptive_generator_weight,
    build_loss,
    hinge_d_loss,
)
from wfvae.models.outputs import DiagonalGaussian


def _original_discriminator_keys(n_layers: int = 4) -> list[str]:
    """Keys of the original NLayerDiscriminator3D, derived from its layer list:
    conv, lrelu, then per stage (conv no-bias, bn, lrelu, dropout), then (conv no-bias, bn, lrelu, dropout), conv."""
    keys = ["main.0.weight", "main.0.bias"]
    idx = 2
    for _ in range(1, n_layers):
        keys += [f"main.{idx}.weight"]
        keys += [f"main.{idx + 1}.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
        idx += 4
    keys += [f"main.{idx}.weight"]
    keys += [f"main.{idx + 1}.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    idx += 4
    keys += [f"main.{idx}.weight", f"main.{idx}.bias"]
    return keys


def test_discriminator_keys_and_shapes_match_original_layout():
    d = NLayerDiscriminator3D(in_channels=3, base_channels=64, num_layers=4)
    sd = d.state_dict()
    assert list(sd) == _original_discriminator_keys(4)
    # channel plan 3 -> 64 -> 128 -> 256 -> 512 -> 512 -> 1, kernel 3
    assert sd["main.0.weight"].shape == (64, 3, 3, 3, 3)
    assert sd["main.2.weight"].shape == (128, 64, 3, 3, 3)
    assert sd["main.6.weight"].shape == (256, 128, 3, 3, 3)
    assert sd["main.10.weight"].shape == (512, 256, 3, 3, 3)
    assert sd["main.14.weight"].shape == (512, 512, 3, 3, 3)
    assert sd["main.18.weight"].shape == (1, 512, 3, 3, 3)
    out = NLayerDiscriminator3D(base_channels=8)(torch.randn(2, 3, 9, 32, 32))
    # time: 9 -> 5 (s2) -> 3 (s2) -> 3 -> 3 -> 3; space: 32 -> 16 -> 8 -> 4 -> 2 -> 2 -> 2
    assert out.shape == (2, 1, 3, 2, 2)


def test_discriminator_init_statistics():
    torch.manual_seed(0)
    d = NLayerDiscriminator3D(base_channels=64)
    w = d.main[14].weight
    assert abs(w.mean().item()) < 1e-3 and abs(w.std().item() - 0.02) < 1e-3
    bn = d.main[3]
    assert torch.all(bn.bias == 0) and abs(bn.weight.mean().item() - 1.0) < 0.01


@pytest.fixture(scope="module")
def perceptual():
    torch.manual_seed(0)
    return PerceptualLoss(load_lpips("vgg", random_backbone=True))


def test_perceptual_keys_match_original_lpips_and_values_match_package(perceptual):
    keys = list(perceptual.state_dict())
    assert keys[:2] == ["scaling_layer.shift", "scaling_layer.scale"]
    assert not any(k.startswith("lins.") for k in keys)
    assert [k for k in keys if k.startswith("lin")] == [f"lin{i}.model.1.weight" for i in range(5)]
    assert "net.slice1.0.weight" in keys and "net.slice5.28.bias" in keys
    # same distance as the lpips package computes with the same modules
    pkg = load_lpips("vgg", random_backbone=True)
    pkg.load_state_dict({**perceptual.state_dict(), **{f"lins.{i}.model.1.weight": perceptual.state_dict()[f"lin{i}.model.1.weight"] for i in range(5)}})
    a, b = torch.rand(3, 3, 32, 32) * 2 - 1, torch.rand(3, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(perceptual(a, b), pkg(a, b), rtol=1e-5, atol=1e-6)
    perceptual.train()
    assert not perceptual.training and not any(p.requires_grad for p in perceptual.parameters())


def _loss(perceptual, **kw):
    torch.manual_seed(1)
    defaults = {"disc_start": 0, "kl_weight": 1e-6, "disc_weight": 0.5, "perceptual_weight": 1.0, "wavelet_weight": 0.1}
    defaults.update(kw)
    return VAEGANLoss(perceptual, disc_num_layers=2, disc_base_channels=8, **defaults)


def test_dics_model_key_order_matches_original(perceptual):
    # nn.Module lists its own parameters first, then children in registration order (as the original's).
    keys = list(_loss(perceptual).state_dict())
    first_disc = keys.index("discriminator.main.0.weight")
    assert keys[0] == "logvar"
    assert keys[1] == "perceptual_loss.scaling_layer.shift"
    assert all(k.startswith("perceptual_loss.") for k in keys[1:first_disc])
    assert all(k.startswith("discriminator.") for k in keys[first_disc:])


def _reference_generator_loss(loss_fn, video, recon, posterior, wavelet, pixel="l1", with_adv=False, last_layer=None):
    b, c, t, h, w = video.shape
    x = video.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    y = recon.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    pix = (x - y).abs() if pixel == "l1" else (x - y) ** 2
    rec = pix + loss_fn.perceptual_weight * loss_fn.perceptual_loss(x, y)
    nll = (rec / torch.exp(loss_fn.logvar) + loss_fn.logvar).sum() / (b * t)
    kl = (0.5 * (posterior.mean ** 2 + posterior.var - 1 - posterior.logvar)).sum() / b
    wl = sum((wavelet[i] - wavelet[i + 1]).abs().sum() / b for i in (0, 2))
    total = nll + loss_fn.kl_weight * kl + loss_fn.wavelet_weight * wl
    if with_adv:
        g = -loss_fn.discriminator(recon).mean()
        gn = torch.autograd.grad(nll, last_layer, retain_graph=True)[0].norm()
        gg = torch.autograd.grad(g, last_layer, retain_graph=True)[0].norm()
        total = total + loss_fn.disc_weight * (gn / (gg + 1e-6)).clamp(0, 1e6) * g
    return total


@pytest.mark.parametrize("pixel", ["l1", "l2"])
def test_generator_loss_matches_formula_before_disc_start(perceptual, pixel):
    loss_fn = _loss(perceptual, disc_start=100, pixel_loss=pixel, logvar_init=0.3).eval()
    video = torch.rand(2, 3, 5, 32, 32) * 2 - 1
    recon = (video + 0.1 * torch.randn_like(video)).clamp(-1, 1)
    posterior = DiagonalGaussian(torch.randn(2, 8, 2, 4, 4))
    wavelet = tuple(torch.randn(2, 4, 3, 8, 8) for _ in range(4))
    loss, parts = loss_fn.generator_loss(video, recon, posterior, step=5, wavelet_coeffs=wavelet)
    expected = _reference_generator_loss(loss_fn, video, recon, posterior, wavelet, pixel)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-4)
    assert parts["d_weight"].item() == 0.0 and parts["loss_g_adv"].item() == 0.0


def test_generator_loss_with_adaptive_weight_after_disc_start(perceptual):
    loss_fn = _loss(perceptual, disc_start=0).eval()  # eval: dropout off, so both evaluations see the same net
    last = torch.nn.Parameter(torch.randn(3, 3))
    video = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    base = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    recon = base + torch.einsum("oc,bcthw->bothw", last, base) * 0.1  # recon depends on the "last layer"
    posterior = DiagonalGaussian(torch.randn(1, 8, 2, 4, 4))
    wavelet = tuple(torch.randn(1, 4, 3, 8, 8) for _ in range(4))
    loss, parts = loss_fn.generator_loss(video, recon, posterior, step=0, last_layer=last, wavelet_coeffs=wavelet)
    expected = _reference_generator_loss(loss_fn, video, recon, posterior, wavelet, with_adv=True, last_layer=last)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-4)
    assert parts["d_weight"].item() > 0
    loss.backward()
    assert last.grad is not None and torch.isfinite(last.grad).all()


def test_adaptive_weight_formula():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    nll = (w * torch.tensor([3.0, 4.0])).sum()  # grad (3, 4), norm 5
    g = (w * torch.tensor([0.0, 2.0])).sum()  # grad (0, 2), norm 2
    out = adaptive_generator_weight(nll, g, w, scale=0.5)
    torch.testing.assert_close(out, torch.tensor(0.5 * 5.0 / (2.0 + 1e-6)))
    assert not out.requires_grad


def test_hinge_and_discriminator_loss(perceptual):
    torch.testing.assert_close(hinge_d_loss(torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])),
                               torch.tensor(0.5 * ((0 + 0.5) / 2 + (0 + 1.0) / 2)))
    loss_fn = _loss(perceptual, disc_start=3).eval()
    video, recon = torch.rand(1, 3, 5, 32, 32), torch.rand(1, 3, 5, 32, 32)
    before, _ = loss_fn.discriminator_loss(video, recon, step=2)
    assert before.item() == 0.0  # disc_factor is 0 before disc_start
    after, parts = loss_fn.discriminator_loss(video, recon, step=3)
    expected = 0.5 * (F.relu(1 - loss_fn.discriminator(video)).mean() + F.relu(1 + loss_fn.discriminator(recon)).mean())
    torch.testing.assert_close(after, expected)
    assert set(parts) == {"loss_d", "logits_real", "logits_fake"}


def test_build_loss_without_perceptual_weight_needs_no_backbone(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no weights anywhere
    monkeypatch.delenv("WFVAE_LPIPS_BACKBONE", raising=False)
    loss_fn = build_loss("LPIPSWithDiscriminator3D", disc_start=0, disc_weight=0.5, kl_weight=1e-6, logvar_init=0.0,
                         perceptual_weight=0.0, loss_type="l1", wavelet_weight=0.1, disc_base_channels=8)
    assert "perceptual_loss.lin0.model.1.weight" in loss_fn.state_dict()
    from wfvae.errors import MissingWeightsError

    with pytest.raises(MissingWeightsError, match="lpips_backbone_path"):
        build_loss("LPIPSWithDiscriminator3D", disc_start=0, disc_weight=0.5, kl_weight=1e-6, logvar_init=0.0,
                   perceptual_weight=1.0, loss_type="l1", wavelet_weight=0.1)
    with pytest.raises(ValueError, match="unknown loss class"):
        build_loss("Nope", disc_start=0, disc_weight=0.5, kl_weight=1e-6, logvar_init=0.0, perceptual_weight=0.0,
                   loss_type="l1", wavelet_weight=0.1)
