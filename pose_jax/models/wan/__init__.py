"""Wan2.1 models in flax.nnx."""

from pose_jax.models.wan.config import PRESETS, WanConfig, preset
from pose_jax.models.wan.transformer import WanTransformer

__all__ = ["PRESETS", "WanConfig", "WanTransformer", "preset"]
