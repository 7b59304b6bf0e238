"""Attention under context parallelism, on 8 fake CPU devices: the splash kernel (Pallas, in
interpret mode) and ``xla`` split over ``context`` equal unsharded attention, forward and
gradients, and each device holds only its share of the queries (or heads, Ulysses)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding

from pose_jax import sharding as shd
from pose_jax.models import attention

B, L, S, N, K = 4, 200, 200, 4, 128  # L: not a multiple of the 128-token block (padding)


def _qkv(length=L, keys=S):
  ks = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(ks[0], (B, length, N, K))
  k, v = (jax.random.normal(kk, (B, keys, N, K)) for kk in ks[1:3])
  return q, k, v, jax.random.normal(ks[3], q.shape)


def _reference(q, k, v):
  return jax.nn.dot_product_attention(q, k, v, implementation="xla")


def _sharded(fn, mesh, q, k, v, q_names, kv_names):
  """``fn`` jitted under ``mesh`` with q/k/v put in the layouts the model gives them."""
  put = lambda a, names: jax.device_put(a, NamedSharding(mesh, shd.logical_to_spec(names)))
  with shd.use_mesh(mesh):
    return jax.jit(fn)(put(q, q_names), put(k, kv_names), put(v, kv_names))


def _close(a, b, tol=2e-5):
  np.testing.assert_allclose(
    np.asarray(a), np.asarray(b), rtol=0, atol=tol * float(np.abs(b).max())
  )


def _splash_shapes(mesh, q, k, v, q_names, kv_names):
  """Per-device q and k shapes inside splash's ``shard_map`` (its traced body's inputs)."""
  with shd.use_mesh(mesh):
    jaxpr = jax.make_jaxpr(
      lambda q, k, v: attention.splash(q, k, v, q_names, kv_names, interpret=True)
    )(q, k, v)
  (eqn,) = [e for e in jaxpr.eqns if e.primitive.name == "shard_map"]
  return [tuple(x.aval.shape) for x in eqn.params["jaxpr"].invars[-3:-1]]  # after consts


# (mesh (data, fsdp, context, tensor), q/kv layout names, expected per-device q and k shapes)
SCHEMES = {
  "allgather": (
    (1, 2, 2, 2),
    shd.QUERIES,
    shd.KEYS_VALUES,
    [(B // 2, L // 2, N // 2, K), (B // 2, S, N // 2, K)],
  ),
  "allgather_ctx4": (
    (1, 1, 4, 2),
    shd.QUERIES,
    shd.KEYS_VALUES,
    [(B, L // 4, N // 2, K), (B, S, N // 2, K)],
  ),
  "ulysses": (
    (1, 2, 2, 2),
    shd.ULYSSES,
    shd.ULYSSES,
    [(B // 2, L, N // 4, K), (B // 2, S, N // 4, K)],
  ),
}


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_sharded_splash_equals_unsharded_attention_and_splits_the_work(scheme):
  shape, q_names, kv_names, local = SCHEMES[scheme]
  mesh = shd.make_mesh(shape)
  q, k, v, w = _qkv()
  assert _splash_shapes(mesh, q, k, v, q_names, kv_names) == local

  def loss(attend, q, k, v):
    return jnp.sum(attend(q, k, v) * w)

  splash = lambda q, k, v: attention.splash(q, k, v, q_names, kv_names, interpret=True)
  out = _sharded(splash, mesh, q, k, v, q_names, kv_names)
  _close(out, _reference(q, k, v))
  grads = _sharded(
    lambda *a: jax.grad(lambda *b: loss(splash, *b), argnums=(0, 1, 2))(*a),
    mesh,
    q,
    k,
    v,
    q_names,
    kv_names,
  )
  want = jax.grad(lambda *b: loss(_reference, *b), argnums=(0, 1, 2))(q, k, v)
  for g, r in zip(grads, want, strict=True):
    _close(g, r, tol=1e-4)


@pytest.mark.parametrize("context_parallel", attention.CONTEXT_PARALLEL)
def test_xla_attention_split_over_context_does_a_share_of_the_flops(context_parallel):
  # 8-way context: each device computes 1/8 of the scores, as 8-way data parallelism does; a
  # device that gathered all queries would do 8x that.
  q, k, v, _ = _qkv(length=256, keys=256)
  kv_names = shd.QUERIES if context_parallel == "ulysses" else shd.KEYS_VALUES
  # Batch 8 and 8 heads: data parallelism and Ulysses split them 8 ways.
  q, k, v = (jnp.tile(a, (2, 1, 2, 1)) for a in (q, k, v))
  attend = lambda q, k, v: attention.dot_product_attention(q, k, v, "xla", context_parallel)

  def flops(shape, kv):
    mesh = shd.make_mesh(shape)
    put = lambda a, names: jax.device_put(a, NamedSharding(mesh, shd.logical_to_spec(names)))
    with shd.use_mesh(mesh):
      args = put(q, shd.QUERIES), put(k, kv), put(v, kv)
      compiled = jax.jit(attend).lower(*args).compile()
      out = compiled(*args)
    _close(out, _reference(q, k, v))
    return compiled.cost_analysis()["flops"]

  per_device = flops((1, 1, 8, 1), kv_names)
  data_parallel = flops((8, 1, 1, 1), shd.KEYS_VALUES)
  assert 0.8 < per_device / data_parallel < 1.25, (per_device, data_parallel)


def test_ulysses_needs_heads_divisible_by_tensor_times_context():
  q, k, v, _ = _qkv()  # 4 heads over tensor 2 x context 4
  with shd.use_mesh(shd.make_mesh((1, 1, 4, 2))):
    with pytest.raises(ValueError, match="splits 4 heads over tensor x context = 8"):
      attention.dot_product_attention(q, k, v, "xla", "ulysses")
  with pytest.raises(ValueError, match="unknown context_parallel 'ring'"):
    attention.dot_product_attention(q, k, v, "xla", "ring")
