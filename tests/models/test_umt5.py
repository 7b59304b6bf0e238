"""UMT5 text encoder: fp32 parity with transformers, Wan prompt encoding, weight import, bf16."""

import copy
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers
from flax import nnx

from pose_jax import sharding as shd
from pose_jax.convert.encoders import load_umt5, load_umt5_wan
from pose_jax.convert.errors import CheckpointError
from pose_jax.models.encoders import umt5
from pose_jax.models.encoders.tokenizer import encode_prompts, load_tokenizer, prompt_clean
from tests.helpers import tiny
from tests.helpers.numerics import rel_err
from tests.helpers.torch_refs import torch_umt5, torch_umt5_forward, umt5_batch, umt5_config


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
  tm = torch_umt5()
  path = tmp_path_factory.mktemp("umt5")
  tm.save_pretrained(path)
  return tm, path, load_umt5(str(path))


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("tokenizer")
  tiny.tokenizer().save_pretrained(path)
  return str(path)


# --- fp32 parity ----------------------------------------------------------------------------------
@pytest.mark.parametrize("buckets,max_distance", [(8, 16), (32, 128)])
def test_relative_buckets_match_transformers(buckets, max_distance):
  """Including the exact log-bin boundaries (16, 32, 64 for umt5-xxl's 32/128)."""
  cfg = umt5_config(
    relative_attention_num_buckets=buckets, relative_attention_max_distance=max_distance
  )
  attn = transformers.models.umt5.modeling_umt5.UMT5Attention(cfg, has_relative_attention_bias=True)
  n = 600
  rel = torch.arange(n)[None, :] - torch.arange(n)[:, None]
  want = attn._relative_position_bucket(rel).numpy()
  assert np.array_equal(umt5.relative_position_buckets(n, buckets, max_distance), want)


def test_padded_batch_matches_transformers(pair):
  tm, _, model = pair
  ids, mask = umt5_batch()
  ref = torch_umt5_forward(tm, ids, mask)
  out = np.asarray(model(jnp.asarray(ids, jnp.int32), jnp.asarray(mask)))
  valid = mask.astype(bool)
  err = float(np.abs(out - ref)[valid].max() / np.abs(ref[valid]).max())
  print(f"UMT5 padded batch (valid positions): rel err {err:.2e}")
  assert out.shape == (2, 12, 32) and err <= 1e-5
  # Padding is masked as keys: the short sequence alone gives the same valid outputs.
  alone = np.asarray(model(jnp.asarray(ids[1:, :7], jnp.int32)))
  assert rel_err(alone, out[1:, :7]) <= 1e-5
  # ... and the mask matters (without it the padded keys change the outputs).
  assert rel_err(model(jnp.asarray(ids[1:], jnp.int32))[:, :7], out[1:, :7]) > 1e-3


def test_a_transposed_weight_is_detected(pair):
  tm, path, _ = pair
  ids, mask = umt5_batch()
  ref = torch_umt5_forward(tm, ids, mask)
  graphdef, state = nnx.split(load_umt5(str(path)))  # a fresh copy: edited in place
  kernel = state["blocks"]["attn"]["q"]["kernel"]
  kernel.set_value(kernel.get_value().at[1].set(kernel.get_value()[1].T))
  out = nnx.merge(graphdef, state)(jnp.asarray(ids, jnp.int32), jnp.asarray(mask))
  err = rel_err(np.asarray(out)[0], ref[0])
  print(f"transposed q kernel: rel err {err:.2e}")
  assert err > 1e-3


def test_bf16_close_to_fp32(pair):
  """bf16 matmuls (unit roundoff 2^-9 ~ 2e-3) with float32 norms/softmax/residuals. T5 does
  not scale q.k, so logit rounding is amplified: transformers' own bf16 model is ~3.5e-2 off
  its fp32 output here. Bound: no worse than transformers in bf16 (x1.25) and <= 5e-2 of
  max|fp32|; a wrong weight gives O(1)."""
  tm, path, model = pair
  ids_np, mask_np = umt5_batch()
  ids, mask = jnp.asarray(ids_np, jnp.int32), jnp.asarray(mask_np)
  bf = load_umt5(str(path), dtype="bfloat16")
  ref, out = np.asarray(model(ids, mask)), np.asarray(bf(ids, mask))
  assert out.dtype == np.float32 and np.isfinite(out).all()
  with torch.no_grad():
    hf_bf16 = (
      copy.deepcopy(tm)
      .to(torch.bfloat16)(
        input_ids=torch.from_numpy(ids_np), attention_mask=torch.from_numpy(mask_np)
      )
      .last_hidden_state.float()
      .numpy()
    )
  valid = mask_np.astype(bool)
  scale = np.abs(ref[valid]).max()
  err = float(np.abs(out - ref)[valid].max() / scale)
  hf_err = float(np.abs(hf_bf16 - ref)[valid].max() / scale)
  print(f"bf16 vs fp32: rel err {err:.2e} (transformers bf16 vs fp32: {hf_err:.2e})")
  assert err <= 1.25 * hf_err and err <= 5e-2


# --- Wan prompt encoding --------------------------------------------------------------------------
def test_encode_prompts_matches_diffusers(pair, tokenizer_dir):
  from diffusers import WanImageToVideoPipeline

  tm, _, model = pair
  tok = load_tokenizer(tokenizer_dir)
  prompts = ["  a cat &amp;amp; dog\n runs on   the beach ", "red car at night in the rain zebra"]
  pipe = types.SimpleNamespace(text_encoder=tm, tokenizer=tok)
  with torch.no_grad():
    ref = WanImageToVideoPipeline._get_t5_prompt_embeds(
      pipe, prompts, max_sequence_length=512, device=torch.device("cpu"), dtype=torch.float32
    ).numpy()
  out = np.asarray(encode_prompts(model, tok, prompts, max_length=512))
  assert out.shape == ref.shape == (2, 512, 32)
  lengths = (np.abs(ref).sum(-1) > 0).sum(1)
  assert list(lengths) == [9, 9]  # 8 words (+ "&" from the unescaped entity) / 8 words + </s>
  assert np.all(out[0, 9:] == 0) and np.all(out[1, 9:] == 0)
  err = rel_err(out, ref)
  print(f"encode_prompts vs diffusers _get_t5_prompt_embeds: rel err {err:.2e}")
  assert err <= 1e-5


# --- strict import --------------------------------------------------------------------------------
def _rewrite(src, dst, edit):
  dst.mkdir()
  tensors = safetensors.numpy.load_file(str(src / "model.safetensors"))
  edit(tensors)
  safetensors.numpy.save_file(tensors, str(dst / "model.safetensors"))
  (dst / "config.json").write_text((src / "config.json").read_text())
  return str(dst)


def test_strict_errors_name_the_keys(pair, tmp_path):
  _, path, model = pair
  wo = "encoder.block.2.layer.1.DenseReluDense.wo.weight"
  present = safetensors.numpy.load_file(str(path / "model.safetensors"))
  tied = "encoder.embed_tokens.weight"

  def extra(t):
    t["decoder.block.0.layer.0.SelfAttention.q.weight"] = np.zeros((32, 32), np.float32)

  def missing(t):
    del t[wo]

  def bad_shape(t):
    t[wo] = t[wo].T.copy()

  def untied(t):
    t[tied] = t["shared.weight"] + 1

  def tied_only(t):
    t[tied] = t.pop("shared.weight")

  for name, edit, words in [
    ("extra", extra, ["unexpected", "decoder.block.0"]),
    ("missing", missing, ["missing", "blocks/ffn/wo/kernel layers [2]"]),
    ("shape", bad_shape, ["wrong shape", wo]),
    ("untied", untied, [tied, "differs from shared.weight"]),
  ]:
    with pytest.raises(CheckpointError) as e:
      load_umt5(_rewrite(path, tmp_path / name, edit))
    for w in words:
      assert w in str(e.value), (name, str(e.value))
  # The tied duplicate alone stands in for shared.weight.
  print("keys saved by transformers:", sorted(k for k in present if "block" not in k))
  ids, mask = (jnp.asarray(a, jnp.int32) for a in umt5_batch())
  other = load_umt5(_rewrite(path, tmp_path / "tied_only", tied_only))
  assert rel_err(other(ids, mask), model(ids, mask)) == 0.0


def test_load_onto_mesh(pair):
  """Loaded straight into the sharding of the logical axes; same output as unsharded."""
  _, path, model = pair
  mesh = shd.make_mesh((1, 8, 1, 1))
  sharded = load_umt5(str(path), mesh=mesh)
  kernel = sharded.blocks.ffn.wi_0.kernel.get_value()
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, ("fsdp", "context"), "tensor")
  ids, mask = (jnp.asarray(a, jnp.int32) for a in umt5_batch())
  with shd.use_mesh(mesh):
    out = nnx.jit(lambda m, i, k: m(i, k))(sharded, ids, mask)
  assert rel_err(out, model(ids, mask)) <= 1e-6


# --- original Wan2.1 .pth -----------------------------------------------------------------------
def _to_wan_layout(tm) -> dict:
  """An independent hand-written rename into Wan's T5Encoder layout (wan/modules/t5.py)."""
  sd = tm.state_dict()
  out = {
    "token_embedding.weight": sd["shared.weight"],
    "norm.weight": sd["encoder.final_layer_norm.weight"],
  }
  for i in range(tm.config.num_layers):
    a, f = f"encoder.block.{i}.layer.0.", f"encoder.block.{i}.layer.1."
    for p in "qkvo":
      out[f"blocks.{i}.attn.{p}.weight"] = sd[a + f"SelfAttention.{p}.weight"]
    out[f"blocks.{i}.pos_embedding.embedding.weight"] = sd[
      a + "SelfAttention.relative_attention_bias.weight"
    ]
    out[f"blocks.{i}.norm1.weight"] = sd[a + "layer_norm.weight"]
    out[f"blocks.{i}.norm2.weight"] = sd[f + "layer_norm.weight"]
    out[f"blocks.{i}.ffn.gate.0.weight"] = sd[f + "DenseReluDense.wi_0.weight"]
    out[f"blocks.{i}.ffn.fc1.weight"] = sd[f + "DenseReluDense.wi_1.weight"]
    out[f"blocks.{i}.ffn.fc2.weight"] = sd[f + "DenseReluDense.wo.weight"]
  return out


def test_wan_pth_matches_transformers(pair, tmp_path):
  """A bf16 .pth like the release file; the reference holds the same bf16-rounded weights."""
  tm, _, _ = pair
  ref_model = torch_umt5()
  with torch.no_grad():
    for p, q in zip(ref_model.parameters(), tm.parameters()):
      p.copy_(q.bfloat16().float())
  sd = {k: v.bfloat16() for k, v in _to_wan_layout(tm).items()}
  torch.save(sd, tmp_path / "t5.pth")
  ids, mask = umt5_batch()
  ref = torch_umt5_forward(ref_model, ids, mask)
  out = np.asarray(
    load_umt5_wan(str(tmp_path / "t5.pth"), umt5.preset("tiny"))(
      jnp.asarray(ids, jnp.int32), jnp.asarray(mask)
    )
  )
  valid = mask.astype(bool)
  err = float(np.abs(out - ref)[valid].max() / np.abs(ref[valid]).max())
  print(f"Wan .pth: rel err {err:.2e}")
  assert err <= 1e-5

  del sd["blocks.1.ffn.fc1.weight"]
  sd["pos_embedding.embedding.weight"] = torch.zeros(8, 4)  # shared_pos=True layout: not umt5
  torch.save(sd, tmp_path / "bad.pth")
  with pytest.raises(
    CheckpointError,
    match=r"missing \(1\).*wi_1/kernel layers \[1\].*"
    r"unexpected \(1\).*'pos_embedding",
  ):
    load_umt5_wan(str(tmp_path / "bad.pth"), umt5.preset("tiny"))


def test_config_from_hf_and_presets():
  hf = transformers.UMT5Config(
    vocab_size=256384,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    feed_forward_proj="gated-gelu",
  )
  cfg = umt5.UMT5Config.from_hf(hf.to_dict())
  assert cfg == umt5.preset("umt5_xxl") and cfg.dense_act_fn == hf.dense_act_fn == "gelu_new"
  assert umt5.UMT5Config.from_hf(umt5_config().to_dict()) == umt5.preset("tiny")
  with pytest.raises(ValueError, match="only gated"):
    umt5.preset("tiny", feed_forward_proj="relu")
  with torch.device("meta"):
    want = sum(p.numel() for p in transformers.UMT5EncoderModel(hf).parameters())
  abstract = nnx.eval_shape(lambda: umt5.UMT5Encoder(cfg, rngs=nnx.Rngs(0)))
  assert sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param))) == want
  # Full size, traced only (bf16 compute): [B, 512, 4096] float32.
  ids = jax.ShapeDtypeStruct((2, 512), jnp.int32)
  bf = nnx.eval_shape(lambda: umt5.UMT5Encoder(cfg.replace(dtype="bfloat16"), rngs=nnx.Rngs(0)))
  out = nnx.eval_shape(lambda m, i: m(i, i), bf, ids)
  assert out.shape == (2, 512, 4096) and out.dtype == jnp.float32


def test_prompt_clean_matches_diffusers():
  from diffusers.pipelines.wan import pipeline_wan_i2v as wan_pipe

  texts = [
    "  A   cat&amp;amp;dog\n\t",
    "&lt;b&gt;bold&lt;/b&gt;",
    "",
    "caf\u00c3\u00a9 \u00e2\u20ac\u0153quoted\u00e2\u20ac\u009d",  # mojibake
    "no\u3000break\u00a0space\u2009thin",
  ]
  for t in texts:
    assert prompt_clean(t) == wan_pipe.prompt_clean(t), t
