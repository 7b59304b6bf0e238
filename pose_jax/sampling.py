"""Samplers on latents: the student's one-step (and k-step) generator and the teacher's
flow-matching Euler baseline with time shift and CFG.

``cond`` (I2V: 4 mask channels + condition latent) is concatenated to the noisy latent at every
call, as the teacher pipeline does. Times are in [0, 1]; the DiT sees ``1000 t``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pose_jax.pose import timesteps


def dit_forward(graphdef, params, x, t, cond, text, image, taps=()):
  """The DiT on noisy latents ``x`` at times ``t`` (scalar or ``[B]``, in [0, 1]) with ``cond``
  concatenated: the float32 velocity, or the hidden states after the ``taps`` blocks.

  ``params`` is one State or a tuple of States merged together (e.g. LoRA + teacher base).
  States may come from an outer trace (``copy=True``).
  """
  if cond is not None:
    x = jnp.concatenate([x, cond.astype(x.dtype)], axis=-1)
  t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))
  states = params if isinstance(params, tuple) else (params,)
  model = nnx.merge(graphdef, *states, copy=True)
  args = (x, timesteps.to_model_time(t), text, image)
  if taps:
    return model.hidden_states(*args, taps=taps)
  return model(*args).astype(jnp.float32)


def velocity(graphdef, params, x, t, cond, text, image):
  return dit_forward(graphdef, params, x, t, cond, text, image)


def student(graphdef, params, noise, cond, text, image, steps: int = 1, key=None):
  """``x0 = eps - G(eps, 1)``; with ``steps > 1``, re-noise to evenly spaced times and repeat."""
  x0 = noise - velocity(graphdef, params, noise, 1.0, cond, text, image)
  times = np.linspace(1.0, 0.0, steps + 1)[1:-1]
  for i, t in enumerate(times):
    if key is None:
      raise ValueError("k-step student sampling needs a key for re-noising")
    eps = jax.random.normal(jax.random.fold_in(key, i), noise.shape, noise.dtype)
    x_t = (1.0 - t) * x0 + t * eps
    x0 = x_t - t * velocity(graphdef, params, x_t, t, cond, text, image)
  return x0


def euler_times(steps: int, shift: float, num_train_timesteps: int = 1000) -> np.ndarray:
  """``steps + 1`` times from 1 to 0, as diffusers' ``FlowMatchEulerDiscreteScheduler(shift)``
  ``.set_timesteps(steps).sigmas``: linspace from 1 to the shifted smallest training sigma,
  shifted again, then a final 0."""
  sigma_min = float(timesteps.shift(np.float32(1.0 / num_train_timesteps), np.float32(shift)))
  sigmas = np.linspace(1.0, sigma_min, steps)
  return np.append(timesteps.shift(sigmas, shift).astype(np.float32), np.float32(0.0))


def guided_velocity(graphdef, params, cond, text, image, cfg: float = 1.0, neg_text=None):
  """``v(x, t)`` of the teacher with classifier-free guidance ``v_u + cfg (v_c - v_u)`` (one DiT
  call when ``cfg == 1``, two otherwise; ``neg_text``: the negative prompt's tokens)."""
  if cfg != 1.0 and neg_text is None:
    raise ValueError("CFG needs the negative-prompt text tokens")

  def v(x, t):
    v_c = velocity(graphdef, params, x, t, cond, text, image)
    if cfg == 1.0:
      return v_c
    v_u = velocity(graphdef, params, x, t, cond, neg_text, image)
    return v_u + cfg * (v_c - v_u)

  return v


def teacher_euler(
  graphdef,
  params,
  noise,
  cond,
  text,
  image,
  *,
  steps: int,
  shift: float,
  cfg: float = 1.0,
  neg_text=None,
):
  """Flow-matching Euler: ``x <- x + (t_next - t) v``, CFG ``v_u + cfg (v_c - v_u)``."""
  v = guided_velocity(graphdef, params, cond, text, image, cfg, neg_text)
  times = euler_times(steps, shift)
  x = noise
  for t, t_next in zip(times[:-1], times[1:]):
    x = x + (t_next - t) * v(x, t)
  return x
