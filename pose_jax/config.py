"""Validation of experiment configs (``configs/*.py``), naming the offending key."""

from __future__ import annotations

import ml_collections
import numpy as np

from pose_jax import sharding as shd
from pose_jax.models.wan import WanConfig, preset
from pose_jax.models.wan.config import PRESETS

VAE_SPATIAL, VAE_TEMPORAL = 8, 4


class ConfigError(ValueError):
  """A config value is invalid; the message starts with the dotted key."""


def _fail(key: str, msg: str):
  raise ConfigError(f"config.{key}: {msg}")


def wan_config(model: ml_collections.ConfigDict) -> WanConfig:
  """The WanConfig of ``config.model`` (a preset plus overrides)."""
  if model.preset not in PRESETS:
    _fail("model.preset", f"unknown preset {model.preset!r}; choose one of {sorted(PRESETS)}")
  overrides = {k: v for k, v in model.items() if k != "preset"}
  try:
    return preset(model.preset, **overrides)
  except (TypeError, ValueError) as e:
    _fail("model", str(e))


def latent_shape(sample, cfg: WanConfig) -> tuple[int, int, int]:
  """Latent (T, H, W) of a ``frames x height x width`` video."""
  return (
    1 + (sample.frames - 1) // VAE_TEMPORAL,
    sample.height // VAE_SPATIAL,
    sample.width // VAE_SPATIAL,
  )


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Raises ConfigError naming the first bad key."""
  cfg = wan_config(config.model)
  shape = list(config.mesh.shape)
  try:
    mesh_sizes = shd.resolve_mesh_shape(shape, num_devices)
  except ValueError as e:
    _fail("mesh.shape", str(e))
  s = config.sample
  if s.frames < 1 or (s.frames - 1) % VAE_TEMPORAL:
    _fail("sample.frames", f"{s.frames} is not 1+4k (the Wan VAE's temporal stride is 4)")
  stride = VAE_SPATIAL * cfg.patch_size[1]
  for key in ("height", "width"):
    if s[key] < stride or s[key] % stride:
      _fail(f"sample.{key}", f"{s[key]} must be a positive multiple of {stride} (VAE x patch)")
  dp = int(np.prod([mesh_sizes["data"], mesh_sizes["fsdp"]]))
  if s.batch % dp:
    _fail("sample.batch", f"{s.batch} is not divisible by data x fsdp parallelism {dp}")
  if cfg.num_heads % mesh_sizes["tensor"]:
    _fail("mesh.shape", f"tensor={mesh_sizes['tensor']} does not divide num_heads={cfg.num_heads}")
