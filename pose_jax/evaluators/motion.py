"""Optical-flow motion statistics: mean flow magnitude and VBench's "dynamic degree".

Flow is dense Lucas-Kanade (skimage ``optical_flow_ilk``, default) or TV-L1
(``optical_flow_tvl1``) on grayscale frames, in pixels, ``[2, H, W]`` as (row, col).

VBench dynamic degree (RAFT flow there, ours here) for one video:
  1. frames are sub-sampled to ~8 fps: every ``max(1, round(fps / 8))``-th frame;
  2. per consecutive pair, m_t = mean of the largest 5% of the per-pixel flow magnitudes;
  3. threshold = max(1, 8 / fps) * threshold * min(H, W) / 256 px: the 6 px of VBench are
     meant for a 256 px short side, so the threshold is a fixed fraction (6/256 ~ 2.3%) of the
     short side per ~1/8 s, whatever the resolution;
  4. dynamic  <=>  #{t : m_t > threshold} >= max(1, round(4 * N / 16)), N frames after step 1
     (VBench: 4 moving pairs per 16 frames; the max(1, .) keeps a 2-3 frame clip from counting as
     dynamic with no motion at all, which VBench's round(.) = 0 would do).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from skimage.color import rgb2gray
from skimage.registration import optical_flow_ilk, optical_flow_tvl1

from pose_jax.evaluators.inputs import check_video, per_video

FLOW_METHODS = {"ilk": optical_flow_ilk, "tvl1": optical_flow_tvl1}


def dense_flow(reference: np.ndarray, moving: np.ndarray, method: str = "ilk") -> np.ndarray:
  """Flow ``[2, H, W]`` (row, col) in pixels between RGB frames ``[H, W, 3]`` with
  ``reference(x) ~= moving(x + flow(x))`` (skimage's convention)."""
  if method not in FLOW_METHODS:
    raise ValueError(f"flow method {method!r} not in {sorted(FLOW_METHODS)}")
  return FLOW_METHODS[method](rgb2gray(reference), rgb2gray(moving)).astype(np.float32)


def _pair_magnitudes(v: np.ndarray, method: str) -> list[np.ndarray]:
  """Per-pixel flow magnitude ``[H, W]`` for each consecutive pair of frames."""
  return [np.hypot(*dense_flow(a, b, method)) for a, b in zip(v[:-1], v[1:])]


@per_video
def flow_magnitudes(video, method: str = "ilk") -> np.ndarray:
  """Mean optical-flow magnitude (px) of each consecutive frame pair: ``[T - 1]``."""
  v = check_video(video, min_frames=2, metric="flow_magnitudes")
  return np.asarray([float(m.mean()) for m in _pair_magnitudes(v, method)])


class DynamicDegree(NamedTuple):
  dynamic: bool  # VBench's per-video verdict; a set's dynamic_degree is the fraction dynamic
  magnitude: float  # mean over frame pairs of the top-5% mean flow magnitude m_t, px
  threshold_px: float  # the scaled threshold m_t was compared with


def _top5_mean(mag: np.ndarray) -> float:
  flat = np.sort(mag.ravel())[::-1]
  return float(flat[: max(1, int(flat.size * 0.05))].mean())


@per_video
def dynamic_degree(
  video, threshold: float = 6.0, fps: float = 8.0, method: str = "ilk"
) -> DynamicDegree:
  """VBench's "is this video dynamic" rule (see the module docstring). ``fps`` is the frame rate
  of ``video``: pass 16 for Wan2.1 output so that, as in VBench, every 2nd frame is used."""
  v = check_video(video, min_frames=2, metric="dynamic_degree")
  if fps <= 0:
    raise ValueError(f"dynamic_degree: fps must be > 0, got {fps}")
  frames = v[:: max(1, round(fps / 8))]
  if len(frames) < 2:
    raise ValueError(
      f"dynamic_degree: fewer than 2 frames left after sub-sampling to 8 fps (fps={fps}), "
      f"got shape {v.shape}"
    )
  thr = max(1.0, 8.0 / fps) * threshold * min(v.shape[1:3]) / 256.0
  top = np.asarray([_top5_mean(m) for m in _pair_magnitudes(frames, method)])
  needed = max(1, round(4 * len(frames) / 16))
  return DynamicDegree(bool((top > thr).sum() >= needed), float(top.mean()), float(thr))
