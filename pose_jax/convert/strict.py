"""Strict matching of a source state dict against a model's parameters.

Every converter maps a source key to ``(target path, layer index | None, transform)``. This
module does the bookkeeping: it collects *all* problems (unexpected source keys, target
parameters never filled, shape mismatches) and raises one :class:`CheckpointError` listing them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import jax
import numpy as np
from flax import nnx

from pose_jax.convert.errors import CheckpointError

Path = tuple[str, ...]


class Target(NamedTuple):
  path: Path  # path in the flat nnx state, e.g. ('blocks', 'attn1', 'to_q', 'kernel')
  layer: int | None  # index into a stacked ('layers') leading axis, or None
  transform: Callable[[np.ndarray], np.ndarray]  # source layout -> target layout


def flat_shapes(abstract_state, variable_type=nnx.Param, exclude=()) -> dict[Path, tuple]:
  """``{path: ShapeDtypeStruct}`` of the parameters to fill (e.g. excluding LoRA params)."""
  out = {}
  for path, var in nnx.to_flat_state(abstract_state):
    if isinstance(var, variable_type) and not isinstance(var, tuple(exclude)):
      value = var.get_value() if hasattr(var, "get_value") else var
      out[tuple(str(p) for p in path)] = value
  return out


def fill(
  items: Iterable[tuple[str, np.ndarray]],
  targets: dict[Path, jax.ShapeDtypeStruct],
  key_map: Callable[[str], Target | None],
  stacked: dict[Path, int],
  dtype=None,
) -> dict[Path, np.ndarray]:
  """Places every source tensor into numpy buffers shaped like ``targets``.

  Args:
    items: ``(source key, array)`` pairs, read one at a time.
    targets: the parameters to fill, from :func:`flat_shapes`.
    key_map: source key -> :class:`Target`, or None for a key the model has no place for.
    stacked: target paths with a leading layer axis -> number of layers.
    dtype: cast target buffers to this dtype (default: the target's dtype).

  Raises:
    CheckpointError listing unexpected, missing and mis-shaped keys.
  """
  buffers: dict[Path, np.ndarray] = {}
  seen: dict[Path, set] = {}
  unexpected, mismatched = [], []
  for key, value in items:
    tgt = key_map(key)
    if tgt is None or tgt.path not in targets:
      unexpected.append(key)
      continue
    spec = targets[tgt.path]
    want = spec.shape[1:] if tgt.layer is not None else spec.shape
    arr = tgt.transform(value)
    if tuple(arr.shape) != tuple(want) or (tgt.layer is not None and tgt.layer >= spec.shape[0]):
      where = "" if tgt.layer is None else f"[layer {tgt.layer}]"
      mismatched.append(
        f"{key}: source {tuple(value.shape)} -> {'/'.join(tgt.path)}{where} expects {tuple(want)}"
      )
      continue
    if tgt.path not in buffers:
      buffers[tgt.path] = np.empty(spec.shape, dtype or spec.dtype)
      seen[tgt.path] = set()
    if tgt.layer is None:
      buffers[tgt.path][...] = arr
    else:
      buffers[tgt.path][tgt.layer] = arr
    seen[tgt.path].add(tgt.layer)
  missing = []
  for path in targets:
    want = set(range(stacked[path])) if path in stacked else {None}
    lost = want - seen.get(path, set())
    if lost:
      idx = "" if lost == {None} else f" layers {sorted(lost)}"
      missing.append("/".join(path) + idx)
  if unexpected or missing or mismatched:
    parts = []
    if missing:
      parts.append(f"missing ({len(missing)}): {missing}")
    if unexpected:
      parts.append(f"unexpected ({len(unexpected)}): {unexpected}")
    if mismatched:
      parts.append(f"wrong shape ({len(mismatched)}): {mismatched}")
    raise CheckpointError("checkpoint does not match the model; " + "; ".join(parts))
  return buffers
