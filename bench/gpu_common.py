"""Helpers of ``bench/gpu_suite.py``: device and library facts, model sizes and FLOPs, the
attention choice, interleaved timing rounds and random weights made on the device."""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pose_jax import sharding as shd
from pose_jax.aot import flops
from pose_jax.models.attention import dot_product_attention
from pose_jax.models.wan import preset

PEAK_BF16 = (("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12))  # dense FLOP/s
HOST_INIT_MAX = 2**28  # parameters; see on_device


def versions() -> dict:
  names = ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "diffusers", "transformers")
  out = {"python": platform.python_version()}
  for name in names:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def device_info() -> dict:
  try:
    import torch

    torch_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
  except ImportError:
    torch_name = None
  kind, host = jax.devices()[0].device_kind, f"{platform.machine()} {os.cpu_count()} cores"
  return dict(backend=jax.default_backend(), jax=kind, torch=torch_name, host=host)


def peak_flops() -> float | None:
  kind = jax.devices()[0].device_kind.lower() if jax.default_backend() == "gpu" else ""
  return next((v for k, v in PEAK_BF16 if kind and k.lower() in kind), None)


def wan_config(sz, **kw):
  """The part's DiT config: its preset, its ``model`` overrides, then ``kw``."""
  return preset(sz["preset"], **{**sz.get("model", {}), **kw})


def latent_grid(sz) -> tuple[int, int, int]:
  """The Wan2.1 VAE's latent [T, h, w] of ``frames`` at ``size`` (4x in time, 8x in space)."""
  return (1 + (sz["frames"] - 1) // 4, sz["size"][0] // 8, sz["size"][1] // 8)


def video_tokens(cfg, grid) -> int:
  return math.prod(g // p for g, p in zip(grid, cfg.patch_size))


def dit_flops(cfg, grid, text_len, image_len, backward="none") -> float:
  """Analytic matmul FLOPs of one DiT pass on one clip (``pose_jax.aot.flops``)."""
  return flops._pass(flops.dit_flops(cfg, 1, grid, text_len, image_len), backward)


def attention_for(cfg, lengths, opts) -> tuple[str, str | None]:
  """``(impl, note)``: ``--attention``, or for ``auto`` cuDNN where a forward + backward probe
  with query length ``lengths[0]`` and each key length runs on this GPU."""
  if opts.attention != "auto":
    return opts.attention, None
  if jax.default_backend() != "gpu":
    return "xla", None
  ones = lambda n: jnp.ones((1, n, cfg.num_heads, cfg.head_dim), jnp.bfloat16)
  loss = lambda q, k, v: dot_product_attention(q, k, v, "cudnn").astype(jnp.float32).sum()
  try:
    for n in lengths:
      jax.block_until_ready(jax.jit(jax.grad(loss, (0, 1, 2)))(ones(lengths[0]), ones(n), ones(n)))
    return "cudnn", None
  except Exception as e:  # any refusal: another kernel
    impl = "xla" if lengths[0] <= 8192 else "chunked"
    return impl, f"cudnn probe failed ({type(e).__name__}: {str(e)[:300]}); used {impl}"


def rounds(fns: dict, repeats: int) -> dict:
  """A warm-up round (compiles), then ``repeats`` interleaved rounds of each ``fns`` entry, a
  blocking call (returning stage seconds with a ``total``, or else timed whole); per entry: its
  median run by total."""
  runs = {k: [] for k in fns}
  for _ in range(repeats + 1):
    for k, fn in fns.items():
      t0 = time.perf_counter()
      r = fn()
      runs[k].append(r if isinstance(r, dict) else {"total": time.perf_counter() - t0})
  out = {}
  for k, (first, *rest) in runs.items():
    mid = sorted(rest, key=lambda r: r["total"])[(len(rest) - 1) // 2]
    out[k] = dict(median_s=mid["total"], first_call_s=first["total"])
    out[k].update(
      compile_s=max(first["total"] - mid["total"], 0.0), all_s=[r["total"] for r in rest]
    )
    if len(mid) > 1:
      out[k].update(seconds=mid, first_call_seconds=first)
  return out


def on_device(make, seed: int = 0):
  """The module ``make()`` builds, random, on the default device: past ``HOST_INIT_MAX``
  parameters by its own initialisers in one jitted init (never on the host), else N(0, 1/fan_in)
  from numpy (XLA:CPU takes minutes to compile the RNG init of a many-layer VAE)."""
  graphdef, abstract = nnx.split(nnx.eval_shape(make))
  leaves, treedef = jax.tree.flatten(abstract)
  if sum(a.size for a in leaves) > HOST_INIT_MAX:
    return nnx.merge(*shd.create_state(make, None))
  rng = np.random.default_rng(seed)

  def draw(a):
    if not jnp.issubdtype(a.dtype, jnp.floating):
      return jax.device_put(np.zeros(a.shape, a.dtype))
    scale = math.prod(a.shape[:-1]) ** -0.5 if len(a.shape) > 1 else 0.02
    return jax.device_put((rng.standard_normal(a.shape, np.float32) * scale).astype(a.dtype))

  return nnx.merge(graphdef, jax.tree.unflatten(treedef, [draw(a) for a in leaves]))


def describe(sz, cfg, params, impl, note) -> dict:
  grid = latent_grid(sz)
  clip = dict(batch=1, frames=sz["frames"], size=list(sz["size"]), latent=list(grid))
  return dict(
    model=dict(preset=sz["preset"], **sz.get("model", {})),
    params=int(sum(x.size for x in jax.tree.leaves(params))),
    attention=impl,
    attention_note=note,
    clip=dict(clip, video_tokens=video_tokens(cfg, grid)),
    repeats=sz["repeats"],
  )
