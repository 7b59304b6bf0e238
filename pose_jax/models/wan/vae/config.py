"""Shape and runtime settings of the Wan2.1 VAE (diffusers ``AutoencoderKLWan``), with presets.

Only the Wan2.1 variant is covered: ``is_residual=False``, no patchify, no attention outside the
mid blocks (``attn_scales=()``), two temporal halvings (4 frames per latent frame) and
``2**(len(dim_mult) - 1)`` = 8x spatial compression.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# diffusers' AutoencoderKLWan defaults = the released Wan2.1 VAE statistics (per latent channel).
WAN21_LATENTS_MEAN = (
  -0.7571,
  -0.7089,
  -0.9113,
  0.1075,
  -0.1745,
  0.9653,
  -0.1517,
  1.5508,
  0.4134,
  -0.0715,
  0.5517,
  -0.3632,
  -0.1922,
  -0.9497,
  0.2503,
  -0.2921,
)
WAN21_LATENTS_STD = (
  2.8184,
  1.4541,
  2.3275,
  2.6558,
  1.2196,
  1.7708,
  2.6052,
  2.0743,
  3.2687,
  2.1526,
  2.8652,
  1.5579,
  1.6382,
  1.1253,
  2.8251,
  1.9160,
)


@dataclasses.dataclass(frozen=True)
class WanVAEConfig:
  """Architecture (diffusers names, incl. its ``temperal`` spelling) plus how to run it."""

  base_dim: int = 96
  z_dim: int = 16
  dim_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  attn_scales: tuple[float, ...] = ()
  temperal_downsample: tuple[bool, ...] = (False, True, True)
  latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
  latents_std: tuple[float, ...] = WAN21_LATENTS_STD
  in_channels: int = 3
  out_channels: int = 3
  # Runtime.
  dtype: str = "float32"  # compute dtype (activations, feature caches)
  param_dtype: str = "float32"

  def __post_init__(self):
    errors = []
    if self.dtype not in DTYPES or self.param_dtype not in DTYPES:
      errors.append(f"dtype/param_dtype must be in {sorted(DTYPES)}")
    if len(self.temperal_downsample) != len(self.dim_mult) - 1:
      errors.append(
        f"temperal_downsample needs len(dim_mult) - 1 = {len(self.dim_mult) - 1} "
        f"entries, got {self.temperal_downsample}"
      )
    if sum(map(bool, self.temperal_downsample)) != 2:
      errors.append("exactly two temporal downsamples are supported (4 frames per latent frame)")
    if self.attn_scales:
      errors.append("attn_scales must be empty (Wan2.1 has attention only in the mid blocks)")
    if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
      errors.append(f"latents_mean/latents_std need z_dim={self.z_dim} entries")
    if self.num_res_blocks < 1 or self.base_dim < 1 or self.z_dim < 1:
      errors.append("num_res_blocks, base_dim and z_dim must be >= 1")
    if errors:
      raise ValueError("invalid WanVAEConfig: " + "; ".join(errors))

  @property
  def spatial_factor(self) -> int:
    return 2 ** (len(self.dim_mult) - 1)

  @property
  def temporal_factor(self) -> int:
    return 4

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  @property
  def params_dtype(self):
    return DTYPES[self.param_dtype]

  def replace(self, **kw) -> WanVAEConfig:
    return dataclasses.replace(self, **kw)

  # --- diffusers config.json <-> WanVAEConfig --------------------------------------------------
  def to_diffusers(self) -> dict[str, Any]:
    """Keyword arguments of diffusers ``AutoencoderKLWan`` (also its ``config.json``)."""
    return {
      "base_dim": self.base_dim,
      "z_dim": self.z_dim,
      "dim_mult": list(self.dim_mult),
      "num_res_blocks": self.num_res_blocks,
      "attn_scales": list(self.attn_scales),
      "temperal_downsample": list(self.temperal_downsample),
      "dropout": 0.0,
      "latents_mean": list(self.latents_mean),
      "latents_std": list(self.latents_std),
      "in_channels": self.in_channels,
      "out_channels": self.out_channels,
    }

  @classmethod
  def from_diffusers(cls, cfg: dict[str, Any], **runtime) -> WanVAEConfig:
    """Builds from a diffusers ``config.json`` dict (missing keys take diffusers' defaults).

    Raises ValueError for variants this port does not cover (Wan2.2's residual VAE, patchify,
    a separate decoder width).
    """
    unsupported = []
    if cfg.get("is_residual", False):
      unsupported.append("is_residual=True (Wan2.2 VAE)")
    if cfg.get("patch_size") is not None:
      unsupported.append(f"patch_size={cfg['patch_size']}")
    if cfg.get("decoder_base_dim") not in (None, cfg.get("base_dim", 96)):
      unsupported.append(f"decoder_base_dim={cfg['decoder_base_dim']} != base_dim")
    for key, want in (("scale_factor_temporal", 4), ("scale_factor_spatial", 8)):
      if cfg.get(key, want) not in (None, want):
        unsupported.append(f"{key}={cfg[key]}")
    if unsupported:
      raise ValueError("unsupported AutoencoderKLWan config: " + ", ".join(unsupported))
    d = cls()
    return cls(
      base_dim=cfg.get("base_dim", d.base_dim),
      z_dim=cfg.get("z_dim", d.z_dim),
      dim_mult=tuple(cfg.get("dim_mult", d.dim_mult)),
      num_res_blocks=cfg.get("num_res_blocks", d.num_res_blocks),
      attn_scales=tuple(cfg.get("attn_scales", d.attn_scales)),
      temperal_downsample=tuple(
        bool(b) for b in cfg.get("temperal_downsample", d.temperal_downsample)
      ),
      latents_mean=tuple(float(v) for v in cfg.get("latents_mean", d.latents_mean)),
      latents_std=tuple(float(v) for v in cfg.get("latents_std", d.latents_std)),
      in_channels=cfg.get("in_channels", d.in_channels),
      out_channels=cfg.get("out_channels", d.out_channels),
      **runtime,
    )


PRESETS: dict[str, WanVAEConfig] = {
  # Tests: 635,679 parameters (diffusers' tiny AutoencoderKLWan).
  "tiny": WanVAEConfig(
    base_dim=8,
    z_dim=4,
    num_res_blocks=1,
    latents_mean=(-0.5, 0.25, 0.0, 1.0),
    latents_std=(2.0, 0.5, 1.0, 1.5),
  ),
  # The released Wan2.1 VAE (Wan2.1_VAE.pth / the diffusers "vae" folder of every Wan2.1 model).
  "wan2_1": WanVAEConfig(),
}


def preset(name: str, **overrides) -> WanVAEConfig:
  if name not in PRESETS:
    raise KeyError(f"unknown Wan VAE preset {name!r}; choose one of {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides)
