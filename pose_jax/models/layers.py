"""Small building blocks shared by every model: Dense (with optional LoRA), FP32 norms, and
:func:`param`, through which every model parameter is created.

Parameters are stored in ``param_dtype`` and annotated with logical axis names
(:mod:`pose_jax.sharding`); compute happens in ``dtype`` (``None`` = the input's dtype).
Kernels are ``[in, out]`` (torch ``Linear.weight`` transposed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from pose_jax import sharding as shd


class LoRAParam(nnx.Param):
  """A trainable low-rank delta. A separate Variable type so it can be split from base weights:

  ``graphdef, lora, base = nnx.split(model, LoRAParam, nnx.Param)``; the ``base`` tree then has
  exactly the structure of the same model built with ``lora_rank=0``.
  """


def param(value: jax.Array, axes: Sequence[str | None], kind: type[nnx.Param] = nnx.Param):
  """A parameter (``kind``: ``nnx.Param`` or :class:`LoRAParam`) annotated with the logical
  ``axes`` and never sharded eagerly (``eager_sharding=False``, whatever flax's
  ``flax_always_shard_variable`` says): models are built without a mesh (tests, conversion) or
  abstract first and initialised into their sharding (:func:`pose_jax.sharding.create_state`).
  """
  return kind(value, out_sharding=axes, eager_sharding=False)


def torch_linear_init(fan_in: int):
  """torch ``nn.Linear``'s default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)


class Dense(nnx.Module):
  """``y = x @ kernel + bias (+ scale * (x @ lora_a) @ lora_b)``.

  Args:
    axes: logical names of the kernel's (in, out) axes.
    lora_rank: 0 disables LoRA. ``lora_b`` is zero-initialised, so a fresh LoRA is a no-op.
    lora_alpha: the delta is scaled by ``lora_alpha / lora_rank`` (default: scale 1).
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    axes: tuple[str | None, str | None],
    use_bias: bool = True,
    lora_rank: int = 0,
    lora_alpha: float | None = None,
    dtype=None,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    init = torch_linear_init(in_features)
    self.kernel = param(init(rngs.params(), (in_features, out_features), param_dtype), axes)
    self.bias = (
      param(init(rngs.params(), (out_features,), param_dtype), axes[1:]) if use_bias else None
    )
    self.lora_rank = lora_rank
    if lora_rank:
      self.lora_scale = (lora_alpha or lora_rank) / lora_rank
      self.lora_a = param(
        torch_linear_init(in_features)(rngs.params(), (in_features, lora_rank), param_dtype),
        (axes[0], shd.LORA),
        LoRAParam,
      )
      self.lora_b = param(
        jnp.zeros((lora_rank, out_features), param_dtype), (shd.LORA, axes[1]), LoRAParam
      )
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = self.dtype or x.dtype
    x = x.astype(dtype)
    y = jnp.einsum("...i,io->...o", x, self.kernel[...].astype(dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(dtype)
    if self.lora_rank:
      down = jnp.einsum("...i,ir->...r", x, self.lora_a[...].astype(dtype))
      y = y + self.lora_scale * jnp.einsum("...r,ro->...o", down, self.lora_b[...].astype(dtype))
    return y


class LayerNorm(nnx.Module):
  """LayerNorm computed in float32 (diffusers ``FP32LayerNorm``); returns float32."""

  def __init__(self, dim: int, *, eps: float, affine: bool, axes=(shd.EMBED,), rngs=None):
    del rngs
    self.eps = eps
    self.weight = param(jnp.ones((dim,), jnp.float32), axes) if affine else None
    self.bias = param(jnp.zeros((dim,), jnp.float32), axes) if affine else None

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.eps)
    if self.weight is not None:
      y = y * self.weight[...] + self.bias[...]
    return y


class RMSNorm(nnx.Module):
  """torch ``nn.RMSNorm`` over the last axis (for q/k: across all heads), computed in float32."""

  def __init__(self, dim: int, *, eps: float, axes: Sequence[str | None] = (shd.HEADS,), rngs=None):
    del rngs
    self.eps = eps
    self.weight = param(jnp.ones((dim,), jnp.float32), tuple(axes))

  def __call__(self, x: jax.Array) -> jax.Array:
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.square(xf).mean(-1, keepdims=True) + self.eps)
    return (y * self.weight[...]).astype(x.dtype)


def gelu_tanh(x):
  return jax.nn.gelu(x, approximate=True)


def gelu_exact(x):
  return jax.nn.gelu(x, approximate=False)
