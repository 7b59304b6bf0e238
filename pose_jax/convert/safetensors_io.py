"""Reading diffusers/transformers checkpoints with ``safetensors`` (numpy; torch never imported).

A checkpoint is a directory holding ``config.json`` and either one ``*.safetensors`` file or
shards listed by a ``*.safetensors.index.json`` (its ``weight_map``), or a single file path.
Tensors are read lazily, one at a time. Problems (missing shard, truncated or corrupt file,
key listed in the index but absent from its shard) raise :class:`CheckpointError` naming the file.
``config.json`` files are read through etils ``epath`` (local or ``gs://``); the tensors are
memory-mapped by ``safe_open``, from local disk only, so a ``gs://`` checkpoint is refused
(:class:`pose_jax.paths.LocalOnly`) with what to do.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import numpy as np
from etils import epath
from safetensors import safe_open

from pose_jax.convert.errors import CheckpointError
from pose_jax.paths import GCSFUSE, local_only

LOCAL = "safetensors files are memory-mapped from local disk"


def read_config(path: str, name: str = "config.json") -> dict:
  config_path = epath.Path(path) / name
  if not config_path.is_file():
    raise CheckpointError(f"{config_path}: no such file (expected a diffusers/transformers config)")
  try:
    return json.loads(config_path.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{config_path}: not valid JSON ({e})") from e


class SafetensorsReader:
  """Key -> numpy array over a single file or an index of shards."""

  def __init__(self, path: str, prefix: str = "diffusion_pytorch_model"):
    local_only(path, "safetensors checkpoint", LOCAL, f"copy it locally or {GCSFUSE}")
    if os.path.isfile(path):
      self._files = {None: path}
      self._map = None
    elif os.path.isdir(path):
      index = os.path.join(path, f"{prefix}.safetensors.index.json")
      single = os.path.join(path, f"{prefix}.safetensors")
      if os.path.isfile(index):
        try:
          with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
          raise CheckpointError(f"{index}: not a safetensors index with a weight_map ({e})") from e
        self._map = weight_map
        self._files = {s: os.path.join(path, s) for s in sorted(set(weight_map.values()))}
        missing = [f for f in self._files.values() if not os.path.isfile(f)]
        if missing:
          raise CheckpointError(f"{index} lists shards that do not exist: {missing}")
      elif os.path.isfile(single):
        self._files, self._map = {None: single}, None
      else:
        raise CheckpointError(f"{path}: neither {prefix}.safetensors nor its .index.json found")
    else:
      raise CheckpointError(f"{path}: no such file or directory")
    self._handles = {}
    self._keys = None

  def _open(self, shard):
    if shard not in self._handles:
      fname = self._files[shard]
      try:
        self._handles[shard] = safe_open(fname, framework="numpy")
      except Exception as e:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"{fname}: cannot read safetensors file ({e})") from e
    return self._handles[shard]

  def keys(self) -> list[str]:
    if self._keys is None:
      if self._map is not None:
        self._keys = sorted(self._map)
        for shard in self._files:
          have = set(self._open(shard).keys())
          lost = [k for k, s in self._map.items() if s == shard and k not in have]
          if lost:
            raise CheckpointError(
              f"{self._files[shard]}: keys in the index are absent: {lost[:10]}"
            )
      else:
        self._keys = sorted(self._open(None).keys())
    return self._keys

  def file_of(self, key: str) -> str:
    return self._files[self._map[key] if self._map is not None else None]

  def get(self, key: str) -> np.ndarray:
    shard = self._map[key] if self._map is not None else None
    try:
      return self._open(shard).get_tensor(key)
    except Exception as e:
      raise CheckpointError(f"{self._files[shard]}: cannot read tensor {key!r} ({e})") from e

  def items(self) -> Iterator[tuple[str, np.ndarray]]:
    for k in self.keys():
      yield k, self.get(k)
