"""One optax ``multi_transform`` over all trainable parameters, labelled by path.

The trainable tree has top-level groups ``student`` (the generator G), ``lora`` (the fake-score
LoRA on the frozen teacher), ``head`` (the discriminator head) and, only with
``pose.d_backbone=trainable_copy``, ``backbone`` (the discriminator's own DiT). Each phase trains
some of them (``trains`` in its record, :mod:`pose_jax.pose.phases`); the rest, and every path
matching ``optim.freeze`` regexes, get the label ``frozen`` (``optax.set_to_zero``: no update,
no state). Each trained label has its own
learning-rate schedule (``lr``, or per phase ``lr_by_phase``), gradient clipping and AdamW weight
decay (``config.optim.<group>``; ``backbone`` falls back to ``head``'s settings when
``config.optim.backbone`` is absent). The optimizer state is created fresh at the start of each
phase (the paper's phases use different lrs).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import ml_collections
import optax

from pose_jax.pose import phases
from pose_jax.pose.config import PoseConfig
from pose_jax.sharding import path_str

GROUPS = ("student", "lora", "head", "backbone")
FROZEN = "frozen"


def trained_groups(phase: str, knobs: PoseConfig | None = None) -> tuple[str, ...]:
  """The groups ``phase`` trains (its record's ``trains``; ``knobs=None``: the defaults, under
  which ``equilibrium`` trains neither ``lora`` nor ``backbone``)."""
  return phases.get(phase).trains(PoseConfig() if knobs is None else knobs)


def labels(params, phase: str, freeze: Sequence[str] = (), knobs=None):
  """The label tree: the group name where trained in ``phase``, else ``frozen``."""
  trained = trained_groups(phase, knobs)
  patterns = [re.compile(p) for p in freeze]

  def label(path, _):
    s = path_str(path)
    group = s.split("/", 1)[0]
    if group not in GROUPS:
      raise ValueError(f"parameter {s!r} is outside the groups {GROUPS}")
    if group not in trained or any(p.search(s) for p in patterns):
      return FROZEN
    return group

  return jax.tree_util.tree_map_with_path(label, params)


def schedule(c, total_steps: int) -> optax.Schedule:
  """Linear warm-up to ``c.lr``, then ``constant`` or ``cosine`` decay to ``lr * final_frac``."""
  warmup = min(int(c.warmup_steps), max(total_steps - 1, 0))
  if c.decay == "constant":
    main = optax.constant_schedule(c.lr)
  elif c.decay == "cosine":
    main = optax.cosine_decay_schedule(c.lr, max(total_steps - warmup, 1), alpha=c.final_frac)
  else:
    raise ValueError(f"optim decay {c.decay!r} not in (constant, cosine)")
  if not warmup:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, c.lr, warmup), main], [warmup])


def group_transform(c, total_steps: int) -> optax.GradientTransformation:
  parts = []
  if c.clip:
    parts.append(optax.clip_by_global_norm(c.clip))
  parts.append(
    optax.adamw(schedule(c, total_steps), b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay)
  )
  return optax.chain(*parts)


def _for_phase(c, phase: str, group: str):
  """``c`` with ``lr`` taken from the optional ``lr_by_phase`` mapping (e.g. the paper's 1e-6
  in priming and 2e-6 in equilibrium for the same student)."""
  by_phase = dict(c.get("lr_by_phase") or {})
  unknown = sorted(set(by_phase) - set(phases.PHASES))
  if unknown:
    raise ValueError(f"config.optim.{group}.lr_by_phase: unknown phases {unknown}")
  c = dict(c)
  c["lr"] = by_phase.get(phase, c["lr"])
  return ml_collections.ConfigDict(c)


def make_optimizer(optim, phase: str, total_steps: int, knobs=None) -> optax.GradientTransformation:
  """The phase's optimizer over the full trainable tree (``{student, lora, head[, backbone]}``)."""
  trained_groups(phase, knobs)  # validates the phase
  transforms = {FROZEN: optax.set_to_zero()}
  for group in GROUPS:
    settings = optim.get(group) or (optim.head if group == "backbone" else None)
    if settings is None:
      raise ValueError(f"config.optim.{group} is missing")
    transforms[group] = group_transform(_for_phase(settings, phase, group), total_steps)
  freeze = tuple(optim.get("freeze", ()))
  return optax.multi_transform(transforms, lambda params: labels(params, phase, freeze, knobs))
