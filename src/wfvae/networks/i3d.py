"""The I3D video classifiers FVD measures with: VideoGPT's PyTorch I3D (written here, :class:`InceptionI3D`)
and StyleGAN-V's TorchScript detector, found on disk or downloaded once into the cache.

How to use::

    from wfvae.networks.i3d import load_i3d_network
    net = load_i3d_network("videogpt", "/weights/i3d_pretrained_400.pt", device="cuda")

:mod:`wfvae.evaluation.fvd` turns videos into the detectors' features and features into FVD.
"""

from __future__ import annotations

import logging
import math
import os
import zipfile
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from wfvae.downloads import REMOTE_FILES, fetch_file
from wfvae.errors import CheckpointError, MissingWeightsError

logger = logging.getLogger(__name__)

FVDVariant = Literal["styleganv", "videogpt"]
#: Expected file name of each detector (as distributed by its authors).
I3D_FILES: dict[str, str] = {"styleganv": "i3d_torchscript.pt", "videogpt": "i3d_pretrained_400.pt"}
#: Environment variable with the detector path, used when ``--fvd_weights`` is not given.
I3D_ENV_VAR = "WFVAE_I3D_PATH"
#: Both detectors take 224x224 frames (short side resized to 224, then centre crop).
I3D_RESOLUTION = 224
#: Feature dimension of both detectors (Kinetics-400 logits).
I3D_FEATURE_DIM = 400
#: Fewest frames the VideoGPT I3D accepts: time is strided by 2 three times (ceil) and the final
#: average pool spans 2 steps, so ceil(ceil(ceil(T / 2) / 2) / 2) >= 2, i.e. T >= 9.
I3D_MIN_FRAMES = 9


# ----------------------------------------------------------------------------------------------
# I3D (Inception-v1 inflated to 3D; Carreira & Zisserman 2017, https://arxiv.org/abs/1705.07750)
# Attribute names are chosen so that `state_dict()` keys equal those of VideoGPT's
# `i3d_pretrained_400.pt` ("Mixed_4b.b1b.conv3d.weight", "Conv3d_1a_7x7.bn.running_mean", ...).
# ----------------------------------------------------------------------------------------------


def _pad_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    """Zero-pad (B, C, T, H, W) like TensorFlow's "SAME": output size ceil(size / stride).

    The extra pixel of an odd total padding goes at the end, as in TensorFlow, which the
    pretrained weights were trained with.
    """
    pads: list[int] = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]  # F.pad order: last dim first
    return F.pad(x, pads)


class SamePadMaxPool3d(nn.Module):
    """3D max pool with TF "SAME" zero padding (inputs are post-ReLU, so zeros never win wrongly)."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class ConvBNAct3d(nn.Module):
    """SAME-padded Conv3d, then optional BatchNorm3d and ReLU (keys ``conv3d.*``, ``bn.*``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        use_bn_relu: bool = True,
    ):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        # The logits layer has a bias and no BN/ReLU; every other unit is conv (no bias) + BN + ReLU.
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride=stride, bias=not use_bn_relu)
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-5, momentum=0.001) if use_bn_relu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = F.relu(self.bn(x))
        return x


class InceptionBlock3d(nn.Module):
    """Four parallel branches concatenated on channels.

    ``widths = (b0, b1_reduce, b1, b2_reduce, b2, b3)``: 1x1 | 1x1 -> 3x3x3 | 1x1 -> 3x3x3 |
    3x3x3 max pool -> 1x1. Output channels: ``b0 + b1 + b2 + b3``.
    """

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int, int, int]):
        super().__init__()
        w0, w1r, w1, w2r, w2, w3 = widths
        self.b0 = ConvBNAct3d(in_channels, w0)
        self.b1a = ConvBNAct3d(in_channels, w1r)
        self.b1b = ConvBNAct3d(w1r, w1, kernel=(3, 3, 3))
        self.b2a = ConvBNAct3d(in_channels, w2r)
        self.b2b = ConvBNAct3d(w2r, w2, kernel=(3, 3, 3))
        self.b3a = SamePadMaxPool3d((3, 3, 3), (1, 1, 1))
        self.b3b = ConvBNAct3d(in_channels, w3)
        self.out_channels = w0 + w1 + w2 + w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1
        )


# (name, kind, arguments) in forward order. "conv": (out, kernel, stride); "pool": (kernel, stride);
# "mixed": the six branch widths. Names are the parameter-key prefixes of i3d_pretrained_400.pt.
_I3D_LAYOUT: tuple[tuple[str, str, tuple], ...] = (
    ("Conv3d_1a_7x7", "conv", (64, (7, 7, 7), (2, 2, 2))),
    ("MaxPool3d_2a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Conv3d_2b_1x1", "conv", (64, (1, 1, 1), (1, 1, 1))),
    ("Conv3d_2c_3x3", "conv", (192, (3, 3, 3), (1, 1, 1))),
    ("MaxPool3d_3a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Mixed_3b", "mixed", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", "mixed", (128, 128, 192, 32, 96, 64)),
    ("MaxPool3d_4a_3x3", "pool", ((3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", "mixed", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", "mixed", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", "mixed", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", "mixed", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", "mixed", (256, 160, 320, 32, 128, 128)),
    ("MaxPool3d_5a_2x2", "pool", ((2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", "mixed", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", "mixed", (384, 192, 384, 48, 128, 128)),
)


class InceptionI3D(nn.Module):
    """Inflated Inception-v1 video classifier, laid out to load VideoGPT's ``i3d_pretrained_400.pt``.

    Parameters:
        num_classes (int, default 400): size of the logits (Kinetics-400).
        in_channels (int, default 3): RGB.

    ``forward`` takes ``(B, 3, T, 224, 224)`` in ``[-1, 1]`` with ``T >= 9`` and returns ``(B,
    num_classes)`` logits averaged over the remaining time steps: these are the FVD features. The
    final 2x7x7 average pool is a fixed window, so frames must be 224x224 (any other size either
    fails or changes the features).
    """

    def __init__(self, num_classes: int = I3D_FEATURE_DIM, in_channels: int = 3):
        super().__init__()
        channels = in_channels
        for name, kind, args in _I3D_LAYOUT:
            if kind == "conv":
                out, kernel, stride = args
                layer: nn.Module = ConvBNAct3d(channels, out, kernel, stride)
                channels = out
            elif kind == "pool":
                layer = SamePadMaxPool3d(*args)
            else:
                layer = InceptionBlock3d(channels, args)
                channels = layer.out_channels
            self.add_module(name, layer)
        self.feature_channels = channels  # 1024
        self.avg_pool = nn.AvgPool3d(kernel_size=(2, 7, 7), stride=(1, 1, 1))
        self.dropout = nn.Dropout(0.5)  # inert in eval mode; kept so the module mirrors the original
        self.logits = ConvBNAct3d(channels, num_classes, use_bn_relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[2] < I3D_MIN_FRAMES:
            raise ValueError(f"I3D expects (B, 3, T>={I3D_MIN_FRAMES}, 224, 224), got {tuple(x.shape)}")
        for name, _, _ in _I3D_LAYOUT:
            x = getattr(self, name)(x)
        x = self.logits(self.dropout(self.avg_pool(x)))  # (B, classes, T', 1, 1)
        return x.flatten(3).mean(dim=3).mean(dim=2)  # (B, classes)


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def resolve_i3d_path(
    variant: str, weights_path: str | os.PathLike | None = None, offline: bool | None = None
) -> Path:
    """Find the detector file: ``weights_path``, else ``$WFVAE_I3D_PATH``, else the download cache.

    An explicit path (option or variable) must exist: it is never replaced by a download. With
    neither, the cached copy is used, downloaded and verified first if needed (see
    :func:`wfvae.downloads.fetch_file`); ``offline`` (``None``: the offline variables) forbids that.
    """
    expected = I3D_FILES[variant]
    if weights_path is None:
        env_value = os.environ.get(I3D_ENV_VAR)
        if not env_value:
            return fetch_file(
                REMOTE_FILES[f"i3d_{variant}"], offline=offline, verify=lambda p: _check_detector(variant, p)
            )
        path, source = Path(env_value).expanduser(), f"${I3D_ENV_VAR}"
    else:
        path, source = Path(weights_path).expanduser(), "--fvd_weights"
    if not path.is_file():
        raise MissingWeightsError(
            f"I3D detector file '{path}' (from {source}) does not exist; expected the {variant} "
            f"detector '{expected}'."
        )
    return path


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 1)[-1].startswith("code/") for name in archive.namelist())


def _check_detector(variant: str, path: Path) -> None:
    """Raise unless ``path`` loads as the ``variant`` detector (the check of a fresh download)."""
    if variant == "videogpt":
        load_i3d_state_dict(path)
    else:
        load_torchscript_i3d(path, "cpu")


def load_torchscript_i3d(path: Path, device: str | torch.device) -> torch.nn.Module:
    if not _is_torchscript_archive(path):
        raise CheckpointError(
            f"'{path}' is not a TorchScript archive, so it is not the StyleGAN-V detector "
            f"'{I3D_FILES['styleganv']}'. If it is VideoGPT's '{I3D_FILES['videogpt']}', "
            f"use --fvd_variant videogpt."
        )
    try:
        return torch.jit.load(str(path), map_location=torch.device(device)).eval()
    except RuntimeError as e:
        raise CheckpointError(f"cannot load TorchScript I3D '{path}': {e}") from e


def load_i3d_state_dict(path: str | os.PathLike, device: str | torch.device = "cpu") -> InceptionI3D:
    """Load VideoGPT-layout I3D weights (a plain state dict) strictly into :class:`InceptionI3D`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"cannot read I3D state dict '{path}': {e}") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"'{path}' holds a {type(state).__name__}, expected an I3D state dict")
    model = InceptionI3D()
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"'{path}' does not match the VideoGPT I3D layout: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:3]}). "
            f"If it is the StyleGAN-V TorchScript detector, use --fvd_variant styleganv."
        )
    bad_shapes = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if bad_shapes:
        k = bad_shapes[0]
        raise CheckpointError(
            f"'{path}': {len(bad_shapes)} tensors have the wrong shape, e.g. '{k}' "
            f"{tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        )
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False).to(device)


def load_i3d_network(variant: str, weights_path: str | os.PathLike | None = None,
                     device: str | torch.device = "cpu", offline: bool | None = None) -> nn.Module:
    """The ``variant`` detector from ``weights_path`` (else ``$WFVAE_I3D_PATH``, else the download cache)."""
    if variant not in I3D_FILES:
        raise ValueError(f"unknown FVD variant '{variant}'; choose one of {sorted(I3D_FILES)}")
    path = resolve_i3d_path(variant, weights_path, offline)
    model = load_i3d_state_dict(path, device) if variant == "videogpt" else load_torchscript_i3d(path, device)
    logger.info("FVD detector (%s) loaded from %s", variant, path)
    return model
