"""CLIP image preprocessing, equal to transformers ``CLIPImageProcessor`` (its PIL backend).

Legend: B batch, H/W height/width. Output is channels-last float32 ``[B, H, W, 3]``.

Per image (uint8 ``[H, W, 3]`` array or PIL image):
  1. resize so the shortest edge is ``shortest_edge`` (long edge ``int(s * long / short)``) with
     PIL bicubic resampling on the uint8 image;
  2. center crop to ``crop_size`` (top/left = (size - crop) // 2);
  3. rescale: ``float64(x) * (1/255)`` cast to float32;
  4. normalise ``(x - mean) / std`` in float32 with the OpenAI CLIP mean/std.
PIL is imported only when this runs (it is not a core dependency of pose_jax).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resized_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
  """transformers ``get_resize_output_image_size(default_to_square=False)``: (height, width)."""
  short, long = (width, height) if width <= height else (height, width)
  new_short, new_long = shortest_edge, int(shortest_edge * long / short)
  return (new_long, new_short) if width <= height else (new_short, new_long)


def _to_uint8_rgb(image: Any) -> np.ndarray:
  from PIL import Image

  if isinstance(image, Image.Image):
    return np.asarray(image.convert("RGB"))
  arr = np.asarray(image)
  if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
    raise ValueError(f"expected a uint8 [H, W, 3] image, got {arr.dtype} {arr.shape}")
  return arr


def preprocess_one(
  image: Any,
  shortest_edge: int = 224,
  crop_size: tuple[int, int] = (224, 224),
  mean: Sequence[float] = OPENAI_CLIP_MEAN,
  std: Sequence[float] = OPENAI_CLIP_STD,
) -> np.ndarray:
  """One uint8 ``[H, W, 3]`` image (or PIL image) -> float32 ``[crop_h, crop_w, 3]``."""
  from PIL import Image

  arr = _to_uint8_rgb(image)
  h, w = resized_size(arr.shape[0], arr.shape[1], shortest_edge)
  arr = np.asarray(Image.fromarray(arr).resize((w, h), resample=Image.Resampling.BICUBIC))
  ch, cw = crop_size
  if ch > h or cw > w:
    raise ValueError(f"crop {crop_size} larger than the resized image {(h, w)}")
  top, left = (h - ch) // 2, (w - cw) // 2
  arr = arr[top : top + ch, left : left + cw]
  x = (arr.astype(np.float64) * (1 / 255)).astype(np.float32)
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def preprocess(
  images: Any,
  shortest_edge: int = 224,
  crop_size: tuple[int, int] = (224, 224),
  mean: Sequence[float] = OPENAI_CLIP_MEAN,
  std: Sequence[float] = OPENAI_CLIP_STD,
) -> np.ndarray:
  """An image, a list of images or a uint8 ``[B, H, W, 3]`` batch -> float32
  ``[B, crop_h, crop_w, 3]`` CLIP pixels."""
  if isinstance(images, np.ndarray) and images.ndim == 4:
    images = list(images)
  elif not isinstance(images, (list, tuple)):
    images = [images]
  return np.stack([preprocess_one(im, shortest_edge, crop_size, mean, std) for im in images])
