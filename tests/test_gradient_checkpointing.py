"""enable_gradient_checkpointing(): same gradients as the plain backward, fewer saved activations."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wfvae.models import build_model
from wfvae.models.layers.checkpointing import is_checkpointable
from wfvae.runtime import fsdp2_supported

ROOT = Path(__file__).parents[1]
CONFIGS = ROOT / "examples" / "configs"


def _model(name: str, dtype=torch.float64, **overrides):
    config = json.loads((CONFIGS / f"{name}.json").read_text())
    config.update(overrides)
    torch.manual_seed(0)
    return build_model(config).to(dtype).train()


def _video(model, dtype, frames=5, size=16):
    g = torch.Generator().manual_seed(1)
    return (torch.rand(1, 3, frames, size, size, generator=g) * 2 - 1).to(dtype)


def _loss_and_grads(model, video, seed=7, autocast=False):
    """A training-style step: encode, sample, decode, L1 + KL (+ the wavelet outputs), backward."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # posterior noise and dropout masks
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(video)
        loss = (out.sample.float() - video.float()).abs().mean() + 1e-6 * out.posterior.kl().float().mean()
        if out.extra is not None:
            loss = loss + sum((a.float() - b.float()).abs().mean() for a, b in zip(out.extra[0::2], out.extra[1::2]))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _saved_bytes(model, video) -> int:
    """Bytes autograd keeps for the backward pass outside checkpointed blocks (inside them, checkpoint's
    own hooks take over and keep nothing but the block inputs)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(video)
    return total


@pytest.mark.parametrize("name, overrides", [
    ("wfvae_tiny", {}),
    ("wfvae_tiny", {"dropout": 0.2, "norm_type": "groupnorm", "base_channels": 32,
                    "encoder_energy_flow_hidden_size": 32, "decoder_energy_flow_hidden_size": 32,
                    "t_interpolation": "nearest"}),
    ("causalvae_tiny", {"dropout": 0.2}),
])
def test_gradients_equal_the_plain_backward(name, overrides):
    # float64: within 1e-6 relative; float32 on CPU: bit for bit (same ops on the same values)
    for dtype in (torch.float64, torch.float32):
        model = _model(name, dtype, **overrides)
        video = _video(model, dtype)
        loss_ref, ref = _loss_and_grads(model, video)
        assert model.enable_gradient_checkpointing() is model and model.is_gradient_checkpointing
        loss_ck, ck = _loss_and_grads(model, video)
        assert model.disable_gradient_checkpointing() is model and not model.is_gradient_checkpointing
        assert sorted(ck) == sorted(ref) and len(ref) == sum(p.requires_grad for p in model.parameters())
        assert torch.equal(loss_ck, loss_ref)
        for key in ref:
            if dtype == torch.float32:
                assert torch.equal(ck[key], ref[key]), key
            else:
                err = ((ck[key] - ref[key]).norm() / ref[key].norm().clamp_min(1e-30)).item()
                assert err <= 1e-6, (key, err)


def test_bf16_autocast_gradients_equal():
    model = _model("wfvae_tiny", torch.float32)
    video = _video(model, torch.float32)
    loss_ref, ref = _loss_and_grads(model, video, autocast=True)
    model.enable_gradient_checkpointing()
    loss_ck, ck = _loss_and_grads(model, video, autocast=True)
    assert torch.equal(loss_ck, loss_ref)
    for key in ref:
        assert torch.equal(ck[key], ref[key]), key


def test_blocks_are_recomputed_and_activations_dropped():
    model = _model("wfvae_tiny", torch.float32)
    blocks = [m for m in model.modules() if is_checkpointable(m)]
    kinds = {type(m).__name__ for m in blocks}
    assert {"ResnetBlock2D", "ResnetBlock3D", "AttnBlock3DFix", "Downsample", "Upsample",
            "Spatial2xTime2x3DDownsample", "Spatial2xTime2x3DUpsample"} <= kinds
    conv = model.decoder.mid[0].conv1
    calls = []
    conv.register_forward_hook(lambda *_: calls.append(1))
    video = _video(model, torch.float32)
    plain = _saved_bytes(model, video)
    _loss_and_grads(model, video)
    assert len(calls) == 2  # _saved_bytes + the step: no recomputation
    model.enable_gradient_checkpointing()
    calls.clear()
    checkpointed = _saved_bytes(model, video)
    _loss_and_grads(model, video)
    assert len(calls) == 3  # once more in the backward pass
    # what is left: block inputs and the layers outside blocks (wavelets, conv_in/out, norm_out)
    print(f"saved for backward: {plain} bytes plain, {checkpointed} checkpointed")
    assert checkpointed < 0.4 * plain, (checkpointed, plain)


def test_streaming_state_is_not_recomputed():
    """Chunked calls with gradients on: blocks are not checkpointed (the causal cache is updated once)."""
    model = _model("wfvae_tiny", torch.float64).eval().enable_gradient_checkpointing()
    video = _video(model, torch.float64, frames=17, size=16).requires_grad_(True)
    full = model.encode(video).moments
    chunked = model.encode(video, chunk_size=4).moments
    torch.testing.assert_close(chunked, full, atol=1e-10, rtol=0)
    (g_full,) = torch.autograd.grad(full.sum(), video)
    (g_chunked,) = torch.autograd.grad(chunked.sum(), video)
    torch.testing.assert_close(g_chunked, g_full, atol=1e-10, rtol=0)


@pytest.mark.parametrize("fsdp", [False, pytest.param(True, marks=pytest.mark.skipif(
    not fsdp2_supported(), reason="--fsdp is verified with torch >= 2.14"))])
def test_trainer_keeps_conv_weights_channels_last_except_under_fsdp(tmp_path, fsdp):
    """``wfvae train`` stores conv weights in the activations' layout (no per-call weight copy); the
    gradients and the layout of each gradient follow, and equal the default layout's in float64."""
    from wfvae.config import TrainConfig
    from wfvae.training.builders import build_model as build_trainer_model

    cfg = TrainConfig(video_path=str(tmp_path), model_name="WFVAE", model_config=str(CONFIGS / "wfvae_tiny.json"),
                      report_to="none",
                      fsdp=fsdp, gradient_checkpointing=True)
    torch.manual_seed(0)
    model = build_trainer_model(cfg, None).double()
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    layout = [m.weight.is_contiguous(memory_format=torch.channels_last_3d if m.weight.dim() == 5
                                     else torch.channels_last) for m in convs]
    assert model.is_gradient_checkpointing
    if fsdp:  # FSDP2 shards along dim 0 of the default layout
        assert all(m.weight.is_contiguous() for m in convs)
        return
    assert all(layout) and any(not m.weight.is_contiguous() for m in convs)
    plain = _model("wfvae_tiny")
    plain.load_state_dict(model.state_dict())
    video = _video(model, torch.float64)
    loss, grads = _loss_and_grads(model, video)
    loss_plain, grads_plain = _loss_and_grads(plain, video)
    assert loss.item() == pytest.approx(loss_plain.item(), rel=1e-12)
    for name, g in grads_plain.items():
        assert grads[name].stride() == dict(model.named_parameters())[name].stride(), name
        torch.testing.assert_close(grads[name], g, rtol=1e-9, atol=1e-12)


def test_contiguous_optimizer_and_ema_state_take_the_channels_last_layout(tmp_path):
    """Adam moments and EMA shadows from an original checkpoint are contiguous; loading them gives each its
    channels-last parameter's strides (mixed layouts would take the optimizers' slow per-tensor path)."""
    from wfvae.training.ema import EMA
    from wfvae.training.parallel import load_optimizer_state_dict

    model = _model("wfvae_tiny", torch.float32).use_channels_last_weights()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _loss_and_grads(model, _video(model, torch.float32))
    opt.step()
    saved = opt.state_dict()
    as_original = {"param_groups": saved["param_groups"],
                   "state": {i: {k: v.contiguous() for k, v in st.items()} for i, st in saved["state"].items()}}
    weights = [p for p in model.parameters() if p.dim() == 5 and not p.is_contiguous()]
    assert weights
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    load_optimizer_state_dict(model, fresh, as_original, fsdp=False)
    for p in weights:
        for key in ("exp_avg", "exp_avg_sq"):
            assert fresh.state[p][key].stride() == p.stride()
            torch.testing.assert_close(fresh.state[p][key], opt.state[p][key], rtol=0, atol=0)
    ema = EMA(model, decay=0.9)
    ema.load_state_dict({k: v.contiguous() for k, v in ema.state_dict().items()})
    params = dict(model.named_parameters())
    assert all(ema.shadow[n].stride() == params[n].stride() for n in ema.shadow)


def test_ddp_gradients_are_views_of_its_buckets_with_the_plain_values(tmp_path):
    # DDP keeps all-reduce buckets as large as the gradients; with gradient_as_bucket_view each .grad is a
    # view into them (no second copy of every gradient), in the parameter's layout (channels-last weights),
    # also after zero_grad(set_to_none=True) between steps. A one-process gloo group, in a child process.
    script = r"""
import os, sys, torch, torch.nn as nn, torch.distributed as dist
from wfvae.distributed import DistEnv
from wfvae.training.parallel import wrap_generator
dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
torch.manual_seed(0)
model = nn.Sequential(nn.Conv3d(3, 8, 3, padding=1), nn.SiLU(), nn.Conv3d(8, 4, 3, padding=1))
model = model.to(memory_format=torch.channels_last_3d)
plain = nn.Sequential(nn.Conv3d(3, 8, 3, padding=1), nn.SiLU(), nn.Conv3d(8, 4, 3, padding=1))
plain.load_state_dict(model.state_dict())
env = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), backend="gloo")
wrapped = wrap_generator(model, env, fsdp=False)
x = torch.randn(2, 3, 3, 6, 6).to(memory_format=torch.channels_last_3d)
for step in range(2):
    for m in (model, plain):
        for p in m.parameters():
            p.grad = None  # zero_grad(set_to_none=True)
    wrapped(x + step).square().mean().backward()
    plain(x + step).square().mean().backward()
    storages = {p.grad.untyped_storage().data_ptr() for p in model.parameters()}
    assert len(storages) == 1, f"{len(storages)} gradient storages: not views of one bucket"
    w = model[0].weight
    assert w.grad.stride() == w.stride(), (w.grad.stride(), w.stride())
    for p, q in zip(model.parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-7)
dist.destroy_process_group()
print("OK")
"""
    from train_utils import subprocess_env

    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "store")], env=subprocess_env(),
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
