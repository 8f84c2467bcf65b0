"""Our models against golden tensors produced by the original WF-VAE code (tests/data/reference)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from wfvae.models import build_model, load_model

REFERENCE = Path(__file__).parent / "data" / "reference"
FIXTURES = ["wfvae_small", "causalvae_small"]


def _cases(name):
    return [c["name"] for c in json.loads((REFERENCE / name / "cases.json").read_text())]


@pytest.mark.parametrize("name", FIXTURES)
def test_state_dict_keys_and_shapes_match_the_original(name):
    model = build_model(REFERENCE / name / "config.json")
    expected = json.loads((REFERENCE / name / "state_dict_shapes.json").read_text())
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sorted(ours) == sorted(expected)
    assert ours == expected


@pytest.mark.parametrize("dtype, tol_moments, tol_decoded", [(torch.float64, 1e-6, 1e-6), (torch.float32, 1e-5, 1e-4)])
@pytest.mark.parametrize("name", FIXTURES)
def test_matches_original_outputs(name, dtype, tol_moments, tol_decoded):
    model = load_model(REFERENCE / name, dtype=dtype)
    io = load_file(str(REFERENCE / name / "io.safetensors"))
    with torch.no_grad():
        for case in _cases(name):
            video = io[f"{case}.input"].to(dtype)
            expected_moments = io[f"{case}.moments"]
            posterior = model.encode(video)
            moments = torch.cat([posterior.mean, posterior.logvar], dim=1).double()
            assert moments.shape == expected_moments.shape
            err_m = (moments - expected_moments).abs().max().item()
            latent = expected_moments[:, : model.latent_channels].to(dtype)
            decoded = model.decode(latent).double()
            err_d = (decoded - io[f"{case}.decoded"]).abs().max().item()
            print(f"{name} {case} {dtype}: moments {err_m:.3e} decoded {err_d:.3e}")
            assert err_m <= tol_moments, f"{case}: moments max-abs error {err_m:.3e} > {tol_moments}"
            assert err_d <= tol_decoded, f"{case}: decoded max-abs error {err_d:.3e} > {tol_decoded}"


@pytest.mark.parametrize("name", FIXTURES)
def test_forward_reconstructs_through_posterior_mean(name):
    model = load_model(REFERENCE / name, dtype=torch.float64)
    io = load_file(str(REFERENCE / name / "io.safetensors"))
    with torch.no_grad():
        out = model(io["case0.input"], sample_posterior=False)
    torch.testing.assert_close(out.sample, io["case0.decoded"], atol=1e-6, rtol=0)
    if name.startswith("wfvae"):
        enc_l1, dec_l1, enc_l2, dec_l2 = out.extra
        assert enc_l1.shape == dec_l1.shape and enc_l2.shape == dec_l2.shape
    else:
        assert out.extra is None
