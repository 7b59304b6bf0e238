"""Compile time, program size and run time of the teacher's Euler + CFG sampler: the scanned
``samplers.teacher_euler`` against the same steps unrolled in Python (the form it had before).

  python bench/sampler_compile.py [--steps=20,50] [--clips=8]

The toy default's DiT (``configs/toy_i2v.py``, random weights) on ``--clips`` clips of its
latent shape, CFG 3. Per form and step count: lower + compile seconds, the optimised HLO's size
(characters of ``as_text()``) and its count of ``dot_general`` ops, and the median run time of
3 calls; both forms in one process, side by side, and the largest difference of their samples.
Writes ``bench/results/sampler_compile.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def unrolled(graphdef, params, noise, cond, text, image, *, steps, shift, guidance_scale, neg):
  """The pre-scan form: one Python iteration (one copy of the DiT call) per step."""
  from pose_jax.pose.velocity import guided_velocity
  from pose_jax.sampling import samplers

  v = guided_velocity(graphdef, params, cond, text, image, guidance_scale, neg)
  times = samplers.euler_times(steps, shift)
  x = noise
  for t, t_next in zip(times[:-1], times[1:]):
    x = x + (t_next - t) * v(x, t)
  return x


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--steps", default="20,50")
  ap.add_argument("--clips", type=int, default=8)
  ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "sampler_compile.json"))
  args = ap.parse_args()

  import jax
  import jax.numpy as jnp
  import numpy as np

  from configs import toy_i2v
  from pose_jax import config as config_lib
  from pose_jax.data.toy_encoders import TEXT_LENGTH
  from pose_jax.models.encoders import clip_vision
  from pose_jax.pose import models as pose_models
  from pose_jax.pose.config import PoseConfig
  from pose_jax.sampling import samplers

  config = toy_i2v.get_config()
  cfg, knobs = config_lib.wan_config(config.model), PoseConfig.from_config(config.pose)
  models, params = pose_models.build(cfg, knobs)[:2]
  rng = np.random.default_rng(0)
  t_len, side = config.data.frames, config.data.size // config.data.codec_factor
  z = cfg.out_channels
  noise = jnp.asarray(rng.standard_normal((args.clips, t_len, side, side, z)), jnp.float32)
  cond = jnp.asarray(rng.standard_normal((args.clips, t_len, side, side, cfg.in_channels - z)))
  text = jnp.asarray(rng.standard_normal((args.clips, TEXT_LENGTH, cfg.text_dim)), jnp.float32)
  neg = jnp.zeros_like(text)
  image = None
  if cfg.image_dim:
    vision = clip_vision.preset("tiny")  # the toy's image encoder: (side / patch)^2 + CLS tokens
    m = (vision.image_size // vision.patch_size) ** 2 + 1
    image = jnp.asarray(rng.standard_normal((args.clips, m, cfg.image_dim)), jnp.float32)

  rows, host = [], {"machine": platform.machine(), "cpus": os.cpu_count()}
  for steps in [int(s) for s in args.steps.split(",")]:
    kw = dict(steps=steps, shift=knobs.flow_shift, guidance_scale=knobs.cfg_real)
    forms = {
      "scan": lambda p, kw=kw: samplers.teacher_euler(
        models.dit, p, noise, cond, text, image, neg_text=neg, **kw
      ),
      "unrolled": lambda p, kw=kw: unrolled(models.dit, p, noise, cond, text, image, neg=neg, **kw),
    }
    outs = {}
    for name, fn in forms.items():
      t0 = time.perf_counter()
      compiled = jax.jit(fn).lower(params).compile()
      compile_s = time.perf_counter() - t0
      hlo = compiled.as_text()
      outs[name] = np.asarray(compiled(params))
      times = []
      for _ in range(3):
        t0 = time.perf_counter()
        compiled(params).block_until_ready()
        times.append(time.perf_counter() - t0)
      rows.append(
        dict(
          form=name,
          steps=steps,
          nfe=2 * steps,
          compile_s=round(compile_s, 2),
          hlo_chars=len(hlo),
          dot_generals=hlo.count(" dot("),
          run_s=round(float(np.median(times)), 3),
        )
      )
      print(json.dumps(rows[-1]), flush=True)
    diff = float(np.max(np.abs(outs["scan"] - outs["unrolled"])))
    rows.append(dict(steps=steps, max_abs_difference=diff))
    print(json.dumps(rows[-1]), flush=True)
  with open(args.out, "w") as f:
    cmd = "python bench/sampler_compile.py " + " ".join(sys.argv[1:])
    json.dump({"command": cmd, "host": host, "clips": args.clips, "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
