"""POSE losses, time sampling and the discriminator head on small hand-computed cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pose_jax.pose import discriminator, losses, timesteps


def test_time_shift_and_noising():
  t = jnp.array([0.0, 0.5, 1.0])
  np.testing.assert_allclose(timesteps.shift(t, 3.0), [0.0, 0.75, 1.0])  # 3*.5/(1+2*.5)
  np.testing.assert_allclose(timesteps.shift(t, 1.0), t)
  x, eps = jnp.full((3, 2), 2.0), jnp.full((3, 2), -1.0)
  np.testing.assert_allclose(timesteps.add_noise(x, eps, t)[:, 0], [2.0, 0.5, -1.0])
  v = eps - x
  np.testing.assert_allclose(timesteps.x0_from_velocity(timesteps.add_noise(x, eps, t), v, t), x)
  s = timesteps.sample(jax.random.key(0), 4096, "uniform", lo=0.9, hi=1.0)
  assert 0.9 <= float(s.min()) and float(s.max()) <= 1.0
  assert float(timesteps.sample(jax.random.key(0), 4096, "uniform", flow_shift=3.0).mean()) > 0.6
  with pytest.raises(ValueError, match="unknown time distribution"):
    timesteps.sample(jax.random.key(0), 2, "beta")


def test_flow_matching_hand_case():
  x, eps, v = jnp.array([[1.0, 2.0]]), jnp.array([[0.0, 0.0]]), jnp.array([[-1.0, 0.0]])
  # target eps - x = [-1, -2]; error [0, 2] -> mean 2
  assert float(losses.flow_matching(v, x, eps)) == pytest.approx(2.0)


def test_dmd_generator_value_and_gradient():
  x0g = jnp.array([[1.0, 3.0], [0.0, 2.0]])
  real = jnp.array([[0.0, 1.0], [0.0, 0.0]])
  fake = jnp.array([[2.0, 1.0], [1.0, 1.0]])
  # per-sample norm = mean|x0g - real| = [1.5, 1.0]; g = (fake - real)/norm
  g = np.array([[2 / 1.5, 0.0], [1.0, 1.0]])
  loss, grad = jax.value_and_grad(losses.dmd_generator)(x0g, real, fake)
  assert float(loss) == pytest.approx(0.5 * np.mean(g**2))
  np.testing.assert_allclose(grad, g / g.size, rtol=1e-6)
  # No gradient reaches the teacher or the fake score.
  g_real, g_fake = jax.grad(losses.dmd_generator, argnums=(1, 2))(x0g, real, fake)
  assert not np.any(g_real) and not np.any(g_fake)


def test_fake_score_target_and_stop_gradient():
  eps, x0g, v = jnp.array([[1.0, 1.0]]), jnp.array([[0.5, -1.0]]), jnp.array([[0.0, 0.0]])
  # target = eps - x0g = [0.5, 2]; loss = (0.25 + 4)/2
  assert float(losses.fake_score(v, eps, x0g)) == pytest.approx(2.125)
  assert not np.any(jax.grad(losses.fake_score, argnums=2)(v, eps, x0g))


def test_hinge_losses():
  d_real, d_fake = jnp.array([2.0, 0.5]), jnp.array([-3.0, 0.0])
  # relu(1-2)=0, relu(1-.5)=.5 -> .25 ; relu(1-3)=0, relu(1+0)=1 -> .5
  assert float(losses.hinge_discriminator(d_real, d_fake)) == pytest.approx(0.75)
  assert float(losses.hinge_generator(d_fake)) == pytest.approx(1.5)


def test_r1_noise_structure_and_loss():
  x = jnp.zeros((2, 3, 4, 5, 6))
  n_t_only = losses.r1_noise(jax.random.key(0), x, 0.0, 1.0)
  # temporal noise: constant over space, varies over frames/channels
  np.testing.assert_allclose(n_t_only, jnp.broadcast_to(n_t_only[:, :, :1, :1], x.shape))
  assert float(jnp.std(n_t_only[:, :, 0, 0])) > 0.1
  n_s_only = losses.r1_noise(jax.random.key(0), x, 0.01, 0.0)
  assert 0.005 < float(jnp.std(n_s_only)) < 0.02
  assert float(losses.approximate_r1(jnp.array([1.0, 2.0]), jnp.array([1.0, 4.0]))) == 2.0


def test_consistency_sds_and_ema():
  x0g, teacher = jnp.array([[1.0, 2.0]]), jnp.array([[0.0, 0.0]])
  assert float(losses.consistency_sds(x0g, teacher)) == pytest.approx(2.5)
  assert not np.any(jax.grad(losses.consistency_sds, argnums=1)(x0g, teacher))
  e = losses.ema({"w": jnp.array([1.0])}, {"w": jnp.array([3.0])}, 0.995)
  assert float(e["w"][0]) == pytest.approx(0.995 + 0.005 * 3.0)


def _head(conditional=True, taps=2):
  return discriminator.SemanticHead(
    32,
    taps,
    width=16,
    heads=2,
    num_queries=3,
    text_dim=12,
    image_dim=10,
    conditional=conditional,
    rngs=nnx.Rngs(0),
  )


def test_head_logits_depend_on_taps_and_condition():
  ks = jax.random.split(jax.random.key(1), 5)
  taps = [jax.random.normal(ks[0], (2, 20, 32)), jax.random.normal(ks[1], (2, 20, 32))]
  text, image = jax.random.normal(ks[2], (2, 7, 12)), jax.random.normal(ks[3], (2, 5, 10))
  head = _head()
  d = head(taps, text, image)
  assert d.shape == (2,)
  assert (
    float(jnp.abs(head(taps, text + jax.random.normal(ks[4], text.shape), image) - d).max()) > 1e-4
  )
  assert float(jnp.abs(head([taps[1], taps[0]], text, image) - d).max()) > 1e-4
  assert (  # the image branch is read too
    float(jnp.abs(head(taps, text, image + jax.random.normal(ks[4], image.shape)) - d).max()) > 1e-4
  )
  unconditional = _head(conditional=False)
  np.testing.assert_allclose(unconditional(taps), unconditional(taps, text * 5, image))
  layers = head.layer_logits(taps, text, image)
  assert layers.shape == (2, 2) and np.allclose(layers.mean(axis=0), d)
  with pytest.raises(ValueError, match="built for 2 taps"):
    head(taps[:1], text, image)


def test_default_taps():
  assert discriminator.default_taps(40) == (9, 19, 29, 39)
  assert discriminator.default_taps(2, 2) == (0, 1)
  with pytest.raises(ValueError):
    discriminator.default_taps(2, 3)


def test_head_masks_the_text_rows_past_the_prompt():
  """Rows with ``text_mask = 0`` (UMT5's padding) do not reach the logits; prompt rows do."""
  ks = jax.random.split(jax.random.key(2), 4)
  taps = [jax.random.normal(ks[0], (2, 20, 32))] * 2
  mask = jnp.asarray([[1] * 5 + [0] * 2, [1] * 3 + [0] * 4])
  text = jax.random.normal(ks[1], (2, 7, 12)) * mask[..., None]
  image = jax.random.normal(ks[2], (2, 5, 10))
  head = _head()
  d = head(taps, text, image, mask)
  padding = text + 4.0 * (1 - mask[..., None])  # padding rows changed, prompt rows kept
  np.testing.assert_allclose(head(taps, padding, image, mask), d, rtol=1e-6, atol=1e-6)
  assert float(jnp.abs(head(taps, padding, image) - head(taps, text, image)).max()) > 1e-4
  prompt = text.at[1, 0].add(3.0)
  assert float(jnp.abs(head(taps, prompt, image, mask) - d).max()) > 1e-4
  with pytest.raises(ValueError, match="text_mask"):
    head(taps, text, image, mask[:, :5])
