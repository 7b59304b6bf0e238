"""Resuming a workdir: which config changes a resume allows, and the newest intact checkpoint.

Every checkpoint's ``meta`` item holds the run's config (``config``, as JSON) next to the phase
index and the model's ``wan_config``. On resume, :func:`config_changes` compares it with the
config given now. What may change: the steps of the current and later phases, later phases
themselves, learning-rate schedules, logging, checkpointing, evaluation and the mesh. What may
not: the model, the method's knobs, the data, the seed, the teacher, anything that changes the
state's structure (``optim.*.clip`` on/off, ``optim.freeze``), and the phases already run.

:func:`newest_intact` walks the checkpoints from the newest: a step whose metadata or arrays
cannot be read (a truncated file, garbage metadata, an empty step folder) is named with what is
wrong and skipped; once an older step restores, the damaged newer ones are moved aside to
``<workdir>/checkpoints_damaged/`` (kept, never deleted), so training can write those steps
again.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable

import jax
import ml_collections
from etils import epath

from pose_jax.config import ConfigError
from pose_jax.training import checkpoint

# Dotted keys (or prefixes ending in ".") that a resume may change.
SAFE = (
  "train.log_every",
  "train.max_bad_steps",
  "train.tensorboard",
  "train.micro_batches",
  "ckpt.every",
  "ckpt.keep",
  "ckpt.async_save",
  "eval.",
  "data.eval_path",
  "data.cache_dir",
  "mesh.",
)
OPTIM_SAFE = ("lr", "lr_by_phase", "warmup_steps", "decay", "final_frac", "b1", "b2", "eps")
OPTIM_SAFE += ("weight_decay",)
DAMAGED_DIR = "checkpoints_damaged"


def config_json(config: ml_collections.ConfigDict) -> dict:
  """The config as the checkpoints store it (JSON: tuples become lists)."""
  return json.loads(config.to_json_best_effort())


def _flatten(tree, prefix: str = "") -> dict:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out or {prefix.removesuffix("."): {}}
  return {prefix.removesuffix("."): tree}


def _safe(key: str) -> bool:
  if any(key == s or (s.endswith(".") and key.startswith(s)) for s in SAFE):
    return True
  parts = key.split(".")
  return parts[0] == "optim" and len(parts) >= 3 and parts[2] in OPTIM_SAFE


def config_changes(saved: dict, now: dict, phase_index: int, step: int) -> tuple[list, list]:
  """``(refused, allowed)``: lines ``config.KEY: SAVED -> NOW`` for the keys that differ between
  the config a checkpoint was written with and the one given now, resuming at ``step`` inside
  phase ``phase_index``."""
  a, b = _flatten(saved), _flatten(now)
  refused, allowed = [], []
  for key in sorted(set(a) | set(b)):
    old, new = a.get(key, "<absent>"), b.get(key, "<absent>")
    if old == new or key in ("pose.phases", "pose.steps"):
      continue
    line = f"config.{key}: {old} -> {new}"
    (allowed if _safe(key) else refused).append(line)
  old_phases, new_phases = a.get("pose.phases", []), b.get("pose.phases", [])
  old_steps, new_steps = a.get("pose.steps", []), b.get("pose.steps", [])
  done = phase_index + 1  # phases run (or running) so far
  if old_phases[:done] != new_phases[:done]:
    refused.append(
      f"config.pose.phases: {old_phases} -> {new_phases} (the run is in phase "
      f"{old_phases[phase_index]!r}: the phases up to it cannot change)"
    )
  elif old_steps[:phase_index] != new_steps[:phase_index]:
    refused.append(
      f"config.pose.steps: {old_steps} -> {new_steps} (the phases before "
      f"{old_phases[phase_index]!r} are done: their steps cannot change)"
    )
  elif sum(new_steps[:done]) < step:
    refused.append(
      f"config.pose.steps: {old_steps} -> {new_steps} (the run is at step {step}, past the new "
      f"end {sum(new_steps[:done])} of phase {old_phases[phase_index]!r})"
    )
  elif (old_phases, old_steps) != (new_phases, new_steps):
    allowed.append(
      f"config.pose: phases {old_phases} -> {new_phases}, steps {old_steps} -> {new_steps}"
    )
  return refused, allowed


def check_config(meta: dict, config: ml_collections.ConfigDict, step: int, where: str) -> None:
  """Raises ConfigError listing what a resume at ``step`` may not change; prints what did."""
  if "config" not in meta:
    print(f"resume: {where} holds no config (an older checkpoint): not compared", flush=True)
    return
  refused, allowed = config_changes(meta["config"], config_json(config), meta["phase_index"], step)
  if refused:
    raise ConfigError(
      f"{where} was written with another config; these cannot change on resume: "
      + "; ".join(refused)
      + ". Use a new --workdir for another recipe (steps of the current and later phases, "
      "learning rates, logging, checkpointing and evaluation may change)"
    )
  for line in allowed:
    print(f"resume: changed {line}", flush=True)


def _reason(error: BaseException) -> str:
  """The innermost cause's message on one line (e.g. TensorStore's ``OUT_OF_RANGE: ...`` under
  orbax's wrapper that dumps the whole spec)."""
  while True:
    inner = error.__cause__ or error.__context__
    if inner is None or isinstance(inner, StopIteration | KeyError):  # internals, not the cause
      break
    error = inner
  text = " ".join(str(error).split()) or type(error).__name__
  return f"{type(error).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


def readable_metas(mngr) -> tuple[list[tuple[int, dict]], list[tuple[int, str]]]:
  """``([(step, meta)] newest first, [(step, what is wrong)])`` over the manager's steps."""
  metas, damaged = [], []
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      meta = checkpoint.restore_meta(mngr, step)
      if not isinstance(meta, dict) or "phase_index" not in meta:
        raise ValueError(f"metadata {str(meta)[:80]!r} has no phase_index")
    except Exception as e:  # noqa: BLE001 (any unreadable step is damaged)
      damaged.append((step, _reason(e)))
      continue
    metas.append((step, meta))
  return metas, damaged


def newest_intact(
  mngr, workdir: str, restore: Callable[[int, dict], tuple], metas=None
) -> tuple[int, dict, tuple] | None:
  """``(step, meta, restore(step, meta))`` of the newest step that restores, or ``None`` when
  the workdir has no checkpoint. Damaged steps are named on stdout, and moved aside when an
  older step restored; when none restores, a ``CheckpointDamaged`` names each."""
  metas, damaged = metas if metas is not None else readable_metas(mngr)
  if metas:
    _quiet_failed_reads()  # before a restore that may fail: its echoes start while it fails
  for step, why in damaged:
    print(f"checkpoint {step} is damaged ({why}): skipped", flush=True)
  for step, meta in metas:
    try:
      restored = restore(step, meta)
    except ConfigError:
      raise
    except Exception as e:  # noqa: BLE001 (any step that does not restore is damaged)
      why = _reason(e)
      print(f"checkpoint {step} is damaged ({why}): skipped", flush=True)
      damaged.append((step, why))
      continue
    newer = sorted(s for s, _ in damaged if s > step)
    if newer:
      _set_aside(mngr, workdir, newer)
      print(f"resuming from step {step}, the newest intact checkpoint", flush=True)
    return step, meta, restored
  if damaged:
    lines = "; ".join(f"step {s}: {why}" for s, why in sorted(damaged))
    raise CheckpointDamaged(
      f"{epath.Path(workdir) / 'checkpoints'}: no checkpoint restores ({lines}). Nothing was "
      "changed; move the damaged steps away to start over"
    )
  return None


def _quiet_failed_reads() -> None:
  """When a restore fails, orbax's pending reads of the same step fail one by one in its threads
  (a truncated file: one traceback per array, tens of thousands of lines, plus "Event loop is
  closed" from TensorStore's callbacks), starting while the restore is still failing; under load
  some surface later, as asyncio's "Task exception was never retrieved" log records. The step is
  named as damaged instead: these reports are dropped once restores begin (unraisable, thread
  and asyncio-logged alike); every other error still prints."""
  if getattr(sys.unraisablehook, "_pose_quiet", False):
    return
  unraisable, excepthook = sys.unraisablehook, sys.excepthook

  def quiet_unraisable(info):
    if not is_read_echo(info.exc_value):
      unraisable(info)

  def quiet_excepthook(kind, value, tb):
    if not is_read_echo(value):
      excepthook(kind, value, tb)

  quiet_unraisable._pose_quiet = True
  sys.unraisablehook, sys.excepthook = quiet_unraisable, quiet_excepthook
  logging.getLogger("asyncio").addFilter(
    lambda record: not (record.exc_info and is_read_echo(record.exc_info[1]))
  )


def is_read_echo(exc) -> bool:
  """Whether ``exc`` is an echo of a failed checkpoint read: TensorStore's closed event loop, or
  an error raised inside orbax's per-array read."""
  text = str(exc)
  if "Event loop is closed" in text or "error while reading array index" in text:
    return True
  tb = getattr(exc, "__traceback__", None)
  while tb is not None:
    if tb.tb_frame.f_code.co_name in _ORBAX_READS:
      return True
    tb = tb.tb_next
  return False


_ORBAX_READS = ("_read_array_index_and_device_put", "_read_shard")  # orbax serialization.py


class CheckpointDamaged(RuntimeError):
  """Every checkpoint of the workdir is damaged; nothing was moved or deleted."""


def _set_aside(mngr, workdir: str, steps: list[int]) -> None:
  """Moves damaged step folders to ``<workdir>/checkpoints_damaged/<step>[.N]`` (process 0)."""
  if jax.process_index() == 0:
    aside = epath.Path(workdir) / DAMAGED_DIR
    aside.mkdir(parents=True, exist_ok=True)
    for step in steps:
      src = epath.Path(workdir) / "checkpoints" / str(step)
      dst, n = aside / str(step), 1
      while dst.exists():
        dst, n = aside / f"{step}.{n}", n + 1
      src.rename(dst)
      print(f"checkpoint {step} moved to {dst} (kept for inspection)", flush=True)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("pose_jax: damaged checkpoints set aside")
  mngr.reload()
