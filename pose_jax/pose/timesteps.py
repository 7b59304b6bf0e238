"""Flow-matching time sampling (t in [0, 1], 1 = pure noise) and the Wan time shift.

  x_t = (1 - t) x + t eps,   v = eps - x,   x0_hat = x_t - t v_pred
  shift(t) = s t / (1 + (s - 1) t)       (Wan: s = 3 at 480p, 5 at 720p)
The DiT takes ``1000 t`` as its timestep (diffusers' scale).
"""

from __future__ import annotations

import jax

NUM_TRAIN_TIMESTEPS = 1000.0


def shift(t: jax.Array, s: float) -> jax.Array:
  """Wan/SD3 time shift; ``s = 1`` is the identity."""
  return s * t / (1.0 + (s - 1.0) * t)


def to_model_time(t: jax.Array) -> jax.Array:
  return t * NUM_TRAIN_TIMESTEPS


def add_noise(x: jax.Array, eps: jax.Array, t: jax.Array) -> jax.Array:
  """``(1 - t) x + t eps`` with ``t [B]`` broadcast over the remaining axes."""
  t = t.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)
  return (1.0 - t) * x + t * eps


def x0_from_velocity(x_t: jax.Array, v: jax.Array, t: jax.Array) -> jax.Array:
  t = t.reshape((-1,) + (1,) * (x_t.ndim - 1)).astype(x_t.dtype)
  return x_t - t * v


def sample(
  key: jax.Array,
  batch: int,
  kind: str,
  *,
  lo: float = 0.0,
  hi: float = 1.0,
  flow_shift: float = 1.0,
  mean: float = 0.0,
  std: float = 1.0,
) -> jax.Array:
  """Times ``[B]`` in ``[lo, hi]``.

  kind:
    ``uniform``       U[lo, hi], then the shift.
    ``logit_normal``  sigmoid(N(mean, std)) mapped to [lo, hi], then the shift.
  """
  if kind == "uniform":
    u = jax.random.uniform(key, (batch,), minval=lo, maxval=hi)
  elif kind == "logit_normal":
    u = lo + (hi - lo) * jax.nn.sigmoid(mean + std * jax.random.normal(key, (batch,)))
  else:
    raise ValueError(f"unknown time distribution {kind!r} (uniform | logit_normal)")
  return shift(u, flow_shift)
