"""A toy FVD: the Fréchet distance between sets of videos in the features of a small video net.

FVD (Unterthiner et al. 2018) fits a Gaussian to each set's features in a pretrained video
network (I3D) and reports the Fréchet distance between the two Gaussians:
  FD = ||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 sqrtm(C_a C_b))      C: covariance, ddof=1
Real I3D weights are a download, so :class:`VideoNet` is a tiny 3-D conv net trained here, on
real clips, to name their camera move (:func:`train_video_net`); its pooled activations before
the classifier head are the features. Since it must tell motions apart, its features see
direction and time: frozen, reversed, shuffled or noise videos land away from real clips.

Design:
  VideoNet   x in [0, 1] -> 2x - 1 -> 3 x (TimeConv 3x3x3, stride 1 in time / 2 in space, gelu)
             -> mean over (T, H, W) -> features [B, F] -> Linear -> logits [B, classes]
  training   softmax cross-entropy, optax.adam, fixed-seed init and batches (deterministic);
             a functional nnx.split / merge step under jax.jit
  features   jitted once per net shape, fixed-size batches (the last one padded), float64 out
The distance is a biased estimator: two draws of the same distribution give FD > 0 that falls
with N, so compare sets of equal size, and use N well above F for a stable covariance. It is
unconditional: a set balanced over opposite moves (pan_left and pan_right, ...) is its own time
reversal, so reversing it costs nothing; reversal shows only on sets of one-way moves.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.linalg
from flax import nnx

__all__ = [
  "TimeConv",
  "VideoNet",
  "degraded_videos",
  "frechet_distance",
  "fvd",
  "train_video_net",
  "video_features",
]


def _check_features(x, name: str) -> np.ndarray:
  arr = np.asarray(x, dtype=np.float64)
  if arr.ndim != 2:
    raise ValueError(f"frechet_distance: {name} must be 2-D [N, F], got shape {arr.shape}")
  if arr.shape[0] < 2:
    raise ValueError(
      f"frechet_distance: {name} needs at least 2 rows for a covariance, got shape {arr.shape}"
    )
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"frechet_distance: {name} has non-finite values (nan or inf)")
  return arr


def frechet_distance(a, b) -> float:
  """Fréchet distance between Gaussians fitted to feature sets ``a [N, F]`` and ``b [M, F]``."""
  a, b = _check_features(a, "a"), _check_features(b, "b")
  if a.shape[1] != b.shape[1]:
    raise ValueError(
      f"frechet_distance: a and b have different feature sizes, shapes {a.shape} and {b.shape}"
    )
  mu_a, mu_b = a.mean(0), b.mean(0)
  ca = np.atleast_2d(np.cov(a, rowvar=False, ddof=1))
  cb = np.atleast_2d(np.cov(b, rowvar=False, ddof=1))
  covmean = scipy.linalg.sqrtm(ca @ cb)
  if not np.all(np.isfinite(covmean)):  # near-singular product: offset both (as pytorch-fid)
    eps = 1e-6 * np.eye(len(ca))
    covmean = scipy.linalg.sqrtm((ca + eps) @ (cb + eps))
  d = np.sum((mu_a - mu_b) ** 2) + np.trace(ca) + np.trace(cb) - 2.0 * np.trace(covmean).real
  return float(max(d, 0.0))


# --- the video network ---------------------------------------------------------------------
class TimeConv(nnx.Module):
  """A 3x3x3 conv (SAME, stride 1 in time, ``stride`` in space) on ``[B, T, H, W, C]``, computed
  as one 2-D 3x3 conv over frames t-1, t, t+1 stacked on channels (zeros past either end). Equal
  to ``nnx.Conv`` with kernel (3, 3, 3), whose 3-D convolution XLA runs ~4-10x slower on CPU;
  :meth:`kernel_3d` gives the equivalent ``[3, 3, 3, C, out]`` (T, H, W) kernel."""

  def __init__(self, in_features: int, out_features: int, *, stride: int = 2, rngs: nnx.Rngs):
    self.in_features = in_features
    self.conv = nnx.Conv(
      3 * in_features, out_features, kernel_size=(3, 3), strides=stride, padding="SAME", rngs=rngs
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    b, t = x.shape[:2]
    p = jnp.pad(x, ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0)))
    h = jnp.concatenate([p[:, k : k + t] for k in range(3)], axis=-1)  # channels (dt, c)
    h = self.conv(h.reshape(b * t, *h.shape[2:]))
    return h.reshape(b, t, *h.shape[1:])

  def kernel_3d(self) -> jax.Array:
    k = self.conv.kernel[...].reshape(3, 3, 3, self.in_features, -1)  # (kh, kw, dt, c, out)
    return k.transpose(2, 0, 1, 3, 4)


class VideoNet(nnx.Module):
  """Tiny 3-D conv net on videos ``[B, T, H, W, 3]`` in [0, 1]: ``features`` -> ``[B, F]``."""

  def __init__(
    self,
    num_classes: int,
    *,
    features: int = 64,
    widths: tuple[int, ...] = (16, 32),
    rngs: nnx.Rngs,
  ):
    chans = (3, *widths, features)
    self.convs = nnx.List([TimeConv(i, o, rngs=rngs) for i, o in zip(chans[:-1], chans[1:])])
    self.head = nnx.Linear(features, num_classes, rngs=rngs)

  def features(self, x: jax.Array) -> jax.Array:
    h = 2.0 * jnp.asarray(x, jnp.float32) - 1.0
    for conv in self.convs:
      h = jax.nn.gelu(conv(h))
    return h.mean(axis=(1, 2, 3))

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.head(self.features(x))


def _check_videos(videos, fn: str, name: str = "videos") -> np.ndarray:
  """float32 ``[N, T, H, W, 3]`` in [0, 1] (uint8 is divided by 255)."""
  arr = np.asarray(videos)
  if arr.ndim != 5 or arr.shape[-1] != 3 or 0 in arr.shape:
    raise ValueError(f"{fn}: {name} must be non-empty [N, T, H, W, 3], got shape {arr.shape}")
  if arr.dtype == np.uint8:
    return arr.astype(np.float32) / 255.0
  if not np.issubdtype(arr.dtype, np.floating):
    raise ValueError(f"{fn}: {name} must be float in [0, 1] or uint8, got dtype {arr.dtype}")
  arr = arr.astype(np.float32)
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"{fn}: {name} has non-finite values (nan or inf)")
  return arr


def train_video_net(
  videos,
  labels,
  num_classes: int,
  *,
  steps: int = 300,
  batch_size: int = 32,
  lr: float = 3e-3,
  seed: int = 0,
  **net_kwargs,
) -> VideoNet:
  """A :class:`VideoNet` fitted to name ``labels`` (ints in [0, num_classes)) of ``videos``.

  ``videos``: ``[N, T, H, W, 3]`` float in [0, 1] (or uint8). Batches of ``batch_size`` are drawn
  without replacement per epoch from ``np.random.default_rng(seed)``; init uses ``seed`` too.
  ``net_kwargs`` go to :class:`VideoNet` (``features``, ``widths``)."""
  x = _check_videos(videos, "train_video_net")
  y = np.asarray(labels)
  if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"train_video_net: labels must be 1-D ints, got {y.dtype} {y.shape}")
  if len(y) != len(x):
    raise ValueError(f"train_video_net: {len(x)} videos but {len(y)} labels")
  if num_classes < 2:
    raise ValueError(f"train_video_net: num_classes must be >= 2, got {num_classes}")
  if y.min() < 0 or y.max() >= num_classes:
    raise ValueError(
      f"train_video_net: labels must lie in [0, {num_classes}), got [{y.min()}, {y.max()}]"
    )
  if steps < 1 or batch_size < 1:
    raise ValueError(
      f"train_video_net: steps and batch_size must be >= 1, got {steps}, {batch_size}"
    )
  net = VideoNet(num_classes, rngs=nnx.Rngs(seed), **net_kwargs)
  graphdef, params = nnx.split(net, nnx.Param)
  tx = optax.adam(lr)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, xb, yb):
    def loss_fn(p):
      logits = nnx.merge(graphdef, p)(xb)
      return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(seed)
  batch_size = min(batch_size, len(x))
  order, pos = rng.permutation(len(x)), 0
  for _ in range(steps):
    if pos + batch_size > len(x):
      order, pos = rng.permutation(len(x)), 0
    idx = order[pos : pos + batch_size]
    pos += batch_size
    params, opt_state, _ = step(params, opt_state, x[idx], y[idx].astype(np.int32))
  nnx.update(net, params)
  return net


@nnx.jit
def _features(net: VideoNet, x: jax.Array) -> jax.Array:
  return net.features(x)


def video_features(net: VideoNet, videos, batch_size: int = 64) -> np.ndarray:
  """``net.features`` of ``videos [N, T, H, W, 3]`` (float in [0, 1] or uint8) -> ``[N, F]``."""
  x = _check_videos(videos, "video_features")
  if batch_size < 1:
    raise ValueError(f"video_features: batch_size must be >= 1, got {batch_size}")
  batch_size = min(batch_size, len(x))
  out = []
  for i in range(0, len(x), batch_size):
    xb = x[i : i + batch_size]
    n = len(xb)
    if n < batch_size:  # pad: one compiled shape for every batch
      xb = np.concatenate([xb, np.zeros((batch_size - n, *xb.shape[1:]), xb.dtype)])
    out.append(np.asarray(_features(net, xb), dtype=np.float64)[:n])
  return np.concatenate(out)


def fvd(net: VideoNet, videos_a, videos_b) -> float:
  """Toy FVD: :func:`frechet_distance` of ``net``'s features of two video sets."""
  return frechet_distance(video_features(net, videos_a), video_features(net, videos_b))


def degraded_videos(real: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Known-bad versions of ``real`` ``[N, T, H, W, 3]`` in [0, 1], the sets a video metric is
  checked on: ``static`` (frame 0 repeated), ``reversed`` (time reversed: the opposite move),
  ``shuffled`` (each clip's frames in a random order other than their own), ``noise``
  (Gaussian around grey) and ``mix_real_static`` (every other clip static)."""
  shuffled = []
  for v in real:
    perm = rng.permutation(len(v))
    while np.all(perm == np.arange(len(v))):
      perm = rng.permutation(len(v))
    shuffled.append(v[perm])
  static = np.repeat(real[:, :1], real.shape[1], axis=1)
  mix = real.copy()
  mix[1::2] = static[1::2]
  return {
    "static": static,
    "reversed": real[:, ::-1],
    "shuffled": np.stack(shuffled),
    "noise": np.clip(0.5 + 0.25 * rng.standard_normal(real.shape), 0, 1).astype(np.float32),
    "mix_real_static": mix,
  }
