"""Wan2.1 prompt encoding: clean, tokenize to 512, UMT5-encode, zero the padding.

Legend: B batch, L = max_length (512) tokens, D text width.

Matches diffusers ``WanImageToVideoPipeline._get_t5_prompt_embeds``:
  prompt_clean (ftfy.fix_text, html.unescape twice, strip, collapse whitespace) ->
  tokenizer(padding="max_length", max_length=L, truncation=True, add_special_tokens=True) ->
  encoder(ids, mask) -> for each sample keep the first seq_len = sum(mask) outputs and set the
  remaining L - seq_len rows to zero.
The tokenizer is a transformers tokenizer loaded from a local directory (no downloads);
transformers, ftfy and regex are imported only when used (not core dependencies).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pose_jax.models.encoders.umt5 import UMT5Encoder

if TYPE_CHECKING:
  from transformers import PreTrainedTokenizerBase


def prompt_clean(text: str) -> str:
  """diffusers' Wan ``prompt_clean``: ftfy fix, double HTML unescape, whitespace collapse."""
  import ftfy
  import regex

  text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
  return regex.sub(r"\s+", " ", text).strip()


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
  """``AutoTokenizer.from_pretrained(path)`` from a local directory only."""
  from transformers import AutoTokenizer

  return AutoTokenizer.from_pretrained(path, local_files_only=True)


def tokenize(
  tokenizer: PreTrainedTokenizerBase, prompts: str | Sequence[str], max_length: int = 512
) -> tuple[np.ndarray, np.ndarray]:
  """Cleaned, padded and truncated token ids and mask, both int32 numpy ``[B, L]``."""
  prompts = [prompts] if isinstance(prompts, str) else list(prompts)
  out = tokenizer(
    [prompt_clean(p) for p in prompts],
    padding="max_length",
    max_length=max_length,
    truncation=True,
    add_special_tokens=True,
    return_attention_mask=True,
    return_tensors="np",
  )
  return out["input_ids"].astype(np.int32), out["attention_mask"].astype(np.int32)


@nnx.jit
def _encode(model: UMT5Encoder, ids: jax.Array, mask: jax.Array) -> jax.Array:
  out = model(ids, mask)
  seq_len = (mask > 0).sum(axis=1)
  keep = jnp.arange(ids.shape[1])[None, :] < seq_len[:, None]
  return jnp.where(keep[..., None], out, 0.0)


def encode_prompts(
  model: UMT5Encoder,
  tokenizer: PreTrainedTokenizerBase,
  prompts: str | Sequence[str],
  max_length: int = 512,
) -> jax.Array:
  """Wan text conditioning float32 ``[B, max_length, D]``, rows past each prompt's length zero."""
  ids, mask = tokenize(tokenizer, prompts, max_length)
  return _encode(model, jnp.asarray(ids), jnp.asarray(mask))
