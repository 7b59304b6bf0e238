"""Can the toy text encoder tell the camera moves apart? (issue 16)

  python bench/toy_text.py

Encodes every toy caption (18 photos x 7 moves) with the tiny random UMT5 of the toy data and
prints: the cosine similarity of the move word's output row between photos, for the same move
and for different moves; how often a nearest-centroid rule on the mean-pooled tokens names the
move; the cosine distance of whole token sequences between two moves of one photo and between
two photos with one move. Writes bench/results/toy_text.json.
"""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main():
  import numpy as np

  from pose_jax.data import toy

  enc = toy.ToyEncoders.create(0)
  moves, photos = list(toy.MOVES), list(toy.PHOTOS)
  text, mask = enc.encode_text([toy.caption(p, m) for p in photos for m in moves])
  n = mask.sum(1)
  word = np.stack([text[i, n[i] - 2] for i in range(len(text))])  # the last word before </s>
  word = (word / np.linalg.norm(word, axis=-1, keepdims=True)).reshape(len(photos), 7, -1)
  sims = np.einsum("pmd,qnd->mnpq", word, word)
  off = ~np.eye(len(photos), dtype=bool)
  same = float(np.mean([sims[m, m][off].mean() for m in range(7)]))
  other = float(np.mean([sims[m, k].mean() for m in range(7) for k in range(7) if m != k]))
  pool = np.stack([text[i, : n[i]].mean(0) for i in range(len(text))])
  pool = pool.reshape(len(photos), 7, -1)
  centres = pool.mean(0)
  pred = np.argmin(((pool[:, :, None] - centres[None, None]) ** 2).sum(-1), -1)
  seq = text.reshape(len(photos), 7, -1)
  seq = seq / np.linalg.norm(seq, axis=-1, keepdims=True)
  d_moves = 1 - np.mean(
    [seq[p, a] @ seq[p, b] for p in range(len(photos)) for a in range(7) for b in range(a + 1, 7)]
  )
  d_photos = 1 - np.mean(
    [
      seq[p, m] @ seq[q, m]
      for m in range(7)
      for p in range(len(photos))
      for q in range(p + 1, len(photos))
    ]
  )
  out = {
    "move_word_cos_same_move": round(same, 3),
    "move_word_cos_other_moves": round(other, 3),
    "nearest_centroid_move_accuracy": round(float((pred == np.arange(7)).mean()), 3),
    "sequence_cos_distance_between_moves": round(float(d_moves), 3),
    "sequence_cos_distance_between_photos": round(float(d_photos), 3),
  }
  print(json.dumps(out, indent=1))
  with open(os.path.join(ROOT, "bench", "results", "toy_text.json"), "w") as f:
    json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
