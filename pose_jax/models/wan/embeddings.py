"""Condition embedders of the Wan DiT (diffusers ``WanTimeTextImageEmbedding``).

time:  sinusoid(t) -> linear_1 -> SiLU -> linear_2 = temb [B, D];  time_proj(SiLU(temb)) [B, 6D]
text:  linear_1 -> GELU(tanh) -> linear_2                      [B, S, text_dim] -> [B, S, D]
image: LayerNorm(eps 1e-5) -> Linear -> GELU(exact) -> Linear -> LayerNorm   [B, N, image_dim] -> D
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from pose_jax import sharding as shd
from pose_jax.models.layers import Dense, LayerNorm, gelu_exact, gelu_tanh
from pose_jax.models.wan.config import WanConfig


def timestep_sinusoid(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """diffusers ``Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)``: [cos, sin]."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class MLP(nnx.Module):
  """``linear_2(act(linear_1(x)))`` with diffusers' submodule names."""

  def __init__(self, d_in, d_hidden, d_out, act, axes_in, *, param_dtype, dtype=None, rngs):
    self.linear_1 = Dense(
      d_in, d_hidden, axes=axes_in, param_dtype=param_dtype, dtype=dtype, rngs=rngs
    )
    self.linear_2 = Dense(
      d_hidden, d_out, axes=(shd.EMBED, None), param_dtype=param_dtype, dtype=dtype, rngs=rngs
    )
    self.act = act

  def __call__(self, x):
    return self.linear_2(self.act(self.linear_1(x)))


class FeedForward(nnx.Module):
  """diffusers ``FeedForward``: ``net.0.proj`` -> activation -> ``net.2`` (dropout dropped)."""

  def __init__(
    self,
    d_in,
    d_hidden,
    d_out,
    act,
    *,
    axes,
    lora_rank=0,
    lora_alpha=None,
    param_dtype,
    dtype=None,
    rngs,
  ):
    kw = dict(
      lora_rank=lora_rank, lora_alpha=lora_alpha, param_dtype=param_dtype, dtype=dtype, rngs=rngs
    )
    self.proj_in = Dense(d_in, d_hidden, axes=axes, **kw)
    self.proj_out = Dense(d_hidden, d_out, axes=axes[::-1], **kw)
    self.act = act

  def __call__(self, x):
    return self.proj_out(self.act(self.proj_in(x)))


class ImageEmbedder(nnx.Module):
  def __init__(self, image_dim: int, dim: int, *, param_dtype, dtype, rngs):
    self.norm1 = LayerNorm(image_dim, eps=1e-5, affine=True, axes=(shd.COND,))
    self.ff = FeedForward(
      image_dim,
      image_dim,
      dim,
      gelu_exact,
      axes=(shd.COND, shd.EMBED),
      param_dtype=param_dtype,
      dtype=dtype,
      rngs=rngs,
    )
    self.norm2 = LayerNorm(dim, eps=1e-5, affine=True)

  def __call__(self, x):
    return self.norm2(self.ff(self.norm1(x)))


class ConditionEmbedder(nnx.Module):
  def __init__(self, cfg: WanConfig, *, rngs: nnx.Rngs):
    pd, dt, d = cfg.params_dtype, cfg.compute_dtype, cfg.dim
    # The time MLP runs in float32 (diffusers keeps ``time_embedder`` in fp32).
    self.time_embedder = MLP(
      cfg.freq_dim,
      d,
      d,
      jax.nn.silu,
      (shd.COND, shd.EMBED),
      param_dtype=pd,
      dtype=jnp.float32,
      rngs=rngs,
    )
    self.time_proj = Dense(d, 6 * d, axes=(shd.EMBED, shd.MOD), param_dtype=pd, dtype=dt, rngs=rngs)
    self.text_embedder = MLP(
      cfg.text_dim, d, d, gelu_tanh, (shd.COND, shd.EMBED), param_dtype=pd, dtype=dt, rngs=rngs
    )
    self.image_embedder = (
      ImageEmbedder(cfg.image_dim, d, param_dtype=pd, dtype=dt, rngs=rngs) if cfg.is_i2v else None
    )
    self.freq_dim = cfg.freq_dim
    self.dtype = dt

  def __call__(self, timestep, text, image=None):
    """Returns ``(temb [B,D] f32, modulation [B,6,D] f32, text [B,S,D], image [B,N,D] | None)``."""
    temb = self.time_embedder(timestep_sinusoid(timestep, self.freq_dim))
    mod = self.time_proj(jax.nn.silu(temb.astype(self.dtype))).astype(jnp.float32)
    mod = mod.reshape(mod.shape[0], 6, -1)
    text = self.text_embedder(text.astype(self.dtype))
    if image is not None:
      if self.image_embedder is None:
        raise ValueError("image tokens given to a T2V model (config.image_dim is None)")
      image = self.image_embedder(image.astype(self.dtype)).astype(self.dtype)
    elif self.image_embedder is not None:
      raise ValueError("this I2V model needs image tokens (encoder_hidden_states_image)")
    return temb, mod, text, image
