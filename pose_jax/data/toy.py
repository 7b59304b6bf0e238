"""Toy I2V data from real photos: scikit-image's bundled pictures under named camera moves.

Legend: B batch, T frames (1 + 4k; the toy codec keeps every frame), H/W frame height/width,
h/w latent height/width (H/f, W/f), Z = 3 f^2 latent channels (f: the codec's spatial factor).

Each clip is a square window sliding over (pan), shrinking or growing on (zoom) or resting on
(static) one photo of ``skimage.data`` (shipped in the package, no downloads); its caption
names both, e.g. "a photo of a cat, the camera pans left". "Pans left" means the view moves
left over the photo, so the content slides RIGHT in the frame (pan up: content slides down).
Pans move a whole even number of pixels per frame (exact shifts); zooms change the window side
geometrically by ``ZOOM`` over the clip. Some photos are held out: the ``eval`` split has only
those, ``train`` never sees them.

Conditioning, as the real pipeline's but tiny and random (fixed seeds, no downloads):
image tokens = CLIP vision ``tiny`` preset on the first frame; text tokens = UMT5 ``tiny`` over
a WordLevel tokenizer of the caption words, ``TEXT_LENGTH`` tokens, rows past the prompt zero;
``neg_text`` = the empty prompt. Latents use :class:`ToyCodec` (a lossless space-to-depth
"pixel latent", so decoded samples are real videos); the toy DiT has in_channels = 2 Z + 4
(noisy latents, mask, condition latent), out Z (``meta.json`` records both). The encoders
live in :mod:`pose_jax.data.toy_encoders`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import app, flags

from pose_jax.data.example import MASK_CHANNELS
from pose_jax.data.records import write_dataset
from pose_jax.data.toy_codec import ToyCodec
from pose_jax.data.toy_encoders import TEXT_LENGTH, ToyEncoders
from pose_jax.paths import ARRAY_RECORD, local_only

# skimage.data photo name -> what the caption calls it
PHOTOS: dict[str, str] = {
  "astronaut": "an astronaut",
  "chelsea": "a cat",
  "coffee": "a cup of coffee",
  "rocket": "a rocket",
  "motorcycle": "a motorcycle",
  "hubble_deep_field": "galaxies in deep space",
  "immunohistochemistry": "stained tissue",
  "retina": "a retina",
  "colorwheel": "a color wheel",
  "logo": "a logo",
  "camera": "a cameraman",
  "coins": "coins",
  "moon": "the moon",
  "brick": "a brick wall",
  "grass": "grass",
  "gravel": "gravel",
  "clock": "a clock",
  "text": "printed text",
}
MOVES: dict[str, str] = {
  "pan_left": "the camera pans left",
  "pan_right": "the camera pans right",
  "pan_up": "the camera pans up",
  "pan_down": "the camera pans down",
  "zoom_in": "the camera zooms in",
  "zoom_out": "the camera zooms out",
  "static": "the camera is still",
}
HOLDOUT = ("coffee", "motorcycle", "clock")
ZOOM = 1.5  # window side ratio between the first and last frame of a zoom


def caption(photo: str, move: str) -> str:
  return f"a photo of {PHOTOS[photo]}, {MOVES[move]}"


def load_photo(name: str) -> np.ndarray:
  """uint8 ``[H, W, 3]`` RGB (grey photos replicated, RGBA composited on white)."""
  import skimage.data

  if name not in PHOTOS:
    raise ValueError(f"unknown photo {name!r}; choose one of {list(PHOTOS)}")
  if name == "motorcycle":
    image = skimage.data.stereo_motorcycle()[0]
  else:
    image = np.asarray(getattr(skimage.data, name)())
  if image.dtype == bool:
    image = image.astype(np.uint8) * 255
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  if image.shape[-1] == 4:
    alpha = image[..., 3:].astype(np.float32) / 255.0
    image = np.round(image[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
  return np.ascontiguousarray(image)


# --- clips ------------------------------------------------------------------------------------
_PAN_DIRECTIONS = {"pan_left": (0, -1), "pan_right": (0, 1), "pan_up": (-1, 0), "pan_down": (1, 0)}


def pan_speed(size: int) -> int:
  """Pixels per frame of a pan: even (2 at 32-71 px), so latent shifts are whole pixels."""
  return 2 * max(1, round(size / 48))


def _resize(image: np.ndarray, short_side: int) -> np.ndarray:
  from PIL import Image

  h, w = image.shape[:2]
  s = short_side / min(h, w)
  size = (max(short_side, round(w * s)), max(short_side, round(h * s)))
  return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def camera_clip(
  photo: np.ndarray,
  move: str,
  size: int,
  frames: int,
  rng: np.random.Generator,
  speed: int = 0,
) -> np.ndarray:
  """uint8 ``[T, size, size, 3]``: ``move`` over ``photo`` at a random scale and place; a pan
  moves ``speed`` pixels per frame (0: :func:`pan_speed` ``(size)``)."""
  from PIL import Image

  if move not in MOVES:
    raise ValueError(f"unknown move {move!r}; choose one of {list(MOVES)}")
  if speed < 0 or speed % 2:
    raise ValueError(f"pan speed={speed} must be an even number of pixels >= 0 (0: default)")
  v = speed or pan_speed(size)
  travel = v * (frames - 1)
  need = int(np.ceil(size * ZOOM)) if move.startswith("zoom") else size + travel
  image = _resize(photo, int(need * rng.uniform(1.0, 1.5)))
  h, w = image.shape[:2]
  if move.startswith("zoom"):  # window sides big -> big / ZOOM (zoom in), centre fixed
    big = rng.uniform(size * ZOOM, min(h, w))
    cy, cx = rng.uniform(big / 2, h - big / 2), rng.uniform(big / 2, w - big / 2)
    sides = big * ZOOM ** -(np.arange(frames) / (frames - 1))
    sides = sides if move == "zoom_in" else sides[::-1]
    pil = Image.fromarray(image)
    boxes = [(cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2) for s in sides]
    out = [np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR, box=b)) for b in boxes]
    return np.stack(out)
  dy, dx = _PAN_DIRECTIONS.get(move, (0, 0))
  span_y, span_x = abs(dy) * travel, abs(dx) * travel
  # Start on an even pixel so that the codec's 2x2 pooling grid moves with the content.
  y0 = 2 * int(rng.integers(0, (h - size - span_y) // 2 + 1)) + (span_y if dy < 0 else 0)
  x0 = 2 * int(rng.integers(0, (w - size - span_x) // 2 + 1)) + (span_x if dx < 0 else 0)
  out = []
  for t in range(frames):
    y, x = y0 + dy * v * t, x0 + dx * v * t
    out.append(image[y : y + size, x : x + size])
  return np.stack(out)


def to_unit(video: np.ndarray) -> np.ndarray:
  """uint8 -> float32 in [-1, 1]."""
  return video.astype(np.float32) / 127.5 - 1.0


# --- the dataset ------------------------------------------------------------------------------
def flip_or_turn(image: np.ndarray, i: int) -> np.ndarray:
  """The ``i % 8``-th of the photo's 8 mirror images and quarter turns (0: the photo itself)."""
  image = np.rot90(image, (i % 8) // 2)
  return np.ascontiguousarray(image[:, ::-1] if i % 2 else image)


def make_clips(
  photos: Sequence[str],
  size: int,
  frames: int,
  clips_per_move: int,
  seed: int,
  flips: bool = False,
  pan_speed: int = 0,
) -> list[tuple[str, str, np.ndarray]]:
  """``[(key, caption, uint8 video [T, size, size, 3])]`` for every photo x move x clip. With
  ``flips`` clip c is made from :func:`flip_or_turn` ``(photo, c)``: more views of few photos;
  ``pan_speed``: :func:`camera_clip`'s ``speed``."""
  out = []
  for photo in photos:
    image = load_photo(photo)
    for mi, move in enumerate(MOVES):
      for c in range(clips_per_move):
        rng = np.random.default_rng([seed, list(PHOTOS).index(photo), mi, c])
        view = flip_or_turn(image, c) if flips else image
        clip = camera_clip(view, move, size, frames, rng, pan_speed)
        out.append((f"{photo}/{move}/{c}", caption(photo, move), clip))
  return out


def build_dataset(
  out_dir: str,
  size: int = 48,
  frames: int = 9,
  holdout: Sequence[str] = HOLDOUT,
  clips_per_move: int = 4,
  seed: int = 0,
  shard_size: int = 128,
  eval_clips_per_move: int = 1,
  flips: bool = False,
  codec: ToyCodec | None = None,
  footage: bool = False,
  pan_speed: int = 0,
) -> dict[str, dict[str, Any]]:
  """Writes ``out_dir/train`` and ``out_dir/eval`` (shards + meta + neg_text); returns the
  metas. ``eval`` holds the ``holdout`` photos (not written if there are none), ``train`` the
  rest; each photo gets every move, ``clips_per_move`` (eval: ``eval_clips_per_move``) times;
  ``flips``: training clips from mirrored and turned photos (:func:`make_clips`); ``codec``
  (default ``ToyCodec()``) makes the latents and the condition; ``footage``: each split also
  holds the windows of real footage of its time ranges (:func:`footage.footage_clips`), after
  the photo clips; ``pan_speed``: pixels per frame of a pan (0: :func:`pan_speed`)."""
  local_only(out_dir, "--out", ARRAY_RECORD, "build the clips locally, then copy them")
  unknown = set(holdout) - set(PHOTOS)
  if unknown:
    raise ValueError(f"unknown holdout photo(s) {sorted(unknown)}; choose from {list(PHOTOS)}")
  if size % 16 or frames < 5 or (frames - 1) % 4:
    raise ValueError(f"size={size} must be a multiple of 16 and frames={frames} 1 + 4k (k >= 1)")
  codec, enc = codec or ToyCodec(), ToyEncoders.create(seed)
  if size % codec.spatial_factor:
    raise ValueError(f"size={size} must be a multiple of the codec's {codec.spatial_factor}")
  neg_text = enc.encode_text([""])[0][0]
  splits = {
    "train": ([p for p in PHOTOS if p not in holdout], clips_per_move),
    "eval": (list(holdout), eval_clips_per_move),
  }
  metas = {}
  for split, (photos, per_move) in splits.items():
    if not photos or per_move < 1:
      continue
    clips = make_clips(photos, size, frames, per_move, seed, flips and split == "train", pan_speed)
    if footage:
      from pose_jax.data.footage import footage_clips

      clips += footage_clips(size, frames, split, seed)
    videos = to_unit(np.stack([c[2] for c in clips]))
    captions = [c[1] for c in clips]
    latents, cond = codec.encode(videos), codec.condition(videos[:, 0], frames)
    text, mask = enc.encode_text(captions)
    image = enc.encode_image(np.stack([c[2][0] for c in clips]))
    examples = (
      {
        "latents": latents[i],
        "cond": cond[i],
        "image": image[i],
        "text": text[i],
        "text_mask": mask[i],
        "caption": captions[i],
        "key": clips[i][0],
      }
      for i in range(len(clips))
    )
    metas[split] = write_dataset(
      os.path.join(out_dir, split),
      examples,
      shard_size,
      neg_text=neg_text,
      codec="toy",
      **codec.meta(),
      clips_per_move=clips_per_move,
      flips=flips,
      footage=footage,
      pan_speed=pan_speed,
      size=size,
      frames=frames,
      photos=photos,
      moves=list(MOVES),
      seed=seed,
      text_length=enc.text_length,
      in_channels=2 * codec.z_dim + MASK_CHANNELS,
      out_channels=codec.z_dim,
      image_dim=int(image.shape[-1]),
      text_dim=int(text.shape[-1]),
    )
  return metas


__all__ = [
  "HOLDOUT",
  "MOVES",
  "PHOTOS",
  "TEXT_LENGTH",
  "ToyCodec",
  "ToyEncoders",
  "build_dataset",
  "camera_clip",
  "caption",
  "load_photo",
  "make_clips",
  "pan_speed",
  "to_unit",
]


# --- CLI: python -m pose_jax.data.toy --out=DIR [--size=32 --frames=5 ...] -------------------
def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """The CLI's flags. Only ``python -m pose_jax.data.toy`` defines them: absl flags are
  process-wide and this module is also a library (the trainer imports it for toy data)."""
  d = dict(flag_values=flag_values)
  flags.DEFINE_string("out", None, "Output directory (train/ and eval/ are made in it).", **d)
  flags.DEFINE_integer("size", 32, "Frame side in pixels (multiple of 16).", **d)
  flags.DEFINE_integer("frames", 5, "Frames per clip (1 + 4k).", **d)
  flags.DEFINE_list("holdout", list(HOLDOUT), "Photos kept for the eval split.", **d)
  flags.DEFINE_integer("clips_per_move", 4, "Training clips per photo and move.", **d)
  flags.DEFINE_integer("seed", 0, "Seed of the crops and of the random encoders.", **d)
  flags.DEFINE_boolean("footage", True, "Add the windows of real footage (data/footage.py).", **d)
  flags.DEFINE_integer("pan_speed", 0, "Pixels per frame of a pan (0: pan_speed(size)).", **d)
  flags.mark_flags_as_required(["out"], flag_values)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  metas = build_dataset(
    f.out,
    f.size,
    f.frames,
    f.holdout,
    f.clips_per_move,
    f.seed,
    footage=f.footage,
    pan_speed=f.pan_speed,
  )
  print({split: meta["num_examples"] for split, meta in metas.items()})


if __name__ == "__main__":
  define_flags()
  app.run(main)
