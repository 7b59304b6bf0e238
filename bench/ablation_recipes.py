"""The recipes of ``bench/ablations.py``: POSE and its ablations, each a set of distillation
phases and ``config.pose`` overrides on one shared teacher, and the sampler that scores it.

Distillation rows train the config's distillation steps (priming + equilibrium); rows that drop
a phase give its steps to the phase they keep, so every row trains the same number of steps.
"""

from __future__ import annotations

from typing import NamedTuple


class Row(NamedTuple):
  what: str  # the row's label in the table
  phases: tuple[str, ...] = ()  # distillation phases trained (): the teacher itself
  pose: dict = {}  # config.pose overrides
  sampler: str = "student"  # student | teacher (Euler + CFG)
  steps: int = 1  # sampling steps (teacher: --teacher_steps)


FULL = ("priming", "equilibrium")
ROWS: dict[str, Row] = {
  "teacher_cfg": Row("teacher, Euler + CFG", sampler="teacher", steps=0),
  "teacher_1": Row("teacher, 1 step"),
  "pose_1": Row("POSE, 1 step", FULL),
  "pose_2": Row("POSE, 2 steps", FULL, {"student_steps": 2}, steps=2),
  "pose_4": Row("POSE, 4 steps", FULL, {"student_steps": 4}, steps=4),
  "no_priming": Row("without priming (Phase II + III only)", ("equilibrium",)),
  "no_csds": Row("without C-SDS (lam_cons = 0)", FULL, {"lam_cons": 0.0}),
  "uncond_head": Row("unconditioned head", FULL, {"conditional": False}),
  "frozen_teacher": Row("frozen-teacher backbone", FULL, {"d_backbone": "frozen_teacher"}),
  "trainable_copy": Row("APT-style trainable copy", FULL, {"d_backbone": "trainable_copy"}),
  "joint": Row("DMD2-style joint", FULL, {"joint": True}),
  "dmd_only": Row("Phase I (DMD) only", ("priming",)),
}


def row_config(config, row: Row, seed: int, teacher: str):
  """``config`` for ``row``'s distillation at ``seed`` from the ``teacher`` checkpoint."""
  steps = dict(zip(config.pose.phases, config.pose.steps))
  total = sum(steps.get(p, 0) for p in FULL)
  missing = [p for p in FULL if p not in steps]
  if missing:
    raise ValueError(f"config.pose.phases={config.pose.phases} lacks {missing}: no step counts")
  c = config.copy_and_resolve_references()
  c.seed = seed
  c.ckpt.init_from = teacher
  c.pose.phases = row.phases
  own = [steps[p] for p in row.phases]
  own[-1] += total - sum(own)  # a dropped phase's steps go to the last phase kept
  c.pose.steps = tuple(own)
  for key, value in row.pose.items():
    c.pose[key] = value
  return c
