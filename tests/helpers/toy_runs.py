"""Subprocess runs of ``python -m pose_jax.main`` on a small toy config, shared by the end-to-end
tests (resume, preemption, multi-process, gs://), and the one reference run they all compare
with. Workdirs may be local or ``gs://`` (read through etils epath)."""

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np
from etils import epath
from filelock import FileLock

from tests.helpers import ROOT, xla_flags

SMALL = [
  "--config=configs/toy_i2v.py:scratch",  # pretrains (a smaller model than the committed teacher)
  "--config.model.num_layers=2",
  # D = 64 instead of the toy's 192: these runs test checkpoints, signals and resumes, not
  # sample quality, and the narrow model steps and compiles about 3x faster.
  "--config.model.num_heads=2",
  "--config.model.ffn_dim=128",
  "--config.data.size=32",
  "--config.pose.steps=(4,2,2)",
  "--config.ckpt.every=2",
  "--config.ckpt.keep=10",
  "--config.train.log_every=1",
  "--config.train.batch_size=8",
  "--config.eval.teacher_steps=2",
  "--config.eval.report=False",  # the final toy report (12 s a run): only the reference prints it
]
DEVICES = 8  # the reference run: one process, 8 devices


def start(
  workdir,
  devices=DEVICES,
  process_id=0,
  num_processes=1,
  port=0,
  extra=(),
  compile_cache=True,
  data_from=None,
):
  """``python -m pose_jax.main`` on the SMALL config, unbuffered output on ``proc.stdout``.
  ``compile_cache=False``: compile for real (a test timing a signal during a compile).
  ``data_from``: a finished run's workdir (the reference) whose toy clips the run starts with,
  instead of building the same clips again (20-30 s a run; the reference builds them itself)."""
  if data_from is not None:
    _copy_toy_data(data_from, workdir, process_id if num_processes > 1 else None)
  env = dict(
    os.environ,
    XLA_FLAGS=xla_flags(devices),
    PYTHONUNBUFFERED="1",
  )
  if num_processes == 1 and compile_cache:
    # The runs compile the same step programs: share them through JAX's persistent cache. Not
    # with several processes: JAX writes only process 0's programs, so process 0 alone would
    # skip its compiles and reach each phase's first step a whole compile ahead of the others
    # (seen: 15 s against 33 s), and gloo gives up on a peer that is 30 s late.
    env.update(
      JAX_COMPILATION_CACHE_DIR=os.path.join(tempfile.gettempdir(), "pose_jax_tests_jax_cache"),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
  cmd = [sys.executable, "-m", "pose_jax.main", f"--workdir={workdir}", *SMALL, *extra]
  if num_processes > 1:
    cmd += [
      f"--coordinator_address=localhost:{port}",
      f"--num_processes={num_processes}",
      f"--process_id={process_id}",
    ]
  return subprocess.Popen(
    cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )


def _copy_toy_data(src_workdir, workdir, process_id) -> None:
  """``src_workdir``'s toy clips where a run in ``workdir`` (process ``process_id`` of several,
  or ``None``) looks for them, unless some are there (a rerun keeps what it has)."""
  from pose_jax.data import source

  root = source.toy_root(str(workdir))
  if process_id is not None:
    root = os.path.join(root, f"process_{process_id}")
  if not os.path.exists(root):
    shutil.copytree(source.toy_root(str(src_workdir)), root)


def finish(proc):
  out, _ = proc.communicate(timeout=900)
  assert proc.returncode == 0, _failure(out)
  return out


def _failure(out: str) -> str:
  """What a failed run's output says: the fatal/error lines first (a crash's last 3000 characters
  are mostly a thread dump and the list of extension modules), then the tail without that list."""
  lines = [x for x in out.splitlines() if not x.startswith("Extension modules:")]
  keys = ("Fatal Python error", "Check failed", "Error", "error:", "Terminating", "timed out")
  fatal = [x for x in lines if any(k in x for k in keys)][:20]
  return "\n".join(fatal) + "\n---\n" + "\n".join(lines)[-3000:]


def kill(proc) -> None:
  """SIGKILL (no checkpoint, no clean-up), then reap the process and close its pipe."""
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  proc.stdout.close()


def wait_for_checkpoint(workdir, step, procs):
  """Until checkpoint ``step`` is complete: its folder (local: orbax renames a finished step into
  place) or its ``commit_success.txt`` (``gs://``: orbax writes the step in place, that last)."""
  done = epath.Path(workdir) / "checkpoints" / str(step)
  if "://" in str(workdir):
    done = done / "commit_success.txt"
  deadline = time.time() + 900
  while not done.exists():
    for p in procs:
      if p.poll() is not None:  # died: stop the others (no orphan outlives the test), report
        for other in procs:
          if other is not p and other.poll() is None:
            kill(other)
        raise AssertionError(_failure(p.stdout.read()))
    assert time.time() < deadline
    time.sleep(0.2)


def trace(workdir):
  per_step = {}
  for line in (epath.Path(workdir) / "metrics.jsonl").read_text().splitlines():
    rec = json.loads(line)
    # Train and eval records of a step merge; a resumed run rewrites the steps after its
    # checkpoint.
    per_step.setdefault(rec["step"], {}).update(rec)
  return per_step


def assert_same_run(a_dir, b_dir, rtol=0.0):
  """Same final parameters (bitwise via final.json when ``rtol == 0``) and loss traces."""
  if rtol == 0.0:
    final = lambda d: json.loads((epath.Path(d) / "final.json").read_text())
    assert final(a_dir) == final(b_dir)
  a, b = trace(a_dir), trace(b_dir)
  assert sorted(a) == sorted(b) == list(range(1, 9))
  traced = lambda rec: sorted(k for k in rec if k.startswith(("loss/", "grad_norm/")))
  for step in a:
    keys = traced(a[step])
    assert "grad_norm/student" in keys and keys == traced(b[step]), step
    for key in keys:  # atol: a term near 0 (loss/r1 ~ 1e-9) differs relatively in its last bits
      np.testing.assert_allclose(
        a[step][key], b[step][key], rtol=rtol, atol=1e-9 if rtol else 0.0, err_msg=f"{step} {key}"
      )


def tensorboard_tags(workdir) -> set:
  """Scalar tags in the run's TensorBoard event files (TFRecord framing, Event protos)."""
  from tensorboardX.proto import event_pb2

  tags = set()
  for name in (epath.Path(workdir) / "tensorboard").glob("events.*"):
    data = name.read_bytes()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos : pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
      tags |= {v.tag for v in event.summary.value}
      pos += 12 + length + 4
  return tags


def reference_run(root) -> tuple:
  """``(workdir, output)`` of the uninterrupted one-process 8-device run, made once per test
  session under ``root`` (shared by the xdist workers through a file lock)."""
  workdir = root / "toy_reference"
  with FileLock(str(root / "toy_reference.lock")):
    if not (workdir / "final.json").exists():
      shutil.rmtree(workdir, ignore_errors=True)
      out = finish(start(workdir, extra=["--config.eval.report=True"]))
      (root / "toy_reference.out").write_text(out)
  return workdir, (root / "toy_reference.out").read_text()
