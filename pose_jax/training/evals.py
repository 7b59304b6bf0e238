"""Sample videos and proxy metrics at eval steps during training.

At every ``config.eval.every`` steps and at the end of each phase, the student (and its EMA)
sample the held-out eval batch in one step from fixed noise; the latents are decoded (toy codec
for toy data, the Wan VAE of ``config.eval.pipeline`` for real data), scored with
:mod:`pose_jax.evaluators` against the condition image (frame 0 of the decoded real clip), logged
as ``eval/<weights>/<metric>`` and written (process 0) as::

  <workdir>/samples/step_<N>/<weights>_<i>.mp4   one video per eval example (up to max_videos)
  <workdir>/samples/step_<N>/<weights>.png       their frame strips, one row per example
"""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from pose_jax import evaluators
from pose_jax.models.wan import WanTransformer
from pose_jax.sampling import samplers, video_io

Decode = Callable[[np.ndarray], np.ndarray]  # latents [B,N,h,w,Z] -> video [B,F,H,W,3] in [-1,1]


def toy_decoder() -> Decode:
  from pose_jax.data.toy_codec import ToyCodec

  codec = ToyCodec()
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

  ``dit_config`` is the student's ``WanConfig``; ``every = 0`` samples only at phase ends.
  """

  def __init__(
    self,
    workdir: str,
    batch: dict,
    decode: Decode,
    dit_config,
    every: int,
    *,
    max_videos: int = 4,
    fps: int = 8,
    seed: int = 0,
  ):
    if every < 0:
      raise ValueError(f"config.eval.every: {every} must be >= 0 (0 = only at phase ends)")
    self.root = os.path.join(workdir, "samples")
    self.batch = {k: jnp.asarray(v) for k, v in batch.items() if k in ("cond", "text", "image")}
    self.decode, self.every, self.fps = decode, every, fps
    self.max_videos = max_videos
    self.noise = jax.random.normal(jax.random.key(seed), np.shape(batch["latents"]), jnp.float32)
    real = _to_unit(decode(np.asarray(batch["latents"])))
    self.image = real[:, 0]  # the condition image as the decoder reproduces it
    b = self.batch
    dit_graphdef = nnx.graphdef(
      nnx.eval_shape(lambda: WanTransformer(dit_config, rngs=nnx.Rngs(0)))
    )
    self._sample = jax.jit(
      lambda p: samplers.student(
        dit_graphdef, p, self.noise, b.get("cond"), b["text"], b.get("image")
      )
    )

  def due(self, step: int, stop: int) -> bool:
    return step == stop or (self.every > 0 and step % self.every == 0)

  def __call__(self, step: int, state) -> dict[str, float]:
    metrics = {}
    for name, params in (("student", state.params["student"]), ("ema", state.ema)):
      latents = multihost_utils.process_allgather(self._sample(params), tiled=True)
      video = _to_unit(self.decode(np.asarray(latents)))
      scores = evaluators.evaluate(video, self.image, fps=self.fps)
      metrics.update({f"eval/{name}/{k}": v for k, v in scores.items()})
      if jax.process_index() == 0:
        self._write(step, name, video[: self.max_videos])
    return metrics

  def _write(self, step: int, name: str, videos: np.ndarray) -> None:
    folder = os.path.join(self.root, f"step_{step}")
    for i, video in enumerate(videos):
      video_io.write_mp4(os.path.join(folder, f"{name}_{i}.mp4"), video, fps=self.fps)
    rows = [video_io.strip(v) for v in videos]
    from PIL import Image

    Image.fromarray(np.concatenate(rows, axis=0)).save(os.path.join(folder, f"{name}.png"))
