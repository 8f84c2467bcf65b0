"""``python -m wfvae.train``: train a WFVAE / CausalVAE (same as ``wfvae train``).

How to run::

    python -m wfvae.train --help
    python -m wfvae.train --model_name WFVAE --model_config examples/configs/wfvae_tiny.json \
        --video_path data/train --eval_video_path data/val --num_frames 9 --resolution 32 --report_to none
    torchrun --nproc_per_node=2 -m wfvae.train ...        # or: bash examples/train_ddp.sh

See :mod:`wfvae.training.trainer` for what a step does and how checkpoints and resume work.
"""

import sys

from wfvae.errors import run_command
from wfvae.training.trainer import main

if __name__ == "__main__":
    sys.exit(run_command("wfvae train", main))
