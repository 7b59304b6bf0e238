"""Shape and runtime settings of the Wan2.1 DiT, as a frozen dataclass with named presets."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from pose_jax.models.attention import CONTEXT_PARALLEL, IMPLS
from pose_jax.models.remat import POLICIES

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class WanConfig:
  """Architecture (the diffusers ``WanTransformer3DModel`` config) plus how to run it.

  ``image_dim=None`` is the T2V variant (no image embedder, no added K/V projections).
  """

  # Architecture (diffusers names where they exist).
  patch_size: tuple[int, int, int] = (1, 2, 2)
  num_heads: int = 40
  head_dim: int = 128
  in_channels: int = 36
  out_channels: int = 16
  text_dim: int = 4096
  freq_dim: int = 256
  ffn_dim: int = 13824
  num_layers: int = 40
  cross_attn_norm: bool = True
  eps: float = 1e-6
  image_dim: int | None = 1280
  rope_max_seq_len: int = 1024
  # Runtime.
  dtype: str = "float32"  # compute dtype; norms, modulation and residuals stay float32
  param_dtype: str = "float32"
  attention: str = "xla"  # see pose_jax.models.attention.IMPLS
  context_parallel: str = (
    "allgather"  # self-attention over the mesh's context axis: CONTEXT_PARALLEL
  )
  remat: str = "none"  # see pose_jax.models.remat.POLICIES
  scan_layers: bool = True
  lora_rank: int = 0  # >0 adds zero-initialised LoRA deltas to attention and FFN projections
  lora_alpha: float | None = None

  def __post_init__(self):
    errors = []
    if self.dtype not in DTYPES or self.param_dtype not in DTYPES:
      errors.append(f"dtype/param_dtype must be in {sorted(DTYPES)}")
    if self.attention not in IMPLS:
      errors.append(f"attention={self.attention!r} not in {IMPLS}")
    if self.context_parallel not in CONTEXT_PARALLEL:
      errors.append(f"context_parallel={self.context_parallel!r} not in {CONTEXT_PARALLEL}")
    if self.remat not in POLICIES:
      errors.append(f"remat={self.remat!r} not in {sorted(POLICIES)}")
    if self.head_dim % 2 or self.head_dim < 6:
      errors.append(f"head_dim={self.head_dim} must be even and >= 6 (3D RoPE)")
    if len(self.patch_size) != 3:
      errors.append(f"patch_size={self.patch_size} must have 3 entries")
    if self.lora_rank < 0 or self.num_layers < 1:
      errors.append("lora_rank must be >= 0 and num_layers >= 1")
    if errors:
      raise ValueError("invalid WanConfig: " + "; ".join(errors))

  @property
  def dim(self) -> int:
    return self.num_heads * self.head_dim

  @property
  def is_i2v(self) -> bool:
    return self.image_dim is not None

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  @property
  def params_dtype(self):
    return DTYPES[self.param_dtype]

  def replace(self, **kw) -> WanConfig:
    return dataclasses.replace(self, **kw)

  # --- diffusers config.json <-> WanConfig -----------------------------------------------------
  def to_diffusers(self) -> dict[str, Any]:
    return {
      "_class_name": "WanTransformer3DModel",
      "patch_size": list(self.patch_size),
      "num_attention_heads": self.num_heads,
      "attention_head_dim": self.head_dim,
      "in_channels": self.in_channels,
      "out_channels": self.out_channels,
      "text_dim": self.text_dim,
      "freq_dim": self.freq_dim,
      "ffn_dim": self.ffn_dim,
      "num_layers": self.num_layers,
      "cross_attn_norm": self.cross_attn_norm,
      "qk_norm": "rms_norm_across_heads",
      "eps": self.eps,
      "image_dim": self.image_dim,
      "added_kv_proj_dim": self.dim if self.is_i2v else None,
      "rope_max_seq_len": self.rope_max_seq_len,
      "pos_embed_seq_len": None,
    }

  @classmethod
  def from_diffusers(cls, config_json: dict[str, Any], **runtime) -> WanConfig:
    """Builds from a diffusers ``config.json`` dict; rejects variants this port does not cover."""
    dim = config_json["num_attention_heads"] * config_json["attention_head_dim"]
    unsupported = []
    if config_json.get("qk_norm", "rms_norm_across_heads") != "rms_norm_across_heads":
      unsupported.append(f"qk_norm={config_json.get('qk_norm')!r}")
    if config_json.get("pos_embed_seq_len") is not None:
      unsupported.append("pos_embed_seq_len (Wan2.1 FLF2V)")
    if config_json.get("added_kv_proj_dim") not in (None, dim):
      unsupported.append(f"added_kv_proj_dim={config_json['added_kv_proj_dim']} != inner dim {dim}")
    if (config_json.get("image_dim") is None) != (config_json.get("added_kv_proj_dim") is None):
      unsupported.append("image_dim and added_kv_proj_dim must be set together")
    if unsupported:
      raise ValueError("unsupported WanTransformer3DModel config: " + ", ".join(unsupported))
    return cls(
      patch_size=tuple(config_json.get("patch_size", (1, 2, 2))),
      num_heads=config_json["num_attention_heads"],
      head_dim=config_json["attention_head_dim"],
      in_channels=config_json["in_channels"],
      out_channels=config_json.get("out_channels") or config_json["in_channels"],
      text_dim=config_json["text_dim"],
      freq_dim=config_json["freq_dim"],
      ffn_dim=config_json["ffn_dim"],
      num_layers=config_json["num_layers"],
      cross_attn_norm=config_json.get("cross_attn_norm", True),
      eps=config_json.get("eps", 1e-6),
      image_dim=config_json.get("image_dim"),
      rope_max_seq_len=config_json.get("rope_max_seq_len", 1024),
      **runtime,
    )


PRESETS: dict[str, WanConfig] = {
  # Tests: 2 heads x 16, 2 layers.
  "tiny": WanConfig(
    num_heads=2,
    head_dim=16,
    in_channels=36,
    text_dim=32,
    freq_dim=32,
    ffn_dim=64,
    num_layers=2,
    image_dim=32,
  ),
  # The CPU toy run on the toy codec's pixel latents (Z=3): in = 3 noise + 4 mask + 3 cond.
  "toy": WanConfig(
    num_heads=4,
    head_dim=16,
    in_channels=10,
    out_channels=3,
    text_dim=32,
    freq_dim=32,
    ffn_dim=128,
    num_layers=4,
    image_dim=32,
  ),
  "tiny_t2v": WanConfig(
    num_heads=2,
    head_dim=16,
    in_channels=16,
    text_dim=32,
    freq_dim=32,
    ffn_dim=64,
    num_layers=2,
    image_dim=None,
  ),
  # Wan2.1-T2V-1.3B.
  "t2v_1_3b": WanConfig(
    num_heads=12, head_dim=128, in_channels=16, ffn_dim=8960, num_layers=30, image_dim=None
  ),
  # Wan2.1-I2V-14B (480p and 720p share the weights).
  "i2v_14b": WanConfig(),
}


def preset(name: str, **overrides) -> WanConfig:
  if name not in PRESETS:
    raise KeyError(f"unknown Wan preset {name!r}; choose one of {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides)
