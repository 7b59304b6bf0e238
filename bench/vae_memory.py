"""Compiled memory of the Wan2.1 VAE decode (and encode) at 480x832, from XLA's own analysis.

  python bench/vae_memory.py [--frames 11,21] [--height 480 --width 832] [--encode]
                             [--dtypes float32,bfloat16]

Builds the real ``wan2_1`` VAE abstractly (``nnx.eval_shape``: no weights allocated), lowers
``decode`` for each latent frame count with ``jax.jit(...).lower(abstract args).compile()`` on
CPU and reads ``memory_analysis()``. Nothing is run. Because the chunk loop is a ``lax.scan``,
the temporary (activation + cache) memory must stay flat as frames grow; only the output buffer
grows. Writes bench/results/vae_memory.json and prints one line per configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MIB = 2**20


def compiled_memory(kind: str, frames: int, height: int, width: int, dtype: str = "float32"):
  """XLA memory analysis of ``WanVAE.decode`` (``frames`` latent frames) or ``encode``
  (``frames`` video frames) for the ``wan2_1`` config at ``height x width`` video pixels."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from pose_jax.models.wan.vae import WanVAE, preset

  cfg = preset("wan2_1", dtype=dtype)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: WanVAE(cfg, rngs=nnx.Rngs(0))))
  s = cfg.spatial_factor
  if kind == "decode":
    arg = jax.ShapeDtypeStruct((1, frames, height // s, width // s, cfg.z_dim), jnp.float32)
    fn = lambda st, z: nnx.merge(graphdef, st).decode(z)
  else:
    arg = jax.ShapeDtypeStruct((1, frames, height, width, 3), jnp.float32)
    fn = lambda st, x: nnx.merge(graphdef, st).encode(x)
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(state, arg).compile()
  seconds = time.perf_counter() - t0
  ma = compiled.memory_analysis()
  return {
    "kind": kind,
    "frames": frames,
    "height": height,
    "width": width,
    "dtype": dtype,
    "compile_s": round(seconds, 1),
    "temp_bytes": int(ma.temp_size_in_bytes),
    "argument_bytes": int(ma.argument_size_in_bytes),
    "output_bytes": int(ma.output_size_in_bytes),
    "alias_bytes": int(ma.alias_size_in_bytes),
    # XLA:CPU's own "peak" counts arguments + outputs only; the footprint adds the temporaries.
    "xla_peak_bytes": int(getattr(ma, "peak_memory_in_bytes", 0) or 0),
    "footprint_bytes": int(
      ma.temp_size_in_bytes
      + ma.argument_size_in_bytes
      + ma.output_size_in_bytes
      - ma.alias_size_in_bytes
    ),
  }


def _line(row: dict) -> str:
  return (
    f"{row['kind']} frames={row['frames']} {row['height']}x{row['width']} {row['dtype']}: "
    f"temp={row['temp_bytes'] / MIB:.0f} MiB output={row['output_bytes'] / MIB:.0f} MiB "
    f"args={row['argument_bytes'] / MIB:.0f} MiB footprint={row['footprint_bytes'] / MIB:.0f} MiB "
    f"compile={row['compile_s']} s"
  )


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--frames", default="11,21", help="latent frame counts for decode")
  ap.add_argument("--height", type=int, default=480)
  ap.add_argument("--width", type=int, default=832)
  ap.add_argument("--dtypes", default="float32,bfloat16", help="compute dtypes to compile")
  ap.add_argument("--encode", action="store_true", help="also encode 1+4(N-1) video frames")
  ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "vae_memory.json"))
  args = ap.parse_args()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

  rows = []
  for dtype in args.dtypes.split(","):
    for n in [int(f) for f in args.frames.split(",")]:
      jobs = [("decode", n)] + ([("encode", 1 + 4 * (n - 1))] if args.encode else [])
      for kind, frames in jobs:
        rows.append(compiled_memory(kind, frames, args.height, args.width, dtype))
        print(_line(rows[-1]), flush=True)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"rows": rows}, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
