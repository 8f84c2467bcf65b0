"""Winograd F(2x2, 3x3) convolutions: equal to the direct convolution up to float rounding."""

import json
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from wfvae.models import build_model
from wfvae.models.layers import kernel_choice, winograd
from wfvae.models.layers.conv import CausalConv3d, FrameConv2d

CONFIGS = Path(__file__).parents[1] / "examples" / "configs"


@pytest.fixture(autouse=True)
def _quiet_machine(request, monkeypatch):
    """The cache entries written here must not depend on this machine's load (the ``busy`` flag)."""
    if request.node.name != "test_machine_busy_reads_the_load_average":
        monkeypatch.setattr(kernel_choice, "machine_busy", lambda: False)


@pytest.mark.parametrize(
    "batch, channels, out_channels, frames, height, width, kernel_t, block_elements",
    [
        (1, 8, 5, 6, 6, 6, 3, winograd.BLOCK_ELEMENTS),
        (2, 7, 9, 5, 7, 9, 3, winograd.BLOCK_ELEMENTS),  # odd height and width, batch of two
        (1, 6, 4, 3, 5, 4, 1, winograd.BLOCK_ELEMENTS),  # one time tap (per-frame 3x3 conv)
        (1, 3, 4, 2, 1, 1, 1, winograd.BLOCK_ELEMENTS),  # 1x1 frames
        (2, 5, 6, 9, 8, 6, 3, 1),  # one output frame per block
        (1, 4, 3, 8, 6, 10, 2, 16 * 4 * 3 * 15 * 4),  # one tile row per block, several frames, last shorter
        (1, 4, 5, 4, 9, 7, 3, 16 * 4 * 4 * 8),  # all frames, 2 of 5 tile rows per block: 2, 2, then 1 cropped
        (2, 3, 2, 3, 7, 8, 1, 16 * 4 * 3 * 9),  # 3 tile rows per block, odd height, batch of two
    ],
)
def test_matches_direct_convolution_in_float64(batch, channels, out_channels, frames, height, width, kernel_t,
                                               block_elements):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, frames, height, width, generator=g, dtype=torch.float64)
    w = torch.randn(out_channels, channels, kernel_t, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(out_channels, generator=g, dtype=torch.float64)
    with torch.no_grad():
        got = winograd.conv3d(x, w, b, block_elements=block_elements)
    expected = F.conv3d(x, w, b, padding=(0, 1, 1))
    assert got.shape == expected.shape
    assert got.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


def test_block_plan_bounds_the_transformed_input():
    # (t_out, kernel_t, nh, nw, channels, budget) -> frames, tile rows; budget in values of the transformed input
    assert winograd.plan_blocks(2, 3, 64, 64, 128, 2**22) == (2, 8)  # 4 input frames x 8 rows x 64 x 128 x 16
    assert winograd.plan_blocks(33, 3, 64, 64, 128, 2**22) == (30, 1)  # long clip: frames split, 1 row
    assert winograd.plan_blocks(1, 1, 4, 4, 8, 2**30) == (1, 4)  # everything in one block
    assert winograd.plan_blocks(5, 3, 64, 64, 512, 1) == (1, 1)  # never less than 1 frame and 1 row
    for t_out, kt, nh, nw, c in ((2, 3, 64, 64, 128), (33, 3, 64, 64, 128), (9, 1, 32, 32, 512)):
        frames, rows = winograd.plan_blocks(t_out, kt, nh, nw, c, 2**22)
        assert 16 * (frames + kt - 1) * rows * nw * c <= 2**22


def test_float32_error_is_within_the_direct_kernels_own():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 64, 5, 16, 16, generator=g)
    w = torch.randn(48, 64, 3, 3, 3, generator=g) / (64 * 27) ** 0.5
    exact = F.conv3d(x.double(), w.double(), padding=(0, 1, 1))
    with torch.no_grad():
        wino_err = (winograd.conv3d(x, w, None).double() - exact).abs().max().item()
        direct_err = (F.conv3d(x, w, padding=(0, 1, 1)).double() - exact).abs().max().item()
    assert wino_err < 1e-5
    assert wino_err <= 2 * direct_err + 1e-6


def test_which_convolutions_are_supported():
    assert winograd.supports(CausalConv3d(4, 4, 3, padding=1).conv)
    assert winograd.supports(CausalConv3d(4, 4, (1, 3, 3), padding=1).conv)
    assert winograd.supports(FrameConv2d(4, 4, 3, padding=1))
    assert not winograd.supports(CausalConv3d(4, 4, 3, stride=2).conv)  # strided downsampling
    assert not winograd.supports(CausalConv3d(4, 4, 1).conv)  # 1x1x1
    assert not winograd.supports(FrameConv2d(4, 4, 3, padding=0))
    assert not winograd.supports(torch.nn.Conv2d(4, 4, 3, padding=1, groups=2))


@pytest.mark.parametrize("config", ["wfvae_tiny.json", "causalvae_tiny.json"])
def test_models_match_with_winograd_full_and_chunked(monkeypatch, config):
    monkeypatch.setattr(winograd, "MIN_OUTPUT_PIXELS", 0)  # tiny inputs: use Winograd everywhere it applies
    calls = []
    real = winograd.conv3d
    monkeypatch.setattr(winograd, "conv3d", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    model = build_model(CONFIGS / config).double().eval()
    x = torch.rand(1, 3, 9, 24, 24, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        expected = model.decode(model.encode(x).mode())
        assert not calls
        fast = model.set_conv_kernels("winograd")
        assert fast is model
        full = model.decode(model.encode(x).mode())
        assert calls
        chunked = model.decode(model.encode(x, chunk_size=model.temporal_compression_ratio).mode(), chunk_size=1)
    torch.testing.assert_close(full, expected, atol=1e-10, rtol=0)
    torch.testing.assert_close(chunked, expected, atol=1e-10, rtol=0)


def test_gradients_and_small_inputs_use_the_direct_kernel(monkeypatch):
    torch.manual_seed(0)
    model = build_model(CONFIGS / "wfvae_tiny.json").set_conv_kernels("winograd")
    calls = []
    real = winograd.conv3d
    monkeypatch.setattr(winograd, "conv3d", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    model(x)  # training-style call with autograd: regular kernels
    with torch.no_grad():
        model.encode(x)  # below MIN_OUTPUT_PIXELS everywhere
    assert not calls
    model.set_conv_kernels("direct")
    assert {getattr(m, "conv_kernel", "direct") for m in model.modules()} == {"direct"}
    with pytest.raises(ValueError, match="auto"):
        model.set_conv_kernels("fast")


def _slow(fn, seconds=0.3):
    def wrapped(*args, **kwargs):
        time.sleep(seconds)
        return fn(*args, **kwargs)
    return wrapped


@pytest.mark.parametrize("slower", ["winograd", "direct"])
def test_auto_mode_times_both_once_per_shape_and_keeps_the_faster(monkeypatch, tmp_path, slower):
    """'auto': the first call of a shape runs both kernels, later calls only the faster one."""
    monkeypatch.setenv(kernel_choice.CACHE_ENV, str(tmp_path / "kernels.json"))
    monkeypatch.setattr(kernel_choice, "CHOOSER", kernel_choice.KernelChooser())
    monkeypatch.setattr(winograd, "MIN_OUTPUT_PIXELS", 0)
    calls = {"winograd": 0, "direct": 0}
    real_wino, real_direct = winograd.conv3d, torch.nn.Conv3d.forward

    def wino(*a, **k):
        calls["winograd"] += 1
        return real_wino(*a, **k)

    def direct(self, x):
        calls["direct"] += 1
        return real_direct(self, x)

    monkeypatch.setattr(winograd, "conv3d", _slow(wino) if slower == "winograd" else wino)
    monkeypatch.setattr(torch.nn.Conv3d, "forward", _slow(direct) if slower == "direct" else direct)
    torch.manual_seed(0)
    conv = CausalConv3d(6, 5, 3, padding=1).double()
    model = torch.nn.Module()
    model.conv = conv
    conv.conv_kernel = "auto"
    x = torch.rand(1, 6, 4, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        expected = real_direct(conv.conv, F.pad(x, (0, 0, 0, 0, 2, 0), mode="replicate"))
        first = conv(x)
        measured = dict(calls)
        for _ in range(3):
            again = conv(x)
    faster = "direct" if slower == "winograd" else "winograd"
    assert measured["winograd"] == 1 and measured["direct"] == 1  # a 0.3 s lead: direct is not timed again
    assert calls[faster] == measured[faster] + 3 and calls[slower] == measured[slower]
    torch.testing.assert_close(first, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(again, expected, atol=1e-12, rtol=0)
    (entry,) = kernel_choice.CHOOSER.choices().values()
    assert entry["kernel"] == faster
    # a new process (a fresh chooser) reads the choice from the cache file instead of timing again
    saved = json.loads((tmp_path / "kernels.json").read_text())["entries"]
    (key,) = saved
    assert kernel_choice.machine_key() in key and "conv3d x(1, 6, 6, 8, 8) float64" in key
    monkeypatch.setattr(kernel_choice, "CHOOSER", kernel_choice.KernelChooser())
    calls.update(winograd=0, direct=0)
    with torch.no_grad():
        conv(x)
    assert calls[slower] == 0 and calls[faster] == 1
    # a process whose libraries are capped to fewer instruction sets times its own choices
    for variable in kernel_choice.ISA_CAP_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    uncapped = kernel_choice.machine_key()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert kernel_choice.machine_key() == f"{uncapped} | ONEDNN_MAX_CPU_ISA=AVX2"
    monkeypatch.setattr(kernel_choice, "CHOOSER", kernel_choice.KernelChooser())
    calls.update(winograd=0, direct=0)
    with torch.no_grad():
        conv(x)
    assert calls["winograd"] == 1 and calls["direct"] >= 1  # not read from the cache: timed again


@pytest.mark.parametrize("direct_s, wino_s, direct_calls", [
    (4.0, 3.5, 2),    # a narrow lead: the first direct call may hold oneDNN's kernel creation
    (4.0, 1.0, 1),    # a wide lead on a long call: no second timing (it would cost seconds)
    (0.02, 0.005, 2),  # a short call: kernel creation may be most of it, whatever the lead
])
def test_auto_mode_times_direct_again_only_when_its_first_call_may_mislead(monkeypatch, direct_s, wino_s,
                                                                           direct_calls):
    monkeypatch.setenv(kernel_choice.CACHE_ENV, "off")
    chooser = kernel_choice.KernelChooser()
    calls = {"direct": 0, "winograd": 0}
    seconds = {"direct": direct_s, "winograd": wino_s}

    def kernel(name):
        def run():
            calls[name] += 1
            return torch.full((1,), float(len(name)))
        run.kernel_name = name
        return run

    # the measured times are fixed, so the decision does not depend on the machine's load
    monkeypatch.setattr(kernel_choice, "_timed", lambda fn: (seconds[fn.kernel_name], fn()))
    out = chooser.run("auto", "shape", kernel("direct"), kernel("winograd"))
    assert calls == {"direct": direct_calls, "winograd": 1}
    (entry,) = chooser.choices().values()
    assert entry["kernel"] == "winograd" and out.item() == len("winograd")


def test_auto_mode_cache_file_problems_are_not_fatal(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(winograd, "MIN_OUTPUT_PIXELS", 0)
    bad = tmp_path / "kernels.json"
    bad.write_text("{not json")
    monkeypatch.setenv(kernel_choice.CACHE_ENV, str(bad))
    monkeypatch.setattr(kernel_choice, "CHOOSER", kernel_choice.KernelChooser())
    torch.manual_seed(0)
    model = build_model(CONFIGS / "wfvae_tiny.json").double().eval()
    x = torch.rand(1, 3, 5, 16, 16, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        expected = model.decode(model.encode(x).mode())
        model.set_conv_kernels("auto")
        got = model.decode(model.encode(x).mode())
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)
    assert "ignoring unreadable convolution kernel cache" in caplog.text
    assert json.loads(bad.read_text())["entries"]  # rewritten whole with this run's choices
    # "off": choices stay in memory, nothing is written
    monkeypatch.setenv(kernel_choice.CACHE_ENV, "off")
    assert kernel_choice.default_cache_path() is None


def test_auto_mode_ignores_choices_timed_against_older_kernels(monkeypatch, tmp_path):
    """A cache file of another format version (kernels whose code has changed since) is measured again."""
    cache = tmp_path / "kernels.json"
    monkeypatch.setenv(kernel_choice.CACHE_ENV, str(cache))
    key = f"{kernel_choice.machine_key()} | shape"
    stale = {"kernel": "direct", "direct_s": 1.0, "winograd_s": 2.0}
    cache.write_text(json.dumps({"version": kernel_choice._FORMAT_VERSION - 1, "entries": {key: stale}}))
    chooser = kernel_choice.KernelChooser()
    seconds = {"direct": 4.0, "winograd": 1.0}

    def kernel(name):
        def run():
            return torch.zeros(1)
        run.kernel_name = name
        return run

    monkeypatch.setattr(kernel_choice, "_timed", lambda fn: (seconds[fn.kernel_name], fn()))
    chooser.run("auto", "shape", kernel("direct"), kernel("winograd"))
    assert chooser.choices()[key]["kernel"] == "winograd"  # measured, not the stale "direct"
    saved = json.loads(cache.read_text())
    assert saved["version"] == kernel_choice._FORMAT_VERSION and saved["entries"][key]["kernel"] == "winograd"


def test_choices_timed_on_a_busy_machine_are_marked_and_kept(monkeypatch, tmp_path, caplog):
    """A choice timed under load is flagged in the file with one warning, and later runs use it as it is
    (never timed again behind the user's back, so runs on one machine compute the same bits)."""
    cache = tmp_path / "kernels.json"
    monkeypatch.setenv(kernel_choice.CACHE_ENV, str(cache))
    monkeypatch.setattr(kernel_choice, "machine_busy", lambda: True)
    seconds = {"direct": 1.0, "winograd": 4.0}
    calls = {"direct": 0, "winograd": 0}

    def kernel(name):
        def run():
            calls[name] += 1
            return torch.zeros(1)
        run.kernel_name = name
        return run

    monkeypatch.setattr(kernel_choice, "_timed", lambda fn: (seconds[fn.kernel_name], fn()))
    chooser = kernel_choice.KernelChooser()
    for shape in ("shape", "other"):
        chooser.run("auto", shape, kernel("direct"), kernel("winograd"))
    key = f"{kernel_choice.machine_key()} | shape"
    assert chooser.choices()[key] == {"kernel": "direct", "direct_s": 1.0, "winograd_s": 4.0, "busy": True}
    assert json.loads(cache.read_text())["entries"][key]["busy"] is True
    assert caplog.text.count("while the machine is oversubscribed") == 1 and str(cache) in caplog.text
    # a later process on a quiet machine keeps the cached choice
    monkeypatch.setattr(kernel_choice, "machine_busy", lambda: False)
    calls.update(direct=0, winograd=0)
    later = kernel_choice.KernelChooser()
    later.run("auto", "shape", kernel("direct"), kernel("winograd"))
    assert calls == {"direct": 1, "winograd": 0}


def test_machine_busy_reads_the_load_average(monkeypatch):
    monkeypatch.setattr(kernel_choice.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(kernel_choice.os, "getloadavg", lambda: (3.1, 0.0, 0.0))
    assert kernel_choice.machine_busy()  # 3.1 > 1.5 x 2
    monkeypatch.setattr(kernel_choice.os, "getloadavg", lambda: (2.9, 9.0, 9.0))
    assert not kernel_choice.machine_busy()

    def unavailable():
        raise OSError("no load average here")

    monkeypatch.setattr(kernel_choice.os, "getloadavg", unavailable)
    assert not kernel_choice.machine_busy()
