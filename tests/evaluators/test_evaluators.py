"""Proxy video metrics on constructed videos with a known answer (static, pans, flicker, noise)."""

import math

import numpy as np
import pytest
from skimage import data, transform

from pose_jax import evaluators as ev
from pose_jax.evaluators.features import thumbnail_features

S, T = 48, 9  # frame size (px) and frames per test video


@pytest.fixture(scope="module")
def canvas() -> np.ndarray:
  """A textured float32 image larger than a frame, to crop pans from."""
  return transform.resize(data.astronaut(), (128, 192), anti_aliasing=True).astype(np.float32)


def crops(canvas, offsets, axis=1) -> np.ndarray:
  """Video ``[len(offsets), S, S, 3]``: frame t is the S x S window shifted by offsets[t] px."""
  frames = []
  for o in offsets:
    r, c = (40, 40 + o) if axis == 1 else (40 + o, 40)
    frames.append(canvas[r : r + S, c : c + S])
  return np.stack(frames)


@pytest.fixture(scope="module")
def static(canvas) -> np.ndarray:
  return crops(canvas, [0] * T)


def pan(canvas, k, axis=1) -> np.ndarray:
  return crops(canvas, [k * t for t in range(T)], axis)


# --- static video ---------------------------------------------------------------------------------
def test_static_video(static):
  fl = ev.flicker(static)
  assert fl.score == 1.0 and fl.mean_abs_diff == 0.0
  assert np.abs(ev.flow_magnitudes(static)).max() < 1e-3
  dyn = ev.dynamic_degree(static)
  assert not dyn.dynamic and dyn.magnitude < 1e-3
  assert ev.motion_smoothness(static) == pytest.approx(1.0, abs=1e-6)
  assert ev.subject_consistency(static, thumbnail_features) == pytest.approx(1.0, abs=1e-9)


# --- pans: flow magnitude and dynamic degree ------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1])
def test_pan_flow_magnitude_is_the_shift(canvas, axis):
  m2 = ev.flow_magnitudes(pan(canvas, 2, axis))
  m4 = ev.flow_magnitudes(pan(canvas, 4, axis))
  assert m2.shape == (T - 1,)
  assert np.mean(m2) == pytest.approx(2.0, rel=0.05)
  assert np.mean(m4) == pytest.approx(4.0, rel=0.08)
  assert np.mean(m4) / np.mean(m2) == pytest.approx(2.0, rel=0.08)


def test_dynamic_degree_threshold_scales_with_size(canvas):
  # VBench: 6 px at a 256 px short side -> 6 * 48 / 256 = 1.125 px here.
  slow, fast = ev.dynamic_degree(pan(canvas, 1)), ev.dynamic_degree(pan(canvas, 2))
  assert slow.threshold_px == pytest.approx(6 * S / 256)
  assert fast.dynamic and fast.magnitude == pytest.approx(2.0, rel=0.1)
  assert not slow.dynamic  # 1 px/frame is below the threshold at this size ...
  assert ev.dynamic_degree(pan(canvas, 1), threshold=3.0).dynamic  # ... and above half of it
  # 16 fps: every 2nd frame is used (2 px/frame -> 4 px/pair), the threshold is unchanged.
  at16 = ev.dynamic_degree(pan(canvas, 2), fps=16.0)
  assert at16.magnitude == pytest.approx(4.0, rel=0.1) and at16.threshold_px == fast.threshold_px
  # Motion in one pair only: not enough moving pairs (needs round(4 * 9 / 16) = 2).
  one_jump = crops(canvas, [0, 0, 0, 0, 8, 8, 8, 8, 8])
  assert not ev.dynamic_degree(one_jump).dynamic


# --- flicker --------------------------------------------------------------------------------------
def flickering(static, delta) -> np.ndarray:
  """Brightness alternating base, base + delta, base, ... (base scaled to [0, 0.8]: no clipping)."""
  base = static * 0.8
  return base + delta * (np.arange(T) % 2).astype(np.float32)[:, None, None, None]


def test_flicker(static):
  scores = []
  for delta in (0.02, 0.05, 0.1):
    fl = ev.flicker(flickering(static, delta))
    assert fl.mean_abs_diff == pytest.approx(delta, abs=1e-6)
    assert fl.score == pytest.approx(1 - delta, abs=1e-6)
    scores.append(fl.score)
  assert ev.flicker(static).score > scores[0] > scores[1] > scores[2]


# --- motion smoothness ----------------------------------------------------------------------------
def test_constant_velocity_is_smoother_than_jitter(canvas):
  smooth = pan(canvas, 2)
  rng = np.random.default_rng(0)
  jitter = crops(canvas, [2 * t + int(rng.choice([-2, 2])) for t in range(T)])
  s_smooth, s_jitter = ev.motion_smoothness(smooth), ev.motion_smoothness(jitter)
  assert s_smooth > 0.99
  assert 1 - s_jitter > 3 * (1 - s_smooth)  # >3x the reconstruction error
  # Direction does not matter: the same pan played backwards is as smooth.
  assert ev.motion_smoothness(smooth[::-1]) == pytest.approx(s_smooth, abs=5e-3)


# --- first-frame fidelity -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def image64() -> np.ndarray:
  img = transform.resize(data.astronaut(), (64, 64), anti_aliasing=True).astype(np.float32)
  return 0.1 + 0.8 * img  # in [0.1, 0.9]: noise of std 0.02 is (almost) never clipped


def test_first_frame_psnr_ssim(image64):
  video = np.repeat(image64[None], 3, axis=0)
  assert ev.first_frame_psnr(video, image64) == math.inf
  assert ev.first_frame_ssim(video, image64) == pytest.approx(1.0, abs=1e-9)
  sigma = 0.02
  noisy = video.copy()
  noisy[0] = np.clip(image64 + np.random.default_rng(0).normal(0, sigma, image64.shape), 0, 1)
  assert ev.first_frame_psnr(noisy, image64) == pytest.approx(20 * math.log10(1 / sigma), abs=0.3)
  assert ev.first_frame_ssim(noisy, image64) < 0.99
  # Only frame 0 counts.
  later = video.copy()
  later[1:] = noisy[0]
  assert ev.first_frame_psnr(later, image64) == math.inf


# --- feature hook ---------------------------------------------------------------------------------
def test_feature_consistency_and_alignment(static, canvas):
  other = transform.resize(data.coffee(), (S, S), anti_aliasing=True).astype(np.float32)
  switched = static.copy()
  switched[T // 2 :] = other
  same = ev.subject_consistency(static, thumbnail_features)
  assert same == pytest.approx(1.0, abs=1e-9)
  assert ev.subject_consistency(switched, thumbnail_features) < same - 0.05
  assert ev.background_consistency(switched, thumbnail_features) == pytest.approx(
    ev.subject_consistency(switched, thumbnail_features)
  )
  image = static[0]
  assert ev.image_video_alignment(static, image, thumbnail_features) == pytest.approx(1.0)
  assert ev.image_video_alignment(switched, image, thumbnail_features) < 0.9


def test_feature_fn_is_called_with_frames(static):
  calls = []

  def spy(frames):
    calls.append((frames.shape, frames.dtype, float(frames.min()), float(frames.max())))
    return thumbnail_features(frames)

  ev.subject_consistency((static * 255).round().astype(np.uint8), spy)
  ev.image_video_alignment(static, static[0], spy)
  assert [c[:2] for c in calls] == [((T, S, S, 3), np.float32), ((T + 1, S, S, 3), np.float32)]
  assert all(0.0 <= lo and hi <= 1.0 for _, _, lo, hi in calls)
  with pytest.raises(ValueError, match=r"feature_fn must return \[N, D\].*shape \(9,\)"):
    ev.subject_consistency(static, lambda f: np.ones(len(f)))


def test_clip_feature_fn_tiny_random_clip():
  from flax import nnx

  from pose_jax.models.encoders import clip_vision, preprocess

  enc = clip_vision.CLIPVisionEncoder(clip_vision.preset("tiny"), rngs=nnx.Rngs(0))
  fn = ev.clip_feature_fn(enc, batch_size=4)
  frames = np.random.default_rng(0).random((5, 40, 48, 3)).astype(np.float32)
  feats = fn(frames)  # 5 frames: two batches of 4, the second zero-padded
  assert feats.shape == (5, 32)
  u8 = np.round(frames[2] * 255).astype(np.uint8)
  want = np.asarray(enc.pooled(preprocess(u8, shortest_edge=32, crop_size=(32, 32))))[0]
  np.testing.assert_allclose(feats[2], want, rtol=1e-5, atol=1e-5)
  still = np.repeat(frames[:1], 5, axis=0)
  assert ev.subject_consistency(still, fn) == pytest.approx(1.0, abs=1e-6)
  assert ev.subject_consistency(frames, fn) < 1.0 - 1e-4


# --- inputs, batches, evaluate --------------------------------------------------------------------
def test_uint8_and_batch(static, canvas):
  u8 = (static * 255).round().astype(np.uint8)
  assert ev.flicker(u8).mean_abs_diff == pytest.approx(ev.flicker(u8 / np.float32(255))[1])
  batch = np.stack([static, flickering(static, 0.05)])
  fl = ev.flicker(batch)
  assert fl.score.shape == (2,) and fl.mean_abs_diff[0] == 0.0
  assert fl.mean_abs_diff[1] == pytest.approx(0.05, abs=1e-6)
  # One condition image per video, or one shared.
  psnr = ev.first_frame_psnr(batch, np.stack([static[0], static[0] * 0.5]))
  assert psnr[0] == math.inf and np.isfinite(psnr[1])
  assert ev.first_frame_psnr(batch, static[0])[0] == math.inf
  mags = ev.flow_magnitudes(np.stack([static, pan(canvas, 2)]))
  assert mags.shape == (2, T - 1)


def test_evaluate(static, canvas):
  res = ev.evaluate(static, static[0], thumbnail_features)
  assert tuple(res) == ev.METRICS
  assert all(isinstance(v, float) for v in res.values())
  assert res["flicker"] == 1.0 and res["dynamic_degree"] == 0.0
  moving = ev.evaluate(pan(canvas, 2))
  assert "first_frame_psnr" not in moving and "subject_consistency" not in moving
  assert moving["dynamic_degree"] == 1.0
  assert moving["flow_magnitude_px"] == pytest.approx(2.0, rel=0.05)
  both = ev.evaluate(np.stack([static, pan(canvas, 2)]))
  assert both["dynamic_degree"] == 0.5  # VBench's set score: the fraction of dynamic videos
  assert both["flicker"] == pytest.approx((1.0 + moving["flicker"]) / 2)
  assert set(ev.evaluate(static[:1], static[0])) == {"first_frame_psnr", "first_frame_ssim"}


@pytest.mark.parametrize(
  "call,match",
  [
    (lambda v: ev.flicker(v[0]), r"must be \[T, H, W, 3\].*got shape \(48, 48, 3\)"),
    (lambda v: ev.flicker(v[..., :2]), r"3 \(RGB\) channels.*got shape \(9, 48, 48, 2\)"),
    (lambda v: ev.flicker(v[:1]), r"flicker: needs at least 2 frames.*\(1, 48, 48, 3\)"),
    (lambda v: ev.motion_smoothness(v[:2]), r"at least 3 frames.*\(2, 48, 48, 3\)"),
    (lambda v: ev.flow_magnitudes(v[:1]), r"at least 2 frames"),
    (lambda v: ev.first_frame_psnr(v, v[0, :40]), r"image shape \(40, 48, 3\) does not match"),
    (lambda v: ev.first_frame_ssim(v, v[0, ..., 0]), r"\[H, W, 3\], got shape \(48, 48\)"),
    (lambda v: ev.first_frame_psnr(v[None].repeat(2, 0), v[:3]), r"3 images for 2 videos"),
    (lambda v: ev.flicker(v.astype(np.int32)), r"float in \[0, 1\] or uint8.*int32"),
    (lambda v: ev.evaluate(v[0]), r"evaluate: video must be \[T, H, W, 3\]"),
  ],
)
def test_bad_inputs(static, call, match):
  with pytest.raises(ValueError, match=match):
    call(static)
