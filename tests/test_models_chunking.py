"""Chunked encode/decode with the causal cache must equal the full pass (float64, 1e-8)."""

from pathlib import Path

import pytest
import torch

from wfvae.models import build_model, load_model

ROOT = Path(__file__).parents[1]
REFERENCE = Path(__file__).parent / "data" / "reference"
TOL = 1e-8


def _model(name):
    if name in ("wfvae_small", "causalvae_small"):
        return load_model(REFERENCE / name, dtype=torch.float64)
    torch.manual_seed(0)
    return build_model(ROOT / "examples" / "configs" / f"{name}.json").double().eval()


def _video(frames, size=16, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, size, size, generator=g, dtype=torch.float64) * 2 - 1


def _check(model, lengths, enc_chunks, dec_chunks, size=16):
    tf = model.temporal_compression_ratio
    worst = 0.0
    with torch.no_grad():
        for k in lengths:
            video = _video(1 + k * tf, size)
            full = model.encode(video).moments
            for n in enc_chunks:
                chunked = model.encode(video, chunk_size=n * tf).moments
                assert chunked.shape == full.shape
                worst = max(worst, (chunked - full).abs().max().item())
            z = full[:, : model.latent_channels]
            ref = model.decode(z)
            for m in dec_chunks:
                out = model.decode(z, chunk_size=m)
                assert out.shape == ref.shape, (k, m)
                err = (out - ref).abs().max().item()
                assert err <= TOL, f"decode length {z.shape[2]} chunk {m}: {err:.3e}"
                worst = max(worst, err)
    assert worst <= TOL, worst
    return worst


def test_wfvae_reference_many_lengths_and_chunks():
    # lengths 1 (a single image) .. 25 frames; chunks that divide and that do not
    _check(_model("wfvae_small"), lengths=[0, 1, 2, 3, 5], enc_chunks=[1, 2, 3], dec_chunks=[1, 2, 3, 4])


@pytest.mark.parametrize("name", ["wfvae_tiny", "wfvae_tiny_8x_temporal"])
def test_wfvae_variants(name):
    _check(_model(name), lengths=[0, 1, 2, 3, 5], enc_chunks=[1, 2, 3], dec_chunks=[1, 2, 3, 4])


def test_wfvae_nearest_and_groupnorm_variants():
    import json

    config = json.loads((ROOT / "examples" / "configs" / "wfvae-large-16chn.json").read_text())
    config.update(base_channels=32, encoder_energy_flow_hidden_size=32, decoder_energy_flow_hidden_size=32,
                  encoder_num_resblocks=1, decoder_num_resblocks=1, latent_dim=4,
                  norm_type="groupnorm", t_interpolation="nearest")
    torch.manual_seed(0)
    model = build_model(config).double().eval()
    assert model.clip_level_layers(), "groupnorm WF-VAE has clip-level layers"
    _check(model, lengths=[0, 2], enc_chunks=[1], dec_chunks=[1, 2])


def test_causalvae_reference_groupnorm_and_legacy_attention():
    # GroupNorm over clips and the legacy AttnBlock3D are resolved by collecting passes
    _check(_model("causalvae_small"), lengths=[0, 2], enc_chunks=[1], dec_chunks=[1, 2])


def test_causalvae_layernorm_variant():
    _check(_model("causalvae_tiny_layernorm"), lengths=[0, 1, 3], enc_chunks=[1, 2], dec_chunks=[1, 2, 3])


def test_batch_of_two_chunked():
    model = _model("wfvae_small")
    video = _video(13, size=16, batch=2, seed=3)
    with torch.no_grad():
        full = model.encode(video).moments
        torch.testing.assert_close(model.encode(video, chunk_size=4).moments, full, atol=TOL, rtol=0)
        z = full[:, :8]
        torch.testing.assert_close(model.decode(z, chunk_size=2), model.decode(z), atol=TOL, rtol=0)


def test_bad_chunk_sizes():
    model = _model("wfvae_tiny")
    video = _video(9)
    with pytest.raises(ValueError, match="multiple of 4"):
        model.encode(video, chunk_size=6)
    with pytest.raises(ValueError, match=">= 1"):
        model.decode(torch.zeros(1, 4, 3, 2, 2, dtype=torch.float64), chunk_size=0)


def test_chunked_cpu_calls_return_freed_memory_after_each_residual_block(monkeypatch):
    # glibc keeps what one stage's activations freed while the next, larger stage grows the heap: a chunked
    # call on CPU trims after every residual block (measured in benchmarks/RESULTS.md); a full pass does not
    from wfvae.models.layers import blocks, stream

    model = load_model(REFERENCE / "wfvae_small", dtype=torch.float32)
    resnets = sum(isinstance(m, blocks.ResnetBlock3D) for m in model.decoder.modules())
    calls = []
    monkeypatch.setattr(stream, "release_freed_memory", lambda: calls.append(1) or True)
    z = torch.randn(1, model.latent_channels, 3, 4, 4)
    with torch.no_grad():
        full = model.decode(z)
        assert calls == []
        chunked = model.decode(z, chunk_size=1)
    assert len(calls) >= 3 * resnets > 0, (len(calls), resnets)
    torch.testing.assert_close(chunked, full, rtol=0, atol=1e-5)
