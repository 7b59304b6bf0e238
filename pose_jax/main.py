"""Entry point: ``python -m pose_jax.main --config=configs/toy_i2v.py [--config.key=value ...]``."""

from __future__ import annotations

import jax
from absl import app, flags
from ml_collections import config_flags

from pose_jax import config as config_lib

_CONFIG = config_flags.DEFINE_config_file("config", "configs/toy_i2v.py", "Experiment config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (local path or gs://...).")
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "host:port of process 0 (multi-process runs)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Number of JAX processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "This process's index.")


def _init_distributed() -> None:
  if _NUM_PROCESSES.value > 1:
    jax.distributed.initialize(
      coordinator_address=_COORDINATOR.value,
      num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value,
    )


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _init_distributed()
  config = _CONFIG.value
  config_lib.validate(config, jax.device_count())
  from pose_jax import forward_demo  # the training loop replaces this when it lands

  forward_demo.run(config)


if __name__ == "__main__":
  app.run(main)
