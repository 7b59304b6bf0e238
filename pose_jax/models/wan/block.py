"""The Wan transformer block (diffusers ``WanTransformerBlock`` / ``WanAttention``).

Legend: B batch, L video tokens, S text tokens, M image tokens, D width, N heads, K head dim.

  h += gate1 * attn1(LN(h) * (1 + scale1) + shift1)            self-attention with 3D RoPE
  h += attn2(LN_affine(h), text, image)                          cross-attention (text + image)
  h += gate2 * ffn(LN(h) * (1 + scale2) + shift2)              GELU(tanh) FFN
Norms, modulation and the residual stream math run in float32 (diffusers FP32LayerNorm).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from pose_jax import sharding as shd
from pose_jax.models import remat
from pose_jax.models.attention import dot_product_attention
from pose_jax.models.layers import Dense, LayerNorm, RMSNorm, gelu_tanh, param
from pose_jax.models.wan.config import WanConfig
from pose_jax.models.wan.embeddings import FeedForward
from pose_jax.models.wan.rope import apply_rope


class WanAttention(nnx.Module):
  """Self- or cross-attention with RMS q/k norms across heads; optional image K/V branch."""

  def __init__(self, cfg: WanConfig, *, cross: bool, rngs: nnx.Rngs):
    d = cfg.dim
    kw = dict(
      lora_rank=cfg.lora_rank,
      lora_alpha=cfg.lora_alpha,
      param_dtype=cfg.params_dtype,
      dtype=cfg.compute_dtype,
      rngs=rngs,
    )
    self.to_q = Dense(d, d, axes=(shd.EMBED, shd.HEADS), **kw)
    self.to_k = Dense(d, d, axes=(shd.EMBED, shd.HEADS), **kw)
    self.to_v = Dense(d, d, axes=(shd.EMBED, shd.HEADS), **kw)
    self.to_out = Dense(d, d, axes=(shd.HEADS, shd.EMBED), **kw)
    self.norm_q = RMSNorm(d, eps=cfg.eps)
    self.norm_k = RMSNorm(d, eps=cfg.eps)
    if cross and cfg.is_i2v:
      self.add_k_proj = Dense(d, d, axes=(shd.EMBED, shd.HEADS), **kw)
      self.add_v_proj = Dense(d, d, axes=(shd.EMBED, shd.HEADS), **kw)
      self.norm_added_k = RMSNorm(d, eps=cfg.eps)
    else:
      self.add_k_proj = self.add_v_proj = self.norm_added_k = None
    self.num_heads = cfg.num_heads
    self.impl = cfg.attention
    # Cross-attention's keys come from the (unsplit) text/image tokens: always allgather.
    self.context_parallel = "allgather" if cross else cfg.context_parallel

  def _heads(self, x, names):
    return shd.constrain(rearrange(x, "b l (n k) -> b l n k", n=self.num_heads), names)

  def __call__(self, x, context=None, image=None, rope=None):
    """x [B,L,D]; context [B,S,D] (None = self-attention); image [B,M,D]; rope (cos, sin)."""
    kv_in = x if context is None else context
    # Ulysses keeps k/v split over the sequence like q (attention turns all three to head
    # splits); allgather gathers them whole (see pose_jax.models.attention).
    kv_names = shd.QUERIES if self.context_parallel == "ulysses" else shd.KEYS_VALUES
    q = self._heads(self.norm_q(self.to_q(x)), shd.QUERIES)
    k = self._heads(self.norm_k(self.to_k(kv_in)), kv_names)
    v = self._heads(self.to_v(kv_in), kv_names)
    if rope is not None:
      q, k = apply_rope(q, *rope), apply_rope(k, *rope)
      k = shd.constrain(k, kv_names)
    out = dot_product_attention(q, k, v, self.impl, self.context_parallel)
    if image is not None:
      if self.add_k_proj is None:
        raise ValueError("image tokens given to an attention layer without add_k_proj (T2V)")
      k_img = self._heads(self.norm_added_k(self.add_k_proj(image)), shd.KEYS_VALUES)
      v_img = self._heads(self.add_v_proj(image), shd.KEYS_VALUES)
      out = out + dot_product_attention(q, k_img, v_img, self.impl)
    out = shd.constrain(out, shd.QUERIES)
    return self.to_out(rearrange(out, "b l n k -> b l (n k)"))


class WanBlock(nnx.Module):
  def __init__(self, cfg: WanConfig, *, rngs: nnx.Rngs):
    d = cfg.dim
    self.norm1 = LayerNorm(d, eps=cfg.eps, affine=False)
    self.attn1 = WanAttention(cfg, cross=False, rngs=rngs)
    self.attn2 = WanAttention(cfg, cross=True, rngs=rngs)
    self.norm2 = LayerNorm(d, eps=cfg.eps, affine=True) if cfg.cross_attn_norm else None
    self.ffn = FeedForward(
      d,
      cfg.ffn_dim,
      d,
      gelu_tanh,
      axes=(shd.EMBED, shd.MLP),
      lora_rank=cfg.lora_rank,
      lora_alpha=cfg.lora_alpha,
      param_dtype=cfg.params_dtype,
      dtype=cfg.compute_dtype,
      rngs=rngs,
    )
    self.norm3 = LayerNorm(d, eps=cfg.eps, affine=False)
    self.scale_shift_table = param(
      jax.random.normal(rngs.params(), (1, 6, d), jnp.float32) / d**0.5, (None, shd.MOD, shd.EMBED)
    )

  def __call__(self, h, text, image, mod, rope):
    """h [B,L,D] (compute dtype); text [B,S,D]; image [B,M,D] | None; mod [B,6,D] f32."""
    dtype = h.dtype
    h = shd.constrain(h, shd.HIDDEN)
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(
      self.scale_shift_table[...] + mod, 6, axis=1
    )
    x = (self.norm1(h) * (1 + scale1) + shift1).astype(dtype)
    attn = remat.tag(self.attn1(x, rope=rope), remat.ATTN_OUT)
    h = (h.astype(jnp.float32) + attn * gate1).astype(dtype)

    x = self.norm2(h).astype(dtype) if self.norm2 is not None else h
    h = h + remat.tag(self.attn2(x, context=text, image=image), remat.ATTN_OUT).astype(dtype)

    x = (self.norm3(h) * (1 + scale2) + shift2).astype(dtype)
    ff = remat.tag(self.ffn(x), remat.FFN_OUT)
    h = (h.astype(jnp.float32) + ff.astype(jnp.float32) * gate2).astype(dtype)
    return shd.constrain(h, shd.HIDDEN)
