"""The one attention entry point, dispatching to a kernel chosen by config.

Legend: B batch, L query tokens, S key tokens, N heads, K head dim. Layout ``[B, L, N, K]``.

Kernels (``impl``):
  ``xla``    ``jax.nn.dot_product_attention(implementation='xla')``: runs everywhere; default.
  ``chunked`` plain-JAX attention over query chunks of ``CHUNK`` tokens, each chunk under
             ``jax.checkpoint``: memory O(chunk x S) instead of O(L x S) in training too, on any
             backend. On a 2-core CPU it is ~3x faster than ``xla`` (bench/dit_speed.py).
  ``cudnn``  ``jax.nn.dot_product_attention(implementation='cudnn')``: NVIDIA GPUs, bf16/fp16.
  ``splash`` Pallas TPU splash attention, mapped over the mesh with ``jax.shard_map``; TPU only.

Context parallelism (the mesh's ``context`` axis, video tokens split over it) has two schemes,
``context_parallel``; with ``context`` of size 1 both are plain attention:
  ``allgather`` each device keeps its L/context queries (``sharding.QUERIES``) and attends to the
             whole key/value sequence, gathered over ``context`` (``sharding.KEYS_VALUES``); the
             backward pass reduce-scatters the key/value gradients. Default; any head count.
  ``ulysses`` all-to-all from sequence-split to head-split (``sharding.ULYSSES``: N/(tensor x
             context) heads per device, whole sequence), attention, all-to-all back. Moves
             4/context of the q/k/v/out bytes where ``allgather`` gathers 2 whole K/V; needs
             N divisible by tensor x context. For self-attention; cross-attention (keys from
             text/image tokens, not split) always uses ``allgather``.
Per device both do 1/(context x tensor) of the attention FLOPs (tests/models/test_attention.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from einops import rearrange

from pose_jax import sharding as shd

IMPLS = ("xla", "chunked", "cudnn", "splash")
CONTEXT_PARALLEL = ("allgather", "ulysses")
CHUNK = 256


def dot_product_attention(
  q: jax.Array, k: jax.Array, v: jax.Array, impl: str = "xla", context_parallel: str = "allgather"
) -> jax.Array:
  """Unmasked softmax attention with scale ``1/sqrt(K)``; returns ``[B, L, N, K]`` in q's dtype.

  Under a mesh, ``q`` comes split over ``context`` and k/v as the scheme needs (see above)."""
  if q.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
    raise ValueError(f"attention shapes q={q.shape} k={k.shape} v={v.shape} are not [B,L,N,K]")
  if impl not in IMPLS:
    raise ValueError(f"unknown attention impl {impl!r}; choose one of {IMPLS}")
  if context_parallel not in CONTEXT_PARALLEL:
    raise ValueError(f"unknown context_parallel {context_parallel!r}; one of {CONTEXT_PARALLEL}")
  q_names, kv_names = shd.QUERIES, shd.KEYS_VALUES
  if context_parallel == "ulysses" and _mesh_size("context") > 1:
    _check_ulysses_heads(q.shape[2])
    q_names = kv_names = shd.ULYSSES
    q, k, v = (shd.constrain(a, shd.ULYSSES) for a in (q, k, v))
  out = _kernel(q, k, v, impl, q_names, kv_names)
  return shd.constrain(out, shd.QUERIES) if q_names is shd.ULYSSES else out


def _kernel(q, k, v, impl, q_names, kv_names):
  if impl == "xla":
    return jax.nn.dot_product_attention(q, k, v, implementation="xla")
  if impl == "chunked":
    return _chunked(q, k, v)
  if impl == "cudnn":
    _require_backend("cudnn", "gpu")
    return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
  _require_backend("splash", "tpu")
  return splash(q, k, v, q_names, kv_names)


def _check_ulysses_heads(heads: int) -> None:
  ways = _mesh_size("context") * _mesh_size("tensor")
  if heads % ways:
    raise ValueError(
      f"context_parallel='ulysses' splits {heads} heads over tensor x context = {ways} devices, "
      "which does not divide them; use model.context_parallel='allgather'"
    )


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


def splash(q, k, v, q_names=shd.QUERIES, kv_names=shd.KEYS_VALUES, interpret=False):
  """Splash attention on ``[B, L, N, K]`` under ``jax.shard_map``: each device runs the kernel on
  its shard, q (and the output) laid out by the logical ``q_names``, k/v by ``kv_names``.
  ``interpret=True`` runs the Pallas kernel in interpret mode (any backend; tests)."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

  mesh = jax.sharding.get_abstract_mesh()
  q_spec, kv_spec = shd.logical_to_spec(q_names), shd.logical_to_spec(kv_names)
  if _axes_size(mesh, kv_spec[1]) != 1:
    raise ValueError(f"splash needs whole keys/values per device, got {kv_names} -> {kv_spec}")
  q_shards, n_local = _axes_size(mesh, q_spec[1]), q.shape[2] // _axes_size(mesh, q_spec[2])
  length, lk = q.shape[1], k.shape[1]
  pad_split = -length % q_shards  # shard_map splits evenly; the real sizes need no padding here
  local = (length + pad_split) // q_shards
  bq, bk = _block(local), _block(lk)
  pad_q, pad_k = -local % bq, -lk % bk
  q = (q * q.shape[-1] ** -0.5).astype(q.dtype)
  q = jnp.pad(q, ((0, 0), (0, pad_split), (0, 0), (0, 0)))
  # Each device pads its queries to whole blocks (cut off after) and the keys likewise; padded
  # keys get their own segment, so no query attends to them.
  kv_seg = (jnp.arange(lk + pad_k) >= lk).astype(jnp.int32)
  seg = sk.SegmentIds(q=jnp.zeros((local + pad_q,), jnp.int32), kv=kv_seg)
  mask = sm.MultiHeadMask([sm.FullMask((local + pad_q, lk + pad_k))] * n_local)
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
  kernel = sk.make_splash_mha(
    mask, head_shards=1, q_seq_shards=1, block_sizes=sizes, interpret=interpret
  )

  def on_device(q, k, v):
    q = jnp.pad(q, ((0, 0), (0, pad_q), (0, 0), (0, 0)))
    k, v = (jnp.pad(a, ((0, 0), (0, pad_k), (0, 0), (0, 0))) for a in (k, v))
    # The kernel works on one example laid out [N, L, K].
    out = jax.vmap(kernel, in_axes=(0, 0, 0, None))(
      q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), seg
    )
    return out.transpose(0, 2, 1, 3)[:, :local]

  if not mesh.empty:
    specs = dict(in_specs=(q_spec, kv_spec, kv_spec), out_specs=q_spec, check_vma=False)
    on_device = jax.shard_map(on_device, **specs)
  return on_device(q, k, v)[:, :length]


def _block(length: int) -> int:
  """Splash block size: 512, or the length rounded up to a multiple of 128 when shorter."""
  return min(512, -(-length // 128) * 128)


def _axes_size(mesh, axes) -> int:
  """Devices along ``axes`` (a mesh axis name, a tuple of them, or None) of ``mesh``."""
  if axes is None or mesh.empty:
    return 1
  axes = (axes,) if isinstance(axes, str) else axes
  size = 1
  for a in axes:
    size *= mesh.shape[a]
  return size


def _mesh_size(axis: str) -> int:
  return _axes_size(jax.sharding.get_abstract_mesh(), axis)
