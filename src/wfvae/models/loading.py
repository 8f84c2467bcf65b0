"""``load_model``: one entry point for every weight format a user may hold.

Accepted:
  * a directory with ``config.json`` and weights as ``diffusion_pytorch_model.safetensors`` (the
    diffusers layout of the released weights and of ``save_pretrained``), ``model.safetensors``
    (folders written by older wfvae versions) or ``*.ckpt`` (original training checkpoint);
  * a ``.ckpt`` / ``.safetensors`` / ``.pt`` file plus a config (dict, path, or a ``config.json``
    next to the file, or the model config stored inside one of our checkpoints);
  * a Hugging Face Hub id ``owner/name`` or ``owner/name@revision`` (see :func:`resolve_pretrained`).

Torch files are always read with ``weights_only=True``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from wfvae import checkpoint_keys as K
from wfvae.downloads import hub_snapshot, parse_hub_id
from wfvae.errors import CheckpointError, ConfigError
from wfvae.utils.io import load_torch_file

from .base import (
    CONFIG_NAME,
    LEGACY_WEIGHTS_NAME,
    WEIGHTS_NAME,
    VideoAutoencoder,
    read_config,
)
from .causalvae import CausalVAE
from .wfvae import WFVAE

logger = logging.getLogger(__name__)

# model names accepted on the command line (--model_name) and in config "_class_name"
MODEL_CLASSES: dict[str, type[VideoAutoencoder]] = {"WFVAE": WFVAE, "CausalVAE": CausalVAE}
MODEL_NAMES: tuple[str, ...] = tuple(MODEL_CLASSES)
_CLASS_NAMES = {"WFVAE": WFVAE, "WFVAEModel": WFVAE, "CausalVAE": CausalVAE, "CausalVAEModel": CausalVAE}
_SAFETENSORS_NAMES = (WEIGHTS_NAME, LEGACY_WEIGHTS_NAME)
#: What a model folder on the Hub needs: the config, then the weights in the order they are preferred.
MODEL_FILES = (CONFIG_NAME, *_SAFETENSORS_NAMES)


def model_class(name: str) -> type[VideoAutoencoder]:
    """Resolve a model name (``WFVAE``, ``CausalVAE`` or the original ``*Model`` class names)."""
    try:
        return _CLASS_NAMES[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of {sorted(MODEL_CLASSES)}") from None


def build_model(config: dict[str, Any] | str | Path, model_name: str | None = None) -> VideoAutoencoder:
    """A randomly initialised model from a config (its ``_class_name`` or ``model_name`` picks the class)."""
    if not isinstance(config, dict):
        config = read_config(config)
    name = model_name or config.get("_class_name")
    if not name:
        raise ConfigError('the model config has no "_class_name": add "_class_name": "WFVAE" (or "CausalVAE") '
                          "to it, or pass --model_name WFVAE (or CausalVAE)")
    cls = model_class(name)
    if model_name and config.get("_class_name") and model_class(config["_class_name"]) is not cls:
        raise ConfigError(f"the model config is for {config['_class_name']} but --model_name is {model_name}; "
                          "drop --model_name or pass the matching config")
    return cls.from_config(config)


def _step_of(path: Path) -> int:
    numbers = re.findall(r"\d+", path.stem)
    return int(numbers[-1]) if numbers else -1


def read_state_dict(path: str | Path, prefer_ema: bool = True) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Read generator weights from a safetensors or torch file.

    For training checkpoints (original layout), EMA weights are preferred when present and
    non-empty (as the original does), else ``state_dict.gen_model``. Returns (state_dict,
    model config stored in the checkpoint or None).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path)), None
        except Exception as e:  # SafetensorError for truncated/corrupt headers, OSError for short reads
            raise CheckpointError(f"cannot read {path} as safetensors ({e}); the file is corrupt or truncated: "
                                  "copy or export it again") from e
    try:
        data = load_torch_file(path)
    except Exception as e:  # torch raises several types for corrupt/unsafe files
        raise CheckpointError(f"cannot read {path} as a weights-only torch checkpoint: {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not a state dict or checkpoint")
    stored_config = data.get(K.MODEL_CONFIG) if isinstance(data.get(K.MODEL_CONFIG), dict) else None
    state = data.get(K.STATE_DICT)
    generator = None
    if isinstance(state, dict):
        generator = state[K.GEN_MODEL] if isinstance(state.get(K.GEN_MODEL), dict) else state
    ema = data.get(K.EMA_STATE)
    if prefer_ema and isinstance(ema, dict) and len(ema) > 0:
        logger.info("loading EMA weights from %s", path)
        if generator is None:
            return ema, stored_config
        # EMA tracks trainable parameters only (here and in the original): frozen tensors such as
        # the Haar filters and buffers come from the generator's state dict
        strip = lambda sd: {k.removeprefix(K.MODULE_PREFIX): v for k, v in sd.items()}  # noqa: E731
        return {**strip(generator), **strip(ema)}, stored_config
    if generator is not None:
        return generator, stored_config
    if all(isinstance(v, torch.Tensor) for v in data.values()):
        return data, stored_config
    raise CheckpointError(f"{path}: no 'ema_state_dict', 'state_dict.gen_model' or plain state dict found")


def _weights_in_dir(directory: Path) -> Path:
    for name in _SAFETENSORS_NAMES:
        if (directory / name).is_file():
            return directory / name
    ckpts = sorted(directory.glob("*.ckpt"), key=lambda p: (_step_of(p), p.name))
    if ckpts:
        if len(ckpts) > 1:
            logger.info("several checkpoints in %s; using the latest step: %s", directory, ckpts[-1].name)
        return ckpts[-1]
    raise FileNotFoundError(
        f"no weights in {directory}: expected one of {list(_SAFETENSORS_NAMES)} or a *.ckpt file"
    )


def resolve_weights_file(path: str | Path) -> Path:
    """The weights file ``load_model(path)`` reads: ``path`` itself, or the one chosen in a model folder.

    Raises:
        FileNotFoundError: nothing to load at ``path``.
    """
    path = Path(path)
    if path.is_dir():
        return _weights_in_dir(path)
    if path.is_file():
        return path
    raise FileNotFoundError(f"no model at {path}")


def non_finite_tensors(model: torch.nn.Module) -> list[str]:
    """Names of floating point parameters and buffers that hold NaN or Inf."""
    return [name for name, t in model.state_dict().items()
            if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def resolve_pretrained(
    name_or_path: str | Path, revision: str | None = None, offline: bool | None = None
) -> Path:
    """A local path for a model given as a path or a Hugging Face Hub id.

    The rule: an existing local path always wins. Otherwise a string of the form
    ``owner/name`` or ``owner/name@revision`` (one ``/``, not starting with ``.`` or ``~``, no
    weights-file suffix) is a Hub id, fetched with :func:`wfvae.downloads.hub_snapshot` (config
    and safetensors only, Hub cache honoured, nothing downloaded offline). Anything else is a
    missing local path.

    Raises:
        FileNotFoundError: not a local path and not a Hub id.
        MissingWeightsError: a Hub id that cannot be fetched (offline and not cached, unknown
            repository or revision, no weights).
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        if revision:
            raise ValueError(f"revision={revision!r} applies to Hub ids; '{name_or_path}' is a local path")
        return path
    if isinstance(name_or_path, Path) or parse_hub_id(str(name_or_path)) is None:
        raise FileNotFoundError(
            f"no model at {path} (not an existing local path, nor a Hub id 'owner/name[@revision]')"
        )
    return hub_snapshot(str(name_or_path), revision, files=MODEL_FILES, offline=offline)


def load_model(
    path: str | Path,
    config: dict[str, Any] | str | Path | None = None,
    model_name: str | None = None,
    ignore_mismatched_sizes: bool = False,
    prefer_ema: bool = True,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    revision: str | None = None,
    offline: bool | None = None,
) -> VideoAutoencoder:
    """Load a WFVAE / CausalVAE with its weights, in eval mode.

    Args:
        path: a model directory, a weights file, or a Hub id ``owner/name[@revision]`` (see the
            module docstring; an existing local path always wins).
        config: model config (dict or path) when ``path`` is a file without a ``config.json``
            beside it.
        model_name: "WFVAE" / "CausalVAE" when the config has no ``_class_name``.
        ignore_mismatched_sizes: keep fresh weights for tensors whose shape differs.
        prefer_ema: for training checkpoints, use the EMA weights when present.
        revision: Hub branch, tag or commit (the same as ``@revision`` in ``path``).
        offline: never download (``None``: ``WFVAE_OFFLINE`` / ``HF_HUB_OFFLINE`` decide).
    Raises:
        FileNotFoundError: nothing to load at ``path``; CheckpointError: weights don't fit;
        MissingWeightsError: a Hub model that cannot be fetched.
    """
    path = resolve_pretrained(path, revision=revision, offline=offline)
    weights = resolve_weights_file(path)
    if path.is_dir() and config is None:
        config = path / CONFIG_NAME
    state_dict, stored_config = read_state_dict(weights, prefer_ema=prefer_ema)
    if config is None:
        beside = weights.parent / CONFIG_NAME
        if beside.is_file():
            config = beside
        elif stored_config is not None:
            config = stored_config
        else:
            raise ConfigError(f"{weights} has no config: pass config=... or put a {CONFIG_NAME} next to it")
    model = build_model(config, model_name)
    model.load_weights(state_dict, strict=True, ignore_mismatched_sizes=ignore_mismatched_sizes)
    bad = non_finite_tensors(model)
    if bad:
        logger.warning("%s: %d weight tensors hold NaN or Inf (%s%s); outputs will be garbage (a diverged run?)",
                       weights, len(bad), ", ".join(bad[:3]), ", ..." if len(bad) > 3 else "")
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    return model.eval()
