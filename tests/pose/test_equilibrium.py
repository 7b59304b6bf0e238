"""Phase II at the level of one step: what D sees (which sample, at which noise level), that a
D step separates real from fake and a G step fools a fixed D, what C-SDS targets and reaches,
and that the trained sample is the sampler's. Each test names the defect it catches."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs.common import optim_group
from pose_jax.models.wan import preset
from pose_jax.pose import context, generator, phases, timesteps
from pose_jax.pose import models as pose_models
from pose_jax.pose.config import PoseConfig
from pose_jax.pose.context import LossContext
from pose_jax.pose.velocity import guided_velocity
from pose_jax.sampling import samplers
from pose_jax.training import optim, steps
from pose_jax.training import state as state_lib
from tests.helpers import tiny

KNOBS = PoseConfig(lora_rank=2, d_width=16, d_heads=2, d_num_queries=2, steps=(3, 3))


@pytest.fixture(scope="module")
def setup():
  models, teacher, lora, head = pose_models.build(preset("tiny", num_layers=2), KNOBS)
  batch = tiny.dit_batch()
  # Three different DiTs: the student, E and R must not be confused for one another.
  shifted = lambda tree, s: jax.tree.map(lambda a: a * s, tree)
  params = {"student": shifted(teacher, 1.02), "lora": lora, "head": head}
  return models, teacher, shifted(teacher, 0.98), params, batch


def _ctx(setup, knobs, **kw):
  models, teacher, ema, _, _ = setup
  return LossContext(models=models, knobs=knobs, teacher=teacher, ema=ema, **kw)


def _record_taps(monkeypatch):
  """``[(x, t)]`` of every discriminator-backbone (taps) call, in call order (run eagerly)."""
  calls, real = [], context.dit

  def recorded(graphdef, states, x, t, batch, text=None, taps=()):
    if taps:
      calls.append((np.asarray(x), np.asarray(t)))
    return real(graphdef, states, x, t, batch, text, taps)

  monkeypatch.setattr(context, "dit", recorded)
  return calls


def _noise_of(x_t, x, t):
  """The ``eps`` with ``x_t = (1 - t) x + t eps``."""
  t = t.reshape(-1, *([1] * (x.ndim - 1)))
  return (x_t - (1 - t) * x) / t


def _corr(a, b) -> float:
  return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


@pytest.mark.parametrize("d_noise", ["uniform", "logit_normal", "fake_band"])
def test_discriminator_sees_noised_samples_at_their_times(setup, monkeypatch, d_noise):
  """D's fake is the generator sample noised at t_fake (feeding D the clean sample, or noising it
  with the real's time, fails), its real the data noised at t_real; ``uniform`` and
  ``logit_normal`` share one t, ``fake_band`` puts the fake in [d_fake_lo, 1] (unshifted)."""
  *_, params, batch = setup
  knobs = dataclasses.replace(KNOBS, d_noise=d_noise, d_fake_lo=0.6, lam_cons=0.0)
  ctx = _ctx(setup, knobs)
  calls = _record_taps(monkeypatch)
  key = jax.random.key(11)
  phases.equilibrium_loss(params, batch, key, ctx)
  (x_fake, t_fake), (x_real, t_real), (x_pert, _) = calls  # G's pass on the fake, then D's
  x0g = np.asarray(phases._student_x0(params, batch, jax.random.split(key, 5)[0], ctx))
  latents = np.asarray(batch["latents"])
  eps_fake, eps_real = _noise_of(x_fake, x0g, t_fake), _noise_of(x_real, latents, t_real)
  assert abs(_corr(eps_fake, x0g)) < 0.2 and 0.8 < eps_fake.std() < 1.2
  assert abs(_corr(eps_real, latents)) < 0.2 and 0.8 < eps_real.std() < 1.2
  assert abs(_corr(eps_fake, eps_real)) < 0.2  # independent noise on each side
  assert np.abs(x_pert - x_real).max() > 0  # R1 perturbs the real
  if d_noise == "fake_band":
    assert np.all(t_fake >= 0.6) and not np.allclose(t_fake, t_real)
  else:
    np.testing.assert_array_equal(t_fake, t_real)
  want = {"uniform": "uniform", "logit_normal": "logit_normal", "fake_band": "uniform"}[d_noise]
  k_t = jax.random.split(jax.random.split(jax.random.split(key, 5)[1], 4)[0])[0]
  lo = 0.6 if d_noise == "fake_band" else 0.0
  shift = 1.0 if d_noise == "fake_band" else knobs.flow_shift
  expect = timesteps.sample(k_t, 2, want, lo=lo, flow_shift=shift)
  np.testing.assert_allclose(t_fake, expect, rtol=1e-6)


def test_shift_bands_reads_both_bands_as_shifted():
  knobs = dataclasses.replace(KNOBS, s_lo=0.5, d_fake_lo=0.5)
  key = jax.random.key(0)
  band = lambda k: context.draw(k, key, 512, (0.5, 1.0), shift=k.band_shift)
  assert float(band(knobs).min()) >= 0.5 and float(band(knobs).min()) < 0.51
  shifted = dataclasses.replace(knobs, shift_bands=True)  # shift 3: u = .5 -> t = .75
  assert 0.75 <= float(band(shifted).min()) < 0.76


def _optim(lr_student, lr_head):
  c = ml_collections.ConfigDict()
  for g in optim.GROUPS:
    c[g] = optim_group(lr=1e-4, warmup_steps=0, b2=0.99)
  c.student.lr, c.head.lr = lr_student, lr_head
  c.freeze = ()
  return c


def _after_one_step(setup, knobs, freeze):
  models, teacher, ema, params, batch = setup
  c = _optim(1e-4, 1e-3)
  c.freeze = (freeze,)
  tx = optim.make_optimizer(c, "equilibrium", 3, knobs)
  state = state_lib.init_state(tx, teacher, params["lora"], params["head"], knobs, seed=3)
  state = state.replace(params=dict(params), ema=ema)
  new, _ = jax.jit(steps.make_step("equilibrium", knobs, models, tx, 0, 3))(state, teacher, batch)
  return state.params, new.params


def _metrics(setup, knobs, p, key):
  models, teacher, ema, _, batch = setup
  ctx = LossContext(models=models, knobs=knobs, teacher=teacher, ema=ema)
  return jax.jit(lambda p: phases.equilibrium_loss(p, batch, key, ctx)[1])(p)


def test_a_discriminator_step_raises_its_margin(setup):
  """The fused step with the student frozen is a D step: on a fixed batch and noise it raises
  ``D(real) - D(fake)`` (a hinge with real and fake swapped lowers it)."""
  knobs = dataclasses.replace(KNOBS, lam_cons=0.0, lam_r1=0.0)
  before, after = _after_one_step(setup, knobs, "^student/")
  key = jax.random.key(21)
  m0, m1 = (_metrics(setup, knobs, p, key)["d/margin"] for p in (before, after))
  assert float(m1) > float(m0) + 1e-3, (m0, m1)


def test_a_generator_step_fools_a_fixed_discriminator(setup):
  """The fused step with the head frozen is a G step: at the fixed D it raises D's logit of the
  fake (read off the head, not off ``L_G``: a generator hinge of the wrong sign lowers it)."""
  knobs = dataclasses.replace(KNOBS, lam_cons=0.0)
  before, after = _after_one_step(setup, knobs, "^head/")
  key = jax.random.key(22)
  d0, d1 = (_metrics(setup, knobs, p, key)["d/fake"] for p in (before, after))
  assert float(d1) > float(d0) + 1e-4, (d0, d1)


@pytest.mark.parametrize("cons_cfg", [1.0, 3.0])
def test_csds_pulls_the_sample_to_the_frozen_teachers_estimate(setup, cons_cfg):
  """The C-SDS gradient at the sample is ``lam 2 (x0g - x0_R) / n`` with x0_R the frozen
  teacher's (CFG ``cons_cfg``) estimate at the re-noised sample: a target taken from E or the
  student, or without ``cons_cfg``, fails; so does a gradient reaching anything but G."""
  models, teacher, ema, params, batch = setup
  knobs = dataclasses.replace(KNOBS, cons_cfg=cons_cfg, lam_cons=10.0, cons_t=(0.2, 0.9))
  ctx = _ctx(setup, knobs)
  key = jax.random.key(31)
  zeros = {"csds": jnp.zeros(batch["latents"].shape)}

  def csds(p, probes, teacher, ema):
    c = dataclasses.replace(ctx, probes=probes, teacher=teacher, ema=ema)
    return knobs.lam_cons * phases.equilibrium_loss(p, batch, key, c)[1]["loss/csds"]

  grads = jax.jit(jax.grad(csds, argnums=(0, 1, 2, 3)))(params, zeros, teacher, ema)
  g_params, g_probe, g_teacher, g_ema = grads
  k_gen, _, _, k_t, k_eps = jax.random.split(key, 5)
  x0g = phases._student_x0(params, batch, k_gen, ctx)
  t = context.draw(knobs, k_t, 2, knobs.cons_t)
  assert float(t.min()) >= timesteps.shift(0.2, 3.0) - 1e-6  # the knob's range, shifted
  z, _ = context.noised(k_eps, x0g, t)
  b = batch
  v = guided_velocity(
    models.dit, teacher, b["cond"], b["text"], b["image"], cons_cfg, b["neg_text"]
  )
  target = timesteps.x0_from_velocity(z, v(z, t), t)
  want = knobs.lam_cons * 2 * (x0g - target) / x0g.size
  np.testing.assert_allclose(g_probe["csds"], want, rtol=1e-4, atol=1e-7)
  norm = lambda tree: float(sum(jnp.sum(jnp.square(a)) for a in jax.tree.leaves(tree)))
  assert norm(g_params["student"]) > 0
  assert norm(g_params["head"]) == norm(g_params["lora"]) == 0
  assert norm(g_teacher) == norm(g_ema) == 0


@pytest.mark.parametrize("steps_", [1, 3])
def test_the_trained_sample_is_the_samplers(setup, steps_):
  """One step: the equilibrium sample is ``samplers.student`` on the same noise. k steps: each
  sample is G's estimate at one of the sampler's times on the sampler's own input there."""
  models, _, _, params, batch = setup
  knobs = dataclasses.replace(KNOBS, student_steps=steps_)
  key = jax.random.key(41)
  got = phases._student_x0(params, batch, key, _ctx(setup, knobs))
  args = (batch["cond"], batch["text"], batch["image"])
  student = params["student"]
  if steps_ == 1:
    eps = jax.random.normal(key, batch["latents"].shape)
    np.testing.assert_array_equal(got, samplers.student(models.dit, student, eps, *args))
    return
  k_eps, k_sim, k_pick = jax.random.split(key, 3)
  eps = jax.random.normal(k_eps, batch["latents"].shape)
  ts = generator.times(3, knobs.flow_shift)
  xs = generator.step_inputs(models.dit, student, eps, *args, ts, k_sim)
  pick = np.asarray(jax.random.randint(k_pick, (2,), 0, 3))
  for b, j in enumerate(pick):
    want = generator.denoise(models.dit, student, xs[j], ts[j], *args)[b]
    np.testing.assert_allclose(got[b], want, rtol=1e-5, atol=1e-5)
  last = generator.denoise(models.dit, student, xs[-1], ts[-1], *args)
  np.testing.assert_allclose(
    samplers.student(models.dit, student, eps, *args, steps=3, key=k_sim, shift=3.0), last
  )


def test_backbone_choice_is_the_discriminators(setup):
  """``frozen_teacher``: D's logits follow R and not E; ``ema``: the reverse (C-SDS off, so R
  enters nowhere else)."""
  models, teacher, ema, params, batch = setup
  key = jax.random.key(51)
  bump = lambda tree: jax.tree.map(lambda a: a * 1.05, tree)
  for backbone in ("frozen_teacher", "ema"):
    knobs = dataclasses.replace(KNOBS, d_backbone=backbone, lam_cons=0.0)

    def d_real(teacher, ema, knobs=knobs):
      ctx = LossContext(models=models, knobs=knobs, teacher=teacher, ema=ema)
      return phases.equilibrium_loss(params, batch, key, ctx)[1]["d/real"]

    f = jax.jit(d_real)
    base = float(f(teacher, ema))
    follows, ignores = (f(bump(teacher), ema), f(teacher, bump(ema)))
    if backbone == "ema":
      follows, ignores = ignores, follows
    assert abs(float(follows) - base) > 1e-5 and float(ignores) == base, backbone


def test_an_unconditional_head_steps_without_condition_weights(setup):
  models, teacher, ema, params, batch = setup
  knobs = dataclasses.replace(KNOBS, conditional=False)
  models_u, _, lora, head = pose_models.build(preset("tiny", num_layers=2), knobs)
  assert "text_proj" not in head and "image_proj" not in head
  tx = optim.make_optimizer(_optim(1e-4, 1e-3), "equilibrium", 3, knobs)
  state = state_lib.init_state(tx, teacher, lora, head, knobs, seed=3)
  new, metrics = jax.jit(steps.make_step("equilibrium", knobs, models_u, tx, 0, 3))(
    state, teacher, batch
  )
  assert bool(metrics["finite"]) and float(metrics["grad_norm/head"]) > 0
