"""Samplers on latents: the student's one-step (and k-step) generator and the teacher's
flow-matching Euler baseline with time shift and CFG.

``cond`` (I2V: 4 mask channels + condition latent) is concatenated to the noisy latent at every
call, as the teacher pipeline does. Times are in [0, 1]; the DiT sees ``1000 t``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pose_jax.pose import generator, timesteps
from pose_jax.pose.velocity import guided_velocity


def student(graphdef, params, noise, cond, text, image, steps: int = 1, key=None, shift=1.0):
  """The student's ``steps``-step sample (:func:`pose_jax.pose.generator.sample`, the function
  training samples with): ``x0 = eps - G(eps, 1)``; ``steps > 1`` re-noises to the shifted,
  evenly spaced times ``generator.times(steps, shift)`` (pass the run's ``flow_shift``)."""
  return generator.sample(
    graphdef, params, noise, cond, text, image, steps=steps, shift=shift, key=key
  )


def euler_times(steps: int, shift: float, num_train_timesteps: int = 1000) -> np.ndarray:
  """``steps + 1`` times from 1 to 0, as diffusers' ``FlowMatchEulerDiscreteScheduler(shift)``
  ``.set_timesteps(steps).sigmas``: linspace from 1 to the shifted smallest training sigma,
  shifted again, then a final 0."""
  sigma_min = float(timesteps.shift(np.float32(1.0 / num_train_timesteps), np.float32(shift)))
  sigmas = np.linspace(1.0, sigma_min, steps)
  return np.append(timesteps.shift(sigmas, shift).astype(np.float32), np.float32(0.0))


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
  guidance_scale: float = 1.0,
  neg_text=None,
):
  """Flow-matching Euler: ``x <- x + (t_next - t) v``, CFG ``v_u + guidance_scale (v_c - v_u)``.
  The steps are one ``lax.scan`` over the times, so the compiled program holds one step's DiT
  call(s), not ``steps`` copies (``bench/sampler_compile.py``: compile time and size)."""
  v = guided_velocity(graphdef, params, cond, text, image, guidance_scale, neg_text)
  times = euler_times(steps, shift)

  def step(x, t_pair):
    t, t_next = t_pair[0], t_pair[1]
    return x + (t_next - t) * v(x, t), None

  pairs = jnp.stack([jnp.asarray(times[:-1]), jnp.asarray(times[1:])], axis=1)
  x = noise.astype(jnp.result_type(noise.dtype, jnp.float32))  # the velocity is float32
  return jax.lax.scan(step, x, pairs)[0]
