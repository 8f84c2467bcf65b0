"""CUDA-path behaviour that is observable on a CPU (issue 18): what reaches the fused attention kernel,
GroupNorm that keeps the channels-last layout, memory-mapped checkpoint loading, posterior noise dtype,
decoder threads, device binding and precision fallback. ``benchmarks/gpu_check.sh`` checks the rest on a GPU.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from wfvae import runtime
from wfvae.models import build_model, load_model
from wfvae.models.layers import blocks, norm
from wfvae.models.outputs import DiagonalGaussian
from wfvae.distributed import cuda_index_for

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(__file__).parent / "data" / "reference"


# ---- item 2: attention reaches SDPA as (B, heads, L, D) -------------------------------------------------
def test_attention_calls_sdpa_with_4d_inputs_and_keeps_the_numbers(monkeypatch):
    model = load_model(REFERENCE / "wfvae_small", dtype=torch.float64)
    io = load_file(str(REFERENCE / "wfvae_small" / "io.safetensors"))
    seen = []
    real_sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append((q.shape, k.shape, v.shape))
        return real_sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(blocks.F, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        moments = model.encode(io["case0.input"]).moments
    assert seen, "the WF-VAE fixture has AttnBlock3DFix layers: SDPA must be called"
    for q, k, v in seen:
        assert len(q) == len(k) == len(v) == 4, (q, k, v)
        assert q[1] == 1, "one head: the attention is over all channels of a pixel"
    expected = io["case0.moments"][:, : model.latent_channels]
    assert (moments[:, : model.latent_channels] - expected).abs().max().item() <= 1e-6


def test_attention_4d_equals_the_3d_formulation():
    torch.manual_seed(0)
    block = blocks.AttnBlock3DFix(32, norm_type="layernorm").double().eval()
    x = torch.randn(2, 32, 3, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        out = block(x)
        h = block.norm(x)
        q, k, v = (m(h).permute(0, 2, 3, 4, 1).reshape(6, 30, 32) for m in (block.q, block.k, block.v))
        att = torch.softmax(q @ k.transpose(1, 2) / 32**0.5, dim=-1) @ v  # (B*T, HW, C), plain formula
        ref = x + block.proj_out(att.reshape(2, 3, 5, 6, 32).permute(0, 4, 1, 2, 3))
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)


# ---- item 7: GroupNorm keeps channels-last (the CUDA path, forced on the CPU) ---------------------------
def _force_layout_path(monkeypatch):
    """Take ClipGroupNorm's own channels-last path on the CPU, as it is taken on CUDA.

    Returns, for every input still sent to ATen's group_norm, whether it was channels-last.
    """
    aten_inputs = []
    real_group_norm = F.group_norm

    def counting_group_norm(x, *args, **kwargs):
        channels_last = torch.channels_last_3d if x.dim() == 5 else torch.channels_last
        aten_inputs.append(x.is_contiguous(memory_format=channels_last) and not x.is_contiguous())
        return real_group_norm(x, *args, **kwargs)

    monkeypatch.setattr(norm, "keeps_channels_last", lambda x, device_type=None: (
        x.dim() in (4, 5) and x.shape[1] > 1 and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last_3d if x.dim() == 5 else torch.channels_last)))
    monkeypatch.setattr(torch.nn.modules.normalization.F, "group_norm", counting_group_norm)
    return aten_inputs


def test_groupnorm_layout_path_matches_aten_in_full_and_chunked_passes(monkeypatch):
    config = json.loads((REPO / "examples" / "configs" / "wfvae-large-16chn.json").read_text())
    config.update(base_channels=32, encoder_energy_flow_hidden_size=32, decoder_energy_flow_hidden_size=32,
                  encoder_num_resblocks=1, decoder_num_resblocks=1, latent_dim=4, norm_type="groupnorm")
    torch.manual_seed(0)
    model = build_model(config).double().eval()
    video = torch.rand(1, 3, 9, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        ref_moments = model.encode(video).moments
        ref_decoded = model.decode(ref_moments[:, : model.latent_channels])
        aten_inputs = _force_layout_path(monkeypatch)
        moments = model.encode(video).moments
        decoded = model.decode(moments[:, : model.latent_channels])
        assert not any(aten_inputs), "every channels-last input must take the layout-keeping path"
        chunked = model.encode(video, chunk_size=4).moments  # collecting passes: statistics over chunks
    torch.testing.assert_close(moments, ref_moments, atol=1e-10, rtol=0)
    torch.testing.assert_close(decoded, ref_decoded, atol=1e-10, rtol=0)
    torch.testing.assert_close(chunked, moments, atol=1e-8, rtol=0)


def test_groupnorm_layout_path_keeps_layout_dtype_and_gradients(monkeypatch):
    torch.manual_seed(0)
    layer = norm.make_norm(64, "groupnorm")
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    x = (torch.randn(2, 64, 3, 6, 5) * 3 + 1).to(memory_format=torch.channels_last_3d).requires_grad_()
    ref = layer(x)
    (ref * torch.arange(ref.numel()).reshape(ref.shape).sin()).sum().backward()
    ref_grads = [t.grad.clone() for t in (x, layer.weight, layer.bias)]
    for t in (x, layer.weight, layer.bias):
        t.grad = None
    _force_layout_path(monkeypatch)
    out = layer(x)
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    (out * torch.arange(out.numel()).reshape(out.shape).sin()).sum().backward()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for t, g in zip((x, layer.weight, layer.bias), ref_grads):
        torch.testing.assert_close(t.grad, g, atol=1e-4, rtol=1e-4)
    # half precision: statistics in float32; float32 output under autocast (as ATen's autocast rule)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out16 = layer(x.detach().bfloat16())
    assert out16.dtype == torch.float32 and out16.is_contiguous(memory_format=torch.channels_last_3d)
    assert (out16 - ref).abs().max().item() < 0.05
    with torch.no_grad():
        assert layer(x.detach().bfloat16()).dtype == torch.bfloat16


def test_groupnorm_layout_path_saves_one_float32_copy_of_half_input(monkeypatch):
    # Under autocast ATen's group_norm saves one float32 cast of a bf16 input for backward; the layout
    # path must not save two (one for the statistics, another for the multiply-add): 4 bytes per element
    # per norm layer of a CausalVAE or group-norm WF-VAE trained in bf16 on a GPU.
    torch.manual_seed(0)
    layer = norm.make_norm(64, "groupnorm")
    x = torch.randn(2, 64, 3, 6, 5).bfloat16().to(memory_format=torch.channels_last_3d).requires_grad_()
    _force_layout_path(monkeypatch)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    full_size_float32 = {t.untyped_storage().data_ptr() for t in saved
                         if t.dtype == torch.float32 and t.numel() == x.numel()}
    assert len(full_size_float32) == 1, f"{len(full_size_float32)} float32 copies of the input saved for backward"
    out.float().square().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all()


def test_groupnorm_layout_path_is_cuda_only():
    x = torch.randn(1, 64, 2, 4, 4).to(memory_format=torch.channels_last_3d)
    assert not norm.keeps_channels_last(x)  # the CPU kernel keeps channels-last by itself
    assert F.group_norm(x, 32).is_contiguous(memory_format=torch.channels_last_3d)


# ---- item 10: checkpoints are memory-mapped -------------------------------------------------------------
def test_torch_files_are_memory_mapped_and_legacy_files_still_load(tmp_path, monkeypatch):
    from wfvae.models.loading import read_state_dict

    state = {"w": torch.arange(6.0).reshape(2, 3)}
    new, legacy = tmp_path / "new.pt", tmp_path / "legacy.pt"
    torch.save(state, new)
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("mmap", False))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    got, _ = read_state_dict(new)
    torch.testing.assert_close(got["w"], state["w"])
    assert calls == [True]
    calls.clear()
    got, _ = read_state_dict(legacy)  # cannot be mapped: read whole
    torch.testing.assert_close(got["w"], state["w"])
    assert calls == [True, False]


# ---- item 11: posterior noise, decoder threads, device binding, bf16 fallback ---------------------------
def test_posterior_noise_is_drawn_in_the_moments_dtype_like_the_original():
    # The original draws ``randn(..., dtype=parameters.dtype)``: under autocast the encoder's last conv
    # returns bf16 moments, so its noise is bf16 too. Ours is the same draw (not float32).
    moments = torch.randn(1, 8, 2, 3, 3).bfloat16()
    posterior = DiagonalGaussian(moments)
    sample = posterior.sample(torch.Generator().manual_seed(3))
    eps = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(3), dtype=torch.bfloat16)
    assert torch.equal(sample, posterior.mean + posterior.std * eps)


def test_decoder_threads_split_the_cpus_over_workers_and_ranks():
    assert runtime.decoder_threads(num_workers=4, local_world_size=8, cpus=128) == 4
    assert runtime.decoder_threads(num_workers=0, local_world_size=1, cpus=8) == 8  # the rank decodes
    assert runtime.decoder_threads(num_workers=16, local_world_size=8, cpus=64) == 1  # never 0
    assert runtime.decoder_threads(num_workers=1, local_world_size=1, cpus=256) == runtime.MAX_DECODER_THREADS
    assert runtime.available_cpus() >= 1


def test_dataset_decodes_with_the_given_thread_count(video_dir, tmp_path, monkeypatch):
    from wfvae.data import datasets

    seen = []
    real_read = datasets.read_video

    def spy(*args, **kwargs):
        seen.append(kwargs.get("num_threads"))
        return real_read(*args, **kwargs)

    monkeypatch.setattr(datasets, "read_video", spy)
    ds = datasets.VideoFolderDataset(video_dir, 5, resolution=16, cache_dir=tmp_path / "c", decoder_threads=2)
    item = ds[0]
    assert seen == [2]
    assert item["video"].dtype == torch.float32  # frames leave the worker as float32, never float64
    with pytest.raises(ValueError, match="decoder_threads"):
        datasets.VideoFolderDataset(video_dir, 5, resolution=16, cache_dir=tmp_path / "c", decoder_threads=-1)


def test_cuda_index_for_one_gpu_per_task_binding(caplog):
    assert cuda_index_for(3, 8) == 3  # torchrun: every process sees every GPU
    with caplog.at_level(logging.INFO, logger="wfvae.distributed"):
        assert cuda_index_for(3, 1) == 0  # SLURM --gpus-per-task=1 / CUDA_VISIBLE_DEVICES per process
    assert "one GPU per process" in caplog.text
    with pytest.raises(RuntimeError, match="LOCAL_RANK=5 but only 4 GPUs"):
        cuda_index_for(5, 4)


def test_bf16_falls_back_to_fp32_before_ampere(caplog):
    cuda = torch.device("cuda", 0)
    with caplog.at_level(logging.WARNING, logger="wfvae.runtime"):
        assert runtime.resolve_precision("bf16", cuda, capability=(7, 0)) == "fp32"  # V100
    assert "compute capability >= 8.0" in caplog.text and "7.0" in caplog.text
    assert runtime.resolve_precision("bf16", cuda, capability=(8, 0)) == "bf16"  # A100
    assert runtime.resolve_precision("bf16", cuda, capability=(9, 0)) == "bf16"  # H100
    assert runtime.resolve_precision("fp16", cuda, capability=(7, 5)) == "fp16"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="wfvae.runtime"):
        assert runtime.resolve_precision("bf16", torch.device("cpu"), cpu_bf16=True) == "bf16"
    assert caplog.text == ""


def test_bf16_on_a_cpu_without_bf16_instructions_warns(caplog):
    """CPU autocast runs bf16 everywhere, but without AVX512-BF16/AMX oneDNN's bf16 convolutions are many times
    slower than fp32 (48x for one layer on an AVX2 EPYC): kept as asked, with a warning that names the fix."""
    cpu = torch.device("cpu")
    with caplog.at_level(logging.WARNING, logger="wfvae.runtime"):
        assert runtime.resolve_precision("bf16", cpu, what="--dtype", cpu_bf16=False) == "bf16"
        assert runtime.resolve_precision("fp32", cpu, what="--dtype", cpu_bf16=False) == "fp32"
    assert caplog.text.count("no bf16 instructions") == 1 and "Pass --dtype fp32" in caplog.text
    # the live answer is PyTorch's own test of the CPU
    assert runtime.cpu_has_bf16() == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def test_configure_backends_sets_cudnn_and_tf32_only_for_cuda():
    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cudnn.benchmark = False
        runtime.configure_backends(torch.device("cpu"), benchmark=True, allow_tf32=True)
        assert torch.backends.cudnn.benchmark is False
        runtime.configure_backends(torch.device("cuda", 0), benchmark=True, allow_tf32=True)
        assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32
        conv_tf32 = torch.backends.cudnn.allow_tf32
        runtime.configure_backends(torch.device("cuda", 0), benchmark=False, allow_tf32=False)
        assert not torch.backends.cudnn.benchmark and not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32 == conv_tf32  # convolutions keep PyTorch's setting
    finally:
        (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.allow_tf32) = saved
