"""Shared test helpers: torch references, tiny builders, numerics, toy runs, launch set-up."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# XLA:CPU at optimisation level 0, without its fusion emitters: the tests' programs are
# compile-bound, and so they compile 2-3x faster (a toy run's three step compiles took 14, 27 and
# 41 s against 38, 60 and 125 s, same machine, same load; that run's report was the same to
# every printed digit). Results are compared within a run, never with numbers stored from
# another setting. conftest.py sets it for the tests' own process, subprocess runs take it too.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


def xla_flags(devices: int) -> str:
  """``XLA_FLAGS`` for a subprocess run on ``devices`` fake CPU devices."""
  return f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}"
