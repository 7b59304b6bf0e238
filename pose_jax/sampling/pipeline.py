"""Wan2.1 image-to-video sampling end to end in JAX: (image, prompt) -> video.

:class:`I2VPipeline` = :class:`~pose_jax.conditioning.ConditioningStack` (VAE + CLIP + UMT5,
unsharded) + a DiT (graphdef + params, optionally sharded over a mesh). A toy run's stand-in,
:class:`pose_jax.sampling.toy.ToyStack` (toy codec + tiny encoders), has the same methods the
pipeline calls (``encode``, ``decode``, ``latent_shape``, ``dit_inputs``, ``mod_value``), so a
toy run samples through this same pipeline. One call:

  1. conditioning as ``WanImageToVideoPipeline.__call__`` (``ConditioningStack.encode``);
  2. initial latents ``[B, N, h, w, Z]`` (channels-last; the pipeline's ``latents`` argument is
     the same array channels-first) from ``noise=`` or from ``seed`` (our own draw: sample i is
     ``normal(fold_in(key(seed)_0, i))``, so it does not depend on the batch; NOT the torch
     generator's numbers);
  3. the sampler, jit-compiled whole (static: mode, scheduler, steps, shift,
     guidance_scale):
       student  ``samplers.student``: ``x0 = eps - G(eps, t=1)``; k steps re-noise to the
                shifted, evenly spaced times of ``generator.times(k, shift)``, as training
                does (key: ``key(seed)_1``). No CFG.
       teacher  ``samplers.teacher_euler`` (= diffusers ``FlowMatchEulerDiscreteScheduler(shift)``)
                or ``pose_jax.sampling.unipc.teacher_unipc`` (= ``UniPCMultistepScheduler(
                prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift)``),
                CFG ``v_u + guidance_scale (v_c - v_u)`` when ``guidance_scale != 1``, with
                the negative prompt (default ``""``, as diffusers);
  4. decode as the pipeline does: ``latents / (1 / latents_std) + latents_mean``, VAE decode
     (clamped to [-1, 1]).

Output (``output_type``): ``"np"`` float32 numpy ``[B, F, H, W, 3]`` in [0, 1], exactly
diffusers' ``output_type="np"`` (``video / 2 + 0.5`` clamped); ``"raw"`` the decoded jax array
in [-1, 1]; ``"latent"`` the sampled (normalised) latents.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pose_jax import sharding as shd
from pose_jax.conditioning import (
  WAN_480P_AREA,
  Conditioning,
  ConditioningStack,
  check_video_size,
  fit_area,
)
from pose_jax.models.wan import WanConfig
from pose_jax.sampling import samplers, unipc
from pose_jax.sampling.loading import load_dit

MODES = ("student", "teacher")
SCHEDULERS = ("euler", "unipc")
OUTPUT_TYPES = ("np", "raw", "latent")


# --- images ---------------------------------------------------------------------------------
def as_uint8_image(image: Any) -> np.ndarray:
  """A PIL image or uint8 ``[H, W, 3]`` array -> uint8 ``[H, W, 3]``."""
  if hasattr(image, "convert"):  # PIL
    image = np.asarray(image.convert("RGB"))
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
  return image


def fit_image(
  image: np.ndarray, max_area: int = WAN_480P_AREA, mod_value: int = 16
) -> tuple[np.ndarray, int, int]:
  """The Wan I2V example's preparation: ``(height, width) = fit_area(...)`` and the image
  resized to it with PIL's default (bicubic) ``image.resize((width, height))``."""
  from PIL import Image

  height, width = fit_area(image.shape[:2], max_area, mod_value)
  if height < mod_value or width < mod_value:
    raise ValueError(
      f"max_area={max_area} gives a {height}x{width} video for a {image.shape[1]}x"
      f"{image.shape[0]} image; each side must be at least {mod_value}"
    )
  resized = np.asarray(Image.fromarray(image).resize((width, height)))
  return resized, height, width


# --- the DiT --------------------------------------------------------------------------------
def check_dit(stack, cfg: WanConfig) -> None:
  """ValueError unless the DiT's input/context widths fit the conditioning stack."""
  want = stack.dit_inputs()
  bad = [f"{k}={getattr(cfg, k)} (expected {v})" for k, v in want.items() if getattr(cfg, k) != v]
  if bad:
    raise ValueError(f"the DiT does not fit the pipeline's VAE/encoders: {', '.join(bad)}")


# --- the sampler ----------------------------------------------------------------------------
def check_sampler(mode: str, scheduler: str, steps: int, guidance_scale: float) -> None:
  """ValueError unless the sampler settings are valid (the student: Euler, no guidance)."""
  if mode not in MODES:
    raise ValueError(f"mode={mode!r}; one of {MODES}")
  if scheduler not in SCHEDULERS:
    raise ValueError(f"scheduler={scheduler!r}; one of {SCHEDULERS}")
  if int(steps) != steps or steps < 1:
    raise ValueError(f"steps={steps} must be a positive integer")
  if mode == "student" and guidance_scale != 1.0:
    raise ValueError(
      f"guidance_scale={guidance_scale}: the one-step student takes no classifier-free guidance"
    )
  if mode == "student" and scheduler != "euler":
    raise ValueError(f"scheduler={scheduler!r} is for the teacher; the student has its own")


# --- jitted pieces --------------------------------------------------------------------------
@functools.partial(
  jax.jit,
  static_argnums=(0,),
  static_argnames=("mode", "scheduler", "steps", "shift", "guidance_scale"),
)
def _sample(
  graphdef,
  params,
  noise,
  cond,
  text,
  image,
  neg_text,
  key,
  *,
  mode,
  scheduler,
  steps,
  shift,
  guidance_scale,
):
  if mode == "student":
    return samplers.student(
      graphdef, params, noise, cond, text, image, steps=steps, key=key, shift=shift
    )
  fn = samplers.teacher_euler if scheduler == "euler" else unipc.teacher_unipc
  return fn(
    graphdef,
    params,
    noise,
    cond,
    text,
    image,
    steps=steps,
    shift=shift,
    guidance_scale=guidance_scale,
    neg_text=neg_text if guidance_scale != 1.0 else None,
  )


# --- the pipeline ---------------------------------------------------------------------------
@dataclasses.dataclass
class I2VPipeline:
  """Conditioning stack + DiT. ``mesh``: the DiT's parameters are sharded on it and the batch
  is split over its ``data`` x ``fsdp`` axes (when the batch divides); the VAE and encoders run
  unsharded on the default device."""

  stack: ConditioningStack  # or a ToyStack (the same methods)
  graphdef: Any
  params: Any
  mesh: Any = None
  rules: Any = shd.RULES

  @classmethod
  def from_model(cls, stack: ConditioningStack, model: nnx.Module, mesh=None, rules=shd.RULES):
    check_dit(stack, model.cfg)
    stack.patch_size = tuple(model.cfg.patch_size)
    graphdef, params = nnx.split(model)
    return cls(stack, graphdef, params, mesh, rules)

  @classmethod
  def from_pretrained(
    cls, folder: str, ckpt: str | None = None, *, mesh=None, rules=shd.RULES, **load_kw
  ) -> I2VPipeline:
    """The stack of a diffusers pipeline ``folder`` and the DiT of
    :func:`~pose_jax.sampling.loading.load_dit` (``ckpt`` None: the folder's own transformer).
    ``load_kw``: which, step, config, dtype, attention."""
    stack_rt = {k: load_kw[k] for k in ("dtype",) if k in load_kw}
    stack = ConditioningStack.from_pretrained(folder, **stack_rt)
    model, _ = load_dit(ckpt, folder, mesh=mesh, rules=rules, **load_kw)
    return cls.from_model(stack, model, mesh, rules)

  @property
  def wan_config(self) -> WanConfig:
    """The DiT's architecture and run settings."""
    return nnx.merge(self.graphdef, self.params).cfg

  def latent_shape(self, batch: int, num_frames: int, height: int, width: int):
    return self.stack.latent_shape(batch, num_frames, height, width)

  # --- pieces -------------------------------------------------------------------------------
  def _place(self, x):
    """Batch-sharded over (data, fsdp) on the mesh when it divides, else replicated."""
    if self.mesh is None or x is None:
      return x
    n = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
    spec = P(("data", "fsdp")) if x.shape[0] % n == 0 else P()
    return jax.device_put(x, NamedSharding(self.mesh, spec))

  def encode(self, images, prompts, *, num_frames, height, width, negative_prompt=None):
    return self.stack.encode(
      images,
      prompts,
      num_frames=num_frames,
      height=height,
      width=width,
      negative_prompt=negative_prompt,
    )

  def sample_latents(
    self,
    c: Conditioning,
    noise: jax.Array,
    *,
    steps: int = 1,
    mode: str = "student",
    scheduler: str = "euler",
    shift: float = 3.0,
    guidance_scale: float = 1.0,
    key: jax.Array | None = None,
  ) -> jax.Array:
    """The sampler on the DiT only: normalised latents ``[B, N, h, w, Z]``."""
    check_sampler(mode, scheduler, steps, guidance_scale)
    if mode == "teacher" and guidance_scale != 1.0 and c.negative_text_tokens is None:
      raise ValueError("CFG (guidance_scale != 1) needs the negative prompt's text tokens")
    key = jax.random.key(0) if key is None else key
    args = [c.cond, c.text_tokens, c.image_tokens, c.negative_text_tokens]
    args = [self._place(jnp.asarray(noise, jnp.float32))] + [self._place(a) for a in args]
    noise, cond, text, image, neg = args
    kw = dict(
      mode=mode,
      scheduler=scheduler,
      steps=int(steps),
      shift=float(shift),
      guidance_scale=float(guidance_scale) if mode == "teacher" else 1.0,
    )
    if self.mesh is None:
      return _sample(self.graphdef, self.params, noise, cond, text, image, neg, key, **kw)
    with shd.use_mesh(self.mesh, self.rules):
      return _sample(self.graphdef, self.params, noise, cond, text, image, neg, key, **kw)

  def decode(self, latents: jax.Array) -> jax.Array:
    """Normalised latents -> video ``[B, F, H, W, 3]`` in [-1, 1] (on the VAE's device)."""
    if self.mesh is not None:
      latents = np.asarray(latents)
    return self.stack.decode(latents)

  def make_noise(self, shape, seed: int, indices: Sequence[int] | None = None) -> jax.Array:
    """Initial latents ``shape = [B, N, h, w, Z]``: row b is ``normal(fold_in(k, indices[b]))``
    with ``k = split(key(seed))[0]`` (default indices 0..B-1), independent of the batch."""
    k = jax.random.split(jax.random.key(seed))[0]
    indices = range(shape[0]) if indices is None else indices
    return jnp.stack([jax.random.normal(jax.random.fold_in(k, int(i)), shape[1:]) for i in indices])

  # --- end to end ---------------------------------------------------------------------------
  def __call__(
    self,
    image,
    prompt: str | Sequence[str],
    *,
    num_frames: int = 81,
    height: int | None = None,
    width: int | None = None,
    max_area: int = WAN_480P_AREA,
    steps: int = 1,
    mode: str = "student",
    scheduler: str = "euler",
    shift: float = 3.0,
    guidance_scale: float = 1.0,
    negative_prompt: str | None = None,
    seed: int = 0,
    noise=None,
    output_type: str = "np",
  ):
    """Video for B = max(#images, #prompts) samples (see the module docstring for outputs).

    ``image``: PIL or uint8 ``[H, W, 3]``, or a list of them. ``height``/``width`` None: the
    Wan example's ``fit_area(max_area)`` of the first image, every image resized to it
    (bicubic) first; given, the images are used as they are (the VAE input is resized with
    Lanczos, CLIP sees the original), as ``WanImageToVideoPipeline`` does.
    ``noise``: initial latents ``[B, N, h, w, Z]`` (else drawn from ``seed``).
    """
    if output_type not in OUTPUT_TYPES:
      raise ValueError(f"output_type={output_type!r}; one of {OUTPUT_TYPES}")
    check_sampler(mode, scheduler, steps, guidance_scale)
    single = not isinstance(image, list | tuple)
    images = [as_uint8_image(im) for im in ([image] if single else image)]
    if (height is None) != (width is None):
      raise ValueError("give both height and width, or neither (fit to max_area)")
    if height is None:
      _, height, width = fit_image(images[0], max_area, self.stack.mod_value)
      images = [fit_image(im, height * width, self.stack.mod_value)[0] for im in images]
      if any(im.shape[:2] != (height, width) for im in images):
        raise ValueError("images of different aspect ratios: give height and width")
    check_video_size(num_frames, height, width, self.stack.mod_value)
    guided = mode == "teacher" and guidance_scale != 1.0
    negative = (negative_prompt or "") if guided else None
    c = self.encode(
      images if not single else images[0],
      prompt,
      num_frames=num_frames,
      height=height,
      width=width,
      negative_prompt=negative,
    )
    shape = self.latent_shape(c.cond.shape[0], num_frames, height, width)
    if noise is None:
      noise = self.make_noise(shape, seed)
    elif tuple(noise.shape) != shape:
      raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {shape} [B, N, h, w, Z]")
    key = jax.random.split(jax.random.key(seed))[1]
    latents = self.sample_latents(
      c,
      noise,
      steps=steps,
      mode=mode,
      scheduler=scheduler,
      shift=shift,
      guidance_scale=guidance_scale,
      key=key,
    )
    if output_type == "latent":
      return latents
    video = self.decode(latents)
    if output_type == "raw":
      return video
    return np.clip(np.asarray(video) * 0.5 + 0.5, 0.0, 1.0).astype(np.float32)


__all__ = ["I2VPipeline", "as_uint8_image", "check_dit", "check_sampler", "fit_image"]
