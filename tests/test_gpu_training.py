"""Training-side GPU readiness that shows on a CPU (issue 18): fp16 with a GradScaler survives a non-finite
loss, one host sync per step, the cuDNN/TF32 options, and FSDP2's mixed-precision policy over gloo."""

from __future__ import annotations

import subprocess

import pytest
import torch
from faults import inject_nonfinite_losses
from train_utils import (
    PYTHON,
    REPO,
    base_args,
    free_port,
    load_ckpt,
    make_data,
    read_metrics,
    run_dir,
    subprocess_env,
)

from wfvae.config import parse_train_config
from wfvae.distributed import init_distributed
from wfvae.errors import ConfigError
from wfvae.runtime import fsdp2_supported
from wfvae.training import trainer as trainer_module
from wfvae.training.meters import LossAverager
from wfvae.training.trainer import Trainer, main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("gpu_training_data"))


def test_fp16_nonfinite_loss_is_skipped_and_training_goes_on(data, tmp_path, monkeypatch):
    # Step 2's loss is NaN. With fp16 the GradScaler has unscaled that optimizer's gradients; before the fix
    # the skipped update left the scaler's per-optimizer state behind and the next unscale_ raised
    # "unscale_() has already been called on this optimizer since the last update()".
    inject_nonfinite_losses(monkeypatch, first_step=2, count=1)
    args = base_args(data, tmp_path, mix_precision="fp16", max_steps=5, disc_start=0, eval_video_path=None,
                     save_ckpt_step=100, max_nan_skips=3)
    assert main(args) == 0
    run = run_dir(tmp_path)
    events = [(r["event"], r["step"]) for r in read_metrics(run) if "event" in r]
    assert ("nonfinite_skip", 2) in events
    ckpt = load_ckpt(run / "checkpoint-5.ckpt")
    counters = ckpt["counters"]
    assert ckpt["current_step"] == 5 and counters["nan_skips_total"] == 1
    # every inf/NaN update (the injected one and any fp16 overflow) halved the scale once: none was lost
    assert ckpt["scaler_state"]["scale"] == 2.0**16 * 0.5 ** (1 + counters["amp_overflows"])
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"]["gen_model"].values() if v.is_floating_point())


def test_one_host_sync_per_training_step(data, tmp_path, monkeypatch):
    cfg = parse_train_config(base_args(data, tmp_path, disc_start=0, eval_video_path=None, mix_precision="bf16"))
    cfg.validate()
    trainer = Trainer(cfg, init_distributed("cpu"))
    video = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    # a generator and a discriminator update outside the count (first-call set-up, optimizer state)
    trainer.generator_step(video)
    trainer.discriminator_step(video)
    # AdamW reads its per-parameter step counters with .item(); torch keeps those on the CPU also in CUDA runs
    # (neither fused nor capturable), so they are host reads, not device syncs, and are not counted.
    step_counters = {id(st["step"]) for opt in (trainer.opts.gen, trainer.opts.disc) for st in opt.state.values()}
    assert step_counters
    calls = {"item": 0, "tolist": 0, "__float__": 0, "__int__": 0, "__bool__": 0}
    for name in calls:
        real = getattr(torch.Tensor, name)

        def counting(self, *a, _real=real, _name=name, **k):
            if id(self) not in step_counters:
                calls[_name] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counting)
    averager = LossAverager()
    for _ in range(2):  # two generator and two discriminator updates
        for step in (trainer.generator_step, trainer.discriminator_step):
            status, parts = step(video)
            assert status == "ok"
            averager.add(parts)
    per_step = dict(calls)
    logged = averager.pop()
    monkeypatch.undo()
    trainer.close()
    assert per_step == {"item": 0, "tolist": 4, "__float__": 0, "__int__": 0, "__bool__": 0}, per_step
    assert calls["tolist"] == 5 and calls["item"] == 0, "the log line reads every mean in one transfer"
    assert len(logged) >= 4 and all(isinstance(v, float) for v in logged.values())


def test_cuda_options_parse_validate_and_reach_the_backends(data, tmp_path, monkeypatch):
    cfg = parse_train_config(base_args(data, tmp_path))
    assert cfg.cudnn_benchmark is True and cfg.allow_tf32 is False and cfg.fsdp_param_dtype == "fp32"
    cfg = parse_train_config(base_args(data, tmp_path, cudnn_benchmark="false", allow_tf32=True))
    assert cfg.cudnn_benchmark is False and cfg.allow_tf32 is True
    with pytest.raises(ConfigError, match="--fsdp_param_dtype bf16 needs --fsdp and --mix_precision bf16"):
        parse_train_config(base_args(data, tmp_path, fsdp_param_dtype="bf16", mix_precision="bf16")).validate()
    with pytest.raises(ConfigError, match="--fsdp_param_dtype bf16 needs"):
        parse_train_config(base_args(data, tmp_path, fsdp=True, fsdp_param_dtype="bf16",
                                     mix_precision="fp32")).validate()
    seen = []
    monkeypatch.setattr(trainer_module, "configure_backends", lambda device, **kw: seen.append((device.type, kw)))
    cfg = parse_train_config(base_args(data, tmp_path, allow_tf32=True, eval_video_path=None))
    cfg.validate()
    Trainer(cfg, init_distributed("cpu")).close()
    assert seen == [("cpu", {"benchmark": True, "allow_tf32": True})]


@pytest.mark.slow
@pytest.mark.skipif(not fsdp2_supported(), reason="--fsdp is verified with torch >= 2.14")
def test_fsdp_bf16_parameters_two_gloo_processes(data, tmp_path):
    args = base_args(data, tmp_path, device="cpu", fsdp=True, fsdp_param_dtype="bf16", mix_precision="bf16",
                     disc_start=0, max_steps=2, save_ckpt_step=2, eval_batch_size=1, lr=1e-3)
    cmd = [PYTHON, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "wfvae.train", *args]
    proc = subprocess.run(cmd, env=subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "parameters gathered in bfloat16, gradients reduced in float32" in proc.stderr
    run = run_dir(tmp_path)
    ckpt = load_ckpt(run / "checkpoint-2.ckpt")
    gen = ckpt["state_dict"]["gen_model"]
    floats = [v for v in gen.values() if v.is_floating_point()]
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in floats)  # fp32 master weights
    records = [r for r in read_metrics(run) if "train/loss" in r or "train/g_loss" in r]
    assert records, "the run logged its losses"
