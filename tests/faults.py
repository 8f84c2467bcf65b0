"""Faults injected from the test side (the trainer has no test hooks).

* :func:`inject_nonfinite_losses`: make the VAE-GAN loss NaN at chosen steps (in-process, via monkeypatch).
* ``python tests/faults.py --save_delay_s S -- <wfvae train arguments>``: train in a process whose every
  checkpoint save sleeps ``S`` seconds after writing the temporary file, before the rename, so a test can
  kill it mid-save.
"""

from __future__ import annotations

import sys
import time

from wfvae.losses.vae_gan_loss import VAEGANLoss


def inject_nonfinite_losses(monkeypatch, first_step: int, count: int) -> None:
    """The loss of steps ``first_step .. first_step + count - 1`` (1-based, as logged) becomes NaN, for
    generator and discriminator updates alike."""

    def poisoned(method):
        def wrapper(self, *args, **kwargs):
            loss, parts = method(self, *args, **kwargs)
            step = args[3] if method is real_generator else args[2]  # the trainer's 0-based step
            if first_step <= step + 1 < first_step + count:
                loss = loss * float("nan")
            return loss, parts
        return wrapper

    real_generator, real_discriminator = VAEGANLoss.generator_loss, VAEGANLoss.discriminator_loss
    monkeypatch.setattr(VAEGANLoss, "generator_loss", poisoned(real_generator))
    monkeypatch.setattr(VAEGANLoss, "discriminator_loss", poisoned(real_discriminator))


def _train_with_slow_saves(delay_s: float, argv: list[str]) -> int:
    from wfvae.training.checkpoint import CheckpointManager
    from wfvae.training.trainer import main

    commit = CheckpointManager._commit

    def slow_commit(self, tmp, final):
        time.sleep(delay_s)
        commit(self, tmp, final)

    CheckpointManager._commit = slow_commit
    return main(argv)


if __name__ == "__main__":
    args = sys.argv[1:]
    assert args[0] == "--save_delay_s" and args[2] == "--", "usage: faults.py --save_delay_s S -- ARGS"
    sys.exit(_train_with_slow_saves(float(args[1]), args[3:]))
