"""Ahead-of-time compile of every POSE step for a TPU slice, from a CPU host (no TPU needed).

  python -m pose_jax.aot --config=configs/wan_i2v.py:480p --topology=v5p-64
      [--phase=all|pretrain|priming|equilibrium|sample[,...]] [--out=FILE.json]
      [--sample_batch=N] [--config.x=...]

Needs ``jax[tpu]`` (libtpu): ``python3 -m venv .venv-tpu && .venv-tpu/bin/pip install -r
requirements-tpu.txt -e .``. Compiles each requested phase's fused training step as the trainer
builds it, and ``sample`` (the student's one-step forward), for the topology
(:mod:`pose_jax.aot.compile`); prints per-device memory against the device's HBM, model FLOPs
and the step time at 40% MFU, and writes the report as JSON to ``--out``.

JAX stays off any local accelerator: the CPU is the default backend and libtpu only compiles.
Errors print ``error: ...``: a bad, unknown or missing flag (``--topology``, ``--phase``, ...)
exits 2 naming it; a phase that does not fit in HBM exits 1 naming the phase and its largest
buffers.
"""

import os

# Before jax is imported (libtpu reads these when it loads): CPU default backend, no start-up
# probing of a local TPU, several compiles may load libtpu at once (no lockfile).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-8")

import json
import sys
from collections.abc import Sequence

import jax
from absl import app, flags
from ml_collections import config_flags

from pose_jax import config as config_lib
from pose_jax.aot import compile as aot
from pose_jax.aot.topology import parse_topology
from pose_jax.pose.config import PoseConfig

# The pose_jax package may have imported jax before the lines above ran.
jax.config.update("jax_platforms", os.environ["JAX_PLATFORMS"])

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config.")
_TOPOLOGY = flags.DEFINE_string("topology", "v5p-64", "Cloud TPU name, e.g. v5p-64, v6e-256.")
_PHASE = flags.DEFINE_string(
  "phase", "all", "all, or comma-separated phases of config.pose.phases and/or 'sample'."
)
_OUT = flags.DEFINE_string("out", "", "Write the report as JSON here.")
_SAMPLE_BATCH = flags.DEFINE_integer(
  "sample_batch", None, "Global batch of the sampler compile (default: data x fsdp)."
)


def _exit(error, status: int):
  print(f"error: {error}", file=sys.stderr)
  sys.exit(status)


def _parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing; a bad value, an unknown or a missing flag exits 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _exit(e, 2)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    _exit(f"unexpected arguments {argv[1:]}", 2)
  config = _CONFIG.value
  phases = tuple(p.strip() for p in _PHASE.value.split(",") if p.strip())
  try:
    parse_topology(_TOPOLOGY.value)
  except ValueError as e:
    _exit(f"--topology={_TOPOLOGY.value}: {e}", 2)
  try:
    aot.check_phases(phases, PoseConfig.from_config(config.pose).phases)
  except ValueError as e:
    _exit(e, 2)
  try:
    report = aot.run(config, _TOPOLOGY.value, phases, _SAMPLE_BATCH.value)
  except config_lib.ConfigError as e:  # the config does not suit the topology
    _exit(e, 2)
  if _OUT.value:
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    with open(_OUT.value, "w") as f:
      json.dump(report, f, indent=1)
      f.write("\n")
    print(f"wrote {_OUT.value}")
  bad = {k: v for k, v in report["phases"].items() if not v["fits"]}
  if bad:
    hbm = report["topology"]["hbm_gib_per_device"]
    lines = []
    for name, v in bad.items():
      why = v.get("error") or f"peak {v['peak_gib']:.2f} GiB > {hbm} GiB"
      lines.append(
        f"phase {name!r} does not fit on {_TOPOLOGY.value} ({hbm} GiB HBM/device):\n{why}"
      )
    _exit("\n".join(lines), 1)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main, flags_parser=_parse_flags)
