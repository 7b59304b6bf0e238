"""Latent samplers: one-step student, k-step re-noising, teacher Euler with shift and CFG."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pose_jax.models.wan import WanTransformer, preset
from pose_jax.pose import generator
from pose_jax.pose.velocity import dit_forward
from pose_jax.sampling import samplers


@pytest.fixture(scope="module")
def model():
  cfg = preset("toy", num_layers=2)
  graphdef, params = nnx.split(WanTransformer(cfg, rngs=nnx.Rngs(0)))
  ks = jax.random.split(jax.random.key(0), 5)
  inputs = dict(
    noise=jax.random.normal(ks[0], (2, 2, 4, 4, 3)),
    cond=jax.random.normal(ks[1], (2, 2, 4, 4, 7)),
    text=jax.random.normal(ks[2], (2, 5, 32)),
    image=jax.random.normal(ks[3], (2, 3, 32)),
  )
  return graphdef, params, inputs


def test_one_step_student_is_noise_minus_velocity_at_t1(model):
  graphdef, params, i = model
  x0 = samplers.student(graphdef, params, i["noise"], i["cond"], i["text"], i["image"])
  x = jnp.concatenate([i["noise"], i["cond"]], -1)
  v = nnx.merge(graphdef, params)(x, jnp.full((2,), 1000.0), i["text"], i["image"])
  np.testing.assert_allclose(x0, i["noise"] - v, rtol=1e-6, atol=1e-6)


def test_euler_one_step_equals_student_and_times(model):
  graphdef, params, i = model
  one = samplers.teacher_euler(
    graphdef, params, i["noise"], i["cond"], i["text"], i["image"], steps=1, shift=3.0
  )
  x0 = samplers.student(graphdef, params, i["noise"], i["cond"], i["text"], i["image"])
  np.testing.assert_allclose(one, x0, rtol=1e-6, atol=1e-6)
  times = samplers.euler_times(4, 3.0)
  assert times[0] == 1.0 and times[-1] == 0.0 and np.all(np.diff(times) < 0)


def test_cfg_reads_the_negative_prompt(model):
  """One guided Euler step is ``x + (t1 - t0) (v_u + s (v_c - v_u))`` with ``v_u`` on the
  negative prompt's tokens (a guidance that ignored them, or swapped the two branches, fails)."""
  graphdef, params, i = model
  args = (graphdef, params, i["noise"], i["cond"], i["text"], i["image"])
  neg = jax.random.normal(jax.random.key(7), i["text"].shape)
  guided = samplers.teacher_euler(*args, steps=1, shift=1.0, guidance_scale=4.0, neg_text=neg)
  v = lambda text: dit_forward(graphdef, params, i["noise"], 1.0, i["cond"], text, i["image"])
  v_c, v_u = v(i["text"]), v(neg)
  t0, t1 = samplers.euler_times(1, 1.0)[:2]
  np.testing.assert_allclose(guided, i["noise"] + (t1 - t0) * (v_u + 4.0 * (v_c - v_u)), atol=1e-5)
  other = samplers.teacher_euler(*args, steps=1, shift=1.0, guidance_scale=4.0, neg_text=neg * 0)
  assert float(jnp.abs(other - guided).max()) > 1e-3
  with pytest.raises(ValueError, match="negative-prompt"):
    samplers.teacher_euler(*args, steps=2, shift=1.0, guidance_scale=4.0)
  with pytest.raises(ValueError, match="needs a key"):
    samplers.student(*args, steps=2)


def test_k_step_student_is_the_renoising_recipe(model):
  """3 steps at shift 3: the times are shift(1, 2/3, 1/3) = 1, 6/7, 3/5; ``x0 = eps - v(eps,
  1)``, then at each later time re-noise ``(1 - t) x0 + t eps_j`` (eps_j from ``fold_in(key,
  j)``) and ``x0 = x_t - t v(x_t, t)``."""
  graphdef, params, i = model
  args = (graphdef, params, i["noise"], i["cond"], i["text"], i["image"])
  key = jax.random.key(1)
  np.testing.assert_allclose(generator.times(3, 3.0), [1.0, 6 / 7, 3 / 5], rtol=1e-6)
  np.testing.assert_allclose(generator.times(4, 1.0), [1.0, 0.75, 0.5, 0.25], rtol=1e-6)
  v = lambda x, t: dit_forward(graphdef, params, x, t, i["cond"], i["text"], i["image"])
  want = i["noise"] - v(i["noise"], 1.0)
  for n, t in enumerate([6 / 7, 3 / 5]):
    eps = jax.random.normal(jax.random.fold_in(key, n), want.shape)
    x_t = (1.0 - t) * want + t * eps
    want = x_t - t * v(x_t, t)
  got = samplers.student(*args, steps=3, key=key, shift=3.0)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  unshifted = samplers.student(*args, steps=3, key=key, shift=1.0)
  assert float(jnp.abs(unshifted - got).max()) > 1e-3  # the shift is used


@pytest.mark.parametrize("shift,steps", [(3.0, 4), (5.0, 50), (1.0, 1), (3.0, 20)])
def test_euler_times_equal_diffusers_scheduler_sigmas(shift, steps):
  from diffusers import FlowMatchEulerDiscreteScheduler

  scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
  scheduler.set_timesteps(steps)
  np.testing.assert_allclose(
    samplers.euler_times(steps, shift), scheduler.sigmas.numpy(), atol=1e-7
  )


def test_multistep_euler_is_the_loop_and_compiles_one_step(model):
  """k guided Euler steps equal the plain loop over ``euler_times`` (a scan that skipped or
  repeated a time, or swapped ``t`` and ``t_next``, fails), and the compiled program holds one
  step's DiT calls whatever k (the sampler is a ``lax.scan``, not k inlined copies)."""
  graphdef, params, i = model
  neg = jax.random.normal(jax.random.key(7), i["text"].shape)
  run = lambda p, steps: samplers.teacher_euler(
    graphdef, p, i["noise"], i["cond"], i["text"], i["image"], steps=steps, shift=3.0,
    guidance_scale=2.0, neg_text=neg,
  )  # fmt: skip
  v = lambda x, t, text: dit_forward(graphdef, params, x, t, i["cond"], text, i["image"])
  x, times = i["noise"], samplers.euler_times(3, 3.0)
  for t, t_next in zip(times[:-1], times[1:]):
    v_u = v(x, t, neg)
    x = x + (t_next - t) * (v_u + 2.0 * (v(x, t, i["text"]) - v_u))
  np.testing.assert_allclose(run(params, 3), x, rtol=1e-5, atol=1e-5)
  dots = lambda steps: (
    jax.jit(run, static_argnums=1).lower(params, steps).as_text().count("dot_general")
  )
  assert dots(2) == dots(6) > 0
