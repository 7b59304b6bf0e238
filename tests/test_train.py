"""End-to-end training runs on the toy config: exact resume after SIGKILL, non-finite stop."""

import dataclasses
import glob
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from pose_jax import checkpoint as ckpt_lib
from pose_jax import train, video_io
from pose_jax.data import records
from tests.test_main import ROOT, _load

SMALL = [
  "--config=configs/toy_i2v.py", "--config.model.num_layers=2", "--config.data.size=32",
  "--config.pose.steps=(4,2,2)", "--config.ckpt.every=2", "--config.ckpt.keep=10",
  "--config.train.log_every=1", "--config.train.batch_size=8", "--config.eval.teacher_steps=2",
]  # fmt: skip
DEVICES = 8  # the reference run: one process, 8 devices


def _start(workdir, devices=DEVICES, process_id=0, num_processes=1, port=0):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  cmd = [sys.executable, "-m", "pose_jax.main", f"--workdir={workdir}", *SMALL]
  if num_processes > 1:
    cmd += [f"--coordinator_address=localhost:{port}", f"--num_processes={num_processes}",
            f"--process_id={process_id}"]  # fmt: skip
  return subprocess.Popen(
    cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )


def _finish(proc):
  out, _ = proc.communicate(timeout=900)
  assert proc.returncode == 0, out[-3000:]
  return out


def _wait_for_checkpoint(workdir, step, procs):
  done = os.path.join(workdir, "checkpoints", str(step))
  deadline = time.time() + 900
  while not os.path.isdir(done):
    for p in procs:
      assert p.poll() is None, p.stdout.read()[-3000:]
    assert time.time() < deadline
    time.sleep(0.2)


def _trace(workdir):
  per_step = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      rec = json.loads(line)
      # Train and eval records of a step merge; a resumed run rewrites the steps after its
      # checkpoint.
      per_step.setdefault(rec["step"], {}).update(rec)
  return per_step


def _assert_same_run(a_dir, b_dir, rtol=0.0):
  """Same final parameters (bitwise via final.json when ``rtol == 0``) and loss traces."""
  if rtol == 0.0:
    assert json.load(open(a_dir / "final.json")) == json.load(open(b_dir / "final.json"))
  a, b = _trace(a_dir), _trace(b_dir)
  assert sorted(a) == sorted(b) == list(range(1, 9))
  for step in a:
    for key in ("loss", "grad_norm/student"):
      np.testing.assert_allclose(a[step][key], b[step][key], rtol=rtol, err_msg=f"{step} {key}")


def _tensorboard_tags(workdir) -> set:
  """Scalar tags in the run's TensorBoard event files (TFRecord framing, Event protos)."""
  from tensorboardX.proto import event_pb2

  tags = set()
  for name in glob.glob(os.path.join(workdir, "tensorboard", "events.*")):
    data = open(name, "rb").read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos : pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
      tags |= {v.tag for v in event.summary.value}
      pos += 12 + length + 4
  return tags


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("full")
  return workdir, _finish(_start(workdir))


@pytest.mark.slow
def test_full_run_logs_phases_and_tensorboard(full_run):
  workdir, out = full_run
  assert "[pretrain] step 4/4" in out and "[equilibrium] step 8/8" in out
  assert "student_1_step" in out
  tags = _tensorboard_tags(workdir)
  assert {"loss", "loss/flow", "loss/dmd", "loss/d", "grad_norm/student"} <= tags, tags
  # Sample videos + proxy metrics at each phase end (eval.every = 0).
  assert "eval/student/first_frame_psnr" in tags and "eval/ema/flicker" in tags, tags
  assert sorted(os.listdir(workdir / "samples")) == ["step_4", "step_6", "step_8"]
  video = video_io.read_mp4(str(workdir / "samples" / "step_8" / "student_0.mp4"))
  assert video.shape == (9, 32, 32, 3) and video.std() > 1  # 9 frames of toy clip, not blank


@pytest.mark.slow
def test_exact_resume_after_sigkill(full_run, tmp_path):
  proc = _start(tmp_path)
  _wait_for_checkpoint(tmp_path, 4, [proc])  # killed inside the priming phase
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  out = _finish(_start(tmp_path))
  assert "resumed from step" in out
  _assert_same_run(full_run[0], tmp_path)


@pytest.mark.slow
def test_sigterm_checkpoints_exits_zero_and_resumes(full_run, tmp_path):
  proc = _start(tmp_path)
  _wait_for_checkpoint(tmp_path, 2, [proc])
  proc.send_signal(signal.SIGTERM)
  out = _finish(proc)  # exit status 0
  found = re.search(r"preempted: checkpoint written at step (\d+)", out)
  assert found, out[-2000:]
  step = int(found.group(1))
  assert 2 <= step < 8 and os.path.isdir(tmp_path / "checkpoints" / str(step))
  assert not os.path.exists(tmp_path / "final.json")
  out = _finish(_start(tmp_path))
  assert f"resumed from step {step}" in out
  _assert_same_run(full_run[0], tmp_path)


@pytest.mark.slow
def test_two_processes_checkpoint_resume_and_equal_one_process(full_run, tmp_path):
  """2 processes x 4 CPU devices (gloo collectives): train, SIGKILL both after a checkpoint,
  restart both, resume; the run equals the single-process 8-device run."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]

  def start_both():
    return [_start(tmp_path, 4, i, 2, port) for i in range(2)]

  procs = start_both()
  _wait_for_checkpoint(tmp_path, 4, procs)
  for p in procs:
    p.send_signal(signal.SIGKILL)
    p.wait()
  outs = [_finish(p) for p in start_both()]
  assert all("resumed from step" in o for o in outs)
  assert "process 1/2: 4 local of 8 devices" in outs[1]
  _assert_same_run(full_run[0], tmp_path, rtol=1e-5)


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
