"""The toy's conditioning encoders: tiny random CLIP vision + UMT5 (fixed seeds, no downloads)
and a WordLevel tokenizer over every word the toy's captions (photo moves and footage) use.

Image tokens = CLIP vision ``tiny`` preset on the first frame; text tokens = UMT5 ``tiny`` over
the tokenizer, ``TEXT_LENGTH`` tokens, rows past the prompt zero (:mod:`pose_jax.data.toy`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

TEXT_LENGTH = 16
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")


def vocabulary() -> list[str]:
  """Special tokens, then every word of every possible caption, the footage's too (sorted):
  fixed by the tables."""
  from tokenizers import pre_tokenizers

  split = pre_tokenizers.Whitespace().pre_tokenize_str
  from pose_jax.data.footage import FOOTAGE
  from pose_jax.data.toy import MOVES, PHOTOS, caption

  captions = [caption(p, m) for p in PHOTOS for m in MOVES] + [c for _, c in FOOTAGE.values()]
  words = {w for c in captions for w, _ in split(c)}
  return [*SPECIAL_TOKENS, *sorted(words)]


def make_tokenizer():
  """A transformers fast tokenizer over :func:`vocabulary` (WordLevel, eos appended)."""
  import transformers
  from tokenizers import Tokenizer, models, pre_tokenizers, processors

  vocab = {w: i for i, w in enumerate(vocabulary())}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
  return transformers.PreTrainedTokenizerFast(
    tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
  )


@dataclasses.dataclass
class ToyEncoders:
  """Tiny random CLIP vision + UMT5 (fixed seed) and the caption-word tokenizer."""

  image_encoder: Any
  text_encoder: Any
  tokenizer: Any
  text_length: int = TEXT_LENGTH

  @classmethod
  def create(cls, seed: int = 0, text_length: int = TEXT_LENGTH) -> ToyEncoders:
    from pose_jax.models.encoders import CLIPVisionEncoder, UMT5Encoder, clip_vision, umt5

    tokenizer = make_tokenizer()
    text_cfg = umt5.preset("tiny", vocab_size=max(100, len(tokenizer)))
    return cls(
      image_encoder=CLIPVisionEncoder(clip_vision.preset("tiny"), rngs=nnx.Rngs(seed)),
      text_encoder=UMT5Encoder(text_cfg, rngs=nnx.Rngs(seed + 1)),
      tokenizer=tokenizer,
      text_length=text_length,
    )

  def encode_text(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(text [B, S, Dt] float32, text_mask [B, S] int32)``."""
    from pose_jax.models.encoders.tokenizer import encode_prompts, tokenize

    _, mask = tokenize(self.tokenizer, list(prompts), self.text_length)
    text = encode_prompts(self.text_encoder, self.tokenizer, list(prompts), self.text_length)
    return np.asarray(text), mask

  def encode_image(self, images: np.ndarray) -> np.ndarray:
    """uint8 ``[B, H, W, 3]`` -> image tokens ``[B, M, Di]`` (CLIP penultimate layer)."""
    from pose_jax.models.encoders import preprocess

    side = self.image_encoder.cfg.image_size
    pixels = preprocess(list(images), shortest_edge=side, crop_size=(side, side))
    return np.asarray(_penultimate(self.image_encoder, jnp.asarray(pixels)))


@nnx.jit
def _penultimate(encoder, pixels):
  return encoder.penultimate(pixels)
