"""Validation of experiment configs (``configs/*.py``), naming the offending key."""

from __future__ import annotations

import ml_collections

from pose_jax import sharding as shd
from pose_jax.models.wan import WanConfig, preset
from pose_jax.models.wan.config import PRESETS
from pose_jax.pose.config import PoseConfig

VAE_TEMPORAL = 4
DATA_KINDS = ("toy", "records")


class ConfigError(ValueError):
  """A config value is invalid; the message starts with the dotted key."""


def _fail(key: str, msg: str):
  raise ConfigError(f"config.{key}: {msg}")


def wan_config(model: ml_collections.ConfigDict) -> WanConfig:
  """The WanConfig of ``config.model`` (a preset plus overrides)."""
  if model.preset not in PRESETS:
    _fail("model.preset", f"unknown preset {model.preset!r}; choose one of {sorted(PRESETS)}")
  overrides = {k: v for k, v in model.items() if k != "preset"}
  try:
    return preset(model.preset, **overrides)
  except (TypeError, ValueError) as e:
    _fail("model", str(e))


def validate(config: ml_collections.ConfigDict, num_devices: int, num_processes: int = 1) -> None:
  """Raises ConfigError naming the first bad key."""
  cfg = wan_config(config.model)
  try:
    mesh = shd.resolve_mesh_shape(config.mesh.shape, num_devices)
  except ValueError as e:
    _fail("mesh.shape", str(e))
  if cfg.num_heads % mesh["tensor"]:
    _fail("mesh.shape", f"tensor={mesh['tensor']} does not divide num_heads={cfg.num_heads}")
  try:
    knobs = PoseConfig.from_config(config.pose)
  except (TypeError, ValueError) as e:
    _fail("pose", str(e))
  if max(knobs.d_layers, default=0) >= cfg.num_layers:
    _fail("pose.d_layers", f"{knobs.d_layers} has a block index >= num_layers={cfg.num_layers}")
  if "pretrain" not in knobs.phases and not config.ckpt.init_from:
    _fail(
      "ckpt.init_from",
      "empty, and no 'pretrain' phase makes a teacher: give a converted teacher checkpoint "
      "(python -m pose_jax.convert import ...) or add the pretrain phase",
    )
  d = config.data
  if d.kind not in DATA_KINDS:
    _fail("data.kind", f"{d.kind!r} not in {DATA_KINDS}")
  if d.frames < 1 or (d.frames - 1) % VAE_TEMPORAL:
    _fail("data.frames", f"{d.frames} is not 1+4k (the VAE's temporal stride is 4)")
  if d.kind == "records" and not d.path:
    _fail("data.path", "data.kind='records' needs the directory of ArrayRecord shards")
  t = config.train
  dp = mesh["data"] * mesh["fsdp"]
  if t.batch_size % dp:
    _fail("train.batch_size", f"{t.batch_size} is not divisible by data x fsdp parallelism {dp}")
  if t.batch_size % num_processes:
    _fail("train.batch_size", f"{t.batch_size} is not divisible by {num_processes} processes")
  if t.micro_batches < 1 or (t.batch_size // num_processes) % t.micro_batches:
    _fail("train.micro_batches", f"{t.micro_batches} does not divide the per-process batch")
  if config.eval.every < 0:
    _fail("eval.every", f"{config.eval.every} must be >= 0 (0: sample only at phase ends)")
  if config.ckpt.every < 1 or config.ckpt.keep < 1:
    _fail("ckpt", "every and keep must be >= 1")
