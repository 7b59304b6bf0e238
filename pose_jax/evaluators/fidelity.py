"""Fidelity of the first frame to the condition image (I2V should reproduce it).

Both use data_range 1 on float frames in [0, 1] (uint8 inputs are divided by 255 first):
  first_frame_psnr = 10 log10(1 / mean((frame_0 - image)^2))   dB; inf when frame_0 == image
  first_frame_ssim = structural_similarity(image, frame_0)     skimage defaults, 7x7 window,
                                                                channels averaged
"""

from __future__ import annotations

import math

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pose_jax.evaluators.inputs import check_image, check_video, per_video


@per_video(with_image=True)
def first_frame_psnr(video, image) -> float:
  """PSNR (dB) of frame 0 against the condition image; ``math.inf`` for an exact copy."""
  v = check_video(video, metric="first_frame_psnr")
  im = check_image(image, v, metric="first_frame_psnr")
  if np.array_equal(v[0], im):
    return math.inf
  return float(peak_signal_noise_ratio(im, v[0], data_range=1.0))


@per_video(with_image=True)
def first_frame_ssim(video, image) -> float:
  """SSIM of frame 0 against the condition image (1 for an exact copy); frames >= 7 px."""
  v = check_video(video, metric="first_frame_ssim")
  im = check_image(image, v, metric="first_frame_ssim")
  if min(im.shape[:2]) < 7:
    raise ValueError(f"first_frame_ssim: frames must be at least 7x7, got shape {v.shape}")
  return float(structural_similarity(im, v[0], data_range=1.0, channel_axis=-1))
