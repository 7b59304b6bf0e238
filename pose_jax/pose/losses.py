"""POSE losses as pure functions. Means are over every element unless stated otherwise.

Notation (``docs/method.md``): ``x`` clean latent, ``x0g`` the generator's clean
estimate, ``sg`` stop-gradient, ``D`` discriminator logits ``[B]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

sg = jax.lax.stop_gradient


def _per_sample_mean(x: jax.Array) -> jax.Array:
  return jnp.mean(x.reshape(x.shape[0], -1), axis=1)


def flow_matching(v_pred: jax.Array, x: jax.Array, eps: jax.Array) -> jax.Array:
  """Pretraining: ``mean (v_pred - (eps - x))^2``."""
  return jnp.mean(jnp.square(v_pred.astype(jnp.float32) - (eps - x).astype(jnp.float32)))


def dmd_generator(x0g: jax.Array, x0_real: jax.Array, x0_fake: jax.Array) -> jax.Array:
  """Phase I distribution matching (DMD surrogate).

    g   = (x0_fake - x0_real) / mean_sample |x0g - x0_real|      (stop-gradient)
    L_G = 0.5 * mean (x0g - sg(x0g - g))^2
  Its gradient w.r.t. x0g is ``g / numel``: it pushes the generator from the fake towards the
  real score.
  """
  x0g = x0g.astype(jnp.float32)
  x0_real, x0_fake = sg(x0_real.astype(jnp.float32)), sg(x0_fake.astype(jnp.float32))
  norm = _per_sample_mean(jnp.abs(sg(x0g) - x0_real))
  norm = jnp.maximum(norm, 1e-6).reshape((-1,) + (1,) * (x0g.ndim - 1))
  grad = sg((x0_fake - x0_real) / norm)
  return 0.5 * jnp.mean(jnp.square(x0g - sg(x0g - grad)))


def fake_score(v_fake: jax.Array, eps: jax.Array, x0g: jax.Array) -> jax.Array:
  """Phase I fake-score (LoRA) denoising loss: ``mean ((eps - sg(x0g)) - v_fake)^2``."""
  target = eps.astype(jnp.float32) - sg(x0g.astype(jnp.float32))
  return jnp.mean(jnp.square(target - v_fake.astype(jnp.float32)))


def hinge_discriminator(d_real: jax.Array, d_fake: jax.Array) -> jax.Array:
  """``mean relu(1 - D(real)) + mean relu(1 + D(fake))`` (pass ``D(sg(fake))``)."""
  return jnp.mean(jax.nn.relu(1.0 - d_real)) + jnp.mean(jax.nn.relu(1.0 + d_fake))


def hinge_generator(d_fake: jax.Array) -> jax.Array:
  """``-mean D(fake)``."""
  return -jnp.mean(d_fake)


def approximate_r1(d_real: jax.Array, d_perturbed: jax.Array) -> jax.Array:
  """Spatio-temporal approximate R1: ``mean (D(real) - D(real + noise))^2`` (no double backprop)."""
  return jnp.mean(jnp.square(d_real - d_perturbed))


def r1_noise(key: jax.Array, x: jax.Array, sigma_s: float, sigma_t: float) -> jax.Array:
  """``sigma_s n_s + sigma_t n_t`` for ``x [B, T, H, W, C]``: ``n_s`` per element, ``n_t`` one
  value per (sample, frame, channel) broadcast over space."""
  ks, kt = jax.random.split(key)
  b, t, _, _, c = x.shape
  n_s = jax.random.normal(ks, x.shape, jnp.float32)
  n_t = jax.random.normal(kt, (b, t, 1, 1, c), jnp.float32)
  return (sigma_s * n_s + sigma_t * n_t).astype(x.dtype)


def consistency_sds(x0g: jax.Array, x0_teacher: jax.Array) -> jax.Array:
  """Phase III conditional SDS: ``mean (x0g - sg(x0_R))^2``."""
  return jnp.mean(jnp.square(x0g.astype(jnp.float32) - sg(x0_teacher.astype(jnp.float32))))


def ema(ema_params, params, decay: float):
  """``E <- decay E + (1 - decay) G`` leaf by leaf (kept in E's dtype)."""
  return jax.tree.map(
    lambda e, p: (decay * e.astype(jnp.float32) + (1.0 - decay) * p.astype(jnp.float32)).astype(
      e.dtype
    ),
    ema_params,
    params,
  )
