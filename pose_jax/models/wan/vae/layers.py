"""Wan2.1 VAE building blocks (diffusers ``autoencoder_kl_wan``) on channels-last video.

Legend: B batch, T frames, H/W height/width, C channels (I/O: in/out channels of a kernel),
L = H*W positions of one frame. Video tensors are ``[B, T, H, W, C]``.

Causality and the feature cache. Every conv with temporal padding (the 3x3x3 convs and the
upsampler's 3x1x1 ``time_conv``) is causal in time: it sees two zero frames before the first.
Video is processed in chunks of frames (see ``model.py``); each such conv keeps the last
``CACHE_T = 2`` frames of its *input* as its cache and prepends them to the next chunk. A fresh
cache is two zero frames, so a chunked pass equals diffusers' chunked pass exactly (diffusers'
1-frame caches are zero-padded to 2 here, which the conv's zero padding makes equivalent), while
every cache has a fixed shape and can be carried by ``lax.scan``.

Each stateful layer is called ``layer(x, cache) -> (y, new_cache)``; ``cache=None`` marks the
first chunk (a fresh cache, and the first-chunk special cases of :class:`Resample`). Caches are
plain pytrees of arrays (None where a layer keeps nothing).

Kernels: Conv3d ``[kt, kh, kw, I, O]`` (torch ``[O, I, kt, kh, kw]``), per-frame Conv2d
``[kh, kw, I, O]`` (torch ``[O, I, kh, kw]``), 1x1 attention projections ``[I, O]``. Parameters
are replicated (the VAE is small): every axis has logical name None.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from einops import rearrange, repeat
from flax import nnx

from pose_jax.models.layers import Dense, param, torch_linear_init

CACHE_T = 2
Cache = Any  # a pytree of arrays (or None)
_DIMS3 = ("NDHWC", "DHWIO", "NDHWC")


def _triple(v) -> tuple[int, int, int]:
  return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


def _conv(x: jax.Array, kernel: jax.Array, bias: jax.Array, stride, padding) -> jax.Array:
  """3-D convolution of ``[B, T, H, W, I]`` with ``[kt, kh, kw, I, O]`` (+ bias)."""
  y = jax.lax.conv_general_dilated(
    x, kernel.astype(x.dtype), window_strides=stride, padding=padding, dimension_numbers=_DIMS3
  )
  return y + bias.astype(x.dtype)


class CausalConv3d(nnx.Module):
  """diffusers ``WanCausalConv3d``: zero padding ``2 * padding_t`` frames on the left only."""

  def __init__(
    self,
    in_dim: int,
    out_dim: int,
    kernel,
    *,
    stride=1,
    padding=0,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    kt, kh, kw = _triple(kernel)
    self.stride = _triple(stride)
    pt, ph, pw = _triple(padding)
    self.time_pad = 2 * pt
    self.space_pad = ((ph, ph), (pw, pw))
    init = torch_linear_init(in_dim * kt * kh * kw)
    shape = (kt, kh, kw, in_dim, out_dim)
    self.kernel = param(init(rngs.params(), shape, param_dtype), (None,) * 5)
    self.bias = param(init(rngs.params(), (out_dim,), param_dtype), (None,))

  def conv_valid(self, x: jax.Array) -> jax.Array:
    """The conv over already time-padded ``x`` (valid in time)."""
    if self.kernel.shape[:3] == (1, 1, 1) and self.stride == (1, 1, 1):
      y = jnp.einsum("bthwi,io->bthwo", x, self.kernel[...][0, 0, 0].astype(x.dtype))
      return y + self.bias[...].astype(x.dtype)
    return _conv(x, self.kernel[...], self.bias[...], self.stride, ((0, 0), *self.space_pad))

  def __call__(self, x: jax.Array) -> jax.Array:
    """Causal conv over a whole sequence ``[B, T, H, W, I]`` (no cache)."""
    if self.time_pad:
      x = jnp.pad(x, ((0, 0), (self.time_pad, 0), (0, 0), (0, 0), (0, 0)))
    return self.conv_valid(x)

  def step(self, x: jax.Array, cache: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """One chunk: ``cache`` ``[B, 2, H, W, I]`` (None = zeros) holds the previous input frames."""
    if self.time_pad != CACHE_T:
      raise ValueError(f"step() needs a conv with {CACHE_T} frames of causal padding")
    if cache is None:
      cache = jnp.zeros((x.shape[0], CACHE_T, *x.shape[2:]), x.dtype)
    xx = jnp.concatenate([cache.astype(x.dtype), x], axis=1)
    return self.conv_valid(xx), xx[:, -CACHE_T:]


class Conv2d(nnx.Module):
  """torch ``nn.Conv2d`` applied to every frame of ``[B, T, H, W, I]``; explicit (lo, hi) pads."""

  def __init__(
    self,
    in_dim: int,
    out_dim: int,
    kernel: int,
    *,
    stride: int = 1,
    padding=((1, 1), (1, 1)),
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.stride = (1, stride, stride)
    self.padding = ((0, 0), *padding)
    init = torch_linear_init(in_dim * kernel * kernel)
    shape = (kernel, kernel, in_dim, out_dim)
    self.kernel = param(init(rngs.params(), shape, param_dtype), (None,) * 4)
    self.bias = param(init(rngs.params(), (out_dim,), param_dtype), (None,))

  def __call__(self, x: jax.Array) -> jax.Array:
    return _conv(x, self.kernel[...][None], self.bias[...], self.stride, self.padding)


class RMSNorm(nnx.Module):
  """diffusers ``WanRMS_norm``: ``x / max(|x|_2, 1e-12) * sqrt(C) * gamma`` over channels.

  The L2 normalisation is computed in float32 (as diffusers does for half precision); torch's
  ``gamma`` of shape ``(C, 1, 1[, 1])`` is stored as ``(C,)``.
  """

  def __init__(self, dim: int, *, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    del rngs
    self.scale = dim**0.5
    self.gamma = param(jnp.ones((dim,), param_dtype), (None,))

  def __call__(self, x: jax.Array) -> jax.Array:
    xf = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(jnp.square(xf), axis=-1, keepdims=True))
    y = (xf / jnp.maximum(norm, 1e-12)).astype(x.dtype)
    return y * jnp.asarray(self.scale, x.dtype) * self.gamma[...].astype(x.dtype)


class ResidualBlock(nnx.Module):
  """``conv2(silu(norm2(conv1(silu(norm1(x)))))) + shortcut(x)``; two cached causal convs."""

  def __init__(self, in_dim: int, out_dim: int, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(param_dtype=param_dtype, rngs=rngs)
    self.norm1 = RMSNorm(in_dim, param_dtype=param_dtype)
    self.conv1 = CausalConv3d(in_dim, out_dim, 3, padding=1, **kw)
    self.norm2 = RMSNorm(out_dim, param_dtype=param_dtype)
    self.conv2 = CausalConv3d(out_dim, out_dim, 3, padding=1, **kw)
    self.conv_shortcut = CausalConv3d(in_dim, out_dim, 1, **kw) if in_dim != out_dim else None

  def __call__(self, x: jax.Array, cache: Cache = None) -> tuple[jax.Array, Cache]:
    c1, c2 = (None, None) if cache is None else cache
    h = x if self.conv_shortcut is None else self.conv_shortcut(x)
    x, c1 = self.conv1.step(jax.nn.silu(self.norm1(x)), c1)
    x, c2 = self.conv2.step(jax.nn.silu(self.norm2(x)), c2)  # dropout: inference only
    return x + h, (c1, c2)


class AttentionBlock(nnx.Module):
  """Single-head self-attention over the ``H*W`` positions of each frame (no cache)."""

  def __init__(self, dim: int, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(axes=(None, None), param_dtype=param_dtype, rngs=rngs)
    self.norm = RMSNorm(dim, param_dtype=param_dtype)
    self.to_qkv = Dense(dim, 3 * dim, **kw)
    self.proj = Dense(dim, dim, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, h, w, c = x.shape
    seq = rearrange(self.norm(x), "b t h w c -> (b t) (h w) c")
    q, k, v = jnp.split(self.to_qkv(seq), 3, axis=-1)
    logits = jnp.einsum("nqc,nkc->nqk", q, k, preferred_element_type=jnp.float32) / c**0.5
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = self.proj(jnp.einsum("nqk,nkc->nqc", probs, v))
    return x + rearrange(out, "(b t) (h w) c -> b t h w c", b=b, h=h)


class Resample(nnx.Module):
  """diffusers ``WanResample`` (modes upsample2d/3d, downsample2d/3d).

  upsample3d: ``time_conv`` (causal 3x1x1, C -> 2C) doubles the frames, then 2x nearest upsample
    and a 3x3 conv (C -> C/2). On the first chunk the time conv is skipped (1 frame stays 1
    frame, diffusers' "Rep" marker) and its cache starts as zeros, so that first frame never
    enters the time conv's history.
  downsample3d: zero pad right/bottom + 3x3 stride-2 conv, then ``time_conv`` (3x1x1, stride 2,
    no padding) over ``[last frame of the previous chunk, chunk]``. The first chunk passes
    through unchanged; the cache is the chunk's last (spatially downsampled) frame.
  """

  MODES = ("upsample2d", "upsample3d", "downsample2d", "downsample3d")

  def __init__(self, dim: int, mode: str, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
    if mode not in self.MODES:
      raise ValueError(f"Resample mode {mode!r} not in {self.MODES}")
    self.mode = mode
    kw = dict(param_dtype=param_dtype, rngs=rngs)
    if mode.startswith("up"):
      self.resample = Conv2d(dim, dim // 2, 3, **kw)
    else:
      self.resample = Conv2d(dim, dim, 3, stride=2, padding=((0, 1), (0, 1)), **kw)
    time_conv = None
    if mode == "upsample3d":
      time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), padding=(1, 0, 0), **kw)
    elif mode == "downsample3d":
      time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), **kw)
    self.time_conv = nnx.data(time_conv)

  def __call__(self, x: jax.Array, cache: Cache = None) -> tuple[jax.Array, Cache]:
    new_cache = None
    if self.mode == "upsample3d":
      if cache is None:
        new_cache = jnp.zeros((x.shape[0], CACHE_T, *x.shape[2:]), x.dtype)
      else:
        x, new_cache = self.time_conv.step(x, cache)
        x = rearrange(x, "b t h w (two c) -> b (t two) h w c", two=2)
    if self.mode.startswith("up"):
      x = repeat(x, "b t h w c -> b t (h 2) (w 2) c")  # nearest-exact, scale 2
    x = self.resample(x)
    if self.mode == "downsample3d":
      new_cache = x[:, -1:]
      if cache is not None:
        x = self.time_conv.conv_valid(jnp.concatenate([cache.astype(x.dtype), x], axis=1))
    return x, new_cache
