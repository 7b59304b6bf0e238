"""The toy FVD: Fréchet distance known answers and errors, and a VideoNet trained on toy clips
that ranks held-out real clips closer to real clips than frozen, reversed, shuffled or noise."""

import jax
import numpy as np
import pytest
from flax import nnx

from pose_jax.data import toy
from pose_jax.evaluators import frechet as fr

SIZE, FRAMES = 32, 5
MOVES = list(toy.MOVES)
ONE_WAY = ("pan_left", "pan_up", "zoom_in")  # reversed: pan_right, pan_down, zoom_out
TRAIN = [p for p in toy.PHOTOS if p not in toy.HOLDOUT]


def _exact_gaussian(rng, n, mean, cov):
  """n samples whose sample mean and (ddof=1) covariance are exactly ``mean`` and ``cov``."""
  z = rng.standard_normal((n, len(mean)))
  z -= z.mean(0)
  z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # sample cov = I
  return z @ np.linalg.cholesky(cov).T + mean


def _sym_sqrt(c):
  w, v = np.linalg.eigh(c)
  return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def test_diagonal_gaussians_known_answer(rng):
  mu1, mu2 = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 1.0, 0.0, -0.5])
  s1, s2 = np.array([1.0, 4.0, 0.25, 2.0]), np.array([9.0, 1.0, 0.25, 0.5])
  a = _exact_gaussian(rng, 500, mu1, np.diag(s1))
  b = _exact_gaussian(rng, 300, mu2, np.diag(s2))
  want = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
  assert fr.frechet_distance(a, b) == pytest.approx(want, rel=1e-9)
  # many plain samples converge to the same answer
  a = mu1 + np.sqrt(s1) * rng.standard_normal((200_000, 4))
  b = mu2 + np.sqrt(s2) * rng.standard_normal((200_000, 4))
  assert fr.frechet_distance(a, b) == pytest.approx(want, rel=0.01)


def test_general_gaussians_match_the_symmetric_formula(rng):
  a = rng.standard_normal((400, 6)) @ rng.standard_normal((6, 6))
  b = rng.standard_normal((300, 6)) @ rng.standard_normal((6, 6)) + 0.3
  ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  ra = _sym_sqrt(ca)  # Tr sqrtm(Ca Cb) = Tr sqrtm(Ca^1/2 Cb Ca^1/2)
  want = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(ca + cb - 2 * _sym_sqrt(ra @ cb @ ra))
  assert fr.frechet_distance(a, b) == pytest.approx(want, rel=1e-6)


def test_identity_symmetry_and_shift(rng):
  a = rng.standard_normal((50, 8))
  b = 2 * rng.standard_normal((60, 8)) + 1
  assert fr.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
  assert fr.frechet_distance(a, b) == pytest.approx(fr.frechet_distance(b, a), rel=1e-8)
  assert fr.frechet_distance(a, b) > 1.0
  shift = np.arange(8.0)
  assert fr.frechet_distance(a, a + shift) == pytest.approx(np.sum(shift**2), rel=1e-8)
  # fewer rows than features: singular covariances still give a finite, non-negative answer
  assert 0.0 <= fr.frechet_distance(a[:5], b[:7]) < np.inf


@pytest.mark.parametrize(
  "a, b, match",
  [
    (np.zeros(5), np.zeros((5, 1)), "2-D"),
    (np.zeros((2, 3, 4)), np.zeros((5, 3)), "2-D"),
    (np.ones((5, 3)), np.ones((5, 4)), "different feature sizes"),
    (np.ones((1, 3)), np.ones((5, 3)), "at least 2 rows"),
    (np.ones((5, 3)), np.full((5, 3), np.nan), "non-finite"),
    (np.full((5, 3), np.inf), np.ones((5, 3)), "non-finite"),
  ],
)
def test_frechet_errors(a, b, match):
  with pytest.raises(ValueError, match=match):
    fr.frechet_distance(a, b)


def test_time_conv_is_a_3d_conv(rng):
  conv = fr.TimeConv(4, 5, rngs=nnx.Rngs(0))
  x = rng.random((2, 5, 9, 9, 4)).astype(np.float32)
  dims = ("NTHWC", "THWIO", "NTHWC")
  want = jax.lax.conv_general_dilated(
    x, conv.kernel_3d(), (1, 2, 2), "SAME", dimension_numbers=dims
  )
  np.testing.assert_allclose(conv(x), want + conv.conv.bias[...], atol=1e-5)


@pytest.mark.parametrize(
  "videos, labels, match",
  [
    (np.zeros((4, 5, 8, 8)), [0, 1, 2, 3], r"\[N, T, H, W, 3\]"),
    (np.zeros((4, 5, 8, 8, 3)), [0, 1, 2], "4 videos but 3 labels"),
    (np.zeros((4, 5, 8, 8, 3)), [0, 1, 2, 7], r"labels must lie in \[0, 7\)"),
    (np.zeros((4, 5, 8, 8, 3)), [0, -1, 2, 3], "labels must lie"),
    (np.zeros((4, 5, 8, 8, 3)), [0.0, 1.0, 2.0, 3.0], "1-D ints"),
    (np.full((4, 5, 8, 8, 3), np.nan), [0, 1, 2, 3], "non-finite"),
  ],
)
def test_train_video_net_errors(videos, labels, match):
  with pytest.raises(ValueError, match=match):
    fr.train_video_net(videos, np.asarray(labels), 7, steps=1)


def test_training_is_deterministic(rng):
  x = rng.random((6, 3, 8, 8, 3)).astype(np.float32)
  y = np.array([0, 1, 2, 0, 1, 2])
  one, two = (fr.train_video_net(x, y, 3, steps=3, batch_size=4, widths=(4,)) for _ in range(2))
  for a, b in zip(jax.tree.leaves(nnx.state(one)), jax.tree.leaves(nnx.state(two))):
    np.testing.assert_array_equal(a, b)
  init = fr.VideoNet(3, widths=(4,), rngs=nnx.Rngs(0))  # and training moved the weights
  assert not np.allclose(one.head.kernel[...], init.head.kernel[...])


def _clips(photos, moves, crops, seed):
  xs, ys = [], []
  for p in photos:
    image = toy.load_photo(p)
    for m in moves:
      for c in range(crops):
        rng = np.random.default_rng([seed, list(toy.PHOTOS).index(p), MOVES.index(m), c])
        xs.append(toy.camera_clip(image, m, SIZE, FRAMES, rng))
        ys.append(MOVES.index(m))
  return np.stack(xs).astype(np.float32) / 255.0, np.array(ys)


@pytest.fixture(scope="module")
def net():
  x, y = _clips(TRAIN, MOVES, 3, seed=0)  # 15 photos x 7 moves x 3 crops
  return fr.train_video_net(x, y, len(MOVES), steps=150, features=32)


def test_features_do_not_depend_on_batching(net):
  x, _ = _clips(toy.HOLDOUT[:1], MOVES[:6], 2, seed=9)  # 12 clips: batches of 5 pad the last
  f = fr.video_features(net, x)
  assert f.shape == (12, 32) and f.dtype == np.float64
  np.testing.assert_allclose(fr.video_features(net, x, batch_size=5), f, atol=1e-5)
  np.testing.assert_allclose(
    fr.video_features(net, (x * 255).round().astype(np.uint8)), f, atol=0.05
  )


def test_held_out_moves_are_named(net):
  x, y = _clips(toy.HOLDOUT, MOVES, 4, seed=1)
  accuracy = float(np.mean(np.argmax(np.asarray(net(x)), -1) == y))
  print(f"held-out move accuracy {accuracy:.3f} (chance {1 / len(MOVES):.3f})")
  assert accuracy > 0.5  # seen: 0.83 at these settings


@pytest.mark.parametrize(
  "moves, crops, fakes",
  [
    # every move: reversal maps the set onto itself (pan_left <-> pan_right, ...), so not here
    (MOVES, 8, ("static", "shuffled", "noise")),
    (ONE_WAY, 16, ("static", "reversed", "shuffled", "noise")),
  ],
  ids=["all-moves", "one-way-moves"],
)
def test_real_clips_are_closest_to_real_clips(net, moves, crops, fakes):
  real, _ = _clips(toy.HOLDOUT, moves, crops, seed=1)  # 168 / 144 clips, 32 features
  other, _ = _clips(toy.HOLDOUT, moves, crops, seed=2)  # new crops of the same photos
  f_real = fr.video_features(net, real)
  fd_real = fr.frechet_distance(f_real, fr.video_features(net, other))
  bad = fr.degraded_videos(other, np.random.default_rng(3))
  fds = {k: fr.fvd(net, real, bad[k]) for k in fakes}
  print(f"FD real {fd_real:.3f}, " + ", ".join(f"{k} {v:.3f}" for k, v in fds.items()))
  assert fd_real == pytest.approx(fr.fvd(net, other, real), rel=1e-6)
  for name in fakes:
    assert fds[name] > 3 * fd_real, (name, fds[name], fd_real)
