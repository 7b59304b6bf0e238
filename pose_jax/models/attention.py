"""The one attention entry point, dispatching to a kernel chosen by config.

Legend: B batch, L query tokens, S key tokens, N heads, K head dim. Layout ``[B, L, N, K]``.

Kernels (``impl``):
  ``xla``    ``jax.nn.dot_product_attention(implementation='xla')``: runs everywhere; default.
  ``chunked`` plain-JAX attention over query chunks of ``CHUNK`` tokens, each chunk under
             ``jax.checkpoint``: memory O(chunk x S) instead of O(L x S) in training too, on any
             backend. On a 2-core CPU it is ~3x faster than ``xla`` (bench/dit_speed.py).
  ``cudnn``  ``jax.nn.dot_product_attention(implementation='cudnn')``: NVIDIA GPUs, bf16/fp16.
  ``splash`` Pallas TPU splash attention, mapped over the mesh with ``jax.shard_map`` (batch over
             ``data``+``fsdp``, heads over ``tensor``); TPU only. Keys/values must be whole on
             each shard, so context parallelism gathers them first (the rules do that).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from einops import rearrange
from jax.sharding import PartitionSpec as P

from pose_jax import sharding as shd

IMPLS = ("xla", "chunked", "cudnn", "splash")
CHUNK = 256


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, impl: str = "xla") -> jax.Array:
  """Unmasked softmax attention with scale ``1/sqrt(K)``; returns ``[B, L, N, K]`` in q's dtype."""
  if q.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
    raise ValueError(f"attention shapes q={q.shape} k={k.shape} v={v.shape} are not [B,L,N,K]")
  if impl == "xla":
    return jax.nn.dot_product_attention(q, k, v, implementation="xla")
  if impl == "chunked":
    return _chunked(q, k, v)
  if impl == "cudnn":
    _require_backend("cudnn", "gpu")
    return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
  if impl == "splash":
    _require_backend("splash", "tpu")
    return _splash(q, k, v)
  raise ValueError(f"unknown attention impl {impl!r}; choose one of {IMPLS}")


def _softmax_attention(q, k, v):
  """Softmax attention with float32 scores and probabilities."""
  s = jnp.einsum("blnk,bsnk->bnls", q, k, preferred_element_type=jnp.float32)
  p = jax.nn.softmax(s * q.shape[-1] ** -0.5, axis=-1)
  return jnp.einsum("bnls,bsnk->blnk", p.astype(v.dtype), v)


def _chunked(q, k, v, chunk: int = CHUNK):
  length = q.shape[1]
  chunk = min(chunk, length)
  pad = -length % chunk
  q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
  chunks = rearrange(q, "b (c l) n k -> c b l n k", l=chunk)
  out = jax.lax.map(jax.checkpoint(lambda qc: _softmax_attention(qc, k, v)), chunks)
  return rearrange(out, "c b l n k -> b (c l) n k")[:, :length]


def _require_backend(impl: str, backend: str) -> None:
  # An abstract TPU topology (AOT compile from a CPU host) reports platform 'tpu' on its devices.
  mesh = jax.sharding.get_abstract_mesh()
  platform = jax.default_backend()
  if not mesh.empty and getattr(mesh, "abstract_device", None) is not None:
    platform = mesh.abstract_device.platform
  if platform != backend:
    raise ValueError(
      f"attention impl {impl!r} needs a {backend.upper()} backend, running on {platform!r}; "
      "use model.attention='xla' here"
    )


def _splash(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """Splash attention on ``[B, L, N, K]``, one kernel call per (batch, head) shard."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

  scale = q.shape[-1] ** -0.5
  q = (q * scale).astype(q.dtype)
  batch = shd.logical_to_spec((shd.ACT_BATCH,))[0]
  heads = shd.logical_to_spec((shd.ACT_HEADS,))[0]
  spec = P(batch, None, heads, None)
  mesh = jax.sharding.get_abstract_mesh()
  n_local = q.shape[2] // _axis_size(mesh, heads)

  lq, lk = q.shape[1], k.shape[1]
  bq, bk = _block(lq), _block(lk)
  pad_q, pad_k = -lq % bq, -lk % bk

  @functools.partial(jax.shard_map, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)
  def run(q, k, v):
    # Pad to whole blocks; padded keys get their own segment so no real query attends to them.
    q = jnp.pad(q, ((0, 0), (0, pad_q), (0, 0), (0, 0)))
    k, v = (jnp.pad(a, ((0, 0), (0, pad_k), (0, 0), (0, 0))) for a in (k, v))
    seg = sk.SegmentIds(
      q=jnp.zeros((lq + pad_q,), jnp.int32), kv=(jnp.arange(lk + pad_k) >= lk).astype(jnp.int32)
    )
    mask = sm.MultiHeadMask([sm.FullMask((lq + pad_q, lk + pad_k))] * n_local)
    sizes = sk.BlockSizes(
      block_q=bq,
      block_kv_compute=bk,
      block_kv=bk,
      block_q_dkv=bq,
      block_kv_dkv=bk,
      block_kv_dkv_compute=bk,
      block_q_dq=bq,
      block_kv_dq=bk,
    )
    kernel = sk.make_splash_mha(mask, head_shards=1, q_seq_shards=1, block_sizes=sizes)
    # The kernel works on one example laid out [N, L, K].
    out = jax.vmap(kernel, in_axes=(0, 0, 0, None))(
      q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), seg
    )
    return out.transpose(0, 2, 1, 3)[:, :lq]

  return run(q, k, v)


def _block(length: int) -> int:
  """Splash block size: 512, or the length rounded up to a multiple of 128 when shorter."""
  return min(512, -(-length // 128) * 128)


def _axis_size(mesh, axes) -> int:
  if axes is None or mesh.empty:
    return 1
  axes = (axes,) if isinstance(axes, str) else axes
  size = 1
  for a in axes:
    size *= mesh.shape[a]
  return size
