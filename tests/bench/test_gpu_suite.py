"""bench/gpu_suite.py at its tiny shapes on CPU: all four parts run through the code the GPU run
takes and write their figures; no time is asserted (the real numbers come from a GPU).

XLA:CPU runs with the tests' ``FAST_COMPILE`` flags (``tests/helpers``): the equilibrium step,
the longest compile, then takes about half as long; nothing is timed."""

import json
import math
import os
import subprocess
import sys

from tests.helpers import FAST_COMPILE, ROOT


def _positive(x) -> bool:
  return isinstance(x, int | float) and math.isfinite(x) and x > 0


def _timings(tree):
  """Every timing record (a dict with ``median_s``) in a part's result."""
  if isinstance(tree, dict):
    if "median_s" in tree:
      yield tree
    for v in tree.values():
      yield from _timings(v)


def test_tiny_suite_writes_every_part(tmp_path):
  out = tmp_path / "x.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=FAST_COMPILE)
  cmd = [sys.executable, "bench/gpu_suite.py", "--tiny", f"--out={out}"]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  report = json.loads(out.read_text())
  assert report["tiny"] and "--tiny" in report["argv"] and report["failed"] == []
  assert report["device"]["jax"] and report["versions"]["jax"]
  parts = report["parts"]
  assert list(parts) == ["dit", "step", "sample", "headline"]
  for name, part in parts.items():
    assert "error" not in part, (name, part.get("error"), part.get("traceback"))
    assert _positive(part["elapsed_s"]) and part["params"] > 0
    timings = list(_timings(part["times"]))
    assert timings, name
    for t in timings:
      assert _positive(t["median_s"]) and _positive(t["first_call_s"]), (name, t)
      assert all(_positive(s) for s in t["all_s"]) and t["compile_s"] >= 0, (name, t)

  dit = parts["dit"]
  assert _positive(dit["ratio_fwd"]) and _positive(dit["ratio_fwdbwd"])
  assert dit["output_rel_err"] < 0.1  # the same weights in both frameworks (bf16)
  assert dit["mfu"] is None  # no peak FLOP/s for a CPU

  step = parts["step"]
  assert _positive(step["steps_per_s"]) and _positive(step["model_flops"]) and step["finite"]
  assert _positive(step["times"]["compile_s"]) and step["mfu"] is None

  sample = parts["sample"]
  assert _positive(sample["dit_ratio"]) and _positive(sample["end_to_end_ratio"])
  assert sample["teacher"]["dit_calls"] == 100 and sample["student"]["dit_calls"] == 1

  head = parts["headline"]
  s = head["seconds"]
  assert all(_positive(s[k]) for k in ("encoders", "dit", "vae_decode", "total")), s
  assert s["encoders"] + s["dit"] + s["vae_decode"] <= s["total"], s
  assert head["paper_s"] == {"pose": 9.37, "teacher": 890.0}
