"""Wan2.1 I2V conditioning: (image, prompt) -> DiT inputs, as ``WanImageToVideoPipeline`` does.

Legend: B batch, T video frames, H/W pixel height/width, N latent frames (1 + (T - 1) / 4),
h/w latent height/width (H/8, W/8), Z VAE latent channels, M image tokens (257 for ViT-H/14),
L text tokens (512), D text width, E image width.

Per sample, following the pipeline's ``__call__`` (diffusers 0.42.1, ``expand_timesteps=False``):
  text_tokens  [B, L, D]  ``encode_prompt(max_sequence_length=512)``: UMT5 over the cleaned,
                          padded prompt; rows past the prompt's length are zero.
  image_tokens [B, M, E]  ``encode_image``: CLIP penultimate hidden states of the ORIGINAL image
                          (CLIPImageProcessor: shortest-edge bicubic resize, centre crop).
  cond [B, N, h, w, 4+Z]  ``prepare_latents``: the image is resized to (H, W) with PIL Lanczos
                          and scaled to [-1, 1] (``video_processor.preprocess``); the video
                          [image, 0, ..., 0] of T frames is VAE-encoded, the posterior MEAN taken
                          (``sample_mode="argmax"``) and normalised ``(mu - mean) / std``; the
                          4-channel first-frame mask goes BEFORE it on the channel axis:
                          ``cat([mask, latent_condition], dim=1)`` made channels-last.
The DiT input is then ``concat([noisy_latents, cond], -1)`` (Z + 4 + Z channels).
The Wan example picks (H, W) with :func:`fit_area` and pre-resizes the image itself (PIL
bicubic) before calling the pipeline; :meth:`ConditioningStack.encode` does not: like
``__call__``, CLIP sees the image as given.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from flax import nnx

from pose_jax.convert.encoders import load_clip_vision, load_umt5
from pose_jax.convert.errors import CheckpointError
from pose_jax.convert.safetensors_io import read_config
from pose_jax.convert.wan_vae import load_vae
from pose_jax.models.encoders import CLIPVisionConfig, CLIPVisionEncoder, UMT5Config, UMT5Encoder
from pose_jax.models.encoders.image_preprocess import preprocess
from pose_jax.models.encoders.tokenizer import encode_prompts, load_tokenizer
from pose_jax.models.wan.vae import WanVAE, WanVAEConfig

if TYPE_CHECKING:
  from transformers import PreTrainedTokenizerBase

  from pose_jax.models.wan import WanTransformer

SUBFOLDERS = ("vae", "image_encoder", "text_encoder", "tokenizer", "image_processor")
MAX_SEQUENCE_LENGTH = 512  # the I2V DiT splits [image ; text] context at 512 text tokens
WAN_480P_AREA = 480 * 832
RUNTIME_KEYS = ("dtype", "param_dtype", "remat", "attention", "context_parallel")
# CLIPImageProcessor settings that image_preprocess.preprocess implements (resample 3 = bicubic).
_CLIP_RECIPE = {
  "do_resize": True,
  "do_center_crop": True,
  "do_rescale": True,
  "do_normalize": True,
  "resample": 3,
}


# --- pure helpers ---------------------------------------------------------------------------
def fit_area(
  image_hw: tuple[int, int], max_area: int = WAN_480P_AREA, mod_value: int = 16
) -> tuple[int, int]:
  """(height, width) near ``max_area`` pixels with the image's aspect ratio, as the Wan I2V
  example: ``round(sqrt(max_area * h / w)) // mod * mod`` (width with ``w / h``)."""
  aspect_ratio = image_hw[0] / image_hw[1]
  height = round(np.sqrt(max_area * aspect_ratio)) // mod_value * mod_value
  width = round(np.sqrt(max_area / aspect_ratio)) // mod_value * mod_value
  return int(height), int(width)


def resize_for_vae(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 ``[H0, W0, 3]`` -> float32 ``[H, W, 3]`` in [-1, 1], as diffusers'
  ``VaeImageProcessor.preprocess`` on a PIL image (Lanczos, ``reducing_gap=None``, /255, 2x-1)."""
  from PIL import Image

  pil = Image.fromarray(image).resize((width, height), resample=Image.Resampling.LANCZOS)
  x = np.asarray(pil).astype(np.float32) / 255.0
  return 2.0 * x - 1.0


def first_frame_mask(num_frames: int, h: int, w: int, temporal_factor: int = 4) -> np.ndarray:
  """The pipeline's ``mask_lat_size`` channels-last: float32 ``[N, h, w, temporal_factor]``.

  Frame mask ``[1, 0, ..., 0]`` over T frames, the first entry repeated ``temporal_factor``
  times, then ``(N c)`` split so channel c of latent frame n is expanded frame ``c + 4n``:
  all ones at n = 0, zeros elsewhere.
  """
  frames = np.zeros(num_frames, np.float32)
  frames[0] = 1.0
  frames = np.concatenate([np.repeat(frames[:1], temporal_factor), frames[1:]])
  mask = rearrange(frames, "(n c) -> n c", c=temporal_factor)
  return np.ascontiguousarray(np.tile(mask[:, None, None], (1, h, w, 1)))


def check_video_size(num_frames: int, height: int, width: int, mod_value: int = 16) -> None:
  """ValueError unless T = 1 + 4k and H, W are positive multiples of ``mod_value``."""
  errors = []
  if num_frames < 1 or (num_frames - 1) % 4:
    errors.append(f"num_frames={num_frames} must be 1 + 4k (1, 5, 9, ..., 81)")
  for name, v in (("height", height), ("width", width)):
    if v < mod_value or v % mod_value:
      errors.append(f"{name}={v} must be a positive multiple of {mod_value} (VAE stride x patch)")
  if errors:
    raise ValueError("Wan I2V conditioning: " + "; ".join(errors))


def read_clip_preprocess(path: str) -> dict[str, Any]:
  """``image_processor/preprocessor_config.json`` -> keyword arguments of ``preprocess``.

  Only the standard CLIP recipe is ported; any other setting raises ValueError.
  """
  config_json = read_config(path, "preprocessor_config.json")
  size, crop = config_json.get("size", 224), config_json.get("crop_size", 224)
  size = {"shortest_edge": size} if isinstance(size, int) else size
  crop = {"height": crop, "width": crop} if isinstance(crop, int) else crop
  bad = [
    f"{k}={config_json[k]!r}"
    for k, want in _CLIP_RECIPE.items()
    if config_json.get(k, want) != want
  ]
  if not math.isclose(config_json.get("rescale_factor", 1 / 255), 1 / 255, rel_tol=1e-6):
    bad.append(f"rescale_factor={config_json['rescale_factor']}")
  if set(size) != {"shortest_edge"}:
    bad.append(f"size={size} (only shortest_edge)")
  if bad:
    raise ValueError(f"{path}: unsupported CLIP preprocessing: {', '.join(bad)}")
  return {
    "shortest_edge": int(size["shortest_edge"]),
    "crop_size": (int(crop["height"]), int(crop["width"])),
    "mean": tuple(config_json.get("image_mean", (0.48145466, 0.4578275, 0.40821073))),
    "std": tuple(config_json.get("image_std", (0.26862954, 0.26130258, 0.27577711))),
  }


def batch_inputs(image, prompt) -> tuple[list[np.ndarray], list[str], Callable]:
  """``(images, prompts, batch)`` of B = max(#images, #prompts) samples: a single image or
  prompt is shared by all (the pipeline's ``repeat``), otherwise the counts must match;
  ``batch(x)`` broadcasts a ``[1 or B, ...]`` array to ``[B, ...]``. ValueError for images that
  are not uint8 ``[H, W, 3]`` or mismatched counts."""
  single = isinstance(image, np.ndarray) and image.ndim == 3
  images = [np.asarray(im) for im in ([image] if single else image)]
  for im in images:
    if im.dtype != np.uint8 or im.ndim != 3 or im.shape[-1] != 3:
      raise ValueError(f"expected uint8 [H, W, 3] images, got {im.dtype} {im.shape}")
  prompts = [prompt] if isinstance(prompt, str) else list(prompt)
  b = max(len(images), len(prompts))
  if min(len(images), len(prompts)) < 1 or {len(images), len(prompts)} - {1, b}:
    raise ValueError(f"{len(images)} image(s) and {len(prompts)} prompt(s): need equal or one")
  return images, prompts, lambda x: jnp.broadcast_to(x, (b, *x.shape[1:]))


# --- jitted model calls ---------------------------------------------------------------------
@nnx.jit
def _condition_latents(vae: WanVAE, video: jax.Array) -> jax.Array:
  mean, _ = vae.encode(video)  # posterior mode: the pipeline's sample_mode="argmax"
  return vae.normalize_latents(mean)


@nnx.jit
def _image_tokens(encoder: CLIPVisionEncoder, pixels: jax.Array) -> jax.Array:
  return encoder.penultimate(pixels)


@nnx.jit
def _decode(vae: WanVAE, latents: jax.Array) -> jax.Array:
  return vae.decode(vae.denormalize_latents(latents))


# --- the stack ------------------------------------------------------------------------------
@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Conditioning:
  """DiT conditioning for B samples (all float32, channels-last)."""

  cond: jax.Array  # [B, N, h, w, 4 + Z]: first-frame mask, then normalised condition latent
  image_tokens: jax.Array  # [B, M, E]
  text_tokens: jax.Array  # [B, L, D]
  negative_text_tokens: jax.Array | None = None  # [B, L, D] when a negative prompt was given


@dataclasses.dataclass
class ConditioningStack:
  """Frozen VAE + CLIP vision + UMT5 + tokenizer, and the CLIP preprocessing settings."""

  vae: WanVAE
  image_encoder: CLIPVisionEncoder
  text_encoder: UMT5Encoder
  tokenizer: PreTrainedTokenizerBase
  clip_preprocess: dict[str, Any]  # keyword arguments of image_preprocess.preprocess
  patch_size: tuple[int, int, int] = (1, 2, 2)  # the DiT's; sets the size multiple

  @property
  def mod_value(self) -> int:
    """Pixel multiple for height/width: VAE stride x DiT patch (8 x 2 = 16 for Wan2.1)."""
    return self.vae.cfg.spatial_factor * self.patch_size[1]

  @classmethod
  def from_pretrained(cls, folder: str, **runtime) -> ConditioningStack:
    """Loads a ``WanImageToVideoPipeline.save_pretrained`` folder. ``transformer/`` weights are
    not loaded (see :func:`load_pipeline_transformer`); if its config is there, it sets
    ``patch_size`` and is checked against the VAE/encoder widths.

    Each ``runtime`` key (one of :data:`RUNTIME_KEYS`) goes to every component config that has
    such a field (``dtype`` to all three, ``remat`` to the encoders, ...).
    """
    missing = [s for s in SUBFOLDERS if not os.path.isdir(os.path.join(folder, s))]
    if missing:
      raise CheckpointError(
        f"{folder}: missing subfolder(s) {', '.join(m + '/' for m in missing)} (expected a "
        "diffusers WanImageToVideoPipeline folder written by save_pretrained)"
      )
    index = os.path.join(folder, "model_index.json")
    if os.path.isfile(index) and read_config(folder, "model_index.json").get("expand_timesteps"):
      raise ValueError(f"{index}: expand_timesteps=True (Wan2.2 TI2V) is not supported")
    unknown = set(runtime) - set(RUNTIME_KEYS)
    if unknown:
      raise TypeError(f"unknown runtime setting(s) {sorted(unknown)}; known: {RUNTIME_KEYS}")
    names = lambda c: {f.name for f in dataclasses.fields(c)}
    pick = lambda c: {k: v for k, v in runtime.items() if k in names(c)}
    sub = lambda name: os.path.join(folder, name)
    stack = cls(
      vae=load_vae(sub("vae"), **pick(WanVAEConfig)),
      image_encoder=load_clip_vision(sub("image_encoder"), **pick(CLIPVisionConfig)),
      text_encoder=load_umt5(sub("text_encoder"), **pick(UMT5Config)),
      tokenizer=load_tokenizer(sub("tokenizer")),
      clip_preprocess=read_clip_preprocess(sub("image_processor")),
    )
    if os.path.isfile(os.path.join(sub("transformer"), "config.json")):
      dit = read_config(sub("transformer"))
      stack.patch_size = tuple(dit.get("patch_size", (1, 2, 2)))
      stack._check_transformer(dit)
    stack._check_clip()
    return stack

  def _check_clip(self) -> None:
    size, crop = self.image_encoder.cfg.image_size, self.clip_preprocess["crop_size"]
    if crop != (size, size):
      raise ValueError(f"image_processor crop_size {crop} != image_encoder image_size {size}")

  def _check_transformer(self, dit: dict[str, Any]) -> None:
    want = {k: v for k, v in self.dit_inputs().items() if k != "out_channels"}
    bad = [f"{k}={dit.get(k)} (expected {v})" for k, v in want.items() if dit.get(k) != v]
    if bad:
      raise ValueError(f"transformer config does not match the conditioning stack: {bad}")

  def dit_inputs(self) -> dict[str, int]:
    """The DiT widths this stack's conditioning and latents need (``WanConfig`` field names)."""
    z = self.vae.cfg.z_dim
    return {
      "in_channels": 2 * z + 4,
      "out_channels": z,
      "image_dim": self.image_encoder.cfg.hidden_size,
      "text_dim": self.text_encoder.cfg.d_model,
    }

  def latent_shape(self, batch: int, num_frames: int, height: int, width: int):
    """``[B, N, h, w, Z]`` of a video of ``num_frames`` x ``height`` x ``width``."""
    vae = self.vae.cfg
    n = 1 + (num_frames - 1) // vae.temporal_factor
    s = vae.spatial_factor
    return (batch, n, height // s, width // s, vae.z_dim)

  def decode(self, latents: jax.Array) -> jax.Array:
    """Normalised latents -> video ``[B, F, H, W, 3]`` in [-1, 1], as the pipeline decodes:
    ``latents / (1 / latents_std) + latents_mean``, VAE decode (clamped)."""
    return _decode(self.vae, jnp.asarray(latents, jnp.float32))

  def fit_area(self, image_hw: tuple[int, int], max_area: int = WAN_480P_AREA) -> tuple[int, int]:
    """:func:`fit_area` with this stack's ``mod_value``."""
    return fit_area(image_hw, max_area, self.mod_value)

  # --- encoders -----------------------------------------------------------------------------
  def encode_text(self, prompts: str | Sequence[str]) -> jax.Array:
    """Text tokens float32 ``[B, 512, D]`` (zero past each prompt's length)."""
    return encode_prompts(self.text_encoder, self.tokenizer, prompts, MAX_SEQUENCE_LENGTH)

  def encode_image(self, images: Sequence[np.ndarray]) -> jax.Array:
    """CLIP penultimate hidden states float32 ``[B, M, E]`` of the images as given."""
    pixels = preprocess(images, **self.clip_preprocess)
    return _image_tokens(self.image_encoder, jnp.asarray(pixels))

  def encode_condition(
    self, images: Sequence[np.ndarray], *, num_frames: int, height: int, width: int
  ) -> jax.Array:
    """``cond`` float32 ``[B, N, h, w, 4 + Z]`` (mask channels first)."""
    check_video_size(num_frames, height, width, self.mod_value)
    first = np.stack([resize_for_vae(im, height, width) for im in images])[:, None]
    rest = np.zeros((first.shape[0], num_frames - 1, height, width, 3), np.float32)
    latents = _condition_latents(self.vae, jnp.asarray(np.concatenate([first, rest], axis=1)))
    b, n, h, w, _ = latents.shape
    mask = first_frame_mask(num_frames, h, w, self.vae.cfg.temporal_factor)
    mask = jnp.broadcast_to(jnp.asarray(mask), (b, n, h, w, mask.shape[-1]))
    return jnp.concatenate([mask, latents], axis=-1)

  def encode(
    self,
    image: np.ndarray | Sequence[np.ndarray],
    prompt: str | Sequence[str],
    *,
    num_frames: int,
    height: int,
    width: int,
    negative_prompt: str | None = None,
  ) -> Conditioning:
    """Conditioning of B = max(#images, #prompts) samples; a single image or prompt is shared
    by all (the pipeline's ``repeat``), otherwise the counts must match.

    ``image``: uint8 ``[H0, W0, 3]`` or a list of them (sizes may differ). Raises ValueError
    for a bad video size or mismatched counts.
    """
    check_video_size(num_frames, height, width, self.mod_value)
    images, prompts, batch = batch_inputs(image, prompt)
    negative = None
    if negative_prompt is not None:
      negative = batch(self.encode_text([negative_prompt]))
    return Conditioning(
      cond=batch(self.encode_condition(images, num_frames=num_frames, height=height, width=width)),
      image_tokens=batch(self.encode_image(images)),
      text_tokens=batch(self.encode_text(prompts)),
      negative_text_tokens=negative,
    )


def load_pipeline_transformer(folder: str, **runtime) -> WanTransformer:
  """The DiT of a pipeline folder: ``load_transformer(folder/transformer, **runtime)``."""
  from pose_jax.convert.wan_diffusers import load_transformer

  path = os.path.join(folder, "transformer")
  if not os.path.isdir(path):
    raise CheckpointError(f"{folder}: missing subfolder transformer/")
  return load_transformer(path, **runtime)


__all__ = [
  "Conditioning",
  "batch_inputs",
  "ConditioningStack",
  "check_video_size",
  "first_frame_mask",
  "fit_area",
  "load_pipeline_transformer",
  "read_clip_preprocess",
  "resize_for_vae",
]
