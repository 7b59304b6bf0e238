"""One fused, pure training step per POSE phase: ``(state, teacher, batch) -> (state, metrics)``.

Models are one graphdef each, called with different parameter trees (``nnx.merge``):
G = student params, R = frozen teacher, F = teacher base + LoRA, E = EMA of G (or R), h = head.
Times t are in [0, 1] (1 = noise); the DiT sees ``1000 t``. The batch holds ``latents``
``[B,T,h,w,Z]``, ``cond`` (mask + condition latent, I2V), ``text``, ``neg_text`` and ``image``.

Each step: one ``value_and_grad`` over the trainable tree ``{student, lora, head}`` of the sum of
the phase's losses (each loss only reaches its own group, by construction and stop-gradients),
one optax ``multi_transform`` update, the EMA update, and a non-finite guard that keeps the old
state (and counts the skip) if the loss or any gradient is not finite.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from pose_jax.pose import losses, timesteps
from pose_jax.pose.knobs import PoseKnobs
from pose_jax.sampling import dit_forward

sg = jax.lax.stop_gradient


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # global step
  params: dict  # {'student': State, 'lora': State, 'head': State}
  ema: Any  # EMA of the student (same tree as params['student'])
  opt_state: Any
  rng: jax.Array
  bad_steps: jax.Array  # consecutive non-finite steps
  skipped: jax.Array  # total skipped steps


@dataclasses.dataclass(frozen=True)
class Models:
  """Static graphdefs (hashable) plus the tapped blocks of the discriminator backbone."""

  dit: Any  # WanTransformer graphdef (no LoRA): G, R, E
  dit_lora: Any  # WanTransformer graphdef with LoRA: F (merge(dit_lora, lora, base))
  head: Any  # SemanticHead graphdef
  taps: tuple[int, ...]


def _dit(graphdef, states, x, t, batch, text=None, taps=()):
  """Velocity (or taps) of a DiT for noisy latents ``x`` at times ``t [B]`` on ``batch``."""
  text = batch["text"] if text is None else text
  return dit_forward(graphdef, states, x, t, batch.get("cond"), text, batch.get("image"), taps)


def _cfg_velocity(models, teacher, x, t, batch, scale):
  v = _dit(models.dit, (teacher,), x, t, batch)
  if scale == 1.0:
    return v
  v_uncond = _dit(models.dit, (teacher,), x, t, batch, text=batch["neg_text"])
  return v_uncond + scale * (v - v_uncond)


def _noise_times(knobs: PoseKnobs, key, batch_size):
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
def pretrain_loss(params, teacher, batch, key, models, knobs, frac):
  del teacher, frac
  x = batch["latents"]
  ke, kt = jax.random.split(key)
  eps = jax.random.normal(ke, x.shape, x.dtype)
  t = timesteps.sample(kt, x.shape[0], "uniform", flow_shift=knobs.flow_shift)
  v = _dit(models.dit, (params["student"],), timesteps.add_noise(x, eps, t), t, batch)
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


def priming_loss(params, teacher, batch, key, models, knobs, frac):
  teacher = sg(teacher)  # frozen: F's base weights are the teacher's and get no gradient either
  k_gen, k_eps, k_t = jax.random.split(key, 3)
  x0g = _generator_x0(params, batch, k_gen, models, knobs.s_lo_at(frac))
  t = timesteps.sample(k_t, x0g.shape[0], "uniform", flow_shift=knobs.flow_shift)
  eps = jax.random.normal(k_eps, x0g.shape, x0g.dtype)
  xt = sg(timesteps.add_noise(x0g, eps, t))
  x0_real = timesteps.x0_from_velocity(
    xt, _cfg_velocity(models, teacher, xt, t, batch, knobs.cfg_real), t
  )
  v_fake = _dit(models.dit_lora, (params["lora"], teacher), xt, t, batch)
  x0_fake = timesteps.x0_from_velocity(xt, sg(v_fake), t)
  loss_g = losses.dmd_generator(x0g, x0_real, x0_fake)
  loss_f = losses.fake_score(v_fake, eps, x0g)
  return loss_g + loss_f, {"loss/dmd": loss_g, "loss/fake": loss_f}


def equilibrium_loss(params, teacher, batch, key, models, knobs, frac, ema):
  del frac
  teacher = sg(teacher)
  x = batch["latents"]
  k = jax.random.split(key, 7)
  eps = jax.random.normal(k[0], x.shape, x.dtype)
  ones = jnp.ones((x.shape[0],))
  x0g = timesteps.x0_from_velocity(
    eps, _dit(models.dit, (params["student"],), eps, ones, batch), ones
  )
  t_fake, t_real = _noise_times(knobs, k[1], x.shape[0])
  fake = timesteps.add_noise(x0g, jax.random.normal(k[2], x.shape, x.dtype), t_fake)
  real = timesteps.add_noise(x, jax.random.normal(k[3], x.shape, x.dtype), t_real)
  perturbed = real + losses.r1_noise(k[4], real, knobs.sigma_s, knobs.sigma_t)
  backbone = sg(ema if knobs.d_backbone == "ema" else teacher)
  taps = lambda z, t: _dit(models.dit, (backbone,), z, t, batch, taps=models.taps)  # noqa: E731
  cond = dict(text=batch["text"], image=batch.get("image"))
  head = nnx.merge(models.head, params["head"], copy=True)
  head_frozen = nnx.merge(models.head, sg(params["head"]), copy=True)
  taps_fake = taps(fake, t_fake)  # one backbone pass; gradient reaches G through `fake` only
  d_fake_for_g = head_frozen(taps_fake, **cond)
  d_fake = head([sg(h) for h in taps_fake], **cond)
  d_real = head([sg(h) for h in taps(real, t_real)], **cond)
  d_pert = head([sg(h) for h in taps(perturbed, t_real)], **cond)
  loss_d = losses.hinge_discriminator(d_real, d_fake)
  loss_r1 = losses.approximate_r1(d_real, d_pert)
  loss_g = losses.hinge_generator(d_fake_for_g)
  metrics = {
    "loss/d": loss_d,
    "loss/r1": loss_r1,
    "loss/g_adv": loss_g,
    "d/real": jnp.mean(d_real),
    "d/fake": jnp.mean(d_fake),
  }
  total = loss_g + loss_d + knobs.lam_r1 * loss_r1
  if knobs.lam_cons:
    t3 = timesteps.sample(k[5], x.shape[0], "uniform", flow_shift=knobs.flow_shift)
    z = sg(timesteps.add_noise(x0g, jax.random.normal(k[6], x.shape, x.dtype), t3))
    x0_teacher = timesteps.x0_from_velocity(
      z, _cfg_velocity(models, teacher, z, t3, batch, knobs.cons_cfg), t3
    )
    loss_c = losses.consistency_sds(x0g, x0_teacher)
    total = total + knobs.lam_cons * loss_c
    metrics["loss/csds"] = loss_c
  return total, metrics


LOSSES = {"pretrain": pretrain_loss, "priming": priming_loss, "equilibrium": equilibrium_loss}


# --- the fused step ---------------------------------------------------------------------------
def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def make_step(
  phase: str,
  knobs: PoseKnobs,
  models: Models,
  tx: optax.GradientTransformation,
  phase_start: int,
  phase_steps: int,
  micro_batches: int = 1,
) -> Callable:
  """The jit-able step of ``phase``; ``micro_batches`` > 1 accumulates gradients."""
  if phase not in LOSSES:
    raise ValueError(f"phase {phase!r} has no step (known: {sorted(LOSSES)})")
  loss_fn = LOSSES[phase]

  def grads_of(params, teacher, ema, batch, key, frac):
    def f(p):
      args = (p, teacher, batch, key, models, knobs, frac)
      return loss_fn(*args, ema) if phase == "equilibrium" else loss_fn(*args)

    (loss, metrics), grads = jax.value_and_grad(f, has_aux=True)(params)
    return loss, metrics, grads

  def accumulate(params, teacher, ema, batch, key, frac):
    if micro_batches == 1:
      return grads_of(params, teacher, ema, batch, key, frac)
    split = jax.tree.map(
      lambda a: a.reshape(micro_batches, a.shape[0] // micro_batches, *a.shape[1:]), batch
    )

    def body(carry, xs):
      mb, i = xs
      out = grads_of(params, teacher, ema, mb, jax.random.fold_in(key, i), frac)
      return jax.tree.map(jnp.add, carry, out), None

    zero = jax.eval_shape(
      lambda: grads_of(params, teacher, ema, jax.tree.map(lambda a: a[0], split), key, frac)
    )
    zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero)
    total, _ = jax.lax.scan(body, zero, (split, jnp.arange(micro_batches)))
    return jax.tree.map(lambda a: a / micro_batches, total)

  def step(state: TrainState, teacher, batch):
    rng, key = jax.random.split(state.rng)
    frac = (state.step - phase_start).astype(jnp.float32) / max(phase_steps, 1)
    loss, metrics, grads = accumulate(state.params, teacher, state.ema, batch, key, frac)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = losses.ema(state.ema, params["student"], knobs.ema_decay)
    ok = jnp.isfinite(loss) & _all_finite(grads)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)  # noqa: E731
    new = TrainState(
      step=state.step + 1,
      params=keep(params, state.params),
      ema=keep(ema, state.ema),
      opt_state=keep(opt_state, state.opt_state),
      rng=rng,
      bad_steps=jnp.where(ok, 0, state.bad_steps + 1),
      skipped=state.skipped + (~ok).astype(jnp.int32),
    )
    grad_norms = {f"grad_norm/{g}": optax.global_norm(v) for g, v in grads.items()}
    metrics = {
      **metrics,
      **grad_norms,
      "loss": loss,
      "finite": ok.astype(jnp.float32),
      "skipped": new.skipped.astype(jnp.float32),
    }
    return new, metrics

  return step
