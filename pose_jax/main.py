"""Entry point: ``python -m pose_jax.main --config=configs/toy_i2v.py [--config.key=value ...]``.

Kept short: flags, multi-process JAX, config validation, then ``training.train.run``, which
builds everything else (data, models, state, evals) and prints the toy report for toy data.
A preempted run (SIGTERM) exits 0 after its checkpoint; rerunning the command resumes it.
"""

from __future__ import annotations

import jax
from absl import app, flags
from ml_collections import config_flags

from pose_jax import config as config_lib

_CONFIG = config_flags.DEFINE_config_file("config", "configs/toy_i2v.py", "Experiment config.")
_WORKDIR = flags.DEFINE_string(
  "workdir", "workdir/toy_i2v", "Run directory (local path or gs://...); rerunning resumes it."
)
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "host:port of process 0 (multi-process runs)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Number of JAX processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "This process's index.")
_DISTRIBUTED = flags.DEFINE_enum(
  "distributed",
  "auto",
  ["auto", "on", "off"],
  "jax.distributed.initialize: 'auto' calls it when --num_processes > 1 (with the coordinator "
  "flags); 'on' always calls it, letting JAX detect the cluster (multi-host TPU VMs: what "
  "launch/train.sh passes); 'off' never.",
)


def _init_distributed() -> None:
  explicit = _NUM_PROCESSES.value > 1
  if _DISTRIBUTED.value == "off" or (_DISTRIBUTED.value == "auto" and not explicit):
    return
  if explicit:
    jax.distributed.initialize(
      coordinator_address=_COORDINATOR.value,
      num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value,
    )
  else:
    jax.distributed.initialize()  # cluster auto-detection (TPU VM metadata, SLURM, ...)
  print(
    f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local "
    f"of {jax.device_count()} devices",
    flush=True,
  )


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _init_distributed()
  config = _CONFIG.value
  config_lib.validate(config, jax.device_count(), jax.process_count())
  from pose_jax.training import train  # here: keeps --help fast

  try:
    train.run(config, _WORKDIR.value)
  except train.Preempted as e:
    print(e, flush=True)
    raise SystemExit(0) from None


if __name__ == "__main__":
  app.run(main)
