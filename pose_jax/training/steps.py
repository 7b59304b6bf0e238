"""One fused, pure training step per POSE phase: ``(state, teacher, batch) -> (state, metrics)``.

The phases (their losses, the groups they train) are the records of :mod:`pose_jax.pose.phases`.

Each step: the phase's extra LoRA-only updates (``fake_updates_per_step > 1``,
:func:`fake_updates`), one ``value_and_grad`` over the trainable tree ``{student, lora, head}``
of the sum of the phase's losses (each loss only reaches its own group, by construction and
stop-gradients; :func:`accumulate` averages it over micro-batches), one optax
``multi_transform`` update, the EMA update, and a non-finite guard that keeps the old state (and
counts the skip) if the loss or any gradient is not finite.

Metrics: the phase's loss terms (``loss/*``, no summed total: the terms have different scales
and partly opposite aims), the discriminator diagnostics (``d/*``, Phase II), the gradient norm
of each trained group (``grad_norm/<group>``) and, per loss term that reaches G through its
sample, the norm of that term's gradient at the sample (``grad_x0/<term>``), plus ``finite`` and
``skipped``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from pose_jax.pose import losses, phases
from pose_jax.pose.config import PoseConfig
from pose_jax.pose.models import Models
from pose_jax.pose.phases import LossContext, Phase
from pose_jax.training.state import TrainState


def jit_step(step_fn: Callable, state) -> Callable:
  """``jax.jit`` of a step with the state donated and returned in the shardings it came in
  (live arrays or ``ShapeDtypeStruct``s): the trainer feeds the returned state back into the
  same compiled executable, and XLA's propagation alone may pick other shardings for some
  leaves (seen for small biases and the head when compiling the 14B steps for TPU)."""
  shardings = jax.tree.map(lambda x: x.sharding, state)
  return jax.jit(step_fn, donate_argnums=(0,), out_shardings=(shardings, None))


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _grads(loss_fn, params, batch, key, ctx: LossContext, probes=()):
  """``(loss, metrics, grads)`` of ``loss_fn(params, batch, key, ctx)``. For each term in
  ``probes`` the metrics get ``grad_x0/<term>``: the norm of the loss's gradient through that
  term at the generator sample (the push it gives G, weighted as in the loss), read off a zero
  probe added to the sample (:class:`LossContext`) in the same backward pass."""
  zeros = {term: jnp.zeros(batch["latents"].shape, jnp.float32) for term in probes}
  f = lambda p, z: loss_fn(p, batch, key, dataclasses.replace(ctx, probes=z))
  (loss, metrics), (grads, at_x0) = jax.value_and_grad(f, (0, 1), has_aux=True)(params, zeros)
  metrics = {**metrics, **{f"grad_x0/{t}": optax.tree.norm(g) for t, g in at_x0.items()}}
  return loss, metrics, grads


def split_micro_batches(batch, micro_batches: int):
  """``[B, ...] -> [m, B / m, ...]``, strided: micro-batch ``i`` holds rows ``i, i + m, ...``.
  A batch sharded in contiguous blocks over (data, fsdp) then gives every device its own
  ``1 / m`` of each micro-batch, with no data moved between devices (a contiguous split would
  put each micro-batch on ``1 / m`` of the devices: a reshuffle every step). ``config.validate``
  requires each micro-batch to divide over data x fsdp."""
  return jax.tree.map(
    lambda a: jnp.swapaxes(
      a.reshape(a.shape[0] // micro_batches, micro_batches, *a.shape[1:]), 0, 1
    ),
    batch,
  )


def accumulate(loss_fn, params, batch, key, ctx: LossContext, micro_batches: int, probes=()):
  """:func:`_grads` averaged over ``micro_batches`` strided slices of the batch (a ``scan``,
  :func:`split_micro_batches`); slice ``i`` uses ``fold_in(key, i)``. One slice: the whole
  batch with ``key`` itself."""
  if micro_batches == 1:
    return _grads(loss_fn, params, batch, key, ctx, probes)
  split = split_micro_batches(batch, micro_batches)

  def body(carry, xs):
    mb, i = xs
    out = _grads(loss_fn, params, mb, jax.random.fold_in(key, i), ctx, probes)
    return jax.tree.map(jnp.add, carry, out), None

  first = jax.tree.map(lambda a: a[0], split)
  zero = jax.eval_shape(lambda: _grads(loss_fn, params, first, key, ctx, probes))
  zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero)
  total, _ = jax.lax.scan(body, zero, (split, jnp.arange(micro_batches)))
  return jax.tree.map(lambda a: a / micro_batches, total)


def fake_updates(
  phase: Phase, tx, params, opt_state, batch, key, ctx: LossContext, count: int, micro_batches=1
):
  """``count`` LoRA-only updates (a ``scan``, one key each from ``split(key, count)``) of
  :func:`pose_jax.pose.phases.fake_score_loss` on the phase's generator sample, each gradient
  averaged over ``micro_batches`` like the fused update (:func:`accumulate`). The scan carries
  only the LoRA, its optimizer state and a finite flag: the other groups' parameters and states
  are loop-invariant inputs, and their zero-gradient updates are dropped (so XLA removes them).
  Returns ``(params, opt_state, finite, losses)``.
  """
  rest = {g: v for g, v in params.items() if g != "lora"}
  zeros = jax.tree.map(jnp.zeros_like, rest)  # the other groups' (discarded) gradients

  def loss_fn(lora, mb, k, ctx):
    loss = phases.fake_score_loss({**rest, "lora": lora}, mb, k, ctx, sample=phase.sample)
    return loss, {}

  def update(carry, k):
    lora, lora_state, finite = carry
    loss, _, g = accumulate(loss_fn, lora, batch, k, ctx, micro_batches)
    state = opt_state._replace(inner_states={**opt_state.inner_states, "lora": lora_state})
    updates, new_state = tx.update({**zeros, "lora": g}, state, {**rest, "lora": lora})
    lora = optax.apply_updates(lora, updates["lora"])
    finite = finite & jnp.isfinite(loss) & _all_finite(g)
    return (lora, new_state.inner_states["lora"], finite), loss

  carry = (params["lora"], opt_state.inner_states["lora"], jnp.bool_(True))
  (lora, lora_state, finite), fake_losses = jax.lax.scan(
    update, carry, jax.random.split(key, count)
  )
  inner = {**opt_state.inner_states, "lora": lora_state}
  return {**params, "lora": lora}, opt_state._replace(inner_states=inner), finite, fake_losses


def make_step(
  phase: str,
  knobs: PoseConfig,
  models: Models,
  tx: optax.GradientTransformation,
  phase_start: int,
  phase_steps: int,
  micro_batches: int = 1,
) -> Callable:
  """The jit-able step of ``phase``; ``micro_batches`` > 1 accumulates gradients."""
  record = phases.get(phase)
  extra_fake = record.extra_fake_updates(knobs)

  def step(state: TrainState, teacher, batch):
    rng, key = jax.random.split(state.rng)
    frac = (state.step - phase_start).astype(jnp.float32) / max(phase_steps, 1)
    ctx = LossContext(models=models, knobs=knobs, teacher=teacher, ema=state.ema, frac=frac)
    params, opt_state, fake_ok = state.params, state.opt_state, jnp.bool_(True)
    extra = {}
    if extra_fake:
      key, k_fake = jax.random.split(key)
      params, opt_state, fake_ok, fake_losses = fake_updates(
        record, tx, params, opt_state, batch, k_fake, ctx, extra_fake, micro_batches
      )
      extra["loss/fake_extra"] = jnp.mean(fake_losses)
    loss, metrics, grads = accumulate(
      record.loss, params, batch, key, ctx, micro_batches, record.probes(knobs)
    )
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    ema = losses.ema(state.ema, params["student"], knobs.ema_decay)
    ok = jnp.isfinite(loss) & _all_finite(grads) & fake_ok
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
    new = TrainState(
      step=state.step + 1,
      params=keep(params, state.params),
      ema=keep(ema, state.ema),
      opt_state=keep(opt_state, state.opt_state),
      rng=rng,
      bad_steps=jnp.where(ok, 0, state.bad_steps + 1),
      skipped=state.skipped + (~ok).astype(jnp.int32),
    )
    grad_norms = {f"grad_norm/{g}": optax.tree.norm(v) for g, v in grads.items()}
    metrics = {
      **metrics,
      **extra,
      **grad_norms,
      "finite": ok.astype(jnp.float32),
      "skipped": new.skipped.astype(jnp.float32),
    }
    return new, metrics

  return step
