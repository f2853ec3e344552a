"""Neural network building blocks of the policy."""

from .obs_encoder import ObsEncoder
from .transformer import TransformerDenoiser
from .unet1d import ConditionalUnet1D

__all__ = ["ConditionalUnet1D", "ObsEncoder", "TransformerDenoiser"]
