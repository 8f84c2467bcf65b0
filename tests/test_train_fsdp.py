"""``--fsdp``: a real 2-process gloo run on CPU (torchrun), checkpoints that stay in the DDP layout, resume
across DDP <-> FSDP, and one FSDP step equal to one DDP step from the same checkpoint.

    A: FSDP from scratch, 2 steps (G with the adaptive GAN weight, then D; validation and EMA on) -> ckpt 2
    B: DDP  resumed from A's ckpt 2, one generator step -> ckpt 3
    C: FSDP resumed from A's ckpt 2, the same generator step -> ckpt 3   (B and C must agree)
    A and C run with --gradient_checkpointing, B and D without: recomputing blocks must not change a step.
    D: FSDP resumed from B's (DDP-written) ckpt 3, one discriminator step -> ckpt 4
"""

from __future__ import annotations

import subprocess

import pytest
import torch
from train_utils import (
    PYTHON,
    REPO,
    TINY_WFVAE,
    base_args,
    free_port,
    load_ckpt,
    make_data,
    max_abs_diff,
    run_dir,
    subprocess_env,
    train_records,
)

import wfvae
from wfvae.config import parse_train_config
from wfvae.errors import ConfigError
from wfvae.runtime import fsdp2_supported

needs_fsdp2 = pytest.mark.skipif(not fsdp2_supported(), reason="--fsdp is verified with torch >= 2.14")


def _torchrun(data, ckpt_dir, **overrides) -> subprocess.CompletedProcess:
    # lr 1e-3: an update moves weights by ~1e-3, far above the 1e-5 tolerance of the FSDP-vs-DDP comparison.
    args = base_args(data, ckpt_dir, device="cpu", disc_start=0, lr=1e-3, ema=True, eval_batch_size=1,
                     wavelet_loss=True, **overrides)
    cmd = [PYTHON, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "wfvae.train", *args]
    proc = subprocess.run(cmd, env=subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def _check_layout(ckpt: dict) -> None:
    """Full tensors under the original keys, integer-keyed optimizer state: the DDP / original layout."""
    gen = ckpt["state_dict"]["gen_model"]
    reference = wfvae.WFVAE.from_config(TINY_WFVAE).state_dict()
    assert gen.keys() == reference.keys()
    assert all(type(v) is torch.Tensor and v.shape == reference[k].shape for k, v in gen.items())
    opt = ckpt["optimizer_state"]["gen_optimizer"]
    n_params = sum(p.requires_grad for p in wfvae.WFVAE.from_config(TINY_WFVAE).parameters())
    assert sorted(opt["state"]) == list(range(n_params))
    assert opt["param_groups"][0]["params"] == list(range(n_params))
    assert all(type(t) is torch.Tensor for st in opt["state"].values() for t in st.values())
    assert len(ckpt["rng_states"]) == 2  # gathered from both ranks at the save
    assert ckpt["ema_state_dict"] and all(k.startswith("module.") for k in ckpt["ema_state_dict"])


@pytest.mark.slow
@needs_fsdp2
def test_fsdp_two_processes_save_resume_under_ddp_and_match_ddp(tmp_path):
    data = make_data(tmp_path / "data")

    # A: fresh FSDP run; step 1 also validates (an FSDP forward on every rank, including the EMA weights).
    # (with gradient checkpointing: blocks recomputed in the backward pass, FSDP re-gathering their shards)
    first = _torchrun(data, tmp_path / "a", fsdp=True, max_steps=2, save_ckpt_step=2, eval_steps=2,
                      gradient_checkpointing=True)
    assert "FSDP: generator sharded over 2 ranks" in first.stderr
    run_a = run_dir(tmp_path / "a")
    ckpt_a_path = run_a / "checkpoint-2.ckpt"
    ckpt_a = load_ckpt(ckpt_a_path)  # torch.load(weights_only=True)
    assert ckpt_a["current_step"] == 2
    _check_layout(ckpt_a)
    records_a = train_records(run_a)
    assert records_a[1]["train/d_weight"] > 0  # the adaptive weight was computed on the replicated last layer
    # prefer_ema=False: the EMA shadow covers trainable parameters only, so with the default (EMA preferred)
    # load_model misses the WFVAE's frozen wavelet filters -- for DDP-written checkpoints just the same.
    model = wfvae.load_model(str(ckpt_a_path), config=str(data["config"]), prefer_ema=False)
    assert max_abs_diff(model.state_dict(), ckpt_a["state_dict"]["gen_model"]) == 0.0
    assert (run_a / "pretrained" / "config.json").is_file()

    # B (DDP) and C (FSDP): the same generator step from A's checkpoint (same weights, Adam moments, data, RNG).
    resume = {"resume_from_checkpoint": ckpt_a_path, "max_steps": 3, "save_ckpt_step": 3, "eval_steps": 1000}
    ddp = _torchrun(data, tmp_path / "b", **resume)
    assert "resumed from" in ddp.stderr and "FSDP" not in ddp.stderr
    # C also recomputes its blocks (gradient checkpointing) and computes the convolutions' gradients in the
    # default layout (--conv_backward contiguous): the step must still equal B's plain DDP step
    fsdp = _torchrun(data, tmp_path / "c", fsdp=True, gradient_checkpointing=True, conv_backward="contiguous",
                     **resume)
    assert "resumed from" in fsdp.stderr and "FSDP: generator sharded over 2 ranks" in fsdp.stderr
    ckpt_b = load_ckpt(run_dir(tmp_path / "b") / "checkpoint-3.ckpt")
    ckpt_c = load_ckpt(run_dir(tmp_path / "c") / "checkpoint-3.ckpt")
    _check_layout(ckpt_c)
    gen_a, gen_b, gen_c = (c["state_dict"]["gen_model"] for c in (ckpt_a, ckpt_b, ckpt_c))
    update = max_abs_diff(gen_a, gen_b)
    diff = max_abs_diff(gen_b, gen_c)
    print(f"one generator step: largest update {update:.3e}, FSDP vs DDP max abs difference {diff:.3e}")
    assert update > 1e-4  # the step really moved the weights...
    assert diff < 1e-5    # ...and FSDP moved them the same way as DDP
    assert max_abs_diff(ckpt_b["ema_state_dict"], ckpt_c["ema_state_dict"]) < 1e-5
    opt_b, opt_c = (c["optimizer_state"]["gen_optimizer"]["state"] for c in (ckpt_b, ckpt_c))
    # DDP trains channels-last convolution weights, FSDP the default layout: float rounding differs a little
    for key in ("exp_avg", "exp_avg_sq"):
        rel = max(max_abs_diff({0: opt_b[i][key]}, {0: opt_c[i][key]}) / opt_b[i][key].abs().max().clamp_min(1e-12)
                  for i in opt_b)
        print(f"{key}: FSDP vs DDP max relative difference {rel:.3e}")
        assert rel < 1e-5, key
    rec_b, rec_c = train_records(run_dir(tmp_path / "b"))[3], train_records(run_dir(tmp_path / "c"))[3]
    for key in ("train/loss", "train/d_weight", "train/grad_norm_g"):
        assert rec_c[key] == pytest.approx(rec_b[key], rel=1e-4), key

    # D: a DDP-written checkpoint resumes under FSDP (discriminator step 3 -> 4).
    _torchrun(data, tmp_path / "d", fsdp=True, resume_from_checkpoint=run_dir(tmp_path / "b") / "checkpoint-3.ckpt",
              max_steps=4, save_ckpt_step=4, eval_steps=1000)
    ckpt_d = load_ckpt(run_dir(tmp_path / "d") / "checkpoint-4.ckpt")
    _check_layout(ckpt_d)
    assert ckpt_d["current_step"] == 4
    # a discriminator step leaves the generator as it was
    assert max_abs_diff(ckpt_d["state_dict"]["gen_model"], gen_b) == 0.0


def test_fsdp_flag_is_documented_and_rejects_fp16(tmp_path):
    data = make_data(tmp_path / "data")
    cfg = parse_train_config(base_args(data, tmp_path / "ckpt", fsdp=True))
    assert cfg.fsdp is True and (cfg.validate() is cfg if fsdp2_supported() else True)
    assert parse_train_config(base_args(data, tmp_path / "ckpt")).fsdp is False
    with pytest.raises(ConfigError, match="--fsdp does not support --mix_precision fp16"):
        parse_train_config(base_args(data, tmp_path / "ckpt", fsdp=True, mix_precision="fp16")).validate()


def test_fsdp_on_an_older_torch_is_a_clear_config_error(tmp_path, monkeypatch):
    data = make_data(tmp_path / "data")
    monkeypatch.setattr(torch, "__version__", "2.9.1+cu128")  # failed the 2-process test in session 9
    with pytest.raises(ConfigError, match=r"--fsdp is verified with PyTorch >= 2\.14 .*this is torch 2\.9\.1"
                                          r"\+cu128.*without --fsdp"):
        parse_train_config(base_args(data, tmp_path / "ckpt", fsdp=True)).validate()
    parse_train_config(base_args(data, tmp_path / "ckpt")).validate()  # DDP runs on it
    monkeypatch.setattr(torch, "__version__", "2.14.0a0+git1234")  # a pre-release of a verified version
    parse_train_config(base_args(data, tmp_path / "ckpt", fsdp=True)).validate()


@needs_fsdp2
def test_sharded_load_lists_problems_as_a_checkpoint_error(tmp_path):
    """A checkpoint that does not fit a model already sharded with FSDP2 fails like the unsharded path: one
    CheckpointError listing the problems (exit 2 in the CLI), not a torch RuntimeError; ignore_mismatched_sizes
    keeps the model's own tensor for the mismatched shapes and loads the rest."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from wfvae.errors import CheckpointError
    from wfvae.models import build_model
    from wfvae.training.parallel import full_model_state_dict, is_sharded, load_model_state_dict

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = build_model(TINY_WFVAE)
        good = {k: v.clone() for k, v in model.state_dict().items()}
        fully_shard(model, mesh=init_device_mesh("cpu", (1,)))
        assert any(is_sharded(p) for p in model.parameters())
        name = next(k for k, v in good.items() if v.ndim == 5)  # a 3D conv weight
        bad = {**good, name: torch.zeros(2, *good[name].shape[1:]), "extra.weight": torch.zeros(1)}
        del bad[next(k for k in good if k != name)]
        with pytest.raises(CheckpointError) as info:
            load_model_state_dict(model, bad, fsdp=True)
        message = str(info.value)
        assert "shape mismatches (1)" in message and "missing keys (1)" in message and "extra.weight" in message
        changed = {**good, name: torch.zeros(2, *good[name].shape[1:])}
        changed = {k: (v + 1 if k != name and v.is_floating_point() else v) for k, v in changed.items()}
        load_model_state_dict(model, changed, fsdp=True, ignore_mismatched_sizes=True)
        loaded = full_model_state_dict(model, fsdp=True)
        assert torch.equal(loaded[name], good[name])  # kept: the checkpoint's shape did not fit
        other = next(k for k, v in good.items() if k != name and v.is_floating_point())
        assert torch.equal(loaded[other], good[other] + 1)
    finally:
        dist.destroy_process_group()
