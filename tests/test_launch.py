"""launch/*.sh: help, input checks, dry runs, and the real path against a fake ``gcloud``.

The fake ``gcloud`` (first on PATH) records its argv as one JSON line per call. With
``FAKE_TPU_HOME`` set it also plays a one-worker TPU: ``tpu-vm scp`` copies into that home and
``tpu-vm ssh --command=CMD`` runs CMD with bash there, so the remote command strings the scripts
build are executed for real (quoting, nohup, pid and log files).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
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


# --- help ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", sorted(HELP_FLAGS))
def test_help_mentions_every_flag(env, script):
  for h in ("--help", "-h"):
    r = sh(env, script, h, "--bogus-flag-after-help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"Usage: launch/{script}")
  for flag in [*HELP_FLAGS[script], "--dry-run", "--help"]:
    assert flag in r.stdout, f"{script} --help does not mention {flag}"
  # Every flag the parser accepts is documented.
  src = (LAUNCH / script).read_text()
  parser = src[src.index("while (($#)); do") : src.index("\ndone\n")]
  accepted = set(re.findall(r"(--[a-z][a-z0-9-]*)(?==\*|\s*[|)])", parser))
  assert accepted, script
  for flag in accepted:
    assert flag in r.stdout, f"{script} accepts {flag} but --help does not mention it"
  assert gcloud_calls(env) == []


# --- dry runs -----------------------------------------------------------------------------------


def test_create_dry_run(env):
  (cmd,) = dry(env, "create_tpu.sh", *TPU, "--accelerator=v5p-64")
  assert cmd == [
    "gcloud",
    "compute",
    "tpus",
    "tpu-vm",
    "create",
    "pose-v5p",
    "--zone=us-east5-a",
    "--accelerator-type=v5p-64",
    "--version=v2-alpha-tpuv5",
  ]
  (cmd,) = dry(
    env,
    "create_tpu.sh",
    *TPU,
    "--accelerator",
    "v6e-256",
    "--queued",
    "--spot",
    "--project",
    "my-project",
  )
  assert cmd[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "pose-v5p"]
  for part in (
    "--node-id=pose-v5p",
    "--accelerator-type=v6e-256",
    "--spot",
    "--runtime-version=v2-alpha-tpuv6e",
    "--project=my-project",
  ):
    assert part in cmd
  defaults = {"v5litepod-16": "v2-alpha-tpuv5-lite", "v4-32": "tpu-ubuntu2204-base"}
  for accel, runtime in defaults.items():
    (cmd,) = dry(env, "create_tpu.sh", *TPU, f"--accelerator={accel}", "--reserved")
    assert f"--version={runtime}" in cmd and "--reserved" in cmd
  (cmd,) = dry(env, "create_tpu.sh", *TPU, "--accelerator=v5p-8", "--version=v2-alpha-tpuv5")
  assert "--version=v2-alpha-tpuv5" in cmd


def test_setup_workers_dry_run(env):
  tar, scp, ssh = dry(env, "setup_workers.sh", *TPU, "--copy")
  assert tar[:2] == ["tar", "-czf"] and str(ROOT) in tar and "--exclude=.venv" in tar
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
  assert scp[5] == tar[2] and "pose-v5p:pose_jax.tar.gz" in scp and "--worker=all" in scp
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pose-v5p"]
  assert "--worker=all" in ssh and "--zone=us-east5-a" in ssh
  cmd = remote_command(ssh)
  assert "tar -xzf ~/pose_jax.tar.gz -C ~/pose_jax" in cmd
  assert "python3.11 -m venv ~/pose_venv" in cmd
  assert "~/pose_venv/bin/pip install -q -r requirements-tpu.txt -e ." in cmd

  url = "https://github.com/example/pose_jax.git"
  (ssh,) = dry(
    env, "setup_workers.sh", *TPU, f"--git-url={url}", "--git-ref", "v0.1", "--python=python3.12"
  )
  cmd = remote_command(ssh)
  assert f"git clone --quiet {url} ~/pose_jax" in cmd
  assert "git fetch --quiet origin v0.1 && git checkout --quiet --force --detach FETCH_HEAD" in cmd
  assert "apt-get -o DPkg::Lock::Timeout=600 install -y -q python3.12 python3.12-venv" in cmd
  assert "--worker=all" in ssh


def test_train_dry_run(env):
  overrides = [
    "--config.ckpt.init_from=gs://my-bucket/teachers/wan",
    '--config.pose.phases=("equilibrium",)',
  ]
  (ssh,) = dry(
    env,
    "train.sh",
    *TPU,
    "--workdir",
    "gs://my-bucket/runs/pose480",
    *overrides,
    "--env=XLA_FLAGS=--xla_a=1 --xla_b",
    "--",
    "--config.train.log_every=1",
  )
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pose-v5p"]
  assert "--worker=all" in ssh and "--zone=us-east5-a" in ssh
  cmd = remote_command(ssh)
  assert "nohup ~/pose_venv/bin/python -m pose_jax.main --config=configs/wan_i2v.py:480p" in cmd
  assert "--workdir=gs://my-bucket/runs/pose480" in cmd
  assert ">> ~/pose_logs/pose480.log 2>&1 < /dev/null &" in cmd
  assert "XLA_FLAGS='--xla_a=1 --xla_b' nohup" in cmd
  words = shlex.split(cmd.split(" nohup ", 1)[1].split(" >> ", 1)[0])
  assert words[-3:] == [*overrides, "--config.train.log_every=1"]
  for flag in ("coordinator_address", "num_processes", "process_id"):
    assert flag not in cmd
  # 720p, a run name, and a local workdir on a single-host slice.
  (ssh,) = dry(
    env,
    "train.sh",
    *TPU,
    "--config=configs/wan_i2v.py:720p",
    "--run=r1",
    "--workdir=workdir/r",
    "--accelerator=v5p-8",
  )
  cmd = remote_command(ssh)
  assert "--config=configs/wan_i2v.py:720p --workdir=workdir/r" in cmd and "pose_logs/r1.log" in cmd
  (ssh,) = dry(env, "train.sh", *TPU, "--stop", "--run=r1", "--worker=0")
  assert "--worker=0" in ssh and 'kill "$(cat ~/pose_logs/r1.pid)"' in remote_command(ssh)


def test_train_warns_about_gs_data(env):
  args = [*TPU, "--workdir=gs://my-bucket/r", "--config.data.path=gs://my-bucket/data/train"]
  r = sh(env, "train.sh", "--dry-run", *args)
  assert r.returncode == 0 and "warning: --config.data.path is gs://" in r.stderr
  assert "--config.data.path=gs://my-bucket/data/train" in r.stdout


def test_logs_dry_run(env):
  (ssh,) = dry(env, "logs.sh", *TPU)
  assert "--worker=0" in ssh
  assert "tail -n 100" in remote_command(ssh) and "ls -t ~/pose_logs/*.log" in remote_command(ssh)
  (ssh,) = dry(env, "logs.sh", *TPU, "--worker=all", "--run=pose480", "--lines=5", "--follow")
  cmd = remote_command(ssh)
  assert "--worker=all" in ssh and "f=~/pose_logs/pose480.log" in cmd
  assert "tail -n 5 -F" in cmd and "$(hostname)" in cmd


def test_convert_teacher_dry_run(env, tmp_path):
  src = tmp_path / "transformer"
  src.mkdir()
  (cmd,) = dry(env, "convert_teacher.sh", f"--src={src}", "--dst=gs://my-bucket/teachers/wan")
  assert cmd == [
    "python3",
    "-m",
    "pose_jax.convert",
    "import",
    "--format=diffusers",
    f"--src={src}",
    "--dst=gs://my-bucket/teachers/wan",
    "--dtype=bf16",
  ]
  (ssh,) = dry(
    env,
    "convert_teacher.sh",
    "--src=/data/Wan2.1-I2V-14B-480P",
    "--format=wan",
    "--dst=gs://my-bucket/teachers/wan",
    "--on-tpu",
    *TPU,
    "--dtype=fp32",
    "--config=i2v_14b",
    "--overwrite",
  )
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pose-v5p"]
  assert "--worker=0" in ssh
  assert remote_command(ssh) == (
    "set -e; cd ~/pose_jax; ~/pose_venv/bin/python -m pose_jax.convert import --format=wan"
    " --src=/data/Wan2.1-I2V-14B-480P --dst=gs://my-bucket/teachers/wan --dtype=fp32"
    " --config=i2v_14b --overwrite"
  )


def test_convert_flags_match_the_cli():
  """The flags convert_teacher.sh passes exist in ``python -m pose_jax.convert import``."""
  from pose_jax.convert.__main__ import build_parser

  args = build_parser().parse_args(
    [
      "import",
      "--format=wan",
      "--src=/s",
      "--dst=gs://b/d",
      "--dtype=bf16",
      "--config=i2v_14b",
      "--overwrite",
    ]
  )
  assert (args.format, args.dtype, args.config, args.overwrite) == ("wan", "bf16", "i2v_14b", True)


def test_delete_dry_run(env):
  (cmd,) = dry(env, "delete_tpu.sh", *TPU)
  assert cmd == [
    "gcloud",
    "compute",
    "tpus",
    "tpu-vm",
    "delete",
    "pose-v5p",
    "--zone=us-east5-a",
    "--quiet",
  ]
  (cmd,) = dry(env, "delete_tpu.sh", *TPU, "--queued", "--project=my-project")
  assert cmd == [
    "gcloud",
    "compute",
    "tpus",
    "queued-resources",
    "delete",
    "pose-v5p",
    "--zone=us-east5-a",
    "--force",
    "--project=my-project",
    "--quiet",
  ]


# --- bad inputs ---------------------------------------------------------------------------------

BAD = [
  ("create_tpu.sh", ["--zone=us-east5-a", "--accelerator=v5p-64"], "--name is required"),
  ("create_tpu.sh", [*TPU, "--accelerator=v5p64"], "--accelerator=v5p64"),
  ("create_tpu.sh", [*TPU, "--accelerator=v5p-12"], "--accelerator=v5p-12"),
  ("create_tpu.sh", [*TPU, "--accelerator=v6e-12"], "--accelerator=v6e-12"),
  ("create_tpu.sh", [*TPU, "--accelerator=v5e-16"], "v5litepod-16"),
  ("create_tpu.sh", ["--name=pose", "--zone=us-east5", "--accelerator=v5p-8"], "--zone=us-east5"),
  ("create_tpu.sh", ["--name=Pose_1", "--zone=us-east5-a", "--accelerator=v5p-8"], "--name=Pose_1"),
  ("create_tpu.sh", [*TPU, "--accelerator=v5p-8", "--spot", "--reserved"], "--spot"),
  ("create_tpu.sh", [*TPU, "--accelerator"], "--accelerator needs a value"),
  ("create_tpu.sh", [*TPU, "--accelerator=v5p-8", "--zones=x"], "--zones=x"),
  ("setup_workers.sh", TPU, "--git-url"),
  ("setup_workers.sh", [*TPU, "--copy", "--git-url=https://x.org/r.git"], "--copy"),
  ("setup_workers.sh", [*TPU, "--copy", "--python=python3"], "--python=python3"),
  ("setup_workers.sh", [*TPU, "--copy-from=/nonexistent"], "--copy-from=/nonexistent"),
  ("setup_workers.sh", [*TPU, "--copy", "--worker=first"], "--worker=first"),
  ("train.sh", TPU, "--workdir is required"),
  ("train.sh", [*TPU, "--workdir=/tmp/run"], "--workdir=/tmp/run"),
  ("train.sh", [*TPU, "--workdir=/tmp/run", "--accelerator=v5p-64"], "--workdir=/tmp/run"),
  ("train.sh", [*TPU, "--workdir=runs/a", "--accelerator=v6e-16"], "--workdir=runs/a"),
  ("train.sh", [*TPU, "--workdir=gs://my-bucket/r", "--accelerator=v5p_64"], "--accelerator"),
  ("train.sh", [*TPU, "--workdir=~/runs/a", "--accelerator=v6e-8"], "--workdir=~/runs/a"),
  ("train.sh", [*TPU, "--workdir=gs://B/r"], "--workdir=gs://B/r"),
  ("train.sh", [*TPU, "--workdir=gs://my-bucket/r", "--config=configs/nope.py"], "--config="),
  ("train.sh", [*TPU, "--workdir=gs://my-bucket/r", "--config.seed"], "--config.seed"),
  ("train.sh", [*TPU, "--workdir=gs://my-bucket/r", "--", "--num_processes=8"], "--num_processes"),
  ("train.sh", [*TPU, "--workdir=gs://my-bucket/r", "--env=1X=2"], "--env=1X=2"),
  ("train.sh", [*TPU, "--stop"], "--stop"),
  ("train.sh", ["--zone=us-east5-a", "--workdir=gs://my-bucket/r"], "--name is required"),
  ("logs.sh", ["--name=pose-v5p"], "--zone is required"),
  ("logs.sh", [*TPU, "--lines=many"], "--lines=many"),
  ("logs.sh", [*TPU, "--run=a b"], "--run=a b"),
  ("convert_teacher.sh", ["--src=/nonexistent/dir", "--dst=gs://my-bucket/t"], "--src"),
  ("convert_teacher.sh", ["--src=gs://my-bucket/s", "--dst=/tmp/t"], "--dst=/tmp/t"),
  ("convert_teacher.sh", ["--src=gs://my-bucket/s"], "--dst is required"),
  ("convert_teacher.sh", ["--src=gs://b1/s", "--dst=gs://b1/t", "--format=ckpt"], "--format=ckpt"),
  ("convert_teacher.sh", ["--src=gs://b1/s", "--dst=gs://b1/t", "--dtype=fp16"], "--dtype=fp16"),
  ("convert_teacher.sh", ["--src=gs://b1/s", "--dst=gs://b1/t", "--on-tpu"], "--name is required"),
  ("convert_teacher.sh", ["--src=gs://b1/s", "--dst=gs://b1/t", *TPU], "--on-tpu"),
  ("delete_tpu.sh", ["--zone=us-east5-a"], "--name is required"),
  ("delete_tpu.sh", [*TPU, "--project=X"], "--project=X"),
]


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry", "real"])
@pytest.mark.parametrize(("script", "args", "message"), BAD, ids=[f"{s}:{m}" for s, _, m in BAD])
def test_bad_input(env, script, args, message, dry_run):
  r = sh(env, script, *(["--dry-run"] if dry_run else []), *args)
  assert r.returncode == 2, (r.stdout, r.stderr)
  assert message in r.stderr and f"{script}: error:" in r.stderr
  assert r.stdout == "" and gcloud_calls(env) == []


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
