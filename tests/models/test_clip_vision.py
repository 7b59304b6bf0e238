"""CLIP vision tower: preprocessing and fp32 parity with transformers, weight import, bf16."""

import copy
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers
from flax import nnx

from pose_jax.convert.encoders import load_clip_vision, load_clip_vision_wan
from pose_jax.convert.errors import CheckpointError
from pose_jax.models.encoders import clip_vision
from pose_jax.models.encoders.image_preprocess import preprocess
from tests.helpers.numerics import rel_err
from tests.helpers.torch_refs import clip_pixels, torch_clip, torch_clip_outputs


@pytest.fixture(scope="module", params=["gelu", "quick_gelu"])
def pair(request, tmp_path_factory):
  tm = torch_clip(request.param)
  path = tmp_path_factory.mktemp(f"clip_{request.param}")
  tm.save_pretrained(path)
  return tm, path, load_clip_vision(str(path))


# --- preprocessing --------------------------------------------------------------------------------
@pytest.mark.parametrize(
  "shape,size", [((300, 410, 3), 224), ((410, 300, 3), 224), ((45, 70, 3), 32)]
)
def test_preprocess_matches_clip_image_processor(shape, size):
  img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
  proc = transformers.CLIPImageProcessor(
    size={"shortest_edge": size}, crop_size={"height": size, "width": size}
  )
  ref = proc(images=img, return_tensors="np")["pixel_values"]
  ours = preprocess(img, shortest_edge=size, crop_size=(size, size))
  assert ours.shape == (1, size, size, 3) and ours.dtype == np.float32
  err = np.abs(ours.transpose(0, 3, 1, 2) - ref).max()
  print(f"preprocess {shape}: max abs err {err:.2e}")
  assert err <= 1e-5
  from PIL import Image

  assert np.array_equal(preprocess(Image.fromarray(img), size, (size, size)), ours)


# --- fp32 parity ----------------------------------------------------------------------------------
def test_matches_transformers(pair):
  tm, _, model = pair
  x = clip_pixels()
  ref = torch_clip_outputs(tm, x)
  checks = {
    "penultimate": (model.penultimate(x), ref.hidden_states[-2]),
    "last": (model(x), ref.last_hidden_state),
    "pooled": (model.pooled(x), ref.pooler_output),
  }
  for i, h in enumerate(ref.hidden_states):  # every layer boundary, incl. embeddings (0)
    checks[f"hidden_states[{i}]"] = (model.hidden_state(x, i), h)
  for name, (ours, want) in checks.items():
    err = rel_err(ours, want.numpy())
    print(f"{tm.config.hidden_act} {name}: rel err {err:.2e}")
    assert ours.shape == tuple(want.shape), name
    assert err <= 1e-5, (name, err)
  # Wan's image tokens: 1 class + (32/8)^2 patches; hidden_states[-2] is not the last layer.
  assert model.penultimate(x).shape == (2, 17, 32)
  assert rel_err(ref.hidden_states[-2], ref.last_hidden_state) > 1e-2


def test_a_transposed_weight_is_detected(pair):
  """The parity check is sensitive to layout: one transposed square kernel breaks it."""
  tm, path, _ = pair
  x = clip_pixels()
  ref = torch_clip_outputs(tm, x).hidden_states[-2].numpy()
  graphdef, state = nnx.split(load_clip_vision(str(path)))  # a fresh copy: edited in place
  kernel = state["layers"]["self_attn"]["q_proj"]["kernel"]
  kernel.set_value(kernel.get_value().at[0].set(kernel.get_value()[0].T))
  err = rel_err(nnx.merge(graphdef, state).penultimate(x), ref)
  print(f"transposed q_proj kernel: rel err {err:.2e}")
  assert err > 1e-3


def test_bf16_close_to_fp32(pair):
  """bf16 matmuls (unit roundoff 2^-9 ~ 2e-3) with float32 LayerNorms/residuals through 3
  layers: a few 1e-3 relative (transformers' own bf16 model is ~6e-3 off its fp32 output
  here). Bound: no worse than transformers in bf16 (x1.25) and <= 3e-2 of max|fp32|; a wrong
  weight gives O(1)."""
  tm, path, model = pair
  bf = load_clip_vision(str(path), dtype="bfloat16")
  x = clip_pixels()
  ref, out = model.penultimate(x), bf.penultimate(x)
  assert out.dtype == jnp.float32 and bool(jnp.isfinite(out).all())
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
  err, hf_err = rel_err(out, ref), rel_err(hf_bf16, ref)
  print(f"bf16 vs fp32 penultimate: rel err {err:.2e} (transformers bf16: {hf_err:.2e})")
  assert err <= 1.25 * hf_err and err <= 3e-2


def test_remat_and_jit_same_output(pair):
  _, path, model = pair
  x = clip_pixels()
  rm = load_clip_vision(str(path), remat="full")
  out = nnx.jit(lambda m, x: m.penultimate(x))(rm, x)
  assert rel_err(out, model.penultimate(x)) <= 1e-6


# --- strict import --------------------------------------------------------------------------------
def _rewrite(src, dst, edit):
  dst.mkdir()
  tensors = safetensors.numpy.load_file(str(src / "model.safetensors"))
  edit(tensors)
  safetensors.numpy.save_file(tensors, str(dst / "model.safetensors"))
  (dst / "config.json").write_text((src / "config.json").read_text())
  return str(dst)


def test_strict_errors_name_the_keys(pair, tmp_path):
  _, path, _ = pair
  q = "encoder.layers.1.self_attn.q_proj.weight"  # transformers 5 saves without vision_model.

  def extra(t):
    t["encoder.layers.0.mlp.fc3.weight"] = np.zeros((4, 4), np.float32)

  def missing(t):
    del t[q]

  def bad_shape(t):
    t[q] = t[q][:, :16]

  def duplicate(t):
    t["vision_model.post_layernorm.bias"] = t["post_layernorm.bias"]

  for name, edit, words in [
    ("extra", extra, ["unexpected", "mlp.fc3"]),
    ("duplicate", duplicate, ["both", "vision_model.post_layernorm"]),
    ("missing", missing, ["missing", "self_attn/q_proj/kernel layers [1]"]),
    ("shape", bad_shape, ["wrong shape", q]),
  ]:
    with pytest.raises(CheckpointError) as e:
      load_clip_vision(_rewrite(path, tmp_path / name, edit))
    for w in words:
      assert w in str(e.value), (name, str(e.value))


def test_sharded_checkpoint_and_projection_key(pair, tmp_path):
  """A sharded index loads; the hub layout (``vision_model.`` prefix, as saved by
  CLIPVisionModelWithProjection) loads and its visual_projection is skipped."""
  tm, _, model = pair
  wp = transformers.CLIPVisionModelWithProjection(tm.config)
  wp.vision_model.load_state_dict(tm.state_dict())
  wp.save_pretrained(tmp_path, max_shard_size="40KB")
  index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
  keys = index["weight_map"]
  assert len(set(keys.values())) > 1 and "visual_projection.weight" in keys
  assert "vision_model.post_layernorm.bias" in keys
  x = clip_pixels()
  assert rel_err(load_clip_vision(str(tmp_path)).penultimate(x), model.penultimate(x)) == 0.0


# --- original Wan2.1 .pth (open-clip layout) -----------------------------------------------------
def _to_wan_layout(tm) -> dict:
  """An independent hand-written rename of transformers keys into Wan's XLMRobertaCLIP layout
  (wan/modules/clip.py), plus the text-tower / head extras a real file carries."""
  sd = {k: v.clone() for k, v in tm.state_dict().items()}
  e, out = "embeddings.", {}  # transformers 5 CLIPVisionModel: no vision_model. prefix
  out["visual.patch_embedding.weight"] = sd[e + "patch_embedding.weight"]
  out["visual.cls_embedding"] = sd[e + "class_embedding"].reshape(1, 1, -1)
  out["visual.pos_embedding"] = sd[e + "position_embedding.weight"][None]
  for ours, theirs in (("pre_norm", "pre_layrnorm"), ("post_norm", "post_layernorm")):
    for leaf in ("weight", "bias"):
      out[f"visual.{ours}.{leaf}"] = sd[f"{theirs}.{leaf}"]
  for i in range(tm.config.num_hidden_layers):
    src, dst = f"encoder.layers.{i}.", f"visual.transformer.{i}."
    for leaf in ("weight", "bias"):
      out[dst + "norm1." + leaf] = sd[src + "layer_norm1." + leaf]
      out[dst + "norm2." + leaf] = sd[src + "layer_norm2." + leaf]
      out[dst + "attn.to_qkv." + leaf] = torch.cat(
        [sd[src + f"self_attn.{p}_proj.{leaf}"] for p in "qkv"], 0
      )
      out[dst + "attn.proj." + leaf] = sd[src + "self_attn.out_proj." + leaf]
      out[dst + "mlp.0." + leaf] = sd[src + "mlp.fc1." + leaf]
      out[dst + "mlp.2." + leaf] = sd[src + "mlp.fc2." + leaf]
  out["visual.head"] = torch.randn(32, 16)
  out["textual.token_embedding.weight"] = torch.randn(10, 8)
  out["log_scale"] = torch.tensor(2.6)
  return out


def test_wan_pth_matches_transformers(pair, tmp_path):
  tm, _, _ = pair
  cfg = clip_vision.preset("tiny", hidden_act=tm.config.hidden_act)
  sd = _to_wan_layout(tm)
  torch.save(
    {k: v.half() if k.startswith("visual.") else v for k, v in sd.items()}, tmp_path / "clip.pth"
  )
  # The reference sees the same fp16-rounded weights the file holds.
  ref_model = torch_clip(tm.config.hidden_act)
  with torch.no_grad():
    for p, q in zip(ref_model.parameters(), tm.parameters()):
      p.copy_(q.half().float())
  x = clip_pixels()
  ref = torch_clip_outputs(ref_model, x).hidden_states[-2].numpy()
  ours = load_clip_vision_wan(str(tmp_path / "clip.pth"), cfg).penultimate(x)
  err = rel_err(ours, ref)
  print(f"Wan .pth ({tm.config.hidden_act}): rel err {err:.2e}")
  assert err <= 1e-5

  sd["visual.transformer.0.attn.to_q.weight"] = torch.zeros(32, 32)
  torch.save(sd, tmp_path / "bad.pth")
  with pytest.raises(CheckpointError, match=r"unexpected \(1\).*attn\.to_q\.weight"):
    load_clip_vision_wan(str(tmp_path / "bad.pth"), cfg)


def test_config_from_hf_and_presets():
  hf = transformers.CLIPVisionConfig(
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=16,
    image_size=224,
    patch_size=14,
    hidden_act="gelu",
  )
  cfg = clip_vision.CLIPVisionConfig.from_hf({"vision_config": hf.to_dict()})
  assert cfg == clip_vision.preset("vit_h_14")
  assert cfg.num_positions == 257
  with pytest.raises(ValueError, match="hidden_act"):
    clip_vision.preset("tiny", hidden_act="swish")
  # Same parameter count as transformers' ViT-H/14 vision tower (built on the meta device).
  with torch.device("meta"):
    want = sum(p.numel() for p in transformers.CLIPVisionModel(hf).parameters())
  abstract = nnx.eval_shape(lambda: clip_vision.CLIPVisionEncoder(cfg, rngs=nnx.Rngs(0)))
  assert sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param))) == want
  # Full size, traced only: Wan's 257 image tokens of width 1280.
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  out = nnx.eval_shape(lambda m, x: m.penultimate(x), abstract, x)
  assert out.shape == (1, 257, 1280) and out.dtype == jnp.float32
