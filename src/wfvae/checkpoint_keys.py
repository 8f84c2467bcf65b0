"""Top-level keys of a training checkpoint (``checkpoint-<step>.ckpt``), shared by the writer and every reader.

The first group is the original WF-VAE trainer's layout and is public API: original checkpoints load here
and ours load in the original code. ``DISC_MODEL`` keeps the original's spelling ("dics") on purpose. The
second group are additions of this package; the original ignores unknown keys. See
:mod:`wfvae.training.checkpoint` for the full layout and how files are written.
"""

from __future__ import annotations

# ---- the original's layout -------------------------------------------------------------------------------
EPOCH = "epoch"
STEP = "current_step"
OPTIMIZER_STATE = "optimizer_state"
GEN_OPTIMIZER = "gen_optimizer"
DISC_OPTIMIZER = "disc_optimizer"
STATE_DICT = "state_dict"
GEN_MODEL = "gen_model"
DISC_MODEL = "dics_model"
EMA_STATE = "ema_state_dict"
SCALER_STATE = "scaler_state"
SAMPLER_STATE = "sampler_state"
#: Prefix of the original's weight names (it saved DDP-wrapped modules); EMA keys always carry it.
MODULE_PREFIX = "module."

# ---- additions of this package ---------------------------------------------------------------------------
RNG_STATES = "rng_states"
CONFIG = "config"
MODEL_NAME = "model_name"
MODEL_CONFIG = "model_config"
COUNTERS = "counters"
VERSION = "wfvae_version"

#: Keys without which a file is not a training checkpoint.
REQUIRED_KEYS = (EPOCH, STEP, OPTIMIZER_STATE, STATE_DICT, SAMPLER_STATE)
