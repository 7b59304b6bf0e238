"""The POSE training recipe: mesh -> data -> models -> restore -> per-phase step -> loop.

A run walks ``config.pose.phases`` in order, each for its number of steps, switching phases
itself (fresh optimizer state per phase; the teacher becomes the pretrained student after a
``pretrain`` phase). Re-running the same command resumes from the latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import signal
import threading
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from jax.sharding import NamedSharding

from pose_jax import config as config_lib
from pose_jax import sharding as shd
from pose_jax.pose import models as pose_models
from pose_jax.pose.config import PoseConfig
from pose_jax.training import checkpoint as ckpt_lib
from pose_jax.training import optim, steps
from pose_jax.training import state as state_lib

BATCH_KEYS = ("latents", "cond", "text", "neg_text", "image")


@dataclasses.dataclass
class RunResult:
  state: state_lib.TrainState
  teacher: object
  models: pose_models.Models


class NonFiniteError(FloatingPointError):
  """Too many consecutive non-finite steps; the last good checkpoint is left intact."""


class Preempted(SystemExit):
  """SIGTERM (a TPU maintenance event, a scheduler): the current step finished, a checkpoint
  was written; rerunning the same command resumes there. Exits with status 0."""

  def __init__(self, step: int):
    super().__init__(0)
    self.step = step

  def __str__(self) -> str:
    return f"preempted: checkpoint written at step {self.step}; rerun the command to resume"


class PreemptionWatch:
  """Whether the run must stop for preemption after ``step``.

  One process: a SIGTERM handler sets a flag. Several processes: JAX's preemption service
  (started by ``jax.distributed.initialize``) catches the signal on any host and all processes
  agree on the same sync step (``CheckpointManager.reached_preemption``), so they save together.
  """

  def __init__(self):
    self.signalled = False
    self._previous = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.signalled = True
    print("SIGTERM received: finishing the current step, then checkpointing", flush=True)

  def reached(self, mngr, step: int) -> bool:
    if jax.process_count() > 1:
      return bool(mngr.reached_preemption(step))
    return self.signalled

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


def phase_plan(knobs: PoseConfig) -> list[tuple[str, int, int]]:
  """``[(phase, first_step, last_step_exclusive)]`` on the global step counter."""
  plan, start = [], 0
  for phase, n in zip(knobs.phases, knobs.steps):
    plan.append((phase, start, start + n))
    start += n
  return plan


def _global_batch(local: dict, mesh) -> dict:
  sharding = NamedSharding(mesh, shd.logical_to_spec((shd.ACT_BATCH,)))
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(local[k]))
    for k in BATCH_KEYS
    if local.get(k) is not None
  }


def _replicate_single_device(tree, mesh):
  """Leaves still on one device (scalars, RNG keys) -> replicated over the mesh."""
  replicated = NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.tree.map(
    lambda x: (
      jax.device_put(x, replicated)
      if isinstance(getattr(x, "sharding", None), jax.sharding.SingleDeviceSharding)
      else x
    ),
    tree,
  )


def _log_compiled(phase: str, compiled) -> dict:
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis() or {}
  cost = cost[0] if isinstance(cost, list) else cost
  info = {
    "phase": phase,
    "flops_per_step_xla": float(cost.get("flops", -1.0)),  # scanned layers counted once by XLA
    "argument_bytes": getattr(mem, "argument_size_in_bytes", None),
    "output_bytes": getattr(mem, "output_size_in_bytes", None),
    "temp_bytes": getattr(mem, "temp_size_in_bytes", None),
  }
  print(
    f"[{phase}] compiled step: " + ", ".join(f"{k}={v}" for k, v in info.items() if k != "phase")
  )
  return info


class MetricWriter:
  """Scalars as JSON lines in ``<workdir>/metrics.jsonl`` and as TensorBoard events under
  ``<workdir>/tensorboard`` (tensorboardX; ``gs://`` needs google-cloud-storage), process 0."""

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.path = epath.Path(workdir) / "metrics.jsonl"
    self.enabled = jax.process_index() == 0
    self.tb = None
    if self.enabled and tensorboard:
      from tensorboardX import SummaryWriter

      self.tb = SummaryWriter(str(epath.Path(workdir) / "tensorboard"), flush_secs=30)

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in metrics.items()}
    with self.path.open("a") as f:
      f.write(json.dumps({"step": step, **scalars}) + "\n")
    if self.tb is not None:
      for k, v in scalars.items():
        self.tb.add_scalar(k, v, step)

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()


def run(config: ml_collections.ConfigDict, workdir: str, data_iterator, evaluate=None) -> RunResult:
  """Trains per ``config``; ``data_iterator`` yields per-process batch dicts (numpy) and is
  checkpointable (grain ``DatasetIterator``). ``evaluate`` (an ``eval_samples.EvalSampler``:
  ``due(step, stop)``, ``(step, state) -> metrics``) runs at eval steps; its metrics are logged."""
  # --- mesh ------------------------------------------------------------------------------------
  knobs = PoseConfig.from_config(config.pose)
  cfg = config_lib.wan_config(config.model)
  mesh = shd.make_mesh(config.mesh.shape)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  plan = phase_plan(knobs)
  total = plan[-1][2]

  # --- models ----------------------------------------------------------------------------------
  models, teacher, lora, head = pose_models.build(cfg, knobs, seed=config.seed, mesh=mesh)
  teacher_trained_here = "pretrain" in knobs.phases
  if config.ckpt.init_from:
    from pose_jax.convert.orbax_io import restore_params  # the converted teacher

    _, teacher = restore_params(config.ckpt.init_from, mesh=mesh, like=teacher)

  def fresh_state(phase, teacher):
    tx = optim.make_optimizer(config.optim, phase, total, knobs)
    init = functools.partial(state_lib.init_state, tx, knobs=knobs, seed=config.seed)
    with shd.use_mesh(mesh):
      return jax.jit(init)(teacher, lora, head)

  def init_opt(phase, params):
    with shd.use_mesh(mesh):
      return jax.jit(optim.make_optimizer(config.optim, phase, total, knobs).init)(params)

  # --- restore ---------------------------------------------------------------------------------
  mngr = ckpt_lib.manager(workdir, config.ckpt.every, config.ckpt.keep, config.ckpt.async_save)
  meta = {"phase_index": 0}
  state = fresh_state(plan[0][0], teacher)
  latest = mngr.latest_step()
  if latest is not None:
    meta = mngr.restore(
      latest, args=ckpt_lib.ocp.args.Composite(meta=ckpt_lib.ocp.args.JsonRestore())
    )["meta"]
    phase_at = plan[meta["phase_index"]][0]
    state = fresh_state(phase_at, teacher)
    state, meta, restored_teacher = ckpt_lib.restore(
      mngr,
      latest,
      ckpt_lib.abstract(state),
      data_iterator,
      ckpt_lib.abstract(teacher) if meta.get("has_teacher") else None,
    )
    state = _replicate_single_device(state, mesh)  # orbax restores scalars onto one device
    teacher = restored_teacher if restored_teacher is not None else teacher
    print(f"resumed from step {latest} (phase {phase_at})")

  # --- loop over phases ------------------------------------------------------------------------
  loop = _Loop(
    config,
    knobs,
    models,
    mesh,
    mngr,
    MetricWriter(workdir, config.train.get("tensorboard", True)),
    data_iterator,
    PreemptionWatch(),
    init_opt,
    total,
    teacher_trained_here,
    evaluate,
  )
  try:
    state, teacher = loop.run_phases(plan, state, teacher, meta)
  finally:
    loop.watch.close()
    loop.writer.close()
  mngr.wait_until_finished()
  mngr.close()
  _write_fingerprint(workdir, state)
  return RunResult(state, teacher, models)


def _write_fingerprint(workdir: str, state) -> None:
  """``final.json``: the step and a sha256 over every trainable and EMA parameter's bytes, so
  two runs (e.g. interrupted + resumed vs uninterrupted) can be compared bit for bit."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves((state.params, state.ema)):
    digest.update(np.asarray(jax.device_get(leaf)).tobytes())
  if jax.process_index() == 0:
    info = {"step": int(state.step), "params_sha256": digest.hexdigest()}
    (epath.Path(workdir) / "final.json").write_text(json.dumps(info))


@dataclasses.dataclass
class _Loop:
  """What every phase's loop shares: config, models, mesh, checkpoints, metrics, data."""

  config: ml_collections.ConfigDict
  knobs: PoseConfig
  models: pose_models.Models
  mesh: object
  mngr: object
  writer: MetricWriter
  data: object
  watch: PreemptionWatch
  init_opt: Callable  # (phase, params) -> fresh optimizer state
  total: int
  teacher_trained_here: bool
  evaluate: Callable | None = None

  def run_phases(self, plan, state, teacher, meta):
    """Runs ``plan`` from ``meta['phase_index']``; returns ``(state, teacher)``."""
    mesh = self.mesh
    for index in range(meta["phase_index"], len(plan)):
      phase, start, stop = plan[index]
      if int(state.step) >= stop:
        continue
      if index != meta["phase_index"]:  # entering a new phase: fresh optimizer state
        if plan[index - 1][0] == "pretrain":  # the pretrained student becomes the teacher
          teacher = jax.tree.map(jnp.copy, state.params["student"])
        opt_state = self.init_opt(phase, state.params)
        state = _replicate_single_device(
          state.replace(opt_state=opt_state, bad_steps=jnp.int32(0)), mesh
        )
        meta = {"phase_index": index}
      tx = optim.make_optimizer(self.config.optim, phase, self.total, self.knobs)
      step_fn = steps.make_step(
        phase, self.knobs, self.models, tx, start, stop - start, self.config.train.micro_batches
      )
      jitted = steps.jit_step(step_fn, state)
      with shd.use_mesh(mesh):
        batch = _global_batch(next(self.data), mesh)
        t0 = time.perf_counter()
        compiled = jitted.lower(state, teacher, batch).compile()
        _log_compiled(phase, compiled)
        print(f"[{phase}] compile {time.perf_counter() - t0:.1f}s")
        saved_teacher = teacher if self.teacher_trained_here else None
        meta_out = {**meta, "has_teacher": self.teacher_trained_here}
        state = self.run_phase(
          phase, stop, compiled, state, teacher, batch, meta_out, saved_teacher
        )
      meta = {"phase_index": index}
    return state, teacher

  def run_phase(self, phase, stop, compiled, state, teacher, batch, meta, teacher_to_save):
    config, mngr, writer, data_iterator, mesh = (
      self.config,
      self.mngr,
      self.writer,
      self.data,
      self.mesh,
    )
    t_last, s_last = time.perf_counter(), int(state.step)
    while int(state.step) < stop:
      state, metrics = compiled(state, teacher, batch)
      step = int(state.step)
      if step % config.train.log_every == 0 or step == stop:
        metrics = jax.device_get(metrics)
        writer.write(step, {**metrics, "phase_index": meta["phase_index"]})
        now = time.perf_counter()
        rate = (step - s_last) / max(now - t_last, 1e-9)
        t_last, s_last = now, step
        eta = (stop - step) / max(rate, 1e-9)
        shown = " ".join(
          f"{k}={float(v):.4g}" for k, v in sorted(metrics.items()) if k.startswith("loss")
        )
        print(f"[{phase}] step {step}/{stop} {rate:.2f} steps/s eta {eta:.0f}s {shown}", flush=True)
      if self.evaluate is not None and self.evaluate.due(step, stop):
        scores = self.evaluate(step, state)
        writer.write(step, scores)
        shown = " ".join(
          f"{k.removeprefix('eval/')}={v:.4g}"
          for k, v in scores.items()
          if k.endswith(("psnr", "magnitude_px", "flicker"))
        )
        print(f"[{phase}] eval step {step}: {shown}", flush=True)
      if int(state.bad_steps) >= config.train.max_bad_steps:
        mngr.wait_until_finished()
        raise NonFiniteError(
          f"{int(state.bad_steps)} consecutive non-finite steps at step {step} ({phase}); the "
          f"updates were skipped and the last checkpoint ({mngr.latest_step()}) is intact"
        )
      preempted = self.watch.reached(mngr, step)
      ckpt_lib.save(
        mngr, step, state, meta, data_iterator, teacher_to_save, force=step == stop or preempted
      )
      if preempted:
        mngr.wait_until_finished()
        mngr.close()
        raise Preempted(step)
      if step < stop:
        batch = _global_batch(next(data_iterator), mesh)
    return state
