"""Structure of WanTransformer: scan/unroll, remat, taps, LoRA, param trees, dtypes, validation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel
from flax import nnx

from pose_jax.models.layers import LoRAParam
from pose_jax.models.wan import WanTransformer, preset

CFG = preset("tiny", num_layers=4)
TOKENS = 2 * 3 * (8 // 2) * (6 // 2)  # B * L of _args(): the longest sum in the backward pass


def _fp32_reorder_tol(n: int) -> float:
  """Relative error of fp32 sums of ``n`` terms taken in another order (scan vs unrolled loop,
  jit vs eager): rounding errors add up like a random walk, ~eps * sqrt(n); 4x for the chain of
  such sums through the blocks. (A bound of 1e-6 once failed at 1.03e-6: sqrt(72) eps = 1e-6.)"""
  return 4 * float(jnp.finfo(jnp.float32).eps) * math.sqrt(n)


def _args(cfg=CFG, batch=2, seed=0):
  ks = jax.random.split(jax.random.key(seed), 4)
  return (
    jax.random.normal(ks[0], (batch, 3, 8, 6, cfg.in_channels)),
    jnp.linspace(20.0, 900.0, batch),
    jax.random.normal(ks[1], (batch, 7, cfg.text_dim)),
    jax.random.normal(ks[2], (batch, 4, cfg.image_dim)) if cfg.is_i2v else None,
  )


def _model(cfg=CFG, seed=0):
  return WanTransformer(cfg, rngs=nnx.Rngs(seed))


def _close_trees(t1, t2, tol=1e-6):
  """Every leaf pair agrees to ``tol`` relative to the leaf's largest magnitude."""
  for a, b in zip(jax.tree.leaves(t1), jax.tree.leaves(t2), strict=True):
    scale = max(float(jnp.abs(b).max()), 1e-12)
    assert float(jnp.abs(a - b).max()) <= tol * scale


def _loss(model, args):
  return jnp.sum(jnp.sin(model(*args)))


def test_scanned_equals_unrolled_forward_and_grad():
  scanned = _model()
  unrolled = nnx.merge(nnx.graphdef(_model(CFG.replace(scan_layers=False))), nnx.state(scanned))
  args = _args()
  ref = unrolled(*args)
  tol = _fp32_reorder_tol(CFG.ffn_dim) * float(jnp.abs(ref).max())  # forward: sums over <= F
  np.testing.assert_allclose(scanned(*args), ref, rtol=0, atol=tol)
  # Relative to each leaf's largest entry: bias gradients of the keys nearly cancel (softmax
  # ignores a shift shared by all keys), so theirs is ~eps * sqrt(TOKENS) where others are less.
  grads = nnx.grad(_loss)(scanned, args), nnx.grad(_loss)(unrolled, args)
  _close_trees(*grads, tol=_fp32_reorder_tol(TOKENS))


@pytest.mark.parametrize("policy", ["full", "dots_saveable", "save_attn_ffn_out"])
def test_remat_equals_no_remat(policy):
  base = _model()
  remat = nnx.merge(nnx.graphdef(_model(CFG.replace(remat=policy))), nnx.state(base))
  args = _args()
  np.testing.assert_array_equal(
    jax.jit(lambda m: m(*args))(base), jax.jit(lambda m: m(*args))(remat)
  )
  _close_trees(jax.jit(nnx.grad(_loss))(base, args), jax.jit(nnx.grad(_loss))(remat, args))


def test_taps_equal_per_block_outputs_of_unrolled_model():
  model = _model()
  args = _args()
  out, taps = model(*args, taps=(2, 0, 3))
  # Independent per-block loop over the stacked weights.
  h, ctx = model._embed(*args)
  graphdef, state = nnx.split(model.blocks)
  per_block = []
  for i in range(CFG.num_layers):
    blk = nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state))
    h = blk(h, ctx["text"], ctx["image"], ctx["mod"], ctx["rope"])
    per_block.append(h)
  # Scanned segments vs a loop: fp32 sums in another order (seen: 2 ulp of the largest value).
  tol = lambda ref: _fp32_reorder_tol(CFG.ffn_dim) * float(jnp.abs(ref).max())
  for tap, i in zip(taps, (2, 0, 3)):
    np.testing.assert_allclose(tap, per_block[i], rtol=0, atol=tol(per_block[i]))
  np.testing.assert_allclose(out, model(*args), rtol=0, atol=tol(out))
  only = model.hidden_states(*args, taps=(1,))
  np.testing.assert_allclose(only[0], per_block[1], rtol=0, atol=tol(per_block[1]))
  with pytest.raises(ValueError, match="out of range"):
    model(*args, taps=(4,))


def _lora_pairs(state):
  """(lora_a path, lora_b path, kernel path) for every LoRA'd Dense in a flat state."""
  flat = {tuple(map(str, p)): v for p, v in nnx.to_flat_state(state)}
  return [(p, p[:-1] + ("lora_b",), p[:-1] + ("kernel",)) for p in flat if p[-1] == "lora_a"], flat


def test_lora_zero_is_identity_and_nonzero_equals_merged_weight():
  cfg = CFG.replace(lora_rank=3, lora_alpha=6.0)
  base = _model()
  lora_model = _model(cfg, seed=1)
  graphdef, lora, rest = nnx.split(lora_model, LoRAParam, ...)
  # The base part of the LoRA model has exactly the plain model's structure: share its weights.
  assert jax.tree.structure(rest) == jax.tree.structure(nnx.state(base))
  shared = nnx.merge(graphdef, lora, nnx.state(base))
  args = _args()
  np.testing.assert_allclose(shared(*args), base(*args), rtol=0, atol=1e-6)

  pairs, flat = _lora_pairs(nnx.state(shared))
  assert {p[-2] for p, _, _ in pairs} >= {
    "to_q",
    "to_k",
    "to_v",
    "to_out",
    "proj_in",
    "proj_out",
    "add_k_proj",
    "add_v_proj",
  }
  key = jax.random.key(7)
  merged = nnx.to_pure_dict(nnx.state(base))  # plain arrays: editing it leaves `base` alone
  for pa, pb, pk in pairs:
    key, sub = jax.random.split(key)
    b = 0.3 * jax.random.normal(sub, flat[pb].shape)
    flat[pb].set_value(b)
    delta = jnp.einsum("lir,lro->lio", flat[pa][...], b) * 2.0  # alpha / rank
    node = merged
    for name in pk[:-1]:
      node = node[name]
    node["kernel"] = node["kernel"] + delta
  merged_model = _model()
  merged_state = nnx.state(merged_model)
  nnx.replace_by_pure_dict(merged_state, merged)
  nnx.update(merged_model, merged_state)
  out_lora = shared(*args)
  assert float(jnp.abs(out_lora - base(*args)).max()) > 1e-3  # the delta really acts
  np.testing.assert_allclose(out_lora, merged_model(*args), rtol=0, atol=2e-5)


def test_one_module_many_parameter_trees_under_jit():
  graphdef, teacher = nnx.split(_model(seed=0))
  student = nnx.state(_model(seed=1))
  ema = jax.tree.map(lambda a, b: 0.5 * (a + b), teacher, student)
  args = _args()

  @jax.jit
  def three(t, s, e):
    return [nnx.merge(graphdef, p)(*args) for p in (t, s, e)]

  outs = three(teacher, student, ema)
  for out, seed in zip(outs[:2], (0, 1)):
    eager = _model(seed=seed)(*args)  # jit vs eager: sums in another order (seen: 3 ulp)
    atol = _fp32_reorder_tol(CFG.ffn_dim) * float(jnp.abs(eager).max())
    np.testing.assert_allclose(out, eager, rtol=0, atol=atol)
  assert float(jnp.abs(outs[0] - outs[1]).max()) > 1e-3


def test_param_count_14b_equals_diffusers_meta():
  cfg = preset("i2v_14b")
  abstract = nnx.eval_shape(lambda: WanTransformer(cfg, rngs=nnx.Rngs(0)))
  ours = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  kw = cfg.to_diffusers()
  kw.pop("_class_name")
  with torch.device("meta"):
    ref = WanTransformer3DModel(**kw)
  theirs = sum(p.numel() for p in ref.parameters())
  assert ours == theirs
  assert 16e9 < ours < 17e9  # Wan2.1-I2V-14B: 16.4B with the image branch


def test_bf16_path_close_to_fp32():
  f32 = _model()
  b16 = nnx.merge(nnx.graphdef(_model(CFG.replace(dtype="bfloat16"))), nnx.state(f32))
  args = _args()
  ref, out = f32(*args), b16(*args)
  assert out.dtype == jnp.bfloat16
  err = float(jnp.abs(out.astype(jnp.float32) - ref).max() / jnp.abs(ref).max())
  print(f"bf16 vs fp32 max rel err {err:.3e}")
  assert err < 3e-2  # bf16 has 8 mantissa bits (~4e-3 per op); 4 blocks of matmuls


def test_input_validation_names_the_problem():
  model = _model()
  x, t, txt, img = _args()
  with pytest.raises(ValueError, match="in_channels"):
    model(x[..., :16], t, txt, img)
  with pytest.raises(ValueError, match="divisible by patch"):
    model(x[:, :, :7], t, txt, img)
  with pytest.raises(ValueError, match="timestep"):
    model(x, t[:1], txt, img)
  with pytest.raises(ValueError, match="needs image tokens"):
    model(x, t, txt, None)
  with pytest.raises(ValueError, match="text_dim"):
    model(x, t, txt[..., :8], img)


def test_config_validation():
  with pytest.raises(ValueError, match="remat"):
    preset("tiny", remat="sometimes")
  with pytest.raises(ValueError, match="attention"):
    preset("tiny", attention="flash3")
  with pytest.raises(KeyError, match="unknown Wan preset"):
    preset("giant")


@pytest.mark.parametrize("length", [256, 300, 77])  # whole chunks, a ragged last chunk, < 1 chunk
def test_chunked_attention_equals_xla_attention(length):
  from pose_jax.models.attention import dot_product_attention

  ks = jax.random.split(jax.random.key(length), 4)
  q = jax.random.normal(ks[0], (2, length, 3, 8))
  k, v = (jax.random.normal(kk, (2, 45, 3, 8)) for kk in ks[1:3])
  w = jax.random.normal(ks[3], q.shape)

  def loss(impl, q, k, v):
    return jnp.sum(dot_product_attention(q, k, v, impl) * w)

  np.testing.assert_allclose(
    dot_product_attention(q, k, v, "chunked"), dot_product_attention(q, k, v, "xla"), atol=1e-6
  )
  g1 = jax.grad(lambda *a: loss("chunked", *a), argnums=(0, 1, 2))(q, k, v)
  g2 = jax.grad(lambda *a: loss("xla", *a), argnums=(0, 1, 2))(q, k, v)
  _close_trees(g1, g2, tol=1e-5)


def test_model_with_chunked_attention_equals_default():
  base = _model()
  chunked = nnx.merge(nnx.graphdef(_model(CFG.replace(attention="chunked"))), nnx.state(base))
  args = _args()
  np.testing.assert_allclose(chunked(*args), base(*args), rtol=0, atol=1e-5)


def test_accelerator_kernels_refuse_to_run_on_cpu():
  from pose_jax.models.attention import dot_product_attention

  q = jnp.zeros((1, 4, 2, 8))
  for impl in ("cudnn", "splash"):
    with pytest.raises(ValueError, match="needs a"):
      dot_product_attention(q, q, q, impl)
  with pytest.raises(ValueError, match="unknown attention impl"):
    dot_product_attention(q, q, q, "flash9")
