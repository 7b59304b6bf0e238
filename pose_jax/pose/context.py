"""What every POSE loss reads besides its parameters: the :class:`LossContext`, and the shared
pieces of the losses (one DiT call on a batch, the teacher's CFG velocity, time draws, noising,
the student's clean estimate). Times are in [0, 1] (1 = noise); the DiT sees ``1000 t``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from pose_jax.pose import generator, timesteps
from pose_jax.pose.config import PoseConfig
from pose_jax.pose.losses import sg
from pose_jax.pose.models import Models
from pose_jax.pose.velocity import dit_forward, guided_velocity


@dataclasses.dataclass(frozen=True)
class LossContext:
  """What a loss reads besides ``(params, batch, key)``. ``teacher`` is stop-gradient (R and
  F's base weights never get a gradient); ``ema``: E; ``frac``: the fraction of the phase done
  (Phase I's ``s_lo`` curriculum); ``probes``: ``{term: zeros like the generator sample}``,
  added where each term reads the sample, so that the loss's gradient w.r.t. a probe is that
  term's gradient at the sample (the diagnostics of :func:`pose_jax.training.steps.accumulate`).
  """

  models: Models
  knobs: PoseConfig
  teacher: Any
  ema: Any = None
  frac: Any = 0.0
  probes: Any = None

  def __post_init__(self):
    object.__setattr__(self, "teacher", sg(self.teacher))

  def probe(self, term: str, x0g):
    """``x0g`` as the loss term ``term`` reads it (plus its probe, when measured)."""
    if self.probes is None or term not in self.probes:
      return x0g
    return x0g + self.probes[term].astype(x0g.dtype)


def dit(graphdef, states, x, t, batch, text=None, taps=()):
  """Velocity (or taps) of a DiT for noisy latents ``x`` at times ``t [B]`` on ``batch``."""
  text = batch["text"] if text is None else text
  return dit_forward(graphdef, states, x, t, batch.get("cond"), text, batch.get("image"), taps)


def cfg_velocity(ctx: LossContext, x, t, batch, scale):
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


def draw(knobs: PoseConfig, key, n: int, span=(0.0, 1.0), dist="uniform", shift=None):
  """Times ``[n]``: ``shift(u)``, ``u`` from ``dist`` on ``span`` (logit-normal with the knobs'
  ``logit_mean``/``logit_std``); ``shift`` defaults to ``knobs.flow_shift``."""
  lo, hi = span
  return timesteps.sample(
    key,
    n,
    dist,
    lo=lo,
    hi=hi,
    flow_shift=knobs.flow_shift if shift is None else shift,
    mean=knobs.logit_mean,
    std=knobs.logit_std,
  )


def noised(k_eps, x, t, eps_dtype=None):
  """``(x_t, eps)``: ``x`` noised at times ``t`` with ``eps ~ N(0, 1)`` (drawn in ``eps_dtype``,
  default ``x``'s)."""
  eps = jax.random.normal(k_eps, x.shape, eps_dtype or x.dtype)
  return timesteps.add_noise(x, eps, t), eps


def denoise(params, batch, x_t, t, ctx: LossContext):
  """The student's clean estimate ``x_t - t G(x_t, t)`` (:func:`generator.denoise`)."""
  return generator.denoise(
    ctx.models.dit, params, x_t, t, batch.get("cond"), batch["text"], batch.get("image")
  )
