"""``WanTransformer``: diffusers ``WanTransformer3DModel`` (Wan2.1 T2V / I2V) in flax.nnx.

Legend: B batch, T/H/W latent frames/height/width, C channels, L = T'H'W' video tokens,
S text tokens, M image tokens, D width.

Inputs are channels-last ``[B, T, H, W, C]`` (diffusers: ``[B, C, T, H, W]``); ``timestep`` is on
diffusers' 0..1000 scale. Blocks are stacked on a leading ``layers`` axis (``nnx.vmap`` init) and
applied with ``nnx.scan`` under ``nnx.remat`` (policy ``cfg.remat``), or unrolled over the same
stacked weights when ``cfg.scan_layers`` is False. Hidden states after chosen blocks ("taps",
read by the discriminator) come out of a scan split into segments at the tap points, so taps
cost no extra activation memory.

One module instance serves several parameter trees (student, EMA, teacher) under ``jit``:
``graphdef, params = nnx.split(model)``, then ``nnx.merge(graphdef, other_params)(...)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from pose_jax import sharding as shd
from pose_jax.models.layers import Dense, LayerNorm, param
from pose_jax.models.remat import POLICIES
from pose_jax.models.wan.block import WanBlock
from pose_jax.models.wan.config import WanConfig
from pose_jax.models.wan.embeddings import ConditionEmbedder
from pose_jax.models.wan.rope import rope_angles

_LAYER_META = {nnx.PARTITION_NAME: shd.LAYERS}


class WanTransformer(nnx.Module):
  def __init__(self, cfg: WanConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    d, (pt, ph, pw) = cfg.dim, cfg.patch_size
    patch_in = pt * ph * pw * cfg.in_channels
    # Conv3d with kernel == stride == patch, stored as a dense [pt*ph*pw*C_in, D] kernel.
    self.patch_embedding = Dense(
      patch_in,
      d,
      axes=(shd.COND, shd.EMBED),
      param_dtype=cfg.params_dtype,
      dtype=cfg.compute_dtype,
      rngs=rngs,
    )
    self.condition_embedder = ConditionEmbedder(cfg, rngs=rngs)

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata=_LAYER_META)
    def make_blocks(rngs):
      return WanBlock(cfg, rngs=rngs)

    self.blocks = make_blocks(rngs)
    self.norm_out = LayerNorm(d, eps=cfg.eps, affine=False)
    self.proj_out = Dense(
      d,
      cfg.out_channels * pt * ph * pw,
      axes=(shd.EMBED, shd.OUT),
      param_dtype=cfg.params_dtype,
      dtype=cfg.compute_dtype,
      rngs=rngs,
    )
    self.scale_shift_table = param(
      jax.random.normal(rngs.params(), (1, 2, d), jnp.float32) / d**0.5, (None, shd.MOD, shd.EMBED)
    )

  # ----------------------------------------------------------------------------------------------
  def __call__(self, x, timestep, text, image=None, *, taps: Sequence[int] = ()):
    """Velocity prediction.

    Args:
      x: noisy latent (I2V: concatenated with mask + condition latent) ``[B, T, H, W, C_in]``.
      timestep: ``[B]``, 0..1000.
      text: text encoder tokens ``[B, S, text_dim]`` (any S; Wan pads to 512).
      image: CLIP image tokens ``[B, M, image_dim]`` (I2V only; M is taken from the shape).
      taps: block indices (0-based); when given, also return the hidden states ``[B, L, D]``
        after each of these blocks, in the order given.

    Returns:
      ``[B, T, H, W, C_out]``, or ``(that, [tap hidden states])`` when ``taps`` is non-empty.
    """
    h, ctx = self._embed(x, timestep, text, image)
    h, tapped = self._run_blocks(h, ctx, taps)
    out = self._head(h, ctx["temb"], x.shape)
    return (out, tapped) if taps else out

  def hidden_states(self, x, timestep, text, image=None, *, taps: Sequence[int]):
    """Only the tapped hidden states; blocks after the last tap and the output head are skipped."""
    if not taps:
      raise ValueError("hidden_states needs at least one tap")
    h, ctx = self._embed(x, timestep, text, image)
    return self._run_blocks(h, ctx, taps, stop_at_last=True)[1]

  # ----------------------------------------------------------------------------------------------
  def _embed(self, x, timestep, text, image):
    cfg = self.cfg
    b, t, hh, ww, c = x.shape
    pt, ph, pw = cfg.patch_size
    if c != cfg.in_channels:
      raise ValueError(f"input has {c} channels, model expects in_channels={cfg.in_channels}")
    if t % pt or hh % ph or ww % pw:
      raise ValueError(f"latent shape T,H,W={t, hh, ww} not divisible by patch {cfg.patch_size}")
    if timestep.shape != (b,):
      raise ValueError(f"timestep shape {timestep.shape} must be [B]=({b},)")
    if text.ndim != 3 or text.shape[0] != b or text.shape[-1] != cfg.text_dim:
      raise ValueError(f"text shape {text.shape} must be [B={b}, S, text_dim={cfg.text_dim}]")
    if image is not None and (
      image.ndim != 3 or image.shape[0] != b or image.shape[-1] != cfg.image_dim
    ):
      raise ValueError(f"image shape {image.shape} must be [B={b}, M, image_dim={cfg.image_dim}]")
    grid = (t // pt, hh // ph, ww // pw)
    patches = rearrange(
      x, "b (t pt) (h ph) (w pw) c -> b (t h w) (pt ph pw c)", pt=pt, ph=ph, pw=pw
    )
    h = shd.constrain(self.patch_embedding(patches.astype(cfg.compute_dtype)), shd.HIDDEN)
    temb, mod, text, image = self.condition_embedder(timestep, text, image)
    cos, sin = rope_angles(grid, cfg.head_dim, cfg.rope_max_seq_len)
    ctx = dict(
      temb=temb, mod=mod, text=text, image=image, rope=(jnp.asarray(cos), jnp.asarray(sin))
    )
    return h, ctx

  def _run_blocks(self, h, ctx, taps, stop_at_last=False):
    n = self.cfg.num_layers
    bad = [i for i in taps if not 0 <= i < n]
    if bad:
      raise ValueError(f"tap indices {bad} out of range for {n} blocks")
    ends = sorted(set(taps))
    if not stop_at_last and (not ends or ends[-1] != n - 1):
      ends.append(n - 1)
    after = {}
    start = 0
    for end in ends:
      h = self._apply_range(h, ctx, start, end + 1)
      after[end] = h
      start = end + 1
    return h, [after[i] for i in taps]

  def _apply_range(self, h, ctx, start, stop):
    """Applies blocks ``[start, stop)`` to ``h``."""
    args = (ctx["text"], ctx["image"], ctx["mod"], ctx["rope"])
    policy = POLICIES[self.cfg.remat]

    def body(h, block):
      return block(h, *args)

    if self.cfg.remat != "none":
      body = nnx.remat(body, policy=policy, prevent_cse=not self.cfg.scan_layers)
    graphdef, state = nnx.split(self.blocks)
    if not self.cfg.scan_layers:
      for i in range(start, stop):
        h = body(h, nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state)))
      return h
    blocks = self.blocks
    if (start, stop) != (0, self.cfg.num_layers):
      blocks = nnx.merge(graphdef, jax.tree.map(lambda a: a[start:stop], state))
    scan = nnx.scan(
      body, in_axes=(nnx.Carry, 0), out_axes=nnx.Carry, transform_metadata=_LAYER_META
    )
    return scan(h, blocks)

  def _head(self, h, temb, in_shape):
    cfg = self.cfg
    b, t, hh, ww, _ = in_shape
    pt, ph, pw = cfg.patch_size
    temb = temb.astype(cfg.compute_dtype).astype(jnp.float32)
    shift, scale = jnp.split(self.scale_shift_table[...] + temb[:, None], 2, axis=1)
    x = (self.norm_out(h) * (1 + scale) + shift).astype(cfg.compute_dtype)
    out = self.proj_out(x)
    return rearrange(
      out,
      "b (t h w) (pt ph pw c) -> b (t pt) (h ph) (w pw) c",
      t=t // pt,
      h=hh // ph,
      w=ww // pw,
      pt=pt,
      ph=ph,
      pw=pw,
    )
