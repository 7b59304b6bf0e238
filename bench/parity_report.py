"""fp32 (and bf16) parity of every ported module against its torch reference, measured now.

  python bench/parity_report.py [--out bench/results/parity.json]
                                [--only dit,vae,clip,umt5,conditioning]

Builds the same tiny random torch oracles as the tests (from ``tests/helpers/``), loads them
through our converters, and reports ``max |ours - ref| / max |ref|`` per module: the Wan DiT
(forward and backward, I2V and T2V), the Wan VAE, CLIP vision (+ preprocessing), UMT5 (+ Wan
prompt encoding) and the I2V conditioning stack vs ``WanImageToVideoPipeline``. Where the tests
check bf16, a second column gives our bf16 run vs fp32 (with the reference library's own bf16
error in parentheses). Each number also carries the tests' bound; the script exits 1 if one is
exceeded. Writes bench/results/parity.json and prints a markdown table at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The tests' XLA set-up (tests/conftest.py): 8 host devices change XLA:CPU's partitioning of the
# work, hence fp32 round-off at the 1e-7 level; with it the numbers equal the tests' printouts.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  ).strip()

import jax  # noqa: E402
import torch  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")  # as tests/conftest.py

from parity_cases import (  # noqa: E402  (bench/ is on sys.path when run as a script)
  clip_rows,
  conditioning_rows,
  dit_rows,
  umt5_rows,
  vae_rows,
)


# --- report -------------------------------------------------------------------------------------
def fmt(x: float) -> str:
  return "0" if x == 0 else f"{x:.1e}"


def table(rows: list[dict]) -> str:
  lines = [
    "| module | reference class | inputs | max abs err / max abs ref | bf16 vs fp32 |",
    "|---|---|---|---|---|",
  ]
  for r in rows:
    b = r["bf16"]
    bf = "-" if b is None else f"{fmt(b['ours'])} (torch bf16: {fmt(b['reference'])})"
    if b is not None and "at" in b:
      bf += f" at {b['at']}"
    lines.append(f"| {r['module']} | {r['reference']} | {r['inputs']} | {fmt(r['err'])} | {bf} |")
  return "\n".join(lines)


def violations(rows: list[dict]) -> list[str]:
  bad = []
  for r in rows:
    if r["bound"] is not None and not r["err"] <= r["bound"]:
      bad.append(f"{r['module']}: fp32 {r['err']:.2e} > test bound {r['bound']:.0e}")
    b = r["bf16"]
    if b is not None and not b["ours"] <= b["bound"]:
      bad.append(f"{r['module']}: bf16 {b['ours']:.2e} > test bound {b['bound']:.0e}")
    k = (b or {}).get("max_ratio_to_reference")
    if k is not None and not b["ours"] <= k * b["reference"]:
      bad.append(f"{r['module']}: bf16 {b['ours']:.2e} > {k} x torch bf16 {b['reference']:.2e}")
    if k is not None and "mean_abs" in b and not b["mean_abs"] <= k * b["reference_mean_abs"]:
      bad.append(f"{r['module']}: bf16 mean abs err > {k} x torch bf16's")
    abs_bound = r["detail"].get("abs_bound")
    if abs_bound is not None and not max(r["detail"]["max_abs"].values()) <= abs_bound:
      bad.append(f"{r['module']}: max abs err > test bound {abs_bound:.0e}")
  return bad


SECTIONS = [
  ("dit", dit_rows),
  ("vae", vae_rows),
  ("clip", clip_rows),
  ("umt5", umt5_rows),
  ("conditioning", conditioning_rows),
]


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "parity.json"))
  names = [n for n, _ in SECTIONS]
  ap.add_argument("--only", default=",".join(names), help=f"comma list of {names}")
  args = ap.parse_args()
  only = args.only.split(",")
  if set(only) - set(names):
    ap.error(f"--only: unknown section(s) {sorted(set(only) - set(names))}")

  import diffusers
  import transformers

  for lib in (diffusers, transformers):  # progress bars and dtype/backend notices
    lib.utils.logging.set_verbosity_error()
    lib.utils.logging.disable_progress_bar()

  t_start = time.perf_counter()
  rows, seconds = [], {}
  with tempfile.TemporaryDirectory() as tmp:
    for name, fn in (s for s in SECTIONS if s[0] in only):
      t0 = time.perf_counter()
      new = fn(tmp)
      seconds[name] = round(time.perf_counter() - t0, 1)
      for r in new:
        r["section"] = name
        print(f"[{name}] {r['module']}: {r['err']:.2e}", flush=True)
      rows += new
  total = time.perf_counter() - t_start
  bad = violations(rows)
  result = dict(
    metric="max |ours - ref| / max |ref| (UMT5: over valid positions). bf16: our bf16 run vs "
    "the fp32 output named in 'vs'; 'reference': the torch library's own bf16 run vs fp32",
    rows=rows,
    within_test_bounds=not bad,
    violations=bad,
    seconds=seconds,
    total_seconds=round(total, 1),
    machine=f"{platform.machine()} {os.cpu_count()} cores",
    jax=jax.__version__,
    torch=torch.__version__,
    diffusers=diffusers.__version__,
    transformers=transformers.__version__,
    jax_default_matmul_precision="highest",
    xla_flags=os.environ.get("XLA_FLAGS", ""),
  )
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  print()
  print(table(rows))
  print(
    f"\n{len(rows)} rows in {total:.0f} s ({', '.join(f'{k} {v}s' for k, v in seconds.items())})"
  )
  for b in bad:
    print("OUT OF TEST BOUND:", b)
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
