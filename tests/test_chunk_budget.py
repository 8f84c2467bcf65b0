"""chunk_size="auto" / max_memory_gb: chunk sizes from a memory budget, outputs equal to the full pass."""

from pathlib import Path

import pytest
import torch

from wfvae.errors import ConfigError
from wfvae.inference.latents import DecodeConfig, EncodeConfig
from wfvae.inference.reconstruct import ReconstructConfig
from wfvae.models import build_model
from wfvae.models.chunk_plan import MemoryBudgetError, choose_chunk_size, estimate_call_bytes
from wfvae.options import parse_config
from wfvae.utils.memory import release_freed_memory

ROOT = Path(__file__).parents[1]
GB = 1e9


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model(ROOT / "examples" / "configs" / "wfvae_tiny.json").double().eval()


def _video(frames, size=32):
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, frames, size, size, generator=g, dtype=torch.float64) * 2 - 1


def test_estimate_is_flat_in_length_when_chunked_and_grows_with_chunk(tiny):
    shape = lambda t: (1, tiny.latent_channels, t, 8, 8)  # noqa: E731
    out_frame = 3 * 64 * 64 * 8  # one decoded float64 frame
    tf = tiny.temporal_compression_ratio
    one = [estimate_call_bytes(tiny, "decode", shape(t), torch.float64, 1) for t in (4, 16)]
    # 12 more latent frames add only their 48 output frames: the working set does not grow with length
    assert one[1] - one[0] == 12 * tf * out_frame
    per_chunk = [estimate_call_bytes(tiny, "decode", shape(16), torch.float64, c) for c in (1, 2, 4)]
    full = estimate_call_bytes(tiny, "decode", shape(16), torch.float64, None)
    assert per_chunk[0] < per_chunk[1] < per_chunk[2] < full
    assert full >= (1 + 15 * tf) * out_frame  # at least the output itself


def test_auto_respects_the_budget_and_equals_the_full_pass(tiny):
    video = _video(1 + 8 * tiny.temporal_compression_ratio)
    with torch.no_grad():
        full = tiny.encode(video).moments
        z = full[:, : tiny.latent_channels]
        ref = tiny.decode(z)
        smallest = estimate_call_bytes(tiny, "decode", z.shape, z.dtype, 1)
        whole = estimate_call_bytes(tiny, "decode", z.shape, z.dtype, None)
        chosen = {}
        for budget in (smallest * 1.01, (smallest + whole) / 2, whole * 1.01):
            chunk = choose_chunk_size(tiny, "decode", z.shape, z.dtype, budget / GB)
            chosen[budget] = chunk
            assert estimate_call_bytes(tiny, "decode", z.shape, z.dtype, chunk) <= budget
            out = tiny.decode(z, chunk_size="auto", max_memory_gb=budget / GB)
            torch.testing.assert_close(out, ref, atol=1e-8, rtol=0)
        assert list(chosen.values())[0] == 1 and list(chosen.values())[-1] is None  # full pass once it fits
        enc_budget = estimate_call_bytes(tiny, "encode", video.shape, video.dtype, 8) * 1.01
        assert choose_chunk_size(tiny, "encode", video.shape, video.dtype, enc_budget / GB) == 8
        enc = tiny.encode(video, chunk_size="auto", max_memory_gb=enc_budget / GB).moments
        torch.testing.assert_close(enc, full, atol=1e-8, rtol=0)
        # no budget: the smallest chunks, still exact
        torch.testing.assert_close(tiny.encode(video, chunk_size="auto").moments, full, atol=1e-8, rtol=0)
        torch.testing.assert_close(tiny.decode(z, chunk_size="auto"), ref, atol=1e-8, rtol=0)
    assert choose_chunk_size(tiny, "encode", video.shape, video.dtype) == tiny.temporal_compression_ratio
    assert choose_chunk_size(tiny, "decode", z.shape, z.dtype) == 1


def test_bad_budgets_are_clear_errors(tiny):
    video = _video(9)
    with pytest.raises(MemoryBudgetError, match="too small .* smallest chunk needs about"):
        tiny.encode(video, chunk_size="auto", max_memory_gb=1e-6)
    assert issubclass(MemoryBudgetError, ValueError)
    for bad in (0, -1.0, float("nan"), "2"):
        with pytest.raises(ValueError, match="max_memory_gb must be a positive number"):
            tiny.decode(torch.zeros(1, 4, 3, 2, 2, dtype=torch.float64), chunk_size="auto", max_memory_gb=bad)
    with pytest.raises(ValueError, match="needs chunk_size='auto'"):
        tiny.encode(video, chunk_size=4, max_memory_gb=1.0)
    with pytest.raises(ValueError, match="or 'auto'"):
        tiny.encode(video, chunk_size="big")


def test_commands_take_max_memory_gb():
    common = ["--ckpt", "m"]
    cfg = parse_config(ReconstructConfig, common + ["--real_video_dir", "a", "--generated_video_dir", "b",
                                                    "--max_memory_gb", "1.5", "--decode_chunk_size", "2"],
                       prog="wfvae")
    assert cfg.chunking(cfg.chunk_size) == {"chunk_size": "auto", "max_memory_gb": 1.5}
    assert cfg.chunking(cfg.decode_chunk_size) == {"chunk_size": 2}  # an explicit size wins
    assert cfg.conv_kernels("auto") == "direct" and cfg.conv_kernels("winograd") == "winograd"
    cfg = parse_config(EncodeConfig, common + ["--video_path", "a", "--out", "b"], prog="wfvae")
    assert cfg.chunking(cfg.chunk_size) == {"chunk_size": None}
    assert cfg.conv_kernels("auto") == "auto"  # no budget: timed per shape
    for cls, args in ((DecodeConfig, ["--latents", "a", "--out", "b"]), (EncodeConfig, ["--video_path", "a", "--out", "b"])):
        with pytest.raises(ConfigError, match="--max_memory_gb must be a positive number"):
            parse_config(cls, common + args + ["--max_memory_gb", "0"], prog="wfvae")


def test_release_freed_memory_applies_on_glibc():
    # the project runs on Linux/glibc (elsewhere it reports False and does nothing); free_memory_promptly, being
    # process-wide, is tested in a fresh process by test_host_allocator.py
    assert release_freed_memory() is True


def test_estimate_counts_winograd_work_buffers(monkeypatch, request):
    """With Winograd kernels ("auto" or "winograd") the estimate holds their buffers, as the real call does."""
    from wfvae.models import chunk_plan
    from wfvae.models.chunk_plan import _StorageBytes
    from wfvae.models.layers import winograd

    monkeypatch.setattr(winograd, "MIN_OUTPUT_PIXELS", 0)  # Winograd on every eligible layer at this small size
    monkeypatch.setattr(winograd, "BLOCK_ELEMENTS", 16 * 6 * 8 * 3)  # several blocks per call, the last cropped
    chunk_plan._estimate_cached.cache_clear()  # estimates depend on these settings, which their cache key leaves out
    request.addfinalizer(chunk_plan._estimate_cached.cache_clear)
    torch.manual_seed(0)
    model = build_model(ROOT / "examples" / "configs" / "wfvae_tiny.json").double().eval()
    z = torch.randn(1, model.latent_channels, 5, 11, 11, dtype=torch.float64)  # odd: cropped tiles
    estimates, peaks = {}, {}
    for mode in ("direct", "winograd"):
        model.set_conv_kernels(mode)
        estimates[mode] = estimate_call_bytes(model, "decode", z.shape, z.dtype, 1)
        tracker = _StorageBytes()  # the estimate's own counter, on the real call
        with torch.no_grad(), tracker:
            model.decode(z, chunk_size=1)
        peaks[mode] = tracker.peak
    assert estimates["winograd"] > 1.3 * estimates["direct"]  # the transformed inputs, weights and products
    for mode in estimates:
        assert abs(peaks[mode] - estimates[mode]) <= 0.02 * estimates[mode], (mode, peaks, estimates)
    model.set_conv_kernels("auto")  # counted as Winograd: an upper bound of what "auto" may choose
    assert estimate_call_bytes(model, "decode", z.shape, z.dtype, 1) == estimates["winograd"]
    # off the CPU (a GPU model; here the meta device) Winograd never runs, so it is not counted either
    assert estimate_call_bytes(model.to("meta"), "decode", z.shape, z.dtype, 1) == estimates["direct"]


def _tracked_call(model, kind, x, chunk):
    """The real call's peak, counted by the estimate's own counter."""
    from wfvae.models.chunk_plan import _StorageBytes

    tracker = _StorageBytes()
    with tracker:
        out = model.encode(x, chunk_size=chunk).moments if kind == "encode" else model.decode(x, chunk_size=chunk)
    return out, tracker.peak


def _float32_exact_and_bf16_bounded(model, kind, x, chunk):
    """Checks that the float32 estimate is the real call's counted peak (within 1 %) and that the estimate under
    bf16 autocast is at least the real bf16 call's; returns (float32 estimate, bf16 output, bf16 peak, bf16
    estimate)."""
    with torch.inference_mode():
        fp32 = estimate_call_bytes(model, kind, x.shape, x.dtype, chunk)
        _, peak = _tracked_call(model, kind, x, chunk)
        assert abs(peak - fp32) <= 0.01 * peak, (kind, chunk, peak, fp32)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = estimate_call_bytes(model, kind, x.shape, x.dtype, chunk)
            out, peak = _tracked_call(model, kind, x, chunk)
    assert peak <= bf16, (kind, chunk, peak, bf16)
    return fp32, out, peak, bf16


def test_estimate_matches_float32_and_bounds_bf16_autocast_calls():
    """float32 on CPU (small convolutions stack their input for oneDNN, counted on the twin too): the estimate
    is the real call's peak. Inside torch.autocast (--dtype bf16) it follows the bf16 call, with autocast's
    per-call casts: at or just above the real peak, and half the float32 estimate for decoding."""
    torch.manual_seed(0)
    model = build_model(ROOT / "examples" / "configs" / "wfvae_tiny.json").eval().requires_grad_(False)
    video = torch.rand(1, 3, 17, 32, 32) * 2 - 1
    with torch.inference_mode():
        z = model.encode(video).moments[:, : model.latent_channels]
    for kind, x, chunk in [("encode", video, 4), ("encode", video, None), ("decode", z, 1), ("decode", z, None)]:
        fp32, out, peak, bf16 = _float32_exact_and_bf16_bounded(model, kind, x, chunk)
        assert out.dtype == torch.bfloat16
        assert bf16 <= 1.25 * peak, (kind, chunk, peak, bf16)
        if kind == "decode":
            assert bf16 < 0.5 * fp32, (chunk, bf16, fp32)
    # a budget between the bf16 estimates of 2- and 4-frame chunks: bf16 gets 2 frames, float32 not even 1
    z = torch.randn(1, model.latent_channels, 16, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        budget = (estimate_call_bytes(model, "decode", z.shape, z.dtype, 2)
                  + estimate_call_bytes(model, "decode", z.shape, z.dtype, 4)) / 2
        assert choose_chunk_size(model, "decode", z.shape, z.dtype, budget / GB) == 2
    assert estimate_call_bytes(model, "decode", z.shape, z.dtype, 1) > budget
    with pytest.raises(MemoryBudgetError):
        choose_chunk_size(model, "decode", z.shape, z.dtype, budget / GB)


def test_autocast_estimate_holds_for_bf16_latents_group_norms_float64_and_the_weight_cache():
    """The paths around the bf16 twin: decoding latents that are already bf16 (``reconstruct --dtype bf16`` decodes
    the encoder's bf16 output), CausalVAEs (group norms promote to float32: a float32 twin with autocast's casts),
    a bf16 model given float32 input, a float64 model (autocast leaves it alone) and ``torch.no_grad`` with
    parameters that require grad (autocast then caches every cast weight): each estimate is at least the real
    call's peak."""
    torch.manual_seed(0)
    wf = build_model(ROOT / "examples" / "configs" / "wfvae_tiny.json").eval().requires_grad_(False)
    causal = build_model(ROOT / "examples" / "configs" / "causalvae_tiny.json").eval().requires_grad_(False)
    # the CausalVAE is run at a smaller size: on CPUs without bf16 instructions its bf16 calls take minutes at 17x32
    for model, video in ((wf, torch.rand(1, 3, 17, 32, 32) * 2 - 1), (causal, torch.rand(1, 3, 9, 16, 16) * 2 - 1)):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            z = model.encode(video, chunk_size="auto", max_memory_gb=1.0).mode()
            assert z.dtype == torch.bfloat16
            out = model.decode(z, chunk_size="auto", max_memory_gb=1.0)  # raised a dtype error before
            assert out.shape[2] == video.shape[2]
            for kind, x, chunk in [("encode", video, 4), ("decode", z, 1), ("decode", z, None)]:
                estimate = estimate_call_bytes(model, kind, x.shape, x.dtype, chunk)
                _, peak = _tracked_call(model, kind, x, chunk)
                assert peak <= estimate, (type(model).__name__, kind, chunk, peak, estimate)
    # the float32 twin counts autocast's casts too: at tiny latents the largest weight's cast dominates the peak
    # of the released CausalVAE layout (the estimate was 0.43-0.55x the real peak without them at 3x2x2 latents;
    # one 1x1 latent frame here, which decodes in seconds also on CPUs without bf16 instructions)
    big = build_model(ROOT / "examples" / "configs" / "causalvae-4chn.json").eval().requires_grad_(False)
    for chunk in (1, None):
        z = torch.randn(1, big.latent_channels, 1, 1, 1)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            estimate = estimate_call_bytes(big, "decode", z.shape, z.dtype, chunk)
            _, peak = _tracked_call(big, "decode", z, chunk)
        assert peak <= estimate, (chunk, peak, estimate)
    # a model stored in bf16, given a float32 video inside autocast (the estimate raised a dtype error)
    low = build_model(ROOT / "examples" / "configs" / "wfvae_tiny.json").eval().requires_grad_(False).bfloat16()
    video = torch.rand(1, 3, 17, 32, 32) * 2 - 1
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        estimate = estimate_call_bytes(low, "encode", video.shape, video.dtype, 4)
        _, peak = _tracked_call(low, "encode", video, 4)
    assert peak <= estimate, (peak, estimate)
    double = build_model(ROOT / "examples" / "configs" / "wfvae_tiny.json").double().eval()
    z = torch.randn(1, double.latent_channels, 5, 8, 8, dtype=torch.float64)
    plain = estimate_call_bytes(double, "decode", z.shape, z.dtype, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert estimate_call_bytes(double, "decode", z.shape, z.dtype, 1) == plain
    wf.requires_grad_(True)
    z = torch.randn(1, wf.latent_channels, 5, 8, 8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        estimate = estimate_call_bytes(wf, "decode", z.shape, z.dtype, 1)
        _, peak = _tracked_call(wf, "decode", z, 1)
    assert peak <= estimate, (peak, estimate)
    weights = sum(p.numel() for p in wf.parameters()) * 2
    assert peak > weights / 2  # the cached casts of the weights are part of the real peak


def test_chunked_encode_peak_does_not_grow_with_the_clip():
    """Each chunk is made channels-last on its own: converting the whole (B, C, T, H, W) clip first copied it
    all, so the chunked encode's peak grew by one input frame per frame."""
    torch.manual_seed(0)
    model = build_model(ROOT / "examples" / "configs" / "wfvae_tiny.json").eval().requires_grad_(False)
    peaks = []
    for frames in (9, 33):
        video = torch.rand(1, 3, frames, 32, 32) * 2 - 1
        with torch.inference_mode():
            _, peak = _tracked_call(model, "encode", video, 4)
        peaks.append(peak)
        assert peak <= estimate_call_bytes(model, "encode", video.shape, video.dtype, 4), (frames, peak)
    # before, the whole-clip copy added the 24 more input frames: 24 * 3 * 32 * 32 * 4 bytes = 288 KiB
    assert peaks[1] - peaks[0] < 24 * 3 * 32 * 32 * 4 / 4, peaks


def test_group_norm_wfvae_is_estimated_on_the_path_of_its_device(monkeypatch):
    """A WF-VAE built with ``norm_type="groupnorm"``: its encode could not be estimated (the meta twin took
    GroupNorm's CUDA layout path, then asked autocast about "meta"). The twin of a CPU model now takes the CPU's
    path (float32 estimates equal the real call's counted peak; bf16 ones bound it), the twin of a CUDA model
    the CUDA one."""
    import json

    from wfvae.models import chunk_plan
    from wfvae.models.layers import norm

    config = json.loads((ROOT / "examples" / "configs" / "wfvae_tiny.json").read_text())
    config.update(norm_type="groupnorm", base_channels=32, encoder_energy_flow_hidden_size=32,
                  decoder_energy_flow_hidden_size=32)
    torch.manual_seed(0)
    model = build_model(config).eval().requires_grad_(False)
    video = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    with torch.inference_mode():
        z = model.encode(video).moments[:, : model.latent_channels]
    for kind, x, chunk in [("encode", video, 4), ("encode", video, None), ("decode", z, 1)]:
        _float32_exact_and_bf16_bounded(model, kind, x, chunk)
    layout_path = []  # ClipGroupNorm's own channels-last path: CUDA's, not the CPU's
    real_normalize = norm.ClipGroupNorm._normalize
    monkeypatch.setattr(norm.ClipGroupNorm, "_normalize",
                        lambda self, *a: layout_path.append(1) or real_normalize(self, *a))
    key = (type(model), json.dumps(model.config, sort_keys=True), torch.float32, "direct")
    for host in ("cpu", "cuda"):
        layout_path.clear()
        twin = chunk_plan._meta_twin(*key, host)
        assert chunk_plan._estimate_cached.__wrapped__(twin, "encode", tuple(video.shape), torch.float32, 4,
                                                       None, True) > 0
        assert bool(layout_path) == (host == "cuda"), host
