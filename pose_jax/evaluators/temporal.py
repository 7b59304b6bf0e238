"""Temporal quality: flicker between consecutive frames and motion smoothness.

Frames are float in [0, 1]; both scores are VBench's ``(255 - error * 255) / 255 = 1 - error``
with the error measured in [0, 1] units (VBench measures it on uint8 frames).

  flicker:           d = mean_{t, pixels, channels} |x_{t+1} - x_t|,  score = 1 - d
                     (VBench "temporal flickering"; 1 = no change at all between frames)
  motion_smoothness: VBench drops the odd frames, re-creates them with a frame-interpolation
                     network (AMT) and scores 1 - mean |re-created - original|. Proxy here,
                     without a network: for each odd frame t = 2k + 1 with both neighbours,
                       f = flow(reference=x_{t+1}, moving=x_{t-1})      x_{t+1}(p) ~ x_{t-1}(p + f)
                       x^_t(p) = (x_{t-1}(p + f/2) + x_{t+1}(p - f/2)) / 2
                     i.e. each neighbour moved half-way along the flow (constant velocity), the two
                     warps averaged (bilinear, edge-padded). score = 1 - mean_t mean |x^_t - x_t|.
                     Constant-velocity motion is re-created almost exactly; jerky motion is not.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from skimage.transform import warp

from pose_jax.evaluators.inputs import check_video, per_video
from pose_jax.evaluators.motion import dense_flow


class Flicker(NamedTuple):
  score: float  # 1 - mean_abs_diff; 1 = no flicker
  mean_abs_diff: float  # mean |x_{t+1} - x_t| in [0, 1] units


@per_video
def flicker(video) -> Flicker:
  """VBench temporal flickering (module docstring): score and raw mean absolute difference."""
  v = check_video(video, min_frames=2, metric="flicker")
  d = float(np.mean(np.abs(np.diff(v, axis=0))))
  return Flicker((255.0 - d * 255.0) / 255.0, d)


def _warp(frame: np.ndarray, flow: np.ndarray) -> np.ndarray:
  """``out(p) = frame(p + flow(p))``: bilinear, edge-padded, per channel."""
  h, w = frame.shape[:2]
  coords = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij")).astype(np.float32)
  coords += flow
  return np.stack(
    [warp(frame[..., c], coords, order=1, mode="edge") for c in range(frame.shape[-1])], -1
  )


def interpolate_midframe(prev: np.ndarray, nxt: np.ndarray, method: str = "ilk") -> np.ndarray:
  """The frame half-way between ``prev`` and ``nxt`` ``[H, W, 3]`` under constant velocity."""
  f = dense_flow(nxt, prev, method)
  return 0.5 * (_warp(prev, 0.5 * f) + _warp(nxt, -0.5 * f))


@per_video
def motion_smoothness(video, method: str = "ilk") -> float:
  """1 - mean abs error of the odd frames re-created from their even neighbours (module
  docstring); needs at least 3 frames."""
  v = check_video(video, min_frames=3, metric="motion_smoothness")
  errors = [
    np.mean(np.abs(interpolate_midframe(v[t - 1], v[t + 1], method) - v[t]))
    for t in range(1, v.shape[0] - 1, 2)
  ]
  return float((255.0 - np.mean(errors) * 255.0) / 255.0)
