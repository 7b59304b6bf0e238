"""I2V conditioning stack: parity with ``WanImageToVideoPipeline``'s own intermediate tensors.

The oracle is a tiny random diffusers pipeline (UMT5, CLIP vision, a perturbed AutoencoderKLWan
with random latent statistics, a tiny DiT, a local WordLevel tokenizer) written once with
``save_pretrained`` and read back by :meth:`ConditioningStack.from_pretrained`. References are
its ``encode_prompt``, ``encode_image`` and ``prepare_latents`` outputs, fed the way
``__call__`` feeds them (``video_processor.preprocess(image, height=, width=)`` first).
"""

import json
import os
import shutil

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from pose_jax.conditioning import (
  ConditioningStack,
  check_video_size,
  first_frame_mask,
  fit_area,
  load_pipeline_transformer,
  resize_for_vae,
)
from pose_jax.convert.errors import CheckpointError

WORDS = "a cat dog runs on the beach at sunset & red blue car city night rain".split()
Z, CLIP_DIM, TEXT_DIM = 4, 24, 32


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / np.abs(b).max())


def _perturb(model: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * scale)
  return model.eval()


def _tokenizer() -> transformers.PreTrainedTokenizerFast:
  from tokenizers import Tokenizer, models, pre_tokenizers, processors

  vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
  return transformers.PreTrainedTokenizerFast(
    tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
  )


def tiny_pipeline(seed: int = 0):
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
    tokenizer=_tokenizer(),
    text_encoder=_perturb(text_encoder),
    vae=_perturb(vae),
    scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    image_processor=transformers.CLIPImageProcessor(
      size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ),
    image_encoder=_perturb(image_encoder),
    transformer=transformer.eval(),
  )


def make_image(height: int = 37, width: int = 53) -> np.ndarray:
  """Deterministic, smooth-ish non-square uint8 image (gradients + noise)."""
  y, x = np.mgrid[:height, :width]
  base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (height + width)], -1)
  noise = np.random.default_rng(3).integers(-40, 40, base.shape)
  return np.clip(base + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  pipe = tiny_pipeline()
  folder = tmp_path_factory.mktemp("wan_i2v_pipe")
  pipe.save_pretrained(folder)
  return pipe, str(folder), ConditioningStack.from_pretrained(str(folder))


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
      Z,
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


@pytest.mark.parametrize("frames", [5, 9])
def test_encode_matches_pipeline(setup, frames):
  pipe, _, stack = setup
  height, width = 32, 48
  image = make_image()
  prompts = ["  a cat &amp;amp; dog\n runs on   the beach ", "red car at night in the rain"]
  negative = "blue city at sunset"
  ref = pipeline_reference(pipe, image, prompts, negative, frames, height, width)
  out = stack.encode(
    image, prompts, num_frames=frames, height=height, width=width, negative_prompt=negative
  )
  n = 1 + (frames - 1) // 4
  assert out.cond.shape == ref["cond"].shape == (2, n, height // 8, width // 8, 4 + Z)
  assert out.image_tokens.shape == ref["image_tokens"].shape == (2, 17, CLIP_DIM)
  assert out.text_tokens.shape == ref["text_tokens"].shape == (2, 512, TEXT_DIM)
  errs = {
    k: rel_err(getattr(out, k), ref[k])
    for k in ("cond", "image_tokens", "text_tokens", "negative_text_tokens")
  }
  errs["latent"] = rel_err(out.cond[..., 4:], ref["cond"][..., 4:])
  print(f"frames={frames}: rel errs " + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()))
  assert errs["cond"] <= 1e-4 and errs["latent"] <= 1e-4
  assert max(errs["image_tokens"], errs["text_tokens"], errs["negative_text_tokens"]) <= 1e-5
  # The mask channels are exact, and the resized first frame is bit-identical to diffusers'.
  assert np.array_equal(np.asarray(out.cond[..., :4]), ref["cond"][..., :4])
  assert np.array_equal(resize_for_vae(image, height, width), ref["pixels"][0])


@pytest.mark.parametrize("frames", [1, 5, 9, 13])
def test_first_frame_mask_layout(frames):
  """Independent of diffusers: ones for latent frame 0's four sub-frames, zeros elsewhere."""
  mask = first_frame_mask(frames, 2, 3)
  n = 1 + (frames - 1) // 4
  assert mask.shape == (n, 2, 3, 4) and mask.dtype == np.float32
  assert np.all(mask[0] == 1.0) and np.all(mask[1:] == 0.0)


def test_batch_of_images_matches_single_calls(setup):
  _, _, stack = setup
  images = [make_image(), make_image(50, 40)[::-1].copy()]
  prompts = ["a cat", "red car at night"]
  kw = dict(num_frames=5, height=32, width=32)
  both = stack.encode(images, prompts, **kw)
  assert both.negative_text_tokens is None
  for i in range(2):
    one = stack.encode(images[i], prompts[i], **kw)
    for k in ("cond", "image_tokens", "text_tokens"):
      assert rel_err(getattr(both, k)[i], getattr(one, k)[0]) <= 1e-5, (i, k)
  with pytest.raises(ValueError, match="image"):
    stack.encode(images, ["a", "b", "c"], **kw)


def test_fit_area_matches_wan_example():
  """The diffusers docstring's formula, and two hand-checked sizes."""
  for h, w in [(720, 1280), (1280, 720), (512, 512), (333, 1000)]:
    ar = h / w
    want = (
      round(np.sqrt(480 * 832 * ar)) // 16 * 16,
      round(np.sqrt(480 * 832 / ar)) // 16 * 16,
    )
    assert fit_area((h, w)) == want
  assert fit_area((720, 1280)) == (464, 832)  # sqrt(399360 * 9/16) = 474 -> 464; 842.7 -> 832
  assert fit_area((512, 512)) == (624, 624)  # sqrt(399360) = 631.9 -> 632 // 16 * 16 = 624


def test_bad_sizes_raise(setup):
  _, _, stack = setup
  with pytest.raises(ValueError, match="num_frames=8 must be 1 \\+ 4k"):
    stack.encode(make_image(), "a cat", num_frames=8, height=32, width=48)
  with pytest.raises(ValueError, match="height=40 must be a positive multiple of 16"):
    stack.encode(make_image(), "a cat", num_frames=5, height=40, width=48)
  with pytest.raises(ValueError, match="width=0"):
    check_video_size(5, 32, 0)


def test_missing_subfolder_is_named(setup, tmp_path):
  _, folder, _ = setup
  broken = tmp_path / "no_vae"
  shutil.copytree(folder, broken)
  shutil.rmtree(broken / "vae")
  with pytest.raises(CheckpointError, match="missing subfolder\\(s\\) vae/"):
    ConditioningStack.from_pretrained(str(broken))
  assert os.path.isdir(os.path.join(folder, "vae"))


def test_runtime_settings_and_transformer_helper(setup, tmp_path):
  _, folder, _ = setup
  stack = ConditioningStack.from_pretrained(folder, dtype="bfloat16", remat="full")
  assert stack.vae.cfg.dtype == stack.image_encoder.cfg.dtype == "bfloat16"
  assert stack.text_encoder.cfg.dtype == "bfloat16" and stack.text_encoder.cfg.remat == "full"
  assert stack.mod_value == 16 and stack.fit_area((720, 1280)) == (464, 832)
  with pytest.raises(TypeError, match="z_dim"):
    ConditioningStack.from_pretrained(folder, z_dim=8)  # architecture is not a runtime setting
  dit = load_pipeline_transformer(folder)
  assert dit.cfg.in_channels == 2 * Z + 4 and dit.cfg.image_dim == CLIP_DIM
  # A DiT whose input width does not fit the VAE is reported at load time.
  broken = tmp_path / "wrong_dit"
  shutil.copytree(folder, broken)
  cfg_path = broken / "transformer" / "config.json"
  cfg = json.loads(cfg_path.read_text())
  cfg_path.write_text(json.dumps({**cfg, "in_channels": 36}))
  with pytest.raises(ValueError, match="in_channels=36 \\(expected 12\\)"):
    ConditioningStack.from_pretrained(str(broken))
