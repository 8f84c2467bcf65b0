"""LPIPS perceptual distance: calibrated heads from the ``lpips`` package, torchvision trunks.

How to use::

    from wfvae.networks.lpips import load_lpips, lpips_video

    net = load_lpips("vgg")             # trunk weights found on disk or downloaded once
    net = load_lpips("vgg", backbone_path="/weights/vgg16-397923af.pth")
    d = net(img0, img1)                 # (N, 1, 1, 1); img0/img1 (N, 3, H, W) in [-1, 1]
    d_video = lpips_video(net, v0, v1)  # (B,); v0/v1 (B, 3, T, H, W) in [-1, 1]

The `lpips` package (https://github.com/richzhang/PerceptualSimilarity, paper
https://arxiv.org/abs/1801.03924) ships its calibrated linear layers inside the package; its trunk
is torchvision's ImageNet VGG16 / AlexNet. We build the trunk randomly initialised
(``pnet_rand=True``, so lpips itself never downloads) and, unless ``random_backbone=True``, load a
torchvision checkpoint found in this order:

1. ``backbone_path`` (CLI: ``--lpips_backbone_path``),
2. the environment variable ``WFVAE_LPIPS_BACKBONE``,
3. torchvision's hub cache, ``$TORCH_HOME/hub/checkpoints/<file>`` (``TORCH_HOME`` defaults to
   ``~/.cache/torch``), where ``<file>`` is ``vgg16-397923af.pth`` or ``alexnet-owt-7be5be79.pth``;
   when it is not there it is downloaded from torchvision's URL the way torchvision's weight API
   does (hash prefix checked, :func:`wfvae.downloads.fetch_torch_hub_checkpoint`).

Offline (``--offline``, ``WFVAE_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``) step 3 only looks;
:class:`wfvae.errors.MissingWeightsError` then names the expected file, the option and the variable.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch

from wfvae.downloads import REMOTE_FILES, fetch_torch_hub_checkpoint
from wfvae.errors import CheckpointError, MissingWeightsError

logger = logging.getLogger(__name__)

#: Entry of :data:`wfvae.downloads.REMOTE_FILES` for each LPIPS trunk.
BACKBONE_REMOTE: dict[str, str] = {"vgg": "lpips_vgg", "alex": "lpips_alex"}
#: Name of torchvision's ImageNet checkpoint for each LPIPS trunk (as torchvision's hub cache stores it).
BACKBONE_FILES: dict[str, str] = {net: REMOTE_FILES[key].filename for net, key in BACKBONE_REMOTE.items()}
#: Environment variable consulted when no explicit backbone path is given.
BACKBONE_ENV_VAR = "WFVAE_LPIPS_BACKBONE"


def find_lpips_backbone(
    net: str, backbone_path: str | os.PathLike | None = None, offline: bool | None = None
) -> Path:
    """Locate the torchvision ImageNet checkpoint for an LPIPS trunk, downloading it if needed.

    Args:
        net: ``"vgg"`` or ``"alex"``.
        backbone_path: explicit file; when given it must exist (no fallback, so a typo is not
            silently replaced by another file).
        offline: never download (``None``: ``WFVAE_OFFLINE`` / ``HF_HUB_OFFLINE`` decide).

    Returns:
        Path of an existing file.

    Raises:
        MissingWeightsError: the explicit file does not exist, or offline and not cached, or the
            download failed; the message names the file and how to provide it.
    """
    env_value = os.environ.get(BACKBONE_ENV_VAR)
    if backbone_path is not None:
        path, source = Path(backbone_path).expanduser(), "--lpips_backbone_path"
    elif env_value:
        path, source = Path(env_value).expanduser(), f"${BACKBONE_ENV_VAR}"
    else:
        return fetch_torch_hub_checkpoint(REMOTE_FILES[BACKBONE_REMOTE[net]], offline=offline)
    if not path.is_file():  # an explicit file is never replaced by a download
        raise MissingWeightsError(
            f"LPIPS backbone file '{path}' (from {source}) does not exist. "
            f"It should be torchvision's ImageNet checkpoint '{BACKBONE_FILES[net]}' for net='{net}'."
        )
    return path


def _lpips_package_linear_weights(net: str) -> Path:
    import lpips as lpips_pkg  # lazy: imports torchvision's model zoo; only when LPIPS runs

    return Path(lpips_pkg.__file__).resolve().parent / "weights" / "v0.1" / f"{net}.pth"


def _load_backbone(model: torch.nn.Module, path: Path) -> None:
    """Copy a torchvision ``features.<i>.*`` state dict into lpips' ``net.slice<k>.<i>.*`` trunk.

    lpips keeps torchvision's layer index ``i`` as the child name inside each slice, so the mapping
    is a rename. Every trunk tensor must be found with the same shape (strict); the checkpoint's
    classifier tensors are unused by LPIPS and ignored.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"cannot read LPIPS backbone checkpoint '{path}': {e}") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    trunk = model.net
    mapped: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    for key, tensor in trunk.state_dict().items():
        # key looks like "slice2.3.weight" -> torchvision "features.3.weight"
        _, layer_index, param = key.split(".", 2)
        source_key = f"features.{layer_index}.{param}"
        if source_key not in state:
            missing.append(source_key)
            continue
        if tuple(state[source_key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"LPIPS backbone '{path}': '{source_key}' has shape {tuple(state[source_key].shape)}, "
                f"expected {tuple(tensor.shape)}. Is this the checkpoint for net='{model.pnet_type}'?"
            )
        mapped[key] = state[source_key]
    if missing:
        raise CheckpointError(
            f"LPIPS backbone '{path}' lacks {len(missing)} trunk tensors, e.g. {missing[:3]}. "
            f"Expected torchvision's '{BACKBONE_FILES[model.pnet_type]}'."
        )
    trunk.load_state_dict(mapped, strict=True)


def load_lpips(
    net: str = "vgg",
    backbone_path: str | os.PathLike | None = None,
    random_backbone: bool = False,
    device: str | torch.device = "cpu",
    offline: bool | None = None,
) -> torch.nn.Module:
    """Build an ``lpips.LPIPS`` module (trunk weights from disk, or downloaded once).

    Args:
        net: trunk, ``"vgg"`` (default, used by the training loss) or ``"alex"`` (the usual
            evaluation metric).
        backbone_path: torchvision ImageNet checkpoint of the trunk; see the module docstring for
            the search order when ``None``.
        random_backbone: keep the trunk randomly initialised (tests only; distances are then not
            LPIPS). The calibrated linear layers are still loaded.
        device: where to put the module.
        offline: never download the trunk (``None``: the offline variables decide).

    Returns:
        Module in eval mode with ``requires_grad=False`` everywhere. Call it as
        ``module(x0, x1)`` with ``x0``, ``x1`` of shape ``(N, 3, H, W)`` in ``[-1, 1]``; it returns
        distances of shape ``(N, 1, 1, 1)``. Gradients still flow to the *inputs*, so it serves as a
        training loss.

    Raises:
        ValueError: unknown ``net``.
        MissingWeightsError: the trunk checkpoint is not on disk and cannot be downloaded.
        CheckpointError: a weight file does not fit.
    """
    if net not in BACKBONE_FILES:
        raise ValueError(f"unknown LPIPS net '{net}'; choose one of {sorted(BACKBONE_FILES)}")
    # Find the file before building anything, so a missing file fails fast.
    path = None if random_backbone else find_lpips_backbone(net, backbone_path, offline)

    import lpips as lpips_pkg  # lazy: imports torchvision's model zoo; only when LPIPS runs

    with warnings.catch_warnings():
        # lpips passes the deprecated `pretrained=` to torchvision; harmless with pnet_rand=True.
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        # pnet_rand=True: the trunk is built with weights=None, so torchvision never downloads.
        # pretrained=False: we load the linear layers ourselves, strictly (lpips uses strict=False).
        model = lpips_pkg.LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False)

    linear_path = _lpips_package_linear_weights(net)
    if not linear_path.is_file():
        raise MissingWeightsError(
            f"the lpips package has no linear-layer weights at '{linear_path}'; reinstall `lpips`."
        )
    linear_state = torch.load(linear_path, map_location="cpu", weights_only=True)
    expected_lin = {k for k in model.state_dict() if k.startswith("lin") and not k.startswith("lins.")}
    if set(linear_state) != expected_lin:
        raise CheckpointError(
            f"'{linear_path}' keys {sorted(linear_state)} do not match LPIPS linear layers "
            f"{sorted(expected_lin)}"
        )
    # `lins.<k>` are the same modules as `lin<k>`, so loading `lin<k>` fills both names.
    model.load_state_dict(linear_state, strict=False)

    if path is not None:
        _load_backbone(model, path)
        logger.info("LPIPS(%s): trunk weights from %s", net, path)
    else:
        logger.warning("LPIPS(%s): randomly initialised trunk (random_backbone=True); not real LPIPS", net)

    model.eval()
    model.requires_grad_(False)
    return model.to(device)


def lpips_video(model: torch.nn.Module, video0: torch.Tensor, video1: torch.Tensor, frame_batch: int = 64) -> torch.Tensor:
    """LPIPS between two videos, averaged over frames.

    Args:
        model: from :func:`load_lpips`.
        video0, video1: ``(B, 3, T, H, W)`` in ``[-1, 1]``.
        frame_batch: frames per forward pass (memory bound; does not change the result).

    Returns:
        ``(B,)`` mean per-frame distance of each video.
    """
    if video0.shape != video1.shape or video0.ndim != 5:
        raise ValueError(
            f"lpips_video expects two (B, 3, T, H, W) tensors of equal shape, got "
            f"{tuple(video0.shape)} and {tuple(video1.shape)}"
        )
    b, c, t, h, w = video0.shape
    frames0 = video0.transpose(1, 2).reshape(b * t, c, h, w)  # (B*T, C, H, W)
    frames1 = video1.transpose(1, 2).reshape(b * t, c, h, w)
    distances = [
        model(frames0[i : i + frame_batch], frames1[i : i + frame_batch]).flatten()
        for i in range(0, b * t, frame_batch)
    ]
    return torch.cat(distances).view(b, t).mean(dim=1)
