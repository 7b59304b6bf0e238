"""The training data a config names: ``from_config(config, workdir) -> (iterator, eval_batch)``.

``config.data.kind``:
  toy      toy clips built once under ``<workdir>/data/{train,eval}`` (per process when there are
           several: deterministic, so each builds its own copy and nothing races)
  records  ArrayRecord shards at ``config.data.path``; held-out shards at ``data.eval_path``

The iterator yields this process's share of ``config.train.batch_size`` (numpy dicts) and is
checkpointable (grain). The eval batch is up to 8 held-out examples, the same on every process,
or ``None`` when there is no eval set.
"""

from __future__ import annotations

import os

import jax
import ml_collections

from pose_jax.data import records

EVAL_EXAMPLES = 8


def from_config(config: ml_collections.ConfigDict, workdir: str) -> tuple:
  """``(train iterator, eval batch | None)`` for ``config.data``."""
  per_process = config.train.batch_size // jax.process_count()
  if config.data.kind == "toy":
    from pose_jax.data import toy  # scikit-image and the encoders: only for toy data

    root = os.path.join(workdir, "data")
    if jax.process_count() > 1:
      root = os.path.join(root, f"process_{jax.process_index()}")
    if not os.path.exists(os.path.join(root, "train", records.META)):
      toy.build_dataset(root, size=config.data.size, frames=config.data.frames, seed=config.seed)
    train_dir, eval_dir = os.path.join(root, "train"), os.path.join(root, "eval")
  else:
    train_dir, eval_dir = config.data.path, config.data.eval_path
  iterator = records.make_iterator(train_dir, per_process, seed=config.seed)
  eval_batch = None
  if eval_dir and os.path.exists(os.path.join(eval_dir, records.META)):
    n = min(EVAL_EXAMPLES, records.read_meta(eval_dir)["num_examples"])
    eval_batch = next(records.make_iterator(eval_dir, n, shuffle=False, shard_by_process=False))
  return iterator, eval_batch
