"""Checkpoints both ways: diffusers / Wan2.1 safetensors -> orbax model checkpoint -> safetensors.

The Wan2.1-layout source is made by renaming a random diffusers model's keys through the table
below, written independently of ``pose_jax.convert.wan_original``.
"""

import json
import os
import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest
import safetensors.numpy
import torch
from flax import nnx

from pose_jax import sharding as shd
from pose_jax.convert import export, importer, orbax_io
from pose_jax.models.wan import WanTransformer, preset
from tests.helpers.numerics import rel_err
from tests.helpers.torch_refs import inputs, to_channels_first, to_jax_args, torch_wan

WEIGHTS = "diffusion_pytorch_model"

# diffusers -> Wan2.1 (wan/modules/model.py) names, for the test only.
_WAN_TOP = {
  "scale_shift_table": "head.modulation",
  "proj_out.weight": "head.head.weight",
  "proj_out.bias": "head.head.bias",
  "patch_embedding.weight": "patch_embedding.weight",
  "patch_embedding.bias": "patch_embedding.bias",
}
_WAN_PREFIX = {
  "condition_embedder.text_embedder.linear_1": "text_embedding.0",
  "condition_embedder.text_embedder.linear_2": "text_embedding.2",
  "condition_embedder.time_embedder.linear_1": "time_embedding.0",
  "condition_embedder.time_embedder.linear_2": "time_embedding.2",
  "condition_embedder.time_proj": "time_projection.1",
  "condition_embedder.image_embedder.norm1": "img_emb.proj.0",
  "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
  "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3",
  "condition_embedder.image_embedder.norm2": "img_emb.proj.4",
}
_WAN_BLOCK = {
  "scale_shift_table": "modulation",
  "attn1.to_q": "self_attn.q",
  "attn1.to_k": "self_attn.k",
  "attn1.to_v": "self_attn.v",
  "attn1.to_out.0": "self_attn.o",
  "attn1.norm_q": "self_attn.norm_q",
  "attn1.norm_k": "self_attn.norm_k",
  "attn2.to_q": "cross_attn.q",
  "attn2.to_k": "cross_attn.k",
  "attn2.to_v": "cross_attn.v",
  "attn2.to_out.0": "cross_attn.o",
  "attn2.norm_q": "cross_attn.norm_q",
  "attn2.norm_k": "cross_attn.norm_k",
  "attn2.add_k_proj": "cross_attn.k_img",
  "attn2.add_v_proj": "cross_attn.v_img",
  "attn2.norm_added_k": "cross_attn.norm_k_img",
  "norm2": "norm3",  # the affine cross-attention norm is norm3 in Wan2.1
  "ffn.net.0.proj": "ffn.0",
  "ffn.net.2": "ffn.2",
}


def wan_name(key: str) -> str:
  if key in _WAN_TOP:
    return _WAN_TOP[key]
  m = re.fullmatch(r"blocks\.(\d+)\.(.+?)(\.weight|\.bias)?", key)
  if m:
    return f"blocks.{m.group(1)}.{_WAN_BLOCK[m.group(2)]}{m.group(3) or ''}"
  module, leaf = key.rsplit(".", 1)
  return f"{_WAN_PREFIX[module]}.{leaf}"


def load_dir(path) -> dict[str, np.ndarray]:
  out = {}
  for f in sorted(os.listdir(path)):
    if f.endswith(".safetensors"):
      out.update(safetensors.numpy.load_file(os.path.join(path, f)))
  return out


def write_sharded(tensors: dict, path, nshards=2, config=None):
  """A release-style directory: shards + index (+ config.json)."""
  os.makedirs(path, exist_ok=True)
  keys = sorted(tensors)
  names = [f"{WEIGHTS}-{i + 1:05d}-of-{nshards:05d}.safetensors" for i in range(nshards)]
  for i, name in enumerate(names):
    safetensors.numpy.save_file({k: tensors[k] for k in keys[i::nshards]}, os.path.join(path, name))
  weight_map = {k: names[i % nshards] for i, k in enumerate(keys)}
  with open(os.path.join(path, f"{WEIGHTS}.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
  if config is not None:
    with open(os.path.join(path, "config.json"), "w") as f:
      json.dump(config, f)
  return str(path)


def to_bf16(tensors: dict) -> dict:
  """bf16, except norms and modulation kept in fp32 (as diffusers' _keep_in_fp32_modules)."""
  keep = lambda k: "norm" in k or "scale_shift_table" in k or "modulation" in k
  return {k: v if keep(k) else v.astype(ml_dtypes.bfloat16) for k, v in tensors.items()}


def assert_same(a: dict, b: dict):
  assert sorted(a) == sorted(b)
  for k in b:
    assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
    assert a[k].tobytes() == b[k].tobytes(), k


def jax_forward(model, inp):
  return to_channels_first(
    model(*[None if a is None else jnp.asarray(a) for a in to_jax_args(inp)])
  )


@pytest.fixture(scope="module")
def torch_model():
  return torch_wan(preset("tiny"), seed=3)


@pytest.fixture(scope="module")
def sources(torch_model, tmp_path_factory):
  """diffusers and Wan2.1 layouts of the same weights, in fp32 and (mixed) bf16."""
  root = tmp_path_factory.mktemp("src")
  cfg = preset("tiny")
  fp32 = {k: v.detach().numpy().copy() for k, v in torch_model.state_dict().items()}
  wan_cfg = {"model_type": "i2v", "dim": cfg.dim, "num_heads": cfg.num_heads, "in_dim": 36}
  out = {}
  for dtype, tensors in (("fp32", fp32), ("bf16", to_bf16(fp32))):
    out["diffusers", dtype] = write_sharded(tensors, root / f"d_{dtype}", 2, cfg.to_diffusers())
    wan = {wan_name(k): v for k, v in tensors.items()}
    assert len(wan) == len(tensors)
    out["wan", dtype] = write_sharded(wan, root / f"w_{dtype}", 3, wan_cfg)
  return out


@pytest.mark.parametrize("fmt", ["diffusers", "wan"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_round_trip_is_bit_exact(sources, tmp_path, fmt, dtype):
  src = sources[fmt, dtype]
  plan = importer.import_checkpoint(src, tmp_path / "ckpt", fmt, progress=False)
  assert plan.cfg.param_dtype == ("float32" if dtype == "fp32" else "bfloat16")
  files = export.export_checkpoint(
    str(tmp_path / "ckpt"), tmp_path / "out", fmt, max_shard_bytes=40_000, progress=False
  )
  shards = [f for f in files if f.endswith(".safetensors")]
  assert len(shards) > 2 and f"{WEIGHTS}.safetensors.index.json" in files
  for f in shards:  # header + data; no shard over the limit unless one tensor is
    assert os.path.getsize(tmp_path / "out" / f) <= 40_000 + 16_000
  assert_same(load_dir(tmp_path / "out"), load_dir(src))
  index = json.loads((tmp_path / "out" / f"{WEIGHTS}.safetensors.index.json").read_text())
  assert set(index["weight_map"]) == set(load_dir(src))


def test_wan_layout_gives_the_diffusers_forward(sources, torch_model, tmp_path):
  importer.import_checkpoint(sources["wan", "fp32"], tmp_path / "ckpt", "wan", progress=False)
  model = orbax_io.load_model(str(tmp_path / "ckpt"))
  assert model.cfg == preset("tiny")
  inp = inputs(model.cfg, batch=1, text_len=512)
  with torch.no_grad():
    ref = torch_model(**inp, return_dict=False)[0].numpy()
  assert rel_err(jax_forward(model, inp), ref) <= 1e-5


def test_restore_goes_straight_into_the_mesh_sharding(sources, tmp_path):
  importer.import_checkpoint(sources["diffusers", "fp32"], tmp_path / "ckpt", progress=False)
  mesh = shd.make_mesh((1, 2, 1, 4))
  cfg, params = orbax_io.restore_params(str(tmp_path / "ckpt"), mesh)
  _, abstract = shd.abstract_state(lambda: WanTransformer(cfg, rngs=nnx.Rngs(0)), mesh)
  want = nnx.to_pure_dict(nnx.filter_state(abstract, nnx.Param))
  kernel = params["blocks"]["attn1"]["to_q"]["kernel"]
  assert kernel.shape == (2, 32, 32) and kernel.sharding.spec == jax.P(
    None, ("fsdp", "context"), "tensor"
  )
  assert jax.tree.map(lambda a: a.sharding, params) == jax.tree.map(lambda a: a.sharding, want)
  src = load_dir(sources["diffusers", "fp32"])
  np.testing.assert_array_equal(np.asarray(kernel[1]), src["blocks.1.attn1.to_q.weight"].T)
  # Into an existing nnx.State (as the trainer's freshly created, sharded teacher).
  state = nnx.filter_state(abstract, nnx.Param)
  zeros = lambda a: jax.device_put(np.zeros(a.shape, a.dtype), a.sharding)
  nnx.replace_by_pure_dict(state, jax.tree.map(zeros, want))
  _, state = orbax_io.restore_params(str(tmp_path / "ckpt"), like=state)
  got = state["blocks"]["attn1"]["to_q"]["kernel"][...]
  assert got.sharding == kernel.sharding and np.array_equal(np.asarray(got), np.asarray(kernel))


@pytest.fixture(scope="module")
def workdir(sources, tmp_path_factory):
  """A train workdir: CheckpointManager steps 10 and 20 with student/ema/wan_config items."""
  root = tmp_path_factory.mktemp("train")
  importer.import_checkpoint(sources["diffusers", "fp32"], root / "ckpt", progress=False)
  cfg, student = orbax_io.restore_params(str(root / "ckpt"))
  ema = jax.tree.map(lambda a: a * 0.9 + 0.01, student)
  with ocp.CheckpointManager(root / "work") as mngr:
    for step, tree in ((10, student), (20, ema)):
      items = dict(
        student=ocp.args.StandardSave(student),
        ema=ocp.args.StandardSave(tree),
        wan_config=ocp.args.JsonSave(orbax_io.model_meta(cfg)),
      )
      mngr.save(step, args=ocp.args.Composite(**items))
  # The train loop's layout: <workdir>/checkpoints/<step>/{state, meta}, nnx.States inside.
  model = WanTransformer(cfg, rngs=nnx.Rngs(0))
  as_state = lambda tree: nnx.replace_by_pure_dict(s := nnx.state(model), tree) or s
  with ocp.CheckpointManager(root / "train" / "checkpoints") as mngr:
    state = {"step": 7, "params": {"student": as_state(student)}, "ema": as_state(ema)}
    meta = {"phase_index": 1, **orbax_io.model_meta(cfg)}
    items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    mngr.save(7, args=ocp.args.Composite(**items))
  out = root / "export"
  export.export_checkpoint(str(root / "work"), out, which="ema", step="latest", progress=False)
  return dict(root=root, cfg=cfg, student=student, ema=ema, out=out)


@pytest.mark.parametrize("which", ["student", "ema"])
def test_export_from_the_train_state_layout(workdir, which):
  out = workdir["root"] / f"train_{which}"
  export.export_checkpoint(str(workdir["root"] / "train"), out, which=which, progress=False)
  got = load_dir(out)["blocks.1.attn2.add_k_proj.weight"]
  want = np.asarray(workdir[which]["blocks"]["attn2"]["add_k_proj"]["kernel"][1]).T
  np.testing.assert_array_equal(got, want)


def test_student_export_loads_in_diffusers_and_matches_jax(workdir):
  from diffusers import WanTransformer3DModel

  cfg = workdir["cfg"]
  tm = WanTransformer3DModel.from_pretrained(workdir["out"]).eval()
  model = WanTransformer(cfg, rngs=nnx.Rngs(1))
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, workdir["ema"])
  nnx.update(model, state)
  inp = inputs(cfg, batch=2, text_len=512)
  with torch.no_grad():
    ref = tm(**inp, return_dict=False)[0].numpy()
  assert rel_err(jax_forward(model, inp), ref) <= 1e-5
  out10 = workdir["root"] / "s10"
  export.export_checkpoint(str(workdir["root"] / "work"), out10, step=10, progress=False)
  got = load_dir(out10)["blocks.0.ffn.net.2.weight"]
  want = np.asarray(workdir["student"]["blocks"]["ffn"]["proj_out"]["kernel"][0]).T
  np.testing.assert_array_equal(got, want)


def test_export_samples_one_step_in_the_i2v_pipeline(workdir):
  """The exported transformer drops into WanImageToVideoPipeline (tiny random VAE and CLIP)."""
  from diffusers import (
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    WanImageToVideoPipeline,
    WanTransformer3DModel,
  )
  from PIL import Image
  from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

  torch.manual_seed(0)
  clip = CLIPVisionConfig(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=32,
    patch_size=8,
  )
  pipe = WanImageToVideoPipeline(
    tokenizer=None,
    text_encoder=None,
    image_encoder=CLIPVisionModel(clip),
    image_processor=CLIPImageProcessor(
      size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ),
    transformer=WanTransformer3DModel.from_pretrained(workdir["out"]),
    vae=AutoencoderKLWan(
      base_dim=8,
      z_dim=16,
      num_res_blocks=1,
      attn_scales=[],
      temperal_downsample=[False, True, True],
    ),
    scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
  )
  image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8))
  frames = pipe(
    image=image,
    prompt_embeds=torch.randn(1, 512, 32),
    height=32,
    width=32,
    num_frames=5,
    num_inference_steps=1,
    guidance_scale=1.0,
    output_type="np",
  ).frames
  assert frames.shape == (1, 5, 32, 32, 3) and np.isfinite(frames).all()
