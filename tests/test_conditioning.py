"""I2V conditioning stack: parity with ``WanImageToVideoPipeline``'s own intermediate tensors.

The oracle is a tiny random diffusers pipeline (:func:`tests.helpers.tiny.tiny_pipeline`: UMT5,
CLIP vision, a perturbed AutoencoderKLWan with random latent statistics, a tiny DiT, a local
WordLevel tokenizer) written once with ``save_pretrained`` and read back by
:meth:`ConditioningStack.from_pretrained`. References are its ``encode_prompt``, ``encode_image``
and ``prepare_latents`` outputs, fed the way ``__call__`` feeds them
(:func:`tests.helpers.torch_refs.pipeline_reference`).
"""

import json
import os
import shutil

import numpy as np
import pytest

from pose_jax.conditioning import (
  ConditioningStack,
  check_video_size,
  first_frame_mask,
  fit_area,
  load_pipeline_transformer,
  resize_for_vae,
)
from pose_jax.convert.errors import CheckpointError
from tests.helpers.numerics import rel_err
from tests.helpers.tiny import CLIP_DIM, TEXT_DIM, Z, make_image, tiny_pipeline
from tests.helpers.torch_refs import pipeline_reference


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  pipe = tiny_pipeline()
  folder = tmp_path_factory.mktemp("wan_i2v_pipe")
  pipe.save_pretrained(folder)
  return pipe, str(folder), ConditioningStack.from_pretrained(str(folder))


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
