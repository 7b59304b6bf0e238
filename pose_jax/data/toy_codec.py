"""The toy "pixel latent" codec: a fixed, lossless stand-in for the Wan VAE (space-to-depth).

Legend: B batch, T frames (video and latent: no temporal compression), H/W frame height/width,
h/w latent height/width (H/f, W/f), f the spatial factor, Z = 3 f^2 latent channels.

Used by the CPU toy run only (real runs use :class:`pose_jax.models.wan.vae.WanVAE`), so that
every decoded frame is a frame the model made (no interpolation between keyframes) and the DiT
input keeps the real I2V layout:
``concat([noisy latents (Z), mask (4), condition latent (Z)])`` = 2 Z + 4 channels.

encode: video ``[B, T, H, W, 3]`` in [-1, 1] -> each f x f block of pixels becomes one latent
pixel's Z channels (pixel-unshuffle) -> ``[B, T, H/f, W/f, Z]``, times ``scale``.
decode: the inverse (pixel-shuffle), so ``decode(encode(x)) == x`` exactly (up to float
rounding of ``scale``). ``scale`` (default 1: pixel values) only sets the latents' spread.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from pose_jax.data.example import MASK_CHANNELS

SPATIAL_FACTOR = 2  # the default (configs/toy_i2v.py: data.codec_factor)
VERSION = 2  # 1: keyframes 0, 4, 8 + 2x2 mean pool, cross-fade decode; 2: lossless, all frames
CONDITIONS = ("first", "every")  # the condition latent: on latent frame 0 only, or on every frame


def _xp(x: Any):
  return jnp if isinstance(x, jax.Array) else np


@dataclasses.dataclass(frozen=True)
class ToyCodec:
  """A fixed, lossless "pixel latent" (numpy in -> numpy out, jax in -> jax out; jit-able)."""

  spatial_factor: int = SPATIAL_FACTOR
  scale: float = 1.0
  condition_frames: str = "first"

  def __post_init__(self):
    if self.spatial_factor < 1 or self.scale <= 0:
      raise ValueError(
        f"toy codec: spatial_factor={self.spatial_factor} must be >= 1, scale={self.scale} > 0"
      )
    if self.condition_frames not in CONDITIONS:
      raise ValueError(
        f"toy codec: condition_frames={self.condition_frames!r}: choose one of {CONDITIONS}"
      )

  @classmethod
  def from_config(cls, data) -> ToyCodec:
    """The codec ``config.data`` asks for (``codec_factor``, ``codec_condition``; defaults
    where a config has no such key)."""
    return cls(
      spatial_factor=data.get("codec_factor", SPATIAL_FACTOR),
      condition_frames=data.get("codec_condition", "first"),
    )

  @property
  def z_dim(self) -> int:
    return 3 * self.spatial_factor**2

  @property
  def temporal_factor(self) -> int:
    return 1

  def meta(self) -> dict[str, Any]:
    """What the toy data's ``meta.json`` records of the codec (a change rebuilds the data)."""
    return {
      "codec_version": VERSION,
      "spatial_factor": self.spatial_factor,
      "scale": self.scale,
      "condition_frames": self.condition_frames,
    }

  def encode(self, video: Any) -> Any:
    f = self.spatial_factor
    if video.ndim != 5 or video.shape[2] % f or video.shape[3] % f or video.shape[-1] != 3:
      raise ValueError(
        f"toy codec: video must be [B, T, H, W, 3] with H, W multiples of {f}, got {video.shape}"
      )
    return rearrange(video, "b t (h p) (w q) c -> b t h w (p q c)", p=f, q=f) * self.scale

  def decode(self, latents: Any) -> Any:
    f = self.spatial_factor
    if latents.ndim != 5 or latents.shape[-1] != self.z_dim:
      raise ValueError(
        f"toy codec: latents must be [B, T, h, w, {self.z_dim}], got {latents.shape}"
      )
    return rearrange(latents / self.scale, "b t h w (p q c) -> b t (h p) (w q) c", p=f, q=f)

  def condition(self, first_frame: Any, num_frames: int) -> Any:
    """``cond [B, T, h, w, 4 + Z]`` from first frames ``[B, H, W, 3]``: mask ones on latent
    frame 0, then the latent of the video [first frame, 0, ..., 0] (``condition_frames="first"``:
    the Wan I2V layout) or [first frame] * T (``"every"``: each frame's tokens see the image at
    their own place, as Stable Video Diffusion conditions)."""
    xp = _xp(first_frame)
    shape = (first_frame.shape[0], num_frames, *first_frame.shape[1:])
    if self.condition_frames == "every":
      video = xp.broadcast_to(first_frame[:, None], shape)
    else:
      video = xp.zeros(shape, first_frame.dtype)
      video = video.at[:, 0].set(first_frame) if xp is jnp else _set_first(video, first_frame)
    lat = self.encode(video)
    mask = xp.zeros((*lat.shape[:-1], MASK_CHANNELS), lat.dtype)
    mask = mask.at[:, 0].set(1.0) if xp is jnp else _set_first(mask, 1.0)
    return xp.concatenate([mask, lat], axis=-1)


def _set_first(x: np.ndarray, value: Any) -> np.ndarray:
  x[:, 0] = value
  return x


__all__ = ["CONDITIONS", "SPATIAL_FACTOR", "VERSION", "ToyCodec"]
