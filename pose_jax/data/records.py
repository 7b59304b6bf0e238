"""ArrayRecord shards of examples, and the grain input pipeline over them (or any source).

A dataset directory holds::

  shard-00000.array_record ...   one np.savez example per record (pose_jax.data.example)
  meta.json                      num_examples, shard names, field shapes, + what wrote them
  neg_text.npy                   float32 [S, Dt]: the negative prompt's tokens (optional)

The pipeline (grain ``MapDataset`` API)::

  source -> seed -> [shuffle] -> [repeat] -> decode
         -> batch(per-process batch size, drop_remainder) -> [batches i::n] -> + neg_text
         -> threads/prefetch

All processes shuffle the same global order; process ``i`` of ``n`` takes every ``n``-th
per-process batch starting at ``i``. So global batch ``k`` (the per-process batches of step
``k`` in process order) is exactly batch ``k`` of a single process with ``n`` times the batch
size: a run's data do not depend on how many hosts read them, and every process takes the same
number of steps. ``shuffle`` before ``repeat`` gives a new order each epoch (grain reseeds per
epoch), deterministic given ``seed``. The iterator's
``get_state()`` / ``set_state()`` (and ``grain.checkpoint.CheckpointSave/Restore`` in an orbax
``CheckpointManager``) resume it exactly. Batches are dicts of numpy arrays with a leading batch
axis: ``latents cond image text text_mask neg_text``; ``caption`` / ``key`` (numpy str arrays)
only with ``with_strings=True``.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from pose_jax.data import bucket
from pose_jax.data.example import (
  MASK_CHANNELS,
  STRING_FIELDS,
  decode_example,
  encode_example,
  shapes,
  validate,
)
from pose_jax.paths import ARRAY_RECORD, ARRAY_RECORD_FIX, local_only

META = "meta.json"
NEG_TEXT = "neg_text.npy"
SUFFIX = ".array_record"


# --- writing ----------------------------------------------------------------------------------
class ShardWriter:
  """Writes examples to ``<out_dir>/<prefix>-00000.array_record, ...``, ``shard_size`` each;
  every example must have the first one's shapes (so that batches stack)."""

  def __init__(
    self,
    out_dir: str,
    shard_size: int = 256,
    prefix: str = "shard",
    compress: bool = False,
    float_dtype: str = "float32",
  ):
    if shard_size < 1:
      raise ValueError(f"shard_size={shard_size} must be >= 1")
    local_only(out_dir, "shard directory", ARRAY_RECORD, "write them locally, then copy them")
    os.makedirs(out_dir, exist_ok=True)
    self.out_dir, self.shard_size, self.prefix = out_dir, shard_size, prefix
    self.compress, self.float_dtype = compress, float_dtype
    self.shards: list[str] = []
    self.count = 0
    self.shapes: dict[str, list[int]] | None = None
    self._writer = None

  def write(self, example: Mapping[str, Any]) -> None:
    from array_record.python import array_record_module as arm

    ex = validate(example)
    if self.shapes is None:
      self.shapes = shapes(ex)
    elif shapes(ex) != self.shapes:
      raise ValueError(f"example {ex['key']!r} has shapes {shapes(ex)}, dataset has {self.shapes}")
    if self.count % self.shard_size == 0:
      self._close_shard()
      name = f"{self.prefix}-{len(self.shards):05d}{SUFFIX}"
      self._writer = arm.ArrayRecordWriter(os.path.join(self.out_dir, name), "group_size:1")
      self.shards.append(name)
    self._writer.write(encode_example(ex, self.compress, self.float_dtype))
    self.count += 1

  def _close_shard(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def close(self, neg_text: np.ndarray | None = None, **info: Any) -> dict[str, Any]:
    """Closes the last shard, writes ``neg_text.npy`` and ``meta.json`` (``info`` merged in)."""
    self._close_shard()
    if neg_text is not None:
      np.save(os.path.join(self.out_dir, NEG_TEXT), np.asarray(neg_text, np.float32))
    meta = {
      "num_examples": self.count,
      "shards": self.shards,
      "sha256": {s: bucket.sha256(os.path.join(self.out_dir, s)) for s in self.shards},
      "shapes": self.shapes,
      "neg_text": NEG_TEXT if neg_text is not None else None,
      "stored_float_dtype": self.float_dtype,
      **info,
    }
    with open(os.path.join(self.out_dir, META), "w") as f:
      json.dump(meta, f, indent=2)
    return meta


def write_dataset(
  out_dir: str,
  examples: Iterable[Mapping[str, Any]],
  shard_size: int = 256,
  neg_text: np.ndarray | None = None,
  compress: bool = False,
  float_dtype: str = "float32",
  **info: Any,
) -> dict[str, Any]:
  """Writes all ``examples`` as shards + meta; returns the meta dict."""
  writer = ShardWriter(out_dir, shard_size, compress=compress, float_dtype=float_dtype)
  for ex in examples:
    writer.write(ex)
  return writer.close(neg_text, **info)


def read_meta(data_dir: str) -> dict[str, Any]:
  _local(data_dir, "dataset directory")
  with open(os.path.join(data_dir, META)) as f:
    return json.load(f)


# --- sources ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SyntheticSource:
  """Random examples of the given shapes, deterministic per ``(seed, index)``; no files.

  Defaults are the toy run's shapes (5 frames of 32 px through the toy codec at factor 2:
  16 x 16 latents of Z = 12; 16 text tokens).

  ``cond`` is consistent with the real layout: mask ones on latent frame 0, and latent frame 0
  of ``latents`` as the condition (later frames zero). ``text`` rows past a random length are
  zero, as the real prompt encoding leaves them.
  """

  num_examples: int = 64
  latent_shape: tuple[int, int, int, int] = (5, 16, 16, 12)  # [N, h, w, Z]: the toy run's
  image_shape: tuple[int, int] = (17, 32)  # [M, Di]
  text_shape: tuple[int, int] = (16, 32)  # [S, Dt]
  seed: int = 0

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index: int) -> dict[str, Any]:
    if not 0 <= index < self.num_examples:
      raise IndexError(f"index {index} out of range [0, {self.num_examples})")
    rng = np.random.default_rng([self.seed, index])
    latents = rng.standard_normal(self.latent_shape, np.float32)
    n, h, w, z = self.latent_shape
    cond = np.zeros((n, h, w, MASK_CHANNELS + z), np.float32)
    cond[0, ..., :MASK_CHANNELS] = 1.0
    cond[0, ..., MASK_CHANNELS:] = latents[0]
    s = self.text_shape[0]
    length = int(rng.integers(1, s + 1))
    text = rng.standard_normal(self.text_shape, np.float32)
    text[length:] = 0.0
    return {
      "latents": latents,
      "cond": cond,
      "image": rng.standard_normal(self.image_shape, np.float32),
      "text": text,
      "text_mask": (np.arange(s) < length).astype(np.int32),
      "caption": f"synthetic example {index}",
      "key": f"synthetic/{index}",
    }

  @property
  def neg_text(self) -> np.ndarray:
    """The 'empty prompt': one token (the end-of-sequence token's embedding), then zeros."""
    out = np.zeros(self.text_shape, np.float32)
    out[0] = np.random.default_rng([self.seed, 2**31]).standard_normal(self.text_shape[1])
    return out


def _local(path: str, what: str) -> str:
  return local_only(path, what, ARRAY_RECORD, ARRAY_RECORD_FIX)


def shard_paths(paths: str | Sequence[str]) -> list[str]:
  """A dataset directory, a glob, or a list of shard paths -> sorted shard paths; never empty
  (FileNotFoundError naming the directory or glob); :class:`pose_jax.paths.LocalOnly` for a
  ``gs://`` path."""
  for p in [paths] if isinstance(paths, str) else paths:
    _local(p, "ArrayRecord shards")
  if isinstance(paths, str):
    if os.path.isdir(paths):
      if os.path.isfile(os.path.join(paths, META)):
        found = [os.path.join(paths, s) for s in read_meta(paths)["shards"]]
      else:
        found = sorted(glob.glob(os.path.join(glob.escape(paths), "*" + SUFFIX)))
      if not found:
        raise FileNotFoundError(
          f"{paths} holds no ArrayRecord shards (was `prepare` run? did it write 0 examples?)"
        )
      return found
    found = sorted(glob.glob(paths))
    if not found:
      raise FileNotFoundError(f"no ArrayRecord shards match {paths!r}")
    return found
  if not paths:
    raise FileNotFoundError("an empty list of ArrayRecord shards")
  return list(paths)


def open_source(source: Any) -> tuple[Any, np.ndarray | None]:
  """``(random-access source, neg_text or None)``. ``source`` is a dataset directory, a glob or
  list of shards (``neg_text.npy`` is looked up next to the first shard), or any object with
  ``__len__`` / ``__getitem__`` (``neg_text`` taken from its attribute of that name, if any)."""
  if isinstance(source, str) or (
    isinstance(source, Sequence) and all(isinstance(p, str) for p in source)
  ):
    paths = shard_paths(source)
    neg_path = os.path.join(os.path.dirname(paths[0]), NEG_TEXT)
    neg = np.load(neg_path).astype(np.float32) if os.path.isfile(neg_path) else None
    return grain.sources.ArrayRecordDataSource(paths), neg
  neg = getattr(source, "neg_text", None)
  return source, None if neg is None else np.asarray(neg, np.float32)


# --- the pipeline -----------------------------------------------------------------------------
def _to_example(record: Any, with_strings: bool) -> dict[str, Any]:
  ex = decode_example(record) if isinstance(record, bytes) else validate(record)
  if not with_strings:
    for k in STRING_FIELDS:
      ex.pop(k)
  return ex


def _add_neg_text(batch: dict[str, Any], neg_text: np.ndarray) -> dict[str, Any]:
  b = batch["text"].shape[0]
  return {
    **batch,
    "neg_text": np.ascontiguousarray(np.broadcast_to(neg_text, (b, *neg_text.shape))),
  }


def _process() -> tuple[int, int]:
  import jax

  return jax.process_index(), jax.process_count()


def make_dataset(
  source: Any,
  batch_size: int,
  seed: int = 0,
  *,
  shuffle: bool = True,
  repeat: bool = True,
  shard_by_process: bool = True,
  process_index: int | None = None,
  process_count: int | None = None,
  num_threads: int = 4,
  prefetch: int = 8,
  num_workers: int = 0,
  with_strings: bool = False,
) -> grain.IterDataset:
  """The pipeline as a grain ``IterDataset`` (see the module docstring).

  ``batch_size`` is per process. ``process_index`` / ``process_count`` default to JAX's (pass
  them to simulate several hosts). ``num_workers > 0`` adds grain multiprocessing
  (``mp_prefetch``); outside ``absl.app.run`` call ``flags.FLAGS.mark_as_parsed()`` first.
  """
  src, neg_text = open_source(source)
  ds = grain.MapDataset.source(src)
  process_index, process_count = (0, 1) if not shard_by_process else (process_index, process_count)
  if process_index is None or process_count is None:
    process_index, process_count = _process()
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, {process_count})")
  global_batch = batch_size * process_count
  if len(ds) < global_batch:
    raise ValueError(
      f"{len(ds)} examples, fewer than batch_size={batch_size} x {process_count} process(es)"
    )
  ds = ds.seed(seed)
  if shuffle:
    ds = ds.shuffle()
  if repeat:
    ds = ds.repeat()
  else:  # whole global batches only, so every process takes the same number of steps
    ds = ds[: len(ds) // global_batch * global_batch]
  ds = ds.map(functools.partial(_to_example, with_strings=with_strings))
  ds = ds.batch(batch_size, drop_remainder=True)
  if process_count > 1:
    ds = ds[process_index::process_count]
  if neg_text is not None:
    ds = ds.map(functools.partial(_add_neg_text, neg_text=neg_text))
  out = ds.to_iter_dataset(
    grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
  )
  if num_workers > 0:
    out = out.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return out


def make_iterator(source: Any, batch_size: int, seed: int = 0, **kw: Any) -> grain.DatasetIterator:
  """``iter(make_dataset(...))``: yields batch dicts of numpy arrays; checkpointable
  (``get_state`` / ``set_state``, ``grain.checkpoint.CheckpointSave/Restore``)."""
  return iter(make_dataset(source, batch_size, seed, **kw))


__all__ = [
  "META",
  "NEG_TEXT",
  "ShardWriter",
  "SyntheticSource",
  "make_dataset",
  "make_iterator",
  "open_source",
  "read_meta",
  "shard_paths",
  "write_dataset",
]
