"""One optax ``multi_transform`` over all trainable parameters, labelled by path.

The trainable tree has top-level groups ``student`` (the generator G), ``lora`` (the fake-score
LoRA on the frozen teacher) and ``head`` (the discriminator head). Each phase trains some of
them; the rest, and every path matching ``optim.freeze`` regexes, get the label ``frozen``
(``optax.set_to_zero``: no update, no state). Each trained label has its own learning-rate
schedule, gradient clipping and AdamW weight decay (``config.optim.<group>``). The optimizer
state is created fresh at the start of each phase (the paper's phases use different lrs).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import optax

GROUPS = ("student", "lora", "head")
TRAINED = {
  "pretrain": ("student",),
  "priming": ("student", "lora"),
  "equilibrium": ("student", "head"),
  "joint": ("student", "lora", "head"),
}
FROZEN = "frozen"


def path_str(path) -> str:
  """``student/blocks/attn1/to_q/kernel`` from a jax key path (nnx's ``.value`` dropped)."""
  parts = []
  for k in path:
    name = getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))
    if name != "value":
      parts.append(str(name))
  return "/".join(parts)


def labels(params, phase: str, freeze: Sequence[str] = ()):
  """The label tree: the group name where trained in ``phase``, else ``frozen``."""
  trained = TRAINED[phase]
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


def make_optimizer(optim, phase: str, total_steps: int) -> optax.GradientTransformation:
  """The phase's optimizer over the full trainable tree ``{student, lora, head}``."""
  if phase not in TRAINED:
    raise ValueError(f"unknown phase {phase!r}; choose from {sorted(TRAINED)}")
  transforms = {FROZEN: optax.set_to_zero()}
  for group in GROUPS:
    transforms[group] = group_transform(optim[group], total_steps)
  freeze = tuple(optim.get("freeze", ()))
  return optax.multi_transform(transforms, lambda params: labels(params, phase, freeze))
