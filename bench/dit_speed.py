"""JAX (jit) vs diffusers torch (eager) speed of the Wan DiT on this CPU, side by side.

  python bench/dit_speed.py [--repeats 5] [--attention xla|chunked]

Same weights, same inputs, all cores for both; the two frameworks are timed in interleaved
rounds (jax, torch, jax, torch, ...) so background load hits both alike. Reports medians of
forward and forward+backward (gradient of a scalar loss w.r.t. all weights), writes
bench/results/dit_speed.json and prints ``jax/torch speedup fwd=X fwdbwd=Y``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CONFIG = dict(  # a small I2V model: D=512, 8 heads, 8 layers
  num_heads=8,
  head_dim=64,
  ffn_dim=2048,
  num_layers=8,
  text_dim=4096,
  image_dim=1280,
  freq_dim=256,
)
SHAPE = dict(batch=2, frames=5, height=32, width=32, text_len=512, image_len=257)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--attention", default="xla", help="JAX attention impl (xla | chunked)")
  ap.add_argument("--out", default=None, help="default: bench/results/dit_speed_<attention>.json")
  args = ap.parse_args()
  threads = os.cpu_count()  # XLA:CPU uses every core by default; torch is set to the same

  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  from flax import nnx

  from pose_jax.convert.wan_diffusers import load_transformer
  from pose_jax.models.wan import preset
  from tests.helpers.torch_refs import inputs, torch_wan

  torch.set_num_threads(threads)
  cfg = preset("i2v_14b", **CONFIG)
  tm = torch_wan(cfg, seed=0, noise=0.0)
  with tempfile.TemporaryDirectory() as d:
    tm.save_pretrained(d)
    model = load_transformer(d, attention=args.attention)
  s = SHAPE
  inp = inputs(
    cfg,
    batch=s["batch"],
    frames=s["frames"],
    height=s["height"],
    width=s["width"],
    text_len=s["text_len"],
    image_len=s["image_len"],
  )
  graphdef, params = nnx.split(model)
  x = jnp.asarray(inp["hidden_states"].numpy().transpose(0, 2, 3, 4, 1))
  t, txt, img = (
    jnp.asarray(inp[k].numpy())
    for k in ("timestep", "encoder_hidden_states", "encoder_hidden_states_image")
  )

  fwd = jax.jit(lambda p: nnx.merge(graphdef, p)(x, t, txt, img))
  loss = lambda p: jnp.mean(jnp.square(nnx.merge(graphdef, p)(x, t, txt, img)))
  fwdbwd = jax.jit(jax.value_and_grad(loss))

  def jax_fwd():
    jax.block_until_ready(fwd(params))

  def jax_fwdbwd():
    jax.block_until_ready(fwdbwd(params))

  def torch_fwd():
    with torch.no_grad():
      tm(**inp, return_dict=False)

  def torch_fwdbwd():
    tm.zero_grad(set_to_none=True)
    out = tm(**inp, return_dict=False)[0]
    out.square().mean().backward()

  compile_s = {}
  for name, fn in (("fwd", jax_fwd), ("fwdbwd", jax_fwdbwd)):
    t0 = time.perf_counter()
    fn()
    compile_s[name] = time.perf_counter() - t0
  torch_fwd(), torch_fwdbwd()  # warm-up

  times = {k: [] for k in ("jax_fwd", "torch_fwd", "jax_fwdbwd", "torch_fwdbwd")}
  for _ in range(args.repeats):
    for name, fn in (
      ("jax_fwd", jax_fwd),
      ("torch_fwd", torch_fwd),
      ("jax_fwdbwd", jax_fwdbwd),
      ("torch_fwdbwd", torch_fwdbwd),
    ):
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
  med = {k: statistics.median(v) for k, v in times.items()}
  result = dict(
    config=CONFIG,
    shape=s,
    threads=threads,
    repeats=args.repeats,
    machine=f"{platform.machine()} {os.cpu_count()} cores",
    jax=jax.__version__,
    torch=torch.__version__,
    median_s=med,
    all_s=times,
    jax_compile_s=compile_s,
    speedup_fwd=med["torch_fwd"] / med["jax_fwd"],
    speedup_fwdbwd=med["torch_fwdbwd"] / med["jax_fwdbwd"],
    params=int(sum(np.prod(a.shape) for a in jax.tree.leaves(params))),
  )
  out = args.out or os.path.join(ROOT, "bench", "results", f"dit_speed_{args.attention}.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    json.dump(result, f, indent=1)
  for k, v in med.items():
    print(f"{k:14s} {v * 1e3:9.1f} ms")
  print(f"jax/torch speedup fwd={result['speedup_fwd']:.2f} fwdbwd={result['speedup_fwdbwd']:.2f}")


if __name__ == "__main__":
  main()
