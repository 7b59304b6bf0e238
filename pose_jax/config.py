"""Validation of experiment configs (``configs/*.py``), naming the offending key."""

from __future__ import annotations

import os

import ml_collections

from pose_jax import paths
from pose_jax import sharding as shd
from pose_jax.models.wan import WanConfig, preset
from pose_jax.models.wan.config import PRESETS
from pose_jax.pose import phases as pose_phases
from pose_jax.pose.config import PHASES, FieldError, PoseConfig

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
    mesh = shd.resolve_mesh_shape(config.mesh.shape, num_devices, config.mesh.slices)
  except ValueError as e:
    _fail("mesh.slices" if "slices=" in str(e) else "mesh.shape", str(e))
  if cfg.num_heads % mesh["tensor"]:
    _fail("mesh.shape", f"tensor={mesh['tensor']} does not divide num_heads={cfg.num_heads}")
  try:
    knobs = PoseConfig.from_config(config.pose)
  except FieldError as e:
    raise ConfigError("; ".join(f"config.pose.{k}: {m}" for k, m in e.problems)) from None
  except (TypeError, ValueError) as e:
    _fail("pose", str(e))
  if knobs.fake_updates_per_step > 1 and not any(
    "lora" in pose_phases.get(p).trains(knobs) for p in knobs.phases
  ):
    _fail(
      "pose.fake_updates_per_step",
      f"{knobs.fake_updates_per_step}: no phase of {knobs.phases} trains the fake score (LoRA): "
      "the extra updates need the priming phase or pose.joint=True",
    )
  if max(knobs.d_layers, default=0) >= cfg.num_layers:
    _fail("pose.d_layers", f"{knobs.d_layers} has a block index >= num_layers={cfg.num_layers}")
  if "pretrain" not in knobs.phases and not config.ckpt.init_from:
    _fail(
      "ckpt.init_from",
      "empty, and no 'pretrain' phase makes a teacher: give a converted teacher checkpoint "
      "(python -m pose_jax.convert import ...) or add the pretrain phase",
    )
  _validate_optim(config.optim)
  d = config.data
  if d.kind not in DATA_KINDS:
    _fail("data.kind", f"{d.kind!r} not in {DATA_KINDS}")
  if d.frames < 1 or (d.frames - 1) % VAE_TEMPORAL:
    _fail("data.frames", f"{d.frames} is not 1+4k (the VAE's temporal stride is 4)")
  if d.kind == "records" and not d.path:
    _fail("data.path", "data.kind='records' needs the directory of ArrayRecord shards")
  if d.kind == "records":
    for side in ("height", "width"):
      if d[side] and (d[side] < 0 or d[side] % 16):
        _fail(f"data.{side}", f"{d[side]} must be a positive multiple of 16 (0: the shards')")
  if d.kind == "toy" and d.size < 16:
    _fail("data.size", f"{d.size}: toy clips need a side of at least 16 pixels")
  t = config.train
  for key in ("batch_size", "log_every", "max_bad_steps"):
    if t[key] < 1:
      _fail(f"train.{key}", f"{t[key]} must be >= 1")
  dp = mesh["data"] * mesh["fsdp"]
  if t.batch_size % dp:
    _fail("train.batch_size", f"{t.batch_size} is not divisible by data x fsdp parallelism {dp}")
  if t.batch_size % num_processes:
    _fail("train.batch_size", f"{t.batch_size} is not divisible by {num_processes} processes")
  if t.micro_batches < 1 or (t.batch_size // num_processes) % t.micro_batches:
    _fail("train.micro_batches", f"{t.micro_batches} does not divide the per-process batch")
  if (t.batch_size // t.micro_batches) % dp:
    _fail(
      "train.micro_batches",
      f"{t.micro_batches}: a micro-batch of {t.batch_size // t.micro_batches} clips does not "
      f"divide over data x fsdp parallelism {dp}",
    )
  if config.eval.every < 0:
    _fail("eval.every", f"{config.eval.every} must be >= 0 (0: sample only at phase ends)")
  if config.eval.teacher_steps < 1:
    _fail("eval.teacher_steps", f"{config.eval.teacher_steps} must be >= 1")
  if config.eval.fps < 1:
    _fail("eval.fps", f"{config.eval.fps} must be >= 1")
  for key in ("every", "keep"):
    if config.ckpt[key] < 1:
      _fail(f"ckpt.{key}", f"{config.ckpt[key]} must be >= 1")


def check_paths(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for a local path the run reads that does not exist, before any work;
  ``gs://`` paths are checked when read (shards: ``pose_jax.data.bucket`` fetches them)."""
  if config.data.kind == "records" and paths.is_remote(config.data.get("cache_dir", "")):
    _fail("data.cache_dir", f"{config.data.cache_dir}: the shard cache must be on local disk")
  init_from = config.ckpt.init_from
  if init_from and "://" not in init_from and not os.path.isdir(init_from):
    _fail("ckpt.init_from", f"{init_from}: no such checkpoint directory")


def _validate_optim(optim: ml_collections.ConfigDict) -> None:
  """Every optimizer group's values in their ranges, named ``config.optim.<group>.<key>``."""
  for group in ("student", "lora", "head", "backbone"):
    c = optim[group]
    if c is None:
      continue
    key = f"optim.{group}"
    by_phase = dict(c.lr_by_phase or {})
    unknown = sorted(set(by_phase) - set(PHASES))
    if unknown:
      _fail(f"{key}.lr_by_phase", f"unknown phases {unknown} (choose from {PHASES})")
    for name, lr in [("lr", c.lr)] + [(f"lr_by_phase.{p}", v) for p, v in by_phase.items()]:
      if not lr > 0:
        _fail(f"{key}.{name}", f"{lr} must be > 0 (freeze parameters with config.optim.freeze)")
    if c.decay not in ("constant", "cosine"):
      _fail(f"{key}.decay", f"{c.decay!r} not in ('constant', 'cosine')")
    checks = [
      ("warmup_steps", c.warmup_steps >= 0, ">= 0"),
      ("final_frac", 0 <= c.final_frac <= 1, "in [0, 1]"),
      ("clip", c.clip >= 0, ">= 0 (0: no clipping)"),
      ("b1", 0 <= c.b1 < 1, "in [0, 1)"),
      ("b2", 0 <= c.b2 < 1, "in [0, 1)"),
      ("eps", c.eps > 0, "> 0"),
      ("weight_decay", c.weight_decay >= 0, ">= 0"),
    ]
    for name, ok, want in checks:
      if not ok:
        _fail(f"{key}.{name}", f"{c[name]} must be {want}")
