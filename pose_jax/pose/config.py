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
TEACHER_DTYPES = ("float32", "bfloat16")
TIME_DISTS = ("uniform", "logit_normal")


class FieldError(ValueError):
  """Values of :class:`PoseConfig` out of range: ``problems`` is ``[(field, message)]``."""

  def __init__(self, problems: list[tuple[str, str]]):
    super().__init__("; ".join(f"{k}: {m}" for k, m in problems))
    self.problems = problems


@dataclasses.dataclass(frozen=True)
class PoseConfig:
  phases: tuple[str, ...] = ("priming", "equilibrium")
  steps: tuple[int, ...] = (500, 1000)  # one entry per phase
  flow_shift: float = 3.0  # teacher/fake time shift (Wan: 3.0 at 480p, 5.0 at 720p)
  # The generator-input band [s_lo, 1] (Phase I) and the fake band [d_fake_lo, 1]
  # (d_noise=fake_band) are times t themselves (False: the paper's "0.9T"), or bands of u with
  # t = shift(u, flow_shift) (True). Both bands are read the same way.
  shift_bands: bool = False
  # logit_normal draws (d_noise, cons_t_dist): u = sigmoid(N(logit_mean, logit_std)).
  logit_mean: float = 0.0
  logit_std: float = 1.0
  # Pretrain (making a small teacher): text -> negative prompt in this fraction of samples, so
  # that the teacher's CFG (cfg_real, cons_cfg) has a trained unconditional branch.
  text_dropout: float = 0.1
  # The frozen teacher's stored dtype (float32 | bfloat16): R, F's LoRA base and a
  # frozen_teacher D backbone read it. The DiT computes in config.model.dtype (bf16 for the 14B)
  # either way, so bfloat16 halves its memory and its FSDP gathers, with only the norms' and
  # modulation's parameters read at lower precision. The student, EMA and optimizer stay fp32.
  teacher_dtype: str = "float32"
  # Phase I (priming): DMD / VSD near the noise end.
  s_lo: float = 0.9  # generator input time s ~ U[s_lo, 1]
  s_lo_end: float | None = None  # curriculum: s_lo moves linearly to this over the phase
  cfg_real: float = 5.0  # teacher CFG scale in the DMD target (unconditional: negative prompt)
  fake_updates_per_step: int = 1  # LoRA-only updates per step (DMD2's TTUR), the last one fused
  vsd_t: tuple[float, float] = (0.0, 1.0)  # VSD/DMD re-noise t' = shift(U[lo, hi]) (DMD2: .02-.98)
  lora_rank: int = 64
  lora_alpha: float | None = None
  # Phase II (equilibrium).
  d_backbone: str = "ema"  # ema | frozen_teacher | trainable_copy (APT-style)
  d_layers: tuple[int, ...] = ()  # tapped blocks; () = 4 evenly spaced
  d_num_queries: int = 8
  d_width: int = 1024
  d_heads: int = 8
  d_noise: str = "uniform"  # uniform | logit_normal | fake_band (fake in the band, real (0,1))
  d_fake_lo: float = 0.9  # the fake band's lower end (d_noise=fake_band; see shift_bands)
  ema_decay: float = 0.995
  lam_r1: float = 1.0
  sigma_s: float = 0.01
  sigma_t: float = 0.1
  # Phase III (I2V conditional consistency, active inside equilibrium).
  conditional: bool = True  # semantic head conditioned on image + text tokens
  lam_cons: float = 10.0  # C-SDS weight; 0 switches it off
  cons_cfg: float = 1.0
  cons_t: tuple[float, float] = (0.0, 1.0)  # C-SDS re-noise t'' = shift(dist on [lo, hi])
  cons_t_dist: str = "uniform"  # uniform | logit_normal
  # E (and a trainable_copy backbone) restart from the primed student at priming ->
  # equilibrium (the paper repurposes the primed generator as the backbone). After a pretrain
  # phase they always restart from the pretrained student (the new teacher).
  rebase_on_primed: bool = True
  # The student's sampling steps (NFE). > 1: equilibrium trains G at each of the shifted,
  # evenly spaced times of generator.times(student_steps, flow_shift), on inputs made by its own
  # earlier steps (backward simulation, no gradient), as the k-step sampler makes them.
  student_steps: int = 1
  # DMD2-style: the equilibrium phase also carries Phase I's VSD terms (DMD generator loss on
  # its one-step sample + the LoRA fake score), the GAN generator loss weighted by
  # joint_gan_weight.
  joint: bool = False
  joint_gan_weight: float = 1.0

  def __post_init__(self):
    problems = self.problems()
    if problems:
      raise FieldError(problems)

  def problems(self) -> list[tuple[str, str]]:
    """``[(field, what is wrong)]``: every value outside its meaning's range."""
    out = []
    bad = [p for p in self.phases if p not in PHASES]
    if bad or not self.phases:
      out.append(("phases", f"unknown {bad} (choose from {PHASES})"))
    elif list(self.phases) != sorted(set(self.phases), key=PHASES.index):
      out.append(
        (
          "phases",
          f"{self.phases} must be in the order {PHASES}, each at most once (a phase "
          "builds on the one before it: pretrain makes the teacher that priming distils)",
        )
      )
    if len(self.steps) != len(self.phases):
      out.append(("steps", f"{len(self.steps)} entries for {len(self.phases)} phases"))
    if any(s < 1 for s in self.steps):
      out.append(("steps", f"{self.steps}: every phase needs >= 1 step"))
    if self.teacher_dtype not in TEACHER_DTYPES:
      out.append(("teacher_dtype", f"{self.teacher_dtype!r} not in {TEACHER_DTYPES}"))
    if self.d_backbone not in D_BACKBONES:
      out.append(("d_backbone", f"{self.d_backbone!r} not in {D_BACKBONES}"))
    if self.d_noise not in D_NOISE:
      out.append(("d_noise", f"{self.d_noise!r} not in {D_NOISE}"))
    if self.cons_t_dist not in TIME_DISTS:
      out.append(("cons_t_dist", f"{self.cons_t_dist!r} not in {TIME_DISTS}"))
    for name in ("vsd_t", "cons_t"):
      span = tuple(getattr(self, name))
      if len(span) != 2 or not 0.0 <= span[0] < span[1] <= 1.0:
        out.append((name, f"{span} must be (lo, hi) with 0 <= lo < hi <= 1"))
    in_range = [  # (field, low, high, low inclusive, high inclusive); None: unbounded
      ("flow_shift", 0.0, None, False, False),
      ("text_dropout", 0.0, 1.0, True, False),
      ("s_lo", 0.0, 1.0, True, False),
      ("s_lo_end", 0.0, 1.0, True, False),
      ("d_fake_lo", 0.0, 1.0, True, False),
      ("logit_std", 0.0, None, False, False),
      ("ema_decay", 0.0, 1.0, False, False),
      ("lam_r1", 0.0, None, True, False),
      ("lam_cons", 0.0, None, True, False),
      ("sigma_s", 0.0, None, True, False),
      ("sigma_t", 0.0, None, True, False),
      ("cons_cfg", 0.0, None, True, False),
      ("cfg_real", 0.0, None, True, False),
      ("joint_gan_weight", 0.0, None, True, False),
      ("lora_alpha", 0.0, None, False, False),
    ]
    for name, lo, hi, lo_in, hi_in in in_range:
      value = getattr(self, name)
      if value is None:
        continue
      below = lo is not None and (value < lo if lo_in else value <= lo)
      above = hi is not None and (value > hi if hi_in else value >= hi)
      if below or above:
        if hi is None:
          span = f"{'>=' if lo_in else '>'} {lo:g}"
        else:
          span = f"in {'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}"
        out.append((name, f"{value} must be {span}"))
    for name in (
      "fake_updates_per_step",
      "lora_rank",
      "d_num_queries",
      "d_width",
      "d_heads",
      "student_steps",
    ):
      if getattr(self, name) < 1:
        out.append((name, f"{getattr(self, name)} must be >= 1"))
    if self.d_heads >= 1 and self.d_width % self.d_heads:
      out.append(("d_width", f"{self.d_width} is not divisible by d_heads={self.d_heads}"))
    if any(i < 0 for i in self.d_layers) or len(set(self.d_layers)) != len(self.d_layers):
      out.append(("d_layers", f"{self.d_layers}: block indices must be distinct and >= 0"))
    return out

  @classmethod
  def from_config(cls, pose) -> PoseConfig:
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(pose.keys()) - fields)
    if unknown:
      raise FieldError([(k, "unknown key") for k in unknown])
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

  @property
  def band_shift(self) -> float:
    """The shift applied to a band's draws: ``flow_shift`` with ``shift_bands``, else 1."""
    return self.flow_shift if self.shift_bands else 1.0
