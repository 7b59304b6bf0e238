"""The student as a generator: one step from noise, or k steps with re-noising.

One home for the student's sampling, used both by the training losses
(:mod:`pose_jax.pose.phases`, Phase II's sample) and by the samplers
(:func:`pose_jax.sampling.samplers.student`), so what is trained is what is sampled:

  times(k, shift) = shift(1, (k-1)/k, ..., 1/k)            (t_0 = 1; k = 1: just t = 1)
  x_0 = eps;  x0_j = x_j - t_j G(x_j, t_j);  x_{j+1} = (1 - t_{j+1}) x0_j + t_{j+1} eps_j
  sample = x0_{k-1};   eps_j ~ N(0, 1) from ``fold_in(key, j)``

The times are shifted like the teacher's schedule (Wan's k-step students use shifted, evenly
spaced times): with shift 3 and k = 4 they are 1, 0.9, 0.75, 0.5, so the re-noised inputs stay
at the noise levels where a few-step generator does most of its work.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pose_jax.pose import timesteps
from pose_jax.pose.velocity import dit_forward


def times(steps: int, shift: float) -> np.ndarray:
  """float32 ``[steps]``: the student's input times, from 1 down (see the module docstring)."""
  if steps < 1:
    raise ValueError(f"student steps must be >= 1, got {steps}")
  u = np.linspace(1.0, 0.0, steps + 1)[:-1]
  return np.asarray(timesteps.shift(u, shift), np.float32)


def denoise(graphdef, params, x_t, t, cond, text, image) -> jax.Array:
  """``x_t - t G(x_t, t)``: the student's clean estimate at times ``t`` (scalar or ``[B]``)."""
  t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x_t.shape[0],))
  v = dit_forward(graphdef, params, x_t, t, cond, text, image)
  return timesteps.x0_from_velocity(x_t, v, t)


def step_inputs(graphdef, params, noise, cond, text, image, ts, key=None) -> list[jax.Array]:
  """The inputs ``[x_0 = noise, x_1, ..., x_{k-1}]`` the k-step sampler feeds the student at
  ``ts`` (``k = len(ts)``): each made by denoising the previous one and re-noising it."""
  xs = [noise]
  if len(ts) > 1 and key is None:
    raise ValueError("k-step student sampling needs a key for re-noising")
  for j in range(1, len(ts)):
    x0 = denoise(graphdef, params, xs[-1], ts[j - 1], cond, text, image)
    eps = jax.random.normal(jax.random.fold_in(key, j - 1), noise.shape, noise.dtype)
    xs.append(timesteps.add_noise(x0, eps, jnp.full((noise.shape[0],), ts[j])).astype(noise.dtype))
  return xs


def sample(graphdef, params, noise, cond, text, image, *, steps=1, shift=1.0, key=None):
  """The student's ``steps``-step sample from ``noise`` (``steps = 1``: ``eps - G(eps, 1)``)."""
  ts = times(steps, shift)
  xs = step_inputs(graphdef, params, noise, cond, text, image, ts, key)
  return denoise(graphdef, params, xs[-1], ts[-1], cond, text, image)
