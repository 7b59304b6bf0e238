"""The training loop of one phase, and what it runs with: metrics, checkpoints, preemption.

``run_phase`` calls a compiled step for the global steps ``start + 1 .. stop``, counted on the
host. The device is read only at log steps (``train.log_every`` and the phase's last step): one
``device_get`` of the step's metrics and the streak of non-finite steps. A non-finite step
leaves the parameters as they were (the step's own guard), so a streak found at a log step
stops the run with nothing lost; a streak that ends between log steps did no harm. Each step
may checkpoint (``ckpt.every``; always at the phase's end and on preemption).
"""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time
from collections.abc import Iterator

import jax
import numpy as np
from etils import epath
from jax.sharding import Mesh, NamedSharding

from pose_jax import sharding as shd
from pose_jax.aot.report import compiled_stats
from pose_jax.training import checkpoint

BATCH_KEYS = ("latents", "cond", "text", "neg_text", "image")


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


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoopContext:
  """What every phase's loop shares."""

  writer: MetricWriter
  mngr: object  # orbax CheckpointManager
  data: Iterator  # per-process numpy batches; checkpointable (grain DatasetIterator)
  watch: PreemptionWatch
  evals: object | None  # ``evals.EvalSampler``: ``due(step, stop)``, ``(step, state) -> metrics``
  mesh: Mesh
  log_every: int
  max_bad_steps: int

  def next_batch(self) -> dict:
    """The next global batch: each process's numpy batch, sharded over the batch axes."""
    local = next(self.data)
    sharding = NamedSharding(self.mesh, shd.logical_to_spec((shd.ACT_BATCH,)))
    return {
      k: jax.make_array_from_process_local_data(sharding, np.asarray(local[k]))
      for k in BATCH_KEYS
      if local.get(k) is not None
    }


def compile_step(phase: str, jitted, *args):
  """``jitted`` lowered and compiled for ``args``; logs XLA's memory and FLOPs and the time."""
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  stats = compiled_stats(compiled)
  print(f"[{phase}] compiled step: " + ", ".join(f"{k}={v}" for k, v in stats.items()))
  print(f"[{phase}] compile {time.perf_counter() - t0:.1f}s")
  return compiled


def run_phase(
  ctx: LoopContext,
  phase: str,
  compiled,
  state,
  teacher,
  batch: dict,
  *,
  start: int,
  stop: int,
  meta: dict,
  teacher_to_save=None,
):
  """Steps ``start + 1 .. stop`` of ``phase`` from ``state`` (at step ``start``) with ``batch``
  first; returns the state at ``stop``. ``meta`` (the phase index, whether the teacher is saved)
  and ``teacher_to_save`` (when trained here) go into every checkpoint."""
  t_last, s_last = time.perf_counter(), start
  for step in range(start + 1, stop + 1):
    state, metrics = compiled(state, teacher, batch)
    bad_steps = None
    if step % ctx.log_every == 0 or step == stop:
      metrics, bad_steps = jax.device_get((metrics, state.bad_steps))
      ctx.writer.write(step, {**metrics, "phase_index": meta["phase_index"]})
      now = time.perf_counter()
      rate = (step - s_last) / max(now - t_last, 1e-9)
      t_last, s_last = now, step
      eta = (stop - step) / max(rate, 1e-9)
      shown = " ".join(
        f"{k}={float(v):.4g}" for k, v in sorted(metrics.items()) if k.startswith("loss")
      )
      print(f"[{phase}] step {step}/{stop} {rate:.2f} steps/s eta {eta:.0f}s {shown}", flush=True)
    if ctx.evals is not None and ctx.evals.due(step, stop):
      _evaluate(ctx, phase, step, state)
    if bad_steps is not None and bad_steps >= ctx.max_bad_steps:
      ctx.mngr.wait_until_finished()
      raise NonFiniteError(
        f"{int(bad_steps)} consecutive non-finite steps at step {step} ({phase}); the updates "
        f"were skipped and the last checkpoint ({ctx.mngr.latest_step()}) is intact"
      )
    preempted = ctx.watch.reached(ctx.mngr, step)
    force = step == stop or preempted
    checkpoint.save(ctx.mngr, step, state, meta, ctx.data, teacher_to_save, force=force)
    if preempted:
      ctx.mngr.wait_until_finished()
      ctx.mngr.close()
      raise Preempted(step)
    if step < stop:
      batch = ctx.next_batch()
  return state


def _evaluate(ctx: LoopContext, phase: str, step: int, state) -> None:
  scores = ctx.evals(step, state)
  ctx.writer.write(step, scores)
  shown = " ".join(
    f"{k.removeprefix('eval/')}={v:.4g}"
    for k, v in scores.items()
    if k.endswith(("psnr", "magnitude_px", "flicker"))
  )
  print(f"[{phase}] eval step {step}: {shown}", flush=True)
