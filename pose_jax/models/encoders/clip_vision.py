"""CLIP ViT vision tower (transformers ``CLIPVisionModel``) in flax.nnx, as Wan2.1-I2V uses it.

Legend: B batch, H/W image height/width, P patch size, C channels, L tokens (1 class token +
patches), D width, N heads, K head dim, F ffn.

Pixels are channels-last ``[B, H, W, 3]``, already preprocessed (:mod:`.image_preprocess`).
  h = pre_layrnorm([class ; patches @ W_patch] + pos)
  h += attn(layer_norm1(h));  h += fc2(act(fc1(layer_norm2(h))))        x num_layers
  pooled = post_layernorm(h[:, 0])                      (transformers: pooled output only)
Wan conditions on the *penultimate* hidden states, ``hidden_states[-2]`` of transformers'
``output_hidden_states=True`` (output of layer num_layers-2, no post_layernorm; 257 tokens for
ViT-H/14 at 224 px): :meth:`CLIPVisionEncoder.penultimate` runs only num_layers-1 layers.

The residual stream and LayerNorms run in float32, matmuls in ``cfg.dtype``; hidden states come
out in float32. Submodule names follow transformers so conversion is a rename + transpose.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from pose_jax import sharding as shd
from pose_jax.models.attention import IMPLS, dot_product_attention
from pose_jax.models.layers import Dense, LayerNorm, gelu_exact, gelu_tanh, param
from pose_jax.models.remat import POLICIES
from pose_jax.models.wan.config import DTYPES

_LAYER_META = {nnx.PARTITION_NAME: shd.LAYERS}


def quick_gelu(x: jax.Array) -> jax.Array:
  """OpenAI CLIP's ``x * sigmoid(1.702 x)``."""
  return x * jax.nn.sigmoid(1.702 * x)


# transformers ACT2FN names -> functions.
ACTIVATIONS = {
  "gelu": gelu_exact,
  "quick_gelu": quick_gelu,
  "gelu_new": gelu_tanh,
  "gelu_pytorch_tanh": gelu_tanh,
}


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
  """Architecture (transformers ``CLIPVisionConfig`` names, ``num_layers`` for
  ``num_hidden_layers``, ``num_heads`` for ``num_attention_heads``) plus runtime settings."""

  hidden_size: int = 1280
  intermediate_size: int = 5120
  num_layers: int = 32
  num_heads: int = 16
  image_size: int = 224
  patch_size: int = 14
  num_channels: int = 3
  layer_norm_eps: float = 1e-5
  hidden_act: str = "gelu"
  # Runtime.
  dtype: str = "float32"  # matmul dtype; LayerNorms and the residual stream stay float32
  remat: str = "none"  # see pose_jax.models.remat.POLICIES
  attention: str = "xla"  # see pose_jax.models.attention.IMPLS

  def __post_init__(self):
    errors = []
    if self.attention not in IMPLS:
      errors.append(f"attention={self.attention!r} not in {IMPLS}")
    if self.hidden_act not in ACTIVATIONS:
      errors.append(f"hidden_act={self.hidden_act!r} not in {sorted(ACTIVATIONS)}")
    if self.dtype not in DTYPES:
      errors.append(f"dtype={self.dtype!r} not in {sorted(DTYPES)}")
    if self.remat not in POLICIES:
      errors.append(f"remat={self.remat!r} not in {sorted(POLICIES)}")
    if self.hidden_size % self.num_heads:
      errors.append(f"hidden_size={self.hidden_size} not divisible by num_heads={self.num_heads}")
    if self.image_size % self.patch_size:
      errors.append(f"image_size={self.image_size} not divisible by patch={self.patch_size}")
    if self.num_layers < 2:
      errors.append("num_layers must be >= 2 (Wan reads the penultimate layer)")
    if errors:
      raise ValueError("invalid CLIPVisionConfig: " + "; ".join(errors))

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def num_positions(self) -> int:
    return (self.image_size // self.patch_size) ** 2 + 1

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  def replace(self, **kw) -> CLIPVisionConfig:
    return dataclasses.replace(self, **kw)

  @classmethod
  def from_hf(cls, cfg: dict[str, Any], **runtime) -> CLIPVisionConfig:
    """From a transformers ``config.json`` dict (a ``CLIPVisionConfig`` or a ``CLIPConfig``)."""
    cfg = cfg.get("vision_config", cfg)
    return cls(
      hidden_size=cfg["hidden_size"],
      intermediate_size=cfg["intermediate_size"],
      num_layers=cfg["num_hidden_layers"],
      num_heads=cfg["num_attention_heads"],
      image_size=cfg["image_size"],
      patch_size=cfg["patch_size"],
      num_channels=cfg.get("num_channels", 3),
      layer_norm_eps=cfg.get("layer_norm_eps", 1e-5),
      hidden_act=cfg.get("hidden_act", "quick_gelu"),
      **runtime,
    )


PRESETS: dict[str, CLIPVisionConfig] = {
  "tiny": CLIPVisionConfig(
    hidden_size=32, intermediate_size=64, num_layers=3, num_heads=2, image_size=32, patch_size=8
  ),
  # open-clip ViT-H/14 (Wan2.1-I2V image encoder; laion/CLIP-ViT-H-14-laion2B-s32B-b79K).
  "vit_h_14": CLIPVisionConfig(),
}


def preset(name: str, **overrides) -> CLIPVisionConfig:
  if name not in PRESETS:
    raise KeyError(f"unknown CLIP vision preset {name!r}; choose one of {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides)


class CLIPAttention(nnx.Module):
  def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs):
    d, kw = cfg.hidden_size, dict(dtype=cfg.compute_dtype, rngs=rngs)
    self.q_proj = Dense(d, d, axes=(shd.EMBED, shd.HEADS), **kw)
    self.k_proj = Dense(d, d, axes=(shd.EMBED, shd.HEADS), **kw)
    self.v_proj = Dense(d, d, axes=(shd.EMBED, shd.HEADS), **kw)
    self.out_proj = Dense(d, d, axes=(shd.HEADS, shd.EMBED), **kw)
    self.num_heads = cfg.num_heads
    self.impl = cfg.attention

  def __call__(self, x: jax.Array) -> jax.Array:
    """x [B, L, D] -> [B, L, D]; softmax(q k / sqrt(K)) v over all tokens."""
    q, k, v = (
      rearrange(p(x), "b l (n k) -> b l n k", n=self.num_heads)
      for p in (self.q_proj, self.k_proj, self.v_proj)
    )
    out = dot_product_attention(q, k, v, self.impl)
    return self.out_proj(rearrange(out, "b l n k -> b l (n k)"))


class CLIPMLP(nnx.Module):
  def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs):
    d, f, kw = cfg.hidden_size, cfg.intermediate_size, dict(dtype=cfg.compute_dtype, rngs=rngs)
    self.fc1 = Dense(d, f, axes=(shd.EMBED, shd.MLP), **kw)
    self.fc2 = Dense(f, d, axes=(shd.MLP, shd.EMBED), **kw)
    self.act = cfg.hidden_act

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(ACTIVATIONS[self.act](self.fc1(x)))


class CLIPEncoderLayer(nnx.Module):
  def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs):
    d, eps = cfg.hidden_size, cfg.layer_norm_eps
    self.layer_norm1 = LayerNorm(d, eps=eps, affine=True)
    self.self_attn = CLIPAttention(cfg, rngs=rngs)
    self.layer_norm2 = LayerNorm(d, eps=eps, affine=True)
    self.mlp = CLIPMLP(cfg, rngs=rngs)
    self.dtype = cfg.compute_dtype

  def __call__(self, h: jax.Array) -> jax.Array:
    """h [B, L, D] float32 -> [B, L, D] float32."""
    h = shd.constrain(h, shd.TOKENS)
    h = h + self.self_attn(self.layer_norm1(h).astype(self.dtype)).astype(jnp.float32)
    h = h + self.mlp(self.layer_norm2(h).astype(self.dtype)).astype(jnp.float32)
    return shd.constrain(h, shd.TOKENS)


class CLIPVisionEncoder(nnx.Module):
  """transformers ``CLIPVisionModel`` (no projection head); layers stacked on a ``layers`` axis."""

  def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    d, p = cfg.hidden_size, cfg.patch_size
    # Conv2d(kernel == stride == P, no bias) stored as a dense [P*P*C, D] kernel.
    self.patch_embedding = Dense(
      p * p * cfg.num_channels,
      d,
      axes=(shd.COND, shd.EMBED),
      use_bias=False,
      dtype=cfg.compute_dtype,
      rngs=rngs,
    )
    self.class_embedding = param(
      jax.random.normal(rngs.params(), (d,), jnp.float32) * d**-0.5, (shd.EMBED,)
    )
    self.position_embedding = param(
      jax.random.normal(rngs.params(), (cfg.num_positions, d), jnp.float32) * 0.02,
      (None, shd.EMBED),
    )
    self.pre_layrnorm = LayerNorm(d, eps=cfg.layer_norm_eps, affine=True)

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata=_LAYER_META)
    def make_layers(rngs):
      return CLIPEncoderLayer(cfg, rngs=rngs)

    self.layers = make_layers(rngs)
    self.post_layernorm = LayerNorm(d, eps=cfg.layer_norm_eps, affine=True)

  def __call__(self, pixels: jax.Array) -> jax.Array:
    """Last hidden state ``[B, L, D]`` (transformers ``last_hidden_state``)."""
    return self.hidden_state(pixels, self.cfg.num_layers)

  def penultimate(self, pixels: jax.Array) -> jax.Array:
    """Wan's image tokens ``[B, L, D]``: transformers ``hidden_states[-2]``."""
    return self.hidden_state(pixels, self.cfg.num_layers - 1)

  def pooled(self, pixels: jax.Array) -> jax.Array:
    """transformers ``pooler_output`` ``[B, D]``: post_layernorm of the last class token."""
    return self.post_layernorm(self(pixels)[:, 0])

  def hidden_state(self, pixels: jax.Array, num_layers: int) -> jax.Array:
    """Hidden states after the first ``num_layers`` layers (0: embeddings after pre_layrnorm),
    i.e. transformers ``hidden_states[num_layers]``; later layers are not run."""
    if not 0 <= num_layers <= self.cfg.num_layers:
      raise ValueError(f"num_layers={num_layers} out of range [0, {self.cfg.num_layers}]")
    h = self._embed(pixels)
    if num_layers == 0:
      return h

    def body(h, layer):
      return layer(h)

    if self.cfg.remat != "none":
      body = nnx.remat(body, policy=POLICIES[self.cfg.remat])
    layers = self.layers
    if num_layers != self.cfg.num_layers:
      graphdef, state = nnx.split(self.layers)
      layers = nnx.merge(graphdef, jax.tree.map(lambda a: a[:num_layers], state))
    scan = nnx.scan(
      body, in_axes=(nnx.Carry, 0), out_axes=nnx.Carry, transform_metadata=_LAYER_META
    )
    return scan(h, layers)

  def _embed(self, pixels: jax.Array) -> jax.Array:
    cfg = self.cfg
    want = (cfg.image_size, cfg.image_size, cfg.num_channels)
    if pixels.ndim != 4 or tuple(pixels.shape[1:]) != want:
      raise ValueError(f"pixels shape {pixels.shape} must be [B, {', '.join(map(str, want))}]")
    p = cfg.patch_size
    patches = rearrange(pixels, "b (h ph) (w pw) c -> b (h w) (ph pw c)", ph=p, pw=p)
    patches = self.patch_embedding(patches.astype(cfg.compute_dtype)).astype(jnp.float32)
    cls = jnp.broadcast_to(self.class_embedding[...], (patches.shape[0], 1, patches.shape[-1]))
    h = jnp.concatenate([cls, patches], axis=1) + self.position_embedding[...]
    return shd.constrain(self.pre_layrnorm(h), shd.TOKENS)
