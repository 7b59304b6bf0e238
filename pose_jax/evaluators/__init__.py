"""Proxy video-quality metrics in the spirit of VBench-I2V that need no downloaded network.

Videos are ``[T, H, W, 3]`` float in [0, 1] (or uint8), batches ``[B, T, H, W, 3]``; every metric
function also maps over a batch. Formulas are in each module's docstring:
  fidelity  first-frame PSNR / SSIM against the condition image
  temporal  flicker (VBench temporal flickering), motion smoothness (flow-interpolation proxy)
  motion    optical-flow magnitudes, VBench dynamic degree
  camera    the camera move (pan left/right/up/down, zoom in/out, static, none) from global
            motion, and motion accuracy against the moves captions name
  features  subject / background consistency and image-video alignment for any feature_fn
"""

from __future__ import annotations

import numpy as np

from pose_jax.evaluators.camera import CAMERA_MOVES, CameraMove, camera_move, motion_accuracy
from pose_jax.evaluators.features import (
  background_consistency,
  clip_feature_fn,
  image_video_alignment,
  subject_consistency,
  thumbnail_features,
)
from pose_jax.evaluators.fidelity import first_frame_psnr, first_frame_ssim
from pose_jax.evaluators.inputs import check_video
from pose_jax.evaluators.motion import dynamic_degree, flow_magnitudes
from pose_jax.evaluators.temporal import flicker, motion_smoothness

# Every key evaluate() can return, in order. Which appear depends on the inputs:
#   first_frame_*                          with ``image``
#   flicker*, flow_magnitude_px, dynamic_* with >= 2 frames; motion_smoothness with >= 3
#   subject_consistency                    with ``feature_fn`` and >= 2 frames
#   image_video_alignment                  with ``feature_fn`` and ``image``
METRICS = (
  "first_frame_psnr",  # dB, inf for an exact copy
  "first_frame_ssim",
  "flicker",  # 1 - flicker_mean_abs_diff
  "flicker_mean_abs_diff",
  "motion_smoothness",
  "flow_magnitude_px",  # mean over pairs and pixels
  "dynamic_degree",  # 1.0 dynamic / 0.0 static (batch: fraction dynamic, as VBench reports)
  "dynamic_magnitude_px",  # mean top-5% flow magnitude (after sub-sampling to 8 fps)
  "subject_consistency",
  "image_video_alignment",
)

__all__ = [
  "CAMERA_MOVES",
  "METRICS",
  "CameraMove",
  "background_consistency",
  "camera_move",
  "clip_feature_fn",
  "dynamic_degree",
  "evaluate",
  "first_frame_psnr",
  "first_frame_ssim",
  "flicker",
  "flow_magnitudes",
  "image_video_alignment",
  "motion_accuracy",
  "motion_smoothness",
  "subject_consistency",
  "thumbnail_features",
]


def _evaluate_one(v: np.ndarray, image, feature_fn, fps: float) -> dict[str, float]:
  out: dict[str, float] = {}
  if image is not None:
    out["first_frame_psnr"] = first_frame_psnr(v, image)
    out["first_frame_ssim"] = first_frame_ssim(v, image)
  if len(v) >= 2:
    out["flicker"], out["flicker_mean_abs_diff"] = flicker(v)
    if len(v) >= 3:
      out["motion_smoothness"] = motion_smoothness(v)
    out["flow_magnitude_px"] = float(np.mean(flow_magnitudes(v)))
    if len(v[:: max(1, round(fps / 8))]) >= 2:
      dyn = dynamic_degree(v, fps=fps)
      out["dynamic_degree"], out["dynamic_magnitude_px"] = float(dyn.dynamic), dyn.magnitude
    if feature_fn is not None:
      out["subject_consistency"] = subject_consistency(v, feature_fn)
  if feature_fn is not None and image is not None:
    out["image_video_alignment"] = image_video_alignment(v, image, feature_fn)
  return {k: float(out[k]) for k in METRICS if k in out}


def evaluate(video, image=None, feature_fn=None, *, fps: float = 8.0) -> dict[str, float]:
  """Every applicable metric of :data:`METRICS` -> ``{name: float}``. A batch ``[B, T, H, W, 3]``
  gives each metric's mean over the B videos (``image`` shared ``[H, W, 3]`` or ``[B, H, W, 3]``).
  ``fps`` is the frame rate of ``video`` (used by dynamic degree only; 16 for Wan2.1 output)."""
  arr = np.asarray(video)
  if arr.ndim != 5:
    return _evaluate_one(check_video(arr, metric="evaluate"), image, feature_fn, fps)
  if arr.shape[0] == 0:
    raise ValueError(f"evaluate: empty batch of videos, got shape {arr.shape}")
  images = [None] * len(arr)
  if image is not None:
    im = np.asarray(image)
    if im.ndim == 4 and im.shape[0] != arr.shape[0]:
      raise ValueError(
        f"evaluate: {im.shape[0]} images for {arr.shape[0]} videos "
        f"(image shape {im.shape}, video shape {arr.shape})"
      )
    images = list(im) if im.ndim == 4 else [im] * len(arr)
  rows = [
    _evaluate_one(check_video(v, metric="evaluate"), im, feature_fn, fps)
    for v, im in zip(arr, images)
  ]
  return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
