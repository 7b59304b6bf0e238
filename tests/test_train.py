"""End-to-end training runs on the toy config: exact resume after SIGKILL, non-finite stop."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from pose_jax import checkpoint as ckpt_lib
from pose_jax import train
from pose_jax.data import records
from tests.test_main import ROOT, _load

SMALL = [
  "--config=configs/toy_i2v.py", "--config.model.num_layers=2", "--config.data.size=32",
  "--config.pose.steps=(4,2,2)", "--config.ckpt.every=2", "--config.ckpt.keep=10",
  "--config.train.log_every=1", "--config.train.batch_size=4", "--config.eval.teacher_steps=2",
]  # fmt: skip


def _run(workdir, wait_for_step=None):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  cmd = [sys.executable, "-m", "pose_jax.main", f"--workdir={workdir}", *SMALL]
  proc = subprocess.Popen(
    cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )
  if wait_for_step is None:
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    return out
  done = os.path.join(workdir, "checkpoints", str(wait_for_step))
  deadline = time.time() + 900
  while not os.path.isdir(done):
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    assert time.time() < deadline
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  return None


def _trace(workdir):
  per_step = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      rec = json.loads(line)
      per_step[rec["step"]] = rec  # a resumed run rewrites the steps after its checkpoint
  return per_step


@pytest.mark.slow
def test_exact_resume_after_sigkill(tmp_path):
  full, killed = tmp_path / "full", tmp_path / "killed"
  out = _run(full)
  assert "[pretrain] step 4/4" in out and "[equilibrium] step 8/8" in out
  assert "student_1_step" in out
  _run(killed, wait_for_step=4)  # killed inside the priming phase, after a checkpoint
  out = _run(killed)
  assert "resumed from step" in out
  assert json.load(open(full / "final.json")) == json.load(open(killed / "final.json"))
  a, b = _trace(full), _trace(killed)
  assert sorted(a) == sorted(b) == list(range(1, 9))
  for step in a:
    for key in ("loss", "grad_norm/student"):
      assert a[step][key] == b[step][key], (step, key)


@dataclasses.dataclass(frozen=True)
class _PoisonedSource(records.SyntheticSource):
  """Examples 8.. have NaN latents: with batch 8 and no shuffle, every third batch is clean."""

  def __getitem__(self, index):
    ex = super().__getitem__(index)
    if index >= 8:
      ex["latents"] = np.full_like(ex["latents"], np.nan)
    return ex


def test_non_finite_steps_stop_the_run_and_keep_the_checkpoint(tmp_path):
  config = _load("toy_i2v")
  config.model.num_layers = 2
  config.pose.phases = ("pretrain",)
  config.pose.steps = (10,)
  config.ckpt.every = 1
  config.ckpt.async_save = False
  config.train.max_bad_steps = 2
  config.train.log_every = 1
  iterator = records.make_iterator(
    _PoisonedSource(num_examples=24), 8, shuffle=False, shard_by_process=False
  )
  with pytest.raises(train.NonFiniteError, match="2 consecutive non-finite steps at step 3"):
    train.run(config, str(tmp_path), iterator)
  assert sorted(int(p) for p in os.listdir(tmp_path / "checkpoints") if p.isdigit()) == [1, 2]
  lines = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
  assert [x["finite"] for x in lines] == [1.0, 0.0, 0.0] and lines[-1]["skipped"] == 2.0
  mngr = ckpt_lib.manager(str(tmp_path), every=1, keep=5, async_save=False)
  saved = mngr.restore(
    2, args=ckpt_lib.ocp.args.Composite(state=ckpt_lib.ocp.args.StandardRestore())
  )
  leaves = jax.tree.leaves(saved["state"]["params"]["student"])
  assert leaves and all(np.all(np.isfinite(np.asarray(x))) for x in leaves)
