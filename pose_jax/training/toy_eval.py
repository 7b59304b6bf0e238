"""One-step samples on held-out toy clips, and the numbers that show what the student learned.

For each held-out clip: the teacher's multi-step Euler sample (CFG) and the student's one-step
sample are decoded with the toy codec and compared with the real clip:
  first-frame PSNR   fidelity of frame 0 to the condition image (dB)
  motion             mean |frame_t - frame_{t-1}| (a static copy of the first frame gives ~0)
  motion error       mean |motion per frame of sample - of the real clip|
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pose_jax.data.toy_codec import ToyCodec
from pose_jax.sampling import samplers


def _metrics(video: np.ndarray, real: np.ndarray) -> dict:
  mse = np.mean((video[:, 0] - real[:, 0]) ** 2, axis=(1, 2, 3))
  with np.errstate(divide="ignore"):
    psnr = float(np.mean(10 * np.log10(4.0 / mse)))  # range [-1, 1] -> peak 2; inf if exact
  motion = np.mean(np.abs(np.diff(video, axis=1)), axis=(2, 3, 4))
  real_motion = np.mean(np.abs(np.diff(real, axis=1)), axis=(2, 3, 4))
  return {
    "first_frame_psnr": psnr,
    "motion": float(motion.mean()),
    "motion_error": float(np.abs(motion - real_motion).mean()),
  }


def report(
  models,
  state,
  teacher,
  batch: dict,
  *,
  teacher_steps: int,
  shift: float,
  cfg: float,
  seed: int = 0,
) -> dict:
  """``{'data' | 'teacher_<n>_steps' | 'teacher_1_step' | 'student_1_step': metrics}`` on one
  eval batch (the teacher at one step is what the student started from)."""
  codec = ToyCodec()
  noise = jax.random.normal(jax.random.key(seed), batch["latents"].shape, jnp.float32)
  common = (noise, batch["cond"], batch["text"], batch["image"])
  x_teacher = jax.jit(
    lambda p: samplers.teacher_euler(
      models.dit,
      p,
      *common,
      steps=teacher_steps,
      shift=shift,
      guidance_scale=cfg,
      neg_text=batch["neg_text"],
    )
  )(teacher)
  one_step = jax.jit(lambda p: samplers.student(models.dit, p, *common))
  x_student, x_teacher_1 = one_step(state.params["student"]), one_step(teacher)
  real = np.asarray(codec.decode(np.asarray(batch["latents"])))
  out = {"data": _metrics(real, real)}
  runs = (
    (f"teacher_{teacher_steps}_steps", x_teacher),
    ("teacher_1_step", x_teacher_1),
    ("student_1_step", x_student),
  )
  for name, x in runs:
    out[name] = _metrics(np.clip(np.asarray(codec.decode(np.asarray(x))), -1, 1), real)
  return out
