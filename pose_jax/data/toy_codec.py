"""The toy "pixel latent" codec: a fixed, invertible-on-keyframes stand-in for the Wan VAE.

Legend: B batch, T video frames (1 + 4k), H/W frame height/width, N latent frames (1 + k),
h/w latent height/width (H/2, W/2), Z = 3 latent channels (RGB in [-1, 1]).

Used by the CPU toy run only (real runs use :class:`pose_jax.models.wan.vae.WanVAE`), so that
decoded samples are real videos and the DiT input keeps the real I2V layout:
``concat([noisy latents (3), mask (4), condition latent (3)])`` = 10 channels.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from einops import einsum, reduce, repeat

from pose_jax.data.example import MASK_CHANNELS


def _xp(x: Any):
  return jnp if isinstance(x, jax.Array) else np


@dataclasses.dataclass(frozen=True)
class ToyCodec:
  """A fixed "pixel latent" (numpy in -> numpy out, jax in -> jax out; jit-able).

  encode: video ``[B, T, H, W, 3]`` in [-1, 1] -> keep frames 0, 4, 8, ... -> 2x2 mean pool ->
  ``[B, 1 + (T-1)/4, H/2, W/2, 3]``. decode: linear interpolation between latent frames (so
  frames 0, 4, 8, ... are exact) -> 2x nearest upsample -> ``[B, 1 + 4(N-1), 2h, 2w, 3]``.
  """

  temporal_factor: int = 4
  spatial_factor: int = 2
  z_dim: int = 3

  def encode(self, video: Any) -> Any:
    b, t, h, w, c = video.shape
    ft, fs = self.temporal_factor, self.spatial_factor
    if (t - 1) % ft or h % fs or w % fs or c != self.z_dim:
      raise ValueError(
        f"toy codec: video {video.shape} needs T = 1 + {ft}k, H, W % {fs} == 0, 3 ch"
      )
    return reduce(video[:, ::ft], "b n (h p) (w q) c -> b n h w c", "mean", p=fs, q=fs)

  def interpolation(self, num_latent_frames: int) -> np.ndarray:
    """float32 ``[T, N]``: row t mixes latent frames floor(t/4) and the next one."""
    ft, n = self.temporal_factor, num_latent_frames
    pos = np.arange(1 + ft * (n - 1)) / ft
    lo = np.minimum(np.floor(pos).astype(int), n - 1)
    hi, frac = np.minimum(lo + 1, n - 1), pos - lo
    out = np.zeros((pos.size, n), np.float32)
    np.add.at(out, (np.arange(pos.size), lo), 1.0 - frac)
    np.add.at(out, (np.arange(pos.size), hi), frac)
    return out

  def decode(self, latents: Any) -> Any:
    if latents.ndim != 5 or latents.shape[-1] != self.z_dim:
      raise ValueError(
        f"toy codec: latents must be [B, N, h, w, {self.z_dim}], got {latents.shape}"
      )
    weights = _xp(latents).asarray(self.interpolation(latents.shape[1]), latents.dtype)
    frames = einsum(weights, latents, "t n, b n h w c -> b t h w c")
    fs = self.spatial_factor
    return repeat(frames, "b t h w c -> b t (h p) (w q) c", p=fs, q=fs)

  def condition(self, first_frame: Any, num_frames: int) -> Any:
    """``cond [B, N, h, w, 4 + 3]`` from first frames ``[B, H, W, 3]``: the real layout (mask
    ones on latent frame 0, then the latent of the video [first frame, 0, ..., 0])."""
    xp = _xp(first_frame)
    video = xp.zeros((first_frame.shape[0], num_frames, *first_frame.shape[1:]), first_frame.dtype)
    video = video.at[:, 0].set(first_frame) if xp is jnp else _set_first(video, first_frame)
    lat = self.encode(video)
    mask = xp.zeros((*lat.shape[:-1], MASK_CHANNELS), lat.dtype)
    mask = mask.at[:, 0].set(1.0) if xp is jnp else _set_first(mask, 1.0)
    return xp.concatenate([mask, lat], axis=-1)


def _set_first(x: np.ndarray, value: Any) -> np.ndarray:
  x[:, 0] = value
  return x


__all__ = ["ToyCodec"]
