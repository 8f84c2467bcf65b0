"""One configuration system for every command: a typed dataclass whose fields carry default and help once,
and one generator that turns it into a command-line parser.

How to use::

    @dataclass(kw_only=True)
    class MyConfig(ClipOptions):                      # shared groups are base classes: flags stay flat
        out: str = option(REQUIRED, "Output folder.")
        fast: bool = option(False, "Tiny everything.")

        def check(self) -> list[str]:                 # cross-field checks; every error is reported at once
            return self.clip_errors() + (["--out must not be empty."] if not self.out else [])

    cfg = parse_config(MyConfig, ["--out", "x", "--num_frame", "9"], prog="wfvae mine")
    # ConfigError: unknown argument '--num_frame'; did you mean '--num_frames'?

    def main(argv=None) -> int:                       # a command's entry point (--help returns 0)
        return run_config(MyConfig, my_function, argv, prog="wfvae mine")

Field -> flag rules (the flag is ``--<field name>``): ``bool`` takes ``--x`` (true) or ``--x true|false``;
``Literal[...]`` and ``choices=`` restrict the value; ``list[str]`` is a comma-separated list; ``X | None``
parses as ``X`` and defaults to None; ``REQUIRED`` makes the flag mandatory (and the dataclass argument too);
``positional=True`` makes it a positional argument; ``aliases`` are other spellings (the original scripts'
names); ``ignored=True`` marks a flag accepted for the original scripts that does nothing (said in --help).
Every flag's ``--help`` line shows its help text and its default.

Precedence is simple: dataclass default < command line (the last occurrence of a flag wins).

Errors: a config's ``check()`` returns a list of messages; :func:`parse_config` and :func:`validate` raise one
:class:`~wfvae.errors.ConfigError` that lists all of them, together with every unknown flag (each with the
closest valid one). A value that does not parse (``--num_frames nine``, a choice not offered) stops parsing
at once, as argparse does.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field
from typing import Any, Literal, TypeVar

from wfvae.errors import ConfigError
from wfvae.formats import OUTPUT_FORMATS
from wfvae.models import MODEL_NAMES
from wfvae.runtime import free_memory_promptly

__all__ = [
    "REQUIRED",
    "ClipOptions",
    "DecodeWorkerOptions",
    "DeviceOptions",
    "EncodeChunkOptions",
    "FrameOptions",
    "IndexCacheOptions",
    "LpipsOptions",
    "MemoryBudgetOptions",
    "ModelOptions",
    "OfflineOptions",
    "OverwriteOptions",
    "ResizeOptions",
    "VideoFormatOptions",
    "build_parser",
    "default_of",
    "help_text",
    "option",
    "parse_config",
    "run_config",
    "settings",
    "too_small",
    "validate",
]

C = TypeVar("C")


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: Default of a flag the user must give.
REQUIRED: Any = _Required()


def option(default: Any, help: str, *, choices: Sequence[Any] | None = None, aliases: Sequence[str] = (),
           positional: bool = False, ignored: bool = False, metavar: str | None = None) -> Any:
    """A dataclass field that is one command-line flag: its default and its help, written once.

    ``ignored``: accepted for compatibility with the original scripts and has no effect (said in ``--help``).
    """
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "aliases": tuple(aliases),
            "positional": positional, "ignored": ignored, "metavar": metavar}
    if default is REQUIRED:
        return field(metadata=meta)  # no default: the dataclass argument is required too
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def default_of(f: dataclasses.Field) -> Any:
    """A field's default value (REQUIRED for required fields)."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return REQUIRED


def settings(cfg: Any) -> dict[str, Any]:
    """The config as a plain dict (what outputs record), without the flags that are accepted and ignored."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if not f.metadata.get("ignored")}


def too_small(cfg: Any, names: Sequence[str], at_least: int = 1, when_given: bool = False) -> list[str]:
    """``--name must be >= at_least, got v`` for every named field of ``cfg`` below it (None is skipped): the
    range check every ``check()`` uses."""
    errors = []
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value < at_least:
            given = " when given" if when_given else ""
            errors.append(f"--{name} must be >= {at_least}{given}, got {value}")
    return errors


# ---- shared option groups (base classes of the command configs; a field is defined in exactly one place) ----
@dataclass(kw_only=True)
class DeviceOptions:
    """Where a command runs."""

    device: Literal["auto", "cuda", "cpu"] = option(
        "auto", "auto = CUDA when a GPU is visible (under torchrun: this rank's GPU, nccl), else CPU (gloo).")


@dataclass(kw_only=True)
class OfflineOptions:
    """Commands that may download weights (Hub models, LPIPS trunks, I3D)."""

    offline: bool = option(False, "Never download weights (Hub models, LPIPS trunks, the I3D detector); also set "
                                  "by WFVAE_OFFLINE=1 or HF_HUB_OFFLINE=1.")


@dataclass(kw_only=True)
class ModelOptions(DeviceOptions, OfflineOptions):
    """Which trained VAE to load and how to run it (reconstruct, encode, decode)."""

    ckpt: str = option(REQUIRED, "Anything wfvae.load_model takes: a model folder (config.json + weights), a "
                       "training .ckpt, a .safetensors file (with --config), or a Hugging Face Hub id "
                       "owner/name[@revision].", aliases=("--from_pretrained",))
    config: str | None = option(None, "Model config.json when --ckpt is a bare weights file.")
    model_name: str | None = option(None, "Model class, when the config has no _class_name.", choices=MODEL_NAMES)
    conv: Literal["auto", "winograd", "direct"] = option(
        "auto", "3x3 convolutions on CPU: auto = time oneDNN's direct kernel and Winograd F(2x2,3x3) once per "
        "layer shape and keep the faster (cached in ~/.cache/wfvae, $WFVAE_CONV_CACHE), direct under --max_memory_gb; "
        "winograd or direct force one (GPUs always use cuDNN).")


@dataclass(kw_only=True)
class OverwriteOptions:
    """Commands whose output folder resumes (see wfvae.utils.output_folder)."""

    overwrite: bool = option(False, "Redo all outputs, replacing results of earlier runs (of any settings).")


@dataclass(kw_only=True)
class FrameOptions:
    """How frames are read from a video: stride and size."""

    sample_rate: int = option(1, "Take every n-th frame when reading a clip.")
    resolution: int = option(256, "Short side after resizing, pixels (evaluate: 0 keeps the size).")


@dataclass(kw_only=True)
class ClipOptions(FrameOptions):
    """How clips are cut from videos: the same for reconstruct, encode and evaluate."""

    num_frames: int = option(33, "Frames per clip from the first frame; 1 + k * the model's temporal compression "
                             "(evaluate: 0 = all frames).")
    crop_size: int | None = option(None, "Centre crop after resizing (default: resolution x resolution).")

    def clip_errors(self) -> list[str]:
        errors = too_small(self, ("num_frames", "sample_rate", "resolution"))
        errors += too_small(self, ("crop_size",), when_given=True)
        if self.crop_size is not None and self.crop_size > self.resolution:
            errors.append(f"--crop_size {self.crop_size} is larger than --resolution {self.resolution}; "
                          "use --crop_size <= --resolution")
        return errors


@dataclass(kw_only=True)
class ResizeOptions:
    """How frames reach --resolution."""

    resize: Literal["original", "fast"] = option(
        "original", "original: decode full frames and resize as the original WF-VAE does (torchvision Resize, "
        "antialiased bilinear; same clips within 0.5/255); fast: resize inside the decoder (FFmpeg swscale, "
        "cheaper, a different filter).")


@dataclass(kw_only=True)
class EncodeChunkOptions:
    """Exact chunked encoding: bounded memory, the same result as one pass."""

    chunk_size: int | None = option(
        None, "Encode this many frames at a time (a multiple of the temporal compression); exact.")


@dataclass(kw_only=True)
class MemoryBudgetOptions:
    """Chunk sizes chosen from a memory budget (chunk_size="auto" in the Python API)."""

    max_memory_gb: float | None = option(
        None, "Choose every chunk size not given explicitly so that one encode or decode call holds at most this "
        "many GB of tensors beyond the weights (computed per frame size; the full pass when it fits). Chunking is "
        "exact: outputs do not change.")

    def budget_errors(self) -> list[str]:
        if self.max_memory_gb is not None and not (math.isfinite(self.max_memory_gb) and self.max_memory_gb > 0):
            return [f"--max_memory_gb must be a positive number of gigabytes, got {self.max_memory_gb}"]
        return []

    def chunking(self, chunk_size: int | None) -> dict:
        """Keyword arguments of ``encode``/``decode``: an explicit ``chunk_size`` wins; else "auto" under the budget."""
        if chunk_size is not None or self.max_memory_gb is None:
            return {"chunk_size": chunk_size}
        return {"chunk_size": "auto", "max_memory_gb": self.max_memory_gb}

    def conv_kernels(self, conv: str) -> str:
        """The kernel mode to load the model with: ``--conv auto`` under a budget runs oneDNN's direct kernels.
        The budget's estimate counts Winograd's work buffers (up to ~150 MB for WF-VAE-L, depending on the
        chunk size) whenever Winograd may run, so direct leaves more of the budget to larger chunks, which take
        fewer calls; and smaller calls favour direct anyway (``benchmarks/RESULTS.md``). ``--conv winograd`` is
        obeyed."""
        return "direct" if conv == "auto" and self.max_memory_gb is not None else conv

    def release_memory_promptly(self, device_type: str) -> None:
        """On CPU, a memory budget also makes freed activations leave this process at once (it costs page
        faults, so only when a budget is asked for): :func:`wfvae.runtime.free_memory_promptly`."""
        if device_type == "cpu" and self.max_memory_gb is not None:
            free_memory_promptly()


@dataclass(kw_only=True)
class DecodeWorkerOptions:
    """Video decoding in DataLoader worker processes."""

    num_workers: int = option(2, "Video-decoding worker processes (0 decodes in the main process).")


@dataclass(kw_only=True)
class IndexCacheOptions:
    """Where the probe index of a video folder is cached (see wfvae.data.index)."""

    cache_dir: str | None = option(None, "Probe cache folder (default: the user cache dir).")


@dataclass(kw_only=True)
class LpipsOptions:
    """The LPIPS network of the metric (reconstruct --metrics lpips, evaluate --metric lpips)."""

    lpips_net: Literal["alex", "vgg"] = option("alex", "LPIPS trunk: alex (usual for evaluation) or vgg.")
    lpips_backbone_path: str | None = option(
        None, "torchvision ImageNet weights of the LPIPS trunk (else $WFVAE_LPIPS_BACKBONE / the torch hub cache).")


@dataclass(kw_only=True)
class VideoFormatOptions:
    """Container of the videos a command writes."""

    format: str = option("mp4", "mp4 (H.264, lossy), mkv (FFV1, lossless) or png (a folder of frames per video, "
                         "lossless).", choices=tuple(OUTPUT_FORMATS))


# ---- the generator ---------------------------------------------------------------------------------------
def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "y"):
        return True
    if lowered in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print and sys.exit(2); we raise a typed error instead
        raise ConfigError(message)


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or "(none)"
    return str(value)


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def help_text(f: dataclasses.Field) -> str:
    """The ``--help`` line of a field: its help, then its default (unless the help says it)."""
    meta, default = f.metadata, default_of(f)
    text = meta["help"] + (" (ignored: accepted for the original scripts)" if meta["ignored"] else "")
    if default is REQUIRED:
        return text if meta["positional"] else f"{text} (required)"
    if "(default" not in text:  # a help text may say what its default means
        text = f"{text} (default: {_shown(default)})"
    return text


def build_parser(cls: type, prog: str, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one flag per field of the dataclass ``cls`` (see the module docstring)."""
    # Commands whose earlier parsers accepted unique prefixes of a flag keep doing so (ALLOW_ABBREV).
    parser = _Parser(prog=prog, description=description if description is not None else cls.__doc__,
                     allow_abbrev=getattr(cls, "ALLOW_ABBREV", False),
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for owner in cls.__mro__:  # the command's own flags first, then each shared group under its docstring
        names = [n for n in owner.__dict__.get("__annotations__", {}) if n in fields]
        if not names:
            continue
        target = parser if owner is cls else parser.add_argument_group(owner.__doc__.strip().splitlines()[0].rstrip("."))
        for name in names:
            _add_field(target, fields.pop(name), hints[name])
    return parser


def _add_field(parser: Any, f: dataclasses.Field, hint: Any) -> None:
    meta, default = f.metadata, default_of(f)
    tp = _unwrap_optional(hint)
    kwargs: dict[str, Any] = {"help": help_text(f).replace("%", "%%")}
    choices = meta["choices"]
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        tp = type(choices[0])
    if tp is bool:
        kwargs.update(nargs="?", const=True, type=_parse_bool)  # `--x` alone means true, as store_true
    elif typing.get_origin(tp) is list:
        kwargs.update(type=_comma_list)
    else:
        kwargs.update(type=tp)
    if choices is not None:
        kwargs["choices"] = list(choices)
    if meta["metavar"]:
        kwargs["metavar"] = meta["metavar"]
    if meta["positional"]:
        parser.add_argument(f.name, **kwargs)
        return
    if default is REQUIRED:
        kwargs["required"] = True
    else:
        kwargs["default"] = default
    parser.add_argument(f"--{f.name}", *meta["aliases"], dest=f.name, **kwargs)


def _unknown_errors(cls: type, unknown: list[str]) -> list[str]:
    valid = [f"--{f.name}" for f in dataclasses.fields(cls)]
    valid += [a for f in dataclasses.fields(cls) for a in f.metadata["aliases"]]
    msgs, after_flag = [], False
    for tok in unknown:
        if not tok.startswith("-"):
            if not after_flag:  # a value right after an unknown flag belongs to it
                msgs.append(f"unexpected value {tok!r}")
            after_flag = False
            continue
        after_flag = "=" not in tok
        name = tok.split("=", 1)[0]
        close = difflib.get_close_matches(name, valid, n=1)
        msgs.append(f"unknown argument {name!r}" + (f"; did you mean {close[0]!r}?" if close else ""))
    return msgs


def _raise(errors: list[str]) -> None:
    if len(errors) == 1:
        raise ConfigError(errors[0])
    if errors:
        raise ConfigError("invalid arguments:\n  - " + "\n  - ".join(errors))


def validate(cfg: C) -> C:
    """Run the config's ``check()``; raise one :class:`ConfigError` listing every problem. Returns ``cfg``.

    The Python API (``evaluate_folders(cfg)``, ...) calls this, so a config built in code is held to the same
    rules as one parsed from the command line."""
    _raise(cfg.check() if hasattr(cfg, "check") else [])
    return cfg


def parse_config(cls: type[C], argv: Sequence[str], prog: str, description: str | None = None) -> C:
    """Parse ``argv`` into ``cls``. Raises :class:`ConfigError` naming every problem: unknown flags (with the
    closest valid one) and the config's own ``check()`` errors; a value that does not parse stops at once.
    ``--help`` prints and raises SystemExit(0)."""
    parser = build_parser(cls, prog, description)
    ns, unknown = parser.parse_known_args(list(argv))
    cfg = cls(**vars(ns))
    _raise(_unknown_errors(cls, unknown) + (cfg.check() if hasattr(cfg, "check") else []))
    return cfg


def run_config(cls: type[C], fn: Callable[[C], int | None], argv: Sequence[str] | None, prog: str,
               description: str | None = None) -> int:
    """``main`` of a command: parse ``argv`` (default ``sys.argv[1:]``) into ``cls`` and return ``fn(cfg)``.

    ``--help`` returns 0. A bad argument raises :class:`ConfigError`; the command's error boundary
    (:func:`wfvae.errors.run_command`) prints it as one line and exits 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_config(cls, argv, prog, description)
    except SystemExit as e:  # --help printed its text
        return int(e.code or 0)
    return int(fn(cfg) or 0)
