"""Model folders move between wfvae and the original WF-VAE code in both directions.

* Always: ``save_pretrained`` writes the diffusers layout (``config.json`` with ``_class_name`` and
  ``_diffusers_version``, ``diffusion_pytorch_model.safetensors``), and folders of older wfvae
  versions (``model.safetensors``) still load.
* With a checkout of the original (``pytest --reference_repo /path/to/WF-VAE`` or
  ``WFVAE_REFERENCE_REPO=/path/to/WF-VAE``; needs its imports: diffusers, einops), benchmark-style:
  the original's ``from_pretrained`` loads our saved folders and computes what our models compute,
  and our ``load_model`` reads folders written by the original's ``save_pretrained``. The original
  runs in a separate process so that its imports never mix with ours.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from wfvae import load_model
from wfvae.models import build_model

REFERENCE = Path(__file__).parent / "data" / "reference"
CASES = {  # name -> (config, input shape)
    "wfvae": (REFERENCE / "wfvae_small" / "config.json", (1, 3, 9, 32, 32)),
    "causalvae": (REFERENCE / "causalvae_small" / "config.json", (1, 3, 9, 32, 32)),
}


def test_save_pretrained_writes_the_diffusers_layout(tmp_path):
    for name, (config, _) in CASES.items():
        torch.manual_seed(0)
        model = build_model(config)
        out = model.save_pretrained(tmp_path / name)
        assert sorted(p.name for p in out.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
        written = json.loads((out / "config.json").read_text())
        original = json.loads(config.read_text())
        assert written["_class_name"] == original["_class_name"] in ("WFVAEModel", "CausalVAEModel")
        assert isinstance(written["_diffusers_version"], str) and written["_diffusers_version"][0].isdigit()
        assert {k: v for k, v in written.items() if not k.startswith("_")} == {
            k: v for k, v in original.items() if not k.startswith("_")}
        weights = load_file(str(out / "diffusion_pytorch_model.safetensors"))
        assert weights.keys() == model.state_dict().keys()  # the original's key names, every tensor


def test_folders_of_older_versions_still_load_and_are_replaced_cleanly(tmp_path):
    torch.manual_seed(1)
    model = build_model(CASES["wfvae"][0])
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text(CASES["wfvae"][0].read_text())
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(old / "model.safetensors"))
    loaded = load_model(old)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    loaded.save_pretrained(old)  # re-saving converts the folder: one weights file, the diffusers name
    assert sorted(p.name for p in old.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]


# ---------------------------------------------------------------------------------------------
# With the original code (benchmark-style; skipped unless a checkout is given)
# ---------------------------------------------------------------------------------------------

_ORIGINAL_SIDE = r"""
import json, sys
import torch
from safetensors.torch import load_file, save_file

job = json.load(open(sys.argv[1]))
sys.path.insert(0, job["reference_repo"])
from causalvideovae.model.vae.modeling_causalvae import CausalVAEModel
from causalvideovae.model.vae.modeling_wfvae import WFVAEModel

classes = {"WFVAEModel": WFVAEModel, "CausalVAEModel": CausalVAEModel}
results = {}
for name, case in job["cases"].items():
    cls = classes[case["class_name"]]
    x = load_file(case["input"])["x"]
    # 1. our save_pretrained folder, read by the original's from_pretrained (diffusers ModelMixin)
    model = cls.from_pretrained(case["ours"])
    stored = load_file(case["ours"] + "/diffusion_pytorch_model.safetensors")
    assert set(model.state_dict()) == set(stored), "keys differ"
    assert all(torch.equal(model.state_dict()[k], stored[k]) for k in stored), "values differ"
    model = model.double().eval()
    with torch.no_grad():
        moments = model.encode(x).latent_dist.parameters
        mean = torch.chunk(moments, 2, dim=1)[0]
        results[name + ".moments"] = moments
        results[name + ".decoded"] = model.decode(mean).sample
    # 2. a folder written by the original's save_pretrained, for our load_model
    torch.manual_seed(7)
    fresh = cls.from_config(cls.load_config(case["ours"]))
    fresh.save_pretrained(case["theirs"])
    fresh = fresh.double().eval()
    with torch.no_grad():
        moments = fresh.encode(x).latent_dist.parameters
        results[name + ".theirs_moments"] = moments
        results[name + ".theirs_decoded"] = fresh.decode(torch.chunk(moments, 2, dim=1)[0]).sample
save_file({k: v.contiguous() for k, v in results.items()}, job["output"])
"""


@pytest.fixture
def reference_repo(request) -> Path:
    value = request.config.getoption("--reference_repo") or os.environ.get("WFVAE_REFERENCE_REPO")
    if not value:
        pytest.skip("needs a checkout of the original WF-VAE: --reference_repo PATH or WFVAE_REFERENCE_REPO")
    path = Path(value)
    if not (path / "causalvideovae").is_dir():
        pytest.fail(f"--reference_repo {path} is not a WF-VAE checkout (no causalvideovae/ folder)")
    return path


def test_original_code_loads_our_folders_and_we_load_theirs(tmp_path, reference_repo):
    job = {"reference_repo": str(reference_repo), "output": str(tmp_path / "original.safetensors"), "cases": {}}
    ours = {}
    for name, (config, shape) in CASES.items():
        torch.manual_seed(0)
        model = build_model(config)
        model.save_pretrained(tmp_path / f"ours_{name}")
        torch.manual_seed(1)
        x = torch.rand(shape, dtype=torch.float64) * 2 - 1
        save_file({"x": x}, str(tmp_path / f"input_{name}.safetensors"))
        ours[name] = (load_model(tmp_path / f"ours_{name}").double(), x)
        job["cases"][name] = {"class_name": json.loads(config.read_text())["_class_name"],
                              "ours": str(tmp_path / f"ours_{name}"), "theirs": str(tmp_path / f"theirs_{name}"),
                              "input": str(tmp_path / f"input_{name}.safetensors")}
    (tmp_path / "job.json").write_text(json.dumps(job))
    (tmp_path / "original_side.py").write_text(_ORIGINAL_SIDE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the original side never sees wfvae
    done = subprocess.run([sys.executable, str(tmp_path / "original_side.py"), str(tmp_path / "job.json")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    theirs = load_file(job["output"])
    for name, (model, x) in ours.items():
        with torch.no_grad():
            moments = model.encode(x).moments
            decoded = model.decode(moments[:, : model.latent_channels])
        torch.testing.assert_close(moments, theirs[f"{name}.moments"], atol=1e-6, rtol=0)
        torch.testing.assert_close(decoded, theirs[f"{name}.decoded"], atol=1e-6, rtol=0)
        # the original's save_pretrained output, through our loader
        folder = tmp_path / f"theirs_{name}"
        assert (folder / "diffusion_pytorch_model.safetensors").is_file()
        loaded = load_model(folder).double()
        with torch.no_grad():
            moments = loaded.encode(x).moments
            decoded = loaded.decode(moments[:, : loaded.latent_channels])
        torch.testing.assert_close(moments, theirs[f"{name}.theirs_moments"], atol=1e-6, rtol=0)
        torch.testing.assert_close(decoded, theirs[f"{name}.theirs_decoded"], atol=1e-6, rtol=0)
