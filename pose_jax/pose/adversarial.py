"""Phase II's adversarial terms: the discriminator (a DiT backbone's tapped hidden states read
by the semantic head, :mod:`pose_jax.pose.discriminator`) on noised real and generated latents,
the hinge losses, the approximate R1 penalty, and the GAN diagnostics logged with them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pose_jax.pose import context, losses
from pose_jax.pose.config import PoseConfig
from pose_jax.pose.context import LossContext
from pose_jax.pose.losses import sg


def _noise_times(knobs: PoseConfig, key, batch_size):
  """Discriminator noise levels ``(t_fake, t_real)`` per ``knobs.d_noise``: one shared draw
  (``uniform``, ``logit_normal``: D cannot tell real from fake by the noise level), or the fake
  in the band ``[d_fake_lo, 1]`` (see ``shift_bands``) and the real over all of (0, 1)
  (``fake_band``, the paper figure's setting)."""
  k_fake, k_real = jax.random.split(key)
  if knobs.d_noise == "fake_band":
    band = (knobs.d_fake_lo, 1.0)
    return (
      context.draw(knobs, k_fake, batch_size, band, shift=knobs.band_shift),
      context.draw(knobs, k_real, batch_size),
    )
  t = context.draw(knobs, k_fake, batch_size, dist=knobs.d_noise)
  return t, t


def _discriminator_metrics(knobs, taps, d_real, d_fake, loss_d, loss_r1) -> dict:
  """GAN diagnostics from the per-layer logits ``[P, B]``: D's accuracy on each side (real
  > 0, fake < 0), its margin ``D(real) - D(fake)`` overall and per tapped block, and the
  weighted R1 penalty over the hinge loss."""
  real, fake = jnp.mean(d_real, axis=0), jnp.mean(d_fake, axis=0)
  out = {
    "d/real": jnp.mean(real),
    "d/fake": jnp.mean(fake),
    "d/acc_real": jnp.mean((real > 0).astype(jnp.float32)),
    "d/acc_fake": jnp.mean((fake < 0).astype(jnp.float32)),
    "d/margin": jnp.mean(real) - jnp.mean(fake),
    "d/r1_over_hinge": knobs.lam_r1 * loss_r1 / jnp.maximum(loss_d, 1e-8),
  }
  for p, block in enumerate(taps):
    out[f"d/margin_block{block}"] = jnp.mean(d_real[p]) - jnp.mean(d_fake[p])
  return out


def gan_terms(params, batch, key, ctx: LossContext, x0g):
  """Phase II's GAN terms: ``(L_G adv, L_D, L_R1, metrics)``.

  The backbone is E (EMA, default), R (frozen teacher) or its own trainable copy. Gradient
  reaches G only through the fake sample (the backbone and head are stop-gradient in L_G) and
  the head (and a trainable backbone) only through L_D and L_R1.
  """
  x, knobs = batch["latents"], ctx.knobs
  k_t, k_fake, k_real, k_r1 = jax.random.split(key, 4)
  t_fake, t_real = _noise_times(knobs, k_t, x.shape[0])
  fake, _ = context.noised(k_fake, ctx.probe("adv", x0g), t_fake, x.dtype)
  real, _ = context.noised(k_real, x, t_real)
  perturbed = real + losses.r1_noise(k_r1, real, knobs.sigma_s, knobs.sigma_t)
  trainable = knobs.d_backbone == "trainable_copy"
  if trainable:
    backbone = params["backbone"]
  else:
    backbone = sg(ctx.ema if knobs.d_backbone == "ema" else ctx.teacher)
  taps = lambda p, z, t: context.dit(ctx.models.dit, (p,), z, t, batch, taps=ctx.models.taps)
  cond = dict(text=batch["text"], image=batch.get("image"), text_mask=batch.get("text_mask"))
  head = nnx.merge(ctx.models.head, params["head"], copy=True)
  head_frozen = nnx.merge(ctx.models.head, sg(params["head"]), copy=True)
  with jax.named_scope("adversarial_g"):
    taps_fake = taps(sg(backbone), fake, t_fake)  # gradient reaches G through `fake` only
    loss_g = losses.hinge_generator(head_frozen(taps_fake, **cond))
  with jax.named_scope("adversarial_d"):
    # A frozen backbone's pass on the fake serves both losses; a trainable one needs its own.
    feats_fake = taps(backbone, sg(fake), t_fake) if trainable else [sg(h) for h in taps_fake]
    d_fake = head.layer_logits(feats_fake, **cond)  # [P, B]
    d_real = head.layer_logits(taps(backbone, real, t_real), **cond)
    loss_d = losses.hinge_discriminator(jnp.mean(d_real, axis=0), jnp.mean(d_fake, axis=0))
  with jax.named_scope("r1"):
    d_pert = head(taps(backbone, perturbed, t_real), **cond)
    loss_r1 = losses.approximate_r1(jnp.mean(d_real, axis=0), d_pert)
  metrics = _discriminator_metrics(knobs, ctx.models.taps, d_real, d_fake, loss_d, loss_r1)
  return loss_g, loss_d, loss_r1, metrics
