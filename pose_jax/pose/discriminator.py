"""The POSE discriminator head ``h`` that reads hidden states tapped from a DiT backbone.

Legend: B batch, Q learnable queries, L video tokens, M image tokens, S text tokens,
D backbone width, E head width, P tapped layers.

  tokens  = [queries (Q) ; proj(text tokens) (S) ; proj(image tokens) (M)]     (conditional)
          = [queries]                                                          (unconditional)
  q       = first Q outputs of one pre-norm self-attention + MLP layer over ``tokens``
            (keys: the text rows past the prompt, ``text_mask = 0``, are masked out)
  for each tapped layer p:  f_p = proj_p(LN(tap_p)) [B, L, E]
      z_p = q + cross_attn_p(LN(q), f_p);  logit_p = mean_Q mlp_p(LN(z_p))   -> [B]
  D = mean_p logit_p           (``layer_logits``: the logit_p themselves, ``[P, B]``)
The backbone (EMA of the generator, or the frozen teacher) is run elsewhere; the head only sees
its taps, so it never needs gradients through the backbone's weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from pose_jax import sharding as shd
from pose_jax.models.attention import dot_product_attention
from pose_jax.models.layers import Dense, LayerNorm, param


class _Attention(nnx.Module):
  def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs):
    kw = dict(axes=(shd.EMBED, shd.HEADS), rngs=rngs)
    self.to_q, self.to_k, self.to_v = (Dense(width, width, **kw) for _ in range(3))
    self.to_out = Dense(width, width, axes=(shd.HEADS, shd.EMBED), rngs=rngs)
    self.heads = heads

  def __call__(self, x, context, key_mask=None):
    """``key_mask`` bool ``[B, S]``: the context rows attended to (None: all)."""
    split = lambda a: rearrange(a, "b l (n k) -> b l n k", n=self.heads)
    q, k, v = split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context))
    if key_mask is None:
      out = dot_product_attention(q, k, v)
    else:
      mask = key_mask[:, None, None, :]
      out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
    return self.to_out(rearrange(out, "b l n k -> b l (n k)"))


class _MLP(nnx.Module):
  def __init__(self, width: int, out: int, *, rngs: nnx.Rngs):
    self.fc1 = Dense(width, 4 * width, axes=(shd.EMBED, shd.MLP), rngs=rngs)
    self.fc2 = Dense(4 * width, out, axes=(shd.MLP, None), rngs=rngs)

  def __call__(self, x):
    return self.fc2(jax.nn.gelu(self.fc1(x)))


class _TapReader(nnx.Module):
  """Per tapped layer: project the backbone tokens, cross-attend from the queries, score."""

  def __init__(self, backbone_dim: int, width: int, heads: int, *, rngs: nnx.Rngs):
    self.norm_tap = LayerNorm(backbone_dim, eps=1e-6, affine=False)
    self.proj = Dense(backbone_dim, width, axes=(shd.EMBED, None), rngs=rngs)
    self.norm_q = LayerNorm(width, eps=1e-6, affine=True, axes=(None,))
    self.cross = _Attention(width, heads, rngs=rngs)
    self.norm_out = LayerNorm(width, eps=1e-6, affine=True, axes=(None,))
    self.mlp = _MLP(width, 1, rngs=rngs)

  def __call__(self, queries, tap):
    feats = self.proj(self.norm_tap(tap))
    z = queries + self.cross(self.norm_q(queries), feats)
    return jnp.mean(self.mlp(self.norm_out(z))[..., 0], axis=-1)  # [B]


class SemanticHead(nnx.Module):
  def __init__(
    self,
    backbone_dim: int,
    num_taps: int,
    *,
    width: int = 1024,
    heads: int = 8,
    num_queries: int = 8,
    text_dim: int | None = None,
    image_dim: int | None = None,
    conditional: bool = True,
    rngs: nnx.Rngs,
  ):
    if width % heads:
      raise ValueError(f"head width {width} must be divisible by heads {heads}")
    if conditional and text_dim is None:
      raise ValueError("a conditional head needs text_dim (and image_dim for I2V)")
    self.queries = param(
      0.02 * jax.random.normal(rngs.params(), (num_queries, width)), (None, None)
    )
    self.conditional = conditional
    self.text_proj = (
      Dense(text_dim, width, axes=(shd.COND, None), rngs=rngs) if conditional else None
    )
    self.image_proj = (
      Dense(image_dim, width, axes=(shd.COND, None), rngs=rngs)
      if conditional and image_dim is not None
      else None
    )
    self.norm1 = LayerNorm(width, eps=1e-6, affine=True, axes=(None,))
    self.self_attn = _Attention(width, heads, rngs=rngs)
    self.norm2 = LayerNorm(width, eps=1e-6, affine=True, axes=(None,))
    self.mlp = _MLP(width, width, rngs=rngs)
    self.readers = nnx.List(
      [_TapReader(backbone_dim, width, heads, rngs=rngs) for _ in range(num_taps)]
    )

  def __call__(self, taps, text=None, image=None, text_mask=None) -> jax.Array:
    """Logits ``[B]`` from ``taps`` (list of ``[B, L, D]``) and the raw conditioning tokens
    (``text_mask [B, S]``: 1 for the prompt's rows; None: every row counts)."""
    return jnp.mean(self.layer_logits(taps, text, image, text_mask), axis=0)

  def layer_logits(self, taps, text=None, image=None, text_mask=None) -> jax.Array:
    """The logit of each tapped layer, ``[P, B]`` (``__call__`` is their mean)."""
    if len(taps) != len(self.readers):
      raise ValueError(f"head built for {len(self.readers)} taps, got {len(taps)}")
    b = taps[0].shape[0]
    q = jnp.broadcast_to(self.queries[...], (b, *self.queries.shape))
    tokens, valid = [q], [jnp.ones((b, q.shape[1]), bool)]
    if self.conditional:
      if text is None:
        raise ValueError("conditional head needs the text tokens")
      tokens.append(self.text_proj(text.astype(jnp.float32)))
      if text_mask is not None and text_mask.shape != text.shape[:2]:
        raise ValueError(f"text_mask {text_mask.shape} does not match text {text.shape}")
      valid.append(jnp.ones(text.shape[:2], bool) if text_mask is None else text_mask > 0)
      if self.image_proj is not None:
        if image is None:
          raise ValueError("conditional I2V head needs the image tokens")
        tokens.append(self.image_proj(image.astype(jnp.float32)))
        valid.append(jnp.ones(image.shape[:2], bool))
    x = jnp.concatenate(tokens, axis=1)
    key_mask = jnp.concatenate(valid, axis=1) if text_mask is not None else None
    x = x + self.self_attn(self.norm1(x), self.norm1(x), key_mask)
    x = x + self.mlp(self.norm2(x))
    q = x[:, : q.shape[1]]
    return jnp.stack([r(q, tap.astype(jnp.float32)) for r, tap in zip(self.readers, taps)])


def default_taps(num_layers: int, count: int = 4) -> tuple[int, ...]:
  """``count`` evenly spaced block indices ending at the last block (e.g. 40 -> 9, 19, 29, 39)."""
  if not 1 <= count <= num_layers:
    raise ValueError(f"cannot tap {count} of {num_layers} blocks")
  return tuple(round((i + 1) * num_layers / count) - 1 for i in range(count))
