"""Entry point: ``python -m pose_jax.main --config=configs/toy_i2v.py [--config.key=value ...]``."""

from __future__ import annotations

import os

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


def _data(config, workdir: str):
  """``(train iterator, eval batch | None)`` for ``config.data``."""
  from pose_jax.data import records

  per_process = config.train.batch_size // jax.process_count()
  if config.data.kind == "toy":
    from pose_jax.data import toy

    root = os.path.join(workdir, "data")
    if jax.process_count() > 1:  # deterministic: each process builds its own copy, no races
      root = os.path.join(root, f"process_{jax.process_index()}")
    if not os.path.exists(os.path.join(root, "train", records.META)):
      toy.build_dataset(root, size=config.data.size, frames=config.data.frames, seed=config.seed)
    train_dir, eval_dir = os.path.join(root, "train"), os.path.join(root, "eval")
  else:
    train_dir, eval_dir = config.data.path, config.data.get("eval_path", "")
  iterator = records.make_iterator(train_dir, per_process, seed=config.seed)
  eval_batch = None
  if eval_dir and os.path.exists(os.path.join(eval_dir, records.META)):
    n = min(8, records.read_meta(eval_dir)["num_examples"])
    eval_batch = next(records.make_iterator(eval_dir, n, shuffle=False, shard_by_process=False))
  return iterator, eval_batch


def _eval_sampler(config, eval_batch):
  """Sample videos + proxy metrics at eval steps: toy codec for toy data, the Wan VAE of
  ``config.eval.pipeline`` for real data (none without it)."""
  if eval_batch is None:
    return None
  from pose_jax.training import evals

  if config.data.kind == "toy":
    decode = evals.toy_decoder()
  elif config.eval.pipeline:
    decode = evals.vae_decoder(config.eval.pipeline)
  else:
    print("eval: no config.eval.pipeline (a diffusers folder with the VAE): no sample videos")
    return None
  return evals.EvalSampler(
    _WORKDIR.value,
    eval_batch,
    decode,
    config_lib.wan_config(config.model),
    config.eval.every,
    fps=config.eval.fps,
  )


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _init_distributed()
  config = _CONFIG.value
  config_lib.validate(config, jax.device_count(), jax.process_count())
  from pose_jax.training import train  # here: keeps --help fast

  iterator, eval_batch = _data(config, _WORKDIR.value)
  try:
    result = train.run(config, _WORKDIR.value, iterator, _eval_sampler(config, eval_batch))
  except train.Preempted as e:
    print(e, flush=True)
    raise SystemExit(0) from None
  if eval_batch is not None and config.data.kind == "toy":
    from pose_jax.training import toy_eval

    report = toy_eval.report(
      result.models,
      result.state,
      result.teacher,
      eval_batch,
      teacher_steps=config.eval.teacher_steps,
      shift=config.pose.flow_shift,
      cfg=config.pose.cfg_real,
    )
    print("one-step samples on held-out photos (toy codec, decoded):")
    for name, m in report.items():
      print(f"  {name:18s} " + "  ".join(f"{k}={v:.4f}" for k, v in m.items()))


if __name__ == "__main__":
  app.run(main)
