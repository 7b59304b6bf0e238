"""launch/*.sh: the real path against the fake ``gcloud`` and an emulated TPU worker."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time

from tests.helpers.launch_env import (
  FAKE_PROGRAM,
  TPU,
  gcloud_calls,
  is_trainer,
  sh,
)

# --- the real path (fake gcloud) ----------------------------------------------------------------


def test_create_runs_gcloud_with_exact_argv(env):
  r = sh(env, "create_tpu.sh", *TPU, "--accelerator=v5p-64", "--queued", "--spot")
  assert r.returncode == 0, r.stderr
  assert r.stdout == ""
  assert "+ gcloud compute tpus queued-resources create pose-v5p" in r.stderr
  assert gcloud_calls(env) == [
    [
      "compute",
      "tpus",
      "queued-resources",
      "create",
      "pose-v5p",
      "--node-id=pose-v5p",
      "--zone=us-east5-a",
      "--accelerator-type=v5p-64",
      "--runtime-version=v2-alpha-tpuv5",
      "--spot",
    ],
  ]


def test_real_path_without_gcloud_fails_clearly(env, tmp_path):
  tools = tmp_path / "tools"  # bash and coreutils only: no gcloud
  tools.mkdir()
  for tool in ("bash", "dirname", "basename"):
    (tools / tool).symlink_to(shutil.which(tool))
  r = sh(dict(env, PATH=str(tools)), "create_tpu.sh", *TPU, "--accelerator=v5p-8")
  assert r.returncode == 1 and "gcloud not found" in r.stderr
  assert (
    sh(
      dict(env, PATH=str(tools)), "create_tpu.sh", *TPU, "--accelerator=v5p-8", "--dry-run"
    ).returncode
    == 0
  )


def test_delete_asks_first(env):
  r = sh(env, "delete_tpu.sh", *TPU, stdin="n\n")
  assert r.returncode == 1 and "not deleted" in r.stderr and gcloud_calls(env) == []
  r = sh(env, "delete_tpu.sh", *TPU, stdin="")
  assert r.returncode == 1 and gcloud_calls(env) == []
  r = sh(env, "delete_tpu.sh", *TPU, stdin="y\n")
  assert r.returncode == 0, r.stderr
  r = sh(env, "delete_tpu.sh", *TPU, "--queued", "--yes")
  assert r.returncode == 0, r.stderr
  assert gcloud_calls(env) == [
    ["compute", "tpus", "tpu-vm", "delete", "pose-v5p", "--zone=us-east5-a", "--quiet"],
    [
      "compute",
      "tpus",
      "queued-resources",
      "delete",
      "pose-v5p",
      "--zone=us-east5-a",
      "--force",
      "--quiet",
    ],
  ]


def test_convert_local_runs_python(env, tmp_path):
  fake = tmp_path / "bin" / "fakepython"
  fake.write_text(FAKE_PROGRAM.format(python=sys.executable))
  fake.chmod(0o755)
  env = dict(env, HOME=str(tmp_path))
  r = sh(
    env,
    "convert_teacher.sh",
    f"--src={tmp_path}",
    "--dst=gs://my-bucket/t",
    "--dtype=source",
    f"--python={fake}",
  )
  assert r.returncode == 0, r.stderr
  (call,) = [json.loads(x) for x in (tmp_path / "calls.jsonl").read_text().splitlines()]
  assert call[2:] == [
    "-m",
    "pose_jax.convert",
    "import",
    "--format=diffusers",
    f"--src={tmp_path}",
    "--dst=gs://my-bucket/t",
  ]
  assert gcloud_calls(env) == []


def test_setup_train_logs_stop_on_an_emulated_worker(env, tmp_path):
  """--copy setup, train (start, refuse a second start, stop, resume), logs: commands run."""
  home, worker_bin = tmp_path / "worker_home", tmp_path / "worker_bin"
  home.mkdir()
  worker_bin.mkdir()
  for name in ("python3.11", "sudo"):
    (worker_bin / name).write_text(FAKE_PROGRAM.format(python=sys.executable))
    (worker_bin / name).chmod(0o755)
  env = dict(env, FAKE_TPU_HOME=str(home), FAKE_TPU_PATH=f"{worker_bin}{os.pathsep}/usr/bin:/bin")

  checkout = tmp_path / "checkout"  # a small stand-in for this repository
  for rel in (
    "setup.py",
    "requirements-tpu.txt",
    "pose_jax/main.py",
    ".venv/x",
    ".venv-tpu/x",
    "workdir/x",
    "pose_jax/__pycache__/x.pyc",
    ".git/HEAD",
  ):
    (checkout / rel).parent.mkdir(parents=True, exist_ok=True)
    (checkout / rel).write_text("x")
  r = sh(env, "setup_workers.sh", *TPU, f"--copy-from={checkout}")
  assert r.returncode == 0, r.stderr
  got = {str(p.relative_to(home / "pose_jax")) for p in (home / "pose_jax").rglob("*")}
  assert got == {"setup.py", "requirements-tpu.txt", "pose_jax", "pose_jax/main.py"}
  assert not (home / "pose_jax.tar.gz").exists()
  assert os.listdir(env["TMPDIR"]) == []  # the local tarball is removed
  calls = [json.loads(x) for x in (home / "calls.jsonl").read_text().splitlines()]
  assert ["python3.11", str(home), "-m", "venv", f"{home}/pose_venv"] in calls
  assert [
    "pip",
    f"{home}/pose_jax",
    "install",
    "-q",
    "-r",
    "requirements-tpu.txt",
    "-e",
    ".",
  ] in calls
  assert not any(c[0] == "sudo" for c in calls)
  (scp, ssh) = gcloud_calls(env)
  assert scp[:4] == ["compute", "tpus", "tpu-vm", "scp"] and scp[5:] == [
    "pose-v5p:pose_jax.tar.gz",
    "--zone=us-east5-a",
    "--worker=all",
  ]
  assert ssh[:8] == [
    "compute",
    "tpus",
    "tpu-vm",
    "ssh",
    "pose-v5p",
    "--zone=us-east5-a",
    "--worker=all",
    ssh[7],
  ] and ssh[7].startswith("--command=")

  override = '--config.pose.phases=("equilibrium",)'
  train = [*TPU, "--workdir=gs://my-bucket/runs/pose480", override, "--env=XLA_FLAGS=--a=1 --b"]
  pid_file, log = home / "pose_logs" / "pose480.pid", home / "pose_logs" / "pose480.log"
  pid = None
  try:
    r = sh(dict(env, FAKE_TRAIN_SECONDS="30"), "train.sh", *train)
    assert r.returncode == 0, r.stderr
    assert "started pose480" in r.stdout
    pid = int(pid_file.read_text())
    assert is_trainer(pid)
    r = sh(env, "train.sh", *train)  # a second start on a busy worker is refused
    assert r.returncode == 1 and "already running" in r.stderr
    r = sh(env, "train.sh", *TPU, "--stop", "--run=pose480")
    assert r.returncode == 0 and "stopped pose480" in r.stdout
    for _ in range(100):
      if not is_trainer(pid):
        break
      time.sleep(0.05)
    r = sh(env, "train.sh", *train)  # rerun = resume
    assert r.returncode == 0, r.stderr
  finally:
    if pid is not None and is_trainer(pid):  # the sleeping fake trainer this test started
      os.kill(pid, signal.SIGTERM)
  for _ in range(200):  # the resumed (background) trainer starts soon after train.sh returns
    calls = [json.loads(x) for x in (home / "calls.jsonl").read_text().splitlines()]
    trains = [c for c in calls if c[2:4] == ["-m", "pose_jax.main"]]
    if len(trains) == 2 and log.read_text().count("fake trainer started") == 2:
      break
    time.sleep(0.05)
  assert len(trains) == 2
  assert trains[0][1] == f"{home}/pose_jax"
  assert trains[0][2:] == [
    "-m",
    "pose_jax.main",
    "--config=configs/wan_i2v.py:480p",
    "--workdir=gs://my-bucket/runs/pose480",
    "--distributed=on",
    override,
  ]
  assert log.read_text().count("=== ") == 2

  r = sh(env, "logs.sh", *TPU, "--run=pose480", "--lines=50")
  assert r.returncode == 0, r.stderr
  assert r.stdout.count("fake trainer started") == 2
  r = sh(env, "logs.sh", *TPU, "--worker=all", "--lines=1")
  assert r.returncode == 0 and r.stdout.startswith("[") and "fake trainer started" in r.stdout
  r = sh(env, "logs.sh", *TPU, "--run=other")
  assert r.returncode == 1 and "no log other" in r.stderr
