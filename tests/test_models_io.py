"""Loading and saving weights in every supported layout, and input checks."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from wfvae import load_model
from wfvae.errors import CheckpointError, ConfigError
from wfvae.models import WFVAE, build_model

ROOT = Path(__file__).parents[1]
REFERENCE = Path(__file__).parent / "data" / "reference"
TINY = ROOT / "examples" / "configs" / "wfvae_tiny.json"


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_save_pretrained_round_trip_is_exact(tmp_path):
    torch.manual_seed(1)
    model = build_model(TINY)
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded, WFVAE) and not loaded.training
    _same_weights(model, loaded)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["_class_name"] == "WFVAEModel"
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x).moments, model.eval().encode(x).moments, atol=0, rtol=0)


def test_reference_dir_loads_and_diffusers_weight_name(tmp_path):
    target = tmp_path / "diffusers_layout"
    target.mkdir()
    shutil.copy(REFERENCE / "wfvae_small" / "config.json", target / "config.json")
    shutil.copy(REFERENCE / "wfvae_small" / "model.safetensors", target / "diffusion_pytorch_model.safetensors")
    _same_weights(load_model(REFERENCE / "wfvae_small"), load_model(target))


def _original_checkpoint(model, ema=None):
    return {
        "epoch": 3,
        "current_step": 1000,
        "state_dict": {"gen_model": {f"module.{k}": v for k, v in model.state_dict().items()}, "dics_model": {}},
        "ema_state_dict": {} if ema is None else {f"module.{k}": v for k, v in ema.state_dict().items()},
        "optimizer_state": {},
    }


def test_original_training_checkpoint_prefers_ema(tmp_path):
    torch.manual_seed(2)
    gen, ema = build_model(TINY), build_model(TINY)
    ckpt_dir = tmp_path / "run"
    ckpt_dir.mkdir()
    shutil.copy(TINY, ckpt_dir / "config.json")
    torch.save(_original_checkpoint(gen, ema), ckpt_dir / "checkpoint-1000.ckpt")
    _same_weights(load_model(ckpt_dir), ema)
    _same_weights(load_model(ckpt_dir / "checkpoint-1000.ckpt", prefer_ema=False), gen)
    # without EMA weights the generator is used; a .ckpt file plus an explicit config also works
    torch.save(_original_checkpoint(gen), tmp_path / "plain.ckpt")
    _same_weights(load_model(tmp_path / "plain.ckpt", config=TINY), gen)


def test_ema_of_trainable_parameters_only_is_completed_from_the_generator(tmp_path):
    """Trainers (ours and the original) keep EMA copies of trainable parameters only; the frozen
    Haar filters must then come from ``state_dict.gen_model``."""
    torch.manual_seed(5)
    gen, ema = build_model(TINY), build_model(TINY)
    ckpt = _original_checkpoint(gen, ema)
    ckpt["ema_state_dict"] = {f"module.{k}": p.detach() for k, p in ema.named_parameters() if p.requires_grad}
    assert any("wavelet_transform" in k for k in gen.state_dict()) and not any(
        "wavelet_transform" in k for k in ckpt["ema_state_dict"])
    torch.save(ckpt, tmp_path / "ema.ckpt")
    loaded = load_model(tmp_path / "ema.ckpt", config=TINY)
    for k, v in loaded.state_dict().items():
        expected = ema.state_dict()[k] if f"module.{k}" in ckpt["ema_state_dict"] else gen.state_dict()[k]
        assert torch.equal(v, expected), k


def test_ckpt_without_config_is_a_clear_error(tmp_path):
    torch.manual_seed(2)
    torch.save(_original_checkpoint(build_model(TINY)), tmp_path / "x.ckpt")
    with pytest.raises(ConfigError, match="config"):
        load_model(tmp_path / "x.ckpt")


def test_pickled_objects_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"state_dict": {"gen_model": Evil()}}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="weights-only"):
        load_model(tmp_path / "evil.ckpt", config=TINY)


def test_missing_unexpected_and_mismatched_keys_are_listed(tmp_path):
    torch.manual_seed(3)
    model = build_model(TINY)
    sd = model.state_dict()
    sd.pop("decoder.conv_out.bias")
    sd["encoder.extra.weight"] = torch.zeros(1)
    sd["encoder.conv_out.conv.weight"] = torch.zeros(3, 3, 3, 3, 3)
    with pytest.raises(CheckpointError) as err:
        model.load_weights(sd)
    text = str(err.value)
    assert "decoder.conv_out.bias" in text and "encoder.extra.weight" in text
    assert "encoder.conv_out.conv.weight" in text and "ignore_mismatched_sizes" in text


def test_ignore_mismatched_sizes_keeps_fresh_weights(tmp_path):
    torch.manual_seed(4)
    eight = json.loads(TINY.read_text()) | {"latent_dim": 8}
    donor, target = build_model(eight), build_model(TINY)
    before = target.state_dict()["encoder.conv_out.conv.weight"].clone()
    target.load_weights(donor.state_dict(), ignore_mismatched_sizes=True)
    assert torch.equal(target.state_dict()["encoder.conv_out.conv.weight"], before)
    assert torch.equal(target.state_dict()["encoder.down1.0.weight"], donor.state_dict()["encoder.down1.0.weight"])
    save_file(donor.state_dict(), str(tmp_path / "donor.safetensors"))
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "donor.safetensors", config=TINY)
    load_model(tmp_path / "donor.safetensors", config=TINY, ignore_mismatched_sizes=True)


def test_unknown_config_key_and_model_name():
    with pytest.raises(ConfigError, match="unknown keys"):
        build_model({"_class_name": "WFVAEModel", "latent_dimm": 4})
    with pytest.raises(ConfigError, match="CausalVAE"):
        build_model({"_class_name": "VQVAE"})
    with pytest.raises(ValueError, match="l1_dowmsample_block"):
        build_model({"_class_name": "WFVAEModel", "l1_dowmsample_block": "Downsampel"})


@pytest.mark.parametrize(
    "shape, message",
    [
        ((1, 3, 16, 16, 16), "got 16 frames; WFVAE needs 1 \\+ 4k frames, e.g. 13 or 17"),
        ((1, 4, 9, 16, 16), "3 channels"),
        ((1, 3, 9, 20, 16), "height 20 is not divisible by the spatial compression 8; use e.g. 16 or 24"),
        ((1, 3, 9, 16, 12), "width 12"),
        ((3, 9, 16, 16), "5-D"),
    ],
)
def test_input_checks(shape, message):
    model = build_model(TINY)
    with pytest.raises(ValueError, match=message):
        model.encode(torch.zeros(shape))


def test_latent_checks_and_scale_shift():
    model = build_model(TINY)
    with pytest.raises(ValueError, match="4 channels"):
        model.decode(torch.zeros(1, 8, 2, 2, 2))
    scale, shift = model.latent_scale_shift(torch.zeros(1))
    assert scale.shape == (1, 4, 1, 1, 1) and shift.shape == (1, 4, 1, 1, 1)


def test_posterior_api():
    model = load_model(REFERENCE / "wfvae_small")
    io = load_file(str(REFERENCE / "wfvae_small" / "io.safetensors"))
    with torch.no_grad():
        post = model.encode(io["case0.input"].float())
    assert post.mean.shape == (1, 8, 3, 4, 4)
    g = torch.Generator().manual_seed(0)
    s1 = post.sample(generator=g)
    s2 = post.sample(generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(s1, s2, atol=0, rtol=0)
    assert torch.equal(post.mode(), post.mean)
    kl = post.kl()
    manual = 0.5 * (post.mean**2 + post.logvar.exp() - 1 - post.logvar).sum(dim=(1, 2, 3, 4))
    torch.testing.assert_close(kl, manual)


@pytest.mark.parametrize("config", ["wfvae_tiny.json", "causalvae_tiny.json"])
def test_channels_last_weights_keep_outputs_and_weights_io(tmp_path, config):
    torch.manual_seed(3)
    model = build_model(ROOT / "examples" / "configs" / config).double().eval()
    fast = build_model(ROOT / "examples" / "configs" / config).double().eval()
    fast.load_state_dict(model.state_dict())
    assert fast.use_channels_last_weights() is fast
    convs = [m for m in fast.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]

    def channels_last(m):
        fmt = torch.channels_last_3d if m.weight.dim() == 5 else torch.channels_last
        return m.weight.is_contiguous(memory_format=fmt)

    assert convs and all(channels_last(m) for m in convs)
    assert any(not m.weight.is_contiguous() for m in convs)
    x = torch.rand(1, 3, 9, 16, 16, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        expected = model.decode(model.encode(x).mode())
        got = fast.decode(fast.encode(x).mode())
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
    # loading into the channels-last model keeps its layout; saving writes plain contiguous tensors
    fast.load_state_dict(model.state_dict())
    assert all(channels_last(m) for m in convs)
    fast.save_pretrained(tmp_path / "m")
    _same_weights(model, load_model(tmp_path / "m").double())
