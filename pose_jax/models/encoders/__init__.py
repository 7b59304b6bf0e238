"""Wan2.1-I2V conditioning encoders in flax.nnx: CLIP ViT-H/14 vision tower and UMT5-XXL."""

from pose_jax.models.encoders.clip_vision import CLIPVisionConfig, CLIPVisionEncoder
from pose_jax.models.encoders.image_preprocess import preprocess
from pose_jax.models.encoders.tokenizer import encode_prompts, load_tokenizer, prompt_clean
from pose_jax.models.encoders.umt5 import UMT5Config, UMT5Encoder

__all__ = [
  "CLIPVisionConfig",
  "CLIPVisionEncoder",
  "UMT5Config",
  "UMT5Encoder",
  "encode_prompts",
  "load_tokenizer",
  "preprocess",
  "prompt_clean",
]
