"""wfvae: train, run and evaluate causal video VAEs (WF-VAE and CausalVAE).

    from wfvae import load_model
    vae = load_model("path/to/model_dir")        # eval mode
    posterior = vae.encode(video)                # video: (B, 3, 1 + 4k, H, W) in [-1, 1]
    recon = vae.decode(posterior.mode())
"""

__version__ = "0.1.0"

__all__ = ["CausalVAE", "WFVAE", "build_model", "load_model", "__version__"]

_MODELS = frozenset({"CausalVAE", "WFVAE", "build_model", "load_model"})


def __getattr__(name: str):
    # The models (and so torch, ~1-2 s to import) load on first use, not with every subpackage:
    # `import wfvae.data.index` (probing, the dataset index, `wfvae data-check`) does not need them.
    if name in _MODELS:
        import wfvae.models as models

        return getattr(models, name)
    raise AttributeError(f"module 'wfvae' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _MODELS)
