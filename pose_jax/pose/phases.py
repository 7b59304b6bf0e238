"""The POSE phases' losses: ``pretrain`` (flow matching, making a small teacher), ``priming``
(Phase I: DMD with a LoRA fake score on the frozen teacher) and ``equilibrium`` (Phase II: the
adversarial equilibrium with the semantic head, approximate R1 and, Phase III, the I2V
consistency term C-SDS).

Models are one graphdef each, called with different parameter trees (``nnx.merge``):
G = student params, R = frozen teacher, F = teacher base + LoRA, E = EMA of G, h = head; the
discriminator backbone is E, R or (``d_backbone=trainable_copy``) its own trained copy.
Times t are in [0, 1] (1 = noise); the DiT sees ``1000 t``. The batch holds ``latents``
``[B,T,h,w,Z]``, ``cond`` (mask + condition latent, I2V), ``text``, ``neg_text`` and ``image``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pose_jax.pose import losses, timesteps
from pose_jax.pose.config import PoseConfig
from pose_jax.pose.velocity import dit_forward, guided_velocity

sg = jax.lax.stop_gradient


def _dit(graphdef, states, x, t, batch, text=None, taps=()):
  """Velocity (or taps) of a DiT for noisy latents ``x`` at times ``t [B]`` on ``batch``."""
  text = batch["text"] if text is None else text
  return dit_forward(graphdef, states, x, t, batch.get("cond"), text, batch.get("image"), taps)


def _cfg_velocity(models, teacher, x, t, batch, scale):
  v = guided_velocity(
    models.dit,
    (teacher,),
    batch.get("cond"),
    batch["text"],
    batch.get("image"),
    scale,
    batch.get("neg_text"),
  )
  return v(x, t)


def _noise_times(knobs: PoseConfig, key, batch_size):
  """Discriminator noise levels ``(t_fake, t_real)`` per ``knobs.d_noise``."""
  kf, kr = jax.random.split(key)
  s = knobs.flow_shift
  if knobs.d_noise == "fake_band":
    return (
      timesteps.sample(kf, batch_size, "uniform", lo=0.9, flow_shift=s),
      timesteps.sample(kr, batch_size, "uniform", flow_shift=s),
    )
  t = timesteps.sample(kf, batch_size, knobs.d_noise, flow_shift=s)
  return t, t


# --- losses per phase -------------------------------------------------------------------------
def _drop_text(batch, key, p: float):
  """``text`` replaced by the negative prompt's tokens in a fraction ``p`` of the samples (the
  condition dropout that makes a teacher's unconditional branch, and so CFG, meaningful)."""
  if not p or batch.get("neg_text") is None:
    return batch["text"]
  drop = jax.random.bernoulli(key, p, (batch["text"].shape[0], 1, 1))
  return jnp.where(drop, batch["neg_text"].astype(batch["text"].dtype), batch["text"])


def pretrain_loss(params, teacher, batch, key, models, knobs, frac):
  del teacher, frac
  x = batch["latents"]
  ke, kt, kd = jax.random.split(key, 3)
  eps = jax.random.normal(ke, x.shape, x.dtype)
  t = timesteps.sample(kt, x.shape[0], "uniform", flow_shift=knobs.flow_shift)
  text = _drop_text(batch, kd, knobs.text_dropout)
  v = _dit(models.dit, (params["student"],), timesteps.add_noise(x, eps, t), t, batch, text)
  loss = losses.flow_matching(v, x, eps)
  return loss, {"loss/flow": loss}


def _generator_x0(params, batch, key, models, lo):
  """Phase I generator sample: ``x0g = x_s - s G(x_s, s)`` with ``s ~ U[lo, 1]``."""
  x = batch["latents"]
  ke, ks = jax.random.split(key)
  eps = jax.random.normal(ke, x.shape, x.dtype)
  s = timesteps.sample(ks, x.shape[0], "uniform", lo=lo)
  x_s = timesteps.add_noise(x, eps, s)
  return timesteps.x0_from_velocity(x_s, _dit(models.dit, (params["student"],), x_s, s, batch), s)


def _one_step_x0(params, batch, key, models):
  """Phase II generator sample from pure noise: ``x0g = eps - G(eps, 1)``."""
  x = batch["latents"]
  eps = jax.random.normal(key, x.shape, x.dtype)
  ones = jnp.ones((x.shape[0],))
  return timesteps.x0_from_velocity(
    eps, _dit(models.dit, (params["student"],), eps, ones, batch), ones
  )


def _vsd(params, teacher, batch, key, models, knobs, x0g):
  """Phase I's two terms on a generator sample: ``(L_G (DMD), L_F (fake score))``."""
  k_eps, k_t = jax.random.split(key)
  t = timesteps.sample(k_t, x0g.shape[0], "uniform", flow_shift=knobs.flow_shift)
  eps = jax.random.normal(k_eps, x0g.shape, x0g.dtype)
  xt = sg(timesteps.add_noise(x0g, eps, t))
  x0_real = timesteps.x0_from_velocity(
    xt, _cfg_velocity(models, teacher, xt, t, batch, knobs.cfg_real), t
  )
  v_fake = _dit(models.dit_lora, (params["lora"], teacher), xt, t, batch)
  x0_fake = timesteps.x0_from_velocity(xt, sg(v_fake), t)
  return losses.dmd_generator(x0g, x0_real, x0_fake), losses.fake_score(v_fake, eps, x0g)


def priming_loss(params, teacher, batch, key, models, knobs, frac):
  teacher = sg(teacher)  # frozen: F's base weights are the teacher's and get no gradient either
  k_gen, k_vsd = jax.random.split(key)
  x0g = _generator_x0(params, batch, k_gen, models, knobs.s_lo_at(frac))
  loss_g, loss_f = _vsd(params, teacher, batch, k_vsd, models, knobs, x0g)
  return loss_g + loss_f, {"loss/dmd": loss_g, "loss/fake": loss_f}


def fake_score_loss(lora, params, teacher, batch, key, models, knobs, frac, phase):
  """``L_F`` alone on a fresh (stop-gradient) generator sample of ``phase``: the extra LoRA
  updates of ``fake_updates_per_step``."""
  teacher, params = sg(teacher), sg(params)
  k_gen, k_eps, k_t = jax.random.split(key, 3)
  if phase == "priming":
    x0g = _generator_x0(params, batch, k_gen, models, knobs.s_lo_at(frac))
  else:
    x0g = _one_step_x0(params, batch, k_gen, models)
  t = timesteps.sample(k_t, x0g.shape[0], "uniform", flow_shift=knobs.flow_shift)
  eps = jax.random.normal(k_eps, x0g.shape, x0g.dtype)
  xt = timesteps.add_noise(x0g, eps, t)
  return losses.fake_score(_dit(models.dit_lora, (lora, teacher), xt, t, batch), eps, x0g)


def _adversarial(params, teacher, ema, batch, key, models, knobs, x0g):
  """Phase II's GAN terms: ``(L_G adv, L_D, L_R1, metrics)``.

  The backbone is E (EMA, default), R (frozen teacher) or its own trainable copy. Gradient
  reaches G only through the fake sample (the backbone and head are stop-gradient in L_G) and
  the head (and a trainable backbone) only through L_D and L_R1.
  """
  x = batch["latents"]
  k = jax.random.split(key, 4)
  t_fake, t_real = _noise_times(knobs, k[0], x.shape[0])
  fake = timesteps.add_noise(x0g, jax.random.normal(k[1], x.shape, x.dtype), t_fake)
  real = timesteps.add_noise(x, jax.random.normal(k[2], x.shape, x.dtype), t_real)
  perturbed = real + losses.r1_noise(k[3], real, knobs.sigma_s, knobs.sigma_t)
  trainable = knobs.d_backbone == "trainable_copy"
  if trainable:
    backbone = params["backbone"]
  else:
    backbone = sg(ema if knobs.d_backbone == "ema" else teacher)
  taps = lambda p, z, t: _dit(models.dit, (p,), z, t, batch, taps=models.taps)
  cond = dict(text=batch["text"], image=batch.get("image"))
  head = nnx.merge(models.head, params["head"], copy=True)
  head_frozen = nnx.merge(models.head, sg(params["head"]), copy=True)
  taps_fake = taps(sg(backbone), fake, t_fake)  # gradient reaches G through `fake` only
  d_fake_for_g = head_frozen(taps_fake, **cond)
  # A frozen backbone's pass on the fake serves both losses; a trainable one needs its own.
  feats_fake = taps(backbone, sg(fake), t_fake) if trainable else [sg(h) for h in taps_fake]
  d_fake = head(feats_fake, **cond)
  d_real = head(taps(backbone, real, t_real), **cond)
  d_pert = head(taps(backbone, perturbed, t_real), **cond)
  metrics = {"d/real": jnp.mean(d_real), "d/fake": jnp.mean(d_fake)}
  return (
    losses.hinge_generator(d_fake_for_g),
    losses.hinge_discriminator(d_real, d_fake),
    losses.approximate_r1(d_real, d_pert),
    metrics,
  )


def equilibrium_loss(params, teacher, batch, key, models, knobs, frac, ema):
  del frac
  teacher = sg(teacher)
  x = batch["latents"]
  k = jax.random.split(key, 5)
  x0g = _one_step_x0(params, batch, k[0], models)
  loss_g, loss_d, loss_r1, metrics = _adversarial(
    params, teacher, ema, batch, k[1], models, knobs, x0g
  )
  metrics.update({"loss/d": loss_d, "loss/r1": loss_r1, "loss/g_adv": loss_g})
  gan_weight = knobs.joint_gan_weight if knobs.joint else 1.0
  total = gan_weight * loss_g + loss_d + knobs.lam_r1 * loss_r1
  if knobs.joint:  # DMD2-style: Phase I's VSD terms on the same one-step sample
    loss_dmd, loss_f = _vsd(params, teacher, batch, k[2], models, knobs, x0g)
    total = total + loss_dmd + loss_f
    metrics.update({"loss/dmd": loss_dmd, "loss/fake": loss_f})
  if knobs.lam_cons:
    t3 = timesteps.sample(k[3], x.shape[0], "uniform", flow_shift=knobs.flow_shift)
    z = sg(timesteps.add_noise(x0g, jax.random.normal(k[4], x.shape, x.dtype), t3))
    x0_teacher = timesteps.x0_from_velocity(
      z, _cfg_velocity(models, teacher, z, t3, batch, knobs.cons_cfg), t3
    )
    loss_c = losses.consistency_sds(x0g, x0_teacher)
    total = total + knobs.lam_cons * loss_c
    metrics["loss/csds"] = loss_c
  return total, metrics


LOSSES = {"pretrain": pretrain_loss, "priming": priming_loss, "equilibrium": equilibrium_loss}
