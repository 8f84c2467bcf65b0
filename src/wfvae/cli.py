"""The ``wfvae`` command line.

How to run::

    wfvae --help
    wfvae <command> --help

Each command lives in the module that owns its concern and exposes ``main(argv) -> int``;
this file only dispatches. Modules are imported lazily so ``wfvae --help`` stays fast.
"""

from __future__ import annotations

import sys
from typing import Callable

from wfvae.errors import run_command


def _cmd_train(argv):
    from wfvae.training.trainer import main

    return main(argv)


def _cmd_data_check(argv):
    from wfvae.data.check import main

    return main(argv)


def _cmd_reconstruct(argv):
    from wfvae.inference.reconstruct import main

    return main(argv)


def _cmd_evaluate(argv):
    from wfvae.evaluation.evaluate import main

    return main(argv)


def _cmd_encode(argv):
    from wfvae.inference.latents import encode_main

    return encode_main(argv)


def _cmd_decode(argv):
    from wfvae.inference.latents import decode_main

    return decode_main(argv)


def _cmd_latent_stats(argv):
    from wfvae.inference.latents import stats_main

    return stats_main(argv)


def _cmd_report(argv):
    from wfvae.report.html import main

    return main(argv)


def _cmd_demo(argv):
    from wfvae.demo.run import main

    return main(argv)


# name -> (function, one-line help). Explicit on purpose: grep finds every command here.
COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "demo": (_cmd_demo, "train, reconstruct, evaluate and report on built-in clips (~5 min on a CPU)"),
    "train": (_cmd_train, "train a WFVAE / CausalVAE (single process or under torchrun)"),
    "data-check": (_cmd_data_check, "scan a video folder, report every usable and every bad file"),
    "reconstruct": (_cmd_reconstruct, "reconstruct videos with a trained VAE (gen_video.sh)"),
    "evaluate": (_cmd_evaluate, "PSNR / SSIM / LPIPS / FVD between two video folders (eval.sh)"),
    "report": (_cmd_report, "self-contained HTML report of a run folder: curves, reconstructions, metrics"),
    "encode": (_cmd_encode, "encode a video folder into latent shards (safetensors + JSON index)"),
    "decode": (_cmd_decode, "decode a latents folder back into videos"),
    "latent-stats": (_cmd_latent_stats, "per-channel latent mean/std as the config's scale/shift"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: wfvae <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        print(f"wfvae: unknown command '{name}'.{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    # one error boundary for every command: a user mistake prints one line and exits 2
    return run_command(f"wfvae {name}", COMMANDS[name][0], rest)


if __name__ == "__main__":
    sys.exit(main())
