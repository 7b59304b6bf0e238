"""One precomputed training example: schema, validation and (de)serialisation to bytes.

Legend: N latent frames (1 + (T - 1) / 4), h/w latent height/width, Z latent channels,
M image tokens, Di image width, S text tokens, Dt text width.

An example is a dict (no batch axis, channels-last):

  ==========  =======  ===============  ===================================================
  field       dtype    shape            meaning
  ==========  =======  ===============  ===================================================
  latents     float32  [N, h, w, Z]     normalised clip latents (the flow-matching target)
  cond        float32  [N, h, w, 4+Z]   first-frame mask (4 channels), then the normalised
                                        latent of the video [first frame, 0, ..., 0]
  image       float32  [M, Di]          image tokens (CLIP penultimate layer, first frame)
  text        float32  [S, Dt]          text tokens, rows past the prompt's length zero
  text_mask   int32    [S]              1 for the prompt's tokens, 0 for padding
  caption     str                       the prompt
  key         str                       where it came from (file name, toy clip id)
  ==========  =======  ===============  ===================================================

The negative-prompt tokens ``neg_text [S, Dt]`` are the same for every example, so they are
stored once per dataset (``neg_text.npy`` next to the shards, see :mod:`pose_jax.data.records`)
and added to each batch by the pipeline.

Bytes: ``np.savez`` (optionally ``savez_compressed``: padding rows of ``text`` and the zero
latent frames of ``cond`` compress well) of the numeric arrays plus the strings as 0-d unicode
arrays, read back with ``allow_pickle=False``. Float fields are stored as float32 (or float16,
``encode_example(..., float_dtype="float16")``, to halve the size) and always decode to float32.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Mapping
from typing import Any, NoReturn

import numpy as np

FLOAT_FIELDS = ("latents", "cond", "image", "text")
INT_FIELDS = ("text_mask",)
STRING_FIELDS = ("caption", "key")
NUMERIC_FIELDS = FLOAT_FIELDS + INT_FIELDS
FIELDS = NUMERIC_FIELDS + STRING_FIELDS
MASK_CHANNELS = 4  # the first-frame mask's channels (the VAE's temporal factor)
_RANKS = {"latents": 4, "cond": 4, "image": 2, "text": 2, "text_mask": 1}
_FLOAT_KINDS = ("float16", "float32", "float64", "bfloat16")  # accepted in memory
_STORED_FLOATS = ("float32", "float16")


class ExampleError(ValueError):
  """An example that does not follow the schema (the message names the field and the key)."""


def _fail(example: Mapping[str, Any], msg: str) -> NoReturn:
  key = example.get("key")
  where = f" (key={str(key)!r})" if key is not None else ""
  raise ExampleError(f"bad example{where}: {msg}")


def validate(example: Mapping[str, Any]) -> dict[str, Any]:
  """Checks fields, ranks, dtypes and the shapes that must agree; returns the canonical dict
  (float32 floats, int32 mask, ``str`` strings). Raises :class:`ExampleError`."""
  missing = [f for f in FIELDS if f not in example]
  extra = [f for f in example if f not in FIELDS]
  if missing or extra:
    _fail(example, f"missing field(s) {missing}, unknown field(s) {extra}; schema: {FIELDS}")
  out: dict[str, Any] = {}
  for name in STRING_FIELDS:
    value = example[name]
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind == "U":
      value = str(value)
    if not isinstance(value, str):
      _fail(example, f"{name} must be a string, got {type(value).__name__}")
    out[name] = value
  for name in NUMERIC_FIELDS:
    arr = np.asarray(example[name])
    if arr.ndim != _RANKS[name]:
      _fail(example, f"{name} must have rank {_RANKS[name]}, got shape {arr.shape}")
    if name in FLOAT_FIELDS and arr.dtype.name not in _FLOAT_KINDS:
      _fail(example, f"{name} must be float ({'/'.join(_FLOAT_KINDS)}), got {arr.dtype}")
    if name in INT_FIELDS and arr.dtype.kind not in "iub":
      _fail(example, f"{name} must be integer or bool, got {arr.dtype}")
    out[name] = arr.astype(np.float32 if name in FLOAT_FIELDS else np.int32, copy=False)
  lat, cond = out["latents"].shape, out["cond"].shape
  if cond[:3] != lat[:3] or cond[3] != lat[3] + MASK_CHANNELS:
    _fail(example, f"cond {cond} must be latents {lat} with {MASK_CHANNELS} more channels")
  if out["text_mask"].shape[0] != out["text"].shape[0]:
    _fail(example, f"text_mask {out['text_mask'].shape} does not match text {out['text'].shape}")
  return out


def encode_example(
  example: Mapping[str, Any], compress: bool = False, float_dtype: str = "float32"
) -> bytes:
  """Validated example -> ``np.savez`` bytes (float fields as ``float_dtype``)."""
  if float_dtype not in _STORED_FLOATS:
    raise ValueError(f"float_dtype={float_dtype!r} not in {_STORED_FLOATS}")
  ex = validate(example)
  arrays = {k: ex[k].astype(float_dtype) for k in FLOAT_FIELDS} | {"text_mask": ex["text_mask"]}
  arrays |= {k: np.asarray(ex[k]) for k in STRING_FIELDS}
  buf = io.BytesIO()
  (np.savez_compressed if compress else np.savez)(buf, **arrays)
  return buf.getvalue()


# numpy parses each .npy header with ``ast.literal_eval``; CPython 3.11's AST validator keeps its
# recursion depth per interpreter, so two threads parsing at once (grain's read threads) can fail
# with "AST constructor recursion depth mismatch" (seen in CI). Headers are parsed one at a time.
_NPY_HEADER_LOCK = threading.Lock()


def decode_example(data: bytes) -> dict[str, Any]:
  """``np.savez`` bytes -> validated example dict. Raises :class:`ExampleError`."""
  try:
    with _NPY_HEADER_LOCK, np.load(io.BytesIO(data), allow_pickle=False) as npz:
      example = {k: npz[k] for k in npz.files}
  except Exception as e:  # any parse failure is a bad record
    raise ExampleError(f"record is not an np.savez archive ({len(data)} bytes): {e}") from e
  return validate(example)


def shapes(example: Mapping[str, Any]) -> dict[str, list[int]]:
  """Shapes of the numeric fields (what ``meta.json`` records per dataset)."""
  return {k: list(np.shape(example[k])) for k in NUMERIC_FIELDS}


__all__ = [
  "FIELDS",
  "FLOAT_FIELDS",
  "INT_FIELDS",
  "NUMERIC_FIELDS",
  "STRING_FIELDS",
  "ExampleError",
  "decode_example",
  "encode_example",
  "shapes",
  "validate",
]
