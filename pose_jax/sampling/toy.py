"""A toy run's conditioning, rebuilt from its checkpoints alone, for :class:`I2VPipeline`.

A toy run (``config.data.kind = "toy"``, ``configs/toy_i2v.py``) trains on clips conditioned by
the toy codec of ``config.data`` and the tiny random encoders of ``config.seed``
(:func:`pose_jax.data.toy.build_dataset`). None of them is saved, but they need not be: they
are fixed by the config, and every checkpoint's ``meta`` item holds the config
(``meta["config"]``, written by ``pose_jax/training/train.py``). :func:`run_meta` reads it;
:class:`ToyStack` rebuilds the codec, the encoders and the tokenizer from it and conditions an
(image, prompt) exactly as the toy data conditions a clip's first frame and its caption:

  frame         the image scaled (PIL Lanczos) to cover H x W and centre-cropped, as the toy
                clips' windows are cut from their photos (:func:`fit_frame`); H x W defaults
                to the run's ``data.size`` square
  cond          ``codec.condition(frame in [-1, 1], T)``: the mask, then the codec latent of
                [frame, 0, ..., 0] (or of every frame: ``data.codec_condition``)
  image_tokens  the tiny CLIP on the frame (``ToyEncoders.encode_image``)
  text_tokens   the tiny UMT5 over the caption-word tokenizer, 16 tokens
                (``ToyEncoders.encode_text``); words outside the toy vocabulary read as
                ``<unk>`` (:meth:`ToyStack.prompt_warnings` names them)

It has the methods :class:`~pose_jax.sampling.pipeline.I2VPipeline` calls on a
:class:`~pose_jax.conditioning.ConditioningStack` (``encode``, ``decode``, ``latent_shape``,
``dit_inputs``, ``mod_value``), so a toy run samples through the one pipeline and sampler;
``decode`` is the codec's (lossless: the decoded video is the DiT's own output).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pose_jax.conditioning import Conditioning, batch_inputs, check_video_size
from pose_jax.convert import export
from pose_jax.convert.errors import CheckpointError
from pose_jax.data.example import MASK_CHANNELS
from pose_jax.data.toy_codec import ToyCodec
from pose_jax.data.toy_encoders import ToyEncoders


# --- what the run wrote ---------------------------------------------------------------------
def run_meta(ckpt: str, step: int | None = None, which: str | None = None) -> dict | None:
  """The ``meta`` item of a train step of ``ckpt`` (a workdir: its latest step, or ``step``),
  holding the run's ``config`` and ``wan_config``; ``None`` when ``ckpt`` is no train step
  with a run config (a model checkpoint, a step without meta, nothing readable)."""
  try:
    _, _, meta = export.resolve_source(ckpt, step, which)
  except CheckpointError:
    return None
  return meta if meta is not None and isinstance(meta.get("config"), dict) else None


def is_toy(meta: dict | None) -> bool:
  """Whether ``meta`` (:func:`run_meta`) is a toy run's."""
  return meta is not None and meta["config"].get("data", {}).get("kind") == "toy"


def _patch(meta: dict) -> tuple[int, int, int]:
  return tuple(int(p) for p in meta["wan_config"].get("patch_size", (1, 2, 2)))


def defaults(meta: dict) -> dict:
  """The sampling settings of the run's own evaluation (``pose_jax/training/evals.py``): its
  data's ``frames`` and ``size`` (H, W), the pixel multiple ``mod`` (codec factor x patch), and
  the toy report's teacher: ``teacher_steps`` Euler steps, guidance ``cfg`` (``pose.cfg_real``)
  and ``shift`` (``pose.flow_shift``, the times the run trained on); its videos' ``fps``."""
  c = meta["config"]
  side = int(c["data"]["size"])
  return dict(
    frames=int(c["data"]["frames"]),
    size=(side, side),
    mod=ToyCodec.from_config(c["data"]).spatial_factor * _patch(meta)[1],
    teacher_steps=int(c.get("eval", {}).get("teacher_steps", 50)),
    cfg=float(c.get("pose", {}).get("cfg_real", 5.0)),
    shift=float(c.get("pose", {}).get("flow_shift", 3.0)),
    fps=int(c.get("eval", {}).get("fps", 16)),
  )


# --- the image --------------------------------------------------------------------------------
def fit_frame(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 ``[H0, W0, 3]`` -> uint8 ``[height, width, 3]``: scaled with PIL Lanczos until it
  covers ``height`` x ``width`` (the short side as ``toy._resize`` rounds it), then the centre
  window; an image of that size already is used as it is (so a toy clip's own first frame
  conditions exactly as in its data)."""
  from PIL import Image

  h0, w0 = image.shape[:2]
  if (h0, w0) == (height, width):
    return image
  s = max(height / h0, width / w0)
  size = (max(width, round(w0 * s)), max(height, round(h0 * s)))
  big = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
  y, x = (big.shape[0] - height) // 2, (big.shape[1] - width) // 2
  return np.ascontiguousarray(big[y : y + height, x : x + width])


# --- the stack --------------------------------------------------------------------------------
@dataclasses.dataclass
class ToyStack:
  """Toy codec + tiny encoders + caption-word tokenizer: a ``ConditioningStack`` stand-in."""

  codec: ToyCodec
  encoders: ToyEncoders
  patch_size: tuple[int, int, int] = (1, 2, 2)  # the DiT's; sets the size multiple

  @classmethod
  def from_meta(cls, meta: dict) -> ToyStack:
    """The codec of ``config.data`` and the encoders of ``config.seed``, as the run's data
    (``pose_jax.data.source.from_config`` -> ``toy.build_dataset``) made them."""
    c = meta["config"]
    codec = ToyCodec.from_config(c["data"])
    return cls(codec, ToyEncoders.create(int(c["seed"])), _patch(meta))

  @property
  def mod_value(self) -> int:
    """Pixel multiple for height/width: codec factor x DiT patch."""
    return self.codec.spatial_factor * self.patch_size[1]

  def dit_inputs(self) -> dict[str, int]:
    z = self.codec.z_dim
    return {
      "in_channels": 2 * z + MASK_CHANNELS,
      "out_channels": z,
      "image_dim": self.encoders.image_encoder.cfg.hidden_size,
      "text_dim": self.encoders.text_encoder.cfg.d_model,
    }

  def latent_shape(self, batch: int, num_frames: int, height: int, width: int):
    """``[B, T, h, w, Z]``: the codec keeps every frame."""
    f = self.codec.spatial_factor
    return (batch, num_frames, height // f, width // f, self.codec.z_dim)

  def decode(self, latents: jax.Array) -> jax.Array:
    """Latents -> video ``[B, T, H, W, 3]`` in [-1, 1] (the codec's exact inverse)."""
    return self.codec.decode(jnp.asarray(latents, jnp.float32))

  def prompt_warnings(self, prompts: Sequence[str]) -> list[str]:
    """One line naming the words the tokenizer reads as ``<unk>`` (each once, in order) and
    one naming the prompts cut at the text length, where there are any: the toy encoders
    know only the toy captions' words."""
    from pose_jax.models.encoders.tokenizer import prompt_clean, tokenize

    tok = self.encoders.tokenizer
    vocab, split = tok.get_vocab(), tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str
    words = [w for p in prompts for w, _ in split(prompt_clean(p))]
    unknown = list(dict.fromkeys(w for w in words if w not in vocab))
    lines = []
    if unknown:
      lines.append(
        f"warning: {', '.join(map(repr, unknown))} not in the toy vocabulary (the words of its "
        "captions): read as <unk>"
      )
    n = self.encoders.text_length
    _, mask = tokenize(tok, list(prompts), n + 1)
    cut = [p for p, m in zip(prompts, mask) if m.sum() > n]
    if cut:
      lines.append(f"warning: prompt(s) cut at the toy's {n} tokens: {cut}")
    return lines

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
    """Conditioning of B = max(#images, #prompts) samples (a single image or prompt is
    shared), each image first made a ``height`` x ``width`` frame by :func:`fit_frame`."""
    from pose_jax.data.toy import to_unit

    check_video_size(num_frames, height, width, self.mod_value)
    images, prompts, batch = batch_inputs(image, prompt)
    frames = np.stack([fit_frame(im, height, width) for im in images])
    negative = None
    if negative_prompt is not None:
      negative = batch(jnp.asarray(self.encoders.encode_text([negative_prompt])[0]))
    return Conditioning(
      cond=batch(jnp.asarray(self.codec.condition(to_unit(frames), num_frames))),
      image_tokens=batch(jnp.asarray(self.encoders.encode_image(frames))),
      text_tokens=batch(jnp.asarray(self.encoders.encode_text(prompts)[0])),
      negative_text_tokens=negative,
    )


__all__ = ["ToyStack", "defaults", "fit_frame", "is_toy", "run_meta"]
