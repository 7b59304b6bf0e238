"""Input checks shared by the evaluators, and the batch mapping of per-video metrics.

Legend: B videos, T frames, H/W height/width. A video is ``[T, H, W, 3]`` float in [0, 1] or uint8
in [0, 255] (converted to float32 / 255); a batch of videos is ``[B, T, H, W, 3]``. A condition
image is ``[H, W, 3]`` (for a batch: one ``[H, W, 3]`` for all videos or ``[B, H, W, 3]``).
Float inputs are not clipped or range-checked.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np


def _unit_float(x, what: str) -> np.ndarray:
  arr = np.asarray(x)
  if arr.dtype == np.uint8:
    return arr.astype(np.float32) / 255
  if not np.issubdtype(arr.dtype, np.floating):
    raise ValueError(f"{what} must be float in [0, 1] or uint8, got dtype {arr.dtype}")
  return arr.astype(np.float32, copy=False)


def check_video(video, min_frames: int = 1, metric: str = "video") -> np.ndarray:
  """One video -> float32 ``[T, H, W, 3]``; ValueError naming the problem and the shape."""
  v = _unit_float(video, f"{metric}: video")
  if v.ndim != 4:
    raise ValueError(
      f"{metric}: video must be [T, H, W, 3] (or a batch [B, T, H, W, 3]), got shape {v.shape}"
    )
  if v.shape[-1] != 3:
    raise ValueError(f"{metric}: video must have 3 (RGB) channels last, got shape {v.shape}")
  if min(v.shape[1:3]) < 1:
    raise ValueError(f"{metric}: video frames are empty, got shape {v.shape}")
  if v.shape[0] < min_frames:
    raise ValueError(f"{metric}: needs at least {min_frames} frames, got shape {v.shape}")
  return v


def check_image(image, video: np.ndarray, metric: str = "image") -> np.ndarray:
  """Condition image -> float32 ``[H, W, 3]`` of the same size as the frames of ``video``."""
  im = _unit_float(image, f"{metric}: image")
  if im.ndim != 3 or im.shape[-1] != 3:
    raise ValueError(f"{metric}: image must be [H, W, 3], got shape {im.shape}")
  if im.shape != video.shape[1:]:
    raise ValueError(
      f"{metric}: image shape {im.shape} does not match the video frame shape {video.shape[1:]} "
      f"(video shape {video.shape})"
    )
  return im


def to_uint8(frames: np.ndarray) -> np.ndarray:
  """Float frames in [0, 1] -> uint8 (clipped, rounded)."""
  return np.round(np.clip(frames, 0.0, 1.0) * 255).astype(np.uint8)


def _stack(results: list):
  first = results[0]
  if isinstance(first, tuple) and hasattr(first, "_fields"):  # NamedTuple: stack field-wise
    return type(first)(*(np.asarray(col) for col in zip(*results)))
  return np.asarray(results)


def per_video(fn: Callable | None = None, *, with_image: bool = False):
  """Decorator: ``fn(video [T, H, W, 3], ...)`` also takes a batch ``[B, T, H, W, 3]``, mapping
  over B and stacking the results (floats -> ``[B]`` arrays, named tuples -> named tuples of
  arrays). With ``with_image`` the second argument is a condition image: one ``[H, W, 3]`` shared
  by all videos or ``[B, H, W, 3]``, one per video."""
  if fn is None:
    return functools.partial(per_video, with_image=with_image)

  @functools.wraps(fn)
  def wrapper(video, *args, **kwargs):
    arr = np.asarray(video)
    if arr.ndim != 5:
      return fn(arr, *args, **kwargs)
    if arr.shape[0] == 0:
      raise ValueError(f"{fn.__name__}: empty batch of videos, got shape {arr.shape}")
    if not with_image:
      return _stack([fn(v, *args, **kwargs) for v in arr])
    image, rest = np.asarray(args[0]), args[1:]
    if image.ndim == 4:
      if image.shape[0] != arr.shape[0]:
        raise ValueError(
          f"{fn.__name__}: {image.shape[0]} images for {arr.shape[0]} videos "
          f"(image shape {image.shape}, video shape {arr.shape})"
        )
      images = list(image)
    else:
      images = [image] * arr.shape[0]
    return _stack([fn(v, im, *rest, **kwargs) for v, im in zip(arr, images)])

  return wrapper
