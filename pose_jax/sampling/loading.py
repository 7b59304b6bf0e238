"""The DiT to sample with, from any checkpoint format, loaded straight into its sharding.

:func:`load_dit` dispatches on what ``ckpt`` is:

  * ``None``: the pipeline folder's own ``transformer/`` (diffusers safetensors: the teacher);
  * a model checkpoint (``python -m pose_jax.convert import``): its params and ``wan_config``;
  * a training workdir (its latest step, or ``step``) or one step directory: the student or EMA
    tree (``which``) of the train state, read leaf by leaf, each device reading only its own
    slice (:func:`load_train_params`). The architecture is the step's ``wan_config`` when it
    has one, else ``config``, else the pipeline folder's ``transformer/config.json``.

Also :func:`pipeline_mod_value`: the pixel multiple a pipeline folder's video sizes must be,
read from its configs without loading weights.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from etils import epath
from flax import nnx

from pose_jax import sharding as shd
from pose_jax.conditioning import load_pipeline_transformer
from pose_jax.convert import export, orbax_io
from pose_jax.convert.errors import CheckpointError
from pose_jax.convert.safetensors_io import read_config
from pose_jax.models.wan import WanConfig, WanTransformer
from pose_jax.models.wan.vae import WanVAEConfig


def pipeline_mod_value(folder: str) -> int:
  """VAE stride x DiT patch from the folder's configs (without loading weights)."""
  vae = WanVAEConfig.from_diffusers(read_config(os.path.join(folder, "vae")))
  patch = (1, 2, 2)
  if os.path.isfile(os.path.join(folder, "transformer", "config.json")):
    patch = read_config(os.path.join(folder, "transformer")).get("patch_size", patch)
  return vae.spatial_factor * int(patch[1])


def _shard_model(model: nnx.Module, mesh, rules) -> nnx.Module:
  graphdef, state = nnx.split(model)
  state = jax.device_put(state, shd.state_shardings(state, mesh, rules))
  return nnx.merge(graphdef, state)


def _flat(tree: dict, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, (*prefix, str(k))))
    else:
      out[(*prefix, str(k))] = v
  return out


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for k in path[:-1]:
    tree = tree[k]
  tree[path[-1]] = value


def load_train_params(item, prefix, cfg: WanConfig, mesh, rules=shd.RULES) -> WanTransformer:
  """A train step's student/EMA tree (``prefix`` inside the orbax ``item``) read straight into
  its sharding on ``mesh`` (each device reads its own slice of every array). CheckpointError
  when the stored parameters do not match ``cfg``'s architecture."""
  reader = orbax_io.ParamReader(item, prefix)
  graphdef, abstract = shd.abstract_state(
    lambda: WanTransformer(cfg, rngs=nnx.Rngs(0)), mesh, rules=rules
  )
  pure = nnx.to_pure_dict(abstract)
  want = _flat(pure)
  missing = sorted("/".join(p) for p in want if p not in reader.specs)
  extra = sorted("/".join(p) for p in reader.specs if p not in want)
  wrong = [
    f"{'/'.join(p)}: stored {reader.specs[p][0]}, config {tuple(s.shape)}"
    for p, s in want.items()
    if p in reader.specs and tuple(reader.specs[p][0]) != tuple(s.shape)
  ]
  if missing or extra or wrong:
    raise CheckpointError(
      f"{item}: parameters do not match the architecture; missing {missing[:5]}, "
      f"unexpected {extra[:5]}, wrong shape {wrong[:5]} (pass the right --config)"
    )
  for path, sds in want.items():
    store = reader.open(path)

    def read(index, store=store, dtype=sds.dtype):
      return np.asarray(store[index].read().result(), dtype=dtype)

    _set(pure, path, jax.make_array_from_callback(sds.shape, sds.sharding, read))
  nnx.replace_by_pure_dict(abstract, pure)
  return nnx.merge(graphdef, abstract)


def load_dit(
  ckpt: str | None,
  pipeline_folder: str | None = None,
  *,
  which: str | None = None,
  step: int | str | None = None,
  config: WanConfig | None = None,
  mesh=None,
  rules=shd.RULES,
  **runtime,
) -> tuple[WanTransformer, str]:
  """``(model, description)`` of the DiT to sample with.

  ``ckpt``: ``None`` (the pipeline folder's own ``transformer/``, i.e. the teacher), a model
  checkpoint (``python -m pose_jax.convert import``), a training workdir (latest or ``step``;
  ``which`` = student | ema) or one step directory, as ``convert export --src`` takes. The
  architecture of a train step without a ``wan_config`` is ``config``, else the pipeline
  folder's ``transformer/config.json``. ``mesh``: parameters restored straight into their
  shardings (default: one device). ``runtime``: WanConfig run settings (dtype, attention, ...).
  """
  if ckpt is None:
    if pipeline_folder is None:
      raise ValueError("no checkpoint and no pipeline folder to take the transformer from")
    model = load_pipeline_transformer(pipeline_folder, **runtime)
    model = _shard_model(model, mesh, rules) if mesh is not None else model
    return model, f"{pipeline_folder}/transformer (the pipeline's own DiT)"
  root = epath.Path(ckpt)
  if (root / orbax_io.PARAMS).exists():
    if which not in (None, "student") or step not in (None, "latest"):
      raise CheckpointError(f"{ckpt} is a model checkpoint: --which/--step apply to train workdirs")
    return orbax_io.load_model(ckpt, mesh, rules, **runtime), f"model checkpoint {ckpt}"
  item, prefix, meta = export.resolve_source(ckpt, step, which)
  stored_dtype = str(next(iter(orbax_io.ParamReader(item, prefix).specs.values()))[1])
  if meta is not None:
    cfg = orbax_io.config_from_meta(meta, **runtime)
  elif config is not None:
    cfg = config.replace(**{"param_dtype": stored_dtype, **runtime})
  elif pipeline_folder is not None and os.path.isfile(
    os.path.join(pipeline_folder, "transformer", "config.json")
  ):
    dit = read_config(os.path.join(pipeline_folder, "transformer"))
    cfg = WanConfig.from_diffusers(dit, **{"param_dtype": stored_dtype, **runtime})
  else:
    raise CheckpointError(f"{item.parent}: no wan_config item; pass the architecture (--config)")
  cfg = cfg.replace(lora_rank=0)
  mesh = mesh or shd.make_mesh((1, 1, 1, 1), devices=jax.devices()[:1])
  model = load_train_params(item, prefix, cfg, mesh, rules)
  return model, f"{which or 'student'} of train step {item.parent}"
