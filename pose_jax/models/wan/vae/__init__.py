"""The Wan2.1 video VAE (diffusers ``AutoencoderKLWan``) in flax.nnx."""

from pose_jax.models.wan.vae.config import PRESETS, WanVAEConfig, preset
from pose_jax.models.wan.vae.model import WanVAE

__all__ = ["PRESETS", "WanVAE", "WanVAEConfig", "preset"]
