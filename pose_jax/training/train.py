"""The POSE training recipe: mesh -> data -> models -> state -> evals -> phases.

A run walks ``config.pose.phases`` in order, each for its number of steps, switching phases
itself (fresh optimizer state per phase; the teacher becomes the pretrained student after a
``pretrain`` phase). Re-running the same command resumes from the latest checkpoint.

Every state lives in the shardings of one abstract target (``state.abstract_state``): a fresh
run initialises straight into it, a resumed one restores into it, and the phase's step is
compiled for it. The models are built abstractly; only what a fresh run needs is initialised
(the teacher from ``ckpt.init_from`` is read straight into its sharding).
"""

from __future__ import annotations

import hashlib
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from pose_jax import config as config_lib
from pose_jax import data as data_lib
from pose_jax import sharding as shd
from pose_jax.convert import orbax_io
from pose_jax.pose import models as pose_models
from pose_jax.pose.config import PoseConfig
from pose_jax.training import checkpoint, evals, loop, optim, resume, steps
from pose_jax.training import state as state_lib
from pose_jax.training.loop import NonFiniteError, Preempted

__all__ = ["NonFiniteError", "Preempted", "phase_plan", "run", "start_up"]


def phase_plan(knobs: PoseConfig) -> list[tuple[str, int, int]]:
  """``[(phase, first_step, last_step_exclusive)]`` on the global step counter."""
  plan, start = [], 0
  for phase, n in zip(knobs.phases, knobs.steps):
    plan.append((phase, start, start + n))
    start += n
  return plan


def run(config: ml_collections.ConfigDict, workdir: str, data=None) -> state_lib.TrainState:
  """Trains per ``config`` in ``workdir`` and returns the final state. ``data``: ``(iterator,
  eval batch | None)`` in place of ``data.from_config(config, workdir)``; the iterator yields
  per-process batch dicts (numpy) and is checkpointable (grain ``DatasetIterator``).

  Raises ``ConfigError`` before any work when the workdir's checkpoints were written with a
  config this one may not replace (``training/resume.py``), and :class:`Preempted` on SIGTERM
  or SIGINT once the latest checkpoint is current."""
  watch = loop.PreemptionWatch()  # first: a signal during start-up exits at once, with status 0
  try:
    return _run(config, workdir, data, watch)
  finally:
    watch.close()


def _run(config, workdir: str, data, watch: loop.PreemptionWatch) -> state_lib.TrainState:
  knobs = PoseConfig.from_config(config.pose)
  cfg = config_lib.wan_config(config.model)
  plan = phase_plan(knobs)
  trained_here = "pretrain" in knobs.phases  # the teacher is made here, so checkpointed too
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  saved_meta = {  # in every checkpoint: what a resume compares and what an export reads
    "has_teacher": trained_here,
    "config": resume.config_json(config),
    **orbax_io.model_meta(cfg),
  }

  # --- Mesh ------------------------------------------------------------------------------------
  mesh = shd.make_mesh(config.mesh.shape, slices=config.mesh.slices)

  # --- Resume check: before any work, the workdir's config against this one ------------------
  mngr = checkpoint.manager(workdir, config.ckpt.every, config.ckpt.keep, config.ckpt.async_save)
  metas = resume.readable_metas(mngr)
  if metas[0]:
    newest, newest_meta = metas[0][0]
    resume.check_config(newest_meta, config, newest, f"{workdir} (checkpoint {newest})")

  # --- Data ------------------------------------------------------------------------------------
  iterator, eval_batch = data if data is not None else data_lib.from_config(config, workdir)

  # --- Models ----------------------------------------------------------------------------------
  models, *abstract = pose_models.build(cfg, knobs, config.seed, mesh, abstract=True)

  # --- State: the newest intact checkpoint, or a fresh one -------------------------------------
  first, step, tx, target, state, teacher = start_up(
    config, workdir, mngr, metas, iterator, mesh, abstract
  )
  teacher = pose_models.stored_teacher(teacher, knobs)  # after the student was made from it
  watch.idle_at(step)

  # --- Evals -----------------------------------------------------------------------------------
  sampler = evals.from_config(config, workdir, models.dit, eval_batch)

  # --- Phases ----------------------------------------------------------------------------------
  ctx = loop.LoopContext(
    writer=loop.MetricWriter(workdir, config.train.tensorboard, start_step=step),
    mngr=mngr,
    data=iterator,
    watch=watch,
    evals=sampler,
    mesh=mesh,
    log_every=config.train.log_every,
    max_bad_steps=config.train.max_bad_steps,
  )
  try:
    for index in range(first, len(plan)):
      phase, phase_start, stop = plan[index]
      if step >= stop:
        continue
      if index != first:  # entering a new phase: its own optimizer, fresh state
        previous = plan[index - 1][0]
        if previous == "pretrain":  # the pretrained student becomes the teacher
          teacher = jax.tree.map(jnp.copy, state.params["student"])
          teacher = pose_models.stored_teacher(teacher, knobs)
        tx = _optimizer(config, plan, index, knobs)
        target = state_lib.abstract_state(tx, *abstract, knobs, config.seed, mesh)
        rebase = state_lib.rebases(previous, phase, knobs)
        state = state_lib.next_phase(state, tx, target, rebase)
      step_fn = steps.make_step(
        phase, knobs, models, tx, phase_start, stop - phase_start, config.train.micro_batches
      )
      with shd.use_mesh(mesh):
        batch = ctx.next_batch()
        compiled = loop.compile_step(
          phase, steps.jit_step(step_fn, target), state, teacher, batch, watch=watch
        )
        state = loop.run_phase(
          ctx,
          phase,
          compiled,
          state,
          teacher,
          batch,
          start=step,
          stop=stop,
          meta={"phase_index": index, **saved_meta},
          teacher_to_save=teacher if trained_here else None,
        )
      step = stop
  finally:
    ctx.writer.close()
    mngr.wait_until_finished()  # an in-flight save completes, whatever ended the run
  mngr.close()
  _write_fingerprint(workdir, state)

  evals.print_toy_report(config, models, state, teacher, eval_batch)
  return state


def start_up(config, workdir: str, mngr, metas, iterator, mesh, abstract) -> tuple:
  """``(phase_index, step, tx, target, state, teacher)`` the run starts from: the newest intact
  checkpoint of ``mngr`` restored into its abstract target (with ``iterator``, unless ``None``),
  or a fresh state made straight into it. ``metas``: ``resume.readable_metas(mngr)``;
  ``abstract``: ``pose_models.build(..., abstract=True)[1:]``. Nothing is allocated that the run
  throws away (``bench/startup_memory.py`` measures it)."""
  knobs = PoseConfig.from_config(config.pose)
  cfg = config_lib.wan_config(config.model)
  plan = phase_plan(knobs)
  abstract_teacher = abstract[0]

  def restore(step: int, meta: dict) -> tuple:
    if metas[0] and step != metas[0][0][0]:
      resume.check_config(meta, config, step, f"{workdir} (checkpoint {step})")
    tx = _optimizer(config, plan, meta["phase_index"], knobs)
    target = state_lib.abstract_state(tx, *abstract, knobs, config.seed, mesh)
    saved = abstract_teacher if meta.get("has_teacher") else None
    state, _, teacher = checkpoint.restore(mngr, step, target, iterator, saved)
    return tx, target, state, teacher

  found = resume.newest_intact(mngr, workdir, restore, metas)
  if found is None:
    tx = _optimizer(config, plan, 0, knobs)
    target = state_lib.abstract_state(tx, *abstract, knobs, config.seed, mesh)
    teacher, lora, head = _fresh_params(config, cfg, knobs, mesh, abstract_teacher)
    state = state_lib.create(target, tx, teacher, lora, head, knobs, config.seed)
    return 0, 0, tx, target, state, teacher
  step, meta, (tx, target, state, teacher) = found
  if teacher is None:
    teacher = _teacher_from(config.ckpt.init_from, mesh, abstract_teacher)
  first = meta["phase_index"]
  print(f"resumed from step {step} (phase {plan[first][0]})", flush=True)
  return first, step, tx, target, state, teacher


def _optimizer(config, plan, index: int, knobs: PoseConfig):
  """Phase ``plan[index]``'s optimizer: its schedules span that phase's steps (its count starts
  at 0 with the phase's fresh optimizer state)."""
  phase, start, stop = plan[index]
  return optim.make_optimizer(config.optim, phase, stop - start, knobs)


def _teacher_from(path: str, mesh, abstract_teacher):
  """The converted teacher checkpoint at ``path``, read straight into its sharding."""
  _, params = orbax_io.restore_params(path, mesh=mesh, like=nnx.to_pure_dict(abstract_teacher))
  teacher = jax.tree.map(lambda a: a, abstract_teacher)  # a new State; the target stays abstract
  nnx.replace_by_pure_dict(teacher, params)
  return teacher


def _fresh_params(config, cfg, knobs, mesh, abstract_teacher) -> tuple:
  """``(teacher, lora, head)`` of a fresh run, in their shardings: the teacher from
  ``ckpt.init_from`` or, without one, random (a ``pretrain`` phase trains it)."""
  if not config.ckpt.init_from:
    return pose_models.build(cfg, knobs, config.seed, mesh)[1:]
  _, _, lora, head = pose_models.build(cfg, knobs, config.seed, mesh, abstract=("dit",))
  return _teacher_from(config.ckpt.init_from, mesh, abstract_teacher), lora, head


def fingerprint(tree) -> str:
  """A sha256 of every array of ``tree`` (values, dtypes and shapes, in leaf order), computed
  where the arrays are: each process hashes the shards it holds (replica 0 of each, in index
  order) and the processes' digests are combined, so nothing is gathered onto one host (an
  FSDP-sharded 14B student never fits there). Equal trees give equal fingerprints under one
  mesh and process layout; another layout shards them differently, so compare those by value."""
  local = hashlib.sha256()
  for i, leaf in enumerate(jax.tree.leaves(tree)):
    leaf = jnp.asarray(leaf)
    shards = sorted(
      (s for s in leaf.addressable_shards if s.replica_id == 0), key=lambda s: str(s.index)
    )
    for shard in shards:
      data = np.asarray(shard.data)
      local.update(f"{i}:{leaf.dtype}:{leaf.shape}:{shard.index}:".encode())
      local.update(data.tobytes())
  digest = np.frombuffer(local.digest(), np.uint8)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    digest = np.asarray(multihost_utils.process_allgather(digest)).reshape(-1)
  return hashlib.sha256(digest.tobytes()).hexdigest()


def _write_fingerprint(workdir: str, state) -> None:
  """``final.json``: the step and :func:`fingerprint` of every trainable and EMA parameter, so
  two runs (e.g. interrupted + resumed vs uninterrupted) can be compared bit for bit."""
  digest = fingerprint((state.params, state.ema))
  if jax.process_index() == 0:
    info = {"step": int(state.step), "params_sha256": digest}
    (epath.Path(workdir) / "final.json").write_text(json.dumps(info))
