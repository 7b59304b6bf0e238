"""The training data a config names: ``from_config(config, workdir) -> (iterator, eval_batch)``.

``config.data.kind``:
  toy      toy clips built under ``<workdir>/data/{train,eval}`` (per process when there are
           several: deterministic, so each builds its own copy and nothing races); built again
           when the config asks for another ``data.size`` / ``data.frames`` / ``seed`` than the
           clips there were built with (or another ``data.clips_per_move`` / ``data.flips``,
           where the config has them), or when they were made by another toy codec version or
           factor (their ``meta.json`` records all of them). With a ``gs://`` workdir they are
           built on local disk instead, under ``$TMPDIR/pose_jax_toy_data/gs/<bucket>/<path>``
           (:func:`toy_root`): array_record reads shards only from local files, and the clips
           are a deterministic function of the config, so a local copy loses nothing
  records  ArrayRecord shards at ``config.data.path``; held-out shards at ``data.eval_path``;
           ValueError when their ``meta.json`` records other frames / height / width than
           ``config.data`` asks (``height`` / ``width`` 0: not checked);
           ``gs://`` shards are read from a checked local copy in ``config.data.cache_dir``
           (:mod:`pose_jax.data.bucket`: array_record reads local files only)

The iterator yields this process's share of ``config.train.batch_size`` (numpy dicts) and is
checkpointable (grain). The eval batch is up to 8 held-out examples (toy data: every held-out
clip), with their ``caption`` and ``key`` strings (a toy key names the camera move), the same
on every process, or ``None`` when there is no eval set.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile

import jax
import ml_collections

from pose_jax import paths
from pose_jax.data import bucket, records
from pose_jax.data.toy_codec import ToyCodec

EVAL_EXAMPLES = 8
# toy-only config.data keys (configs/toy_i2v.py adds them)
TOY_KEYS = ("clips_per_move", "flips", "footage", "pan_speed")
BUILDING = ".building-"  # <root>.building-XXXX: a toy build in progress (or an interrupted one)
# config.data key -> what the shards hold, given the value their meta.json records
KEYS = {"frames": "{} frames", "height": "frames {} px high", "width": "frames {} px wide"}


class DataMismatch(ValueError):
  """``config.data`` contradicts what the shards at ``data.path`` were prepared with."""


def from_config(config: ml_collections.ConfigDict, workdir: str) -> tuple:
  """``(train iterator, eval batch | None)`` for ``config.data``."""
  per_process = config.train.batch_size // jax.process_count()
  if config.data.kind == "toy":
    root = toy_root(workdir)
    if jax.process_count() > 1:
      root = os.path.join(root, f"process_{jax.process_index()}")
    toy_keys = {k: config.data[k] for k in TOY_KEYS if k in config.data}
    ensure_toy_data(
      root,
      ToyCodec.from_config(config.data),
      size=config.data.size,
      frames=config.data.frames,
      seed=config.seed,
      **toy_keys,
    )
    train_dir, eval_dir = os.path.join(root, "train"), os.path.join(root, "eval")
  else:
    train_dir, eval_dir = (  # gs://: a checked local copy (pose_jax.data.bucket)
      bucket.local_or_fetched(p, config.data.get("cache_dir", "")) if p else p
      for p in (config.data.path, config.data.eval_path)
    )
    for path in (train_dir, eval_dir):
      check_records(config.data, path)
  iterator = records.make_iterator(train_dir, per_process, seed=config.seed)
  eval_batch = None
  if eval_dir and os.path.exists(os.path.join(eval_dir, records.META)):
    toy, n = config.data.kind == "toy", records.read_meta(eval_dir)["num_examples"]
    n = n if toy else min(EVAL_EXAMPLES, n)
    eval_it = records.make_iterator(
      eval_dir, n, shuffle=False, shard_by_process=False, with_strings=True
    )
    eval_batch = next(eval_it)
    eval_it.close()  # else its threads read (prefetch) on in the background
  return iterator, eval_batch


def toy_root(workdir: str) -> str:
  """Where the toy clips of ``workdir`` live: ``<workdir>/data``, or for a remote workdir
  (``gs://b/run``) the local ``$TMPDIR/pose_jax_toy_data/gs/b/run/data``."""
  if not paths.is_remote(workdir):
    return os.path.join(workdir, "data")
  scheme, rest = os.fspath(workdir).split("://", 1)
  return os.path.join(tempfile.gettempdir(), "pose_jax_toy_data", scheme, rest.strip("/"), "data")


def ensure_toy_data(root: str, codec: ToyCodec, **built_with) -> bool:
  """Builds the toy clips in ``root`` unless its ``train/meta.json`` records ``built_with``
  (``size``, ``frames``, ``seed``: every argument of ``toy.build_dataset`` a config sets) and
  ``codec.meta()`` (its version, factor and condition); returns whether it built. A build is
  written beside ``root`` and renamed into place when complete, so an interrupted one is never
  taken for valid data."""
  want = {**built_with, **codec.meta()}
  meta_path = os.path.join(root, "train", records.META)
  meta = records.read_meta(os.path.join(root, "train")) if os.path.isfile(meta_path) else None
  if meta is not None:
    have = {k: meta.get(k) for k in want}
    if have == want:
      return False
    shown = [k for k in ("size", "frames") if k in want]
    shown += [k for k in want if k not in shown and have[k] != want[k]]
    fmt = lambda d: " ".join(f"{k}={d[k]}" for k in shown)
    msg = f"data: {root} was built with {fmt(have)}; config asks {fmt(want)}: rebuilding"
    print(msg, flush=True)
  else:
    args = ", ".join(f"{k}={v}" for k, v in built_with.items())
    print(f"data: building toy clips in {root} ({args})", flush=True)
  from pose_jax.data import toy  # scikit-image and the encoders: only for toy data

  parent, name = os.path.split(os.path.abspath(root))
  for stale in glob.glob(os.path.join(glob.escape(parent), glob.escape(name) + BUILDING + "*")):
    shutil.rmtree(stale, ignore_errors=True)  # left by an interrupted build
  tmp, old = (os.path.join(parent, f"{name}{BUILDING}{s}{os.getpid()}") for s in ("", "old-"))
  try:
    toy.build_dataset(tmp, codec=codec, **built_with)
    if os.path.exists(root):  # old data out of the way first: root is then absent, not stale
      os.rename(root, old)
    os.rename(tmp, root)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
  return True


def check_records(data: ml_collections.ConfigDict, path: str) -> None:
  """:class:`DataMismatch` naming the ``config.data`` key whose value the shards' meta
  contradicts."""
  if not path or not os.path.isfile(os.path.join(path, records.META)):
    return
  meta = records.read_meta(path)
  have = {k: meta.get(k, meta.get("size") if k in ("height", "width") else None) for k in KEYS}
  bad = [
    f"config.data.{k}={data[k]} but the shards at {path} hold {KEYS[k].format(have[k])}"
    for k in KEYS
    if have[k] is not None and data.get(k) and data[k] != have[k]
  ]
  if bad:
    raise DataMismatch("; ".join(bad))
