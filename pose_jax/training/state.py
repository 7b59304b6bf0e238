"""The train state: what one fused step reads and returns, its fresh initial value, and its
abstract (shapes + shardings) target, shared by the trainer (restore target, sharded init) and
the ahead-of-time compiler (:mod:`pose_jax.aot`).

The trainer only ever makes states in the target's shardings: ``create`` (a fresh run),
``checkpoint.restore`` into the target (a resumed one) and ``next_phase`` (a new optimizer).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pose_jax.pose.config import PoseConfig


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # global step
  params: dict  # {'student': State, 'lora': State, 'head': State}
  ema: Any  # EMA of the student (same tree as params['student'])
  opt_state: Any
  rng: jax.Array
  bad_steps: jax.Array  # consecutive non-finite steps
  skipped: jax.Array  # total skipped steps


def init_state(tx, teacher, lora, head, knobs: PoseConfig, seed: int = 0) -> TrainState:
  """A fresh state: the student and EMA start as the teacher (copies: the state is donated);
  with ``d_backbone=trainable_copy`` the discriminator gets its own copy too. Pure, so it runs
  under ``jax.jit`` (sharded) or ``jax.eval_shape`` (ahead-of-time compiles)."""
  copy = lambda tree: jax.tree.map(jnp.copy, tree)
  params = {"student": copy(teacher), "lora": copy(lora), "head": copy(head)}
  if knobs.d_backbone == "trainable_copy":
    params["backbone"] = copy(teacher)
  return TrainState(
    step=jnp.int32(0),
    params=params,
    ema=copy(teacher),
    opt_state=tx.init(params),
    rng=jax.random.key(seed),
    bad_steps=jnp.int32(0),
    skipped=jnp.int32(0),
  )


def abstract_state(tx, teacher, lora, head, knobs, seed, mesh):
  """``init_state`` under ``eval_shape``, with the shardings ``train.run`` gives it: the
  student, EMA (and a trainable backbone) as the teacher's, LoRA and head their own, optimizer
  moments as their parameters, scalars and the RNG key replicated. ``teacher``, ``lora`` and
  ``head`` are abstract (``ShapeDtypeStruct``s with shardings) or live trees."""
  shapes = jax.eval_shape(
    functools.partial(init_state, tx, knobs=knobs, seed=seed), teacher, lora, head
  )
  rep = NamedSharding(mesh, P())
  masked = optax.transforms.MaskedNode
  sds = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
  like = lambda tree, ref: jax.tree.map(lambda a, r: sds(a, r.sharding), tree, ref)
  refs = {"student": teacher, "lora": lora, "head": head, "backbone": teacher}
  params = {k: like(v, refs[k]) for k, v in shapes.params.items()}
  opt_state = optax.tree_map_params(
    tx,
    lambda o, p: o if isinstance(o, masked) else sds(o, p.sharding),
    shapes.opt_state,
    params,
    transform_non_params=lambda o: sds(o, rep),
    is_leaf=lambda x: isinstance(x, masked),
  )
  return shapes.replace(
    step=sds(shapes.step, rep),
    params=params,
    ema=like(shapes.ema, teacher),
    opt_state=opt_state,
    rng=sds(shapes.rng, rep),
    bad_steps=sds(shapes.bad_steps, rep),
    skipped=sds(shapes.skipped, rep),
  )


def rebases(previous: str, phase: str, knobs: PoseConfig) -> bool:
  """Whether entering ``phase`` from ``previous`` restarts E (and a trainable backbone) from the
  student: always after ``pretrain`` (the pretrained student is the new teacher, and E and the
  backbone still hold the random initialisation otherwise), and at priming -> equilibrium with
  ``knobs.rebase_on_primed`` (the paper's primed generator as the backbone)."""
  if previous == "pretrain":
    return True
  return previous == "priming" and phase == "equilibrium" and knobs.rebase_on_primed


def shardings(tree):
  """The ``NamedSharding`` of every leaf of an abstract (or live) tree."""
  return jax.tree.map(lambda x: x.sharding, tree)


def create(target: TrainState, tx, teacher, lora, head, knobs: PoseConfig, seed: int = 0):
  """``init_state`` jitted straight into ``target``'s shardings (the ``abstract_state`` of the
  same arguments): no leaf is ever whole on one device."""
  init = functools.partial(init_state, tx, knobs=knobs, seed=seed)
  return jax.jit(init, out_shardings=shardings(target))(teacher, lora, head)


def next_phase(state: TrainState, tx, target: TrainState, rebase: bool = False) -> TrainState:
  """``state`` entering a new phase: a fresh optimizer state of ``tx`` and no streak of
  non-finite steps, in ``target``'s shardings (``state`` is donated). ``rebase``: the EMA (and a
  trainable discriminator backbone) restart as copies of the student (see :func:`rebases`)."""

  def fresh(s):
    if rebase:
      student = s.params["student"]
      params = dict(s.params)
      if "backbone" in params:
        params["backbone"] = jax.tree.map(jnp.copy, student)
      s = s.replace(params=params, ema=jax.tree.map(jnp.copy, student))
    return s.replace(opt_state=tx.init(s.params), bad_steps=jnp.zeros_like(s.bad_steps))

  return jax.jit(fresh, out_shardings=shardings(target), donate_argnums=0)(state)
