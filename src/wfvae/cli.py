"""The ``wfvae`` command line.

How to run::

    wfvae --help
    wfvae <command> --help

Each command is a typed config dataclass plus a function, in the module that owns its concern; its
``main(argv) -> int`` parses the config with the shared generator (:mod:`wfvae.options`). This file only
dispatches. A command's module is imported when that command runs (importlib, not at the top), so that
``wfvae --help`` and each command start without importing every other command's dependencies.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from typing import NamedTuple

from wfvae.errors import run_command


class Command(NamedTuple):
    module: str  # the module that owns the command: it holds the config class and ``main(argv) -> int``
    config: str  # the command's config dataclass (parsed by wfvae.options)
    help: str
    main_name: str = "main"
    config_module: str | None = None  # where the config class lives, when not in ``module``

    def load(self):
        """``(main function, config class)``; imports the command's module."""
        mod = importlib.import_module(self.module)
        config_mod = importlib.import_module(self.config_module) if self.config_module else mod
        return getattr(mod, self.main_name), getattr(config_mod, self.config)


# name -> command. Explicit on purpose: grep finds every command here.
COMMANDS: dict[str, Command] = {
    "demo": Command("wfvae.demo.run", "DemoConfig",
                    "train, reconstruct, evaluate and report on built-in clips (~5 min on a CPU)"),
    "train": Command("wfvae.training.trainer", "TrainConfig",
                     "train a WFVAE / CausalVAE (single process or under torchrun)", config_module="wfvae.config"),
    "data-check": Command("wfvae.data.check", "DataCheckConfig",
                          "scan a video folder, report every usable and every bad file"),
    "reconstruct": Command("wfvae.inference.reconstruct", "ReconstructConfig",
                           "reconstruct videos with a trained VAE (gen_video.sh)"),
    "evaluate": Command("wfvae.evaluation.evaluate", "EvalConfig",
                        "PSNR / SSIM / LPIPS / FVD between two video folders (eval.sh)"),
    "report": Command("wfvae.report.html", "ReportConfig",
                      "self-contained HTML report of a run folder: curves, reconstructions, metrics"),
    "encode": Command("wfvae.inference.latents", "EncodeConfig",
                      "encode a video folder into latent shards (safetensors + JSON index)", "encode_main"),
    "decode": Command("wfvae.inference.latents", "DecodeConfig", "decode a latents folder back into videos",
                      "decode_main"),
    "latent-stats": Command("wfvae.inference.latents", "LatentStatsConfig",
                            "per-channel latent mean/std as the config's scale/shift", "stats_main"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: wfvae <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {cmd.help}" for name, cmd in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        print(f"wfvae: unknown command '{name}'.{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    # one error boundary for every command: a user mistake prints one line and exits 2
    command_main, _config = COMMANDS[name].load()
    return run_command(f"wfvae {name}", command_main, rest)


if __name__ == "__main__":
    sys.exit(main())
