"""LPIPS wrapper: no downloads, weights found on disk in the documented order, clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import lpips as lpips_pkg
from wfvae.errors import CheckpointError, MissingWeightsError
from wfvae.networks.lpips import BACKBONE_ENV_VAR, BACKBONE_FILES, load_lpips, lpips_video


@pytest.fixture
def no_weights_anywhere(tmp_path, monkeypatch):
    """An empty torch hub cache and no environment override."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(BACKBONE_ENV_VAR, raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def alexnet_state() -> dict[str, torch.Tensor]:
    """A torchvision-layout AlexNet state dict with random values (stands in for ImageNet weights)."""
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.alexnet(weights=None).state_dict()


def _write_checkpoint(path: Path, state: dict[str, torch.Tensor], offset: float) -> dict[str, torch.Tensor]:
    """Save ``state`` shifted by ``offset`` (so files written by different tests differ)."""
    shifted = {k: v + offset for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(shifted, path)
    return shifted


def test_missing_backbone_names_file_and_option(no_weights_anywhere):
    with pytest.raises(MissingWeightsError) as info:
        load_lpips("vgg")
    message = str(info.value)
    assert BACKBONE_FILES["vgg"] == "vgg16-397923af.pth"
    assert "vgg16-397923af.pth" in message and "--lpips_backbone_path" in message
    assert BACKBONE_ENV_VAR in message
    with pytest.raises(MissingWeightsError, match="alexnet-owt-7be5be79.pth"):
        load_lpips("alex", backbone_path=no_weights_anywhere / "typo.pth")
    with pytest.raises(ValueError, match="unknown LPIPS net"):
        load_lpips("squeezenet")


def test_backbone_loaded_from_torch_hub_cache(no_weights_anywhere, alexnet_state):
    cache = no_weights_anywhere / "torch_home" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    state = _write_checkpoint(cache, alexnet_state, 0.0)
    model = load_lpips("alex")
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    # torchvision "features.<i>" -> lpips "net.slice<k>.<i>"
    assert torch.equal(getattr(model.net.slice1, "0").weight, state["features.0.weight"])
    assert torch.equal(getattr(model.net.slice5, "10").bias, state["features.10.bias"])
    # The calibrated linear layers are the package's own.
    lin_path = Path(lpips_pkg.__file__).parent / "weights" / "v0.1" / "alex.pth"
    package_lin = torch.load(lin_path, map_location="cpu", weights_only=True)
    assert torch.equal(model.lin0.model[1].weight, package_lin["lin0.model.1.weight"])
    assert model.lins[4] is model.lin4


def test_explicit_path_and_env_var_take_precedence(no_weights_anywhere, monkeypatch, alexnet_state):
    explicit = no_weights_anywhere / "explicit" / "alex.pth"
    env_file = no_weights_anywhere / "env" / "alex.pth"
    explicit_state = _write_checkpoint(explicit, alexnet_state, 1.0)
    env_state = _write_checkpoint(env_file, alexnet_state, 2.0)
    monkeypatch.setenv(BACKBONE_ENV_VAR, str(env_file))
    from_env = load_lpips("alex")
    assert torch.equal(getattr(from_env.net.slice2, "3").weight, env_state["features.3.weight"])
    from_arg = load_lpips("alex", backbone_path=explicit)
    assert torch.equal(getattr(from_arg.net.slice2, "3").weight, explicit_state["features.3.weight"])


def test_wrong_backbone_file_is_a_clear_error(no_weights_anywhere, alexnet_state):
    # A VGG-shaped first conv (3x3) where AlexNet has 11x11: the message names key and shapes.
    wrong = dict(alexnet_state)
    wrong["features.0.weight"] = torch.zeros(64, 3, 3, 3)
    path = no_weights_anywhere / "vgg_like.pth"
    torch.save(wrong, path)
    with pytest.raises(CheckpointError, match=r"features\.0\.weight.*\(64, 3, 3, 3\)"):
        load_lpips("alex", backbone_path=path)
    incomplete = {k: v for k, v in alexnet_state.items() if k != "features.8.bias"}
    torch.save(incomplete, path)
    with pytest.raises(CheckpointError, match=r"features\.8\.bias"):
        load_lpips("alex", backbone_path=path)


def test_random_backbone_distances_shape_and_properties(no_weights_anywhere):
    torch.manual_seed(0)
    model = load_lpips("alex", random_backbone=True)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    y = torch.rand(4, 3, 32, 32) * 2 - 1
    d = model(x, y)
    assert d.shape == (4, 1, 1, 1)
    assert float(d.min()) > 0
    torch.testing.assert_close(model(x, x), torch.zeros(4, 1, 1, 1))
    torch.testing.assert_close(model(x, y), model(y, x))
    # Still differentiable with respect to the inputs (it is also the training loss).
    x.requires_grad_(True)
    model(x, y).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_lpips_video_is_mean_over_frames(no_weights_anywhere):
    torch.manual_seed(0)
    model = load_lpips("vgg", random_backbone=True)
    v0 = torch.rand(2, 3, 2, 32, 32) * 2 - 1
    v1 = torch.rand(2, 3, 2, 32, 32) * 2 - 1
    got = lpips_video(model, v0, v1, frame_batch=3)  # batching must not change the result
    frames0 = torch.stack([v0[b, :, t] for b in range(2) for t in range(2)])  # (B*T, 3, H, W)
    frames1 = torch.stack([v1[b, :, t] for b in range(2) for t in range(2)])
    by_hand = model(frames0, frames1).flatten().view(2, 2).mean(dim=1)
    assert got.shape == (2,)
    torch.testing.assert_close(got, by_hand)
    with pytest.raises(ValueError, match="equal shape"):
        lpips_video(model, v0, v1[:, :, :1])


def test_torch_home_default_is_not_touched_when_path_given(no_weights_anywhere, alexnet_state):
    explicit = no_weights_anywhere / "a.pth"
    _write_checkpoint(explicit, alexnet_state, 0.0)
    load_lpips("alex", backbone_path=explicit)
    assert not (no_weights_anywhere / "torch_home").exists()  # nothing downloaded or cached
    assert os.environ["TORCH_HOME"].endswith("torch_home")
