"""Checkpoint conversion: MB/s and peak host memory of import and export on a synthetic model.

  python bench/convert_speed.py [--size large|small] [--dtype fp32|bf16] [--workdir DIR] [--keep]

Writes a synthetic diffusers checkpoint (random weights, streamed to disk, never whole in
memory; deleted afterwards unless --keep), then runs, each in a fresh process, the CLI's
  import:  python -m pose_jax.convert import --src=SRC --dst=CKPT --format=diffusers
  export:  python -m pose_jax.convert export --src=CKPT --dst=OUT --format=diffusers (5 GB shards)
and records wall time, MB/s and peak RSS growth over the process's RSS just before the call
(the ``VmHWM`` high-water mark minus that baseline), next to the largest source tensor and the
largest stacked parameter. Results go to bench/results/convert_speed.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Few wide layers: a stacked parameter (L x tensor) is much larger than the 3x-tensor bound.
SIZES = {
  "large": dict(num_heads=16, head_dim=128, ffn_dim=8192, num_layers=8, text_dim=4096),  # ~2.5 GB
  "small": dict(num_heads=8, head_dim=128, ffn_dim=8192, num_layers=4, text_dim=1024),  # ~0.5 GB
}


def bench_config(size: str):
  from pose_jax.models.wan import WanConfig

  return WanConfig(in_channels=36, image_dim=1280, freq_dim=256, **SIZES[size])


def make_synthetic(dst: str, cfg, dtype: str = "fp32", max_shard_bytes: int = 10**9) -> dict:
  """A diffusers-layout checkpoint of ``cfg`` with random weights, written tensor by tensor."""
  import numpy as np
  from etils import epath

  from pose_jax.convert import export, importer

  np_dtype = np.dtype(importer.DTYPE_ALIASES[dtype])
  specs = {p: (tuple(s.shape), np_dtype) for p, s in importer.target_specs(cfg).items()}
  entries = export.plan_entries(cfg, specs, "diffusers")
  rng = np.random.default_rng(0)

  def arrays():
    for e in entries:
      yield (rng.standard_normal(e.shape, dtype=np.float32) * 0.02).astype(e.dtype)

  out = epath.Path(dst)
  out.mkdir(parents=True, exist_ok=True)
  shards = export.shard(entries, max_shard_bytes)
  names = [
    f"diffusion_pytorch_model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    for i in range(len(shards))
  ]
  gen = arrays()
  for name, group in zip(names, shards):
    export.write_safetensors(out / name, group, gen, lambda n: None)
  weight_map = {e.key: n for n, g in zip(names, shards) for e in g}
  total = sum(e.nbytes for e in entries)
  (out / "diffusion_pytorch_model.safetensors.index.json").write_text(
    json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
  )
  (out / "config.json").write_text(json.dumps(cfg.to_diffusers()))
  big = max(entries, key=lambda e: e.nbytes)
  stacked = {}
  for e in entries:
    stacked[e.path] = stacked.get(e.path, 0) + e.nbytes
  big_path = max(stacked, key=stacked.get)
  return {
    "source_bytes": total,
    "source_tensors": len(entries),
    "largest_tensor": {"key": big.key, "shape": list(big.shape), "bytes": big.nbytes},
    "largest_stacked_param": {"path": "/".join(big_path), "bytes": stacked[big_path]},
  }


def _status(field: str) -> int:
  """``VmRSS`` (now) or ``VmHWM`` (peak) of this process in bytes. Not ``ru_maxrss``: that one
  survives ``exec`` and so would include the RSS of whatever process forked this one."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) * 1024
  raise KeyError(field)


def stage(name: str, src: str, dst: str) -> dict:
  """Runs one conversion through the CLI's ``main`` in this process; returns time and memory."""
  from pose_jax.convert import export, importer  # noqa: F401  (imports outside the baseline)
  from pose_jax.convert.cli import main

  baseline = _status("VmRSS")
  start = time.perf_counter()
  if main([name, f"--src={src}", f"--dst={dst}", "--format=diffusers", "--noprogress"]):
    raise RuntimeError(f"{name} {src} -> {dst} failed")
  secs = time.perf_counter() - start
  peak = _status("VmHWM")
  return {"seconds": secs, "baseline_rss": baseline, "peak_rss": peak, "growth": peak - baseline}


def run_stage(name: str, src: str, dst: str) -> dict:
  """:func:`stage` in a fresh interpreter (so the high-water mark covers only this conversion)."""
  code = (
    f"import json, sys; sys.path.insert(0, {ROOT!r}); import bench.convert_speed as b; "
    f"print('RESULT' + json.dumps(b.stage({name!r}, {src!r}, {dst!r})))"
  )
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
  lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
  if proc.returncode or not lines:
    raise RuntimeError(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
  return json.loads(lines[-1][len("RESULT") :])


def du(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--size", choices=sorted(SIZES), default="large")
  ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
  ap.add_argument("--workdir", default=None, help="scratch dir (default: a temp dir)")
  ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "convert_speed.json"))
  ap.add_argument("--keep", action="store_true", help="keep the synthetic files")
  args = ap.parse_args()
  work = args.workdir or tempfile.mkdtemp(prefix="convert_bench_")
  src, ckpt, out = (os.path.join(work, n) for n in ("src", "ckpt", "export"))
  for p in (src, ckpt, out):
    shutil.rmtree(p, ignore_errors=True)
  try:
    t0 = time.perf_counter()
    info = make_synthetic(src, bench_config(args.size), args.dtype)
    info["make_seconds"] = time.perf_counter() - t0
    result = {"size": args.size, "dtype": args.dtype, **info}
    for name, a, b in (("import", src, ckpt), ("export", ckpt, out)):
      r = run_stage(name, a, b)
      r["mb_per_s"] = info["source_bytes"] / 1e6 / r["seconds"]
      r["growth_over_largest_tensor"] = r["growth"] / info["largest_tensor"]["bytes"]
      result[name] = r
    result["orbax_bytes"], result["export_bytes"] = du(ckpt), du(out)
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
  finally:
    if not args.keep and not args.workdir:
      shutil.rmtree(work, ignore_errors=True)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  mb = 1 << 20
  print(
    f"source {info['source_bytes'] / 1e9:.2f} GB, largest tensor "
    f"{info['largest_tensor']['bytes'] / mb:.0f} MiB, largest stacked param "
    f"{info['largest_stacked_param']['bytes'] / mb:.0f} MiB"
  )
  for name in ("import", "export"):
    r = result[name]
    print(
      f"{name}: {r['mb_per_s']:.0f} MB/s ({r['seconds']:.1f} s), peak RSS growth "
      f"{r['growth'] / mb:.0f} MiB = {r['growth_over_largest_tensor']:.2f}x largest tensor"
    )


if __name__ == "__main__":
  main()
