"""Peak host memory of the trainer's start-up: a fresh run from a converted teacher, and a resume.

  python bench/startup_memory.py --dir=DIR [--width=1024 --layers=8 --ffn=4096]
      [--out=bench/results/startup_memory.json]

The toy config widened so that its weights dwarf the runtime (D = ``--width``: 160M parameters,
0.64 GB in fp32 at the defaults). Each measurement is its own process, which records its peak
resident memory (``VmHWM``) when its start-up is over, and exits:

* ``after_fresh`` / ``after_resume``: today's trainer's start-up itself
  (:func:`pose_jax.training.train.start_up`): models built abstract, the converted teacher read
  into its abstract target, the state jitted into its target (a fresh run) or restored into it
  (a resume).
* ``before_fresh`` / ``before_resume``: the same with commit 30782d9's order (before the restore
  into abstract targets), today's functions: every model built live (a random teacher), the
  converted teacher read over it, the state made by ``jax.jit(init_state)``; a resume then
  restored the checkpoint into that live state (orbax allocates a second one).
* ``main_fresh`` / ``main_resume``: ``python -m pose_jax.main`` itself, stopped at its first
  ``Lowered.compile`` (the step compile: data, models, teacher and state are all made by then;
  the fresh run also builds the toy data). ``train`` makes the checkpoint the resumes read: a
  run stopped the same way at its second phase's compile, after phase 1 (one step) was saved.
* ``baseline``: the imports, a mesh and one tiny jitted op: what every process holds anyway.

Reported: each peak minus the baseline, next to the bytes start-up must hold (teacher T and
train state S, from the abstract state). On a CPU host, device memory is host memory; on an
accelerator each child also records ``memory_stats()['peak_bytes_in_use']``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.chdir(ROOT)  # configs/ is imported relative to the repository root

from absl import app, flags  # noqa: E402

# Not --workdir / --config: a child runs pose_jax.main in-process, and those are its flags.
_DIR = flags.DEFINE_string("dir", "", "Scratch directory (new).")
_WIDTH = flags.DEFINE_integer("width", 1024, "DiT width D (heads of 64).")
_LAYERS = flags.DEFINE_integer("layers", 8, "DiT blocks.")
_FFN = flags.DEFINE_integer("ffn", 4096, "DiT feed-forward width.")
_OUT = flags.DEFINE_string("out", os.path.join(ROOT, "bench/results/startup_memory.json"), "")
_CHILD = flags.DEFINE_string("child", "", "Internal: the measurement this process makes.")
_RECORD = flags.DEFINE_string("record", "", "Internal: where the child writes its numbers.")

GB = 1e9


def settings(workdir: str) -> dict:
  """The widened toy: ``config`` keys shared by every measurement."""
  return {
    "model.num_heads": _WIDTH.value // 64,
    "model.head_dim": 64,
    "model.ffn_dim": _FFN.value,
    "model.num_layers": _LAYERS.value,
    "ckpt.init_from": os.path.join(workdir, "teacher"),
    "pose.steps": (1, 1),
    "ckpt.every": 1,
    "ckpt.async_save": False,
    "eval.every": 0,
    "eval.report": False,
  }


def overrides(workdir: str) -> list[str]:
  """:func:`settings` as ``python -m pose_jax.main`` flags."""
  flat = lambda v: str(v).replace(" ", "")
  return ["--config=configs/toy_i2v.py"] + [
    f"--config.{k}={flat(v)}" for k, v in settings(workdir).items()
  ]


def peak_bytes() -> int:
  with open("/proc/self/status") as f:
    line = next(x for x in f if x.startswith("VmHWM:"))
  return int(line.split()[1]) * 1024


def record(path: str, **extra) -> None:
  import jax

  stats = jax.devices()[0].memory_stats() or {}
  out = dict(host_peak_bytes=peak_bytes(), device_peak_bytes=stats.get("peak_bytes_in_use"))
  with open(path, "w") as f:
    json.dump({**out, **extra}, f)


def stop_at_compile(path: str, nth: int) -> None:
  """Record and exit at the ``nth`` ``Lowered.compile`` (the trainer compiles each phase so, in a
  thread named for the phase)."""
  import threading

  import jax

  seen = [0]
  original = jax.stages.Lowered.compile

  def compile_(self, *a, **k):
    seen[0] += 1
    if seen[0] == nth:
      record(path, compiled_by=threading.current_thread().name)
      os._exit(0)
    return original(self, *a, **k)

  jax.stages.Lowered.compile = compile_


def load_config(workdir: str):
  from configs import toy_i2v

  config = toy_i2v.get_config()
  for key, value in settings(workdir).items():
    section, name = key.split(".")
    config[section][name] = value
  return config


def make_teacher(workdir: str) -> None:
  from flax import nnx

  from pose_jax import config as config_lib
  from pose_jax.convert import orbax_io
  from pose_jax.models.wan import WanTransformer

  cfg = config_lib.wan_config(load_config(workdir).model)
  params = nnx.to_pure_dict(nnx.state(WanTransformer(cfg, rngs=nnx.Rngs(0)), nnx.Param))
  meta = orbax_io.model_meta(cfg, {"bench": "startup_memory (random weights)"})
  orbax_io.save_model_checkpoint(os.path.join(workdir, "teacher"), params, meta, overwrite=True)


def state_bytes(workdir: str) -> dict:
  """Bytes of the teacher and of the train state, from the abstract state of the config."""
  import jax

  from pose_jax import config as config_lib
  from pose_jax import sharding as shd
  from pose_jax.pose import models as pose_models
  from pose_jax.pose.config import PoseConfig
  from pose_jax.training import optim
  from pose_jax.training import state as state_lib

  config = load_config(workdir)
  knobs = PoseConfig.from_config(config.pose)
  mesh = shd.make_mesh(config.mesh.shape)
  _, *abstract = pose_models.build(config_lib.wan_config(config.model), knobs, 0, mesh, True)
  tx = optim.make_optimizer(config.optim, knobs.phases[0], 1, knobs)
  target = state_lib.abstract_state(tx, *abstract, knobs, 0, mesh)
  size = lambda tree: sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(tree))
  return dict(teacher=size(abstract[0]), state=size(target))


def replay(workdir: str, order: str, resume: bool) -> None:
  """The state-making part of start-up: today's trainer's own (``after``:
  :func:`pose_jax.training.train.start_up`) or commit 30782d9's order (``before``), with today's
  functions; ``resume`` restores the checkpoint of ``DIR/run`` (saved at phase 1's end)."""
  import functools

  import jax

  from pose_jax import config as config_lib
  from pose_jax import sharding as shd
  from pose_jax.convert import orbax_io
  from pose_jax.pose import models as pose_models
  from pose_jax.pose.config import PoseConfig
  from pose_jax.training import checkpoint, optim, train
  from pose_jax.training import resume as resume_lib
  from pose_jax.training import state as state_lib

  config = load_config(workdir)
  knobs = PoseConfig.from_config(config.pose)
  mesh = shd.make_mesh(config.mesh.shape)
  cfg = config_lib.wan_config(config.model)
  mngr = checkpoint.manager(os.path.join(workdir, "run" if resume else "empty"), 1, 2, False)
  if order == "after":  # the trainer's own start-up (DIR/empty has no checkpoint: a fresh run)
    _, *abstract = pose_models.build(cfg, knobs, config.seed, mesh, abstract=True)
    metas = resume_lib.readable_metas(mngr)
    state, teacher = train.start_up(config, workdir, mngr, metas, None, mesh, abstract)[4:]
  else:  # 30782d9: every model live (a random teacher), the converted one read over it
    _, teacher, lora, head = pose_models.build(cfg, knobs, config.seed, mesh)
    _, teacher = orbax_io.restore_params(config.ckpt.init_from, mesh=mesh, like=teacher)
    tx = optim.make_optimizer(config.optim, knobs.phases[0], 1, knobs)
    init = functools.partial(state_lib.init_state, tx, knobs=knobs, seed=config.seed)
    with shd.use_mesh(mesh):
      state = jax.jit(init)(teacher, lora, head)  # a resume: only the restore target
    if resume:
      state = checkpoint.restore(mngr, mngr.latest_step(), state)[0]
  jax.block_until_ready((state, teacher))


def child(name: str, path: str) -> None:
  workdir = _DIR.value
  if name == "baseline":
    import jax
    import jax.numpy as jnp

    import pose_jax.main  # noqa: F401  (the trainer's imports)
    from pose_jax import sharding as shd

    shd.make_mesh((1, 1, 1, 1))
    jax.block_until_ready(jax.jit(lambda x: x + 1)(jnp.zeros(4)))
    record(path)
  elif name == "teacher":
    make_teacher(workdir)
    record(path, **state_bytes(workdir))
  elif name.startswith(("before_", "after_")):
    order, kind = name.split("_")
    replay(workdir, order, resume=kind == "resume")
    record(path)
  else:  # main_fresh (a fresh workdir), train (stops after phase 1), main_resume (its resume)
    import runpy

    run = "fresh" if name == "main_fresh" else "run"
    stop_at_compile(path, 2 if name == "train" else 1)
    sys.argv = ["main", *overrides(workdir), f"--workdir={os.path.join(workdir, run)}"]
    runpy.run_module("pose_jax.main", run_name="__main__")


def measure(name: str, workdir: str) -> dict:
  path = os.path.join(workdir, f"{name}.json")
  cmd = [sys.executable, os.path.abspath(__file__), f"--dir={workdir}", f"--child={name}"]
  cmd += [f"--record={path}", f"--width={_WIDTH.value}", f"--layers={_LAYERS.value}"]
  cmd += [f"--ffn={_FFN.value}"]
  done = subprocess.run(cmd, capture_output=True, text=True)
  if done.returncode or not os.path.exists(path):
    raise RuntimeError(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
  with open(path) as f:
    return json.load(f)


def main(argv):
  del argv
  if _CHILD.value:
    return child(_CHILD.value, _RECORD.value)
  if not _DIR.value:
    raise app.UsageError("--dir is required")
  workdir = os.path.abspath(_DIR.value)
  for sub in ("fresh", "run", "empty"):
    if os.path.exists(os.path.join(workdir, sub)):
      raise app.UsageError(f"{workdir}/{sub} exists: give a new --dir")
  os.makedirs(workdir, exist_ok=True)
  sizes = measure("teacher", workdir)
  rows = {}
  order = ("baseline", "before_fresh", "after_fresh", "main_fresh")
  order += ("train", "before_resume", "after_resume", "main_resume")  # train: the resumes' run
  for name in order:
    rows[name] = measure(name, workdir)
    print(name, json.dumps(rows[name]), flush=True)
  base = rows["baseline"]["host_peak_bytes"]
  table = {
    name: dict(r, host_above_baseline_gb=round((r["host_peak_bytes"] - base) / GB, 3))
    for name, r in rows.items()
  }
  out = dict(
    command="python bench/startup_memory.py " + " ".join(sys.argv[1:]),
    model=dict(width=_WIDTH.value, layers=_LAYERS.value, ffn=_FFN.value),
    teacher_gb=round(sizes["teacher"] / GB, 3),
    state_gb=round(sizes["state"] / GB, 3),
    peaks=table,
  )
  with open(_OUT.value, "w") as f:
    json.dump(out, f, indent=1)
  for name, r in table.items():
    print(f"{name:14s} {r['host_above_baseline_gb']:7.3f} GB above baseline")
  print(f"teacher {out['teacher_gb']} GB, train state {out['state_gb']} GB")


if __name__ == "__main__":
  app.run(main)
