"""The training loop of one phase, and what it runs with: metrics, checkpoints, preemption.

``run_phase`` calls a compiled step for the global steps ``start + 1 .. stop``, counted on the
host. The device is read only at log steps (``train.log_every`` and the phase's last step): one
``device_get`` of the step's metrics and the streak of non-finite steps. The step and that read
run under ``jax.transfer_guard("disallow")``, so any implicit transfer (a sync that would stall
the asynchronous dispatch) is an error; the next batch is read and sent while the step runs
(outside the guard: with several processes ``make_array_from_process_local_data`` counts as an
implicit transfer). A non-finite step leaves the parameters as they were (the step's own
guard), so a streak found at a log step stops the run with nothing lost; a streak that ends
between log steps did no harm. Each step may checkpoint (``ckpt.every``; always at the phase's
end and on preemption).
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
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import Mesh, NamedSharding

from pose_jax import paths
from pose_jax import sharding as shd
from pose_jax.aot.report import compiled_stats
from pose_jax.training import checkpoint

BATCH_KEYS = ("latents", "cond", "text", "text_mask", "neg_text", "image")
COMPILE_BARRIER_S = 3600  # how long a process waits for the others to finish compiling


class NonFiniteError(FloatingPointError):
  """Too many consecutive non-finite steps; the last good checkpoint is left intact."""


class Preempted(SystemExit):
  """SIGTERM (a TPU maintenance event, a scheduler) or SIGINT (Ctrl-C): the latest checkpoint is
  current (the step in flight finished and was saved, or nothing ran since the last save);
  rerunning the same command resumes there. Exits with status 0."""

  def __init__(self, step: int | None, signal_name: str = "SIGTERM"):
    super().__init__(0)
    self.step = step
    self.signal_name = signal_name

  def __str__(self) -> str:
    if not self.step:
      return f"preempted ({self.signal_name}): nothing trained yet; rerun the command to start"
    return (
      f"preempted ({self.signal_name}): checkpoint written at step {self.step}; rerun the "
      "command to resume"
    )


class PreemptionWatch:
  """Whether the run must stop for preemption after ``step``, and a prompt exit when idle.

  One process: SIGTERM and SIGINT handlers. While steps run (``busy``), a signal sets a flag:
  the step in flight finishes, is checkpointed and the run exits (``reached``). Elsewhere (data
  build, restore, compiling, between phases: ``idle_at(step)``, the checkpoint at ``step``
  being current) the handler raises :class:`Preempted` at once, so a signal during a long
  compile does not wait for it. A second SIGINT raises ``KeyboardInterrupt``.

  Several processes: JAX's preemption service (started by ``jax.distributed.initialize``)
  catches SIGTERM on any host and all processes agree on the same sync step
  (``CheckpointManager.reached_preemption``), so they save together.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signalled = None  # the name of the signal received
    self._idle_step = 0  # idle, and the checkpoint at this step is current (0: none yet)
    self._previous = {}
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.signalled and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signalled = name
    if self._idle_step is not None:
      raise Preempted(self._idle_step, name)
    print(f"{name} received: finishing the current step, then checkpointing", flush=True)

  def check(self) -> None:
    """Raise :class:`Preempted` if a signal came while idle. The handler raises it itself, but
    Python drops an exception raised where it cannot propagate (a finalizer or a callback run
    while tracing: "Exception ignored in ..."); the flag it set stays, and this acts on it."""
    if self.signalled and self._idle_step is not None:
      raise Preempted(self._idle_step, self.signalled)

  def busy(self) -> None:
    """Steps are about to run: a signal is acted on after the step in flight."""
    self.check()
    self._idle_step = None

  def idle_at(self, step: int) -> None:
    """The checkpoint at ``step`` is current (or ``step == 0``: nothing trained yet)."""
    self._idle_step = step

  def reached(self, mngr, step: int) -> bool:
    if jax.process_count() > 1:
      return bool(mngr.reached_preemption(step))
    return self.signalled is not None

  def close(self) -> None:
    for s, previous in self._previous.items():
      signal.signal(s, previous)
    self._previous = {}


class MetricWriter:
  """Scalars as JSON lines in ``<workdir>/metrics.jsonl`` and as TensorBoard events under
  ``<workdir>/tensorboard`` (tensorboardX; ``gs://`` needs google-cloud-storage), process 0.

  ``start_step``: the step the run (re)starts from. Records past it, left by a run that went
  further than its last checkpoint, are dropped (TensorBoard: its purge step), and a torn last
  line (a write cut short) is repaired, so each step is logged once. A ``gs://`` object cannot
  be appended to (gcsfs' mode ``"a"`` overwrites): there the log is kept in memory and the whole
  object rewritten at each write, so what is in the bucket is always the complete log.
  """

  def __init__(self, workdir: str, tensorboard: bool = True, start_step: int = 0):
    self.path = epath.Path(workdir) / "metrics.jsonl"
    self.enabled = jax.process_index() == 0
    self.tb = None
    self._text = None  # remote: the log's whole text
    if self.enabled:
      _truncate_log(self.path, start_step)
      if paths.is_remote(workdir):
        self._text = self.path.read_text() if self.path.exists() else ""
    if self.enabled and tensorboard:
      from tensorboardX import SummaryWriter

      self.tb = SummaryWriter(
        str(epath.Path(workdir) / "tensorboard"), flush_secs=30, purge_step=start_step + 1
      )

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in metrics.items()}
    line = json.dumps({"step": step, **scalars}) + "\n"
    if self._text is None:
      with self.path.open("a") as f:
        f.write(line)
    else:
      self._text += line
      self.path.write_text(self._text)
    if self.tb is not None:
      for k, v in scalars.items():
        self.tb.add_scalar(k, v, step)

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()


def _truncate_log(path: epath.Path, start_step: int) -> None:
  """Drops the records of ``path`` past ``start_step`` and an unparsable torn last line; other
  lines (ours or not) are kept as they are. Rewritten only when something changes."""
  if not path.exists():
    return
  text = path.read_text()
  lines = text.split("\n")
  torn = lines.pop() if lines else ""  # "" when the file ends with a newline
  kept = []
  for line in lines + ([torn] if torn else []):
    try:
      record = json.loads(line)
    except ValueError:
      if line is not torn:
        kept.append(line)
      continue
    if not (isinstance(record, dict) and isinstance(record.get("step"), int | float)):
      kept.append(line)
    elif record["step"] <= start_step:
      kept.append(line)
  new = "".join(x + "\n" for x in kept)
  if new != text:
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_text(new)
    tmp.replace(path)


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


def barrier(key: str) -> None:
  """With several processes, waits until all reach ``key`` (the coordination service's barrier).
  Called after each compile, so the programs start together: a compile's time varies by host,
  and gloo, the CPU collectives, aborts the process on a peer about 30 s late."""
  if jax.process_count() > 1:
    sync = ocp.multihost.get_barrier_sync_fn()
    sync(key=key, timeout_ms=COMPILE_BARRIER_S * 1000)


class SyncedJit:
  """``jax.jit(fn)`` whose programs start together on every process: with several processes each
  new argument signature is compiled ahead, then :func:`barrier`; one process is a plain jit."""

  def __init__(self, fn, name: str):
    self.jitted, self.name, self._compiled = jax.jit(fn), name, {}

  def __call__(self, *args):
    if jax.process_count() == 1:
      return self.jitted(*args)
    leaves, tree = jax.tree.flatten(args)
    key = (tree, tuple((x.shape, x.dtype, getattr(x, "sharding", None)) for x in leaves))
    if key not in self._compiled:
      self._compiled[key] = self.jitted.lower(*args).compile()
      barrier(f"pose_jax: {self.name} compiled ({len(self._compiled)})")
    return self._compiled[key](*args)

  def lower(self, *args):
    return self.jitted.lower(*args)


_COMPILE_THREAD = "pose_jax compile"


def compile_in_flight() -> bool:
  """Whether a :func:`compile_step` helper thread is still inside XLA (a signal cut the wait)."""
  return any(t.name.startswith(_COMPILE_THREAD) and t.is_alive() for t in threading.enumerate())


def compile_step(phase: str, jitted, *args, watch: PreemptionWatch | None = None):
  """``jitted`` lowered and compiled for ``args``; logs XLA's memory and FLOPs and the time.

  XLA compiles in a helper thread while this one waits in short, signal-interruptible joins, so
  a SIGTERM/SIGINT during a long compile is acted on at once (``PreemptionWatch``; ``watch``
  is checked between joins, for a signal whose exception Python dropped while tracing)."""
  t0 = time.perf_counter()
  print(f"[{phase}] compiling the step ...", flush=True)
  lowered = jitted.lower(*args)  # traced here: the mesh context is this thread's
  out = {}

  def work():
    try:
      out["compiled"] = lowered.compile()
    except BaseException as e:  # noqa: BLE001 (re-raised in the caller's thread)
      out["error"] = e

  worker = threading.Thread(target=work, name=f"{_COMPILE_THREAD} {phase}", daemon=True)
  worker.start()
  while True:
    worker.join(0.1)
    if watch is not None:
      watch.check()
    if not worker.is_alive():
      break
  if "error" in out:
    raise out["error"]
  compiled = out["compiled"]
  barrier(f"pose_jax: {phase} step compiled")
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
  ctx.watch.busy()
  for step in range(start + 1, stop + 1):
    with jax.transfer_guard("disallow"):  # a hidden sync (``int(state.step)``) is an error
      state, metrics = compiled(state, teacher, batch)
      bad_steps = None
      if step % ctx.log_every == 0 or step == stop:
        metrics, bad_steps = jax.device_get((metrics, state.bad_steps))
    if bad_steps is not None:
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
      raise Preempted(step, ctx.watch.signalled or "SIGTERM")
    if step < stop:  # read and sent while the step runs (dispatch is asynchronous)
      batch = ctx.next_batch()
  ctx.watch.idle_at(stop)  # saved (asynchronously: the run's exit waits for it)
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
