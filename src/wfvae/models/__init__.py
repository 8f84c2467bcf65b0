"""The video autoencoders and how to load them."""

from .base import VideoAutoencoder
from .causalvae import CausalVAE
from .loading import MODEL_CLASSES, MODEL_NAMES, build_model, load_model, model_class, read_state_dict
from .outputs import DiagonalGaussian, ModelOutput
from .wfvae import WFVAE

__all__ = [
    "MODEL_CLASSES",
    "MODEL_NAMES",
    "CausalVAE",
    "DiagonalGaussian",
    "ModelOutput",
    "VideoAutoencoder",
    "WFVAE",
    "build_model",
    "load_model",
    "model_class",
    "read_state_dict",
]
