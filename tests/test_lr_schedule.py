"""Learning-rate schedules: constant (the original's) and warm-up + cosine, a pure function of the step."""

import math

import pytest

from wfvae.config import parse_train_config
from wfvae.training.lr_schedule import lr_at


def test_constant_is_the_original_and_warmup_is_linear():
    assert [lr_at(s, 1e-3, 100) for s in (0, 50, 99)] == [1e-3] * 3
    assert [lr_at(s, 1e-3, 100, warmup_steps=4) for s in range(5)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])


def test_cosine_decays_to_zero_at_the_last_step():
    lrs = [lr_at(s, 2e-3, 110, warmup_steps=10, kind="cosine") for s in range(111)]
    assert lrs[9] == pytest.approx(2e-3) and lrs[10] == pytest.approx(2e-3)
    assert lrs[60] == pytest.approx(1e-3)  # half way through the decay
    assert lrs[110] == pytest.approx(0.0, abs=1e-12) and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[35] == pytest.approx(1e-3 * (1 + math.cos(math.pi * 0.25)))
    with pytest.raises(ValueError, match="choose one of"):
        lr_at(0, 1e-3, 10, kind="linear")


def test_options_parse_and_validate(tmp_path):
    cfg = parse_train_config(["--lr_scheduler", "cosine", "--lr_warmup_steps", "20"])
    assert (cfg.lr_scheduler, cfg.lr_warmup_steps) == ("cosine", 20)
    assert parse_train_config([]).lr_scheduler == "constant"
