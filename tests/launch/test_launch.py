"""launch/*.sh: help, dry runs and input checks (set-up in ``tests/helpers/launch_env.py``)."""

from __future__ import annotations

import re
import shlex

import pytest

from tests.helpers.launch_env import (
  HELP_FLAGS,
  LAUNCH,
  ROOT,
  TPU,
  dry,
  gcloud_calls,
  remote_command,
  sh,
)

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
  assert r.returncode == 0 and "note: --config.data.path is gs://" in r.stderr
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
  """The flags convert_teacher.sh passes are flags of ``python -m pose_jax.convert import``."""
  from pose_jax.convert import cli

  src = (LAUNCH / "convert_teacher.sh").read_text()
  built = [line for line in src.splitlines() if re.search(r"\bARGS\+?=\(", line)]
  assert "-m pose_jax.convert import " in built[0], built
  passed = {f for line in built for f in re.findall(r"--([a-z][a-z0-9_-]*)", line)}
  assert passed == {"format", "src", "dst", "dtype", "config", "overwrite"}, built
  assert passed <= cli.COMMAND_FLAGS["import"]
  args = ["--format=wan", "--src=/s", "--dst=gs://b/d", "--dtype=bf16", "--config=i2v_14b"]
  command, values = cli.parse(["import", *args, "--overwrite"])
  assert command == "import"
  got = tuple(values[f].value for f in ("format", "dtype", "config", "overwrite"))
  assert got == ("wan", "bf16", "i2v_14b", True)


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
