"""Evaluation during and after training, all scored through :mod:`pose_jax.evaluators`.

``EvalSampler`` (built by ``from_config``): at every ``config.eval.every`` steps and at the end of
each phase, the student (and its EMA) sample the held-out eval batch in one step from fixed
noise; the latents are decoded (toy codec for toy data, the Wan VAE of ``config.eval.pipeline``
for real data), scored against the condition image (frame 0 of the decoded real clip), logged as
``eval/<weights>/<metric>`` and written (process 0) as::

  <workdir>/samples/step_<N>/<weights>_<i>.mp4   one video per eval example (up to max_videos)
  <workdir>/samples/step_<N>/<weights>.png       their frame strips, one row per example
  <workdir>/samples/step_<N>/condition_<i>.png   example i's condition image (as decoded)
  <workdir>/samples/step_<N>/index.json          {"step", "fps", "videos": [{"video", "strip",
      "strip_row", "weights" (student | ema), "step", "prompt", "key", "condition_image"}]}

``toy_report`` (toy data, after training): for each held-out clip, the teacher's multi-step Euler
sample (CFG), the teacher's and the student's one-step samples, decoded with the toy codec and
compared with the real clip:
  first_frame_psnr   ``evaluators.first_frame_psnr`` of frame 0 against the real clip's (dB)
  motion_accuracy    fraction of clips whose ``evaluators.camera_move`` (pan / zoom / static,
                     from global motion) is the move the caption names
  dynamic_degree     VBench's fraction of dynamic videos (``evaluators.dynamic_degree``)
"""

from __future__ import annotations

import json
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils

from pose_jax import evaluators
from pose_jax.sampling import samplers, video_io
from pose_jax.training import loop

Decode = Callable[[np.ndarray], np.ndarray]  # latents [B,N,h,w,Z] -> video [B,F,H,W,3] in [-1,1]


def toy_decoder(data_config) -> Decode:
  """The toy codec's decoder for ``config.data`` (:meth:`ToyCodec.from_config`)."""
  from pose_jax.data.toy_codec import ToyCodec

  codec = ToyCodec.from_config(data_config)
  return lambda latents: np.asarray(codec.decode(np.asarray(latents, np.float32)))


def vae_decoder(pipeline_folder: str) -> Decode:
  """The Wan VAE of a diffusers pipeline folder, with its latent de-normalisation."""
  from pose_jax.conditioning import ConditioningStack

  vae = ConditioningStack.from_pretrained(pipeline_folder).vae
  decode = nnx.jit(lambda vae, z: vae.decode(vae.denormalize_latents(z)))
  return lambda latents: np.asarray(decode(vae, jnp.asarray(latents, jnp.float32)))


def _to_unit(video: np.ndarray) -> np.ndarray:
  return np.clip((np.asarray(video, np.float32) + 1.0) / 2.0, 0.0, 1.0)


class EvalSampler:
  """``sampler(step, state) -> metrics`` on a fixed eval batch; ``due(step, stop)`` says when.

  ``dit`` is the student's graphdef (``Models.dit``); ``every = 0`` samples only at phase ends.
  """

  def __init__(
    self,
    workdir: str,
    batch: dict,
    decode: Decode,
    dit,
    every: int,
    *,
    max_videos: int = 4,
    fps: int = 8,
    seed: int = 0,
  ):
    if every < 0:
      raise ValueError(f"config.eval.every: {every} must be >= 0 (0 = only at phase ends)")
    self.root = epath.Path(workdir) / "samples"  # local or gs://
    self.batch = {k: jnp.asarray(v) for k, v in batch.items() if k in ("cond", "text", "image")}
    self.decode, self.every, self.fps = decode, every, fps
    self.max_videos = max_videos
    n = len(batch["latents"])
    self.prompts = [str(p) for p in np.asarray(batch.get("caption", [""] * n)).ravel()]
    self.keys = [str(k) for k in np.asarray(batch.get("key", [""] * n)).ravel()]
    self.noise = jax.random.normal(jax.random.key(seed), np.shape(batch["latents"]), jnp.float32)
    real = _to_unit(decode(np.asarray(batch["latents"])))
    self.image = real[:, 0]  # the condition image as the decoder reproduces it
    # The noise and the batch are arguments, not closed-over constants baked into the program
    # (~200 MB of them at 480p).
    self._sample = loop.SyncedJit(
      lambda p, noise, b: samplers.student(dit, p, noise, b.get("cond"), b["text"], b.get("image")),
      "eval sampler",
    )

  def due(self, step: int, stop: int) -> bool:
    return step == stop or (self.every > 0 and step % self.every == 0)

  def __call__(self, step: int, state) -> dict[str, float]:
    metrics, written = {}, []
    for name, params in (("student", state.params["student"]), ("ema", state.ema)):
      x = self._sample(params, self.noise, self.batch)
      latents = multihost_utils.process_allgather(x, tiled=True)
      video = _to_unit(self.decode(np.asarray(latents)))
      scores = evaluators.evaluate(video, self.image, fps=self.fps)
      metrics.update({f"eval/{name}/{k}": v for k, v in scores.items()})
      if jax.process_index() == 0:
        written += self._write(step, name, video[: self.max_videos])
    if jax.process_index() == 0:
      self._write_index(step, written)
    return metrics

  def _write(self, step: int, name: str, videos: np.ndarray) -> list[dict]:
    """Writes ``name_<i>.mp4`` and ``name.png``; returns their rows of ``index.json``."""
    folder = self.root / f"step_{step}"
    rows = []
    for i, video in enumerate(videos):
      video_io.write_mp4(folder / f"{name}_{i}.mp4", video, fps=self.fps)
      rows.append(
        {
          "video": f"{name}_{i}.mp4",
          "strip": f"{name}.png",
          "strip_row": i,
          "weights": name,
          "step": step,
          "prompt": self.prompts[i],
          "key": self.keys[i],
          "condition_image": f"condition_{i}.png",
        }
      )
    strips = np.concatenate([video_io.strip(v) for v in videos], axis=0)
    video_io.write_png(folder / f"{name}.png", strips)
    return rows

  def _write_index(self, step: int, rows: list[dict]) -> None:
    """``index.json`` (one row per video: its prompt, condition image, weights and step) and
    the condition images ``condition_<i>.png`` beside the videos."""
    folder = self.root / f"step_{step}"
    for i in sorted({r["strip_row"] for r in rows}):
      video_io.write_png(folder / f"condition_{i}.png", video_io.to_uint8(self.image[i]))
    info = {"step": step, "fps": self.fps, "videos": rows}
    (folder / "index.json").write_text(json.dumps(info, indent=1))


def from_config(config, workdir: str, dit, eval_batch: dict | None) -> EvalSampler | None:
  """The sampler ``config.eval`` asks for: toy codec for toy data, the Wan VAE of
  ``config.eval.pipeline`` for real data (none without it, or without an eval batch)."""
  if eval_batch is None:
    return None
  if config.data.kind == "toy":
    decode = toy_decoder(config.data)
  elif config.eval.pipeline:
    decode = vae_decoder(config.eval.pipeline)
  else:
    print("eval: no config.eval.pipeline (a diffusers folder with the VAE): no sample videos")
    return None
  return EvalSampler(workdir, eval_batch, decode, dit, config.eval.every, fps=config.eval.fps)


# --- the toy report ---------------------------------------------------------------------------
def toy_moves(batch: dict) -> list[str | None] | None:
  """The camera move of each toy eval clip, from its ``key`` (``photo/move/i``; ``None`` for
  real footage, ``footage/...``); ``None`` without keys."""
  if "key" not in batch:
    return None
  keys = [str(k) for k in np.asarray(batch["key"]).ravel()]
  return [None if k.startswith("footage/") else k.split("/")[1] for k in keys]


def toy_metrics(video: np.ndarray, real: np.ndarray, moves: list[str | None] | None) -> dict:
  """``video`` and ``real`` ``[B, F, H, W, 3]`` in [-1, 1]; ``moves``: each clip's captioned
  move (:func:`toy_moves`). The photo clips give ``first_frame_psnr``, ``motion_accuracy`` and
  ``dynamic_degree``; real footage (move ``None``), if any, ``footage_first_frame_psnr`` and
  ``footage_dynamic_degree``. PSNR on [0, 1] frames with peak 1 is the same number as on
  [-1, 1] frames with peak 2."""
  video, real = _to_unit(video), _to_unit(real)
  photo = np.ones(len(video), bool) if moves is None else np.array([m is not None for m in moves])
  out = {}
  for prefix, rows in (("", photo), ("footage_", ~photo)):
    if not rows.any():
      continue
    v, r = video[rows], real[rows]
    out[f"{prefix}first_frame_psnr"] = float(np.mean(evaluators.first_frame_psnr(v, r[:, 0])))
    if not prefix and moves is not None:
      out["motion_accuracy"] = evaluators.motion_accuracy(v, [m for m in moves if m is not None])
    out[f"{prefix}dynamic_degree"] = float(np.mean(evaluators.dynamic_degree(v).dynamic))
  return out


def teacher_sample(
  models, params, batch: dict, *, steps: int, shift: float, guidance: float, seed: int = 0
):
  """The teacher's ``steps``-step Euler sample (CFG ``guidance`` against ``neg_text``) of
  ``batch`` from the fixed noise of ``seed``: latents like ``batch['latents']``."""
  noise = jax.random.normal(jax.random.key(seed), batch["latents"].shape, jnp.float32)
  run = loop.SyncedJit(
    lambda p, noise, cond, text, image, neg: samplers.teacher_euler(
      models.dit,
      p,
      noise,
      cond,
      text,
      image,
      steps=steps,
      shift=shift,
      guidance_scale=guidance,
      neg_text=neg,
    ),
    "teacher sampler",
  )  # the batch as arguments, not constants in the program
  return run(params, noise, *(batch[k] for k in ("cond", "text", "image", "neg_text")))


def toy_report(
  models,
  state,
  teacher,
  batch: dict,
  *,
  decode: Decode,
  teacher_steps: int,
  shift: float,
  guidance_scale: float,
  seed: int = 0,
) -> dict:
  """``{'data' | 'teacher_<n>_steps' | 'teacher_1_step' | 'student_1_step': metrics}`` on the
  eval batch (the teacher at one step is what the student started from); the metrics are
  :func:`toy_metrics` against the real clips, both decoded by ``decode``."""
  moves = toy_moves(batch)  # toy_metrics clips to [-1, 1]
  noise = jax.random.normal(jax.random.key(seed), batch["latents"].shape, jnp.float32)
  common = (noise, batch["cond"], batch["text"], batch["image"])
  x_teacher = teacher_sample(
    models, teacher, batch, steps=teacher_steps, shift=shift, guidance=guidance_scale, seed=seed
  )
  one_step = loop.SyncedJit(
    lambda p, *common: samplers.student(models.dit, p, *common), "one-step sampler"
  )
  x_student, x_teacher_1 = one_step(state.params["student"], *common), one_step(teacher, *common)
  real = decode(batch["latents"])
  out = {"data": toy_metrics(real, real, moves)}
  runs = (
    (f"teacher_{teacher_steps}_steps", x_teacher),
    ("teacher_1_step", x_teacher_1),
    ("student_1_step", x_student),
  )
  for name, x in runs:
    out[name] = toy_metrics(decode(x), real, moves)
  return out


def print_toy_report(config, models, state, teacher, batch: dict | None) -> None:
  """Toy data with an eval batch and ``config.eval.report``: prints the ``toy_report`` of the
  final ``state``."""
  if batch is None or config.data.kind != "toy" or not config.eval.report:
    return
  report = toy_report(
    models,
    state,
    teacher,
    batch,
    decode=toy_decoder(config.data),
    teacher_steps=config.eval.teacher_steps,
    shift=config.pose.flow_shift,
    guidance_scale=config.pose.cfg_real,
  )
  n = len(batch["latents"])
  print(f"samples of the {n} held-out clips (toy codec, decoded; motion_accuracy: the camera move")
  print("named by evaluators.camera_move equals the caption's; teacher with CFG):")
  for name, m in report.items():
    print(f"  {name:18s} " + "  ".join(f"{k}={v:.4f}" for k, v in m.items()))
