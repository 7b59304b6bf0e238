"""diffusers ``WanTransformer3DModel`` checkpoints -> :class:`WanTransformer` parameters.

Name map (diffusers -> ours), everything else keeps its name:
  ``blocks.{i}.X``          -> ``blocks.X`` at index i of the stacked layer axis
  ``*.ffn.net.0.proj``      -> ``*.ffn.proj_in``;  ``*.ffn.net.2`` / ``*.ff.net.2`` -> ``proj_out``
  ``<linear>.weight [o,i]`` -> ``<linear>.kernel [i,o]``
  ``patch_embedding.weight [D,C,pt,ph,pw]`` -> ``patch_embedding.kernel [pt*ph*pw*C, D]``
Norm weights/biases and ``scale_shift_table`` are copied as they are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pose_jax.convert import strict
from pose_jax.convert.safetensors_io import SafetensorsReader, read_config
from pose_jax.models.layers import LoRAParam
from pose_jax.models.wan import WanConfig, WanTransformer

_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_RENAMES = ((".net.0.proj.", ".proj_in."), (".net.2.", ".proj_out."))


@strict.transform(lambda s: (s[2] * s[3] * s[4] * s[1], s[0]) if len(s) == 5 else None)
def _conv_to_dense(w: np.ndarray) -> np.ndarray:
  d, c, pt, ph, pw = w.shape
  return np.ascontiguousarray(w.transpose(2, 3, 4, 1, 0).reshape(pt * ph * pw * c, d))


def key_map(key: str) -> strict.Target | None:
  """diffusers key -> target in our flat state (None = no such parameter in our model)."""
  layer = None
  m = _BLOCK.match(key)
  if m:
    layer, key = int(m.group(1)), "blocks." + m.group(2)
  name = "." + key + "."
  for old, new in _RENAMES:
    name = name.replace(old, new)
  parts = name.strip(".").split(".")
  # 'to_out.0' is the Linear inside diffusers' ModuleList([Linear, Dropout]).
  if len(parts) >= 3 and parts[-3] == "to_out" and parts[-2] == "0":
    parts = parts[:-3] + ["to_out", parts[-1]]
  module, leaf = parts[:-1], parts[-1]
  if key == "patch_embedding.weight":
    return strict.Target(("patch_embedding", "kernel"), None, _conv_to_dense)
  if leaf == "weight" and module and not module[-1].startswith("norm"):
    return strict.Target((*module, "kernel"), layer, strict.LINEAR)
  if leaf in ("weight", "bias", "scale_shift_table"):
    return strict.Target((*module, leaf), layer)
  return None


def load_state_dict(
  state_dict: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
  model: WanTransformer,
  dtype=None,
) -> None:
  """Strictly loads diffusers-named numpy arrays into ``model`` in place.

  ``state_dict``: ``{key: array}`` or ``(key, array)`` pairs read one at a time, e.g. a torch
  ``WanTransformer3DModel``'s ``{k: v.numpy() for k, v in m.state_dict().items()}``. Arrays keep
  the sharding of the model's current parameters. LoRA parameters are not part of a diffusers
  checkpoint and are left as they are. Raises :class:`CheckpointError` listing every problem.
  """
  items = state_dict.items() if isinstance(state_dict, Mapping) else state_dict
  _, state = nnx.split(model)
  targets = strict.flat_shapes(state, nnx.Param, exclude=(LoRAParam,))
  buffers = strict.fill(items, targets, key_map, stacked="blocks", dtype=dtype)
  flat = {tuple(str(k) for k in p): var for p, var in nnx.to_flat_state(state)}
  for p, buf in buffers.items():
    var = flat[p]
    old = var.get_value()
    var.set_value(jax.device_put(jnp.asarray(buf, dtype=old.dtype), old.sharding))
  nnx.update(model, state)


def load_params(path: str, model: WanTransformer, dtype=None) -> None:
  """Strictly loads a diffusers checkpoint (dir or .safetensors file) into ``model`` in place
  (see :func:`load_state_dict`)."""
  load_state_dict(SafetensorsReader(path).items(), model, dtype)


def load_transformer(path: str, **runtime) -> WanTransformer:
  """Builds a :class:`WanTransformer` from a diffusers directory (``config.json`` + weights).

  ``runtime`` overrides run settings of :class:`WanConfig` (dtype, attention, remat, ...).
  """
  cfg = WanConfig.from_diffusers(read_config(path), **runtime)
  model = WanTransformer(cfg, rngs=nnx.Rngs(0))
  load_params(path, model)
  return model
