"""Shared set-up of the launch/*.sh tests: a fake ``gcloud`` (first on PATH) records its argv as
one JSON line per call. With ``FAKE_TPU_HOME`` set it also plays a one-worker TPU: ``tpu-vm scp``
copies into that home and ``tpu-vm ssh --command=CMD`` runs CMD with bash there, so the remote
command strings the scripts build are executed for real (quoting, nohup, pid and log files).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "launch"
TPU = ["--name=pose-v5p", "--zone=us-east5-a"]

HELP_FLAGS = {
  "create_tpu.sh": [
    "--name",
    "--zone",
    "--accelerator",
    "--version",
    "--queued",
    "--spot",
    "--reserved",
    "--project",
  ],
  "setup_workers.sh": [
    "--name",
    "--zone",
    "--git-url",
    "--git-ref",
    "--copy",
    "--copy-from",
    "--python",
    "--worker",
    "--project",
  ],
  "train.sh": [
    "--name",
    "--zone",
    "--workdir",
    "--config",
    "--config.KEY=VALUE",
    "--accelerator",
    "--run",
    "--env",
    "--stop",
    "--worker",
    "--project",
  ],
  "logs.sh": ["--name", "--zone", "--run", "--worker", "--lines", "--follow", "--project"],
  "convert_teacher.sh": [
    "--src",
    "--dst",
    "--format",
    "--dtype",
    "--config",
    "--overwrite",
    "--python",
    "--on-tpu",
    "--name",
    "--zone",
    "--project",
  ],
  "delete_tpu.sh": ["--name", "--zone", "--queued", "--yes", "--project"],
  "xpk_train.sh": [
    "--cluster",
    "--zone",
    "--workload",
    "--tpu-type",
    "--workdir",
    "--num-slices",
    "--config",
    "--config.KEY=VALUE",
    "--env",
    "--docker-image",
    "--base-docker-image",
    "--max-restarts",
    "--grace-seconds",
    "--priority",
    "--follow",
    "--logs",
    "--all-hosts",
    "--delete",
    "--project",
  ],
}

FAKE_GCLOUD = """#!{python}
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
  f.write(json.dumps(args) + "\\n")
home = os.environ.get("FAKE_TPU_HOME")
if home:
  if args[:4] == ["compute", "tpus", "tpu-vm", "scp"]:
    src, dst = [a for a in args[4:] if not a.startswith("--")]
    shutil.copy(src, os.path.join(home, dst.split(":", 1)[1]))
  elif args[:4] == ["compute", "tpus", "tpu-vm", "ssh"]:
    (cmd,) = [a[len("--command="):] for a in args if a.startswith("--command=")]
    env = dict(os.environ, HOME=home, PATH=os.environ["FAKE_TPU_PATH"])
    sys.exit(subprocess.call(["bash", "-c", cmd], env=env, cwd=home))
"""

# A recording stand-in for every program the remote commands run (python3.11, venv python, pip).
FAKE_PROGRAM = """#!{python}
import json, os, sys, time
args = sys.argv[1:]
with open(os.path.join(os.environ["HOME"], "calls.jsonl"), "a") as f:
  f.write(json.dumps([os.path.basename(sys.argv[0]), os.getcwd(), *args]) + "\\n")
if args[:2] == ["-m", "venv"]:
  os.makedirs(os.path.join(args[2], "bin"))
  for tool in ("python", "pip"):
    os.symlink(sys.argv[0], os.path.join(args[2], "bin", tool))
if args[:2] == ["-m", "pose_jax.main"]:
  print("fake trainer started", flush=True)
  time.sleep(float(os.environ.get("FAKE_TRAIN_SECONDS", "0")))
if os.path.basename(sys.argv[0]) == "sudo":
  sys.exit("sudo must not be needed here")
"""


@pytest.fixture
def env(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  gcloud = bin_dir / "gcloud"
  gcloud.write_text(FAKE_GCLOUD.format(python=sys.executable))
  gcloud.chmod(0o755)
  (tmp_path / "tmp").mkdir()
  return dict(
    os.environ,
    PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    FAKE_GCLOUD_LOG=str(tmp_path / "gcloud.jsonl"),
    TMPDIR=str(tmp_path / "tmp"),
  )


def sh(env, script, *args, stdin=""):
  return subprocess.run(
    [str(LAUNCH / script), *args],
    env=env,
    input=stdin,
    capture_output=True,
    text=True,
    timeout=60,
  )


def gcloud_calls(env) -> list[list[str]]:
  log = Path(env["FAKE_GCLOUD_LOG"])
  return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def dry(env, script, *args) -> list[list[str]]:
  """Runs with --dry-run; asserts success, nothing executed; returns the printed commands."""
  r = sh(env, script, "--dry-run", *args)
  assert r.returncode == 0, r.stderr
  assert gcloud_calls(env) == [], "--dry-run executed gcloud"
  assert os.listdir(env["TMPDIR"]) == [], "--dry-run wrote files"
  lines = r.stdout.splitlines()
  assert lines and all(line.startswith("+ ") for line in lines), r.stdout
  return [shlex.split(line[2:]) for line in lines]


def is_trainer(pid: int) -> bool:
  """Whether ``pid`` is a live (not zombie) ``pose_jax.main`` process, as train.sh checks it."""
  try:
    return b"pose_jax.main" in Path(f"/proc/{pid}/cmdline").read_bytes()
  except OSError:
    return False


def remote_command(argv: list[str]) -> str:
  (cmd,) = [a[len("--command=") :] for a in argv if a.startswith("--command=")]
  return cmd
