"""Names the camera move of a video from its global motion: pan, zoom, static, or none.

Legend: T frames, H/W frame height/width, s scale between two frames (> 1: content grows),
d = (dy, dx) content displacement in pixels (+x: content slides right), c the frame centre.

Between two frames ``a`` and ``b`` the camera model is ``b(c + s (p - c) + d) ~= a(p)``. For each
scale of a log-spaced grid, ``a`` is rescaled about the centre and ``d`` is found by phase
correlation (``skimage.registration.phase_cross_correlation``, Hann-windowed, 1/10 px); the scale
kept is the one whose aligned frames agree best, scored by R^2 inside a border of 1/8 of the
frame (1/4 for the ``stride`` pairs; ``fit``: 1 for an exact match, ~0 for unrelated frames).
Per video:

  velocity  mean d over consecutive pairs, px / frame;  zoom  mean log s per frame
  speed     |velocity| for a pan, |zoom| * min(H, W) / 2 (the edge's speed) for a zoom
  move      ``none``   when mean fit < ``min_fit`` (noise, morphing) or when the motion per
                       frame of pairs ``stride`` frames apart, m = (dy, dx, zoom * side / 2),
                       differs from the consecutive pairs' by more than 25% of |m| (+ 25% of
                       the static threshold): a cross-fade between keyframes, whose
                       consecutive frames barely move while its keyframes do;
            ``static`` when both speeds < ``min_speed * min(H, W)`` px / frame;
            else the larger of pan and zoom speed picks the kind, the sign its direction.

Directions follow ``pose_jax.data.toy``: "the camera pans left" = content slides RIGHT (dx > 0),
pans up = content slides down, zooms in = content grows (s > 1).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from skimage.color import rgb2gray
from skimage.filters import window
from skimage.registration import phase_cross_correlation
from skimage.transform import SimilarityTransform, warp

from pose_jax.evaluators.inputs import check_video, per_video

CAMERA_MOVES = ("pan_left", "pan_right", "pan_up", "pan_down", "zoom_in", "zoom_out", "static")
OPPOSITE = {
  "pan_left": "pan_right",
  "pan_right": "pan_left",
  "pan_up": "pan_down",
  "pan_down": "pan_up",
  "zoom_in": "zoom_out",
  "zoom_out": "zoom_in",
  "static": "static",
  "none": "none",
}
MAX_LOG_SCALE = 0.15  # per frame of the search grid (the toy zooms by log(1.5) / 8 = 0.05)
SCALES = 13
AGREEMENT = 0.25  # the stride pairs' motion may differ from the consecutive pairs' by 25%


class CameraMove(NamedTuple):
  move: str  # one of CAMERA_MOVES, or "none" when no global camera motion explains the video
  confidence: float  # fraction of consecutive pairs that name the same move, times the fit
  velocity: tuple[float, float]  # mean content displacement (dy, dx), px per frame
  zoom: float  # mean log scale per frame (> 0 zooms in)
  fit: float  # mean R^2 of the aligned consecutive pairs


def _gray(frame: np.ndarray) -> np.ndarray:
  return rgb2gray(frame).astype(np.float64)


def _scaled(frame: np.ndarray, scale: float, shift=(0.0, 0.0)) -> np.ndarray:
  """``frame`` seen through the camera model: content scaled by ``scale`` about the centre, then
  moved by ``shift`` (dy, dx); outside the frame: edge values."""
  h, w = frame.shape
  c = np.array([(w - 1) / 2, (h - 1) / 2])  # (x, y)
  fwd = SimilarityTransform(scale=scale, translation=c * (1 - scale) + np.array(shift[::-1]))
  return warp(frame, fwd.inverse, order=1, mode="edge")


def _r2(a: np.ndarray, b: np.ndarray, margin: float) -> float:
  """R^2 of ``a`` predicting ``b`` inside a border of ``margin`` (fraction of each side)."""
  h, w = b.shape
  mh, mw = int(round(h * margin)), int(round(w * margin))
  sl = (slice(mh, h - mh), slice(mw, w - mw))
  a, b = a[sl], b[sl]
  var = float(np.sum((b - b.mean()) ** 2))
  err = float(np.sum((a - b) ** 2))
  if var < 1e-12:
    return 1.0 if err < 1e-12 else 0.0
  return 1.0 - err / var


def _align(a: np.ndarray, b: np.ndarray, log_s: float, win: np.ndarray, margin: float):
  """``(fit, (dy, dx))`` of scale ``exp(log_s)`` with the shift phase correlation finds."""
  moved = _scaled(a, float(np.exp(log_s)))
  shift, _, _ = phase_cross_correlation(b * win, moved * win, upsample_factor=10)
  d = (float(shift[0]), float(shift[1]))
  return _r2(_scaled(a, float(np.exp(log_s)), d), b, margin), d


def register(
  a: np.ndarray, b: np.ndarray, max_log_scale: float = MAX_LOG_SCALE, margin: float = 0.125
):
  """``(log s, (dy, dx), fit)``: the camera model that best takes gray frame ``a`` to ``b``
  (a grid of ``SCALES`` log scales, then a parabola through the best one and its neighbours;
  the fit is scored inside a border of ``margin`` of each side)."""
  win = window("hann", b.shape)
  grid = np.linspace(-max_log_scale, max_log_scale, SCALES)
  found = [_align(a, b, float(g), win, margin) for g in grid]
  fits = np.array([f for f, _ in found])
  i = int(np.argmax(fits))
  best = (float(fits[i]), float(grid[i]), found[i][1])
  if 0 < i < len(grid) - 1:
    curve = fits[i - 1] - 2 * fits[i] + fits[i + 1]
    if curve < 0:
      log_s = float(grid[i] + 0.5 * (fits[i - 1] - fits[i + 1]) / curve * (grid[1] - grid[0]))
      fit, d = _align(a, b, log_s, win, margin)
      if fit > best[0]:
        best = (fit, log_s, d)
  return best[1], best[2], best[0]


def name_move(velocity, zoom: float, side: int, min_speed: float) -> str:
  """The move of a mean ``velocity`` (dy, dx) px / frame and ``zoom`` (log s / frame)."""
  dy, dx = velocity
  pan_speed, zoom_speed = float(np.hypot(dy, dx)), abs(zoom) * side / 2
  if max(pan_speed, zoom_speed) < min_speed * side:
    return "static"
  if zoom_speed > pan_speed:
    return "zoom_in" if zoom > 0 else "zoom_out"
  if abs(dx) >= abs(dy):
    return "pan_left" if dx > 0 else "pan_right"
  return "pan_up" if dy > 0 else "pan_down"


@per_video
def camera_move(
  video,
  min_speed: float = 0.01,
  min_fit: float = 0.5,
  stride: int | None = None,
  max_log_scale: float = MAX_LOG_SCALE,
) -> CameraMove:
  """The camera move of ``video`` ``[T, H, W, 3]`` (float in [0, 1] or uint8; a batch gives a
  CameraMove of arrays). ``min_speed``: fraction of the short side per frame below which the
  video is ``static``; ``min_fit``: the mean R^2 below which it is ``none``; ``stride``: the
  frame gap of the consistency check (default ``(T - 1) // 2``; 1 switches it off);
  ``max_log_scale``: the zoom searched per frame (log scale, both ways)."""
  v = check_video(video, min_frames=2, metric="camera_move")
  if min_speed < 0 or max_log_scale <= 0:
    raise ValueError(
      f"camera_move: min_speed={min_speed} must be >= 0 and max_log_scale={max_log_scale} > 0"
    )
  frames = [_gray(f) for f in v]
  side = min(v.shape[1:3])
  pairs = [register(a, b, max_log_scale) for a, b in zip(frames[:-1], frames[1:])]
  zooms = np.array([p[0] for p in pairs])
  shifts = np.array([p[1] for p in pairs])
  fit = float(np.mean([p[2] for p in pairs]))
  velocity, zoom = (float(shifts[:, 0].mean()), float(shifts[:, 1].mean())), float(zooms.mean())
  move = name_move(velocity, zoom, side, min_speed)
  votes = [name_move(d, z, side, min_speed) for d, z in zip(shifts, zooms)]
  confidence = float(np.mean([m == move for m in votes]) * np.clip(fit, 0.0, 1.0))
  k = stride if stride is not None else max(1, (len(v) - 1) // 2)
  if k < 1:
    raise ValueError(f"camera_move: stride must be >= 1, got {stride}")
  if fit < min_fit:
    move, confidence = "none", 0.0
  elif k > 1 and len(v) > k:
    pairs_k = zip(frames[:-k:k], frames[k::k])
    far = [register(a, b, max_log_scale * k, margin=0.25) for a, b in pairs_k]
    far_motion = np.array([*np.mean([f[1] for f in far], axis=0), np.mean([f[0] for f in far])])
    far_motion = far_motion / k * np.array([1.0, 1.0, side / 2])
    near_motion = np.array([*velocity, zoom * side / 2])
    tol = AGREEMENT * np.linalg.norm(far_motion) + AGREEMENT * min_speed * side
    if np.linalg.norm(near_motion - far_motion) > tol:
      move, confidence = "none", 0.0
  return CameraMove(move, confidence, velocity, zoom, fit)


def motion_accuracy(videos, moves, **kwargs) -> float:
  """Fraction of ``videos`` ``[B, T, H, W, 3]`` whose :func:`camera_move` is ``moves[i]``."""
  arr = np.asarray(videos)
  if arr.ndim != 5:
    raise ValueError(f"motion_accuracy: videos must be [B, T, H, W, 3], got shape {arr.shape}")
  moves = list(moves)
  if len(moves) != len(arr):
    raise ValueError(f"motion_accuracy: {len(moves)} moves for {len(arr)} videos")
  unknown = sorted(set(moves) - set(CAMERA_MOVES))
  if unknown:
    raise ValueError(f"motion_accuracy: unknown moves {unknown}; choose from {CAMERA_MOVES}")
  found = camera_move(arr, **kwargs).move
  return float(np.mean([f == m for f, m in zip(found, moves)]))
