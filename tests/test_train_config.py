"""TrainConfig: parsing the original's flags, errors before any worker starts, ``--help``."""

from __future__ import annotations

import json

import pytest

from wfvae.config import TrainConfig, parse_train_config
from wfvae.errors import ConfigError
from wfvae.training.trainer import main, preflight

TINY_WFVAE = {
    "_class_name": "WFVAEModel", "base_channels": 8, "encoder_energy_flow_hidden_size": 8,
    "decoder_energy_flow_hidden_size": 8, "encoder_num_resblocks": 1, "decoder_num_resblocks": 1,
    "latent_dim": 4, "use_attention": False, "norm_type": "layernorm", "t_interpolation": "trilinear",
}


@pytest.fixture()
def setup(tmp_path):
    videos = tmp_path / "videos" / "sub"
    videos.mkdir(parents=True)
    (videos / "a.mp4").write_bytes(b"")  # only its name matters for the folder check
    cfg_path = tmp_path / "tiny.json"
    cfg_path.write_text(json.dumps(TINY_WFVAE))
    base = ["--model_name", "WFVAE", "--model_config", str(cfg_path), "--video_path", str(tmp_path / "videos"),
            "--report_to", "none", "--num_frames", "9", "--resolution", "32", "--eval_num_frames", "9",
            "--eval_resolution", "32", "--perceptual_random_backbone"]
    return tmp_path, base


def test_original_command_line_parses(setup):
    _, base = setup
    cfg = parse_train_config(base + [
        "--exp_name", "WFVAE", "--lr", "0.00001", "--epochs", "4", "--disc_start", "0", "--save_ckpt_step", "5000",
        "--eval_lpips", "--ema", "--ema_decay", "0.999", "--loss_type", "l1", "--wavelet_loss", "--wavelet_weight",
        "0.1", "--disc_cls", "causalvideovae.model.losses.LPIPSWithDiscriminator3D", "--mix_precision", "fp16"])
    assert cfg.ema is True and cfg.eval_lpips is True and cfg.wavelet_loss is True
    assert cfg.lr == 1e-5 and cfg.epochs == 4 and cfg.mix_precision == "fp16" and cfg.max_steps is None
    assert cfg.disc_class_name == "LPIPSWithDiscriminator3D"
    assert cfg.run_name == "WFVAE-lr1.00e-05-bs1-rs32-sr2-fr9"  # the original's folder pattern
    cfg.validate()
    assert preflight(cfg) == (8, 4)
    assert parse_train_config(base + ["--ema", "false"]).ema is False
    # the last occurrence wins, so train_ddp.sh can forward overrides after its defaults
    assert parse_train_config(base + ["--lr", "1", "--lr", "2"]).lr == 2.0


@pytest.mark.parametrize("args, match", [
    (["--num_frame", "9"], r"unknown argument '--num_frame'; did you mean '--num_frames'\?$"),
    (["--mix_precision", "fp8"], "invalid choice"),
    (["--num_frames", "nine"], "invalid int"),
    (["--model_name", "VAE"], "invalid choice"),
])
def test_parse_errors(setup, args, match):
    _, base = setup
    with pytest.raises(ConfigError, match=match):
        parse_train_config(base + args)


@pytest.mark.parametrize("override, match", [
    (["--num_frames", "16"], r"num_frames 16 is not 1 \+ k\*4.*13 or 17"),
    (["--resolution", "36"], r"resolution 36 is not divisible by the spatial compression 8"),
    (["--eval_num_frames", "10"], r"eval_num_frames 10"),
])
def test_model_arithmetic_errors(setup, override, match):
    _, base = setup
    cfg = parse_train_config(base + override).validate()
    with pytest.raises(ConfigError, match=match):
        preflight(cfg)


def test_validate_errors(setup, tmp_path):
    _, base = setup
    empty = tmp_path / "empty"
    (empty / "deep").mkdir(parents=True)
    (empty / "deep" / "notes.txt").write_text("no videos here")
    cases = [
        (["--video_path", str(tmp_path / "missing")], "is not a folder"),
        (["--video_path", str(empty)], "contains no video files"),
        (["--eval_video_path", str(empty)], "eval_video_path"),
        (["--model_config", str(tmp_path / "nope.json")], "is not a file"),
        (["--disc_cls", "causalvideovae.model.losses.LPIPSWithDiscriminator"], "Did you mean"),
        (["--batch_size", "0"], "batch_size must be >= 1"),
        (["--keep_last_k", "1"], "keep_last_k"),
        (["--resume_from_checkpoint", str(tmp_path / "x.ckpt")], "is not a .ckpt file"),
    ]
    for override, match in cases:
        with pytest.raises(ConfigError, match=match):
            parse_train_config(base + override).validate()
    with pytest.raises(ConfigError, match="model_name"):
        TrainConfig(video_path=str(tmp_path), model_config=base[3], report_to="none").validate()


def test_main_exit_codes_and_help(setup, capsys):
    _, base = setup
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--num_frames", "--resume_from_checkpoint", "--disc_cls", "--eval_lpips", "--max_nan_skips"):
        assert flag in out
    assert "--debug" not in out  # no test-only flags: tests inject faults from the test side (tests/faults.py)
    assert main(base + ["--check_only"]) == 0
    assert main(base + ["--num_frames", "8", "--check_only"]) == 2
    assert main(base + ["--bogus"]) == 2
    assert "unknown argument '--bogus'" in capsys.readouterr().err


def test_report_to_wandb_without_package_names_the_extra(setup, monkeypatch):
    import sys

    _, base = setup
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(ConfigError, match=r"pip install wfvae\[wandb\]"):
        parse_train_config(base + ["--report_to", "wandb"]).validate()


def test_missing_lpips_weights_fail_in_preflight(setup, monkeypatch, tmp_path):
    from wfvae.errors import MissingWeightsError

    _, base = setup
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    monkeypatch.delenv("WFVAE_LPIPS_BACKBONE", raising=False)
    cfg = parse_train_config([a for a in base if a != "--perceptual_random_backbone"]).validate()
    with pytest.raises(MissingWeightsError, match="lpips_backbone_path"):
        preflight(cfg)
    cfg.perceptual_weight = 0.0  # no perceptual term: no weights needed
    assert preflight(cfg) == (8, 4)
