"""Torch oracles of the parity tests, and their forwards, shared by tests and ``bench/``.

Each oracle is a tiny random torch model (diffusers' Wan DiT and VAE, transformers' CLIP vision
and UMT5) with every parameter perturbed, so no norm, bias or gamma is trivial. The conditioning
reference (:func:`pipeline_reference`) runs ``WanImageToVideoPipeline``'s own encoders, in the
tests on :func:`tests.helpers.tiny.tiny_pipeline`. Layouts: torch is channels-first, ours
channels-last; :func:`to_channels_first` / :func:`to_channels_last` convert 5-D tensors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from flax import nnx
from PIL import Image

from pose_jax.models.wan import WanConfig
from pose_jax.models.wan.vae import WanVAE, WanVAEConfig
from tests.helpers.numerics import rel_err


def perturb(model: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
  """``model`` in eval mode, N(0, scale^2) added to every parameter (torch's global RNG)."""
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * scale)
  return model.eval()


# --- Wan DiT ------------------------------------------------------------------------------------
def torch_wan(cfg: WanConfig, seed: int = 0, noise: float = 0.1) -> WanTransformer3DModel:
  """A diffusers model for ``cfg`` with every parameter perturbed (no trivial norms/biases)."""
  torch.manual_seed(seed)
  kw = cfg.to_diffusers()
  kw.pop("_class_name")
  return perturb(WanTransformer3DModel(**kw), noise)


def inputs(cfg: WanConfig, batch=2, frames=3, height=8, width=6, text_len=7, image_len=4, seed=1):
  """Random channels-first torch inputs; timesteps differ per sample."""
  g = torch.Generator().manual_seed(seed)
  out = dict(
    hidden_states=torch.randn(batch, cfg.in_channels, frames, height, width, generator=g),
    timestep=torch.linspace(17.0, 930.0, batch),
    encoder_hidden_states=torch.randn(batch, text_len, cfg.text_dim, generator=g),
  )
  if cfg.is_i2v:
    out["encoder_hidden_states_image"] = torch.randn(batch, image_len, cfg.image_dim, generator=g)
  return out


def to_jax_args(inp: dict):
  """torch inputs -> positional args of ``WanTransformer`` (channels-last numpy)."""
  x = inp["hidden_states"].numpy().transpose(0, 2, 3, 4, 1)
  img = inp.get("encoder_hidden_states_image")
  return (
    x,
    inp["timestep"].numpy(),
    inp["encoder_hidden_states"].numpy(),
    None if img is None else img.numpy(),
  )


def to_jnp(a):
  """``jnp.asarray(a)``, keeping ``None`` (an absent image input)."""
  return None if a is None else jnp.asarray(a)


def to_channels_first(y) -> np.ndarray:
  """Ours ``[B, T, H, W, C]`` -> torch's ``[B, C, T, H, W]`` (numpy)."""
  return np.asarray(y).transpose(0, 4, 1, 2, 3)


def to_channels_last(t: torch.Tensor) -> jnp.ndarray:
  """torch's ``[B, C, T, H, W]`` -> ours ``[B, T, H, W, C]`` (jax)."""
  return jnp.asarray(t.numpy().transpose(0, 2, 3, 4, 1))


def torch_wan_forward(tm, inp, pad_text_to=None):
  """``(output as numpy, the inputs used)``; I2V text zero-padded to ``pad_text_to`` tokens
  (diffusers splits image from text as 'everything before the last 512')."""
  inp = dict(inp)
  if pad_text_to and "encoder_hidden_states_image" in inp:
    txt = inp["encoder_hidden_states"]
    inp["encoder_hidden_states"] = torch.cat(
      [txt, torch.zeros(txt.shape[0], pad_text_to - txt.shape[1], txt.shape[2])], 1
    )
  with torch.no_grad():
    return tm(**inp, return_dict=False)[0].numpy(), inp


def wan_gradient_errors(cfg, tm, model) -> dict[str, float]:
  """Relative error of our gradients vs torch autograd for a weighted-sum loss: w.r.t. the
  input, the text tokens, one ``to_q``, one FFN kernel and the output ``scale_shift_table``."""
  inp = inputs(cfg, batch=2, frames=2, height=4, width=6, text_len=5)
  _, inp = torch_wan_forward(tm, inp, pad_text_to=512)
  inp = {k: v.clone().requires_grad_(k != "timestep") for k, v in inp.items()}
  weight = torch.from_numpy(
    np.random.default_rng(0).standard_normal((2, cfg.out_channels, 2, 4, 6)).astype(np.float32)
  )
  tm.zero_grad(set_to_none=True)
  (tm(**inp, return_dict=False)[0] * weight).sum().backward()
  blk = tm.blocks[1]
  t_grads = {
    "x": inp["hidden_states"].grad.numpy().transpose(0, 2, 3, 4, 1),
    "text": inp["encoder_hidden_states"].grad.numpy(),
    "to_q": blk.attn1.to_q.weight.grad.numpy().T,
    "ffn_in": blk.ffn.net[0].proj.weight.grad.numpy().T,
    "table": tm.scale_shift_table.grad.numpy(),
  }
  graphdef, params = nnx.split(model)
  x, t, txt, img = map(to_jnp, to_jax_args({k: v.detach() for k, v in inp.items()}))
  w = jnp.asarray(weight.numpy().transpose(0, 2, 3, 4, 1))

  def loss(params, x, txt):
    return (nnx.merge(graphdef, params)(x, t, txt, img) * w).sum()

  gp, gx, gt = jax.grad(loss, argnums=(0, 1, 2))(params, x, txt)
  ours = {
    "x": gx,
    "text": gt,
    "to_q": gp["blocks"]["attn1"]["to_q"]["kernel"][...][1],
    "ffn_in": gp["blocks"]["ffn"]["proj_in"]["kernel"][...][1],
    "table": gp["scale_shift_table"][...],
  }
  return {name: rel_err(ours[name], ref) for name, ref in t_grads.items()}


# --- Wan VAE ------------------------------------------------------------------------------------
VAE_TOL = 1e-4  # fp32 parity: max abs error <= VAE_TOL * max |reference|

# bf16 keeps 8 mantissa bits; through ~20 convs with RMS norms in between, the rounding adds up.
# Measured on this tiny random VAE, diffusers' own bf16 run (torch CPU) is off its fp32 output by
# ~1e-2 (mean abs) and ~8e-2 (max abs / max |ref|) on decode, ~1e-2 on encode. The bound: ours may
# be at most 2x diffusers' own bf16 error (max and mean abs) and within 0.05 (encode) / 0.25
# (decode) of the fp32 reference. A real bug (a wrong layer) gives O(1) errors.
VAE_BF16_BOUND = {"mean": 0.05, "logvar": 0.05, "video": 0.25}


def torch_vae(cfg: WanVAEConfig, seed: int = 0) -> AutoencoderKLWan:
  """A diffusers VAE for ``cfg`` with every parameter perturbed (no trivial gammas/biases)."""
  torch.manual_seed(seed)
  return perturb(AutoencoderKLWan(**cfg.to_diffusers()))


class VAEOracle:
  """A diffusers VAE, its JAX twin, and jitted ``encode``/``decode`` over ``(state, input)``
  (so weight edits reuse the compiled function)."""

  def __init__(self, tm: AutoencoderKLWan, model: WanVAE):
    self.tm = tm
    self.graphdef, self.state = nnx.split(model)
    g = self.graphdef
    self.encode = jax.jit(lambda s, x: nnx.merge(g, s).encode(x))
    self.decode = jax.jit(lambda s, z: nnx.merge(g, s).decode(z))

  def reference(self, frames: int, height: int, width: int, seed: int = 1):
    """``(video x, latent z, diffusers' {mean, logvar} of x and decoded video of z})``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, frames, height, width, generator=g) * 2 - 1
    with torch.no_grad():
      post = self.tm.encode(x).latent_dist
      z = torch.randn(post.mean.shape, generator=g)
      y = self.tm.decode(z).sample
    return x, z, {"mean": post.mean.numpy(), "logvar": post.logvar.numpy(), "video": y.numpy()}

  def errors(self, state, x, z, ref) -> dict[str, float]:
    """:func:`rel_err` of our encode/decode (with weights ``state``) vs ``ref``, per output."""
    mean, logvar = self.encode(state, to_channels_last(x))
    video = self.decode(state, to_channels_last(z))
    out = {"mean": to_channels_first(mean), "logvar": to_channels_first(logvar)}
    out["video"] = to_channels_first(video)
    return {k: rel_err(out[k], ref[k]) for k in ref}


# --- CLIP vision --------------------------------------------------------------------------------
def torch_clip(act: str, seed: int = 0) -> transformers.CLIPVisionModel:
  """Tiny random transformers model; every parameter perturbed (non-trivial norms and biases)."""
  torch.manual_seed(seed)
  cfg = transformers.CLIPVisionConfig(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=2,
    image_size=32,
    patch_size=8,
    hidden_act=act,
    attn_implementation="eager",
  )
  return perturb(transformers.CLIPVisionModel(cfg))


def clip_pixels(batch=2, seed=1) -> np.ndarray:
  """Random normalised pixels ``[batch, 32, 32, 3]`` for :func:`torch_clip` models."""
  return np.random.default_rng(seed).standard_normal((batch, 32, 32, 3)).astype(np.float32)


def torch_clip_outputs(tm, x: np.ndarray):
  """transformers' output (with every hidden state) for channels-last pixels ``x``."""
  with torch.no_grad():
    out = tm(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2)), output_hidden_states=True)
  return out


# --- UMT5 ---------------------------------------------------------------------------------------
def umt5_config(**kw) -> transformers.UMT5Config:
  """The tiny UMT5 of :func:`torch_umt5` (``umt5.preset("tiny")``), with overrides."""
  args = dict(
    vocab_size=100,
    d_model=32,
    d_kv=8,
    d_ff=64,
    num_layers=3,
    num_heads=4,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=16,
    feed_forward_proj="gated-gelu",
    attn_implementation="eager",
  )
  return transformers.UMT5Config(**{**args, **kw})


def torch_umt5(seed: int = 0) -> transformers.UMT5EncoderModel:
  """Tiny random transformers encoder; every parameter perturbed (non-trivial norms)."""
  torch.manual_seed(seed)
  return perturb(transformers.UMT5EncoderModel(umt5_config()))


def umt5_batch(seed: int = 1):
  """Two sequences of lengths 12 and 7, right-padded (pad id 0) to 12, with their mask."""
  ids = np.random.default_rng(seed).integers(1, 100, (2, 12)).astype(np.int64)
  mask = np.ones((2, 12), np.int64)
  mask[1, 7:] = 0
  ids[1, 7:] = 0
  return ids, mask


def torch_umt5_forward(tm, ids, mask) -> np.ndarray:
  """transformers' last hidden state for int64 ``ids`` and ``mask`` (numpy)."""
  with torch.no_grad():
    return tm(
      input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)
    ).last_hidden_state.numpy()


# --- I2V conditioning ---------------------------------------------------------------------------
def pipeline_reference(pipe, image, prompts, negative, frames, height, width):
  """The pipeline's tensors, channels-last, computed as ``__call__`` computes them."""
  cpu = torch.device("cpu")
  pil = Image.fromarray(image)
  with torch.no_grad():
    text, neg = pipe.encode_prompt(
      prompts, negative, do_classifier_free_guidance=True, max_sequence_length=512, device=cpu
    )
    image_tokens = pipe.encode_image(pil, cpu).repeat(len(prompts), 1, 1)
    pixels = pipe.video_processor.preprocess(pil, height=height, width=width).to(cpu, torch.float32)
    _, cond = pipe.prepare_latents(
      pixels,
      len(prompts),
      pipe.vae.config.z_dim,  # as __call__ passes it
      height,
      width,
      frames,
      torch.float32,
      cpu,
      torch.Generator().manual_seed(0),
      None,
      None,
    )
  return {
    "cond": cond.numpy().transpose(0, 2, 3, 4, 1),
    "image_tokens": image_tokens.numpy(),
    "text_tokens": text.numpy(),
    "negative_text_tokens": neg.numpy(),
    "pixels": pixels.numpy().transpose(0, 2, 3, 1),
  }
