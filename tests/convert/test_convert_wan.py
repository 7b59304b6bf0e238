"""Strict loading of diffusers-format Wan transformer checkpoints (numpy safetensors reads)."""

import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch

from pose_jax.convert.errors import CheckpointError
from pose_jax.convert.wan_diffusers import load_transformer
from pose_jax.models.wan import WanConfig, preset
from tests.helpers.numerics import rel_err
from tests.helpers.torch_refs import inputs, to_channels_first, to_jax_args, torch_wan

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  cfg = preset("tiny")
  tm = torch_wan(cfg, seed=5)
  path = tmp_path_factory.mktemp("wan")
  tm.save_pretrained(path)
  return str(path), tm


def _copy_with(src, dst, edit):
  shutil.copytree(src, dst)
  tensors = safetensors.numpy.load_file(os.path.join(dst, WEIGHTS))
  edit(tensors)
  safetensors.numpy.save_file(tensors, os.path.join(dst, WEIGHTS))
  return str(dst)


def test_sharded_index_checkpoint_loads_and_matches(ckpt, tmp_path):
  src, tm = ckpt
  tensors = safetensors.numpy.load_file(os.path.join(src, WEIGHTS))
  keys = sorted(tensors)
  shards = {
    "model-00001-of-00002.safetensors": keys[::2],
    "model-00002-of-00002.safetensors": keys[1::2],
  }
  for name, ks in shards.items():
    safetensors.numpy.save_file({k: tensors[k] for k in ks}, tmp_path / name)
  weight_map = {k: name for name, ks in shards.items() for k in ks}
  (tmp_path / f"{WEIGHTS}.index.json").write_text(json.dumps({"weight_map": weight_map}))
  shutil.copy(os.path.join(src, "config.json"), tmp_path)
  model = load_transformer(str(tmp_path))
  cfg = model.cfg
  inp = inputs(cfg, batch=1, text_len=512)
  with torch.no_grad():
    ref = tm(**inp, return_dict=False)[0].numpy()
  out = to_channels_first(model(*[None if a is None else jnp.asarray(a) for a in to_jax_args(inp)]))
  assert rel_err(out, ref) <= 1e-5


def test_renamed_key_is_reported(ckpt, tmp_path):
  def edit(t):
    t["blocks.1.attn1.to_qq.weight"] = t.pop("blocks.1.attn1.to_q.weight")

  path = _copy_with(ckpt[0], tmp_path / "c", edit)
  with pytest.raises(CheckpointError) as e:
    load_transformer(path)
  msg = str(e.value)
  assert "blocks.1.attn1.to_qq.weight" in msg and "unexpected" in msg
  assert "blocks/attn1/to_q/kernel layers [1]" in msg and "missing" in msg


def test_missing_key_is_reported(ckpt, tmp_path):
  path = _copy_with(ckpt[0], tmp_path / "c", lambda t: t.pop("condition_embedder.time_proj.bias"))
  with pytest.raises(
    CheckpointError, match=r"missing \(1\): \['condition_embedder/time_proj/bias'\]"
  ):
    load_transformer(path)


def test_transposed_weight_is_reported(ckpt, tmp_path):
  def edit(t):
    t["blocks.0.ffn.net.0.proj.weight"] = np.ascontiguousarray(
      t["blocks.0.ffn.net.0.proj.weight"].T
    )

  path = _copy_with(ckpt[0], tmp_path / "c", edit)
  with pytest.raises(CheckpointError, match=r"blocks.0.ffn.net.0.proj.weight: source \(32, 64\)"):
    load_transformer(path)


def test_corrupt_and_absent_files_name_the_file(ckpt, tmp_path):
  path = shutil.copytree(ckpt[0], tmp_path / "c")
  weights = path / WEIGHTS
  weights.write_bytes(weights.read_bytes()[:1000])
  with pytest.raises(CheckpointError, match=WEIGHTS):
    load_transformer(str(path))
  with pytest.raises(CheckpointError, match="no such file"):
    load_transformer(str(tmp_path / "nowhere"))
  (path / "config.json").write_text("{not json")
  with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
    load_transformer(str(path))


def test_unsupported_config_is_rejected():
  cfg = preset("tiny").to_diffusers()
  with pytest.raises(ValueError, match="pos_embed_seq_len"):
    WanConfig.from_diffusers(dict(cfg, pos_embed_seq_len=514))
  with pytest.raises(ValueError, match="added_kv_proj_dim"):
    WanConfig.from_diffusers(dict(cfg, added_kv_proj_dim=16))
  assert WanConfig.from_diffusers(cfg) == preset("tiny")
