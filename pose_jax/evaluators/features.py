"""Feature-similarity metrics with a pluggable image encoder (VBench uses DINO / CLIP).

A ``feature_fn`` maps float32 frames ``[N, H, W, 3]`` in [0, 1] to features ``[N, D]``; features
are L2-normalised here and cos(a, b) is their dot product.

  subject_consistency / background_consistency (VBench: DINO ViT-B/16 / CLIP ViT-B/32 features,
  the same formula), for features f_0 .. f_{T-1}:
    (1 / (T - 1)) sum_{t=1}^{T-1} (max(0, cos(f_t, f_0)) + max(0, cos(f_t, f_{t-1}))) / 2
  image_video_alignment, with g the condition image's feature:
    (1 / T) sum_{t=0}^{T-1} cos(f_t, g)

``feature_fn`` is called once per video (with the condition image prepended for the alignment).
:func:`clip_feature_fn` adapts this repo's CLIP vision tower; :func:`thumbnail_features` is a
network-free FALLBACK FOR TESTS only (a thumbnail of the pixels, no semantics).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from skimage.transform import resize

from pose_jax.evaluators.inputs import check_image, check_video, per_video, to_uint8

FeatureFn = Callable[[np.ndarray], np.ndarray]


def _features(feature_fn: FeatureFn, frames: np.ndarray, metric: str) -> np.ndarray:
  """``[N, D]`` L2-normalised float64 features (an all-zero feature stays zero)."""
  f = np.asarray(feature_fn(frames), np.float64)
  if f.ndim != 2 or f.shape[0] != frames.shape[0]:
    raise ValueError(
      f"{metric}: feature_fn must return [N, D] with N={frames.shape[0]} for frames of shape "
      f"{frames.shape}, got shape {f.shape}"
    )
  norm = np.linalg.norm(f, axis=-1, keepdims=True)
  return f / np.maximum(norm, 1e-12)


def _consistency(video, feature_fn: FeatureFn, metric: str) -> float:
  v = check_video(video, min_frames=2, metric=metric)
  f = _features(feature_fn, v, metric)
  to_first = np.maximum(0.0, f[1:] @ f[0])
  to_prev = np.maximum(0.0, np.sum(f[1:] * f[:-1], axis=-1))
  return float(np.mean((to_first + to_prev) / 2))


@per_video
def subject_consistency(video, feature_fn: FeatureFn) -> float:
  """VBench subject consistency (module docstring) with ``feature_fn`` (VBench: DINO)."""
  return _consistency(video, feature_fn, "subject_consistency")


@per_video
def background_consistency(video, feature_fn: FeatureFn) -> float:
  """VBench background consistency: the same formula, meant for CLIP features."""
  return _consistency(video, feature_fn, "background_consistency")


@per_video(with_image=True)
def image_video_alignment(video, image, feature_fn: FeatureFn) -> float:
  """Mean cosine similarity of every frame's feature to the condition image's feature."""
  v = check_video(video, metric="image_video_alignment")
  im = check_image(image, v, metric="image_video_alignment")
  f = _features(feature_fn, np.concatenate([im[None], v]), "image_video_alignment")
  return float(np.mean(f[1:] @ f[0]))


def thumbnail_features(frames: np.ndarray, size: int = 8) -> np.ndarray:
  """TEST / FALLBACK feature_fn, not a semantic feature: each frame anti-alias resized to
  ``size x size``, minus its own mean, flattened -> ``[N, size * size * 3]`` (so cosine similarity
  is the correlation of the thumbnails)."""
  frames = np.asarray(frames, np.float32)
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"thumbnail_features: frames must be [N, H, W, 3], got shape {frames.shape}")
  small = resize(frames, (frames.shape[0], size, size, 3), anti_aliasing=True)
  small = small.reshape(frames.shape[0], -1)
  return small - small.mean(axis=-1, keepdims=True)


def clip_feature_fn(encoder, preprocess_kwargs: dict | None = None, batch_size: int = 16):
  """feature_fn from a :class:`~pose_jax.models.encoders.CLIPVisionEncoder`: frames -> uint8 ->
  CLIP preprocessing (default: shortest edge and center crop = the encoder's image size, OpenAI
  mean/std; pass ``read_clip_preprocess(...)`` for a checkpoint's own) -> ``pooled`` output
  ``[N, hidden_size]`` (post-layernorm class token; this port has no projection head, so these
  are not CLIP's projected image embeddings). Runs in fixed-size, zero-padded batches."""
  import jax.numpy as jnp
  from flax import nnx

  from pose_jax.models.encoders.image_preprocess import preprocess

  size = encoder.cfg.image_size
  kwargs = preprocess_kwargs or {"shortest_edge": size, "crop_size": (size, size)}
  pooled = nnx.jit(lambda enc, pixels: enc.pooled(pixels))

  def feature_fn(frames: np.ndarray) -> np.ndarray:
    pixels = preprocess(to_uint8(np.asarray(frames)), **kwargs)
    out = []
    for i in range(0, len(pixels), batch_size):
      chunk = pixels[i : i + batch_size]
      padded = np.zeros((batch_size, *chunk.shape[1:]), chunk.dtype)
      padded[: len(chunk)] = chunk
      out.append(np.asarray(pooled(encoder, jnp.asarray(padded)))[: len(chunk)])
    return np.concatenate(out)

  return feature_fn
