"""Strict matching of a source state dict against a model's parameters.

Every converter maps a source key to a :class:`Target`: a path in the model's flat state, a
layer index into a stacked leading axis (or None) and a :class:`Transform` from the source
layout, which knows the shape it produces. :func:`check` is the one matcher: from the sources'
shapes alone it collects *all* problems (unexpected source keys, parameters or layers never
filled, shape mismatches, two keys for one slot). :func:`fill` reads arrays through it into
numpy buffers; the import plan (:mod:`pose_jax.convert.importer`) runs it on safetensors headers
before reading a byte. Either raises one :class:`CheckpointError` listing every problem.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np
from flax import nnx

from pose_jax.convert.errors import CheckpointError

Path = tuple[str, ...]
Shape = tuple[int, ...]


class Transform(NamedTuple):
  """Source layout -> target layout: ``fn`` on arrays, ``shape`` on their shapes.

  ``shape`` gives None for a source shape the transform does not apply to (reported as a wrong
  shape; ``fn`` is then never called).
  """

  fn: Callable[[np.ndarray], np.ndarray]
  shape: Callable[[Shape], Shape | None]

  def __call__(self, w: np.ndarray) -> np.ndarray:
    return self.fn(w)


def transform(shape: Callable[[Shape], Shape | None]) -> Callable[[Callable], Transform]:
  """Decorates an array function with the shape it produces: ``@transform(lambda s: ...)``."""
  return lambda fn: Transform(fn, shape)


SAME = Transform(lambda w: w, lambda s: s)
# torch ``Linear.weight [out, in]`` -> kernel ``[in, out]``.
LINEAR = Transform(lambda w: np.ascontiguousarray(w.T), lambda s: s[::-1] if len(s) == 2 else None)


class Target(NamedTuple):
  path: Path  # path in the flat nnx state, e.g. ('blocks', 'attn1', 'to_q', 'kernel')
  layer: int | None  # index into a stacked ('layers') leading axis, or None
  transform: Transform = SAME  # source layout -> target layout

  def out_shape(self, source_shape) -> Shape | None:
    """The shape this target receives from a source of ``source_shape`` (None: not its layout)."""
    return self.transform.shape(tuple(source_shape))


def flat_shapes(abstract_state, variable_type=nnx.Param, exclude=()) -> dict[Path, Any]:
  """``{path: ShapeDtypeStruct}`` of the parameters to fill (e.g. excluding LoRA params)."""
  out = {}
  for path, var in nnx.to_flat_state(abstract_state):
    if isinstance(var, variable_type) and not isinstance(var, tuple(exclude)):
      value = var.get_value() if hasattr(var, "get_value") else var
      out[tuple(str(p) for p in path)] = value
  return out


def listing(items: list, limit: int = 20) -> str:
  """``(n): [first items...]`` for error messages (a 14B model has ~1300 keys)."""
  more = f", ... {len(items) - limit} more" if len(items) > limit else ""
  return f"({len(items)}): {items[:limit]}"[:-1] + more + "]"


@dataclasses.dataclass
class Problems:
  """What keeps a source from matching the model, one line per problem, by kind."""

  missing: list[str] = dataclasses.field(default_factory=list)
  unexpected: list[str] = dataclasses.field(default_factory=list)
  wrong_shape: list[str] = dataclasses.field(default_factory=list)
  unsupported_dtype: list[str] = dataclasses.field(default_factory=list)  # set by the importer
  duplicate: list[str] = dataclasses.field(default_factory=list)

  def _kinds(self) -> list[tuple[str, list[str]]]:
    return [(f.name.replace("_", " "), getattr(self, f.name)) for f in dataclasses.fields(self)]

  def __bool__(self) -> bool:
    return any(lines for _, lines in self._kinds())

  def message(self) -> str:
    parts = [f"{kind} {listing(lines)}" for kind, lines in self._kinds() if lines]
    return "checkpoint does not match the model; " + "; ".join(parts)

  def raise_if_any(self, source: str | None = None) -> None:
    """Raises one :class:`CheckpointError` listing every problem (prefixed ``source: ``)."""
    if self:
      raise CheckpointError(self.message() if source is None else f"{source}: {self.message()}")


def check(
  sources: Iterable[tuple[str, Any]],
  targets: Mapping[Path, Any],
  key_map: Callable[[str], Target | None],
  *,
  stacked: str | None = None,
  on_match: Callable[[str, Target, Any], None] | None = None,
) -> Problems:
  """Matches every source against ``targets``; returns all problems (none: a perfect match).

  Args:
    sources: ``(source key, anything with a .shape)``: arrays, or headers when nothing is read.
    targets: the parameters to fill, from :func:`flat_shapes` (``{path: ShapeDtypeStruct}``).
    key_map: source key -> :class:`Target`, or None for a key the model has no place for.
    stacked: the top-level module whose parameters have a leading layer axis: each of their
      layers is filled by one target with that ``layer``; every other parameter by one with
      ``layer=None``.
    on_match: called as ``on_match(key, target, source)`` for each source that fits its slot,
      while ``sources`` are read (so a stream of arrays is read once).
  """
  problems = Problems()
  filled: dict[Path, dict[int | None, str]] = {}
  for key, source in sources:
    tgt = key_map(key)
    if tgt is None or tgt.path not in targets:
      problems.unexpected.append(key)
      continue
    shape, full = tuple(source.shape), tuple(targets[tgt.path].shape)
    is_stacked = tgt.path[0] == stacked
    want = full[1:] if is_stacked else full
    if is_stacked and tgt.layer is not None and tgt.layer >= full[0]:
      problems.wrong_shape.append(f"{key}: layer {tgt.layer}, but the model has {full[0]} layers")
      continue
    if tgt.out_shape(shape) != want or is_stacked != (tgt.layer is not None):
      where = "" if tgt.layer is None else f"[layer {tgt.layer}]"
      problems.wrong_shape.append(
        f"{key}: source {shape} -> {'/'.join(tgt.path)}{where} expects {want}"
      )
      continue
    slots = filled.setdefault(tgt.path, {})
    if tgt.layer in slots:
      problems.duplicate.append(f"{key} and {slots[tgt.layer]}")
      continue
    slots[tgt.layer] = key
    if on_match is not None:
      on_match(key, tgt, source)
  for path, spec in targets.items():
    want = set(range(spec.shape[0])) if path[0] == stacked else {None}
    lost = want - set(filled.get(path, ()))
    if lost:
      idx = "" if lost == {None} else f" layers {sorted(lost)}"
      problems.missing.append("/".join(path) + idx)
  return problems


def fill(
  items: Iterable[tuple[str, np.ndarray]],
  targets: Mapping[Path, Any],
  key_map: Callable[[str], Target | None],
  *,
  stacked: str | None = None,
  dtype=None,
) -> dict[Path, np.ndarray]:
  """Places every source tensor into numpy buffers shaped like ``targets`` (via :func:`check`).

  Args:
    items: ``(source key, array)`` pairs, read one at a time.
    targets, key_map, stacked: as for :func:`check`.
    dtype: cast target buffers to this dtype (default: the target's dtype).

  Raises:
    CheckpointError listing every problem :func:`check` found.
  """
  buffers: dict[Path, np.ndarray] = {}

  def place(key: str, tgt: Target, value: np.ndarray) -> None:
    spec = targets[tgt.path]
    arr = tgt.transform(value)
    want = tuple(spec.shape[1:]) if tgt.layer is not None else tuple(spec.shape)
    if tuple(arr.shape) != want:
      raise AssertionError(f"{key}: the transform gave {arr.shape}; its shape rule said {want}")
    if tgt.path not in buffers:
      buffers[tgt.path] = np.empty(spec.shape, dtype or spec.dtype)
    buffers[tgt.path][... if tgt.layer is None else tgt.layer] = arr

  check(items, targets, key_map, stacked=stacked, on_match=place).raise_if_any()
  return buffers
