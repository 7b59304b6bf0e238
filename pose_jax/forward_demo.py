"""A one-step forward of the configured DiT on random inputs: shapes, compile and step time.

This is what ``pose_jax.main`` runs until the training loop lands: it builds the model sharded
on the configured mesh, compiles the one-step sampler's DiT call ``x0 = eps - v(eps, t=1000)``
(I2V: noise concatenated with the 4-channel mask and the condition latent) and times it.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding

from pose_jax import config as config_lib
from pose_jax import sharding as shd
from pose_jax.models.wan import WanTransformer


def run(config: ml_collections.ConfigDict) -> dict:
  cfg = config_lib.wan_config(config.model)
  mesh = shd.make_mesh(config.mesh.shape)
  s = config.sample
  t, h, w = config_lib.latent_shape(s, cfg)
  z = cfg.out_channels
  print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}; mesh {dict(mesh.shape)}")

  t0 = time.perf_counter()
  model = shd.create_sharded(lambda: WanTransformer(cfg, rngs=nnx.Rngs(config.seed)), mesh)
  graphdef, params = nnx.split(model)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  built_s = time.perf_counter() - t0
  print(f"model: preset={config.model.preset} params={n_params:,} built in {built_s:.2f}s")

  batch_sharding = NamedSharding(mesh, shd.logical_to_spec((shd.ACT_BATCH,)))
  ks = jax.random.split(jax.random.key(config.seed + 1), 4)
  b = s.batch
  cond_ch = cfg.in_channels - z
  inputs = dict(
    noise=jax.random.normal(ks[0], (b, t, h, w, z)),
    cond=jax.random.normal(ks[1], (b, t, h, w, cond_ch)) if cond_ch else None,
    text=jax.random.normal(ks[2], (b, s.text_len, cfg.text_dim)),
    image=jax.random.normal(ks[3], (b, s.image_len, cfg.image_dim)) if cfg.is_i2v else None,
  )
  inputs = {k: None if v is None else jax.device_put(v, batch_sharding) for k, v in inputs.items()}

  @jax.jit
  def one_step(params, noise, cond, text, image):
    x = noise if cond is None else jnp.concatenate([noise, cond.astype(noise.dtype)], axis=-1)
    v = nnx.merge(graphdef, params)(x, jnp.full((noise.shape[0],), 1000.0), text, image)
    return noise - v.astype(noise.dtype)

  with shd.use_mesh(mesh):
    t0 = time.perf_counter()
    compiled = one_step.lower(params, **inputs).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    times = []
    for _ in range(s.repeats):
      t0 = time.perf_counter()
      x0 = jax.block_until_ready(compiled(params, **inputs))
      times.append(time.perf_counter() - t0)
  if not bool(jnp.isfinite(x0).all()):
    raise FloatingPointError("one-step output is not finite")
  stats = dict(
    latent_shape=tuple(x0.shape),
    video_shape=(b, s.frames, s.height, s.width, 3),
    tokens=t * (h // cfg.patch_size[1]) * (w // cfg.patch_size[2]),
    params=n_params,
    compile_s=compile_s,
    step_s=float(np.median(times)),
    temp_bytes=getattr(mem, "temp_size_in_bytes", None),
  )
  print(
    f"latent {stats['latent_shape']} for video {stats['video_shape']}; "
    f"{stats['tokens']} video tokens per sample"
  )
  print(
    f"compile {compile_s:.2f}s; one-step DiT forward {stats['step_s'] * 1e3:.1f} ms "
    f"(median of {s.repeats}); temp memory {stats['temp_bytes']} bytes/device"
  )
  logging.info("forward demo: %s", stats)
  return stats
