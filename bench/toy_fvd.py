"""Does the toy FVD (``pose_jax.evaluators.frechet``) tell real clips from bad ones?

  python bench/toy_fvd.py [--crops=6] [--steps=300] [--features=64] [--eval_crops=16]

Trains a VideoNet to name the camera move of toy clips of the train photos (every move,
``--crops`` random crops per photo x move, 32 px, 5 frames), reports its move accuracy on the
held-out photos, then the Fréchet distance of held-out real clips (seed 1) against: a second
draw of real clips (seed 2, new crops of the same photos), static copies (frame 0 repeated),
time-reversed, frame-shuffled, Gaussian noise, a 50/50 mix of real and static, and clips of the
train photos. Two real sets: every move (balanced, so reversal maps it onto itself: pan_left
<-> pan_right, zoom_in <-> zoom_out) and one-way moves (pan_left, pan_up, zoom_in). The same
distances in an untrained (random-init) net's features are the baseline. Prints and writes
bench/results/toy_fvd.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ONE_WAY = ("pan_left", "pan_up", "zoom_in")


def main():
  import numpy as np
  from flax import nnx

  from pose_jax.data import toy
  from pose_jax.evaluators import frechet as fr

  ap = argparse.ArgumentParser()
  ap.add_argument("--size", type=int, default=32)
  ap.add_argument("--frames", type=int, default=5)
  ap.add_argument("--crops", type=int, default=6, help="train crops per photo x move")
  ap.add_argument("--eval_crops", type=int, default=16, help="held-out crops per photo x move")
  ap.add_argument("--steps", type=int, default=300)
  ap.add_argument("--batch_size", type=int, default=32)
  ap.add_argument("--lr", type=float, default=3e-3)
  ap.add_argument("--features", type=int, default=64)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "toy_fvd.json"))
  args = ap.parse_args()
  t_start = time.perf_counter()
  moves = list(toy.MOVES)
  photos = {p: toy.load_photo(p) for p in toy.PHOTOS}
  train_photos = [p for p in toy.PHOTOS if p not in toy.HOLDOUT]

  def clips(names, mv, crops, seed):
    xs, ys = [], []
    for p in names:
      for m in mv:
        for c in range(crops):
          rng = np.random.default_rng([seed, list(toy.PHOTOS).index(p), moves.index(m), c])
          xs.append(toy.camera_clip(photos[p], m, args.size, args.frames, rng))
          ys.append(moves.index(m))
    return np.stack(xs).astype(np.float32) / 255.0, np.array(ys)

  x, y = clips(train_photos, moves, args.crops, seed=100)
  t0 = time.perf_counter()
  net = fr.train_video_net(
    x, y, len(moves), steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
    features=args.features,
  )  # fmt: skip
  train_wall = time.perf_counter() - t0
  untrained = fr.VideoNet(len(moves), features=args.features, rngs=nnx.Rngs(args.seed))

  hx, hy = clips(toy.HOLDOUT, moves, args.eval_crops, seed=1)
  pred = np.argmax(np.asarray(net(hx)), -1)
  per_move = {m: float(np.mean(pred[hy == i] == i)) for i, m in enumerate(moves)}
  confusions = {}
  for t, p in zip(hy, pred):
    if t != p:
      key = f"{moves[t]}->{moves[p]}"
      confusions[key] = confusions.get(key, 0) + 1

  sets = {}
  for name, mv in (("all_moves", moves), ("one_way_moves", ONE_WAY)):
    crops = args.eval_crops * len(moves) // len(mv)  # about the same number of clips
    real, _ = clips(toy.HOLDOUT, mv, crops, seed=1)
    others = {"real_second_draw": clips(toy.HOLDOUT, mv, crops, seed=2)[0]}
    others.update(fr.degraded_videos(others["real_second_draw"], np.random.default_rng(3)))
    n_train = max(1, -(-len(real) // (len(train_photos) * len(mv))))
    others["train_photos"] = clips(train_photos, mv, n_train, seed=2)[0]  # >= len(real) clips
    row = {"moves": list(mv), "clips": len(real)}
    for label, model in (("fd", net), ("fd_untrained_net", untrained)):
      f_real = fr.video_features(model, real)
      fds = {k: fr.frechet_distance(f_real, fr.video_features(model, v)) for k, v in others.items()}
      row[label] = {k: float(f"{v:.4g}") for k, v in fds.items()}
      row[label + "_over_real"] = {
        k: round(v / fds["real_second_draw"], 2) for k, v in fds.items() if k != "real_second_draw"
      }
    row["order"] = sorted(row["fd"], key=row["fd"].get)
    sets[name] = row

  out = {
    "command": "python " + " ".join(["bench/toy_fvd.py", *sys.argv[1:]]) + "; CPU (2 cores shared)",
    "training": {
      "train_photos": train_photos,
      "clips": len(x),
      "size": args.size,
      "frames": args.frames,
      "crops": args.crops,
      "steps": args.steps,
      "batch_size": args.batch_size,
      "lr": args.lr,
      "features": args.features,
      "seed": args.seed,
      "train_wall_s": round(train_wall, 1),
    },
    "held_out_photos": list(toy.HOLDOUT),
    "held_out_clips": len(hx),
    "held_out_accuracy": round(float(np.mean(pred == hy)), 4),
    "chance": round(1 / len(moves), 4),
    "per_move_accuracy": {k: round(v, 3) for k, v in per_move.items()},
    "confusions": dict(sorted(confusions.items(), key=lambda kv: -kv[1])),
    "sets": sets,
    "wall_s": round(time.perf_counter() - t_start, 1),
  }
  text = json.dumps(out, indent=1)
  print(text)
  with open(args.out, "w") as f:
    f.write(text + "\n")


if __name__ == "__main__":
  main()
