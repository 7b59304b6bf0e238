"""The POSE phases, one :class:`Phase` record each in :data:`PHASES`: ``pretrain`` (flow
matching, making a small teacher), ``priming`` (Phase I: DMD with a LoRA fake score on the
frozen teacher) and ``equilibrium`` (Phase II: the adversarial equilibrium with the semantic
head, approximate R1 and, Phase III, the I2V consistency term C-SDS).

A record holds the phase's loss ``loss(params, batch, key, ctx) -> (loss, metrics)`` (``ctx``: a
:class:`LossContext`), the parameter groups it trains (``trains(knobs)``), the DiT passes one
step makes (``passes(knobs)``, for FLOP counts) and, for phases that train the LoRA, the
generator sample the extra fake-score updates score (``sample``, see :func:`fake_score_loss`).

Models are one graphdef each, called with different parameter trees (``nnx.merge``):
G = student params, R = frozen teacher, F = teacher base + LoRA, E = EMA of G, h = head; the
discriminator backbone is E, R or (``d_backbone=trainable_copy``) its own trained copy.
Times t are in [0, 1] (1 = noise); the DiT sees ``1000 t``. The batch holds ``latents``
``[B,T,h,w,Z]``, ``cond`` (mask + condition latent, I2V), ``text``, ``neg_text`` and ``image``.
Every random draw has its own named key; the keys and their split order are part of the
contract (bit-exact resumes and the README's toy numbers depend on them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pose_jax.pose import losses, timesteps
from pose_jax.pose.config import PoseConfig
from pose_jax.pose.losses import sg
from pose_jax.pose.models import Models
from pose_jax.pose.velocity import dit_forward, guided_velocity

Pass = tuple[str, int, str, str]  # (what, count, model: dit | lora | taps, backward)


@dataclasses.dataclass(frozen=True)
class LossContext:
  """What a loss reads besides ``(params, batch, key)``. ``teacher`` is stop-gradient (R and
  F's base weights never get a gradient); ``ema``: E; ``frac``: the fraction of the phase done
  (Phase I's ``s_lo`` curriculum)."""

  models: Models
  knobs: PoseConfig
  teacher: Any
  ema: Any = None
  frac: Any = 0.0

  def __post_init__(self):
    object.__setattr__(self, "teacher", sg(self.teacher))


@dataclasses.dataclass(frozen=True)
class Phase:
  """One POSE phase (see the module docstring)."""

  loss: Callable[..., tuple[jax.Array, dict]]
  trains: Callable[[PoseConfig], tuple[str, ...]]
  passes: Callable[[PoseConfig], list[Pass]]
  sample: Callable[..., jax.Array] | None = None  # (params, batch, key, ctx) -> x0g

  def extra_fake_updates(self, knobs: PoseConfig) -> int:
    """LoRA-only updates a step makes before its fused update (DMD2's TTUR)."""
    return _extra_fake_updates(knobs, self.trains)


def _dit(graphdef, states, x, t, batch, text=None, taps=()):
  """Velocity (or taps) of a DiT for noisy latents ``x`` at times ``t [B]`` on ``batch``."""
  text = batch["text"] if text is None else text
  return dit_forward(graphdef, states, x, t, batch.get("cond"), text, batch.get("image"), taps)


def _cfg_velocity(ctx: LossContext, x, t, batch, scale):
  v = guided_velocity(
    ctx.models.dit,
    (ctx.teacher,),
    batch.get("cond"),
    batch["text"],
    batch.get("image"),
    scale,
    batch.get("neg_text"),
  )
  return v(x, t)


def _noised(k_eps, k_t, x, *, shift, lo=0.0, eps_dtype=None):
  """``(x_t, eps, t)``: ``x`` noised with ``eps ~ N(0, 1)`` (drawn in ``eps_dtype``, default
  ``x``'s) at ``t = shift(U[lo, 1])``."""
  eps = jax.random.normal(k_eps, x.shape, eps_dtype or x.dtype)
  t = timesteps.sample(k_t, x.shape[0], "uniform", lo=lo, flow_shift=shift)
  return timesteps.add_noise(x, eps, t), eps, t


def _cfg_passes(scale) -> int:
  return 1 if scale == 1.0 else 2


def _extra_fake_updates(knobs: PoseConfig, trains) -> int:
  """``fake_updates_per_step - 1`` in phases that train the LoRA, else 0."""
  return knobs.fake_updates_per_step - 1 if "lora" in trains(knobs) else 0


def _extra_fake_passes(knobs: PoseConfig, trains) -> list[Pass]:
  """Each extra LoRA-only update: a fresh G sample without gradients, then F forward +
  backward."""
  n = _extra_fake_updates(knobs, trains)
  if not n:
    return []
  return [
    ("G for extra fake updates", n, "dit", "none"),
    ("F extra fake updates", n, "lora", "lora"),
  ]


# --- pretrain ---------------------------------------------------------------------------------
def _drop_text(batch, key, p: float):
  """``text`` replaced by the negative prompt's tokens in a fraction ``p`` of the samples (the
  condition dropout that makes a teacher's unconditional branch, and so CFG, meaningful)."""
  if not p or batch.get("neg_text") is None:
    return batch["text"]
  drop = jax.random.bernoulli(key, p, (batch["text"].shape[0], 1, 1))
  return jnp.where(drop, batch["neg_text"].astype(batch["text"].dtype), batch["text"])


def pretrain_loss(params, batch, key, ctx: LossContext):
  x = batch["latents"]
  k_eps, k_t, k_drop = jax.random.split(key, 3)
  with jax.named_scope("flow"):
    x_t, eps, t = _noised(k_eps, k_t, x, shift=ctx.knobs.flow_shift)
    text = _drop_text(batch, k_drop, ctx.knobs.text_dropout)
    v = _dit(ctx.models.dit, (params["student"],), x_t, t, batch, text)
    loss = losses.flow_matching(v, x, eps)
  return loss, {"loss/flow": loss}


def _pretrain_passes(knobs: PoseConfig) -> list[Pass]:
  return [("G flow matching", 1, "dit", "full")]


# --- priming (Phase I) ------------------------------------------------------------------------
def _generator_x0(params, batch, key, ctx: LossContext):
  """Phase I generator sample: ``x0g = x_s - s G(x_s, s)`` with ``s ~ U[s_lo, 1]``."""
  k_eps, k_s = jax.random.split(key)
  with jax.named_scope("generator"):
    lo = ctx.knobs.s_lo_at(ctx.frac)
    x_s, _, s = _noised(k_eps, k_s, batch["latents"], shift=1.0, lo=lo)
    v = _dit(ctx.models.dit, (params["student"],), x_s, s, batch)
    return timesteps.x0_from_velocity(x_s, v, s)


def _one_step_x0(params, batch, key, ctx: LossContext):
  """Phase II generator sample from pure noise: ``x0g = eps - G(eps, 1)``."""
  x = batch["latents"]
  with jax.named_scope("generator"):
    eps = jax.random.normal(key, x.shape, x.dtype)
    ones = jnp.ones((x.shape[0],))
    v = _dit(ctx.models.dit, (params["student"],), eps, ones, batch)
    return timesteps.x0_from_velocity(eps, v, ones)


def _vsd(params, batch, key, ctx: LossContext, x0g):
  """Phase I's two terms on a generator sample: ``(L_G (DMD), L_F (fake score))``."""
  k_eps, k_t = jax.random.split(key)
  x_t, eps, t = _noised(k_eps, k_t, x0g, shift=ctx.knobs.flow_shift)
  x_t = sg(x_t)
  with jax.named_scope("fake"):
    v_fake = _dit(ctx.models.dit_lora, (params["lora"], ctx.teacher), x_t, t, batch)
    loss_f = losses.fake_score(v_fake, eps, x0g)
  with jax.named_scope("dmd"):
    v_real = _cfg_velocity(ctx, x_t, t, batch, ctx.knobs.cfg_real)
    x0_real = timesteps.x0_from_velocity(x_t, v_real, t)
    x0_fake = timesteps.x0_from_velocity(x_t, sg(v_fake), t)
    loss_g = losses.dmd_generator(x0g, x0_real, x0_fake)
  return loss_g, loss_f


def priming_loss(params, batch, key, ctx: LossContext):
  k_gen, k_vsd = jax.random.split(key)
  x0g = _generator_x0(params, batch, k_gen, ctx)
  loss_g, loss_f = _vsd(params, batch, k_vsd, ctx, x0g)
  return loss_g + loss_f, {"loss/dmd": loss_g, "loss/fake": loss_f}


def _vsd_passes(knobs: PoseConfig) -> list[Pass]:
  return [
    ("R teacher (CFG)", _cfg_passes(knobs.cfg_real), "dit", "none"),
    ("F fake score (LoRA grads)", 1, "lora", "lora"),
  ]


def _priming_passes(knobs: PoseConfig) -> list[Pass]:
  g = [("G on x_s", 1, "dit", "full")]
  return g + _vsd_passes(knobs) + _extra_fake_passes(knobs, _priming_trains)


def _priming_trains(knobs: PoseConfig) -> tuple[str, ...]:
  return ("student", "lora")


def fake_score_loss(params, batch, key, ctx: LossContext, *, sample):
  """``L_F`` alone on a fresh (stop-gradient) generator sample ``sample(params, batch, key,
  ctx)`` (the phase's :attr:`Phase.sample`): the extra LoRA updates of
  ``fake_updates_per_step``. Only ``params["lora"]`` gets a gradient."""
  k_gen, k_eps, k_t = jax.random.split(key, 3)
  x0g = sample(sg(params), batch, k_gen, ctx)
  x_t, eps, t = _noised(k_eps, k_t, x0g, shift=ctx.knobs.flow_shift)
  with jax.named_scope("fake"):
    v_fake = _dit(ctx.models.dit_lora, (params["lora"], ctx.teacher), x_t, t, batch)
    return losses.fake_score(v_fake, eps, x0g)


# --- equilibrium (Phase II + III) -------------------------------------------------------------
def _noise_times(knobs: PoseConfig, key, batch_size):
  """Discriminator noise levels ``(t_fake, t_real)`` per ``knobs.d_noise``."""
  k_fake, k_real = jax.random.split(key)
  s = knobs.flow_shift
  if knobs.d_noise == "fake_band":
    return (
      timesteps.sample(k_fake, batch_size, "uniform", lo=0.9, flow_shift=s),
      timesteps.sample(k_real, batch_size, "uniform", flow_shift=s),
    )
  t = timesteps.sample(k_fake, batch_size, knobs.d_noise, flow_shift=s)
  return t, t


def _adversarial(params, batch, key, ctx: LossContext, x0g):
  """Phase II's GAN terms: ``(L_G adv, L_D, L_R1, metrics)``.

  The backbone is E (EMA, default), R (frozen teacher) or its own trainable copy. Gradient
  reaches G only through the fake sample (the backbone and head are stop-gradient in L_G) and
  the head (and a trainable backbone) only through L_D and L_R1.
  """
  x, knobs = batch["latents"], ctx.knobs
  k_t, k_fake, k_real, k_r1 = jax.random.split(key, 4)
  t_fake, t_real = _noise_times(knobs, k_t, x.shape[0])
  fake = timesteps.add_noise(x0g, jax.random.normal(k_fake, x.shape, x.dtype), t_fake)
  real = timesteps.add_noise(x, jax.random.normal(k_real, x.shape, x.dtype), t_real)
  perturbed = real + losses.r1_noise(k_r1, real, knobs.sigma_s, knobs.sigma_t)
  trainable = knobs.d_backbone == "trainable_copy"
  if trainable:
    backbone = params["backbone"]
  else:
    backbone = sg(ctx.ema if knobs.d_backbone == "ema" else ctx.teacher)
  taps = lambda p, z, t: _dit(ctx.models.dit, (p,), z, t, batch, taps=ctx.models.taps)
  cond = dict(text=batch["text"], image=batch.get("image"))
  head = nnx.merge(ctx.models.head, params["head"], copy=True)
  head_frozen = nnx.merge(ctx.models.head, sg(params["head"]), copy=True)
  with jax.named_scope("adversarial_g"):
    taps_fake = taps(sg(backbone), fake, t_fake)  # gradient reaches G through `fake` only
    loss_g = losses.hinge_generator(head_frozen(taps_fake, **cond))
  with jax.named_scope("adversarial_d"):
    # A frozen backbone's pass on the fake serves both losses; a trainable one needs its own.
    feats_fake = taps(backbone, sg(fake), t_fake) if trainable else [sg(h) for h in taps_fake]
    d_fake = head(feats_fake, **cond)
    d_real = head(taps(backbone, real, t_real), **cond)
    loss_d = losses.hinge_discriminator(d_real, d_fake)
  with jax.named_scope("r1"):
    d_pert = head(taps(backbone, perturbed, t_real), **cond)
    loss_r1 = losses.approximate_r1(d_real, d_pert)
  metrics = {"d/real": jnp.mean(d_real), "d/fake": jnp.mean(d_fake)}
  return loss_g, loss_d, loss_r1, metrics


def equilibrium_loss(params, batch, key, ctx: LossContext):
  knobs = ctx.knobs
  k_gen, k_adv, k_vsd, k_cons_t, k_cons_eps = jax.random.split(key, 5)
  x0g = _one_step_x0(params, batch, k_gen, ctx)
  loss_g, loss_d, loss_r1, metrics = _adversarial(params, batch, k_adv, ctx, x0g)
  metrics.update({"loss/d": loss_d, "loss/r1": loss_r1, "loss/g_adv": loss_g})
  gan_weight = knobs.joint_gan_weight if knobs.joint else 1.0
  total = gan_weight * loss_g + loss_d + knobs.lam_r1 * loss_r1
  if knobs.joint:  # DMD2-style: Phase I's VSD terms on the same one-step sample
    loss_dmd, loss_f = _vsd(params, batch, k_vsd, ctx, x0g)
    total = total + loss_dmd + loss_f
    metrics.update({"loss/dmd": loss_dmd, "loss/fake": loss_f})
  if knobs.lam_cons:
    with jax.named_scope("csds"):
      # The noise is drawn in the latents' dtype (x0g is float32 whatever they are).
      z, _, t = _noised(
        k_cons_eps, k_cons_t, x0g, shift=knobs.flow_shift, eps_dtype=batch["latents"].dtype
      )
      z = sg(z)
      x0_teacher = timesteps.x0_from_velocity(z, _cfg_velocity(ctx, z, t, batch, knobs.cons_cfg), t)
      loss_c = losses.consistency_sds(x0g, x0_teacher)
    total = total + knobs.lam_cons * loss_c
    metrics["loss/csds"] = loss_c
  return total, metrics


def _equilibrium_trains(knobs: PoseConfig) -> tuple[str, ...]:
  """``student`` and ``head``, plus ``lora`` with ``joint`` (the VSD terms) and ``backbone``
  with ``d_backbone=trainable_copy``."""
  groups = ("student", "head")
  groups += ("lora",) * bool(knobs.joint)
  groups += ("backbone",) * (knobs.d_backbone == "trainable_copy")
  return groups


def _equilibrium_passes(knobs: PoseConfig) -> list[Pass]:
  out = _extra_fake_passes(knobs, _equilibrium_trains)
  out += [
    ("G one-step on noise", 1, "dit", "full"),
    ("D backbone on fake (grad to G)", 1, "taps", "input"),
  ]
  if knobs.d_backbone == "trainable_copy":
    out += [("D backbone on fake/real/perturbed (own grads)", 3, "taps", "full")]
  else:
    out += [("D backbone on real + perturbed", 2, "taps", "none")]
  if knobs.joint:
    out += _vsd_passes(knobs)
  if knobs.lam_cons:
    out += [("R teacher for C-SDS", _cfg_passes(knobs.cons_cfg), "dit", "none")]
  return out


PHASES: dict[str, Phase] = {
  "pretrain": Phase(loss=pretrain_loss, trains=lambda knobs: ("student",), passes=_pretrain_passes),
  "priming": Phase(
    loss=priming_loss, trains=_priming_trains, passes=_priming_passes, sample=_generator_x0
  ),
  "equilibrium": Phase(
    loss=equilibrium_loss,
    trains=_equilibrium_trains,
    passes=_equilibrium_passes,
    sample=_one_step_x0,
  ),
}


def get(phase: str) -> Phase:
  """The record of ``phase``; an unknown name is a ``ValueError`` naming the known ones."""
  if phase not in PHASES:
    raise ValueError(f"unknown phase {phase!r}; choose from {sorted(PHASES)}")
  return PHASES[phase]
