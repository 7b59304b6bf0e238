"""Entry point: ``python -m pose_jax.main --config=configs/toy_i2v.py [--config.key=value ...]``.

Kept short: flags, multi-process JAX, config validation, then ``training.train.run``, which
builds everything else (data, models, state, evals) and prints the toy report for toy data.
A preempted run (SIGTERM, or Ctrl-C) exits 0 once its latest checkpoint is current; rerunning
the command resumes it. Config faults print one ``error:`` line naming the key and exit 2.
The console shows the run's own lines (phases, losses with steps/s and ETA at log steps,
checkpoints, samples, the report) and library warnings; ``--verbosity=0`` adds the libraries'
INFO logs (orbax, absl).
"""

from __future__ import annotations

import os
import re
import signal
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from pose_jax import config as config_lib

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


def _config_error(message: str):
  """One line on stderr and exit status 2: a config that cannot run does no work. A message
  carrying a traceback (a config file's own error) is cut to its first and last lines."""
  lines = [x.strip() for x in message.strip().splitlines() if x.strip()]
  if len(lines) > 1:
    message = f"{lines[0].removesuffix(':')}: {lines[-1]}"
  print(f"error: {message}", file=sys.stderr, flush=True)
  raise SystemExit(2)


def _override_error(argv: list[str], error: Exception) -> str:
  """``--config.a.b=v`` naming a key the config lacks, said with its dotted key and the
  closest valid key (ml_collections' message names only the leaf)."""
  text = str(error.args[0] if error.args else error).replace("\\n", "\n").replace("\\'", "'")
  leaf = re.search(r"'(\w+)'", text)
  near = re.search(r'Did you mean "(\w+)"', text)
  for arg in argv:
    name = arg[2:].split("=", 1)[0] if arg.startswith("--config.") else ""
    parts = name.split(".")
    if leaf and leaf.group(1) in parts:
      i = parts.index(leaf.group(1))
      parent = ".".join(parts[:i])
      hint = f"; did you mean {parent}.{near.group(1)}?" if near else ""
      return f"--{name}: {parent} has no key {leaf.group(1)!r}{hint}"
  return f"bad --config override: {text}"


try:  # ml_collections applies --config.KEY overrides found in sys.argv right here
  _CONFIG = config_flags.DEFINE_config_file("config", "configs/toy_i2v.py", "Experiment config.")
except (AttributeError, KeyError) as _e:
  _config_error(_override_error(sys.argv, _e))


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with config faults (a missing config file, a misspelt override, a
  value of the wrong type) as one line naming the flag, and exit status 2."""
  try:
    rest = flags.FLAGS(argv)
    _CONFIG.value.keys()  # a config file that failed to load raises here
  except flags.Error as e:
    _config_error(str(e))
  except (AttributeError, KeyError) as e:
    _config_error(_override_error(argv, e))
  except OSError as e:
    cause = e.__cause__ or e.__context__ or e
    _config_error(f"--config={flags.FLAGS['config'].serialize().split('=', 1)[-1]}: {cause}")
  return rest


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


def _early_signal(signum, frame) -> None:
  del frame
  name = signal.Signals(signum).name
  print(f"{name} before training started: nothing to save; exiting", flush=True)
  raise SystemExit(0)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # library INFO logs (orbax, absl) with --verbosity=0
    logging.set_verbosity(logging.WARNING)
  if _NUM_PROCESSES.value == 1 and _DISTRIBUTED.value != "on":  # several: JAX's service
    for s in (signal.SIGTERM, signal.SIGINT):  # until train.run installs its own handlers
      signal.signal(s, _early_signal)
  _init_distributed()
  config = _CONFIG.value
  try:
    config_lib.validate(config, jax.device_count(), jax.process_count())
    config_lib.check_paths(config)
  except config_lib.ConfigError as e:
    _config_error(str(e))
  from pose_jax import data, paths  # here (with training): keeps --help fast
  from pose_jax.training import loop, resume, train

  try:
    train.run(config, _WORKDIR.value)
  except train.Preempted as e:
    print(e, flush=True)
    if loop.compile_in_flight():  # the run's saves are complete (train.run waited for them), but
      sys.stderr.flush()  # interpreter shutdown under a thread still in XLA's compiler aborts
      os._exit(0)  # (std::terminate, exit -6): leave without it
    raise SystemExit(0) from None
  except (config_lib.ConfigError, data.DataMismatch, paths.LocalOnly) as e:  # workdir, data
    _config_error(str(e))
  except resume.CheckpointDamaged as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    raise SystemExit(1) from None


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
