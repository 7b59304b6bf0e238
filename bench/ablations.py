"""POSE against its ablations on the toy, all from one shared teacher: one reproducible table.

  python bench/ablations.py --workdir=DIR [--seeds=3] [--rows=pose_1,no_priming,...]
      [--teacher=MODEL_CKPT] [--teacher_steps=50] [--config.KEY=VALUE ...]

1. The teacher: ``--teacher`` (a model checkpoint, as ``pose_jax.convert import`` writes), else
   the config's ``ckpt.init_from`` (the toy default: the committed ``assets/toy_teacher``), else
   (``configs/toy_i2v.py:scratch``) ``DIR/teacher``, pretrained once by the config's
   ``pretrain`` phase and kept. The toy data are built once in ``DIR/data`` (the config's
   ``seed``).
2. Each row of :data:`ROWS` x seed: the recipe's distillation phases from that teacher
   (``ckpt.init_from``; the training seed varies, the data do not) in ``DIR/runs/ROW_sSEED``,
   then its samples of every held-out clip from the seed's noise, scored by
   :func:`bench.ablation_report.score` into ``DIR/results/ROW_sSEED.json``. A row whose JSON
   exists is not rerun: an interrupted bench resumes where it stopped (a training run
   interrupted midway resumes from its own checkpoints).
3. ``bench/ablation_report.py`` writes the table (mean +- spread over seeds) as JSON and
   markdown, a PNG grid (one row per recipe, the same prompts) and a static HTML page with
   the videos side by side into ``DIR``; ``--out`` (default ``bench/results/ablations``) gets
   the JSON, markdown and grid.

Distillation rows train the config's distillation steps (priming + equilibrium); rows that drop
a phase give its steps to the phase they keep, so every row trains the same number of steps.
"""

from __future__ import annotations

import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.chdir(ROOT)  # configs/ is imported relative to the repository root

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from bench import ablation_report  # noqa: E402
from bench.ablation_recipes import ROWS, row_config  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/toy_i2v.py", "Experiment config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Bench directory (resumable).", required=True)
_SEEDS = flags.DEFINE_integer("seeds", 3, "Training seeds per row (0, 1, ...).")
_ROWS = flags.DEFINE_list("rows", list(ROWS), f"Rows to run, of {list(ROWS)}.")
_TEACHER = flags.DEFINE_string("teacher", "", "Teacher model checkpoint (default: pretrain one).")
_TEACHER_STEPS = flags.DEFINE_integer("teacher_steps", 50, "Euler steps of the teacher_cfg row.")
_FVD_STEPS = flags.DEFINE_integer("fvd_steps", 300, "Training steps of the toy FVD's network.")
_OUT = flags.DEFINE_string("out", os.path.join(ROOT, "bench", "results", "ablations"), "")


def build_data(config, workdir: str):
  """``(train_dir, eval batch)``: the toy data in ``workdir/data``, built once."""
  from pose_jax.data import source

  _, eval_batch = source.from_config(config, workdir)
  return os.path.join(workdir, "data", "train"), eval_batch


def ensure_teacher(config, workdir: str, train_dir: str) -> tuple[str, float | None]:
  """``(teacher checkpoint, pretraining wall seconds | None if it was there)``."""
  from flax import nnx

  from pose_jax import config as config_lib
  from pose_jax.convert import orbax_io
  from pose_jax.data import records
  from pose_jax.training import train

  path = os.path.join(workdir, "teacher")
  if orbax_io.is_model_checkpoint(path):
    return path, None
  if "pretrain" not in config.pose.phases:
    raise ValueError("no --teacher and no pretrain phase in config.pose.phases to make one")
  c = config.copy_and_resolve_references()
  c.pose.phases, c.pose.steps = ("pretrain",), (config.pose.steps[0],)
  it = records.make_iterator(train_dir, c.train.batch_size, seed=c.seed)
  t0 = time.perf_counter()
  state = train.run(c, os.path.join(workdir, "teacher_run"), data=(it, None))
  wall = time.perf_counter() - t0
  params = nnx.to_pure_dict(state.params["student"])
  meta = orbax_io.model_meta(config_lib.wan_config(c.model), {"bench": "ablations pretrain"})
  orbax_io.save_model_checkpoint(path, params, meta)
  return path, wall


def run_row(config, name: str, seed: int, teacher: str, train_dir: str, eval_batch, fvd, workdir):
  """Trains (unless a teacher row) and scores ``name`` at ``seed``; returns its result."""
  import jax

  from pose_jax.data import records
  from pose_jax.training import train

  row = ROWS[name]
  wall = None  # a teacher row trains nothing (the teacher's pretraining: results/teacher.json)
  if row.phases:
    c = row_config(config, row, seed, teacher)
    it = records.make_iterator(train_dir, c.train.batch_size, seed=seed)
    t0 = time.perf_counter()
    state = train.run(c, os.path.join(workdir, "runs", f"{name}_s{seed}"), data=(it, None))
    wall = time.perf_counter() - t0
    params = jax.tree.map(lambda a: a, state.params["student"])
  else:
    c = config.copy_and_resolve_references()
    params = load_teacher(c, teacher)
  steps = _TEACHER_STEPS.value if row.sampler == "teacher" else row.steps
  videos = os.path.join(workdir, "videos", name) if seed == 0 else None
  scores = ablation_report.score(
    c, params, eval_batch, row.sampler, steps, seed, fvd, config.seed, videos, timed=seed == 0
  )
  wall = None if wall is None else round(wall, 1)
  return {"row": name, "what": row.what, "seed": seed, "train_wall_s": wall, **scores}


def load_teacher(config, path: str):
  """The teacher checkpoint at ``path`` as the student DiT's parameter State."""
  from pose_jax import config as config_lib
  from pose_jax.convert import orbax_io
  from pose_jax.pose import models as pose_models
  from pose_jax.pose.config import PoseConfig

  knobs = PoseConfig.from_config(config.pose)
  like = pose_models.build(config_lib.wan_config(config.model), knobs)[1]
  return orbax_io.restore_params(path, like=like)[1]  # shapes checked against config.model


def real_clips(config, train_dir: str, eval_batch, workdir: str):
  """The toy FVD (:func:`bench.ablation_report.fvd_features`, trained on the decoded real
  training clips) and the real held-out clips' videos in ``workdir/videos/real``."""
  from pose_jax.data import records
  from pose_jax.data.toy_codec import ToyCodec
  from pose_jax.sampling import video_io

  codec = ToyCodec.from_config(config.data)
  n = records.read_meta(train_dir)["num_examples"]
  it = records.make_iterator(train_dir, n, shuffle=False, shard_by_process=False, with_strings=True)
  train = next(it)
  it.close()
  unit = lambda latents: np.clip((np.asarray(codec.decode(np.asarray(latents))) + 1) / 2, 0, 1)
  real = unit(eval_batch["latents"])
  fvd = ablation_report.fvd_features(
    unit(train["latents"]), train["key"], real, config.seed, _FVD_STEPS.value
  )
  folder = os.path.join(workdir, "videos", "real")
  ablation_report.save_videos(folder, video_io.to_uint8(real), config.eval.fps)
  captions = [str(c) for c in np.asarray(eval_batch["caption"]).ravel()]
  with open(os.path.join(folder, "captions.json"), "w") as f:
    json.dump([captions[i] for i in ablation_report.grid_clips(len(captions))], f)
  return fvd


def main(argv):
  del argv

  config, workdir = _CONFIG.value, os.path.abspath(_WORKDIR.value)
  import jax  # seeds of a row (and reruns) compile the same programs: keep them on disk

  jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "jax_cache"))
  unknown = [r for r in _ROWS.value if r not in ROWS]
  if unknown or _SEEDS.value < 1:
    raise app.UsageError(f"unknown rows {unknown} (of {list(ROWS)}) or --seeds < 1")
  train_dir, eval_batch = build_data(config, workdir)
  teacher, teacher_wall = _TEACHER.value or config.ckpt.init_from, None
  if not teacher:
    teacher, teacher_wall = ensure_teacher(config, workdir, train_dir)
  fvd = real_clips(config, train_dir, eval_batch, workdir)
  results = os.path.join(workdir, "results")
  os.makedirs(results, exist_ok=True)
  if teacher_wall is not None:
    with open(os.path.join(results, "teacher.json"), "w") as f:
      json.dump({"pretrain_wall_s": round(teacher_wall, 1), "checkpoint": teacher}, f)
  for name in _ROWS.value:
    for seed in range(_SEEDS.value):  # teacher rows: the seed of the sampling noise only
      out = os.path.join(results, f"{name}_s{seed}.json")
      if os.path.exists(out):
        continue
      result = run_row(config, name, seed, teacher, train_dir, eval_batch, fvd, workdir)
      tmp = out + ".tmp"
      with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
      os.replace(tmp, out)  # whole or absent: a killed bench reruns the row
      print(json.dumps({k: result[k] for k in ("row", "seed", "motion_accuracy")}), flush=True)
  command = "python bench/ablations.py " + " ".join(sys.argv[1:])
  ablation_report.write(workdir, _OUT.value, [r for r in ROWS if r in _ROWS.value], command)


if __name__ == "__main__":
  app.run(main)
