"""The POSE phases, one :class:`Phase` record each in :data:`PHASES`: ``pretrain`` (flow
matching, making a small teacher), ``priming`` (Phase I: DMD with a LoRA fake score on the
frozen teacher) and ``equilibrium`` (Phase II: the adversarial equilibrium with the semantic
head, approximate R1 and, Phase III, the I2V consistency term C-SDS).

A record holds the phase's loss ``loss(params, batch, key, ctx) -> (loss, metrics)`` (``ctx``: a
:class:`LossContext`), the parameter groups it trains (``trains(knobs)``), the DiT passes one
step makes (``passes(knobs)``, for FLOP counts) and, for phases that train the LoRA, the
generator sample the extra fake-score updates score (``sample``, see :func:`fake_score_loss`)
and the loss terms whose gradient at that sample the step measures (``probes``). The shared
pieces of the losses are in :mod:`pose_jax.pose.context`, the GAN terms in
:mod:`pose_jax.pose.adversarial`, the student's sampling in :mod:`pose_jax.pose.generator`.

Models are one graphdef each, called with different parameter trees (``nnx.merge``):
G = student params, R = frozen teacher, F = teacher base + LoRA, E = EMA of G, h = head; the
discriminator backbone is E, R or (``d_backbone=trainable_copy``) its own trained copy.
Times t are in [0, 1] (1 = noise); the DiT sees ``1000 t``. The batch holds ``latents``
``[B,T,h,w,Z]``, ``cond`` (mask + condition latent, I2V), ``text`` (+ ``text_mask``), ``neg_text``
and ``image``.
Every random draw has its own named key; the keys and their split order are part of the
contract (bit-exact resumes and the README's toy numbers depend on them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from pose_jax.pose import adversarial, context, generator, losses, timesteps
from pose_jax.pose.config import PoseConfig
from pose_jax.pose.context import LossContext
from pose_jax.pose.losses import sg

Pass = tuple[str, int, str, str]  # (what, count, model: dit | lora | taps, backward)


@dataclasses.dataclass(frozen=True)
class Phase:
  """One POSE phase (see the module docstring)."""

  loss: Callable[..., tuple[jax.Array, dict]]
  trains: Callable[[PoseConfig], tuple[str, ...]]
  passes: Callable[[PoseConfig], list[Pass]]
  sample: Callable[..., jax.Array] | None = None  # (params, batch, key, ctx) -> x0g
  # The loss terms that reach the generator through its sample (their probes, LossContext).
  probes: Callable[[PoseConfig], tuple[str, ...]] = lambda knobs: ()

  def extra_fake_updates(self, knobs: PoseConfig) -> int:
    """LoRA-only updates a step makes before its fused update (DMD2's TTUR)."""
    return _extra_fake_updates(knobs, self.trains)


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
    t = context.draw(ctx.knobs, k_t, x.shape[0])
    x_t, eps = context.noised(k_eps, x, t)
    text = _drop_text(batch, k_drop, ctx.knobs.text_dropout)
    v = context.dit(ctx.models.dit, (params["student"],), x_t, t, batch, text)
    loss = losses.flow_matching(v, x, eps)
  return loss, {"loss/flow": loss}


def _pretrain_passes(knobs: PoseConfig) -> list[Pass]:
  return [("G flow matching", 1, "dit", "full")]


# --- priming (Phase I) ------------------------------------------------------------------------
def _generator_x0(params, batch, key, ctx: LossContext):
  """Phase I generator sample: ``x0g = x_s - s G(x_s, s)`` on the noised real latents, with
  ``s`` in the band ``[s_lo, 1]`` (see ``shift_bands``)."""
  k_eps, k_s = jax.random.split(key)
  x, knobs = batch["latents"], ctx.knobs
  with jax.named_scope("generator"):
    s = context.draw(knobs, k_s, x.shape[0], (knobs.s_lo_at(ctx.frac), 1.0), shift=knobs.band_shift)
    x_s, _ = context.noised(k_eps, x, s)
    return context.denoise((params["student"],), batch, x_s, s, ctx)


def _student_x0(params, batch, key, ctx: LossContext):
  """Phase II generator sample from pure noise, as the sampler makes it
  (:mod:`pose_jax.pose.generator`): one step, ``x0g = eps - G(eps, 1)``. With
  ``student_steps = k > 1``, each sample is G's estimate at one of the k times (uniformly per
  sample), on the input the sampler's earlier steps make from ``eps`` (backward simulation by
  the current student, without gradient)."""
  x, knobs = batch["latents"], ctx.knobs
  with jax.named_scope("generator"):
    if knobs.student_steps == 1:
      eps = jax.random.normal(key, x.shape, x.dtype)
      return context.denoise((params["student"],), batch, eps, 1.0, ctx)
    k_eps, k_sim, k_pick = jax.random.split(key, 3)
    ts = generator.times(knobs.student_steps, knobs.flow_shift)
    eps = jax.random.normal(k_eps, x.shape, x.dtype)
    args = (batch.get("cond"), batch["text"], batch.get("image"))
    xs = generator.step_inputs(ctx.models.dit, (sg(params["student"]),), eps, *args, ts, k_sim)
    pick = jax.random.randint(k_pick, (x.shape[0],), 0, len(ts))
    x_in = jnp.stack(xs)[pick, jnp.arange(x.shape[0])]
    return context.denoise((params["student"],), batch, x_in, jnp.asarray(ts)[pick], ctx)


def _vsd(params, batch, key, ctx: LossContext, x0g):
  """Phase I's two terms on a generator sample: ``(L_G (DMD), L_F (fake score))``."""
  k_eps, k_t = jax.random.split(key)
  t = context.draw(ctx.knobs, k_t, x0g.shape[0], ctx.knobs.vsd_t)
  x_t, eps = context.noised(k_eps, x0g, t)
  x_t = sg(x_t)
  with jax.named_scope("fake"):
    v_fake = context.dit(ctx.models.dit_lora, (params["lora"], ctx.teacher), x_t, t, batch)
    loss_f = losses.fake_score(v_fake, eps, x0g)
  with jax.named_scope("dmd"):
    v_real = context.cfg_velocity(ctx, x_t, t, batch, ctx.knobs.cfg_real)
    x0_real = timesteps.x0_from_velocity(x_t, v_real, t)
    x0_fake = timesteps.x0_from_velocity(x_t, sg(v_fake), t)
    loss_g = losses.dmd_generator(ctx.probe("dmd", x0g), x0_real, x0_fake)
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
  t = context.draw(ctx.knobs, k_t, x0g.shape[0], ctx.knobs.vsd_t)
  x_t, eps = context.noised(k_eps, x0g, t)
  with jax.named_scope("fake"):
    v_fake = context.dit(ctx.models.dit_lora, (params["lora"], ctx.teacher), x_t, t, batch)
    return losses.fake_score(v_fake, eps, x0g)


# --- equilibrium (Phase II + III) -------------------------------------------------------------
def equilibrium_loss(params, batch, key, ctx: LossContext):
  knobs = ctx.knobs
  k_gen, k_adv, k_vsd, k_cons_t, k_cons_eps = jax.random.split(key, 5)
  x0g = _student_x0(params, batch, k_gen, ctx)
  loss_g, loss_d, loss_r1, metrics = adversarial.gan_terms(params, batch, k_adv, ctx, x0g)
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
      t = context.draw(knobs, k_cons_t, x0g.shape[0], knobs.cons_t, knobs.cons_t_dist)
      z, _ = context.noised(k_cons_eps, x0g, t, eps_dtype=batch["latents"].dtype)
      z = sg(z)
      x0_teacher = timesteps.x0_from_velocity(
        z, context.cfg_velocity(ctx, z, t, batch, knobs.cons_cfg), t
      )
      loss_c = losses.consistency_sds(ctx.probe("csds", x0g), x0_teacher)
    total = total + knobs.lam_cons * loss_c
    metrics["loss/csds"] = loss_c
  return total, metrics


def _equilibrium_probes(knobs: PoseConfig) -> tuple[str, ...]:
  return ("adv",) + ("dmd",) * bool(knobs.joint) + ("csds",) * bool(knobs.lam_cons)


def _equilibrium_trains(knobs: PoseConfig) -> tuple[str, ...]:
  """``student`` and ``head``, plus ``lora`` with ``joint`` (the VSD terms) and ``backbone``
  with ``d_backbone=trainable_copy``."""
  groups = ("student", "head")
  groups += ("lora",) * bool(knobs.joint)
  groups += ("backbone",) * (knobs.d_backbone == "trainable_copy")
  return groups


def _equilibrium_passes(knobs: PoseConfig) -> list[Pass]:
  out = _extra_fake_passes(knobs, _equilibrium_trains)
  if knobs.student_steps > 1:
    out += [("G backward simulation", knobs.student_steps - 1, "dit", "none")]
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
    loss=priming_loss,
    trains=_priming_trains,
    passes=_priming_passes,
    sample=_generator_x0,
    probes=lambda knobs: ("dmd",),
  ),
  "equilibrium": Phase(
    loss=equilibrium_loss,
    trains=_equilibrium_trains,
    passes=_equilibrium_passes,
    sample=_student_x0,
    probes=_equilibrium_probes,
  ),
}


def get(phase: str) -> Phase:
  """The record of ``phase``; an unknown name is a ``ValueError`` naming the known ones."""
  if phase not in PHASES:
    raise ValueError(f"unknown phase {phase!r}; choose from {sorted(PHASES)}")
  return PHASES[phase]
