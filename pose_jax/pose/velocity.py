"""The DiT as a flow-matching velocity field: one call on noisy latents, and classifier-free
guidance. Shared by the training losses (:mod:`pose_jax.pose.phases`) and the samplers
(:mod:`pose_jax.sampling.samplers`); times are in [0, 1], the DiT sees ``1000 t``.
"""

from __future__ import annotations

import jax.numpy as jnp
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


def guided_velocity(
  graphdef, params, cond, text, image, guidance_scale: float = 1.0, neg_text=None
):
  """``v(x, t)`` of the teacher with classifier-free guidance ``v_u + guidance_scale (v_c - v_u)``
  (one DiT call when ``guidance_scale == 1``, two otherwise; ``neg_text``: the negative prompt's
  tokens)."""
  if guidance_scale != 1.0 and neg_text is None:
    raise ValueError("CFG needs the negative-prompt text tokens")

  def v(x, t):
    v_c = dit_forward(graphdef, params, x, t, cond, text, image)
    if guidance_scale == 1.0:
      return v_c
    v_u = dit_forward(graphdef, params, x, t, cond, neg_text, image)
    return v_u + guidance_scale * (v_c - v_u)

  return v
