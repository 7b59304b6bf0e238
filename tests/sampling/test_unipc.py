"""UniPC flow-matching sampler against diffusers' UniPCMultistepScheduler (Wan2.1 config)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import UniPCMultistepScheduler
from flax import nnx

from pose_jax.models.wan import WanTransformer, preset
from pose_jax.sampling import unipc
from tests.helpers.numerics import rel_err

# scheduler/scheduler_config.json of the Wan-AI/Wan2.1-*-Diffusers checkpoints (flow_shift 3.0
# there; 5.0 for 720p).
WAN21_SCHEDULER = dict(
  beta_end=0.02,
  beta_schedule="linear",
  beta_start=0.0001,
  disable_corrector=[],
  dynamic_thresholding_ratio=0.995,
  final_sigmas_type="zero",
  lower_order_final=True,
  num_train_timesteps=1000,
  predict_x0=True,
  prediction_type="flow_prediction",
  rescale_betas_zero_snr=False,
  sample_max_value=1.0,
  solver_order=2,
  solver_p=None,
  solver_type="bh2",
  steps_offset=0,
  thresholding=False,
  timestep_spacing="linspace",
  trained_betas=None,
  use_beta_sigmas=False,
  use_exponential_sigmas=False,
  use_flow_sigmas=True,
  use_karras_sigmas=False,
)


def scheduler(steps, shift, **overrides):
  s = UniPCMultistepScheduler(**{**WAN21_SCHEDULER, "flow_shift": shift, **overrides})
  s.set_timesteps(steps)
  return s


_rng = np.random.default_rng(0)
W = _rng.normal(size=(8, 8)) / np.sqrt(8.0)
B = _rng.normal(size=8)
NOISE = _rng.normal(size=(2, 6, 8))


def field(x, t, xp):
  """A smooth synthetic velocity, the same formula in NumPy (float64) and JAX (float32)."""
  return xp.tanh(x @ W + t * B) * (1.0 + t) - 0.5 * x * t


def diffusers_field_sample(steps, shift, **overrides):
  """diffusers' scheduler loop in float64, the model seeing ``scheduler.timesteps[i]``."""
  s = scheduler(steps, shift, **overrides)
  x = torch.from_numpy(NOISE)
  for t in s.timesteps:
    v = torch.from_numpy(field(x.numpy(), float(t) / 1000.0, np))
    x = s.step(v, t, x).prev_sample
  return x.numpy()


def ours(steps, shift, **kw):
  noise = jnp.asarray(NOISE, jnp.float32)
  return np.asarray(
    unipc.unipc_sample(lambda x, t: field(x, t, jnp), noise, steps=steps, shift=shift, **kw)
  )


@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
@pytest.mark.parametrize("steps", [1, 2, 4, 10, 50])
def test_sigmas_and_timesteps_equal_diffusers(steps, shift):
  sigmas, ts = unipc.unipc_sigmas(steps, shift)
  s = scheduler(steps, shift)
  assert sigmas.dtype == np.float32 and sigmas.shape == (steps + 1,) and sigmas[-1] == 0.0
  np.testing.assert_allclose(sigmas, s.sigmas.numpy(), rtol=0, atol=1e-6)
  np.testing.assert_array_equal(sigmas, s.sigmas.numpy())  # in fact bitwise
  assert ts.dtype == np.int64
  np.testing.assert_array_equal(ts, s.timesteps.numpy())
  assert ts[0] == 999  # int(1000 (1 - 1e-6)): truncated, not 1000 sigma


@pytest.mark.parametrize("shift", [3.0, 5.0])
@pytest.mark.parametrize("steps", [1, 2, 3, 4, 10, 25])
def test_sampler_equals_diffusers_scheduler_loop(steps, shift):
  # float32 JAX against float64 diffusers: measured <= 5.3e-7 relative (max |diff| / max |ref|)
  # over orders 1-3, shifts 3/5 and steps 1-50.
  assert rel_err(ours(steps, shift), diffusers_field_sample(steps, shift)) < 2e-6


@pytest.mark.parametrize("order", [1, 3])
def test_other_orders_equal_diffusers(order):
  for steps in (3, 10):
    ref = diffusers_field_sample(steps, 5.0, solver_order=order)
    assert rel_err(ours(steps, 5.0, order=order), ref) < 2e-6


def test_corrector_matters_and_matches_only_when_on():
  steps, shift = 10, 3.0
  with_c = diffusers_field_sample(steps, shift)
  without_c = diffusers_field_sample(steps, shift, disable_corrector=list(range(steps)))
  ours_c, ours_p = ours(steps, shift), ours(steps, shift, corrector=False)
  assert rel_err(ours_c, with_c) < 2e-6 and rel_err(ours_p, without_c) < 2e-6
  assert rel_err(ours_p, with_c) > 1e-3 and rel_err(ours_c, without_c) > 1e-3
  # order 1 (UniP-1 + UniC-1) differs from the default order 2
  assert rel_err(ours(steps, shift, order=1), with_c) > 1e-3


def test_model_times_and_jit():
  seen = []

  def fn(x, t):  # the steps are one scan: the model is traced once, and sees each step's t
    jax.debug.callback(lambda t: seen.append(np.asarray(t)), t, ordered=True)
    return field(x, t, jnp)

  noise = jnp.asarray(NOISE, jnp.float32)
  eager = unipc.unipc_sample(fn, noise, steps=4, shift=3.0)
  _, ts = unipc.unipc_sigmas(4, 3.0)
  np.testing.assert_array_equal(ts, [999, 900, 750, 500])  # 1000 sigma = 999.999, ..., 500.999
  assert [t.dtype for t in seen] == [np.float32] * 4
  np.testing.assert_array_equal(np.array(seen) * np.float32(1000), ts.astype(np.float32))
  jitted = jax.jit(lambda n: unipc.unipc_sample(fn, n, steps=4, shift=3.0))(noise)
  np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-6)


def test_the_compiled_sampler_holds_one_model_call_whatever_the_steps():
  noise = jnp.asarray(NOISE, jnp.float32)
  hlo = lambda steps: (
    jax.jit(lambda n: unipc.unipc_sample(lambda x, t: field(x, t, jnp), n, steps=steps, shift=3.0))
    .lower(noise)
    .as_text()
  )
  assert hlo(4).count("tanh") == hlo(40).count("tanh") == 1


def test_bad_args():
  fn = lambda x, t: x
  noise = jnp.zeros((1, 2))
  for steps in (0, -1, 2.0):
    with pytest.raises(ValueError, match="steps >= 1"):
      unipc.unipc_sample(fn, noise, steps=steps, shift=3.0)
    with pytest.raises(ValueError, match="steps >= 1"):
      unipc.unipc_sigmas(steps, 3.0)
  for order in (0, 4):
    with pytest.raises(ValueError, match="order must be 1, 2 or 3"):
      unipc.unipc_sample(fn, noise, steps=2, shift=3.0, order=order)
  with pytest.raises(ValueError, match="negative-prompt"):
    unipc.teacher_unipc(None, None, noise, None, None, None, steps=2, shift=3.0, guidance_scale=5.0)


def test_teacher_unipc_cfg_equals_diffusers_loop_on_tiny_dit():
  cfg = preset("toy", num_layers=2)
  graphdef, params = nnx.split(WanTransformer(cfg, rngs=nnx.Rngs(0)))
  ks = jax.random.split(jax.random.key(0), 4)
  noise = jax.random.normal(ks[0], (2, 2, 4, 4, 3))
  cond = jax.random.normal(ks[1], (2, 2, 4, 4, 7))
  text = jax.random.normal(ks[2], (2, 5, 32))
  image = jax.random.normal(ks[3], (2, 3, 32))
  neg = text * 0
  steps, shift, scale = 4, 3.0, 5.0

  def teacher(p, n, **kw):
    return unipc.teacher_unipc(graphdef, p, n, cond, text, image, steps=steps, shift=shift, **kw)

  got = jax.jit(lambda p, n: teacher(p, n, guidance_scale=scale, neg_text=neg))(params, noise)

  # The Wan I2V pipeline loop: transformer(cat(latents, condition), t.expand(B)) with the int64
  # scheduler timestep, CFG noise_uncond + scale (noise_pred - noise_uncond), scheduler.step.
  model = jax.jit(lambda p, x, t, txt: nnx.merge(graphdef, p)(x, t, txt, image))
  s = scheduler(steps, shift)
  latents = torch.from_numpy(np.array(noise))
  for t in s.timesteps:
    x = jnp.concatenate([jnp.asarray(latents.numpy()), cond], -1)
    timestep = jnp.full((2,), t.item(), jnp.float32)
    v_c, v_u = model(params, x, timestep, text), model(params, x, timestep, neg)
    v = torch.from_numpy(np.array(v_u + scale * (v_c - v_u)))
    latents = s.step(v, t, latents).prev_sample
  ref = latents.numpy().astype(np.float64)
  assert rel_err(got, ref) < 1e-5
  plain = jax.jit(teacher)(params, noise)
  assert rel_err(plain, ref) > 1e-3
