"""Compile time, steps/s and compiled memory of each POSE phase's fused step.

  python bench/step_speed.py [--configs tiny,small] [--steps 5]

For each model size and phase (pretrain, priming, equilibrium): lower + compile the jitted,
donated step on this machine's devices, then time ``--steps`` steps after one warm-up.
Memory is XLA's ``memory_analysis()`` of the compiled step (arguments, outputs, temporaries).
Writes bench/results/step_speed.json and prints a table.
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

SIZES = {
  # name: (WanConfig preset + overrides, batch, latent [T, H, W])
  "tiny": (dict(preset="toy", num_layers=4), 8, (3, 24, 24)),
  "small": (
    dict(preset="toy", num_heads=8, head_dim=64, ffn_dim=2048, num_layers=8),
    2,
    (3, 32, 32),
  ),
}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--configs", default="tiny,small")
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "step_speed.json"))
  args = ap.parse_args()

  import jax
  import jax.numpy as jnp
  import ml_collections

  from pose_jax.models.wan import preset
  from pose_jax.pose import models as pose_models
  from pose_jax.pose.config import PoseConfig
  from pose_jax.training import optim, steps
  from pose_jax.training import state as state_lib

  group = dict(
    lr=1e-4,
    warmup_steps=0,
    decay="constant",
    final_frac=0.0,
    clip=1.0,
    b1=0.9,
    b2=0.99,
    eps=1e-8,
    weight_decay=0.0,
  )
  optim_cfg = ml_collections.ConfigDict({g: dict(group) for g in optim.GROUPS})
  knobs = PoseConfig(lora_rank=4, d_width=64, d_heads=2, d_num_queries=4, steps=(10, 10))
  results = []
  for name in args.configs.split(","):
    model_kw, batch_size, (t, h, w) = SIZES[name]
    kw = dict(model_kw)
    cfg = preset(kw.pop("preset"), **kw)
    models, teacher, lora, head = pose_models.build(cfg, knobs)
    ks = jax.random.split(jax.random.key(0), 4)
    batch = dict(
      latents=jax.random.normal(ks[0], (batch_size, t, h, w, cfg.out_channels)),
      cond=jax.random.normal(ks[1], (batch_size, t, h, w, cfg.in_channels - cfg.out_channels)),
      text=jax.random.normal(ks[2], (batch_size, 16, cfg.text_dim)),
      neg_text=jnp.zeros((batch_size, 16, cfg.text_dim)),
      image=jax.random.normal(ks[3], (batch_size, 17, cfg.image_dim)),
    )
    for phase in ("pretrain", "priming", "equilibrium"):
      tx = optim.make_optimizer(optim_cfg, phase, 10, knobs)
      state = state_lib.init_state(tx, teacher, lora, head, knobs, seed=1)
      fn = jax.jit(steps.make_step(phase, knobs, models, tx, 0, 10), donate_argnums=(0,))
      t0 = time.perf_counter()
      compiled = fn.lower(state, teacher, batch).compile()
      compile_s = time.perf_counter() - t0
      mem = compiled.memory_analysis()
      state, m = compiled(state, teacher, batch)
      jax.block_until_ready(m)
      t0 = time.perf_counter()
      for _ in range(args.steps):
        state, m = compiled(state, teacher, batch)
      jax.block_until_ready(m)
      rate = args.steps / (time.perf_counter() - t0)
      row = dict(
        config=name,
        phase=phase,
        params=int(sum(x.size for x in jax.tree.leaves(teacher))),
        batch=batch_size,
        latent=[t, h, w],
        compile_s=round(compile_s, 2),
        steps_per_s=round(rate, 3),
        argument_mib=round(mem.argument_size_in_bytes / 2**20, 1),
        output_mib=round(mem.output_size_in_bytes / 2**20, 1),
        temp_mib=round(mem.temp_size_in_bytes / 2**20, 1),
      )
      print(row, flush=True)
      results.append(row)
  devices = f"{jax.device_count()} x {jax.devices()[0].platform}"
  machine = f"{platform.machine()} {os.cpu_count()} cores"
  out = dict(machine=machine, jax=jax.__version__, devices=devices, rows=results)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(out, f, indent=1)
  print(
    "\n| config | phase | compile s | steps/s | args MiB | temp MiB |\n|---|---|---|---|---|---|"
  )
  for r in results:
    print(
      f"| {r['config']} ({r['params']:,} params, batch {r['batch']}) | {r['phase']} | "
      f"{r['compile_s']} | {r['steps_per_s']} | {r['argument_mib']} | {r['temp_mib']} |"
    )


if __name__ == "__main__":
  main()
