"""Every decided-but-ablatable detail of POSE as one frozen dataclass (``config.pose``).

The method and what each field means: ``docs/method.md``; the defaults are its recipe. Each field
is settable from the command line, e.g. ``--config.pose.lam_cons=0`` or
``--config.pose.d_backbone=frozen_teacher``; an unknown key or a bad value fails naming the field.
"""

from __future__ import annotations

import dataclasses

PHASES = ("pretrain", "priming", "equilibrium")
D_BACKBONES = ("ema", "frozen_teacher", "trainable_copy")
D_NOISE = ("uniform", "logit_normal", "fake_band")


@dataclasses.dataclass(frozen=True)
class PoseConfig:
  phases: tuple[str, ...] = ("priming", "equilibrium")
  steps: tuple[int, ...] = (500, 1000)  # one entry per phase
  flow_shift: float = 3.0  # teacher/fake time shift (Wan: 3.0 at 480p, 5.0 at 720p)
  # Pretrain (making a small teacher): text -> negative prompt in this fraction of samples, so
  # that the teacher's CFG (cfg_real, cons_cfg) has a trained unconditional branch.
  text_dropout: float = 0.1
  # Phase I (priming): DMD / VSD near the noise end.
  s_lo: float = 0.9  # generator input time s ~ U[s_lo, 1]
  s_lo_end: float | None = None  # curriculum: s_lo moves linearly to this over the phase
  cfg_real: float = 5.0  # teacher CFG scale in the DMD target (negative = empty prompt)
  fake_updates_per_step: int = 1  # LoRA-only updates per step (DMD2's TTUR), the last one fused
  lora_rank: int = 64
  lora_alpha: float | None = None
  # Phase II (equilibrium).
  d_backbone: str = "ema"  # ema | frozen_teacher | trainable_copy (APT-style)
  d_layers: tuple[int, ...] = ()  # tapped blocks; () = 4 evenly spaced
  d_num_queries: int = 8
  d_width: int = 1024
  d_heads: int = 8
  d_noise: str = "uniform"  # uniform | logit_normal | fake_band ([0.9,1] fake, (0,1) real)
  ema_decay: float = 0.995
  lam_r1: float = 1.0
  sigma_s: float = 0.01
  sigma_t: float = 0.1
  # Phase III (I2V conditional consistency, active inside equilibrium).
  conditional: bool = True  # semantic head conditioned on image + text tokens
  lam_cons: float = 10.0  # C-SDS weight; 0 switches it off
  cons_cfg: float = 1.0
  # DMD2-style: the equilibrium phase also carries Phase I's VSD terms (DMD generator loss on
  # its one-step sample + the LoRA fake score), the GAN generator loss weighted by
  # joint_gan_weight.
  joint: bool = False
  joint_gan_weight: float = 1.0

  def __post_init__(self):
    problems = []
    bad = [p for p in self.phases if p not in PHASES]
    if bad or not self.phases:
      problems.append(f"phases: unknown {bad} (choose from {PHASES})")
    if len(self.steps) != len(self.phases):
      problems.append(f"steps: {len(self.steps)} entries for {len(self.phases)} phases")
    if any(s < 1 for s in self.steps):
      problems.append("steps: every phase needs >= 1 step")
    if self.d_backbone not in D_BACKBONES:
      problems.append(f"d_backbone: {self.d_backbone!r} not in {D_BACKBONES}")
    if self.d_noise not in D_NOISE:
      problems.append(f"d_noise: {self.d_noise!r} not in {D_NOISE}")
    if not 0.0 <= self.s_lo < 1.0:
      problems.append(f"s_lo: {self.s_lo} must be in [0, 1)")
    if not 0.0 < self.ema_decay < 1.0:
      problems.append(f"ema_decay: {self.ema_decay} must be in (0, 1)")
    if not 0.0 <= self.text_dropout < 1.0:
      problems.append(f"text_dropout: {self.text_dropout} must be in [0, 1)")
    if self.fake_updates_per_step < 1:
      problems.append(f"fake_updates_per_step: {self.fake_updates_per_step} must be >= 1")
    if self.lora_rank < 1:
      problems.append("lora_rank: must be >= 1")
    if problems:
      raise ValueError("; ".join(problems))

  @classmethod
  def from_config(cls, pose) -> PoseConfig:
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(pose.keys()) - fields)
    if unknown:
      raise ValueError(f"unknown keys {unknown}")
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in pose.items()}
    return cls(**kw)

  @classmethod
  def config_section(cls, **overrides):
    """``config.pose`` for ``configs/common.base()``: these defaults plus ``overrides``.
    Optional fields become typed placeholders so they can still be set from the command line."""
    from ml_collections import config_dict

    defaults = {f.name: getattr(cls, f.name) for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
      raise ValueError(f"unknown keys {unknown}")
    values = {**defaults, **overrides}
    for name in cls.__dataclass_fields__:
      if values[name] is None:
        values[name] = config_dict.placeholder(float)
    return config_dict.ConfigDict(values)

  def s_lo_at(self, frac):
    """Generator input lower bound at fraction ``frac`` of Phase I (curriculum)."""
    if self.s_lo_end is None:
      return self.s_lo
    return self.s_lo + (self.s_lo_end - self.s_lo) * frac
