"""wfvae: train, run and evaluate causal video VAEs (WF-VAE and CausalVAE).

    from wfvae import load_model
    vae = load_model("path/to/model_dir")        # eval mode
    posterior = vae.encode(video)                # video: (B, 3, 1 + 4k, H, W) in [-1, 1]
    recon = vae.decode(posterior.mode())
"""

__version__ = "0.1.0"

from wfvae.models import CausalVAE, WFVAE, build_model, load_model  # noqa: E402

__all__ = ["CausalVAE", "WFVAE", "build_model", "load_model", "__version__"]
