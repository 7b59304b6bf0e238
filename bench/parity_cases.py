"""The parity cases of ``bench/parity_report.py``: one function per module section, each
building the tests' tiny torch oracles (from ``tests.helpers``) and returning report rows. Import
it only after the report script has set the XLA flags (8 host devices, as ``tests/conftest.py``).
"""

from __future__ import annotations

import copy
import os
import types

import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

# ROOT is on sys.path (bench/parity_report.py puts it there); only tests.helpers is imported.
from tests.helpers import tiny
from tests.helpers import torch_refs as refs
from tests.helpers.numerics import masked_rel_err, rel_err


def row(module, reference, inputs, err, bound, bf16=None, detail=None):
  """One table row. ``bf16``: dict(ours=, reference=, bound=) or None."""
  return dict(
    module=module,
    reference=reference,
    inputs=inputs,
    err=float(err),
    bound=bound,
    bf16=bf16,
    detail=detail or {},
  )


# --- Wan DiT ------------------------------------------------------------------------------------
def dit_rows(tmp: str) -> list[dict]:
  from diffusers import WanTransformer3DModel

  from pose_jax.convert.wan_diffusers import load_transformer
  from pose_jax.models.wan import preset

  rows = []
  for name in ("tiny", "tiny_t2v"):
    cfg = preset(name)
    tm = refs.torch_wan(cfg)
    path = os.path.join(tmp, f"dit_{name}")
    tm.save_pretrained(path)
    model = load_transformer(path)
    kind = "I2V" if cfg.is_i2v else "T2V"

    # Forward: batch 2, different timesteps, 3 latent frames, 8x6; I2V text padded to 512.
    inp = refs.inputs(cfg, batch=2, frames=3, height=8, width=6)
    ref, inp = refs.torch_wan_forward(tm, inp, pad_text_to=512)
    args = tuple(map(refs.to_jnp, refs.to_jax_args(inp)))
    out = model(*args)
    err = rel_err(refs.to_channels_first(out), ref)
    # bf16 compute (float32 weights, norms, residuals) vs our fp32 (as
    # tests/models/test_wan_model.py); diffusers' own bf16 model vs its fp32 output for scale.
    bf = load_transformer(path, dtype="bfloat16")
    bf_err = rel_err(np.asarray(bf(*args), np.float32), out)
    # diffusers in bf16 as from_pretrained(torch_dtype=) loads it (its fp32-kept modules stay).
    tb = WanTransformer3DModel.from_pretrained(path, torch_dtype=torch.bfloat16).eval()
    with torch.no_grad():
      tin = {k: v if k == "timestep" else v.bfloat16() for k, v in inp.items()}
      t_bf = tb(**tin, return_dict=False)[0].float().numpy()
    text = f"{inp['encoder_hidden_states'].shape[1]}"
    if cfg.is_i2v:
      text = f"7 padded to {text}, image 4"
    rows.append(
      row(
        f"Wan DiT {kind} ({cfg.num_layers} layers) forward",
        "diffusers WanTransformer3DModel",
        f"B=2, T=3, 8x6 latent, text {text}",
        err,
        1e-5,
        # 3e-2: tests/models/test_wan_model.py's bound (random-init 4-layer tiny DiT, vs our fp32).
        bf16=dict(ours=bf_err, reference=rel_err(t_bf, ref), bound=3e-2, vs="ours fp32"),
      )
    )

    # Backward: as tests/models/test_wan_parity.py::test_gradients_match_torch_autograd.
    grads = refs.wan_gradient_errors(cfg, tm, model)
    rows.append(
      row(
        f"Wan DiT {kind} ({cfg.num_layers} layers) backward",
        "torch autograd through WanTransformer3DModel",
        "B=2, T=2, 4x6 latent; d/d{x, text, to_q, ffn_in, scale_shift_table}",
        max(grads.values()),
        1e-4,
        detail={"per_gradient": grads},
      )
    )
  return rows


# --- Wan VAE ------------------------------------------------------------------------------------
VAE_SHAPES = [(1, 32, 32), (5, 32, 32), (9, 32, 32), (5, 24, 40)]


def vae_rows(tmp: str) -> list[dict]:
  from pose_jax.convert.wan_vae import load_vae
  from pose_jax.models.wan.vae import WanVAE, preset

  tm = refs.torch_vae(preset("tiny"))
  path = os.path.join(tmp, "wan_vae")
  tm.save_pretrained(path)
  oracle = refs.VAEOracle(tm, load_vae(path))
  per_shape = {}
  for frames, height, width in VAE_SHAPES:
    x, z, ref = oracle.reference(frames, height, width)
    per_shape[f"{frames}x{height}x{width}"] = oracle.errors(oracle.state, x, z, ref)

  # bf16 at 5x32x32, as tests/models/test_wan_vae.py::test_bf16_runs_close_to_fp32.
  x, z, ref = oracle.reference(5, 32, 32)
  tb = copy.deepcopy(tm).to(torch.bfloat16)
  with torch.no_grad():
    post = tb.encode(x.to(torch.bfloat16)).latent_dist
    t_bf = {
      "mean": post.mean,
      "logvar": post.logvar,
      "video": tb.decode(z.to(torch.bfloat16)).sample,
    }
  t_bf = {k: v.float().numpy() for k, v in t_bf.items()}
  bf = load_vae(path, dtype="bfloat16")
  mean, logvar = nnx.jit(WanVAE.encode)(bf, refs.to_channels_last(x))
  video = nnx.jit(WanVAE.decode)(bf, refs.to_channels_last(z))
  cf = refs.to_channels_first
  ours = {"mean": cf(mean), "logvar": cf(logvar), "video": cf(video)}

  shapes = ", ".join(f"{t}x{h}x{w}" for t, h, w in VAE_SHAPES)
  rows = []
  for key, label in (("mean", "encode mean"), ("logvar", "encode logvar"), ("video", "decode")):
    rows.append(
      row(
        f"Wan VAE {label}",
        "diffusers AutoencoderKLWan",
        f"video T x H x W = {shapes}" + ("" if key != "video" else " (latents of these)"),
        max(e[key] for e in per_shape.values()),
        refs.VAE_TOL,
        bf16=dict(
          ours=rel_err(ours[key], ref[key]),
          reference=rel_err(t_bf[key], ref[key]),
          bound=refs.VAE_BF16_BOUND[key],
          max_ratio_to_reference=2.0,
          vs="diffusers fp32",
          at="5x32x32",
          mean_abs=float(np.abs(ours[key] - ref[key]).mean()),
          reference_mean_abs=float(np.abs(t_bf[key] - ref[key]).mean()),
        ),
        detail={"per_shape": {s: e[key] for s, e in per_shape.items()}},
      )
    )
  return rows


# --- CLIP vision --------------------------------------------------------------------------------
PREPROCESS_CASES = [((300, 410, 3), 224), ((410, 300, 3), 224), ((45, 70, 3), 32)]


def clip_rows(tmp: str) -> list[dict]:
  import transformers

  from pose_jax.convert.encoders import load_clip_vision
  from pose_jax.models.encoders.image_preprocess import preprocess

  rows = []
  for act in ("gelu", "quick_gelu"):
    tm = refs.torch_clip(act)
    path = os.path.join(tmp, f"clip_{act}")
    tm.save_pretrained(path)
    model = load_clip_vision(path)
    x = refs.clip_pixels()
    ref = refs.torch_clip_outputs(tm, x)
    out = model.penultimate(x)
    err = rel_err(out, ref.hidden_states[-2].numpy())
    others = {
      "last": rel_err(model(x), ref.last_hidden_state.numpy()),
      "pooled": rel_err(model.pooled(x), ref.pooler_output.numpy()),
    }
    for i, h in enumerate(ref.hidden_states):
      others[f"hidden_states[{i}]"] = rel_err(model.hidden_state(x, i), h.numpy())
    bf_out = load_clip_vision(path, dtype="bfloat16").penultimate(x)
    with torch.no_grad():
      hf_bf16 = (
        copy.deepcopy(tm)
        .to(torch.bfloat16)(
          pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2)).bfloat16(),
          output_hidden_states=True,
        )
        .hidden_states[-2]
        .float()
        .numpy()
      )
    cfg = tm.config
    rows.append(
      row(
        f"CLIP vision ({act}) penultimate hidden states",
        "transformers CLIPVisionModel",
        f"B=2, 32x32 px, patch 8, {cfg.num_hidden_layers} layers (17 tokens)",
        err,
        1e-5,
        bf16=dict(
          ours=rel_err(bf_out, out),
          reference=rel_err(hf_bf16, out),
          bound=3e-2,
          max_ratio_to_reference=1.25,
          vs="ours fp32",
        ),
        detail={"other_outputs": others, "max_other": max(others.values())},
      )
    )

  errs, abs_errs = {}, {}
  for shape, size in PREPROCESS_CASES:
    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    proc = transformers.CLIPImageProcessor(
      size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )
    ref = proc(images=img, return_tensors="np")["pixel_values"]
    ours = preprocess(img, shortest_edge=size, crop_size=(size, size)).transpose(0, 3, 1, 2)
    key = f"{shape[0]}x{shape[1]}->{size}"
    errs[key] = rel_err(ours, ref)
    abs_errs[key] = float(np.abs(ours - ref).max())
  rows.append(
    row(
      "CLIP image preprocessing",
      "transformers CLIPImageProcessor",
      "uint8 " + ", ".join(f"{s[0]}x{s[1]}->{z}" for s, z in PREPROCESS_CASES),
      max(errs.values()),
      None,  # the test bounds the absolute error: see detail
      detail={"rel": errs, "max_abs": abs_errs, "abs_bound": 1e-5},
    )
  )
  return rows


# --- UMT5 ---------------------------------------------------------------------------------------
def umt5_rows(tmp: str) -> list[dict]:
  from diffusers import WanImageToVideoPipeline

  from pose_jax.convert.encoders import load_umt5
  from pose_jax.models.encoders.tokenizer import encode_prompts, load_tokenizer

  tm = refs.torch_umt5()
  path = os.path.join(tmp, "umt5")
  tm.save_pretrained(path)
  model = load_umt5(path)
  ids_np, mask_np = refs.umt5_batch()
  ids, mask = jnp.asarray(ids_np, jnp.int32), jnp.asarray(mask_np)
  ref = refs.torch_umt5_forward(tm, ids_np, mask_np)
  out = np.asarray(model(ids, mask))
  valid = mask_np.astype(bool)
  bf_out = np.asarray(load_umt5(path, dtype="bfloat16")(ids, mask))
  with torch.no_grad():
    hf_bf16 = (
      copy.deepcopy(tm)
      .to(torch.bfloat16)(
        input_ids=torch.from_numpy(ids_np), attention_mask=torch.from_numpy(mask_np)
      )
      .last_hidden_state.float()
      .numpy()
    )
  cfg = tm.config
  rows = [
    row(
      "UMT5 encoder",
      "transformers UMT5EncoderModel",
      f"B=2, lengths 12 and 7 right-padded to 12, {cfg.num_layers} layers (valid positions)",
      masked_rel_err(out, ref, valid),
      1e-5,
      bf16=dict(
        ours=masked_rel_err(bf_out, out, valid),
        reference=masked_rel_err(hf_bf16, out, valid),
        bound=5e-2,
        max_ratio_to_reference=1.25,
        vs="ours fp32",
      ),
    )
  ]

  tok_dir = os.path.join(tmp, "tokenizer")
  tiny.tokenizer().save_pretrained(tok_dir)  # the tokenizer_dir of tests/models/test_umt5.py
  tok = load_tokenizer(tok_dir)
  prompts = ["  a cat &amp;amp; dog\n runs on   the beach ", "red car at night in the rain zebra"]
  pipe = types.SimpleNamespace(text_encoder=tm, tokenizer=tok)
  with torch.no_grad():
    ref = WanImageToVideoPipeline._get_t5_prompt_embeds(
      pipe, prompts, max_sequence_length=512, device=torch.device("cpu"), dtype=torch.float32
    ).numpy()
  out = np.asarray(encode_prompts(model, tok, prompts, max_length=512))
  rows.append(
    row(
      "Wan prompt encoding (clean, tokenize, UMT5, zero past length)",
      "diffusers WanImageToVideoPipeline._get_t5_prompt_embeds",
      "2 prompts (HTML entities, whitespace, OOV word) -> [2, 512, 32]",
      rel_err(out, ref),
      1e-5,
      detail={"shape": list(out.shape)},
    )
  )
  return rows


# --- conditioning stack -------------------------------------------------------------------------
def conditioning_rows(tmp: str) -> list[dict]:
  from pose_jax.conditioning import ConditioningStack

  pipe = tiny.tiny_pipeline()
  folder = os.path.join(tmp, "wan_i2v_pipe")
  pipe.save_pretrained(folder)
  stack = ConditioningStack.from_pretrained(folder)
  height, width = 32, 48
  image = tiny.make_image()
  prompts = ["  a cat &amp;amp; dog\n runs on   the beach ", "red car at night in the rain"]
  negative = "blue city at sunset"
  keys = ("cond", "image_tokens", "text_tokens", "negative_text_tokens")
  per_frames = {}
  for frames in (5, 9):
    ref = refs.pipeline_reference(pipe, image, prompts, negative, frames, height, width)
    out = stack.encode(
      image, prompts, num_frames=frames, height=height, width=width, negative_prompt=negative
    )
    errs = {k: rel_err(getattr(out, k), ref[k]) for k in keys}
    errs["latent"] = rel_err(out.cond[..., 4:], ref["cond"][..., 4:])
    errs["mask_exact"] = bool(np.array_equal(np.asarray(out.cond[..., :4]), ref["cond"][..., :4]))
    per_frames[frames] = errs

  ref_name = "diffusers WanImageToVideoPipeline"
  where = f"37x53 uint8 image -> {height}x{width}, video frames 5 and 9, B=2"
  spec = [
    ("cond", "I2V conditioning: cond (mask + VAE latent)", "prepare_latents", 1e-4),
    ("image_tokens", "I2V conditioning: image tokens", "encode_image", 1e-5),
    ("text_tokens", "I2V conditioning: text tokens", "encode_prompt", 1e-5),
    ("negative_text_tokens", "I2V conditioning: negative text tokens", "encode_prompt", 1e-5),
  ]
  rows = []
  for key, name, method, bound in spec:
    detail = {f"frames={f}": e[key] for f, e in per_frames.items()}
    if key == "cond":
      detail["latent_channels"] = {f"frames={f}": e["latent"] for f, e in per_frames.items()}
      detail["mask_channels_bit_exact"] = all(e["mask_exact"] for e in per_frames.values())
    rows.append(
      row(
        name,
        f"{ref_name}.{method}",
        {
          "text_tokens": "2 prompts -> [2, 512, 32]",
          "negative_text_tokens": "1 negative prompt repeated -> [2, 512, 32]",
        }.get(key, where),
        max(e[key] for e in per_frames.values()),
        bound,
        detail=detail,
      )
    )
  return rows
