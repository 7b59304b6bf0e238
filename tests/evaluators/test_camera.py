"""The camera-move classifier on toy clips with a known answer, reversed clips, noise, fades."""

import numpy as np
import pytest

from pose_jax import evaluators as ev
from pose_jax.data import toy
from pose_jax.evaluators.camera import OPPOSITE

SIZE, FRAMES = 48, 9
PHOTOS = ("coffee", "motorcycle", "clock", "chelsea")  # the first three are held out


@pytest.fixture(scope="module")
def clips() -> dict[tuple[str, str], np.ndarray]:
  """uint8 toy clips ``[T, H, W, 3]`` for every photo and move, a random crop each."""
  out = {}
  for p in PHOTOS:
    image = toy.load_photo(p)
    for mi, move in enumerate(toy.MOVES):
      for c in range(1):
        rng = np.random.default_rng([7, list(toy.PHOTOS).index(p), mi, c])
        out[p, move, c] = toy.camera_clip(image, move, SIZE, FRAMES, rng)
  return out


def test_the_moves_are_the_toy_moves():
  assert ev.CAMERA_MOVES == tuple(toy.MOVES)


def test_names_the_move_of_every_toy_clip(clips):
  keys = list(clips)
  found = ev.camera_move(np.stack([clips[k] for k in keys]))
  wrong = [(k, f) for k, f in zip(keys, found.move) if f != k[1]]
  assert not wrong, wrong
  assert np.min(found.confidence) > 0.9 and np.min(found.fit) > 0.9
  moves = [k[1] for k in keys]
  assert ev.motion_accuracy(np.stack([clips[k] for k in keys]), moves) == 1.0


def test_directions_follow_the_toy_convention(clips):
  """'Pans left' = content slides right (+x), 'pans up' = content slides down (+y), 2 px/frame."""
  dy, dx = ev.camera_move(clips["coffee", "pan_left", 0]).velocity
  assert dx == pytest.approx(toy.pan_speed(SIZE), abs=0.1) and abs(dy) < 0.1
  dy, dx = ev.camera_move(clips["coffee", "pan_up", 0]).velocity
  assert dy == pytest.approx(toy.pan_speed(SIZE), abs=0.1) and abs(dx) < 0.1
  zoom = ev.camera_move(clips["coffee", "zoom_in", 0]).zoom
  assert zoom == pytest.approx(np.log(toy.ZOOM) / (FRAMES - 1), rel=0.15)


def test_static_copy_and_reversed_clips(clips):
  frame = clips["clock", "pan_left", 0][0]
  still = ev.camera_move(np.repeat(frame[None], FRAMES, axis=0))
  assert still.move == "static" and still.confidence == 1.0
  for move in toy.MOVES:
    got = ev.camera_move(clips["motorcycle", move, 0][::-1]).move
    assert got == OPPOSITE[move], (move, got)


def test_noise_and_cross_fades_are_not_confident_pans(clips):
  rng = np.random.default_rng(0)
  noise = ev.camera_move(rng.uniform(size=(FRAMES, SIZE, SIZE, 3)).astype(np.float32))
  assert noise.move == "none" and noise.confidence == 0.0 and noise.fit < 0.5
  # The old toy codec's decode: keyframes 0, 4, 8 of a pan, the frames between cross-faded.
  for move in ("pan_left", "pan_up", "zoom_in"):
    keys = clips["coffee", move, 0][::4].astype(np.float32) / 255
    a = np.linspace(0, 1, 5)[1:, None, None, None]
    fade = np.concatenate([keys[:1]] + [(1 - a) * k0 + a * k1 for k0, k1 in zip(keys, keys[1:])])
    assert len(fade) == FRAMES
    got = ev.camera_move(fade)
    assert got.move == "none" or got.confidence < 0.5, (move, got)


def test_bad_input_names_the_problem(clips):
  video = clips["coffee", "static", 0]
  with pytest.raises(ValueError, match="at least 2 frames"):
    ev.camera_move(video[:1])
  with pytest.raises(ValueError, match="2 moves for 1 videos"):
    ev.motion_accuracy(video[None], ["static", "static"])
  with pytest.raises(ValueError, match="unknown moves \\['spin'\\]"):
    ev.motion_accuracy(video[None], ["spin"])
  with pytest.raises(ValueError, match="must be \\[B, T, H, W, 3\\]"):
    ev.motion_accuracy(video, ["static"])
