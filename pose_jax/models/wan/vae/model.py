"""``WanVAE``: the Wan2.1 video VAE (diffusers ``AutoencoderKLWan``) in flax.nnx.

Legend: B batch, T video frames, N latent frames, H/W video height/width, h/w latent
height/width (H/8, W/8), C video channels (3), Z latent channels (``z_dim``).

Videos are channels-last ``[B, T, H, W, C]`` in [-1, 1]; latents ``[B, N, h, w, Z]``
(diffusers: ``[B, C, T, H, W]``). T must be 1 + 4k (N = 1 + k) and H, W multiples of 8.
diffusers silently drops trailing frames of other counts; here they raise a ValueError.

Encoding follows diffusers' ``_encode``: the first frame alone, then chunks of 4 frames, the
causal feature caches (see ``layers.py``) carried from chunk to chunk. Decoding follows
``_decode``: one latent frame at a time (the first one special-cased), output clamped to
[-1, 1]. After the first chunk, the chunk loop is a ``jax.lax.scan`` carrying the caches as
arrays, so compile time and activation memory do not grow with the number of frames.

The methods are traceable, not jitted: wrap them, e.g. ``nnx.jit(WanVAE.decode)(vae, z)``.
Parameters stay in ``param_dtype``; activations and caches use ``cfg.dtype``; ``encode`` and
``decode`` return float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from pose_jax.models.wan.vae.config import WanVAEConfig
from pose_jax.models.wan.vae.layers import (
  AttentionBlock,
  Cache,
  CausalConv3d,
  Resample,
  ResidualBlock,
  RMSNorm,
)


def _at(cache: Cache, key, default=None):
  return default if cache is None else cache[key]


class MidBlock(nnx.Module):
  """``resnets[0] -> attentions[0] -> resnets[1]`` at the lowest resolution."""

  def __init__(self, dim: int, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(param_dtype=param_dtype, rngs=rngs)
    self.resnets = nnx.List([ResidualBlock(dim, dim, **kw), ResidualBlock(dim, dim, **kw)])
    self.attentions = nnx.List([AttentionBlock(dim, **kw)])

  def __call__(self, x: jax.Array, cache: Cache = None) -> tuple[jax.Array, Cache]:
    x, c0 = self.resnets[0](x, _at(cache, 0))
    x = self.attentions[0](x)
    x, c1 = self.resnets[1](x, _at(cache, 1))
    return x, [c0, c1]


class UpBlock(nnx.Module):
  """diffusers ``WanUpBlock``: ``num_res_blocks + 1`` residual blocks, then an optional resample."""

  def __init__(
    self,
    in_dim: int,
    out_dim: int,
    num_resnets: int,
    mode: str | None,
    *,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    kw = dict(param_dtype=param_dtype, rngs=rngs)
    dims = [in_dim] + [out_dim] * num_resnets
    self.resnets = nnx.List([ResidualBlock(i, o, **kw) for i, o in zip(dims[:-1], dims[1:])])
    self.upsamplers = nnx.List([Resample(out_dim, mode, **kw)]) if mode else None

  def __call__(self, x: jax.Array, cache: Cache = None) -> tuple[jax.Array, Cache]:
    res = []
    for i, resnet in enumerate(self.resnets):
      x, c = resnet(x, _at(cache, "resnets", [None] * len(self.resnets))[i])
      res.append(c)
    up = None
    if self.upsamplers is not None:
      x, up = self.upsamplers[0](x, _at(cache, "upsampler"))
    return x, {"resnets": res, "upsampler": up}


class Encoder3d(nnx.Module):
  """Video ``[B, t, H, W, C]`` -> ``[B, t', h, w, 2Z]`` for one chunk (diffusers names)."""

  def __init__(self, cfg: WanVAEConfig, *, rngs: nnx.Rngs):
    kw = dict(param_dtype=cfg.params_dtype, rngs=rngs)
    dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
    self.conv_in = CausalConv3d(cfg.in_channels, dims[0], 3, padding=1, **kw)
    blocks = []
    for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
      for _ in range(cfg.num_res_blocks):
        blocks.append(ResidualBlock(in_dim, out_dim, **kw))
        in_dim = out_dim
      if i != len(cfg.dim_mult) - 1:
        mode = "downsample3d" if cfg.temperal_downsample[i] else "downsample2d"
        blocks.append(Resample(out_dim, mode, **kw))
    self.down_blocks = nnx.List(blocks)
    self.mid_block = MidBlock(dims[-1], **kw)
    self.norm_out = RMSNorm(dims[-1], param_dtype=cfg.params_dtype)
    self.conv_out = CausalConv3d(dims[-1], 2 * cfg.z_dim, 3, padding=1, **kw)

  def __call__(self, x: jax.Array, cache: Cache = None) -> tuple[jax.Array, Cache]:
    x, c_in = self.conv_in.step(x, _at(cache, "conv_in"))
    down = []
    for i, block in enumerate(self.down_blocks):
      x, c = block(x, None if cache is None else cache["down_blocks"][i])
      down.append(c)
    x, c_mid = self.mid_block(x, _at(cache, "mid_block"))
    x, c_out = self.conv_out.step(jax.nn.silu(self.norm_out(x)), _at(cache, "conv_out"))
    return x, {"conv_in": c_in, "down_blocks": down, "mid_block": c_mid, "conv_out": c_out}


class Decoder3d(nnx.Module):
  """Latents ``[B, n, h, w, Z]`` -> video ``[B, t, H, W, C]`` for one chunk (diffusers names)."""

  def __init__(self, cfg: WanVAEConfig, *, rngs: nnx.Rngs):
    kw = dict(param_dtype=cfg.params_dtype, rngs=rngs)
    mult = cfg.dim_mult
    dims = [cfg.base_dim * m for m in (mult[-1], *mult[::-1])]
    temporal = cfg.temperal_downsample[::-1]
    self.conv_in = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1, **kw)
    self.mid_block = MidBlock(dims[0], **kw)
    blocks = []
    for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
      if i > 0:
        in_dim //= 2  # the previous upsampler's conv halves the width
      mode = None
      if i != len(mult) - 1:
        mode = "upsample3d" if temporal[i] else "upsample2d"
      blocks.append(UpBlock(in_dim, out_dim, cfg.num_res_blocks + 1, mode, **kw))
    self.up_blocks = nnx.List(blocks)
    self.norm_out = RMSNorm(dims[-1], param_dtype=cfg.params_dtype)
    self.conv_out = CausalConv3d(dims[-1], cfg.out_channels, 3, padding=1, **kw)

  def __call__(self, x: jax.Array, cache: Cache = None) -> tuple[jax.Array, Cache]:
    x, c_in = self.conv_in.step(x, _at(cache, "conv_in"))
    x, c_mid = self.mid_block(x, _at(cache, "mid_block"))
    ups = []
    for i, block in enumerate(self.up_blocks):
      x, c = block(x, None if cache is None else cache["up_blocks"][i])
      ups.append(c)
    x, c_out = self.conv_out.step(jax.nn.silu(self.norm_out(x)), _at(cache, "conv_out"))
    return x, {"conv_in": c_in, "mid_block": c_mid, "up_blocks": ups, "conv_out": c_out}


class WanVAE(nnx.Module):
  """The Wan2.1 VAE. ``encode`` -> (mean, logvar); ``decode`` -> video in [-1, 1]."""

  def __init__(self, cfg: WanVAEConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    kw = dict(param_dtype=cfg.params_dtype, rngs=rngs)
    z = cfg.z_dim
    self.encoder = Encoder3d(cfg, rngs=rngs)
    self.quant_conv = CausalConv3d(2 * z, 2 * z, 1, **kw)
    self.post_quant_conv = CausalConv3d(z, z, 1, **kw)
    self.decoder = Decoder3d(cfg, rngs=rngs)

  # --- shapes ---------------------------------------------------------------------------------
  def latent_shape(self, video_shape: tuple[int, ...]) -> tuple[int, ...]:
    """``[B, T, H, W, C]`` -> ``[B, N, h, w, Z]``, validating T = 1 + 4k and H, W % 8 == 0."""
    cfg = self.cfg
    b, t, h, w, c = video_shape
    ft, fs = cfg.temporal_factor, cfg.spatial_factor
    if t < 1 or (t - 1) % ft:
      raise ValueError(
        f"Wan VAE: frame count {t} must be 1 + {ft}k (1, 5, 9, ..., 81); diffusers would silently "
        f"drop the trailing {(t - 1) % ft if t > 1 else 0} frame(s)"
      )
    if h % fs or w % fs:
      raise ValueError(f"Wan VAE: height {h} and width {w} must be multiples of {fs}")
    if c != cfg.in_channels:
      raise ValueError(f"Wan VAE: video has {c} channels, expected {cfg.in_channels}")
    return (b, 1 + (t - 1) // ft, h // fs, w // fs, cfg.z_dim)

  # --- encode / decode ------------------------------------------------------------------------
  def encode(self, video: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Video ``[B, T, H, W, C]`` -> posterior ``(mean, logvar)``, each ``[B, N, h, w, Z]`` float32.

    ``logvar`` is clamped to [-30, 20] as diffusers' ``DiagonalGaussianDistribution`` does.
    """
    self.latent_shape(video.shape)
    x = video.astype(self.cfg.compute_dtype)
    ft = self.cfg.temporal_factor
    out, cache = self.encoder(x[:, :1])
    num_chunks = (x.shape[1] - 1) // ft
    if num_chunks:

      def body(cache, i):
        chunk = jax.lax.dynamic_slice_in_dim(x, 1 + ft * i, ft, axis=1)
        y, cache = self.encoder(chunk, cache)
        return cache, y

      _, ys = jax.lax.scan(body, cache, jnp.arange(num_chunks))
      out = jnp.concatenate([out, rearrange(ys, "n b t h w c -> b (n t) h w c")], axis=1)
    mean, logvar = jnp.split(self.quant_conv(out).astype(jnp.float32), 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)

  def decode(self, z: jax.Array) -> jax.Array:
    """Latents ``[B, N, h, w, Z]`` -> video ``[B, 1 + 4(N-1), 8h, 8w, C]`` float32 in [-1, 1]."""
    cfg = self.cfg
    if z.ndim != 5 or z.shape[-1] != cfg.z_dim:
      raise ValueError(f"Wan VAE: latents must be [B, N, h, w, {cfg.z_dim}], got {z.shape}")
    b, n, h, w, _ = z.shape
    ft, fs = cfg.temporal_factor, cfg.spatial_factor
    x = self.post_quant_conv(z.astype(cfg.compute_dtype))
    first, cache = self.decoder(x[:, :1])
    if n == 1:
      return jnp.clip(first, -1.0, 1.0).astype(jnp.float32)
    video = jnp.zeros((b, 1 + ft * (n - 1), h * fs, w * fs, cfg.out_channels), jnp.float32)
    video = video.at[:, :1].set(jnp.clip(first, -1.0, 1.0).astype(jnp.float32))

    def body(carry, i):
      cache, video = carry
      y, cache = self.decoder(jax.lax.dynamic_slice_in_dim(x, i, 1, axis=1), cache)
      y = jnp.clip(y, -1.0, 1.0).astype(jnp.float32)
      video = jax.lax.dynamic_update_slice_in_dim(video, y, 1 + ft * (i - 1), axis=1)
      return (cache, video), None

    (_, video), _ = jax.lax.scan(body, (cache, video), jnp.arange(1, n))
    return video

  # --- latent statistics (Wan I2V pipeline) ---------------------------------------------------
  def _stats(self) -> tuple[jax.Array, jax.Array]:
    mean = jnp.asarray(self.cfg.latents_mean, jnp.float32)
    std = jnp.asarray(self.cfg.latents_std, jnp.float32)
    return mean, std

  def normalize_latents(self, mu: jax.Array) -> jax.Array:
    """``(mu - latents_mean) * (1 / latents_std)`` per channel: what the DiT sees."""
    mean, std = self._stats()
    return (mu - mean) * (1.0 / std)

  def denormalize_latents(self, latents: jax.Array) -> jax.Array:
    """Inverse of :meth:`normalize_latents` (the pipeline's ``latents / (1 / std) + mean``)."""
    mean, std = self._stats()
    return latents / (1.0 / std) + mean

  @staticmethod
  def sample(mean: jax.Array, logvar: jax.Array, key: jax.Array) -> jax.Array:
    """A draw from the posterior: ``mean + exp(logvar / 2) * eps``."""
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)
