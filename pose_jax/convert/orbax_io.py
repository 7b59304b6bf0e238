"""Model checkpoints in orbax: streamed writing, sharded restore, per-layer reading.

A *model checkpoint* is an orbax composite checkpoint directory (local path or ``gs://...``)::

  PATH/params/       the WanTransformer parameters (``lora_rank=0``) as the nested pure dict of
                     ``nnx.to_pure_dict(nnx.state(model, nnx.Param))``: stacked ``blocks/...``
                     arrays with the leading layer axis, exactly the trainer's structure
  PATH/wan_config/   JSON: {"format_version", "wan_config": WanConfig.to_diffusers(),
                     "param_dtype", "source": {...}, "source_dtypes": {param path: dtype}}

Writing goes through orbax's own ``Checkpointer`` into a hidden sibling ``.NAME.write-tmp-PID``,
renamed to ``PATH`` when complete, so a write that fails midway leaves nothing at ``PATH`` that a
restore would accept and leaves a previous checkpoint there as it was. Only a previous model
checkpoint (:func:`is_model_checkpoint`) is ever replaced, and only with ``overwrite``; a file or
a folder holding anything else is refused (:func:`destination.check`).

The parameters are :class:`LazyArray` leaves that produce their data one piece (one layer of a
stacked array) at a time; a custom orbax type handler writes each piece into its own zarr
chunk(s) as it arrives, so the host never holds more than one source tensor (and its converted
copy). Chunks are stored uncompressed: zstd gains little on weights and its encode buffers would
add another copy of every piece to peak memory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from etils import epath
from flax import nnx
from orbax.checkpoint._src.futures import future
from orbax.checkpoint._src.serialization import ocdbt_utils
from orbax.checkpoint._src.serialization import tensorstore_utils as ts_utils

from pose_jax import sharding as shd
from pose_jax.convert import destination, heap
from pose_jax.convert.errors import CheckpointError
from pose_jax.models.layers import LoRAParam
from pose_jax.models.wan import WanConfig, WanTransformer

PARAMS = "params"
CONFIG = "wan_config"
STEP_METADATA = "_CHECKPOINT_METADATA"  # orbax's, in every checkpoint it writes
COMMIT_MARKER = "commit_success.txt"  # orbax's, in a finished checkpoint (and each item)
MODEL_CHECKPOINT = "a pose_jax model checkpoint"
FORMAT_VERSION = 1
CHUNK_BYTES = 64 << 20  # zarr chunk target: bounded read amplification when restoring sharded
PIPELINE_BYTES = 16 << 20  # writes in flight before waiting (larger pieces are written alone)


@dataclasses.dataclass(frozen=True)
class LazyArray:
  """An array written piece by piece: ``pieces()`` yields ``(layer or None, array)``.

  For a stacked array (``stacked=True``) every layer ``0..shape[0]-1`` must be yielded once with
  shape ``shape[1:]``; otherwise a single ``(None, array)`` of the full shape.
  """

  shape: tuple[int, ...]
  dtype: np.dtype
  pieces: Callable[[], Iterator[tuple[int | None, np.ndarray]]]
  stacked: bool = False

  @property
  def size(self) -> int:
    return int(np.prod(self.shape))

  @property
  def nbytes(self) -> int:
    return self.size * np.dtype(self.dtype).itemsize


def _checked(value: LazyArray, name: str) -> Iterator[tuple[int | None, np.ndarray]]:
  """``value.pieces()``, checking shapes, dtypes and that every layer comes exactly once."""
  want = value.shape[1:] if value.stacked else value.shape
  seen = set()
  for layer, piece in value.pieces():
    if tuple(piece.shape) != tuple(want) or piece.dtype != value.dtype or layer in seen:
      raise CheckpointError(
        f"{name}[{layer}]: produced {piece.shape} {piece.dtype} (again: {layer in seen}), "
        f"expected {want} {np.dtype(value.dtype)}"
      )
    seen.add(layer)
    yield layer, piece
    del piece
  expected = set(range(value.shape[0])) if value.stacked else {None}
  if seen != expected:
    raise CheckpointError(f"{name}: pieces {sorted(expected - seen)} were never written")


class _StreamingHandler(ocp.type_handlers.NumpyHandler):
  """Writes :class:`LazyArray` leaves sequentially, one piece in memory at a time."""

  def __init__(self, on_bytes: Callable[[int], None] = lambda n: None):
    super().__init__(deepcopy_host_arrays=False)
    self._on_bytes = on_bytes

  async def _open(self, value: LazyArray, info, arg):
    await info.await_path_creation()
    spec = ts_utils.build_array_write_spec(
      info=info,
      arg=dataclasses.replace(arg, chunk_byte_size=CHUNK_BYTES),
      global_shape=value.shape,
      local_shape=(1, *value.shape[1:]) if value.stacked else value.shape,  # a layer per chunk
      dtype=np.dtype(value.dtype),
      use_ocdbt=info.is_ocdbt_checkpoint,
      process_index=ocdbt_utils.get_process_index_for_subdir(use_ocdbt=info.is_ocdbt_checkpoint),
    )
    return await ts.open(ts.Spec(spec.json), create=True, open=True, context=info.ts_context)

  async def _write_all(self, values, infos, args):
    stores = await asyncio.gather(*map(self._open, values, infos, args))
    pending = []
    try:
      pending_bytes = 0
      for value, info, store in zip(values, infos, stores):
        for layer, piece in _checked(value, info.name):
          dst = store[layer] if value.stacked else store
          write = dst.write(piece, can_reference_source_data_indefinitely=True)
          pending.append((write, piece.nbytes))
          pending_bytes += piece.nbytes
          del piece, dst, write
          if pending_bytes > PIPELINE_BYTES:  # big pieces go one at a time; small ones overlap
            pending_bytes = await self._drain(pending)
      await self._drain(pending)
    except BaseException:
      # Let writes in flight finish before the error reaches orbax (and our clean-up).
      await asyncio.gather(*(w for w, _ in pending), return_exceptions=True)
      raise

  async def _drain(self, pending) -> int:
    while pending:
      write, nbytes = pending.pop(0)
      await write
      self._on_bytes(nbytes)
    heap.release_memory()
    return 0

  async def serialize(self, values, infos, args=None) -> list[future.Future]:
    args = args or [ocp.type_handlers.SaveArgs()] * len(values)
    return [
      future.CommitFutureAwaitingContractedSignals(
        self._write_all(values, infos, args), name="lazy_array_writer"
      )
    ]


def _checkpointer(on_bytes=lambda n: None) -> ocp.Checkpointer:
  types = ocp.type_handlers.create_type_handler_registry(
    (LazyArray, _StreamingHandler(on_bytes)),
    (np.ndarray, ocp.type_handlers.NumpyHandler()),
    (jax.Array, ocp.type_handlers.ArrayHandler()),
  )
  registry = ocp.DefaultCheckpointHandlerRegistry()
  registry.add(
    PARAMS,
    ocp.args.PyTreeSave,
    ocp.PyTreeCheckpointHandler(use_compression=False, type_handler_registry=types),
  )
  return ocp.Checkpointer(ocp.CompositeCheckpointHandler(handler_registry=registry))


# --- writing ----------------------------------------------------------------------------------
def is_model_checkpoint(path) -> bool:
  """Whether ``path`` is a directory :func:`save_model_checkpoint` wrote: the ``wan_config`` item
  and orbax's checkpoint metadata, and besides them nothing but ``params`` and orbax's commit
  marker."""
  path = epath.Path(path)
  if not path.is_dir():
    return False
  names = {p.name for p in path.iterdir()}
  ours = {PARAMS, CONFIG, STEP_METADATA, COMMIT_MARKER}
  return (path / CONFIG).is_dir() and {CONFIG, STEP_METADATA} <= names <= ours


def _remove(path: epath.Path) -> None:
  """``path`` and orbax's temporaries of it (``PATH.orbax-checkpoint-tmp*``), if any."""
  for tmp in [*path.parent.glob(f"{path.name}.orbax-checkpoint-tmp*"), path]:
    for attempt in range(5):  # orbax may still be closing files in its background threads
      try:
        tmp.rmtree(missing_ok=True)
        break
      except OSError:
        time.sleep(0.2 * (attempt + 1))


def save_model_checkpoint(
  path: str,
  params: dict,
  meta: dict,
  *,
  overwrite: bool = False,
  on_bytes: Callable[[int], None] = lambda n: None,
) -> None:
  """Writes ``params`` (nested dict of :class:`LazyArray`) and ``meta`` (JSON) atomically.

  ``overwrite`` replaces a previous model checkpoint at ``path``, only once the new one is
  complete; anything else at ``path`` raises :class:`FileExistsError` (:func:`destination.check`).
  """
  path = epath.Path(path)
  destination.check(path, overwrite, is_model_checkpoint, MODEL_CHECKPOINT)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = destination.temporary_sibling(path, "write-tmp")
  _remove(tmp)  # a stale one of this process id
  args = ocp.args.Composite(
    **{PARAMS: ocp.args.PyTreeSave(params), CONFIG: ocp.args.JsonSave(meta)}
  )
  try:
    _checkpointer(on_bytes).save(tmp, args=args)
    destination.install(tmp, path, overwrite, is_model_checkpoint, MODEL_CHECKPOINT)
  except BaseException:
    _remove(tmp)
    raise


def model_meta(
  cfg: WanConfig, source: dict | None = None, source_dtypes: dict | None = None
) -> dict:
  """The ``wan_config`` JSON item (the trainer saves the same item next to student/ema)."""
  return {
    "format_version": FORMAT_VERSION,
    "wan_config": cfg.to_diffusers(),
    "param_dtype": cfg.param_dtype,
    "source": source or {},
    "source_dtypes": source_dtypes or {},
  }


# --- restoring -----------------------------------------------------------------------------------
def read_meta(path: str) -> dict:
  """The ``wan_config`` JSON of a model checkpoint (or of a train step holding that item)."""
  path = epath.Path(path)
  if not (path / CONFIG).exists() or not ocp.path.step.is_path_finalized(path):
    raise CheckpointError(f"{path}: not a finished model checkpoint (no {CONFIG}/ item)")
  meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(path / CONFIG)
  if meta.get("format_version") != FORMAT_VERSION:
    raise CheckpointError(f"{path}: unknown model checkpoint format {meta.get('format_version')}")
  return meta


def config_from_meta(meta: dict, **runtime) -> WanConfig:
  runtime.setdefault("param_dtype", meta.get("param_dtype", "float32"))
  return WanConfig.from_diffusers(meta["wan_config"], **runtime)


def _single_device_mesh():
  return shd.make_mesh((1, 1, 1, 1), devices=jax.devices()[:1])


def _abstract_params(cfg: WanConfig, mesh, rules):
  return shd.abstract_state(lambda: WanTransformer(cfg, rngs=nnx.Rngs(0)), mesh, rules=rules)


def _restore(path: epath.Path, target: dict) -> dict:
  if not path.exists():
    raise CheckpointError(f"{path}: no such checkpoint")
  try:
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler()).restore(
      path, args=ocp.args.Composite(**{PARAMS: ocp.args.StandardRestore(target)})
    )[PARAMS]
  except ValueError as e:
    raise CheckpointError(f"{path}: cannot restore parameters ({e})") from e


def restore_params(
  path: str, mesh=None, rules=shd.RULES, param_dtype: str | None = None, like=None
) -> tuple[WanConfig, dict]:
  """``(config, params)``: the parameters restored straight into their sharding on ``mesh``.

  ``params`` is the nested pure dict (``nnx.replace_by_pure_dict`` puts it into a model); its
  arrays carry the ``NamedSharding``s of :func:`pose_jax.sharding.abstract_state` (default mesh:
  the first device). ``param_dtype`` casts on read (default: as stored).

  ``like``: an existing parameter tree (an ``nnx.State`` of the model, or its pure dict) whose
  shapes, dtypes and shardings the restore takes instead; an ``nnx.State`` has its base
  (non-LoRA) parameters replaced in place and is returned.
  """
  path = epath.Path(path)
  runtime = {"param_dtype": param_dtype} if param_dtype else {}
  cfg = config_from_meta(read_meta(path), lora_rank=0, **runtime)
  if like is None:
    _, abstract = _abstract_params(cfg, mesh or _single_device_mesh(), rules)
    return cfg, _restore(path, nnx.to_pure_dict(nnx.filter_state(abstract, nnx.Param)))
  is_state = isinstance(like, nnx.State)
  base = nnx.filter_state(like, nnx.All(nnx.Param, nnx.Not(LoRAParam))) if is_state else like
  pure = nnx.to_pure_dict(base) if is_state else base
  restored = _restore(path, jax.tree.map(ocp.utils.to_shape_dtype_struct, pure))
  if not is_state:
    return cfg, restored
  nnx.replace_by_pure_dict(base, restored)
  like.update(base)
  return cfg, like


def load_model(path: str, mesh=None, rules=shd.RULES, **runtime) -> WanTransformer:
  """A sharded :class:`WanTransformer` with the checkpoint's weights.

  ``runtime`` overrides run settings (dtype, attention, remat, lora_rank, ...). With
  ``lora_rank > 0`` the LoRA parameters are freshly initialised (``lora_b = 0``: a no-op).
  """
  path = epath.Path(path)
  mesh = mesh or _single_device_mesh()
  cfg = config_from_meta(read_meta(path), **runtime)
  make = lambda: WanTransformer(cfg, rngs=nnx.Rngs(0))
  base_cfg = cfg.replace(lora_rank=0)
  _, base_abstract = _abstract_params(base_cfg, mesh, rules)
  restored = _restore(path, nnx.to_pure_dict(nnx.filter_state(base_abstract, nnx.Param)))
  if cfg.lora_rank:
    model = nnx.merge(*shd.create_state(make, mesh, rules=rules))
  else:
    graphdef, abstract = _abstract_params(cfg, mesh, rules)
    model = nnx.merge(graphdef, abstract)
  base = nnx.state(model, nnx.All(nnx.Param, nnx.Not(LoRAParam)))
  nnx.replace_by_pure_dict(base, restored)
  nnx.update(model, base)
  return model


# --- per-layer reading (export) ------------------------------------------------------------------
class ParamReader:
  """Reads one parameter (or one layer of a stacked one) at a time from an orbax pytree item.

  ``prefix`` selects a subtree (e.g. ``("params", "student")`` of a train state); a trailing
  ``value`` key (an ``nnx.State`` saved as is) is dropped from the paths.
  """

  def __init__(self, item_dir: str, prefix: tuple[str, ...] = ()):
    self.dir = epath.Path(item_dir)
    if not (self.dir / "_METADATA").exists():
      raise CheckpointError(f"{self.dir}: not an orbax pytree item (no _METADATA)")
    meta = ocp.PyTreeCheckpointHandler().metadata(self.dir)
    self._zarr3 = bool(getattr(meta, "use_zarr3", False))
    self._ocdbt = ocp.type_handlers.is_ocdbt_checkpoint(self.dir)
    self.specs: dict[tuple[str, ...], tuple[tuple[int, ...], np.dtype]] = {}
    self._names: dict[tuple[str, ...], str] = {}
    for keypath, leaf in jax.tree_util.tree_flatten_with_path(meta.tree)[0]:
      path = tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in keypath)
      if path[: len(prefix)] != tuple(prefix) or not hasattr(leaf, "shape"):
        continue
      name = getattr(leaf, "name", None) or ".".join(path)
      path = path[len(prefix) :]
      path = path[:-1] if path and path[-1] == "value" else path
      self.specs[path] = (tuple(leaf.shape), np.dtype(leaf.dtype))
      self._names[path] = name
    if not self.specs:
      raise CheckpointError(f"{self.dir}: no arrays under {'/'.join(prefix) or 'the root'}")
    self._ctx = ts_utils.get_ts_context(use_ocdbt=self._ocdbt)

  def open(self, path):
    """The tensorstore of one stored array (``path`` as in :attr:`specs`), opened for reading;
    index it and ``.read()`` to read a slice (e.g. one device's shard)."""
    spec = ts_utils.ArrayReadSpec(
      directory=self.dir.as_posix(),
      relative_array_filename=self._names[path],
      use_zarr3=self._zarr3,
      use_ocdbt=self._ocdbt,
    )
    try:
      return ts.open(spec.json, open=True, context=self._ctx).result()
    except Exception as e:
      raise CheckpointError(f"{self.dir}: cannot open array {'/'.join(path)} ({e})") from e

  def read(self, path) -> np.ndarray:
    return self.open(path).read().result()

  def layers(self, path) -> Iterator[np.ndarray]:
    """Yields ``array[i]`` for every i, reading one chunk row of the leading axis at a time."""
    store = self.open(path)
    step = max(1, int(store.chunk_layout.read_chunk.shape[0] or 1))
    for start in range(0, store.shape[0], step):
      block = store[start : start + step].read().result()
      yield from block
      del block
