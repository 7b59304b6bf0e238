"""UMT5 text encoder (transformers ``UMT5EncoderModel``; Wan2.1's umt5-xxl) in flax.nnx.

Legend: B batch, L query tokens, S key tokens (= L), D width (d_model), N heads, K head dim
(d_kv), F ffn (d_ff), V vocabulary.

  h = shared[ids]
  h += o(attn(attn_norm(h)))    logits = q.k + bias_layer[bucket(s - l)] (NO 1/sqrt(K)), padded
                                keys masked
  h += wo(act(wi_0 x) * wi_1 x) with x = ffn_norm(h)                             x num_layers
  out = final_layer_norm(h)
UMT5 differs from T5 in that every layer has its own relative-position bias table
(``relative_attention_bias [buckets, N]``); buckets are T5's bidirectional log buckets.
Norms are T5 RMS norms (no mean, no bias). The residual stream and norms run in float32, matmuls
in ``cfg.dtype``, attention logits/softmax in float32; outputs are float32.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from flax import nnx

from pose_jax import sharding as shd
from pose_jax.models.layers import Dense, RMSNorm, gelu_exact, gelu_tanh, param
from pose_jax.models.remat import POLICIES
from pose_jax.models.wan.config import DTYPES

_LAYER_META = {nnx.PARTITION_NAME: shd.LAYERS}

# transformers ACT2FN names -> functions.
ACTIVATIONS = {
  "gelu_new": gelu_tanh,
  "gelu_pytorch_tanh": gelu_tanh,
  "gelu": gelu_exact,
  "relu": jax.nn.relu,
  "silu": jax.nn.silu,
}


@dataclasses.dataclass(frozen=True)
class UMT5Config:
  """Architecture (transformers ``UMT5Config`` names) plus runtime settings."""

  vocab_size: int = 256384
  d_model: int = 4096
  d_kv: int = 64
  d_ff: int = 10240
  num_layers: int = 24
  num_heads: int = 64
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  feed_forward_proj: str = "gated-gelu"
  # Runtime.
  dtype: str = "float32"  # matmul dtype; norms, residual stream and softmax stay float32
  remat: str = "none"  # see pose_jax.models.remat.POLICIES

  def __post_init__(self):
    errors = []
    if not self.feed_forward_proj.startswith("gated-"):
      errors.append(f"feed_forward_proj={self.feed_forward_proj!r}: only gated FFNs (UMT5)")
    elif self.dense_act_fn not in ACTIVATIONS:
      errors.append(f"activation {self.dense_act_fn!r} not in {sorted(ACTIVATIONS)}")
    if self.dtype not in DTYPES:
      errors.append(f"dtype={self.dtype!r} not in {sorted(DTYPES)}")
    if self.remat not in POLICIES:
      errors.append(f"remat={self.remat!r} not in {sorted(POLICIES)}")
    if self.relative_attention_num_buckets < 4:
      errors.append("relative_attention_num_buckets must be >= 4")
    if self.num_layers < 1:
      errors.append("num_layers must be >= 1")
    if errors:
      raise ValueError("invalid UMT5Config: " + "; ".join(errors))

  @property
  def dense_act_fn(self) -> str:
    """As transformers derives it: 'gated-gelu' means the tanh GELU ('gelu_new')."""
    if self.feed_forward_proj == "gated-gelu":
      return "gelu_new"
    return self.feed_forward_proj.split("-")[-1]

  @property
  def inner_dim(self) -> int:
    return self.num_heads * self.d_kv

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  def replace(self, **kw) -> UMT5Config:
    return dataclasses.replace(self, **kw)

  @classmethod
  def from_hf(cls, cfg: dict[str, Any], **runtime) -> UMT5Config:
    """From a transformers ``config.json`` dict."""
    return cls(
      vocab_size=cfg["vocab_size"],
      d_model=cfg["d_model"],
      d_kv=cfg["d_kv"],
      d_ff=cfg["d_ff"],
      num_layers=cfg["num_layers"],
      num_heads=cfg["num_heads"],
      relative_attention_num_buckets=cfg.get("relative_attention_num_buckets", 32),
      relative_attention_max_distance=cfg.get("relative_attention_max_distance", 128),
      layer_norm_epsilon=cfg.get("layer_norm_epsilon", 1e-6),
      feed_forward_proj=cfg.get("feed_forward_proj", "gated-gelu"),
      **runtime,
    )


PRESETS: dict[str, UMT5Config] = {
  "tiny": UMT5Config(
    vocab_size=100,
    d_model=32,
    d_kv=8,
    d_ff=64,
    num_layers=3,
    num_heads=4,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=16,
  ),
  # google/umt5-xxl encoder (Wan2.1 text encoder).
  "umt5_xxl": UMT5Config(),
}


def preset(name: str, **overrides) -> UMT5Config:
  if name not in PRESETS:
    raise KeyError(f"unknown UMT5 preset {name!r}; choose one of {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides)


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
  """T5's bidirectional bucket of ``key_pos - query_pos``, int32 ``[L, S]`` (static, numpy).

  Float32 arithmetic in the same order as transformers, so the buckets at the exact log-bin
  boundaries (e.g. distances 16, 32, 64 for umt5-xxl) come out identical.
  """
  rel = np.arange(length)[None, :] - np.arange(length)[:, None]
  half = num_buckets // 2
  buckets = (rel > 0).astype(np.int64) * half
  rel = np.abs(rel)
  max_exact = half // 2
  ratio = np.log(np.maximum(rel, 1).astype(np.float32) / np.float32(max_exact))
  large = max_exact + (ratio / math.log(max_distance / max_exact) * (half - max_exact)).astype(
    np.int64
  )
  large = np.minimum(large, half - 1)
  return (buckets + np.where(rel < max_exact, rel, large)).astype(np.int32)


class UMT5Attention(nnx.Module):
  def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs):
    d, inner = cfg.d_model, cfg.inner_dim
    kw = dict(use_bias=False, dtype=cfg.compute_dtype, rngs=rngs)
    self.q = Dense(d, inner, axes=(shd.EMBED, shd.HEADS), **kw)
    self.k = Dense(d, inner, axes=(shd.EMBED, shd.HEADS), **kw)
    self.v = Dense(d, inner, axes=(shd.EMBED, shd.HEADS), **kw)
    self.o = Dense(inner, d, axes=(shd.HEADS, shd.EMBED), **kw)
    self.relative_attention_bias = param(
      jax.random.normal(
        rngs.params(), (cfg.relative_attention_num_buckets, cfg.num_heads), jnp.float32
      ),
      (None, None),
    )
    self.num_heads = cfg.num_heads

  def __call__(self, x: jax.Array, buckets: jax.Array, mask: jax.Array) -> jax.Array:
    """x [B, L, D]; buckets int [L, S]; mask bool [B, S] (False = padded key) -> [B, L, D]."""
    q, k, v = (
      rearrange(p(x), "b l (n k) -> b l n k", n=self.num_heads) for p in (self.q, self.k, self.v)
    )
    logits = jnp.einsum("blnk,bsnk->bnls", q, k, preferred_element_type=jnp.float32)
    bias = jnp.take(self.relative_attention_bias[...], buckets, axis=0)  # [L, S, N]
    logits = logits + jnp.transpose(bias, (2, 0, 1))[None]
    logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bnls,bsnk->blnk", probs, v)
    return self.o(rearrange(out, "b l n k -> b l (n k)"))


class UMT5GatedFFN(nnx.Module):
  def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs):
    d, f = cfg.d_model, cfg.d_ff
    kw = dict(use_bias=False, dtype=cfg.compute_dtype, rngs=rngs)
    self.wi_0 = Dense(d, f, axes=(shd.EMBED, shd.MLP), **kw)
    self.wi_1 = Dense(d, f, axes=(shd.EMBED, shd.MLP), **kw)
    self.wo = Dense(f, d, axes=(shd.MLP, shd.EMBED), **kw)
    self.act = cfg.dense_act_fn

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.wo(ACTIVATIONS[self.act](self.wi_0(x)) * self.wi_1(x))


class UMT5Block(nnx.Module):
  def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs):
    d, eps = cfg.d_model, cfg.layer_norm_epsilon
    self.attn_norm = RMSNorm(d, eps=eps, axes=(shd.EMBED,))
    self.attn = UMT5Attention(cfg, rngs=rngs)
    self.ffn_norm = RMSNorm(d, eps=eps, axes=(shd.EMBED,))
    self.ffn = UMT5GatedFFN(cfg, rngs=rngs)
    self.dtype = cfg.compute_dtype

  def __call__(self, h: jax.Array, buckets: jax.Array, mask: jax.Array) -> jax.Array:
    """h [B, L, D] float32 -> [B, L, D] float32."""
    h = shd.constrain(h, shd.TOKENS)
    h = h + self.attn(self.attn_norm(h).astype(self.dtype), buckets, mask).astype(jnp.float32)
    h = h + self.ffn(self.ffn_norm(h).astype(self.dtype)).astype(jnp.float32)
    return shd.constrain(h, shd.TOKENS)


class UMT5Encoder(nnx.Module):
  """transformers ``UMT5EncoderModel``; blocks stacked on a ``layers`` axis, run with scan."""

  def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.shared = param(
      jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.d_model), jnp.float32),
      (None, shd.EMBED),
    )

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata=_LAYER_META)
    def make_blocks(rngs):
      return UMT5Block(cfg, rngs=rngs)

    self.blocks = make_blocks(rngs)
    self.final_layer_norm = RMSNorm(cfg.d_model, eps=cfg.layer_norm_epsilon, axes=(shd.EMBED,))

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
    """input_ids int [B, L]; attention_mask [B, L] (1 = token, 0 = padding; None = all tokens).

    Returns ``last_hidden_state`` float32 ``[B, L, D]``. Padded positions are masked as keys
    only (as in transformers), so their own outputs are defined but meaningless.
    """
    cfg = self.cfg
    if input_ids.ndim != 2:
      raise ValueError(f"input_ids shape {input_ids.shape} must be [B, L]")
    if attention_mask is None:
      mask = jnp.ones(input_ids.shape, bool)
    elif attention_mask.shape != input_ids.shape:
      raise ValueError(f"attention_mask {attention_mask.shape} != input_ids {input_ids.shape}")
    else:
      mask = jnp.asarray(attention_mask) != 0
    buckets = jnp.asarray(
      relative_position_buckets(
        input_ids.shape[1], cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance
      )
    )
    h = shd.constrain(jnp.take(self.shared[...], input_ids, axis=0), shd.TOKENS)

    def body(h, block):
      return block(h, buckets, mask)

    if cfg.remat != "none":
      body = nnx.remat(body, policy=POLICIES[cfg.remat])
    scan = nnx.scan(
      body, in_axes=(nnx.Carry, 0), out_axes=nnx.Carry, transform_metadata=_LAYER_META
    )
    return self.final_layer_norm(scan(h, self.blocks))
