"""One configuration system: every command is a config dataclass parsed by the shared generator (wfvae.options).

Walks every command of ``wfvae``: each option shows its help and its default in ``--help``, the parser's defaults
are the dataclass's, a flag with the same default in two commands is defined once (in a shared option group),
errors are reported all at once with a suggestion, and no module writes a parser by hand."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from wfvae.cli import COMMANDS
from wfvae.cli import main as cli
from wfvae.options import REQUIRED, build_parser, default_of, help_text

SRC = Path(__file__).resolve().parents[1] / "src" / "wfvae"

# The same flag with the same default in two commands, but a different meaning, so not one shared field.
SAME_NAME_DIFFERENT_MEANING = {
    "seed": "what the seed drives differs per command (the whole demo, posterior samples)",
    "subset_size": "reconstruct draws a random subset, evaluate takes the first N pairs",
    "resolution": "training's is the side of a square training crop (divisible by the spatial compression); "
                  "the other commands resize the short side to it",
}


def _configs() -> dict[str, type]:
    return {name: command.load()[1] for name, command in COMMANDS.items()}


def _defining_class(cls: type, name: str) -> type:
    return next(k for k in cls.__mro__ if name in k.__dict__.get("__annotations__", {}))


def _squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text)  # argparse re-wraps lines (also at hyphens)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_shows_every_option_with_help_and_default(name, capsys):
    cls = _configs()[name]
    capsys.readouterr()
    assert cli([name, "--help"]) == 0
    text = _squeeze(capsys.readouterr().out)
    for f in dataclasses.fields(cls):
        assert f.metadata["help"].strip(), f"{name}: --{f.name} has no help text"
        shown = f.name if f.metadata["positional"] else f"--{f.name}"
        line = help_text(f)
        assert _squeeze(line) in text, f"{name}: {shown}'s help and default are not in --help: {line!r}"
        if not f.metadata["positional"]:
            assert shown in text
            assert "default" in line or line.endswith("(required)"), f"{name}: {shown} shows no default: {line!r}"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_parser_defaults_are_the_dataclass_defaults(name):
    cls = _configs()[name]
    actions = {a.dest: a for a in build_parser(cls, f"wfvae {name}")._actions}
    for f in dataclasses.fields(cls):
        default = default_of(f)
        if default is REQUIRED:
            assert actions[f.name].required or f.metadata["positional"], f"{name}: --{f.name} should be required"
        else:
            assert actions[f.name].default == default, f"{name}: --{f.name}"


def test_no_default_is_written_twice():
    """A flag with the same default in two commands comes from one field of a shared option group."""
    seen: dict[tuple[str, str], set[type]] = {}
    for cls in _configs().values():
        for f in dataclasses.fields(cls):
            default = default_of(f)
            if default is None or default is REQUIRED or f.metadata["ignored"]:
                continue
            seen.setdefault((f.name, repr(default)), set()).add(_defining_class(cls, f.name))
    twice = {key: sorted(k.__name__ for k in owners) for key, owners in seen.items()
             if len(owners) > 1 and key[0] not in SAME_NAME_DIFFERENT_MEANING}
    assert not twice, f"defaults written in more than one place (move them into a shared option group): {twice}"
    # the shared groups are really shared: 33 frames, the model flags and the decoding workers are written once
    configs = _configs()
    assert {_defining_class(configs[n], "num_frames").__name__ for n in ("reconstruct", "encode", "evaluate")} \
        == {"ClipOptions"}
    assert {_defining_class(configs[n], f).__name__ for n in ("reconstruct", "encode", "decode")
            for f in ("ckpt", "conv", "device", "overwrite", "offline")} \
        == {"ModelOptions", "DeviceOptions", "OverwriteOptions", "OfflineOptions"}
    assert {_defining_class(configs[n], "num_workers").__name__ for n in ("reconstruct", "encode", "evaluate")} \
        == {"DecodeWorkerOptions"}
    assert {_defining_class(configs[n], "resize").__name__ for n in ("train", "reconstruct", "evaluate")} \
        == {"ResizeOptions"}
    sources = "\n".join(p.read_text() for p in SRC.rglob("*.py"))
    assert len(re.findall(r"option\(\s*33\b", sources)) == 1


def test_no_hand_written_parsers():
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                 if p.name != "options.py" and re.search(r"\.add_argument\(|ArgumentParser\(", p.read_text())]
    assert offenders == []


def test_every_command_reports_all_errors_at_once(tmp_path, capsys):
    # (--num_frme, not a prefix: data-check accepts unique prefixes of a flag, as its parser always did)
    assert cli(["data-check", "--video_path", str(tmp_path), "--num_frme", "9", "--num_frames", "0",
                "--resolution", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wfvae data-check: error: invalid arguments:")
    assert "unknown argument '--num_frme'; did you mean '--num_frames'?" in err
    assert "--num_frames must be >= 1, got 0" in err and "--resolution must be >= 1, got -1" in err
    assert "Traceback" not in err
    # aliases of the original scripts keep working, and a bad value is named with its choices
    assert cli(["reconstruct", "--real_video_dir", "a", "--generated_video_dir", "b", "--from_pretrained", "m",
                "--metrics", "psnr,bogus", "--num_frames", "0"]) == 2
    err = capsys.readouterr().err
    assert "--metrics bogus: choose from psnr, ssim, lpips" in err and "--num_frames must be >= 1, got 0" in err
    assert cli(["evaluate", "--real_video_dir", "a", "--generated_video_dir", "b", "--fvd_method", "i3d"]) == 2
    assert "argument --fvd_variant/--fvd_method: invalid choice: 'i3d'" in capsys.readouterr().err
    # a missing required flag is one line, not argparse's usage screen
    assert cli(["encode", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "wfvae encode: error: the following arguments are required: --video_path, --ckpt/--from_pretrained"


def test_python_api_checks_the_config_like_the_command_line(tmp_path):
    from wfvae.errors import ConfigError
    from wfvae.evaluation.evaluate import EvalConfig, evaluate_folders

    cfg = EvalConfig(real_video_dir=str(tmp_path), generated_video_dir=str(tmp_path), metric=["psnr", "flolpips"],
                     subset_size=-1)
    with pytest.raises(ConfigError, match=r"(?s)--metric psnr,flolpips: choose from.*--subset_size must be >= 0"):
        evaluate_folders(cfg)
