"""Export parameters to diffusers or original-Wan2.1 safetensors, streamed and sharded.

Source: a model checkpoint (:mod:`pose_jax.convert.orbax_io`), or a training workdir of orbax
``CheckpointManager`` steps (directly inside it or under ``checkpoints/``), or one step
directory. A step holds the ``student`` / ``ema`` parameter trees (pure dicts or ``nnx.State``s
of the ``lora_rank=0`` model) either as items of those names or inside a ``state`` item as
``params/student`` and ``ema`` (see :data:`TREES`); the architecture comes from a ``wan_config``
item or a ``meta`` item with a ``wan_config`` entry (:func:`orbax_io.model_meta`), else from
the caller (``--config``).

Output ``DIR``: ``config.json`` and ``diffusion_pytorch_model.safetensors`` or, above the shard
limit, ``diffusion_pytorch_model-0000i-of-0000n.safetensors`` + ``...safetensors.index.json``
(the layout of both diffusers and the Wan2.1 release). Safetensors files are written by hand
(8-byte header length, JSON header, raw little-endian data): the header is known from shapes
alone, so each tensor goes to disk as soon as it is read, one layer at a time, and memory never
holds a shard. The directory is assembled under a temporary name beside ``DIR`` and renamed when
complete; ``overwrite`` replaces only a previous export (:func:`is_export`), and a failed export
leaves it as it was.
"""

from __future__ import annotations

import dataclasses
import json
import re
import struct
from collections.abc import Callable, Iterator

import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from tqdm import tqdm

from pose_jax.convert import (
  destination,
  heap,
  importer,
  orbax_io,
  strict,
  wan_diffusers,
  wan_original,
)
from pose_jax.convert.errors import CheckpointError
from pose_jax.models.wan import WanConfig

WEIGHTS = "diffusion_pytorch_model"
MAX_SHARD_BYTES = 5 * 10**9
_ST_NAMES = {v: k for k, v in importer.ST_DTYPES.items()}
EXPORT = "a pose_jax export"
_EXPORT_FILE = re.compile(
  rf"config\.json|{WEIGHTS}\.safetensors(\.index\.json)?|{WEIGHTS}-\d{{5,}}-of-\d{{5,}}\.safetensors"
)


def is_export(path) -> bool:
  """Whether ``path`` holds exactly what :func:`export_checkpoint` writes: ``config.json`` and the
  weights (one file, or shards and their index), nothing else."""
  path = epath.Path(path)
  if not path.is_dir():
    return False
  entries = list(path.iterdir())
  names = {p.name for p in entries}
  return (
    "config.json" in names
    and any(n.endswith(".safetensors") for n in names)
    and all(_EXPORT_FILE.fullmatch(p.name) and p.is_file() for p in entries)
  )


# --- source --------------------------------------------------------------------------------------
# Where a train step keeps each tree: its own item, or a subtree of the train-state item.
TREES = {
  "student": (("student", ()), ("state", ("params", "student"))),
  "ema": (("ema", ()), ("state", ("ema",))),
}


def resolve_source(src: str, step=None, which: str | None = None):
  """``(item directory, path prefix inside it, meta or None)`` of the parameters to export.

  ``src`` is a model checkpoint, a train workdir (steps directly inside it or under
  ``checkpoints/``) or one step directory. The step's ``wan_config`` item, or a ``meta`` item
  holding a ``wan_config`` entry, supplies the architecture.
  """
  root = epath.Path(src)
  if not root.exists():
    raise CheckpointError(f"{root}: no such checkpoint or workdir")
  if (root / orbax_io.PARAMS).exists():
    if which not in (None, "student") or step not in (None, "latest"):
      raise CheckpointError(f"{root} is a model checkpoint: --which/--step apply to train workdirs")
    return root / orbax_io.PARAMS, (), orbax_io.read_meta(root)
  candidates = TREES[which or "student"]
  step_dir = root
  if not any((root / item).exists() for item, _ in candidates):
    base = root / "checkpoints" if (root / "checkpoints").is_dir() else root
    found = {m.step: m.path for m in ocp.path.step.standard_name_format().find_all(base)}
    if not found:
      raise CheckpointError(f"{root}: no model checkpoint, train step or finished steps")
    step = max(found) if step in (None, "latest") else int(step)
    if step not in found:
      raise CheckpointError(f"{base}: no finished step {step}; have {sorted(found)}")
    step_dir = found[step]
  present = [(item, prefix) for item, prefix in candidates if (step_dir / item).exists()]
  if not present:
    items = sorted(p.name for p in step_dir.iterdir() if p.is_dir())
    raise CheckpointError(f"{step_dir}: no {[c[0] for c in candidates]} item; items: {items}")
  item, prefix = present[0]
  meta = None
  if (step_dir / orbax_io.CONFIG).exists():
    meta = orbax_io.read_meta(step_dir)
  elif (step_dir / "meta").exists():
    run_meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(step_dir / "meta")
    meta = run_meta if isinstance(run_meta, dict) and "wan_config" in run_meta else None
  return step_dir / item, prefix, meta


# --- names and layouts ---------------------------------------------------------------------------
def diffusers_key(path: tuple[str, ...], layer: int | None) -> str:
  """Our parameter path (+ layer) -> diffusers key; checked against the import map."""
  *modules, leaf = path
  parts = []
  for i, name in enumerate(modules):
    in_ff = i > 0 and modules[i - 1] in ("ffn", "ff")
    if in_ff and name == "proj_in":
      parts += ["net", "0", "proj"]
    elif in_ff and name == "proj_out":
      parts += ["net", "2"]
    elif name == "to_out":
      parts += ["to_out", "0"]
    else:
      parts.append(name)
  if layer is not None:
    parts.insert(1, str(layer))
  key = ".".join([*parts, "weight" if leaf == "kernel" else leaf])
  back = wan_diffusers.key_map(key)
  if back is None or back.path != tuple(path) or back.layer != layer:
    raise AssertionError(f"no inverse name for {'/'.join(path)} (got {key!r})")
  return key


def _inverse(path: tuple[str, ...], cfg: WanConfig) -> Callable[[np.ndarray], np.ndarray]:
  """Our layout -> torch layout (the inverse of wan_diffusers' transforms)."""
  if path == ("patch_embedding", "kernel"):
    pt, ph, pw = cfg.patch_size
    return lambda k: k.reshape(pt, ph, pw, cfg.in_channels, k.shape[-1]).transpose(4, 3, 0, 1, 2)
  if path[-1] == "kernel":
    return lambda k: k.T
  return lambda k: k


def _inverse_shape(path, cfg: WanConfig, shape) -> tuple[int, ...]:
  if path == ("patch_embedding", "kernel"):
    return (shape[-1], cfg.in_channels, *cfg.patch_size)
  return tuple(shape[::-1]) if path[-1] == "kernel" else tuple(shape)


@dataclasses.dataclass(frozen=True)
class Entry:
  key: str
  path: tuple[str, ...]
  layer: int | None
  shape: tuple[int, ...]
  dtype: np.dtype

  @property
  def nbytes(self) -> int:
    return int(np.prod(self.shape)) * self.dtype.itemsize


def plan_entries(
  cfg: WanConfig,
  stored: dict[tuple[str, ...], tuple[tuple[int, ...], np.dtype]],
  fmt: str,
  dtype: str | None = None,
  source_dtypes: dict[str, str] | None = None,
) -> list[Entry]:
  """Output tensors in write order (one parameter after another, layer by layer).

  ``stored`` maps parameter paths to (shape, dtype) as found in the source; it must match the
  config exactly (LoRA leaves, missing or reshaped parameters are errors).
  """
  expected = importer.target_specs(cfg)
  missing = sorted("/".join(p) for p in expected if p not in stored)
  unexpected = sorted("/".join(p) for p in stored if p not in expected)
  wrong = [
    f"{'/'.join(p)}: stored {stored[p][0]}, config expects {tuple(expected[p].shape)}"
    for p in expected
    if p in stored and tuple(stored[p][0]) != tuple(expected[p].shape)
  ]
  if missing or unexpected or wrong:
    named = ((missing, "missing"), (unexpected, "unexpected"), (wrong, "wrong shape"))
    parts = [f"{name} {strict.listing(v)}" for v, name in named if v]
    hint = " (LoRA parameters must be merged first)" if any("lora" in u for u in unexpected) else ""
    raise CheckpointError("parameters do not match the config; " + "; ".join(parts) + hint)
  entries = []
  order = sorted(expected, key=lambda p: (p[0] == "blocks", p))
  for path in order:
    shape, stored_dtype = stored[path]
    out_dtype = np.dtype(
      importer.DTYPE_ALIASES.get(dtype, dtype)
      or (source_dtypes or {}).get("/".join(path))
      or stored_dtype
    )
    if out_dtype not in _ST_NAMES:
      raise ValueError(f"cannot write dtype {out_dtype} to safetensors")
    layers = range(shape[0]) if path[0] == "blocks" else [None]
    layer_shape = shape[1:] if path[0] == "blocks" else shape
    out_shape = _inverse_shape(path, cfg, layer_shape)
    for layer in layers:
      key = diffusers_key(path, layer)
      if fmt == "wan":
        key = wan_original.from_diffusers_key(key)
        if key is None:
          raise CheckpointError(f"{'/'.join(path)} has no counterpart in the Wan2.1 layout")
      entries.append(Entry(key, path, layer, tuple(out_shape), out_dtype))
  return entries


def torch_arrays(reader: orbax_io.ParamReader, entries, cfg) -> Iterator[np.ndarray]:
  """The entries' data in order, converted to torch layout and the entry dtype."""
  path, it = None, None
  for e in entries:
    if e.path != path:
      path, inverse = e.path, _inverse(e.path, cfg)
      it = reader.layers(path) if e.layer is not None else iter([reader.read(path)])
    arr = np.ascontiguousarray(inverse(next(it)), dtype=e.dtype)
    yield arr
    del arr


# --- writing -------------------------------------------------------------------------------------
def shard(entries: list[Entry], max_bytes: int) -> list[list[Entry]]:
  shards, size = [[]], 0
  for e in entries:
    if shards[-1] and size + e.nbytes > max_bytes:
      shards.append([])
      size = 0
    shards[-1].append(e)
    size += e.nbytes
  return shards


def write_safetensors(fname: epath.Path, entries, arrays: Iterator[np.ndarray], on_bytes) -> None:
  """Streams ``arrays`` (in ``entries`` order) into one safetensors file."""
  header, offset = {"__metadata__": {"format": "pt"}}, 0
  for e in entries:
    header[e.key] = {
      "dtype": _ST_NAMES[e.dtype],
      "shape": list(e.shape),
      "data_offsets": [offset, offset + e.nbytes],
    }
    offset += e.nbytes
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)
  with fname.open("wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for e in entries:
      arr = next(arrays)
      if arr.shape != e.shape or arr.dtype != e.dtype:
        raise AssertionError(f"{e.key}: produced {arr.shape} {arr.dtype}, header says {e}")
      f.write(arr.reshape(-1).view(np.uint8).data)
      on_bytes(e.nbytes)
      del arr
      heap.release_memory()


def export_checkpoint(
  src: str,
  dst: str,
  fmt: str = "diffusers",
  *,
  step=None,
  which: str | None = None,
  dtype: str | None = None,
  config: WanConfig | None = None,
  max_shard_bytes: int = MAX_SHARD_BYTES,
  overwrite: bool = False,
  progress: bool = True,
) -> list[str]:
  """Writes ``dst/`` in ``fmt`` (diffusers | wan); returns the files written (relative names).

  ``dtype`` (bf16|fp32) casts every tensor; by default each is written in its source dtype
  recorded at import, else as stored. ``config`` is needed only when the source has no
  ``wan_config`` item. ``overwrite`` replaces a previous export, once the new one is complete;
  anything else at ``dst`` is refused (:func:`destination.check`), before any reading.
  """
  if fmt not in ("diffusers", "wan"):
    raise ValueError(f"unknown export format {fmt!r} (diffusers or wan)")
  dst = epath.Path(dst)
  destination.check(dst, overwrite, is_export, EXPORT)
  item, prefix, meta = resolve_source(src, step, which)
  if config is None:
    if meta is None:
      raise CheckpointError(f"{item.parent}: no wan_config item; pass the model config")
    config = orbax_io.config_from_meta(meta)
  reader = orbax_io.ParamReader(item, prefix)
  entries = plan_entries(config, reader.specs, fmt, dtype, (meta or {}).get("source_dtypes"))
  tmp = destination.temporary_sibling(dst, "export-tmp")
  tmp.rmtree(missing_ok=True)  # a stale one of this process id
  tmp.mkdir(parents=True)
  shards = shard(entries, max_shard_bytes)
  names = (
    [f"{WEIGHTS}.safetensors"]
    if len(shards) == 1
    else [f"{WEIGHTS}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
  )
  config_json = config.to_diffusers() if fmt == "diffusers" else wan_original.config_json(config)
  total = sum(e.nbytes for e in entries)
  try:
    (tmp / "config.json").write_text(json.dumps(config_json, indent=2))
    arrays = torch_arrays(reader, entries, config)
    with tqdm(
      total=total, unit="B", unit_scale=True, desc=f"export {fmt}", disable=not progress
    ) as b:
      for name, group in zip(names, shards):
        write_safetensors(tmp / name, group, arrays, b.update)
    if len(names) > 1:
      weight_map = {e.key: n for n, group in zip(names, shards) for e in group}
      index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
      (tmp / f"{WEIGHTS}.safetensors.index.json").write_text(json.dumps(index, indent=2))
    destination.install(tmp, dst, overwrite, is_export, EXPORT)
  except BaseException:
    tmp.rmtree(missing_ok=True)
    raise
  return ["config.json", *names] + ([f"{WEIGHTS}.safetensors.index.json"] if len(names) > 1 else [])
