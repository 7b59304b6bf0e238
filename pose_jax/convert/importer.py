"""Streamed import: diffusers or original Wan2.1 safetensors -> a model checkpoint (orbax).

Everything is checked from the safetensors headers before a byte of weights is read, by the
matcher the in-memory loaders use (:func:`strict.check`): every source key must map to a
parameter of the model built from the config, every parameter (and every layer of a stacked
one) must be filled exactly once, shapes must match after the layout transform; and dtypes must
be floating point. One :class:`CheckpointError` lists all problems.

Then each target parameter is written piece by piece (:class:`orbax_io.LazyArray`): a stacked
``blocks/...`` array of L layers reads its L source tensors one at a time. Tensors are read with
plain file reads into a fresh buffer, not through safetensors' memory map, whose touched pages
would count towards (and inflate) the process's resident memory for the whole import.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import struct

import ml_dtypes
import numpy as np
from etils import epath
from flax import nnx
from tqdm import tqdm

from pose_jax.convert import destination, orbax_io, strict, wan_diffusers, wan_original
from pose_jax.convert.errors import CheckpointError
from pose_jax.convert.safetensors_io import SafetensorsReader, read_config
from pose_jax.models.wan import WanConfig, WanTransformer

ST_DTYPES = {
  "F64": np.dtype(np.float64),
  "F32": np.dtype(np.float32),
  "F16": np.dtype(np.float16),
  "BF16": np.dtype(ml_dtypes.bfloat16),
}
DTYPE_ALIASES = {
  "bf16": "bfloat16",
  "bfloat16": "bfloat16",
  "fp32": "float32",
  "float32": "float32",
}


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  file: str
  dtype: str  # safetensors name (F32, BF16, ...)
  shape: tuple[int, ...]
  begin: int  # absolute byte offsets in the file
  end: int


def read_header(fname: str) -> dict[str, TensorInfo]:
  """Parses and validates a safetensors header (sizes against the file's length)."""
  path = epath.Path(fname)
  try:
    size = path.stat().length
    with path.open("rb") as f:
      (n,) = struct.unpack("<Q", f.read(8))
      if n > size - 8:
        raise ValueError(f"header length {n} exceeds the file size {size}")
      header = json.loads(f.read(n))
  except Exception as e:
    raise CheckpointError(f"{fname}: not a readable safetensors file ({e})") from e
  header.pop("__metadata__", None)
  out, start = {}, 8 + n
  for key, entry in header.items():
    begin, end = (start + o for o in entry["data_offsets"])
    if end > size:
      raise CheckpointError(f"{fname}: truncated ({key!r} ends at byte {end}, file has {size})")
    out[key] = TensorInfo(fname, entry["dtype"], tuple(entry["shape"]), begin, end)
  return out


def read_tensor(info: TensorInfo) -> np.ndarray:
  """One tensor, read into a new array (no memory map)."""
  dtype = ST_DTYPES[info.dtype]
  out = np.empty(info.shape, dtype)
  try:
    with epath.Path(info.file).open("rb") as f:
      f.seek(info.begin)
      got = f.readinto(memoryview(out.reshape(-1).view(np.uint8)))
  except OSError as e:
    raise CheckpointError(f"{info.file}: cannot read tensor at byte {info.begin} ({e})") from e
  if got != info.end - info.begin or out.nbytes != got:
    raise CheckpointError(f"{info.file}: short read at byte {info.begin} ({got} bytes)")
  return out


def source_tensors(src: str) -> dict[str, TensorInfo]:
  """``{key: TensorInfo}`` over a single file or an index of shards (see SafetensorsReader)."""
  root = epath.Path(src)
  if (root / "model_index.json").is_file() and (root / "transformer").is_dir():
    raise CheckpointError(
      f"{src} is a diffusers pipeline folder; pass its transformer: --src={root / 'transformer'}"
    )
  reader = SafetensorsReader(src)
  keys = reader.keys()  # validates the index against the shards' own key lists
  infos: dict[str, TensorInfo] = {}
  for fname in sorted({reader.file_of(k) for k in keys}):
    infos.update(read_header(fname))
  return {k: infos[k] for k in keys}


# --- target shapes -------------------------------------------------------------------------------
def target_specs(cfg: WanConfig) -> dict[strict.Path, object]:
  """``{path: ShapeDtypeStruct}`` of the base (``lora_rank=0``) parameters; nothing allocated."""
  with nnx.use_eager_sharding(False):
    model = nnx.eval_shape(lambda: WanTransformer(cfg.replace(lora_rank=0), rngs=nnx.Rngs(0)))
  return strict.flat_shapes(nnx.state(model, nnx.Param))


def _key_map(fmt: str):
  if fmt == "diffusers":
    return wan_diffusers.key_map
  if fmt == "wan":
    return lambda k: (d := wan_original.to_diffusers_key(k)) and wan_diffusers.key_map(d)
  raise ValueError(f"unknown source format {fmt!r} (diffusers or wan)")


_LAYOUTS = {"diffusers": "a diffusers", "wan": "an original Wan2.1"}


def _layout(keys) -> str | None:
  """``diffusers`` or ``wan``: the layout whose names most of ``keys`` are (None: neither)."""
  wan = sum(wan_original.to_diffusers_key(k) is not None for k in keys)
  diffusers = sum(wan_original.from_diffusers_key(k) is not None for k in keys)
  return None if wan == diffusers else "wan" if wan > diffusers else "diffusers"


def _check_layout(src: str, fmt: str, tensors: dict[str, TensorInfo]) -> None:
  """Names the other ``--format`` when the source's keys are that layout's, not ``fmt``'s."""
  found = _layout(tensors)
  if found is not None and found != fmt:
    raise CheckpointError(f"{src} looks like {_LAYOUTS[found]} checkpoint; use --format={found}")


def _source_config(src: str, fmt: str, tensors: dict[str, TensorInfo]) -> WanConfig:
  if fmt == "diffusers":
    return WanConfig.from_diffusers(read_config(src))  # a .safetensors file alone needs --config
  config_file = epath.Path(src) / "config.json"
  config_json = read_config(src) if config_file.is_file() else None
  try:
    return wan_original.infer_config({k: t.shape for k, t in tensors.items()}, config_json)
  except ValueError as e:
    raise CheckpointError(f"{src}: {e} (pass the architecture with --config)") from e


def _default_dtype(tensors) -> str:
  by_dtype = collections.Counter()
  for t in tensors.values():
    by_dtype[t.dtype] += t.end - t.begin
  return "bfloat16" if by_dtype and by_dtype.most_common(1)[0][0] == "BF16" else "float32"


@dataclasses.dataclass
class ImportPlan:
  cfg: WanConfig
  params: dict  # nested {name: LazyArray}
  meta: dict
  total_bytes: int
  largest_source: tuple[str, int]  # (key, bytes)
  largest_target: tuple[str, int]  # (param path, bytes)


def plan_import(
  src: str, fmt: str = "diffusers", dtype: str | None = None, config: WanConfig | None = None
) -> ImportPlan:
  """Checks a source checkpoint against the model and returns what to write (nothing read yet)."""
  key_map = _key_map(fmt)
  tensors = source_tensors(src)
  _check_layout(src, fmt, tensors)
  cfg = config if config is not None else _source_config(src, fmt, tensors)
  dtype = DTYPE_ALIASES.get(dtype or _default_dtype(tensors))
  if dtype is None:
    raise ValueError(f"unsupported dtype (choose from {sorted(DTYPE_ALIASES)})")
  cfg = cfg.replace(param_dtype=dtype, lora_rank=0)
  targets = target_specs(cfg)
  pieces = collections.defaultdict(dict)  # path -> {layer: (key, transform)}

  def place(key: str, tgt: strict.Target, info: TensorInfo) -> None:
    pieces[tgt.path][tgt.layer] = (key, tgt.transform)

  readable = [(k, t) for k, t in tensors.items() if t.dtype in ST_DTYPES]
  problems = strict.check(readable, targets, key_map, stacked="blocks", on_match=place)
  bad = [f"{k}: {t.dtype}" for k, t in tensors.items() if t.dtype not in ST_DTYPES]
  problems.unsupported_dtype = bad
  problems.raise_if_any(src)

  params, source_dtypes = {}, {}
  for path, spec in targets.items():
    entries = sorted(pieces[path].items(), key=lambda kv: -1 if kv[0] is None else kv[0])
    arr = orbax_io.LazyArray(
      tuple(spec.shape),
      np.dtype(spec.dtype),
      _producer(tensors, entries, np.dtype(spec.dtype)),
      stacked=path[0] == "blocks",
    )
    node = params
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = arr
    kinds = collections.Counter(tensors[k].dtype for _, (k, _) in entries)
    source_dtypes["/".join(path)] = ST_DTYPES[kinds.most_common(1)[0][0]].name
  meta = orbax_io.model_meta(cfg, {"format": fmt, "path": str(src)}, source_dtypes)
  sizes = {k: t.end - t.begin for k, t in tensors.items()}
  big_src = max(sizes, key=sizes.get)
  leaves = {
    "/".join(p): int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for p, s in targets.items()
  }
  big_tgt = max(leaves, key=leaves.get)
  return ImportPlan(
    cfg, params, meta, sum(leaves.values()), (big_src, sizes[big_src]), (big_tgt, leaves[big_tgt])
  )


def _producer(tensors, entries, dtype):
  def pieces():
    for layer, (key, transform) in entries:
      value = read_tensor(tensors[key])
      out = transform(value)
      del value
      out = out.astype(dtype, copy=False)
      yield layer, out
      del out

  return pieces


def import_checkpoint(
  src: str,
  dst: str,
  fmt: str = "diffusers",
  dtype: str | None = None,
  config: WanConfig | None = None,
  overwrite: bool = False,
  progress: bool = True,
) -> ImportPlan:
  """Converts ``src`` (diffusers or ``wan`` layout) into a model checkpoint at ``dst``.

  ``overwrite`` replaces a previous model checkpoint, once the new one is complete; anything
  else at ``dst`` is refused (:func:`destination.check`), before any reading."""
  destination.check(dst, overwrite, orbax_io.is_model_checkpoint, orbax_io.MODEL_CHECKPOINT)
  plan = plan_import(src, fmt, dtype, config)
  with tqdm(
    total=plan.total_bytes,
    unit="B",
    unit_scale=True,
    unit_divisor=1024,
    desc=f"import {fmt}",
    disable=not progress,
  ) as bar:
    orbax_io.save_model_checkpoint(
      dst, plan.params, plan.meta, overwrite=overwrite, on_bytes=bar.update
    )
  return plan
