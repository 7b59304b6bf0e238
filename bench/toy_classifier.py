"""How often does ``evaluators.camera_move`` name the move of real toy clips?

  python bench/toy_classifier.py [--size=32] [--frames=5]

Every photo x move (one random crop each, seed 3), at the toy default's size and frames;
prints and writes bench/results/toy_classifier.json with the count named correctly and the misses.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main():
  import numpy as np

  from pose_jax.data import toy
  from pose_jax.evaluators import camera_move

  ap = argparse.ArgumentParser()
  ap.add_argument("--size", type=int, default=32)
  ap.add_argument("--frames", type=int, default=5)
  args = ap.parse_args()
  size, frames = args.size, args.frames
  ok, misses = 0, []
  for photo in toy.PHOTOS:
    image = toy.load_photo(photo)
    clips = [
      toy.camera_clip(image, m, size, frames, np.random.default_rng([3, i]))
      for i, m in enumerate(toy.MOVES)
    ]
    for move, found in zip(toy.MOVES, camera_move(np.stack(clips)).move):
      ok += found == move
      if found != move:
        misses.append(f"{photo}/{move}: {found}")
  out = {
    "size": size,
    "frames": frames,
    "correct": int(ok),
    "clips": len(toy.PHOTOS) * len(toy.MOVES),
    "misses": misses,
  }
  print(json.dumps(out))
  with open(os.path.join(ROOT, "bench", "results", "toy_classifier.json"), "w") as f:
    json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
