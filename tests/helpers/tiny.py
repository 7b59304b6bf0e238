"""Tiny builders shared by tests and ``bench/``: a random diffusers I2V pipeline, a local
tokenizer, a test image, a train workdir as the trainer writes it, and the experiment configs.

:func:`tiny_pipeline` is ``WanImageToVideoPipeline`` with random UMT5, CLIP vision, a perturbed
``AutoencoderKLWan`` with random latent statistics, a one-layer DiT and :func:`tokenizer` (a
WordLevel vocab of :data:`WORDS`: no downloads). Its sizes: latent channels :data:`Z`, CLIP
width :data:`CLIP_DIM`, text width :data:`TEXT_DIM`.
"""

from __future__ import annotations

import importlib.util
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import torch
import transformers
from flax import nnx

from pose_jax.conditioning import load_pipeline_transformer
from tests.helpers import ROOT
from tests.helpers.torch_refs import perturb

WORDS = "a cat dog runs on the beach at sunset & red blue car city night rain".split()
Z, CLIP_DIM, TEXT_DIM = 4, 24, 32


def load_config(name: str, arg: str | None = None):
  """``configs/<name>.py``'s ``get_config(arg)``, loaded from its file as ``main`` loads it."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def tokenizer() -> transformers.PreTrainedTokenizerFast:
  """A WordLevel tokenizer over :data:`WORDS` (pad 0, ``</s>`` 1 appended, unknown 2)."""
  from tokenizers import Tokenizer, models, pre_tokenizers, processors

  vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
  return transformers.PreTrainedTokenizerFast(
    tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
  )


def tiny_pipeline(seed: int = 0):
  """A random ``WanImageToVideoPipeline`` (module docstring); same ``seed``, same weights."""
  from diffusers import (
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    WanImageToVideoPipeline,
    WanTransformer3DModel,
  )

  torch.manual_seed(seed)
  text_encoder = transformers.UMT5EncoderModel(
    transformers.UMT5Config(
      vocab_size=100,
      d_model=TEXT_DIM,
      d_kv=8,
      d_ff=64,
      num_layers=2,
      num_heads=4,
      relative_attention_num_buckets=8,
      relative_attention_max_distance=16,
    )
  )
  image_encoder = transformers.CLIPVisionModel(
    transformers.CLIPVisionConfig(
      hidden_size=CLIP_DIM,
      intermediate_size=48,
      num_hidden_layers=3,
      num_attention_heads=2,
      image_size=32,
      patch_size=8,
    )
  )
  vae = AutoencoderKLWan(
    base_dim=8,
    z_dim=Z,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=1,
    attn_scales=[],
    temperal_downsample=[False, True, True],
    dropout=0.0,
    latents_mean=torch.randn(Z).tolist(),
    latents_std=(0.5 + torch.rand(Z)).tolist(),
  )
  transformer = WanTransformer3DModel(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=2 * Z + 4,
    out_channels=Z,
    text_dim=TEXT_DIM,
    freq_dim=32,
    ffn_dim=64,
    num_layers=1,
    image_dim=CLIP_DIM,
    added_kv_proj_dim=32,
  )
  return WanImageToVideoPipeline(
    tokenizer=tokenizer(),
    text_encoder=perturb(text_encoder),
    vae=perturb(vae),
    scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    image_processor=transformers.CLIPImageProcessor(
      size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ),
    image_encoder=perturb(image_encoder),
    transformer=transformer.eval(),
  )


def make_image(height: int = 37, width: int = 53) -> np.ndarray:
  """Deterministic, smooth-ish non-square uint8 image (gradients + noise)."""
  y, x = np.mgrid[:height, :width]
  base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (height + width)], -1)
  noise = np.random.default_rng(3).integers(-40, 40, base.shape)
  return np.clip(base + noise, 0, 255).astype(np.uint8)


def write_train_workdir(folder: str, root, seed: int = 1, scale: float = 0.05):
  """A train workdir as the trainer writes it (``checkpoints/<step>/{state, meta}``, the
  student and EMA as ``nnx.State``s, no ``wan_config``): the pipeline's DiT, perturbed."""
  model = load_pipeline_transformer(folder)
  state = nnx.state(model, nnx.Param)
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  bump = lambda a, k, s: a + s * jax.random.normal(k, a.shape, a.dtype)
  student = jax.tree.unflatten(treedef, [bump(a, k, scale) for a, k in zip(leaves, keys)])
  ema = jax.tree.unflatten(treedef, [bump(a, k, scale / 2) for a, k in zip(leaves, keys)])
  with ocp.CheckpointManager(root / "checkpoints") as mngr:
    tree = {"step": 7, "params": {"student": student}, "ema": ema}
    items = dict(
      state=ocp.args.StandardSave(tree),
      meta=ocp.args.JsonSave({"phase_index": 1, "has_teacher": False}),
    )
    mngr.save(7, args=ocp.args.Composite(**items))
  return root


def dit_batch(key=None) -> dict:
  """A fixed random training batch for the ``tiny`` DiT preset (2 clips, 2 latent frames of
  4x6, Z=16, 20 condition channels, 7 text rows (prompts of 5 and 3 tokens, the rows past them
  zero as UMT5's are, ``text_mask``) and 5 image tokens of width 32)."""
  import jax.numpy as jnp

  ks = jax.random.split(jax.random.key(0) if key is None else key, 4)
  b, t, h, w = 2, 2, 4, 6
  text_mask = (jnp.arange(7)[None] < jnp.asarray([[5], [3]])).astype(jnp.int32)
  return dict(
    latents=jax.random.normal(ks[0], (b, t, h, w, 16)),
    cond=jax.random.normal(ks[1], (b, t, h, w, 20)),
    text=jax.random.normal(ks[2], (b, 7, 32)) * text_mask[..., None],
    text_mask=text_mask,
    neg_text=jnp.zeros((b, 7, 32)),
    image=jax.random.normal(ks[3], (b, 5, 32)),
  )
